//! A tracing session: from a script and a connected port to output on screen.
//!
//! # Design
//!
//! [`run`] follows PROTOCOL.md in order: `Hello` (and the build-id check against
//! the debuginfo), the kernel's marker table (`DescribeMarker`), compiling the
//! script against both, `DefineMap` for every map, `Arm` for every site (every
//! refusal is reported, naming the probe point and the stub's reason, and nothing
//! starts), the `begin` actions, `Start`, then events until `exit()`, the duration,
//! Ctrl-C (the `stop` flag) or the end of a recording. Then `Stop`, the `end`
//! actions (which print the maps left), the summary, `Goodbye`.
//!
//! Output goes through [`Output`]: text as bpftrace prints it, or JSON lines
//! (`--format json`), one object per record, map and summary.
//!
//! # Invariants
//!
//! - Every event and loss report is accounted for: per CPU, the sequence numbers of
//!   events and the ranges of `Lost` reports must partition `0..next_seq` (from
//!   `CpuStats` after `Stop`); any gap or overlap is reported, never ignored.
//! - Whenever events were lost or handlers faulted, missed or dropped, the summary
//!   says so, per CPU and per probe.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lang::compiled::{CompiledScript, Field, HostAction, MapInfo, MapValue, RecordKind, ValueType};
use lang::diagnostic::{Diagnostic, render};
use lang::format::{
    MapEntry, MapEntryValue, format_map, format_record, format_value, split_map_page,
};
use lang::resolver::{Marker, MarkerArg};
use lang::source::Sources;
use lang::{CompileOptions, compile};
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::maps::{AggregateKind, MapId};
use probe_port_protocol::message::{ArmRequest, Capabilities, ProbeId, ReplyBody, RequestBody};
use serde_json::json;

use crate::debuginfo::{BuildIdMismatch, Kernel};
use crate::port::{OwnedEvent, Port, PortError, Reply, TimedRead, Unsolicited};
use crate::resolve::DwarfResolver;
use crate::stub_markers::WithMarkers;
use crate::stub_symbols::StubSymbols;

/// How output is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Text, as bpftrace prints it.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Knobs of a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Stop after this long (`-d SECONDS`).
    pub duration: Option<Duration>,
    /// Text or JSON lines.
    pub format: OutputFormat,
    /// Compiler knobs (`max_insns` is lowered to the stub's limit).
    pub compile: CompileOptions,
    /// How long one wait for events lasts.
    pub poll_interval: Duration,
    /// The client's name in `Hello`.
    pub client_name: String,
    /// The marker table read from the image ([`crate::markers`]), when it has one:
    /// the running kernel's table (which is what the script compiles against) must
    /// equal it, or nothing is sent.
    pub image_markers: Option<Vec<Marker>>,
    /// Adds the built-in tapsets of the kernel the handshake names
    /// (`lang::tapset::Builtin::for_kernel`) before compiling: for sources loaded
    /// without them ([`crate::script::load_for_target`]).
    pub target_tapsets: bool,
    /// The BTF that types kernel functions named by symbol when there is no
    /// debuginfo ([`crate::btf::source::KernelTypes`]); `None`: names only.
    pub kernel_types: Option<crate::btf::source::KernelTypes>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            duration: None,
            format: OutputFormat::Text,
            compile: CompileOptions::default(),
            poll_interval: Duration::from_millis(20),
            client_name: format!("probeport {}", env!("CARGO_PKG_VERSION")),
            image_markers: None,
            target_tapsets: false,
            kernel_types: None,
        }
    }
}

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The port failed.
    #[error(transparent)]
    Port(#[from] PortError),
    /// Writing output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
    /// The debuginfo is not the running kernel's.
    #[error(transparent)]
    BuildId(#[from] BuildIdMismatch),
    /// The BTF given is not the running kernel's, or cannot be read.
    #[error(transparent)]
    Btf(#[from] crate::btf::source::SourceError),
    /// The script did not compile; the diagnostics are rendered.
    #[error("the script has errors")]
    Compile {
        /// The diagnostics, rendered as rustc does.
        rendered: String,
    },
    /// The stub refused some probes (one line each); nothing was started.
    #[error("the kernel refused {} probe site(s):\n{}", .0.len(), .0.join("\n"))]
    Refused(Vec<String>),
    /// The running kernel's marker table is not the one its image holds.
    #[error(
        "the running kernel's marker table differs from the one in the image: {0}; \
         nothing was armed (pass the image the kernel was booted from)"
    )]
    MarkerMismatch(String),
    /// The stub answered something the protocol does not allow there.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// One probe's counters, when any is non-zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeReport {
    /// The stub's probe number.
    pub probe: u32,
    /// The probe point as written, and the site.
    pub description: String,
    /// Handler faults.
    pub faults: u64,
    /// Address of the last fault.
    pub last_fault_address: u64,
    /// Firings whose handler was skipped.
    pub misses: u64,
    /// Records and map insertions dropped for lack of room.
    pub drops: u64,
}

/// What a session saw besides its output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events delivered.
    pub events: u64,
    /// Events reported lost, per CPU.
    pub lost: BTreeMap<u16, u64>,
    /// Problems with the per-CPU sequence numbers (gaps, overlaps): each a sentence.
    pub unaccounted: Vec<String>,
    /// Probes with faults, misses or drops.
    pub probes: Vec<ProbeReport>,
    /// Events whose record number the script does not know.
    pub unknown_records: u64,
    /// Frames the port's decoder dropped (corruption on the line).
    pub dropped_frames: usize,
}

impl Summary {
    /// Whether there is anything to report.
    pub fn is_clean(&self) -> bool {
        self.lost.values().all(|count| *count == 0)
            && self.unaccounted.is_empty()
            && self.probes.is_empty()
            && self.unknown_records == 0
            && self.dropped_frames == 0
    }

    /// Whether the session can prove it lost nothing silently.
    pub fn is_consistent(&self) -> bool {
        self.unaccounted.is_empty() && self.unknown_records == 0
    }

    /// The summary as text, one line each (empty when clean).
    pub fn text(&self) -> String {
        let mut text = String::new();
        for (cpu, count) in &self.lost {
            if *count > 0 {
                text.push_str(&format!(
                    "lost {count} events on CPU {cpu} (event ring full)\n"
                ));
            }
        }
        for problem in &self.unaccounted {
            text.push_str(&format!("{problem}\n"));
        }
        for probe in &self.probes {
            let mut parts = Vec::new();
            if probe.faults > 0 {
                parts.push(format!(
                    "{} faults (last at {:#x})",
                    probe.faults, probe.last_fault_address
                ));
            }
            if probe.misses > 0 {
                parts.push(format!("{} misses", probe.misses));
            }
            if probe.drops > 0 {
                parts.push(format!("{} drops", probe.drops));
            }
            text.push_str(&format!(
                "probe {} ({}): {}\n",
                probe.probe,
                probe.description,
                parts.join(", ")
            ));
        }
        if self.unknown_records > 0 {
            text.push_str(&format!(
                "{} events with an unknown record number\n",
                self.unknown_records
            ));
        }
        if self.dropped_frames > 0 {
            text.push_str(&format!(
                "{} corrupted frames dropped on the port\n",
                self.dropped_frames
            ));
        }
        text
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "type": "summary",
            "events": self.events,
            "lost": self.lost.iter().map(|(cpu, count)| json!({"cpu": cpu, "count": count})).collect::<Vec<_>>(),
            "unaccounted": self.unaccounted,
            "probes": self.probes.iter().map(|probe| json!({
                "probe": probe.probe,
                "description": probe.description,
                "faults": probe.faults,
                "last_fault_address": probe.last_fault_address,
                "misses": probe.misses,
                "drops": probe.drops,
            })).collect::<Vec<_>>(),
            "unknown_records": self.unknown_records,
            "dropped_frames": self.dropped_frames,
        })
    }
}

/// Where output goes, and how it looks.
pub struct Output<'w> {
    /// Records, maps (and, in JSON, the summary).
    pub out: &'w mut dyn Write,
    /// Warnings and the text summary.
    pub err: &'w mut dyn Write,
    /// Text or JSON lines.
    pub format: OutputFormat,
}

impl std::fmt::Debug for Output<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Per-CPU sequence numbers seen: merged ranges.
#[derive(Debug, Default)]
struct Coverage {
    ranges: BTreeMap<u16, Vec<(u64, u64)>>,
}

impl Coverage {
    fn add(&mut self, cpu: u16, start: u64, end: u64) {
        let ranges = self.ranges.entry(cpu).or_default();
        match ranges.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => ranges.push((start, end)),
        }
    }

    /// Problems with CPU `cpu`'s numbers against `0..next_seq`.
    fn check(&mut self, cpu: u16, next_seq: u64) -> Vec<String> {
        let mut ranges = self.ranges.remove(&cpu).unwrap_or_default();
        ranges.sort_unstable();
        let mut problems = Vec::new();
        let mut expected = 0;
        for (start, end) in ranges {
            if start > expected {
                problems.push(format!(
                    "CPU {cpu}: events {expected}..{start} were neither delivered nor reported lost"
                ));
            } else if start < expected {
                problems.push(format!(
                    "CPU {cpu}: events {start}..{} were delivered or reported twice",
                    end.min(expected)
                ));
            }
            expected = expected.max(end);
        }
        if expected < next_seq {
            problems.push(format!(
                "CPU {cpu}: events {expected}..{next_seq} were neither delivered nor reported lost"
            ));
        } else if expected > next_seq {
            problems.push(format!(
                "CPU {cpu}: events up to {expected} arrived but the CPU counted only {next_seq}"
            ));
        }
        problems
    }
}

/// An armed probe.
#[derive(Debug)]
struct Armed {
    probe: ProbeId,
    description: String,
}

struct Session<'a, 'w, S> {
    port: &'a mut Port<S>,
    /// The kernel's debuginfo; `None` for scripts of user-space points only.
    kernel: Option<&'a Kernel>,
    output: &'a mut Output<'w>,
    last_request: Instant,
    cpu_count: u16,
    coverage: Coverage,
    summary: Summary,
    /// Marker sites and names, for printing `probefunc` at markers.
    marker_sites: std::rc::Rc<Vec<(u64, String)>>,
    /// Whether the stub takes `Jump` requests.
    jumps: bool,
    /// Kernel addresses the stub names, without the kernel's image.
    stub_symbols: Option<StubSymbols>,
}

/// How the running kernel's marker table (`running`) differs from the image's, or
/// `None` when they are the same (names, argument names and types, order).
fn marker_difference(image: &[Marker], running: &[Marker]) -> Option<String> {
    let describe = |marker: &Marker| {
        let args: Vec<String> = marker
            .args
            .iter()
            .map(|arg| format!("{}: {:?}", arg.name, arg.ty))
            .collect();
        format!("{}({})", marker.name, args.join(", "))
    };
    for (position, (image, running)) in image.iter().zip(running).enumerate() {
        if image != running {
            return Some(format!(
                "marker {position} is {} in the image but {} in the kernel",
                describe(image),
                describe(running)
            ));
        }
    }
    (image.len() != running.len()).then(|| {
        format!(
            "the image has {} markers, the kernel {}",
            image.len(),
            running.len()
        )
    })
}

/// `function+0xoff` for code, `marker NAME` for a marker's site (what `probefunc`
/// holds at a marker).
fn symbolize(
    kernel: Option<&Kernel>,
    markers: &[(u64, String)],
    stub: Option<&StubSymbols>,
    address: u64,
) -> Option<String> {
    if let Some((_, name)) = markers.iter().find(|(site, _)| *site == address) {
        return Some(format!("marker {name}"));
    }
    if kernel.is_none() {
        return stub?.name(address);
    }
    kernel?
        .symbolize(address)
        .map(|symbol| format!("{}+{:#x}", symbol.function, symbol.offset))
}

/// Runs a session on a connected `port` (module docs: the steps). `sources` holds
/// the script and its tapsets; `stop` is set by Ctrl-C.
pub fn run<S: TimedRead>(
    port: &mut Port<S>,
    kernel: &Kernel,
    sources: &Sources,
    options: &SessionOptions,
    output: &mut Output<'_>,
    stop: &AtomicBool,
) -> Result<Summary, SessionError> {
    run_with(port, Some(kernel), sources, options, output, stop)
}

/// [`run`] without the kernel's debuginfo, for the Linux adapter: user-space points
/// (`process(...)`) are resolved in the traced files themselves
/// ([`crate::uprobe::UserResolver`]); kernel functions, when the stub announces
/// `KERNEL_SYMBOL`, are sent by name for the kernel to resolve
/// ([`crate::uprobe::KernelSymbolResolver`]). No build-id is checked and addresses
/// are not symbolised.
pub fn run_user_space<S: TimedRead>(
    port: &mut Port<S>,
    sources: &Sources,
    options: &SessionOptions,
    output: &mut Output<'_>,
    stop: &AtomicBool,
) -> Result<Summary, SessionError> {
    run_with(port, None, sources, options, output, stop)
}

fn run_with<S: TimedRead>(
    port: &mut Port<S>,
    kernel: Option<&Kernel>,
    sources: &Sources,
    options: &SessionOptions,
    output: &mut Output<'_>,
    stop: &AtomicBool,
) -> Result<Summary, SessionError> {
    let mut session = Session {
        port,
        kernel,
        output,
        last_request: Instant::now(),
        cpu_count: 1,
        coverage: Coverage::default(),
        summary: Summary::default(),
        marker_sites: std::rc::Rc::default(),
        jumps: false,
        stub_symbols: None,
    };
    let result = session.run(sources, options, stop);
    // Whatever happened, end the session so the kernel restores its text at once.
    let goodbye = session.request(RequestBody::Goodbye);
    let summary = result?;
    goodbye?;
    Ok(summary)
}

impl<S: TimedRead> Session<'_, '_, S> {
    fn request(&mut self, body: RequestBody<'_>) -> Result<Reply, PortError> {
        self.last_request = Instant::now();
        self.port.request(body)
    }

    fn run(
        &mut self,
        sources: &Sources,
        options: &SessionOptions,
        stop: &AtomicBool,
    ) -> Result<Summary, SessionError> {
        // Handshake and identity.
        let hello = self.port.hello(&options.client_name)?;
        self.last_request = Instant::now();
        let (build_id, cpu_count, max_insns, lease_ms, map_memory, capabilities, kernel_name) =
            match hello.ok()? {
                ReplyBody::Hello(hello) => (
                    hello.kernel.build_id.to_vec(),
                    hello.cpu_count,
                    hello.limits.max_program_insns,
                    hello.lease_ms,
                    hello.limits.map_memory,
                    hello.capabilities,
                    hello.kernel.name.to_string(),
                ),
                other => return Err(unexpected("Hello", &other)),
            };
        // The tapsets of the kernel the stub names (Linux's or the demo kernel's).
        let with_tapsets;
        let sources = if options.target_tapsets {
            let mut added = sources.clone();
            lang::tapset::add_builtin_for(
                &mut added,
                lang::tapset::Builtin::for_kernel(&kernel_name),
            );
            with_tapsets = added;
            &with_tapsets
        } else {
            sources
        };
        self.cpu_count = cpu_count.max(1);
        self.jumps = capabilities.has(Capabilities::JUMP);
        if self.kernel.is_none() && capabilities.has(Capabilities::SYMBOLIZE) {
            self.stub_symbols = Some(StubSymbols::default());
        }
        if let Some(kernel) = self.kernel
            && !build_id.is_empty()
        {
            kernel.check_build_id(&build_id)?;
        }

        // The kernel's markers, then the script.
        let markers = self.markers()?;
        if let Some(image_markers) = &options.image_markers
            && let Some(difference) = marker_difference(image_markers, &markers)
        {
            return Err(SessionError::MarkerMismatch(difference));
        }
        let mut compile_options = options.compile.clone();
        compile_options.max_insns = compile_options.max_insns.min(max_insns as usize);
        let (compiled, diagnostics) = match self.kernel {
            Some(kernel) => compile(
                sources,
                &DwarfResolver::new(kernel, markers),
                &compile_options,
            ),
            // The stub names kernel functions itself (PROTOCOL.md §8.10), typed
            // from BTF when there is one for this kernel.
            None if capabilities.has(Capabilities::KERNEL_SYMBOL) => {
                let selected = match &options.kernel_types {
                    Some(types) => types.select(&build_id)?,
                    None => crate::btf::source::Selected {
                        btf: None,
                        warning: None,
                    },
                };
                if let Some(warning) = &selected.warning {
                    writeln!(self.output.err, "warning: {warning}")?;
                }
                match &selected.btf {
                    Some(btf) => compile(
                        sources,
                        &WithMarkers {
                            inner: crate::btf::resolver::BtfResolver::new(&btf.btf),
                            markers,
                        },
                        &compile_options,
                    ),
                    None => compile(
                        sources,
                        &WithMarkers {
                            inner: crate::uprobe::KernelSymbolResolver,
                            markers,
                        },
                        &compile_options,
                    ),
                }
            }
            None => compile(
                sources,
                &WithMarkers {
                    inner: crate::uprobe::UserResolver,
                    markers,
                },
                &compile_options,
            ),
        };
        let warnings: Vec<Diagnostic> = diagnostics
            .iter()
            .filter(|diagnostic| !diagnostic.is_error())
            .cloned()
            .collect();
        let Some(script) = compiled else {
            return Err(SessionError::Compile {
                rendered: render(sources, &diagnostics),
            });
        };
        self.output
            .err
            .write_all(render(sources, &warnings).as_bytes())?;

        let mut script = script;
        self.fit_maps(&mut script, map_memory)?;
        for info in &script.maps {
            let reply = self.request(RequestBody::DefineMap(info.spec))?;
            if let Err(error) = reply.get() {
                return Err(SessionError::Refused(vec![format!(
                    "  map {} ({} entries of {} + {} bytes): {error}",
                    info.name, info.spec.max_entries, info.spec.key_size, info.spec.value_size
                )]));
            }
        }
        let armed = self.arm(&script)?;

        let mut started = false;
        let mut exit = false;
        for action in &script.begin {
            if self.host_action(&script, action)? {
                exit = true;
                break;
            }
        }
        if !exit {
            self.request(RequestBody::Start)?.ok()?;
            started = true;
            let start = Instant::now();
            let keep_alive = (lease_ms > 0).then(|| Duration::from_millis(u64::from(lease_ms) / 3));
            loop {
                if self.handle_unsolicited(&script, true)? {
                    break;
                }
                if stop.load(Ordering::Relaxed)
                    || options
                        .duration
                        .is_some_and(|duration| start.elapsed() >= duration)
                    || self.port.stream().exhausted()
                {
                    break;
                }
                if keep_alive.is_some_and(|period| self.last_request.elapsed() >= period) {
                    self.request(RequestBody::KeepAlive)?.ok()?;
                }
                let wait = options.duration.map_or(options.poll_interval, |duration| {
                    duration
                        .saturating_sub(start.elapsed())
                        .min(options.poll_interval)
                });
                self.port.poll(wait)?;
            }
        }
        if started {
            self.request(RequestBody::Stop)?.ok()?;
            // Everything emitted before `Stop` arrived before its reply.
            self.handle_unsolicited(&script, false)?;
            for cpu in 0..self.cpu_count {
                match self.request(RequestBody::CpuStats { cpu })?.ok()? {
                    ReplyBody::CpuStats(stats) => {
                        let problems = self.coverage.check(cpu, stats.next_seq);
                        self.summary.unaccounted.extend(problems);
                    }
                    other => return Err(unexpected("CpuStats", &other)),
                }
            }
        }
        for action in &script.end {
            self.host_action(&script, action)?;
        }
        for armed in &armed {
            match self
                .request(RequestBody::ProbeStats { probe: armed.probe })?
                .ok()?
            {
                ReplyBody::ProbeStats(stats) => {
                    if stats.faults + stats.misses + stats.drops > 0 {
                        self.summary.probes.push(ProbeReport {
                            probe: armed.probe.0,
                            description: armed.description.clone(),
                            faults: stats.faults,
                            last_fault_address: stats.last_fault_address,
                            misses: stats.misses,
                            drops: stats.drops,
                        });
                    }
                }
                other => return Err(unexpected("ProbeStats", &other)),
            }
        }
        self.summary.dropped_frames = self.port.dropped_frames().len();
        let summary = self.summary.clone();
        match self.output.format {
            OutputFormat::Text => {
                if !summary.is_clean() {
                    self.output.err.write_all(summary.text().as_bytes())?;
                }
            }
            OutputFormat::Json => json_line(self.output.out, &summary.json())?,
        }
        self.output.out.flush()?;
        Ok(summary)
    }

    /// Lowers the maps' entry counts, in proportion, when their estimated memory
    /// exceeds the kernel's map memory, and says so on stderr. The estimate is a
    /// hash table of 1.25 buckets per entry, each bucket a header word, the key and
    /// the value (per CPU for aggregations); a stub that needs more still refuses
    /// with `NO_SPACE`, reported with the map's name.
    fn fit_maps(
        &mut self,
        script: &mut CompiledScript,
        map_memory: u64,
    ) -> Result<(), SessionError> {
        let bytes = |info: &MapInfo, entries: u64| -> u64 {
            let key = u64::from(info.spec.key_size).div_ceil(8);
            let value = u64::from(info.spec.value_size).div_ceil(8);
            let tables = if info.spec.is_aggregate() {
                u64::from(self.cpu_count)
            } else {
                1
            };
            (entries + entries / 4 + 1) * (1 + key + value) * 8 * tables
        };
        let total: u64 = script
            .maps
            .iter()
            .map(|info| bytes(info, u64::from(info.spec.max_entries)))
            .sum();
        // Leave a tenth for the stub's own rounding.
        let budget = map_memory - map_memory / 10;
        if total <= budget || map_memory == 0 {
            return Ok(());
        }
        for info in &mut script.maps {
            let old = info.spec.max_entries;
            let fitted = (u128::from(old) * u128::from(budget) / u128::from(total)).max(1) as u32;
            if fitted >= old {
                continue;
            }
            info.spec.max_entries = fitted;
            writeln!(
                self.output.err,
                "warning: map {} holds at most {fitted} entries instead of {old} \
                 (the kernel has {} KiB for maps)",
                info.name,
                map_memory / 1024
            )?;
        }
        Ok(())
    }

    /// The kernel's marker table (empty when it has none).
    fn markers(&mut self) -> Result<Vec<Marker>, SessionError> {
        let mut markers = Vec::new();
        let mut sites = Vec::new();
        let mut index = 0;
        loop {
            let reply = self.request(RequestBody::DescribeMarker { index })?;
            let total = match reply.get() {
                Ok(ReplyBody::Marker(marker)) => {
                    sites.push((marker.address, marker.name.to_string()));
                    markers.push(Marker {
                        index: marker.index,
                        name: marker.name.to_string(),
                        args: marker
                            .args
                            .iter()
                            .map(|arg| MarkerArg {
                                name: arg.name.to_string(),
                                ty: arg.ty,
                            })
                            .collect(),
                    });
                    marker.total
                }
                Err(error) if error.code == ErrorCode::UNKNOWN_MARKER && index == 0 => 0,
                Err(error) => return Err(PortError::Refused(error.to_string()).into()),
                Ok(other) => return Err(unexpected("DescribeMarker", &other)),
            };
            index += 1;
            if index >= total {
                self.marker_sites = std::rc::Rc::new(sites);
                return Ok(markers);
            }
        }
    }

    /// Arms every attachment; every refusal is collected and none starts.
    fn arm(&mut self, script: &CompiledScript) -> Result<Vec<Armed>, SessionError> {
        let mut armed = Vec::new();
        let mut refused = Vec::new();
        // Every address a site of the script probes (dynamic, return), for the
        // jump windows.
        let mut probed = Vec::new();
        let mut dynamic = Vec::new();
        for probe in &script.probes {
            for attachment in &probe.attachments {
                let program = attachment.program_bytes();
                let entry_program = attachment.entry_program_bytes();
                let site = attachment.site.to_wire(&entry_program);
                let reply = self.request(RequestBody::Arm(ArmRequest {
                    site,
                    program: &program,
                }))?;
                let description = format!("{} at {}", probe.name, attachment.description);
                match reply.get() {
                    Ok(ReplyBody::Armed { probe }) => {
                        match attachment.site {
                            lang::compiled::SiteSpec::Dynamic { address, .. } => {
                                dynamic.push((probe, address));
                                probed.push(address);
                            }
                            lang::compiled::SiteSpec::Return { address, .. } => {
                                probed.push(address)
                            }
                            _ => {}
                        }
                        armed.push(Armed { probe, description })
                    }
                    Ok(other) => return Err(unexpected("Arm", &other)),
                    Err(error) => refused.push(format!("  {description}: {error}")),
                }
            }
        }
        if !refused.is_empty() {
            return Err(SessionError::Refused(refused));
        }
        // Then jumps, once every site is known: a window stops short of the next
        // probed address (a jump over it would go back to a breakpoint), and a
        // return probe's address takes none.
        for (probe, address) in dynamic {
            if probed.iter().filter(|&&other| other == address).count() > 1 {
                continue;
            }
            let next = probed
                .iter()
                .filter(|&&other| other > address)
                .map(|&other| other - address)
                .min()
                .unwrap_or(u64::MAX);
            self.jump(probe, address, next)?;
        }
        Ok(armed)
    }

    /// Asks the stub to enter a dynamic probe by a jump, when it can and the
    /// function's code leaves room (`resolve::jump_window`, at most `limit` bytes).
    /// A refusal only means the probe keeps its breakpoint: it is not an error.
    fn jump(&mut self, probe: ProbeId, address: u64, limit: u64) -> Result<(), SessionError> {
        let Some(kernel) = self.kernel else {
            return Ok(());
        };
        let window = u64::from(crate::resolve::jump_window(kernel, address)).min(limit) as u8;
        if self.jumps && window >= 5 {
            self.request(RequestBody::Jump { probe, window })?;
        }
        Ok(())
    }

    /// Performs a `begin`/`end` action; true for `exit`.
    fn host_action(
        &mut self,
        script: &CompiledScript,
        action: &HostAction,
    ) -> Result<bool, SessionError> {
        match action {
            HostAction::Print(text) => match self.output.format {
                OutputFormat::Text => self.output.out.write_all(text.as_bytes())?,
                OutputFormat::Json => {
                    json_line(self.output.out, &json!({"type": "printf", "text": text}))?
                }
            },
            HostAction::PrintMap(map) => self.print_map(script, *map)?,
            HostAction::ClearMap(map) => {
                self.request(RequestBody::ClearMap { map: *map })?.ok()?;
            }
            HostAction::Exit => return Ok(true),
        }
        Ok(false)
    }

    /// Handles every event and loss report received; true when one asked to exit
    /// (only acted on when `obey_exit`).
    fn handle_unsolicited(
        &mut self,
        script: &CompiledScript,
        obey_exit: bool,
    ) -> Result<bool, SessionError> {
        let mut exit = false;
        for message in self.port.take_unsolicited() {
            match message {
                Unsolicited::Lost(lost) => {
                    *self.summary.lost.entry(lost.cpu).or_default() += lost.count;
                    self.coverage
                        .add(lost.cpu, lost.first_seq, lost.first_seq + lost.count);
                }
                Unsolicited::Event(event) => {
                    self.summary.events += 1;
                    self.coverage.add(event.cpu, event.seq, event.seq + 1);
                    exit |= self.event(script, &event)? && obey_exit;
                }
            }
        }
        Ok(exit)
    }

    /// Handles one event; true for `exit()`.
    fn event(&mut self, script: &CompiledScript, event: &OwnedEvent) -> Result<bool, SessionError> {
        let Some(record) = script.record_of(&event.data) else {
            self.summary.unknown_records += 1;
            return Ok(false);
        };
        match &record.kind {
            RecordKind::Printf(_) => {
                self.name_addresses(&record.fields, &event.data)?;
                let (kernel, sites) = (self.kernel, std::rc::Rc::clone(&self.marker_sites));
                let stub = self.stub_symbols.as_ref();
                let text = format_record(record, &event.data, &|address| {
                    symbolize(kernel, &sites, stub, address)
                });
                match self.output.format {
                    OutputFormat::Text => self.output.out.write_all(text.as_bytes())?,
                    OutputFormat::Json => json_line(
                        self.output.out,
                        &json!({
                            "type": "printf",
                            "cpu": event.cpu,
                            "time_ns": event.time_ns,
                            "probe": event.probe,
                            "text": text,
                        }),
                    )?,
                }
            }
            RecordKind::PrintMap(map) => self.print_map(script, *map)?,
            RecordKind::ClearMap(map) => {
                self.request(RequestBody::ClearMap { map: *map })?.ok()?;
            }
            RecordKind::Exit => return Ok(true),
        }
        Ok(false)
    }

    /// Asks the stub to name the kernel addresses of `fields` in `bytes` it has not
    /// named yet (sessions without the kernel's image, [`crate::stub_symbols`]).
    fn name_addresses(&mut self, fields: &[Field], bytes: &[u8]) -> Result<(), SessionError> {
        let Some(unknown) = self
            .stub_symbols
            .as_ref()
            .map(|symbols| symbols.unknown(fields, bytes))
        else {
            return Ok(());
        };
        for address in unknown {
            let name = match self.request(RequestBody::Symbolize { address })?.ok() {
                Ok(ReplyBody::Symbol { name, offset, .. }) => Some(format!("{name}+{offset:#x}")),
                _ => None,
            };
            if let Some(symbols) = &mut self.stub_symbols {
                symbols.insert(address, name);
            }
        }
        Ok(())
    }

    /// Reads every page of a map.
    fn read_map(&mut self, info: &MapInfo) -> Result<Vec<MapEntry>, SessionError> {
        let mut entries = Vec::new();
        let mut cursor = 0;
        loop {
            let reply = self.request(RequestBody::ReadMap {
                map: info.spec.map,
                cursor,
            })?;
            match reply.ok()? {
                ReplyBody::MapPage(page) => {
                    entries.extend(split_map_page(
                        info,
                        page.entries,
                        usize::from(self.cpu_count),
                    ));
                    match page.next_cursor {
                        Some(next) => cursor = next,
                        None => return Ok(entries),
                    }
                }
                other => return Err(unexpected("ReadMap", &other)),
            }
        }
    }

    fn print_map(&mut self, script: &CompiledScript, map: MapId) -> Result<(), SessionError> {
        let Some(info) = script.maps.iter().find(|info| info.spec.map == map) else {
            return Err(SessionError::Protocol(format!("no map {}", map.0)));
        };
        let entries = self.read_map(info)?;
        for entry in &entries {
            self.name_addresses(&info.key, &entry.key)?;
        }
        let (kernel, sites) = (self.kernel, std::rc::Rc::clone(&self.marker_sites));
        let stub = self.stub_symbols.as_ref();
        let symbolizer = |address| symbolize(kernel, &sites, stub, address);
        match self.output.format {
            OutputFormat::Text => self
                .output
                .out
                .write_all(format_map(info, &entries, &symbolizer).as_bytes())?,
            OutputFormat::Json => {
                json_line(self.output.out, &map_json(info, &entries, &symbolizer))?
            }
        }
        Ok(())
    }
}

fn unexpected(request: &str, reply: &ReplyBody<'_>) -> SessionError {
    SessionError::Protocol(format!("unexpected reply to {request}: {reply:?}"))
}

fn json_line(out: &mut dyn Write, value: &serde_json::Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

fn word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let length = bytes.len().min(8);
    word[..length].copy_from_slice(&bytes[..length]);
    u64::from_le_bytes(word)
}

/// One value as JSON: integers as numbers, the rest as their text.
fn value_json(
    ty: ValueType,
    bytes: &[u8],
    symbolizer: &dyn Fn(u64) -> Option<String>,
) -> serde_json::Value {
    match ty {
        ValueType::Signed => json!(word(bytes) as i64),
        ValueType::Unsigned => json!(word(bytes)),
        ValueType::Bool => json!(word(bytes) != 0),
        ValueType::Stack { .. } => json!(
            format_value(ty, bytes, symbolizer)
                .split('\n')
                .map(str::trim)
                .filter(|frame| !frame.is_empty())
                .collect::<Vec<_>>()
        ),
        _ => json!(format_value(ty, bytes, symbolizer)),
    }
}

/// A map as one JSON object: `{"type": "map", "name", "entries": [{"key", "value"}]}`.
fn map_json(
    info: &MapInfo,
    entries: &[MapEntry],
    symbolizer: &dyn Fn(u64) -> Option<String>,
) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = entries
        .iter()
        .map(|entry| {
            let key: Vec<serde_json::Value> = info
                .key
                .iter()
                .map(|field| {
                    let start = usize::from(field.offset).min(entry.key.len());
                    value_json(field.ty, &entry.key[start..], symbolizer)
                })
                .collect();
            let value = match (&info.value, &entry.value) {
                (MapValue::Value(ty), MapEntryValue::Plain(bytes)) => {
                    value_json(*ty, bytes, symbolizer)
                }
                (MapValue::Aggregate(kind), MapEntryValue::Aggregate(words)) => {
                    let at = |index: usize| words.get(index).copied().unwrap_or(0);
                    match kind {
                        AggregateKind::Avg => json!(at(1) / at(0).max(1)),
                        AggregateKind::Stats => json!({
                            "count": at(0),
                            "average": at(1) / at(0).max(1),
                            "total": at(1),
                            "min": at(2),
                            "max": at(3),
                        }),
                        AggregateKind::Log2Hist | AggregateKind::LinearHist { .. } => {
                            json!({ "buckets": words })
                        }
                        _ => json!(at(0)),
                    }
                }
                _ => serde_json::Value::Null,
            };
            json!({ "key": key, "value": value })
        })
        .collect();
    json!({ "type": "map", "name": info.name, "entries": entries })
}
