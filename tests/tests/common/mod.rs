//! What the demo-kernel tests share: the kernel image read on the host (symbols and
//! bytes, with the `object` crate), a booted kernel with a session on its probe
//! port, the workload's ground truth, and small helpers for programs and maps.
//!
//! Every boot runs QEMU with TCG (never KVM), one at a time in a test binary (a
//! lock), and checks afterwards that no QEMU process of the run is left (by pid and
//! by the run's private directory, never by a global process name).
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different part of the helpers"
)]

use std::collections::{BTreeMap, HashMap};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use probe_port_protocol::asm::assemble;
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::isa;
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};
use probe_port_protocol::message::{
    ArmRequest, CpuStats, ErrorDetail, ProbeId, ProbeStats, ReplyBody, RequestBody, Site,
};
use qemu::{Config, EXIT_STATUS_PASS, Outcome, Qemu, TcgThreading, build_demo_kernel};
use userland_client::port::{OwnedEvent, Port, Reply, Unsolicited};

/// One QEMU at a time in a test binary: the machines have two cores and other test
/// binaries may run QEMU too.
pub fn one_boot_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The demo kernel's image (built once per test binary).
pub fn demo_kernel() -> PathBuf {
    build_demo_kernel().unwrap_or_else(|error| panic!("{error}"))
}

/// Panics if a QEMU of a finished run is still there.
pub fn assert_no_qemu_left(pid: u32, run_directory: &Path) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU (pid {pid}) still exists after the run"
    );
    let output = Command::new("pgrep")
        .arg("-f")
        .arg(run_directory)
        .output()
        .expect("pgrep (procps) is needed to look for leftover QEMU processes");
    let leftovers = String::from_utf8_lossy(&output.stdout);
    assert!(
        leftovers.trim().is_empty(),
        "processes of {} left: {leftovers}",
        run_directory.display()
    );
}

// ----------------------------------------------------------------------------
// The kernel image, read on the host.

/// A function of the kernel's symbol table.
#[derive(Clone, Debug)]
pub struct Function {
    /// Demangled path without the hash (`demo_kernel::sys::dispatch`).
    pub name: String,
    pub address: u64,
    pub size: u64,
}

/// The demo kernel's ELF as the client sees it: symbols and section bytes.
#[derive(Debug)]
pub struct KernelImage {
    pub path: PathBuf,
    /// Every function symbol with a size, in address order.
    pub functions: Vec<Function>,
    symbols: HashMap<String, u64>,
    /// (address, bytes) of every allocated section with file contents.
    sections: Vec<(u64, Vec<u8>)>,
    pub build_id: Vec<u8>,
}

impl KernelImage {
    fn load(path: PathBuf) -> KernelImage {
        let data =
            std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let file = object::File::parse(&*data).expect("the demo kernel is an ELF file");
        let mut functions = Vec::new();
        let mut symbols = HashMap::new();
        for symbol in file.symbols() {
            let Ok(name) = symbol.name() else { continue };
            symbols.insert(name.to_owned(), symbol.address());
            if symbol.kind() == SymbolKind::Text && symbol.size() > 0 {
                functions.push(Function {
                    name: format!("{:#}", rustc_demangle::demangle(name)),
                    address: symbol.address(),
                    size: symbol.size(),
                });
            }
        }
        functions.sort_by_key(|function| function.address);
        let sections = file
            .sections()
            .filter(|section| section.address() != 0)
            .filter_map(|section| Some((section.address(), section.data().ok()?.to_vec())))
            .filter(|(_, bytes)| !bytes.is_empty())
            .collect();
        let build_id = file
            .build_id()
            .ok()
            .flatten()
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        KernelImage {
            path,
            functions,
            symbols,
            sections,
            build_id,
        }
    }

    /// The function named `path` (demangled, without hash); panics if there is not
    /// exactly one.
    pub fn function(&self, path: &str) -> &Function {
        let found: Vec<&Function> = self.functions.iter().filter(|f| f.name == path).collect();
        assert_eq!(found.len(), 1, "functions named {path}: {found:?}");
        found[0]
    }

    /// The address of a raw (linker or assembly) symbol.
    pub fn symbol(&self, name: &str) -> u64 {
        *self
            .symbols
            .get(name)
            .unwrap_or_else(|| panic!("no symbol {name} in the kernel"))
    }

    /// `len` bytes of the image at `address`.
    pub fn bytes(&self, address: u64, len: usize) -> Vec<u8> {
        self.sections
            .iter()
            .find_map(|(start, bytes)| {
                let offset = usize::try_from(address.checked_sub(*start)?).ok()?;
                bytes.get(offset..offset + len).map(<[u8]>::to_vec)
            })
            .unwrap_or_else(|| panic!("{len} bytes at {address:#x} are not in the image"))
    }

    /// The kernel text the stub must leave as it found it: `.text` without the
    /// stub's own areas (the out-of-line slots and the compiled handlers), as
    /// ranges.
    pub fn checked_text(&self) -> Vec<std::ops::Range<u64>> {
        let text = self.symbol("__text_start")..self.symbol("__text_end");
        let mut areas = [self.out_of_line_area(), self.compiled_code_area()];
        areas.sort_by_key(|area| area.start);
        let mut ranges = Vec::new();
        let mut cursor = text.start;
        for area in areas {
            ranges.push(cursor..area.start);
            cursor = area.end;
        }
        ranges.push(cursor..text.end);
        ranges
    }

    /// The stub's out-of-line area.
    pub fn out_of_line_area(&self) -> std::ops::Range<u64> {
        let start = self.symbol("__probeport_out_of_line_probe_slots");
        start..start + 256 * 1024
    }

    /// Where the stub writes compiled handlers.
    pub fn compiled_code_area(&self) -> std::ops::Range<u64> {
        let start = self.symbol("__probeport_out_of_line_compiled_handlers");
        start..start + 256 * 1024
    }

    /// The forbidden text the platform announces.
    pub fn forbidden(&self) -> std::ops::Range<u64> {
        self.symbol("__probeport_forbidden_start")..self.symbol("__probeport_forbidden_end")
    }
}

/// The demo kernel's image, read once per test binary.
pub fn kernel_image() -> &'static KernelImage {
    static IMAGE: OnceLock<KernelImage> = OnceLock::new();
    IMAGE.get_or_init(|| KernelImage::load(demo_kernel()))
}

// ----------------------------------------------------------------------------
// Programs and maps.

/// Assembles a handler program into its wire bytes.
pub fn program(text: &str) -> Vec<u8> {
    isa::encode(&assemble(text).unwrap_or_else(|error| panic!("{error}\n{text}")))
}

/// `r0 = 0; exit`.
pub const EMPTY_HANDLER: &str = "mov64 r0, 0\nexit";

/// A count aggregation with 8-byte keys.
pub fn count_map(map: u16, max_entries: u32) -> MapSpec {
    MapSpec {
        map: MapId(map),
        kind: MapKind::Aggregate(AggregateKind::Count),
        key_size: 8,
        value_size: 8,
        max_entries,
    }
}

/// A handler that counts into map `map` with the 8-byte key in context slot
/// `slot` (a register by DWARF number, or a marker argument).
pub fn count_by_slot(map: u16, slot: usize) -> String {
    format!(
        "ldxdw r6, [r1+{}]\n\
         stxdw [r10-8], r6\n\
         mov64 r1, {map}\n\
         mov64 r2, r10\n\
         add64 r2, -8\n\
         mov64 r3, 1\n\
         call aggregate\n\
         mov64 r0, 0\n\
         exit",
        slot * 8
    )
}

/// A handler that emits context slots `slots` (8 bytes each) as one record.
pub fn emit_slots(slots: &[usize]) -> String {
    let mut text = String::new();
    let base = 8 * slots.len();
    for (index, slot) in slots.iter().enumerate() {
        text += &format!(
            "ldxdw r6, [r1+{}]\nstxdw [r10-{}], r6\n",
            slot * 8,
            base - 8 * index
        );
    }
    text += &format!(
        "mov64 r1, r10\nadd64 r1, -{base}\nmov64 r2, {base}\ncall emit\nmov64 r0, 0\nexit"
    );
    text
}

/// An event's record as little-endian u64 words.
pub fn words(event: &OwnedEvent) -> Vec<u64> {
    event
        .data
        .chunks_exact(8)
        .map(|word| u64::from_le_bytes(word.try_into().unwrap()))
        .collect()
}

// ----------------------------------------------------------------------------
// The workload's ground truth.

/// Client threads of the workload.
pub const CLIENTS: u64 = 4;
/// Pages each client touches in order.
const PAGES: u64 = 16;
/// Rounds between two agings of a client's map.
const AGE_WINDOW: u64 = 2 * PAGES;
/// A client yields after every this many rounds.
pub const YIELD_EVERY: u64 = 8;
/// Size field of every reply.
pub const REPLY_SIZE: u64 = 16;

/// The exact totals of `rounds` rounds, computed here independently of the
/// kernel's `workload_plan.rs`: four clients; each round a client stores to its
/// address space (16 pages touched in order, the map aged every 32 rounds), sends a
/// request of 8, 16, 24 or 32 bytes, receives a 16-byte reply, and yields every 8th
/// round; the server receives and replies, all through the syscall-like interface.
pub fn expected_totals(rounds: u64) -> BTreeMap<&'static str, u64> {
    let faults_per_client = rounds / AGE_WINDOW * PAGES + (rounds % AGE_WINDOW).min(PAGES);
    let major = CLIENTS * rounds.min(PAGES);
    let faults = CLIENTS * faults_per_client;
    let request_bytes: u64 = (0..CLIENTS)
        .flat_map(|client| (0..rounds).map(move |round| 8 * (1 + (round + client) % 4)))
        .sum();
    BTreeMap::from([
        ("rounds", rounds),
        ("sends", 2 * CLIENTS * rounds),
        ("receives", 2 * CLIENTS * rounds),
        ("faults", faults),
        ("minor", faults - major),
        ("major", major),
        (
            "syscalls",
            CLIENTS * (3 * rounds + rounds / YIELD_EVERY) + 2 * CLIENTS * rounds,
        ),
        ("bytes", request_bytes + CLIENTS * rounds * REPLY_SIZE),
    ])
}

/// The `key=value` fields of the one `workload: done` line.
pub fn done_line(console: &str) -> BTreeMap<String, u64> {
    let lines: Vec<&str> = console
        .lines()
        .filter(|line| line.starts_with("workload: done "))
        .collect();
    assert_eq!(lines.len(), 1, "one done line expected:\n{console}");
    lines[0]["workload: done ".len()..]
        .split_whitespace()
        .map(|field| {
            let (key, value) = field
                .split_once('=')
                .unwrap_or_else(|| panic!("malformed field {field:?} in {:?}", lines[0]));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("non-numeric field {field:?} in {:?}", lines[0]));
            (key.to_owned(), value)
        })
        .collect()
}

/// Checks the done line against the totals of `rounds` rounds.
pub fn assert_exact_totals(console: &str, rounds: u64) {
    let counted = done_line(console);
    assert!(counted.contains_key("switches"), "{console}");
    for (key, expected) in expected_totals(rounds) {
        assert_eq!(
            counted.get(key),
            Some(&expected),
            "{key} for {rounds} rounds:\n{console}"
        );
    }
}

/// The request id the workload gives client `client`'s request of round `round`.
pub fn request_id(round: u64, client: u64) -> u64 {
    round * CLIENTS + client
}

/// The digest the server returns for request `id` (the kernel's `plan::digest`
/// over the payload the client builds: round, client, `(client << 32) | round`,
/// the id as a u64 rotated left by 17).
pub fn digest(id: u64) -> u64 {
    let (round, client) = (id / CLIENTS, id % CLIENTS);
    let payload = [round, client, (client << 32) | round, id.rotate_left(17)];
    payload.iter().fold(id ^ 0x5bd1_e995, |accumulator, &word| {
        accumulator.rotate_left(13) ^ word.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    })
}

// ----------------------------------------------------------------------------
// A booted kernel with a session on its probe port.

/// What the handshake said.
#[derive(Clone, Debug)]
pub struct Handshake {
    pub name: String,
    pub build_id: Vec<u8>,
    pub cpu_count: u16,
    pub lease_ms: u32,
    pub max_probes: u32,
}

/// A refusal: the error code and its detail, rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: ErrorCode,
    pub detail: String,
}

/// How often the session renews its lease while the test waits.
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(1000);

/// A demo kernel booted under QEMU, with a session on its probe port.
pub struct DemoRun {
    _guard: MutexGuard<'static, ()>,
    pub qemu: Qemu,
    pub port: Port<UnixStream>,
    pid: u32,
    run_directory: PathBuf,
    last_request: Instant,
    pub threading: TcgThreading,
}

impl DemoRun {
    /// Boots the demo kernel on two CPUs with `append` under `threading`, within
    /// `timeout`, and takes its probe port (no handshake yet).
    pub fn boot(append: &str, threading: TcgThreading, timeout: Duration) -> DemoRun {
        let guard = one_boot_at_a_time();
        let config = Config::new(demo_kernel())
            .cpus(2)
            .tcg_threading(threading)
            .append(append)
            .timeout(timeout);
        let mut qemu = Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
        let (pid, run_directory) = (qemu.pid(), qemu.run_directory().to_path_buf());
        let stream = qemu.take_port().expect("COM2 is wired");
        let mut port = Port::new(stream);
        port.set_timeout(Duration::from_secs(30));
        eprintln!("booted the demo kernel ({threading:?} TCG, {append:?}), QEMU pid {pid}");
        DemoRun {
            _guard: guard,
            qemu,
            port,
            pid,
            run_directory,
            last_request: Instant::now(),
            threading,
        }
    }

    /// Panics with the console log.
    pub fn fail(&mut self, what: impl std::fmt::Display) -> ! {
        let console = self.qemu.console();
        self.qemu.kill();
        panic!("{what}\n--- console ---\n{console}");
    }

    /// When the last request was sent.
    pub fn last_request(&self) -> Instant {
        self.last_request
    }

    /// One request, its reply (refusals included).
    pub fn request(&mut self, body: RequestBody<'_>) -> Reply {
        self.last_request = Instant::now();
        match self.port.request(body) {
            Ok(reply) => reply,
            Err(error) => self.fail(format_args!("probe port: {error}")),
        }
    }

    /// A request that must succeed with `Done`.
    pub fn done(&mut self, body: RequestBody<'_>) {
        let what = format!("{body:?}");
        let reply = self.request(body);
        match reply.get() {
            Ok(ReplyBody::Done) => {}
            other => {
                let message = format!("{what}: {other:?}");
                self.fail(message)
            }
        }
    }

    /// The handshake.
    pub fn hello(&mut self) -> Handshake {
        self.last_request = Instant::now();
        let reply = match self.port.hello("probeport tests") {
            Ok(reply) => reply,
            Err(error) => self.fail(format_args!("hello: {error}")),
        };
        let handshake = match reply.get() {
            Ok(ReplyBody::Hello(hello)) => Handshake {
                name: hello.kernel.name.to_owned(),
                build_id: hello.kernel.build_id.to_vec(),
                cpu_count: hello.cpu_count,
                lease_ms: hello.lease_ms,
                max_probes: hello.limits.max_probes,
            },
            other => {
                let message = format!("hello: {other:?}");
                self.fail(message)
            }
        };
        assert_eq!(
            handshake.build_id,
            kernel_image().build_id,
            "the kernel's build-id is the image's"
        );
        handshake
    }

    /// Arms a probe; its number, or the refusal.
    pub fn try_arm(&mut self, site: Site<'_>, program: &[u8]) -> Result<u32, Refused> {
        let reply = self.request(RequestBody::Arm(ArmRequest { site, program }));
        match reply.get() {
            Ok(ReplyBody::Armed { probe }) => Ok(probe.0),
            Ok(other) => {
                let message = format!("arm: {other:?}");
                self.fail(message)
            }
            Err(error) => Err(Refused {
                code: error.code,
                detail: match error.detail {
                    ErrorDetail::Address(address) => format!("address {address:#x}"),
                    other => format!("{other:?}"),
                },
            }),
        }
    }

    /// Arms a probe that must be accepted.
    pub fn arm(&mut self, site: Site<'_>, program_text: &str) -> u32 {
        let what = format!("{site:?}");
        match self.try_arm(site, &program(program_text)) {
            Ok(probe) => probe,
            Err(refused) => self.fail(format_args!("arming {what}: {refused:?}")),
        }
    }

    /// Arms a dynamic probe at the entry of `function` (the expected bytes from the
    /// image).
    pub fn arm_entry(&mut self, function: &str, program_text: &str) -> u32 {
        let function = kernel_image().function(function).clone();
        let expected = kernel_image().bytes(function.address, 1);
        self.arm(
            Site::Dynamic {
                address: function.address,
                expected: &expected,
            },
            program_text,
        )
    }

    pub fn probe_stats(&mut self, probe: u32) -> ProbeStats {
        let reply = self.request(RequestBody::ProbeStats {
            probe: ProbeId(probe),
        });
        match reply.get() {
            Ok(ReplyBody::ProbeStats(stats)) => stats,
            other => {
                let message = format!("probe stats of {probe}: {other:?}");
                self.fail(message)
            }
        }
    }

    pub fn cpu_stats(&mut self, cpu: u16) -> CpuStats {
        let reply = self.request(RequestBody::CpuStats { cpu });
        match reply.get() {
            Ok(ReplyBody::CpuStats(stats)) => stats,
            other => {
                let message = format!("cpu stats of {cpu}: {other:?}");
                self.fail(message)
            }
        }
    }

    /// Every entry of aggregation `map` with 8-byte keys and `words` value words,
    /// read page by page and merged across `cpus` CPUs by summing each word.
    pub fn read_sum_map(
        &mut self,
        map: u16,
        value_words: usize,
        cpus: usize,
    ) -> BTreeMap<u64, Vec<u64>> {
        let mut merged = BTreeMap::new();
        let mut cursor = 0;
        loop {
            let reply = self.request(RequestBody::ReadMap {
                map: MapId(map),
                cursor,
            });
            let next = match reply.get() {
                Ok(ReplyBody::MapPage(page)) => {
                    let entry_size = 8 + 8 * value_words * cpus;
                    assert_eq!(page.entries.len(), page.count as usize * entry_size);
                    for entry in page.entries.chunks_exact(entry_size) {
                        let all: Vec<u64> = entry
                            .chunks_exact(8)
                            .map(|word| u64::from_le_bytes(word.try_into().unwrap()))
                            .collect();
                        let mut values = vec![0u64; value_words];
                        for cpu in 0..cpus {
                            for (word, value) in values.iter_mut().enumerate() {
                                *value += all[1 + cpu * value_words + word];
                            }
                        }
                        assert!(
                            merged.insert(all[0], values).is_none(),
                            "key {} on two pages",
                            all[0]
                        );
                    }
                    page.next_cursor
                }
                other => {
                    let message = format!("reading map {map}: {other:?}");
                    self.fail(message)
                }
            };
            match next {
                Some(next) => cursor = next,
                None => return merged,
            }
        }
    }

    /// `len` bytes of kernel memory through `ReadMemory` (any length).
    pub fn read_memory(&mut self, address: u64, len: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(len);
        while bytes.len() < len {
            let chunk = (len - bytes.len()).min(1024);
            let at = address + bytes.len() as u64;
            let reply = self.request(RequestBody::ReadMemory {
                address: at,
                len: chunk as u16,
            });
            match reply.get() {
                Ok(ReplyBody::Memory { bytes: read, .. }) => bytes.extend_from_slice(read),
                other => {
                    let message = format!("reading {chunk} bytes at {at:#x}: {other:?}");
                    self.fail(message)
                }
            }
        }
        bytes
    }

    /// Events and loss reports received so far.
    pub fn take_unsolicited(&mut self) -> Vec<Unsolicited> {
        self.port.take_unsolicited()
    }

    /// Receives what arrives for `duration`, renewing the lease meanwhile.
    pub fn pump(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.keep_alive();
            if let Err(error) = self.port.poll(Duration::from_millis(50)) {
                self.fail(format_args!("probe port: {error}"));
            }
        }
    }

    fn keep_alive(&mut self) {
        if self.last_request.elapsed() >= KEEP_ALIVE_EVERY {
            self.done(RequestBody::KeepAlive);
        }
    }

    /// Waits until the console shows `needle` (receiving events and renewing the
    /// lease meanwhile); returns the console.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> String {
        let until = Instant::now() + timeout;
        loop {
            let console = self.qemu.console();
            if console.contains(needle) {
                return console;
            }
            for bad in ["VERDICT: FAIL", "FATAL", "PANIC"] {
                if console.contains(bad) {
                    self.fail(format_args!(
                        "the kernel failed while the test waited for {needle:?}"
                    ));
                }
            }
            if Instant::now() >= until {
                self.fail(format_args!(
                    "no {needle:?} on the console within {timeout:?}"
                ));
            }
            self.pump(Duration::from_millis(100));
        }
    }

    /// Waits for the workload's gate, then starts the session (which opens it).
    pub fn start_workload(&mut self) {
        self.wait_console("workload: waiting for start", Duration::from_secs(30));
        self.done(RequestBody::Start);
    }

    /// Waits for the workload's done line and checks its totals.
    pub fn wait_workload(&mut self, rounds: u64, timeout: Duration) -> String {
        self.wait_console("workload: done ", timeout);
        // The init thread checks the totals before it goes on; its next line says
        // it passed them.
        let console = self.wait_console("init: workload done", Duration::from_secs(30));
        assert_exact_totals(&console, rounds);
        console
    }

    /// Ends the session with `Goodbye` and waits for the kernel's pass.
    pub fn goodbye_and_pass(mut self) -> Outcome {
        self.done(RequestBody::Goodbye);
        let DemoRun {
            qemu,
            port,
            pid,
            run_directory,
            threading,
            ..
        } = self;
        drop(port);
        let outcome = qemu.wait().unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(outcome.exit_status, EXIT_STATUS_PASS);
        for expected in [
            "probe-port: session ended by the client (goodbye); every probe disarmed",
            "VERDICT: PASS",
        ] {
            assert!(
                outcome.console.contains(expected),
                "console lacks {expected:?}:\n{}",
                outcome.console
            );
        }
        assert_no_qemu_left(pid, &run_directory);
        eprintln!(
            "{threading:?} TCG: boot to verdict in {:.2?}",
            outcome.elapsed
        );
        outcome
    }
}

/// Every event and loss report of `probe` (events) or of any probe (losses).
pub fn split_unsolicited(
    unsolicited: Vec<Unsolicited>,
) -> (
    Vec<OwnedEvent>,
    Vec<probe_port_protocol::message::LostEvents>,
) {
    let mut events = Vec::new();
    let mut losses = Vec::new();
    for item in unsolicited {
        match item {
            Unsolicited::Event(event) => events.push(event),
            Unsolicited::Lost(lost) => losses.push(lost),
        }
    }
    (events, losses)
}
