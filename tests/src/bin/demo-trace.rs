//! `demo-trace`: boot the demo kernel under QEMU and trace it with an example in the
//! handler assembler's text form (`examples/*.pasm`, format in `examples/README.md`).
//!
//! ```text
//! demo-trace EXAMPLE [--rounds N] [--single-thread] [--max-events N]
//! ```
//!
//! It builds the demo kernel (the `qemu` harness), resolves every name of the
//! example against the kernel's ELF (functions from the symbol table, markers through
//! the port's `DescribeMarker`), boots the kernel on two CPUs with its workload held
//! at the gate, opens a session on the probe port, defines the maps, arms the probes,
//! starts (which releases the workload), waits for the workload to finish (and
//! 300 ms more), stops, and prints the events (the first few per probe, and a count) and every map. It
//! ends the session with `Goodbye` and waits for the kernel's verdict.
//!
//! This is the stand-in for the `probeport` client until the probe-script language
//! arrives (issue 4): examples are written as handler programs, not scripts.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use object::{Object, ObjectSymbol, SymbolKind};
use probe_port_protocol::asm::assemble;
use probe_port_protocol::isa;
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};
use probe_port_protocol::message::{ArmRequest, ReplyBody, RequestBody, Site, TimerScope};
use qemu::{Config, Qemu, TcgThreading, build_demo_kernel};
use userland_client::port::{Port, Unsolicited};

const USAGE: &str = "usage: demo-trace EXAMPLE [--rounds N] [--single-thread] [--max-events N]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo-trace: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the command line asks for.
struct Options {
    example: PathBuf,
    rounds: u32,
    threading: TcgThreading,
    max_events: usize,
}

fn parse_options() -> Result<Options> {
    let mut arguments = std::env::args().skip(1);
    let mut example = None;
    let mut options = Options {
        example: PathBuf::new(),
        rounds: 100,
        // Dynamic probes patch text the other vCPU runs: multi-threaded TCG in
        // QEMU 7.2 does not reliably see that (DESIGN.md §7).
        threading: TcgThreading::Single,
        max_events: 8,
    };
    while let Some(argument) = arguments.next() {
        let mut value = |name: &str| {
            arguments
                .next()
                .ok_or_else(|| anyhow!("{name} needs a value\n{USAGE}"))
        };
        match argument.as_str() {
            "--rounds" => options.rounds = value("--rounds")?.parse().context("--rounds")?,
            "--max-events" => {
                options.max_events = value("--max-events")?.parse().context("--max-events")?
            }
            "--single-thread" => options.threading = TcgThreading::Single,
            "--multi-thread" => options.threading = TcgThreading::Multi,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other if other.starts_with('-') => bail!("unknown option {other:?}\n{USAGE}"),
            other => example = Some(PathBuf::from(other)),
        }
    }
    options.example = example.ok_or_else(|| anyhow!("no example given\n{USAGE}"))?;
    Ok(options)
}

// ----------------------------------------------------------------------------
// The example file.

/// Where a probe of the example fires.
#[derive(Debug)]
enum ProbeSite {
    Entry(String),
    Marker(String),
    Timer { period_ns: u64, scope: TimerScope },
}

/// One probe of the example.
#[derive(Debug)]
struct ProbeSpec {
    line: usize,
    site: ProbeSite,
    fields: Vec<(String, bool)>,
    program: String,
}

/// The example: maps and probes.
#[derive(Debug, Default)]
struct Example {
    maps: Vec<MapSpec>,
    probes: Vec<ProbeSpec>,
}

fn parse_example(path: &Path) -> Result<Example> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut example = Example::default();
    let mut current: Option<ProbeSpec> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let code = raw.split([';', '#']).next().unwrap_or("").trim();
        let context = || format!("{}:{line}", path.display());
        if let Some(probe) = current.as_mut() {
            if code == "end" {
                example.probes.extend(current.take());
            } else if let Some(fields) = code.strip_prefix("fields ") {
                for field in fields.split_whitespace() {
                    let (name, format) = field.split_once(':').unwrap_or((field, "hex"));
                    probe.fields.push((name.to_owned(), format == "hex"));
                }
            } else {
                probe.program.push_str(raw);
                probe.program.push('\n');
            }
            continue;
        }
        let words: Vec<&str> = code.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["map", id, kind, rest @ ..] => {
                let parameter = |name: &str| -> Result<u32> {
                    rest.iter()
                        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                        .ok_or_else(|| anyhow!("{}: map needs {name}=", context()))?
                        .parse()
                        .with_context(context)
                };
                let aggregate = |kind| MapKind::Aggregate(kind);
                let (kind, value_size) = match *kind {
                    "count" => (aggregate(AggregateKind::Count), 8),
                    "sum" => (aggregate(AggregateKind::Sum), 8),
                    "min" => (aggregate(AggregateKind::Min), 8),
                    "max" => (aggregate(AggregateKind::Max), 8),
                    "hash" => (MapKind::Hash, parameter("value")? as u16),
                    other => bail!("{}: unknown map kind {other:?}", context()),
                };
                example.maps.push(MapSpec {
                    map: MapId(id.parse().with_context(context)?),
                    kind,
                    key_size: parameter("key")? as u16,
                    value_size,
                    max_entries: parameter("entries")?,
                });
            }
            ["probe", "entry", function] => {
                current = Some(probe(line, ProbeSite::Entry((*function).to_owned())))
            }
            ["probe", "marker", name] => {
                current = Some(probe(line, ProbeSite::Marker((*name).to_owned())))
            }
            ["probe", "timer", period, scope] => {
                let millis: u64 = period
                    .strip_suffix("ms")
                    .ok_or_else(|| anyhow!("{}: a timer period is in ms", context()))?
                    .parse()
                    .with_context(context)?;
                let scope = match *scope {
                    "each-cpu" => TimerScope::EachCpu,
                    "one-cpu" => TimerScope::OneCpu,
                    other => bail!("{}: unknown timer scope {other:?}", context()),
                };
                current = Some(probe(
                    line,
                    ProbeSite::Timer {
                        period_ns: millis * 1_000_000,
                        scope,
                    },
                ));
            }
            _ => bail!("{}: cannot read {code:?}", context()),
        }
    }
    if let Some(probe) = current {
        bail!("{}:{}: probe without `end`", path.display(), probe.line);
    }
    Ok(example)
}

fn probe(line: usize, site: ProbeSite) -> ProbeSpec {
    ProbeSpec {
        line,
        site,
        fields: Vec::new(),
        program: String::new(),
    }
}

// ----------------------------------------------------------------------------
// The kernel's symbols.

/// The kernel's functions: (address, size, demangled path without hash).
type Functions = Vec<(u64, u64, String)>;

/// The function containing `address`, as `path+offset`.
fn symbolize(functions: &Functions, address: u64) -> Option<String> {
    functions
        .iter()
        .find(|(start, size, _)| (*start..start + size).contains(&address))
        .map(|(start, _, name)| format!("{name}+{:#x}", address - start))
}

/// The kernel's functions, and its `.text` bytes and address.
fn read_functions(kernel: &Path) -> Result<(Functions, Vec<u8>, u64)> {
    let data = std::fs::read(kernel).with_context(|| format!("reading {}", kernel.display()))?;
    let file = object::File::parse(&*data).context("parsing the kernel's ELF")?;
    let mut functions = Vec::new();
    for symbol in file.symbols() {
        if symbol.kind() == SymbolKind::Text && symbol.size() > 0 {
            let name = format!(
                "{:#}",
                rustc_demangle::demangle(symbol.name().unwrap_or(""))
            );
            functions.push((symbol.address(), symbol.size(), name));
        }
    }
    let text = object::ObjectSection::data(
        &file
            .section_by_name(".text")
            .ok_or_else(|| anyhow!("the kernel has no .text"))?,
    )?
    .to_vec();
    let text_address = object::ObjectSection::address(&file.section_by_name(".text").unwrap());
    Ok((functions, text, text_address))
}

// ----------------------------------------------------------------------------
// The session.

struct Session {
    port: Port<UnixStream>,
}

impl Session {
    fn request(
        &mut self,
        what: &str,
        body: RequestBody<'_>,
    ) -> Result<userland_client::port::Reply> {
        let reply = self.port.request(body).with_context(|| what.to_owned())?;
        if let Err(error) = reply.get() {
            bail!("{what}: {error}");
        }
        Ok(reply)
    }
}

fn run() -> Result<()> {
    let options = parse_options()?;
    let example = parse_example(&options.example)?;
    println!(
        "demo-trace: {} ({} map(s), {} probe(s))",
        options.example.display(),
        example.maps.len(),
        example.probes.len()
    );
    let kernel = build_demo_kernel().map_err(|error| anyhow!("{error}"))?;
    let (functions, text, text_address) = read_functions(&kernel)?;
    let config = Config::new(&kernel)
        .cpus(2)
        .tcg_threading(options.threading)
        .append(format!("demo.wait_start demo.rounds={}", options.rounds))
        .timeout(Duration::from_secs(300));
    let mut qemu = Qemu::start(&config).map_err(|error| anyhow!("{error}"))?;
    println!(
        "demo-trace: booted {} under QEMU ({:?} TCG, 2 CPUs, {} rounds of workload), pid {}",
        kernel.display(),
        options.threading,
        options.rounds,
        qemu.pid()
    );
    let mut session = Session {
        port: Port::new(qemu.take_port().expect("the probe port is wired")),
    };
    let reply = session.request(
        "hello",
        RequestBody::Hello(probe_port_protocol::message::Hello {
            min_version: probe_port_protocol::message::PROTOCOL_VERSION,
            max_version: probe_port_protocol::message::PROTOCOL_VERSION,
            client: "demo-trace",
        }),
    )?;
    let cpus = match reply.get() {
        Ok(ReplyBody::Hello(hello)) => {
            println!(
                "demo-trace: {} with build-id {}, {} CPUs",
                hello.kernel.name,
                hello
                    .kernel
                    .build_id
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect::<String>(),
                hello.cpu_count
            );
            usize::from(hello.cpu_count)
        }
        other => bail!("hello: {other:?}"),
    };
    let mut markers = BTreeMap::new();
    for index in 0.. {
        let reply = session
            .port
            .request(RequestBody::DescribeMarker { index })?;
        match reply.get() {
            Ok(ReplyBody::Marker(marker)) => {
                markers.insert(marker.name.to_owned(), index);
            }
            _ => break,
        }
    }
    for map in &example.maps {
        session.request(&format!("map {}", map.map.0), RequestBody::DefineMap(*map))?;
    }
    let mut labels = BTreeMap::new();
    for spec in &example.probes {
        let program = assemble(&spec.program)
            .map_err(|error| anyhow!("{}:{}: {error}", options.example.display(), spec.line))?;
        let program = isa::encode(&program);
        let expected;
        let (site, label) = match &spec.site {
            ProbeSite::Entry(function) => {
                let address = functions
                    .iter()
                    .find(|(_, _, name)| name == function)
                    .map(|(address, _, _)| *address)
                    .ok_or_else(|| anyhow!("no function {function} in the kernel"))?;
                let offset = (address - text_address) as usize;
                expected = text[offset..offset + 1].to_vec();
                (
                    Site::Dynamic {
                        address,
                        expected: &expected,
                    },
                    format!("entry {function}"),
                )
            }
            ProbeSite::Marker(name) => (
                Site::Marker {
                    index: *markers
                        .get(name)
                        .ok_or_else(|| anyhow!("no marker {name} in the kernel"))?,
                },
                format!("marker {name}"),
            ),
            ProbeSite::Timer { period_ns, scope } => (
                Site::Timer {
                    period_ns: *period_ns,
                    scope: *scope,
                },
                format!("timer {} ms {scope:?}", period_ns / 1_000_000),
            ),
        };
        let reply = session.request(
            &label,
            RequestBody::Arm(ArmRequest {
                site,
                program: &program,
            }),
        )?;
        let Ok(ReplyBody::Armed { probe }) = reply.get() else {
            bail!("{label}: not armed");
        };
        println!("demo-trace: probe {} = {label}", probe.0);
        labels.insert(probe.0, (label, spec.fields.clone()));
    }

    // Start: the relay opens the workload's gate; wait for its done line.
    wait_console(&mut session, &qemu, "workload: waiting for start")?;
    session.request("start", RequestBody::Start)?;
    wait_console(&mut session, &qemu, "workload: done ")?;
    // A little longer, so that timers show the CPUs idle after the workload.
    let linger = Instant::now();
    while linger.elapsed() < Duration::from_millis(300) {
        session.port.poll(Duration::from_millis(50))?;
    }
    session.request("stop", RequestBody::Stop)?;

    let mut shown: BTreeMap<u32, usize> = labels.keys().map(|probe| (*probe, 0)).collect();
    let mut lost = 0;
    for item in session.port.take_unsolicited() {
        match item {
            Unsolicited::Event(event) => {
                let count = shown.entry(event.probe).or_default();
                *count += 1;
                if *count > options.max_events {
                    continue;
                }
                let (label, fields) = &labels[&event.probe];
                let words: Vec<u64> = event
                    .data
                    .chunks_exact(8)
                    .map(|word| u64::from_le_bytes(word.try_into().unwrap_or([0; 8])))
                    .collect();
                let rendered: Vec<String> = words
                    .iter()
                    .enumerate()
                    .map(|(index, word)| match fields.get(index) {
                        Some((name, true)) if name == "pc" => match symbolize(&functions, *word) {
                            Some(symbol) => format!("{name}={word:#x} <{symbol}>"),
                            None => format!("{name}={word:#x}"),
                        },
                        Some((name, true)) => format!("{name}={word:#x}"),
                        Some((name, false)) => format!("{name}={word}"),
                        None => format!("{word:#x}"),
                    })
                    .collect();
                println!(
                    "  cpu {} seq {:>4} {:>9.3} ms  {label}: {}",
                    event.cpu,
                    event.seq,
                    event.time_ns as f64 / 1e6,
                    rendered.join(" ")
                );
            }
            Unsolicited::Lost(report) => lost += report.count,
        }
    }
    for (probe, count) in &shown {
        println!(
            "demo-trace: probe {probe} ({}): {count} event(s){}",
            labels[probe].0,
            if *count > options.max_events {
                format!(", first {} shown", options.max_events)
            } else {
                String::new()
            }
        );
    }
    if lost > 0 {
        println!("demo-trace: {lost} event(s) lost (counted by the kernel)");
    }
    for map in &example.maps {
        print_map(&mut session, map, cpus)?;
    }
    session.request("goodbye", RequestBody::Goodbye)?;
    drop(session);
    let outcome = qemu.wait().map_err(|error| anyhow!("{error}"))?;
    let done = outcome
        .console
        .lines()
        .find(|line| line.starts_with("workload: done "))
        .unwrap_or("");
    println!("demo-trace: kernel says: {done}");
    println!("demo-trace: VERDICT: PASS in {:.2?}", outcome.elapsed);
    Ok(())
}

/// Waits for a console line, renewing the lease and keeping events meanwhile.
fn wait_console(session: &mut Session, qemu: &Qemu, needle: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut renewed = Instant::now();
    while !qemu.console().contains(needle) {
        if Instant::now() > deadline {
            bail!("no {needle:?} on the console");
        }
        if renewed.elapsed() > Duration::from_secs(1) {
            session.request("keep-alive", RequestBody::KeepAlive)?;
            renewed = Instant::now();
        }
        session.port.poll(Duration::from_millis(100))?;
    }
    Ok(())
}

/// Prints every entry of a map; aggregations merged across CPUs.
fn print_map(session: &mut Session, map: &MapSpec, cpus: usize) -> Result<()> {
    let key_size = usize::from(map.key_size);
    let value_size = usize::from(map.value_size);
    let per_cpu = matches!(map.kind, MapKind::Aggregate(_));
    let entry_size = key_size + value_size * if per_cpu { cpus } else { 1 };
    let mut rows = Vec::new();
    let mut cursor = 0;
    loop {
        let reply = session.request(
            "read map",
            RequestBody::ReadMap {
                map: map.map,
                cursor,
            },
        )?;
        let Ok(ReplyBody::MapPage(page)) = reply.get() else {
            bail!("map {}: no page", map.map.0);
        };
        for entry in page.entries.chunks_exact(entry_size) {
            let (key, values) = entry.split_at(key_size);
            let word = |bytes: &[u8]| {
                let mut padded = [0u8; 8];
                padded[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
                u64::from_le_bytes(padded)
            };
            let merged = if per_cpu {
                let words: Vec<u64> = values.chunks_exact(value_size).map(word).collect();
                match map.kind {
                    MapKind::Aggregate(AggregateKind::Min) => {
                        words.iter().map(|w| *w as i64).min().unwrap_or(0) as u64
                    }
                    MapKind::Aggregate(AggregateKind::Max) => {
                        words.iter().map(|w| *w as i64).max().unwrap_or(0) as u64
                    }
                    _ => words.iter().fold(0u64, |sum, word| sum.wrapping_add(*word)),
                }
            } else {
                word(values)
            };
            rows.push((word(key), merged));
        }
        match page.next_cursor {
            Some(next) => cursor = next,
            None => break,
        }
    }
    rows.sort_unstable();
    println!(
        "demo-trace: map {} ({:?}), {} entries:",
        map.map.0,
        map.kind,
        rows.len()
    );
    for (key, value) in rows {
        println!("  {key:>10} -> {value}");
    }
    Ok(())
}
