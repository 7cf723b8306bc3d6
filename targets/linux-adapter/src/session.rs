//! One client's session: every request of PROTOCOL.md answered with Linux's own
//! mechanisms, and every kernel object the session created owned by it.
//!
//! # Design
//!
//! [`Session`] holds the session's BPF maps, programs, perf events and ring buffer
//! as owning values. Ending the session (goodbye, end of stream, lease expiry) is
//! dropping it: each descriptor closes, which detaches the programs, removes the
//! uprobes and kprobes and frees the maps. Replies follow the demo stub's
//! (`kernel-stub` `session.rs`) for every request both understand; what only the
//! stub can do (kernel text sites by address, markers, timers, kernel memory reads)
//! is `UNSUPPORTED`. Kernel text named by symbol (`Site::KernelSymbol`) is a kprobe
//! when the kernel has a kprobe PMU.
//!
//! Events: the translated programs write records to one BPF ring buffer with a
//! per-CPU sequence number taken from a per-CPU counter before each attempt, and
//! count attempts that found the ring full. [`Session::drain`] turns records into
//! `Event`s and the gaps in each CPU's numbers into `Lost` reports, as the stub's
//! drain does: per CPU, events and losses cover every number exactly once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::frame::MAX_PAYLOAD;
use probe_port_protocol::isa::{Insn, STACK_SIZE, decode};
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapShapes, MapSpec, MapSpecError};
use probe_port_protocol::message::{
    Arch, ArmRequest, Capabilities, CpuStats, ErrorDetail, ErrorReply, Event, Hello, HelloReply,
    KernelIdentity, Limits, LostEvents, MAX_DETAIL_TEXT, MAX_NAME, MapPage, MarkerArg, MarkerInfo,
    PROTOCOL_VERSION, ProbeId, ProbeStats, ReplyBody, Request, RequestBody, Site, StubMessage,
    TimerScope,
};
use probe_port_protocol::verifier::{ProgramKind, VerifierConfig, verify_alloc};

use crate::kallsyms::KernelSymbols;
use crate::sys::{
    self, BpfMap, BpfProgram, KprobePmu, PROG_TYPE_KPROBE, PROG_TYPE_PERF_EVENT,
    PROG_TYPE_TRACEPOINT, ProbeEvent, RingBuffer, UprobePmu, map_type,
};
use crate::tracepoints::{self, Tracepoint};
use crate::translate::{
    self, ENTRY_RECORD, Environment, Layout, LinuxMap, RECORD_HEADER, RecordField, Role, counter,
    stat,
};

/// Most probes one session may arm (probe numbers are never reused in a session).
pub const MAX_PROBES: u32 = 256;
/// Most maps one session may define.
pub const MAX_MAPS: u32 = 64;
/// Entry records (frames between a function's entry and return) a session keeps.
pub const ENTRY_RECORDS: u32 = 16384;
/// Bytes of the one event ring buffer, by default.
pub const RING_BYTES: usize = 1 << 20;
/// Bytes of map memory a session may ask for (the sum of key and value sizes times
/// entries, per CPU for aggregations).
pub const MAP_MEMORY: u64 = 256 << 20;
/// Bytes of entries in one `MapPage`, leaving room for the message around them.
const PAGE_ENTRIES: usize = MAX_PAYLOAD - 256;

/// A reply as the session builds it: owned, turned into a message when sent.
#[derive(Debug)]
pub enum Outcome {
    /// `Ok` with a body that borrows nothing from the session.
    Body(ReplyBody<'static>),
    /// `Ok(Hello)`.
    Hello {
        /// The build-id bytes.
        build_id: Vec<u8>,
        /// The kernel's name.
        name: String,
        /// The rest of the handshake.
        reply: HelloReply<'static>,
    },
    /// `Ok(MapPage)` with owned entries.
    Page {
        /// The map.
        map: MapId,
        /// Entries in the page.
        count: u32,
        /// Their bytes.
        entries: Vec<u8>,
        /// The next cursor.
        next_cursor: Option<u32>,
    },
    /// `Ok(Symbol)` with an owned name.
    Symbol {
        /// The address asked about.
        address: u64,
        /// The function's name.
        name: String,
        /// From the function's start.
        offset: u64,
    },
    /// `Err` with an owned text detail or none.
    Error {
        /// The code.
        code: ErrorCode,
        /// The detail, when it is not text.
        detail: ErrorDetail<'static>,
        /// A text detail (at most `MAX_DETAIL_TEXT` bytes).
        text: Option<String>,
    },
}

fn error(code: ErrorCode, detail: ErrorDetail<'static>) -> Outcome {
    Outcome::Error {
        code,
        detail,
        text: None,
    }
}

fn error_text(code: ErrorCode, text: &str) -> Outcome {
    let mut end = text.len().min(MAX_DETAIL_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Outcome::Error {
        code,
        detail: ErrorDetail::None,
        text: Some(text[..end].to_string()),
    }
}

impl Outcome {
    /// Hands the reply to `send` as a message with sequence number `seq`.
    pub fn send(&self, seq: u32, send: &mut dyn FnMut(&StubMessage<'_>)) {
        let reply = match self {
            Outcome::Body(body) => Ok(body.clone()),
            Outcome::Hello {
                build_id,
                name,
                reply,
            } => Ok(ReplyBody::Hello(HelloReply {
                kernel: KernelIdentity {
                    build_id,
                    name,
                    arch: reply.kernel.arch,
                },
                ..reply.clone()
            })),
            Outcome::Page {
                map,
                count,
                entries,
                next_cursor,
            } => Ok(ReplyBody::MapPage(MapPage {
                map: *map,
                count: *count,
                entries,
                next_cursor: *next_cursor,
            })),
            Outcome::Symbol {
                address,
                name,
                offset,
            } => Ok(ReplyBody::Symbol {
                address: *address,
                name,
                offset: *offset,
            }),
            Outcome::Error { code, detail, text } => Err(ErrorReply::with(
                *code,
                match text {
                    Some(text) => ErrorDetail::Text(text),
                    None => *detail,
                },
            )),
        };
        send(&StubMessage::Reply { seq, reply });
    }
}

struct SessionMap {
    spec: MapSpec,
    map: BpfMap,
    /// For aggregations: the all-zero value new keys start from.
    zero: Option<BpfMap>,
}

struct Probe {
    /// The site's perf events: the probe itself, then (return sites with an entry
    /// program) the entry probe.
    events: Vec<ProbeEvent>,
    /// Kept open while the events use them; asked for the runs Linux skipped.
    programs: Vec<BpfProgram>,
}

impl Probe {
    /// Enables the events in order, or disables them in reverse order.
    fn set_enabled(&self, enabled: bool) -> std::io::Result<()> {
        if enabled {
            self.events
                .iter()
                .try_for_each(|event| event.set_enabled(true))
        } else {
            self.events
                .iter()
                .rev()
                .try_for_each(|event| event.set_enabled(false))
        }
    }
}

/// The kernel objects shared by every program of a session.
struct Shared {
    ring: RingBuffer,
    counters: BpfMap,
    stats: BpfMap,
    /// Entry records of return sites with entry programs, and the zero record.
    entries: Option<(BpfMap, BpfMap)>,
}

/// A session on the probe port, from `Hello` to its end.
pub struct Session {
    pmu: UprobePmu,
    /// The kprobe PMU, when the kernel has kprobes (`Site::KernelSymbol`).
    kprobes: Option<KprobePmu>,
    /// The marker table: the tracepoints the daemon publishes.
    markers: &'static [Tracepoint],
    /// The kernel's text symbols, read from `/proc/kallsyms` at the first
    /// `Symbolize` of the session.
    symbols: Option<KernelSymbols>,
    cpus: usize,
    lease_ms: u32,
    ring_bytes: usize,
    open: bool,
    started: bool,
    next_probe: u32,
    shared: Option<Shared>,
    maps: BTreeMap<u16, SessionMap>,
    probes: BTreeMap<u32, Probe>,
    ledgers: Vec<Ledger>,
    ended: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("open", &self.open)
            .field("started", &self.started)
            .field("probes", &self.probes.len())
            .field("maps", &self.maps.len())
            .finish_non_exhaustive()
    }
}

struct Shapes<'a>(&'a BTreeMap<u16, SessionMap>);

impl MapShapes for Shapes<'_> {
    fn spec(&self, map: MapId) -> Option<MapSpec> {
        self.0.get(&map.0).map(|entry| entry.spec)
    }
}

fn kernel_name() -> String {
    // SAFETY: `utsname` is plain data that `uname` fills.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a `utsname`.
    if unsafe { libc::uname(&mut name) } != 0 {
        return "Linux".to_string();
    }
    let field = |chars: &[libc::c_char]| {
        let bytes: Vec<u8> = chars
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let mut text = format!("{} {}", field(&name.sysname), field(&name.release));
    text.truncate(MAX_NAME);
    text
}

/// The last informative line of a verifier log (the reason, usually).
fn log_reason(log: &str) -> &str {
    log.lines()
        .rev()
        .map(str::trim)
        .find(|line| {
            !line.is_empty()
                && !line.starts_with("processed ")
                && !line.starts_with("verification time")
                && !line.starts_with("stack depth")
        })
        .unwrap_or("")
}

impl Session {
    /// A session not yet opened by `Hello`.
    pub fn new(pmu: UprobePmu, lease_ms: u32, ring_bytes: usize) -> std::io::Result<Session> {
        let cpus = sys::possible_cpus()?;
        Ok(Session {
            pmu,
            kprobes: KprobePmu::discover().ok(),
            markers: tracepoints::table(),
            symbols: None,
            cpus,
            lease_ms,
            ring_bytes,
            open: false,
            started: false,
            next_probe: 1,
            shared: None,
            maps: BTreeMap::new(),
            probes: BTreeMap::new(),
            ledgers: vec![Ledger::default(); cpus],
            ended: false,
        })
    }

    /// Whether `Goodbye` ended the session.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Whether `Hello` opened the session.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The ring buffer's descriptor, to wait for records on.
    pub fn ring_fd(&self) -> Option<i32> {
        self.shared.as_ref().map(|shared| shared.ring.raw_fd())
    }

    /// Answers one decoded request; events a `Stop` drains go to `send` first.
    pub fn handle(&mut self, request: &Request<'_>, send: &mut dyn FnMut(&StubMessage<'_>)) {
        let outcome = self.dispatch(request, send);
        outcome.send(request.seq, send);
    }

    fn dispatch(
        &mut self,
        request: &Request<'_>,
        send: &mut dyn FnMut(&StubMessage<'_>),
    ) -> Outcome {
        let hello = matches!(request.body, RequestBody::Hello(_));
        if !self.open && !hello {
            return error(ErrorCode::NO_HANDSHAKE, ErrorDetail::None);
        }
        if let Err(invalid) = request.validate() {
            return Outcome::Error {
                code: ErrorCode::INVALID_ARGUMENT,
                detail: ErrorDetail::None,
                text: Some(invalid.field.to_string()),
            };
        }
        match &request.body {
            RequestBody::Hello(hello) => self.hello(hello),
            RequestBody::DefineMap(spec) => self.define_map(*spec),
            RequestBody::Arm(arm) => self.arm(arm),
            RequestBody::Disarm { probe } => match self.probes.remove(&probe.0) {
                Some(_) => Outcome::Body(ReplyBody::Done),
                None => error(ErrorCode::UNKNOWN_PROBE, ErrorDetail::Value(probe.0.into())),
            },
            RequestBody::Start => self.start(),
            RequestBody::Stop => {
                if !self.started {
                    return error(ErrorCode::BAD_STATE, ErrorDetail::None);
                }
                for probe in self.probes.values() {
                    let _ = probe.set_enabled(false);
                }
                self.started = false;
                // Handlers already running finish within microseconds; give their
                // records a moment to land so the reply follows every event.
                for _ in 0..100 {
                    if self.drain(send) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Outcome::Body(ReplyBody::Done)
            }
            RequestBody::ReadMap { map, cursor } => self.read_map(*map, *cursor),
            RequestBody::ClearMap { map } => self.clear_map(*map),
            RequestBody::ProbeStats { probe } => self.probe_stats(probe.0),
            RequestBody::CpuStats { cpu } => self.cpu_stats(*cpu),
            RequestBody::DescribeMarker { index } => self.describe_marker(*index),
            // Linux chooses how a kprobe is entered (ftrace, int3 or its own
            // optimised jump); there is nothing to ask for.
            RequestBody::Jump { .. } => {
                error_text(ErrorCode::UNSUPPORTED, "jump probes are Linux's own choice")
            }
            RequestBody::ReadMemory { .. } => {
                error_text(ErrorCode::UNSUPPORTED, "kernel memory reads on Linux")
            }
            RequestBody::KeepAlive => Outcome::Body(ReplyBody::Done),
            RequestBody::Symbolize { address } => self.symbolize(*address),
            RequestBody::Goodbye => {
                self.teardown();
                self.ended = true;
                Outcome::Body(ReplyBody::Done)
            }
        }
    }

    fn hello(&mut self, hello: &Hello<'_>) -> Outcome {
        if self.open {
            return error(ErrorCode::BAD_STATE, ErrorDetail::None);
        }
        if !(hello.min_version..=hello.max_version).contains(&PROTOCOL_VERSION) {
            return error(
                ErrorCode::VERSION,
                ErrorDetail::Value(PROTOCOL_VERSION.into()),
            );
        }
        let Ok(cpu_count) = u16::try_from(self.cpus) else {
            return error(ErrorCode::UNSUPPORTED, ErrorDetail::Value(u16::MAX.into()));
        };
        let shared = (|| -> std::io::Result<Shared> {
            Ok(Shared {
                ring: RingBuffer::create(self.ring_bytes)?,
                counters: BpfMap::create(
                    map_type::PERCPU_ARRAY,
                    4,
                    (counter::WORDS * 8) as u32,
                    1,
                    "probeport_seq",
                )?,
                stats: BpfMap::create(
                    map_type::PERCPU_ARRAY,
                    4,
                    (stat::WORDS * 8) as u32,
                    MAX_PROBES + 1,
                    "probeport_stats",
                )?,
                entries: None,
            })
        })();
        match shared {
            Ok(shared) => self.shared = Some(shared),
            Err(cause) => {
                return error_text(ErrorCode::NO_SPACE, &format!("BPF objects: {cause}"));
            }
        }
        self.open = true;
        Outcome::Hello {
            build_id: sys::kernel_build_id(),
            name: kernel_name(),
            reply: HelloReply {
                version: PROTOCOL_VERSION,
                kernel: KernelIdentity {
                    build_id: &[],
                    name: "",
                    arch: Arch::X86_64,
                },
                cpu_count,
                limits: Limits {
                    max_message: MAX_PAYLOAD as u32,
                    max_program_insns: probe_port_protocol::isa::MAX_INSNS as u32,
                    max_probes: MAX_PROBES,
                    max_maps: MAX_MAPS,
                    map_memory: MAP_MEMORY,
                    ring_bytes_per_cpu: (self.ring_bytes / self.cpus.max(1)) as u32,
                    max_record: STACK_SIZE as u32,
                    return_depth: 64,
                },
                capabilities: Capabilities(
                    Capabilities::USER
                        | Capabilities::READ_USER
                        | Capabilities::SYMBOLIZE
                        | Capabilities::TIMER
                        | Capabilities::PROFILE
                        | if self.markers.is_empty() {
                            0
                        } else {
                            Capabilities::MARKER
                        }
                        | if self.kprobes.is_some() {
                            Capabilities::KERNEL_SYMBOL
                        } else {
                            0
                        },
                ),
                lease_ms: self.lease_ms,
            },
        }
    }

    fn define_map(&mut self, spec: MapSpec) -> Outcome {
        if let Err(invalid) = spec.validate() {
            let field = match invalid {
                MapSpecError::KeySize => "key_size",
                MapSpecError::ValueSize => "value_size",
                MapSpecError::HistogramRange => "kind",
                MapSpecError::NoEntries => "max_entries",
                _ => "map",
            };
            return error_text(ErrorCode::INVALID_ARGUMENT, field);
        }
        if self.maps.contains_key(&spec.map.0) {
            return error(ErrorCode::MAP_EXISTS, ErrorDetail::Value(spec.map.0.into()));
        }
        if self.maps.len() >= MAX_MAPS as usize {
            return error(ErrorCode::NO_SPACE, ErrorDetail::Value(MAX_MAPS.into()));
        }
        let copies = if spec.is_aggregate() {
            self.cpus as u64
        } else {
            1
        };
        let memory = |entry: &MapSpec| {
            let copies = if entry.is_aggregate() {
                self.cpus as u64
            } else {
                1
            };
            u64::from(entry.max_entries)
                * (u64::from(entry.key_size) + u64::from(entry.value_size) * copies)
        };
        let used: u64 = self.maps.values().map(|entry| memory(&entry.spec)).sum();
        let wanted = u64::from(spec.max_entries)
            * (u64::from(spec.key_size) + u64::from(spec.value_size) * copies);
        if used + wanted > MAP_MEMORY {
            return error(ErrorCode::NO_SPACE, ErrorDetail::Value(MAP_MEMORY));
        }
        let name = format!("probeport_m{}", spec.map.0);
        let created = (|| -> std::io::Result<SessionMap> {
            let (kind, zero) = match spec.kind {
                MapKind::Hash => (map_type::HASH, None),
                MapKind::Aggregate(_) => {
                    let zero = BpfMap::create(
                        map_type::ARRAY,
                        4,
                        u32::from(spec.value_size),
                        1,
                        &format!("probeport_z{}", spec.map.0),
                    )?;
                    (map_type::PERCPU_HASH, Some(zero))
                }
            };
            let map = BpfMap::create(
                kind,
                u32::from(spec.key_size),
                u32::from(spec.value_size),
                spec.max_entries,
                &name,
            )?;
            Ok(SessionMap { spec, map, zero })
        })();
        match created {
            Ok(entry) => {
                self.maps.insert(spec.map.0, entry);
                Outcome::Body(ReplyBody::Done)
            }
            Err(cause) => error_text(ErrorCode::NO_SPACE, &format!("BPF map: {cause}")),
        }
    }

    /// Our verifier, then the translator, then the kernel's verifier: a kprobe-type
    /// program on `pt_regs` (uprobes, kprobes).
    fn load(&self, bytes: &[u8], role: Role, probe: u32) -> Result<BpfProgram, Box<Outcome>> {
        self.load_as(bytes, role, probe, Layout::Registers, PROG_TYPE_KPROBE)
    }

    /// [`Session::load`] for a context `layout` and a BPF program type.
    fn load_as(
        &self,
        bytes: &[u8],
        role: Role,
        probe: u32,
        layout: Layout<'_>,
        program_type: u32,
    ) -> Result<BpfProgram, Box<Outcome>> {
        let Ok(program) = decode(bytes) else {
            return Err(Box::new(error(ErrorCode::MALFORMED, ErrorDetail::None)));
        };
        let is_entry = role == Role::Entry;
        let kind = if is_entry {
            ProgramKind::Entry
        } else {
            ProgramKind::Probe
        };
        let shapes = Shapes(&self.maps);
        let verified =
            verify_alloc(&program, &VerifierConfig::new(kind, &shapes)).map_err(|refused| {
                error(
                    ErrorCode::PROGRAM_REJECTED,
                    ErrorDetail::Verifier {
                        index: refused.index,
                        rule: refused.rule.code(),
                        entry: is_entry,
                    },
                )
            })?;
        let Some(shared) = &self.shared else {
            return Err(Box::new(error(ErrorCode::BAD_STATE, ErrorDetail::None)));
        };
        let maps = &self.maps;
        let lookup = |map: MapId| {
            maps.get(&map.0).map(|entry| LinuxMap {
                spec: entry.spec,
                fd: entry.map.raw_fd(),
                zero_fd: entry.zero.as_ref().map_or(-1, BpfMap::raw_fd),
            })
        };
        let (entries_fd, entry_zero_fd) =
            shared.entries.as_ref().map_or((-1, -1), |(entries, zero)| {
                (entries.raw_fd(), zero.raw_fd())
            });
        let environment = Environment {
            layout,
            probe,
            maps: &lookup,
            ring_fd: shared.ring.raw_fd(),
            counters_fd: shared.counters.raw_fd(),
            stats_fd: shared.stats.raw_fd(),
            role,
            entries_fd,
            entry_zero_fd,
        };
        let linux_program: Vec<Insn> =
            translate::translate(&program, verified.stack_depth(), &environment)
                .map_err(|refused| Box::new(error_text(refused.code, &refused.to_string())))?;
        let name = format!("probeport_{probe}{}", if is_entry { "e" } else { "" });
        BpfProgram::load_typed(&linux_program, &name, program_type).map_err(|refused| {
            eprintln!(
                "probeport-linuxd: the kernel refused probe {probe}'s program ({}):\n{}",
                refused.error, refused.log
            );
            let mut text = String::from("Linux verifier: ");
            let reason = log_reason(&refused.log);
            if reason.is_empty() {
                let _ = write!(text, "{}", refused.error);
            } else {
                text.push_str(reason);
            }
            Box::new(error_text(ErrorCode::PROGRAM_REJECTED, &text))
        })
    }

    fn arm(&mut self, arm: &ArmRequest<'_>) -> Outcome {
        if let Site::KernelSymbol {
            symbol,
            offset,
            is_return,
            entry_program,
        } = arm.site
        {
            return self.arm_kernel(symbol, offset, is_return, entry_program, arm.program);
        }
        if let Site::Timer { period_ns, scope } = arm.site {
            return self.arm_timer(period_ns, scope, arm.program);
        }
        if let Site::Marker { index } = arm.site {
            return self.arm_marker(index, arm.program);
        }
        let Site::User {
            path,
            file_offset,
            is_return,
            ref_ctr_offset,
            entry_program,
        } = arm.site
        else {
            return error_text(
                ErrorCode::UNSUPPORTED,
                "kernel sites by address on Linux (name them by symbol)",
            );
        };
        if self.next_probe > MAX_PROBES {
            return error(ErrorCode::NO_SPACE, ErrorDetail::Value(MAX_PROBES.into()));
        }
        let file = Path::new(path);
        let with_entry = is_return && !entry_program.is_empty();
        if with_entry && let Err(outcome) = self.entry_maps() {
            return *outcome;
        }
        let probe = self.next_probe;
        let role = if with_entry {
            Role::Return
        } else {
            Role::Probe {
                at_return: is_return,
            }
        };
        let main = match self.load(arm.program, role, probe) {
            Ok(loaded) => loaded,
            Err(outcome) => return *outcome,
        };
        let entry = if with_entry {
            match self.load(entry_program, Role::Entry, probe) {
                Ok(loaded) => Some(loaded),
                Err(outcome) => return *outcome,
            }
        } else {
            None
        };
        if !file.is_absolute() || !file.is_file() {
            return error_text(ErrorCode::INVALID_ARGUMENT, "path");
        }
        // The return probe first: enabled first, a frame entered in between is a
        // counted miss rather than an entry record nobody takes.
        let mut events = Vec::new();
        let mut programs = Vec::new();
        let parts = [
            Some((main, is_return, ref_ctr_offset)),
            entry.map(|entry| (entry, false, 0)),
        ];
        for (program, at_return, semaphore) in parts.into_iter().flatten() {
            let event = match ProbeEvent::open(&self.pmu, file, file_offset, at_return, semaphore) {
                Ok(event) => event,
                Err(cause) => {
                    return error_text(ErrorCode::UNSUPPORTED, &format!("uprobe: {cause}"));
                }
            };
            if let Err(cause) = event.attach(&program) {
                return error_text(ErrorCode::UNSUPPORTED, &format!("attach: {cause}"));
            }
            events.push(event);
            programs.push(program);
        }
        self.add_probe(probe, events, programs)
    }

    /// A kprobe (kretprobe with `is_return`) at `symbol + offset`, named for the
    /// kernel to resolve (PROTOCOL.md §8.10).
    fn arm_kernel(
        &mut self,
        symbol: &str,
        offset: u64,
        is_return: bool,
        entry_program: &[u8],
        program: &[u8],
    ) -> Outcome {
        let Some(pmu) = self.kprobes else {
            return error_text(ErrorCode::UNSUPPORTED, "kernel symbol sites: no kprobe PMU");
        };
        if self.next_probe > MAX_PROBES {
            return error(ErrorCode::NO_SPACE, ErrorDetail::Value(MAX_PROBES.into()));
        }
        // As at user return sites: at a kretprobe `sp` is the entry's plus 8 (the
        // return address popped), so the entry records' key is the same.
        let with_entry = is_return && !entry_program.is_empty();
        if with_entry && let Err(outcome) = self.entry_maps() {
            return *outcome;
        }
        let probe = self.next_probe;
        let role = if with_entry {
            Role::Return
        } else {
            Role::Probe {
                at_return: is_return,
            }
        };
        let main = match self.load(program, role, probe) {
            Ok(loaded) => loaded,
            Err(outcome) => return *outcome,
        };
        let entry = if with_entry {
            match self.load(entry_program, Role::Entry, probe) {
                Ok(loaded) => Some(loaded),
                Err(outcome) => return *outcome,
            }
        } else {
            None
        };
        // The return probe first: enabled first, a frame entered in between is a
        // counted miss rather than an entry record nobody takes.
        let mut events = Vec::new();
        let mut programs = Vec::new();
        for (program, at_return) in [Some((main, is_return)), entry.map(|entry| (entry, false))]
            .into_iter()
            .flatten()
        {
            let event = match ProbeEvent::open_kprobe(&pmu, symbol, offset, at_return) {
                Ok(event) => event,
                Err(cause) => {
                    eprintln!("probeport-linuxd: kprobe {symbol}+{offset:#x}: {cause}");
                    return match cause.raw_os_error() {
                        // The kernel's symbol table has no such name.
                        Some(libc::ENOENT) => error_text(ErrorCode::INVALID_ARGUMENT, "symbol"),
                        // The offset is not the start of an instruction.
                        Some(libc::EILSEQ) => {
                            error_text(ErrorCode::UNSUPPORTED, "not an instruction boundary")
                        }
                        _ => error_text(ErrorCode::UNSUPPORTED, &format!("kprobe: {cause}")),
                    };
                }
            };
            if let Err(cause) = event.attach(&program) {
                return error_text(ErrorCode::UNSUPPORTED, &format!("attach: {cause}"));
            }
            events.push(event);
            programs.push(program);
        }
        self.add_probe(probe, events, programs)
    }

    /// `Symbolize`: the text symbol of `/proc/kallsyms` containing `address`.
    fn symbolize(&mut self, address: u64) -> Outcome {
        if self.symbols.is_none() {
            match KernelSymbols::read() {
                Ok(symbols) => self.symbols = Some(symbols),
                Err(cause) => {
                    return error_text(ErrorCode::UNSUPPORTED, &format!("kallsyms: {cause}"));
                }
            }
        }
        let found = self
            .symbols
            .as_ref()
            .and_then(|symbols| symbols.containing(address));
        match found {
            Some((name, offset)) => {
                let mut end = name.len().min(MAX_NAME);
                while !name.is_char_boundary(end) {
                    end -= 1;
                }
                Outcome::Symbol {
                    address,
                    name: name[..end].to_string(),
                    offset,
                }
            }
            None => error_text(ErrorCode::INVALID_ARGUMENT, "address"),
        }
    }

    /// `DescribeMarker`: the published tracepoints (PROTOCOL.md §8.4), at address 0.
    fn describe_marker(&self, index: u32) -> Outcome {
        let Some(tracepoint) = self.markers.get(index as usize) else {
            return error(ErrorCode::UNKNOWN_MARKER, ErrorDetail::Value(index.into()));
        };
        let mut info = MarkerInfo {
            index,
            total: self.markers.len() as u32,
            name: tracepoint.name.as_str(),
            address: 0,
            args: Default::default(),
        };
        for field in &tracepoint.fields {
            // The table holds at most `MAX_MARKER_ARGS` fields.
            let _ = info.args.push(MarkerArg {
                name: field.name.as_str(),
                ty: field.ty,
            });
        }
        Outcome::Body(ReplyBody::Marker(info))
    }

    /// A marker: a tracepoint perf event with a tracepoint program, whose context
    /// slots are the record's fields.
    fn arm_marker(&mut self, index: u32, program: &[u8]) -> Outcome {
        let Some(tracepoint) = self.markers.get(index as usize) else {
            return error(ErrorCode::UNKNOWN_MARKER, ErrorDetail::Value(index.into()));
        };
        if self.next_probe > MAX_PROBES {
            return error(ErrorCode::NO_SPACE, ErrorDetail::Value(MAX_PROBES.into()));
        }
        let probe = self.next_probe;
        let fields: Vec<RecordField> = tracepoint
            .fields
            .iter()
            .map(|field| RecordField {
                offset: field.offset as i16,
                size: field.size,
            })
            .collect();
        let loaded = match self.load_as(
            program,
            Role::Probe { at_return: false },
            probe,
            Layout::Record(&fields),
            PROG_TYPE_TRACEPOINT,
        ) {
            Ok(loaded) => loaded,
            Err(outcome) => return *outcome,
        };
        let event = match ProbeEvent::open_tracepoint(tracepoint.id) {
            Ok(event) => event,
            Err(cause) => {
                return error_text(
                    ErrorCode::UNSUPPORTED,
                    &format!("tracepoint {}: {cause}", tracepoint.name),
                );
            }
        };
        if let Err(cause) = event.attach(&loaded) {
            return error_text(ErrorCode::UNSUPPORTED, &format!("attach: {cause}"));
        }
        self.add_probe(probe, vec![event], vec![loaded])
    }

    /// A timer: a `cpu-clock` perf event with a perf-event program on CPU 0
    /// (`OneCpu`) or on every online CPU (`EachCpu`), as the demo stub's timers
    /// fire; the context holds the interrupted registers.
    fn arm_timer(&mut self, period_ns: u64, scope: TimerScope, program: &[u8]) -> Outcome {
        if self.next_probe > MAX_PROBES {
            return error(ErrorCode::NO_SPACE, ErrorDetail::Value(MAX_PROBES.into()));
        }
        let probe = self.next_probe;
        let cpus = match scope {
            TimerScope::OneCpu => vec![0],
            _ => match sys::online_cpus() {
                Ok(cpus) => cpus,
                Err(cause) => return error_text(ErrorCode::UNSUPPORTED, &format!("cpus: {cause}")),
            },
        };
        let loaded = match self.load_as(
            program,
            Role::Probe { at_return: false },
            probe,
            Layout::Registers,
            PROG_TYPE_PERF_EVENT,
        ) {
            Ok(loaded) => loaded,
            Err(outcome) => return *outcome,
        };
        let mut events = Vec::new();
        for cpu in cpus {
            let event = match ProbeEvent::open_cpu_clock(cpu, period_ns) {
                Ok(event) => event,
                Err(cause) => {
                    return error_text(
                        ErrorCode::UNSUPPORTED,
                        &format!("cpu-clock on CPU {cpu}: {cause}"),
                    );
                }
            };
            if let Err(cause) = event.attach(&loaded) {
                return error_text(ErrorCode::UNSUPPORTED, &format!("attach: {cause}"));
            }
            events.push(event);
        }
        self.add_probe(probe, events, vec![loaded])
    }

    /// Records an armed probe, live at once when the session has started.
    fn add_probe(
        &mut self,
        probe: u32,
        events: Vec<ProbeEvent>,
        programs: Vec<BpfProgram>,
    ) -> Outcome {
        let armed = Probe { events, programs };
        if self.started
            && let Err(cause) = armed.set_enabled(true)
        {
            return error_text(ErrorCode::UNSUPPORTED, &format!("enable: {cause}"));
        }
        self.next_probe += 1;
        self.probes.insert(probe, armed);
        Outcome::Body(ReplyBody::Armed {
            probe: ProbeId(probe),
        })
    }

    /// The session's entry-record maps, created on first use.
    fn entry_maps(&mut self) -> Result<(), Box<Outcome>> {
        let Some(shared) = &mut self.shared else {
            return Err(Box::new(error(ErrorCode::BAD_STATE, ErrorDetail::None)));
        };
        if shared.entries.is_some() {
            return Ok(());
        }
        let created = (|| -> std::io::Result<(BpfMap, BpfMap)> {
            Ok((
                BpfMap::create(
                    map_type::HASH,
                    16,
                    ENTRY_RECORD as u32,
                    ENTRY_RECORDS,
                    "probeport_entry",
                )?,
                BpfMap::create(
                    map_type::ARRAY,
                    4,
                    ENTRY_RECORD as u32,
                    1,
                    "probeport_ezero",
                )?,
            ))
        })();
        match created {
            Ok(maps) => {
                shared.entries = Some(maps);
                Ok(())
            }
            Err(cause) => Err(Box::new(error_text(
                ErrorCode::NO_SPACE,
                &format!("entry record map: {cause}"),
            ))),
        }
    }

    fn start(&mut self) -> Outcome {
        if self.started {
            return error(ErrorCode::BAD_STATE, ErrorDetail::None);
        }
        for probe in self.probes.values() {
            if let Err(cause) = probe.set_enabled(true) {
                for probe in self.probes.values() {
                    let _ = probe.set_enabled(false);
                }
                return error_text(ErrorCode::UNSUPPORTED, &format!("enable: {cause}"));
            }
        }
        self.started = true;
        Outcome::Body(ReplyBody::Done)
    }

    /// Per-CPU words of `map` under `key`, one `Vec` per CPU; zeros when absent.
    fn per_cpu_words(&self, map: &BpfMap, key: &[u8], words: usize) -> Vec<Vec<u64>> {
        let mut bytes = vec![0u8; map.lookup_size(self.cpus)];
        if !matches!(map.lookup(key, &mut bytes), Ok(true)) {
            return vec![vec![0; words]; self.cpus];
        }
        let stride = (map.value_size as usize).next_multiple_of(8);
        (0..self.cpus)
            .map(|cpu| {
                (0..words)
                    .map(|word| {
                        let at = cpu * stride + word * 8;
                        u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]))
                    })
                    .collect()
            })
            .collect()
    }

    fn probe_stats(&self, probe: u32) -> Outcome {
        let (Some(shared), true) = (&self.shared, self.probes.contains_key(&probe)) else {
            return error(ErrorCode::UNKNOWN_PROBE, ErrorDetail::Value(probe.into()));
        };
        let per_cpu = self.per_cpu_words(&shared.stats, &probe.to_ne_bytes(), stat::WORDS);
        let total = |word: usize| per_cpu.iter().map(|words| words[word]).sum::<u64>();
        // Linux skips a program whose CPU is already running one (or is inside a
        // bpf() map operation of user space): the kernel counts those runs as the
        // program's recursion misses, and they are misses here too.
        let skipped: u64 = self.probes.get(&probe).map_or(0, |armed| {
            armed
                .programs
                .iter()
                .map(|program| program.recursion_misses().unwrap_or(0))
                .sum()
        });
        Outcome::Body(ReplyBody::ProbeStats(ProbeStats {
            probe: ProbeId(probe),
            hits: total(stat::HITS),
            misses: total(stat::MISSES) + skipped,
            faults: total(stat::FAULTS),
            // Each CPU keeps its own last one; any CPU's is "the last" of some CPU.
            last_fault_address: per_cpu
                .iter()
                .map(|words| words[stat::LAST_FAULT])
                .find(|address| *address != 0)
                .unwrap_or(0),
            drops: total(stat::DROPS),
        }))
    }

    fn cpu_stats(&self, cpu: u16) -> Outcome {
        let index = usize::from(cpu);
        let Some(shared) = self.shared.as_ref().filter(|_| index < self.cpus) else {
            return error_text(ErrorCode::INVALID_ARGUMENT, "cpu");
        };
        let counters = self.per_cpu_words(&shared.counters, &0u32.to_ne_bytes(), counter::WORDS);
        let (mut hits, mut faults) = (0, 0);
        for probe in self.probes.keys() {
            let words = self.per_cpu_words(&shared.stats, &probe.to_ne_bytes(), stat::WORDS);
            hits += words[index][stat::HITS];
            faults += words[index][stat::FAULTS];
        }
        let next_seq = counters[index][counter::NEXT_SEQ];
        let lost = counters[index][counter::LOST];
        Outcome::Body(ReplyBody::CpuStats(CpuStats {
            cpu,
            hits,
            reentered: 0,
            emitted: next_seq - lost,
            lost,
            faults,
            next_seq,
        }))
    }

    fn read_map(&self, map: MapId, cursor: u32) -> Outcome {
        let Some(entry) = self.maps.get(&map.0) else {
            return error(ErrorCode::UNKNOWN_MAP, ErrorDetail::Value(map.0.into()));
        };
        let keys = match entry.map.keys() {
            Ok(keys) => keys,
            Err(cause) => return error_text(ErrorCode::FAULT, &format!("map read: {cause}")),
        };
        if cursor as usize > keys.len() {
            return error_text(ErrorCode::INVALID_ARGUMENT, "cursor");
        }
        let key_size = usize::from(entry.spec.key_size);
        let value_size = usize::from(entry.spec.value_size);
        let copies = if entry.spec.is_aggregate() {
            self.cpus
        } else {
            1
        };
        let entry_size = key_size + value_size * copies;
        let mut entries = Vec::new();
        let mut count = 0u32;
        let mut value = vec![0u8; entry.map.lookup_size(self.cpus)];
        let mut next = cursor as usize;
        while next < keys.len() && entries.len() + entry_size <= PAGE_ENTRIES {
            let key = &keys[next];
            next += 1;
            if !matches!(entry.map.lookup(key, &mut value), Ok(true)) {
                continue; // Deleted since the keys were listed.
            }
            entries.extend_from_slice(key);
            if let MapKind::Aggregate(kind) = entry.spec.kind {
                let stride = value_size.next_multiple_of(8);
                for cpu in 0..self.cpus {
                    let stored = &value[cpu * stride..cpu * stride + value_size];
                    entries.extend_from_slice(&decode_aggregate(kind, stored));
                }
            } else {
                entries.extend_from_slice(&value[..value_size]);
            }
            count += 1;
        }
        Outcome::Page {
            map,
            count,
            entries,
            next_cursor: (next < keys.len()).then_some(next as u32),
        }
    }

    fn clear_map(&self, map: MapId) -> Outcome {
        let Some(entry) = self.maps.get(&map.0) else {
            return error(ErrorCode::UNKNOWN_MAP, ErrorDetail::Value(map.0.into()));
        };
        match entry.map.keys() {
            Ok(keys) => {
                for key in keys {
                    let _ = entry.map.delete(&key);
                }
                Outcome::Body(ReplyBody::Done)
            }
            Err(cause) => error_text(ErrorCode::FAULT, &format!("map clear: {cause}")),
        }
    }

    /// Sends every record in the ring as an `Event`, and the sequence numbers no
    /// record will ever carry as `Lost`; returns whether every number below each
    /// CPU's counter is accounted for (false while a record is still being
    /// written, see [`Ledger`]).
    pub fn drain(&mut self, send: &mut dyn FnMut(&StubMessage<'_>)) -> bool {
        let Some(shared) = &mut self.shared else {
            return true;
        };
        // Read first: every number below `next` was taken by an attempt that
        // either reserved a record (in the ring, or about to be) or counted a loss.
        let counters = {
            let map = &shared.counters;
            let mut bytes = vec![0u8; map.lookup_size(self.cpus)];
            let _ = map.lookup(&0u32.to_ne_bytes(), &mut bytes);
            bytes
        };
        let word = |cpu: usize, index: usize| {
            let at = cpu * counter::WORDS * 8 + index * 8;
            u64::from_ne_bytes(counters[at..at + 8].try_into().unwrap_or([0; 8]))
        };
        let ledgers = &mut self.ledgers;
        let cpus = self.cpus;
        shared.ring.drain(|record| {
            if record.len() < RECORD_HEADER {
                return;
            }
            let u64_at =
                |at: usize| u64::from_ne_bytes(record[at..at + 8].try_into().unwrap_or([0; 8]));
            let u32_at =
                |at: usize| u32::from_ne_bytes(record[at..at + 4].try_into().unwrap_or([0; 4]));
            let (seq, probe, cpu, time_ns) =
                (u64_at(0), u32_at(8), u32_at(12) as usize, u64_at(16));
            if cpu >= cpus {
                return;
            }
            ledgers[cpu].delivered(seq);
            send(&StubMessage::Event(Event {
                cpu: cpu as u16,
                seq,
                probe: ProbeId(probe),
                time_ns,
                data: &record[RECORD_HEADER..],
            }));
        });
        let mut settled = true;
        for (cpu, ledger) in ledgers.iter_mut().enumerate() {
            settled &= ledger.settle(
                cpu as u16,
                word(cpu, counter::NEXT_SEQ),
                word(cpu, counter::LOST),
                send,
            );
        }
        settled
    }

    /// Ends the session: every probe, program and map is closed.
    pub fn teardown(&mut self) {
        for probe in self.probes.values() {
            let _ = probe.set_enabled(false);
        }
        self.probes.clear();
        self.maps.clear();
        self.shared = None;
        self.open = false;
        self.started = false;
    }
}

/// One CPU's account of its event sequence numbers.
///
/// A program takes its number before it reserves room in the ring, so a record
/// may land after a later number's (the program was preempted in between), and a
/// number missing from the ring is either lost or still being written. The CPU's
/// lost counter says how many are lost, not which: missing numbers are reported
/// lost only when the counter covers all of them, so every number is reported
/// exactly once, as an event or as lost.
#[derive(Clone, Debug, Default)]
struct Ledger {
    /// Every number below this was delivered or is in `missing`.
    expected: u64,
    /// Numbers below `expected` not delivered yet, as disjoint ascending ranges.
    missing: Vec<std::ops::Range<u64>>,
    /// Numbers already reported lost.
    lost_reported: u64,
}

impl Ledger {
    fn delivered(&mut self, seq: u64) {
        if seq >= self.expected {
            if seq > self.expected {
                self.missing.push(self.expected..seq);
            }
            self.expected = seq + 1;
            return;
        }
        // A late record: take its number out of the missing ranges.
        if let Some(index) = self.missing.iter().position(|range| range.contains(&seq)) {
            let range = self.missing.remove(index);
            let mut rest = Vec::new();
            if range.start < seq {
                rest.push(range.start..seq);
            }
            if seq + 1 < range.end {
                rest.push(seq + 1..range.end);
            }
            self.missing.splice(index..index, rest);
        }
    }

    /// Reports the missing numbers below `next` as lost if `lost` (the CPU's
    /// counter) covers them all; returns whether nothing is left unaccounted.
    fn settle(
        &mut self,
        cpu: u16,
        next: u64,
        lost: u64,
        send: &mut dyn FnMut(&StubMessage<'_>),
    ) -> bool {
        let trailing = next.saturating_sub(self.expected);
        let missing: u64 = self
            .missing
            .iter()
            .map(|range| range.end - range.start)
            .sum::<u64>()
            + trailing;
        if missing == 0 {
            return true;
        }
        if lost.saturating_sub(self.lost_reported) < missing {
            return false; // Some record is still being written.
        }
        if trailing > 0 {
            self.missing.push(self.expected..next);
            self.expected = next;
        }
        for range in self.missing.drain(..) {
            send(&StubMessage::Lost(LostEvents {
                cpu,
                first_seq: range.start,
                count: range.end - range.start,
            }));
        }
        self.lost_reported += missing;
        true
    }
}

/// One CPU's stored aggregation value in the protocol's layout (min and max
/// decoded, see `translate`'s invariants).
fn decode_aggregate(kind: AggregateKind, stored: &[u8]) -> Vec<u8> {
    let mut words: Vec<u64> = stored
        .chunks_exact(8)
        .map(|chunk| u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8])))
        .collect();
    match kind {
        AggregateKind::Min => words[0] = translate::decode_min(words[0]) as u64,
        AggregateKind::Max => words[0] = translate::decode_max(words[0]) as u64,
        AggregateKind::Stats => {
            words[2] = translate::decode_min(words[2]) as u64;
            words[3] = translate::decode_max(words[3]) as u64;
        }
        _ => {}
    }
    words.iter().flat_map(|word| word.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(ledger: &mut Ledger, next: u64, lost: u64) -> (bool, Vec<(u64, u64)>) {
        let mut reports = Vec::new();
        let settled = ledger.settle(0, next, lost, &mut |message| {
            if let StubMessage::Lost(lost) = message {
                reports.push((lost.first_seq, lost.count));
            }
        });
        (settled, reports)
    }

    #[test]
    fn gaps_are_lost_only_when_the_counter_covers_them() {
        let mut ledger = Ledger::default();
        for seq in [0, 1, 3, 4] {
            ledger.delivered(seq);
        }
        // Number 2 is missing but nothing was counted lost: it is in flight.
        assert_eq!(settle(&mut ledger, 5, 0), (false, vec![]));
        ledger.delivered(2);
        assert_eq!(settle(&mut ledger, 5, 0), (true, vec![]));
        // Numbers 5..8 taken, 6 delivered, two counted lost: 5 and 7 are the lost ones.
        ledger.delivered(6);
        assert_eq!(settle(&mut ledger, 8, 1), (false, vec![]));
        assert_eq!(settle(&mut ledger, 8, 2), (true, vec![(5, 1), (7, 1)]));
        // Nothing is reported twice.
        assert_eq!(settle(&mut ledger, 8, 2), (true, vec![]));
        assert_eq!(settle(&mut ledger, 10, 4), (true, vec![(8, 2)]));
    }

    #[test]
    fn late_records_split_missing_ranges() {
        let mut ledger = Ledger::default();
        ledger.delivered(10);
        ledger.delivered(4);
        assert_eq!(ledger.missing, vec![0..4, 5..10]);
        ledger.delivered(0);
        ledger.delivered(9);
        assert_eq!(ledger.missing, vec![1..4, 5..9]);
        assert_eq!(settle(&mut ledger, 11, 7), (true, vec![(1, 3), (5, 4)]));
    }
}
