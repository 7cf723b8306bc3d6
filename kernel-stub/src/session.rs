//! The session: requests in, exactly one reply each, events drained between them.
//!
//! # Design
//!
//! The thread that serves the port calls [`Stub::handle`] with each request
//! payload (message transports) or [`Stub::serve_bytes`] with whatever bytes
//! arrived (byte streams: it owns the frame decoder, handles every complete frame,
//! frames the replies, and drains the event rings). Either way it runs under the
//! session mutex, which probe context never takes; the session takes a lock that
//! probe context also takes (a hash map's) only inside
//! [`Platform::without_interrupts`].
//!
//! Request handling follows PROTOCOL.md §5–§8: the handshake first, one reply per
//! request in order (undecodable payloads included, §5.4), bounds checked with
//! `Request::validate`, then the request itself:
//!
//! - **Arm** stages a probe: it checks the site (forbidden text, instruction
//!   boundary, expected bytes, relocatability, an existing probe), verifies the
//!   program(s) into the program arena, finds or writes the out-of-line slot, and
//!   publishes the site and the probe as *staged*. Kernel text is not touched
//!   until `Start` (or at once if started).
//! - **Start** makes every probe live and writes each site's breakpoint (one
//!   byte, through `write_text`, which returns once every CPU sees it); markers
//!   are enabled, timers get their first due time.
//! - **Stop** stages every probe, restores every original byte, waits for
//!   quiescence, drains every ring, then replies.
//! - **Disarm** unpublishes one probe (and its site, restoring the byte, if it
//!   was the site's last probe), waits for quiescence, and so frees its program
//!   slots and site entry for reuse (its out-of-line slot keeps its code, see
//!   below).
//! - **Goodbye**, an expired lease ([`Stub::poll`]) and [`Stub::end_session`]
//!   tear the session down: every probe disarmed and every byte restored, maps
//!   freed, sequence numbers and counters reset. Pending returns stay (see
//!   `returns.rs`).
//!
//! **Out-of-line slots are written once per boot.** A thread can be interrupted
//! (and, in a preemptive kernel, switched out for long) while its instruction
//! pointer is inside a slot, between the displaced instruction and the jump back,
//! so no slot is ever rewritten with different code. A slot is keyed by the probe
//! address it was written for and its code: re-arming the same site (after a
//! `Disarm`, a `Stop` or in a later session) finds its slot by address and reuses
//! it when the code it would write is byte for byte what the slot holds; any other
//! arming takes a fresh slot. Instructions the backend emulates need no slot.
//! When the area has no fresh slot left, arming fails with `NO_SPACE` and the
//! number of probe slots as its detail. Slot 0 is the return trampoline.
//!
//! # Invariants
//!
//! - Every request that unpublishes anything waits for quiescence before it
//!   replies, so the next request may reuse whatever was freed.
//! - A site is published only after its out-of-line slot holds its code, and its
//!   breakpoint is written only after the site is published.
//! - Exactly one reply per request, even for requests that cannot be decoded and
//!   replies that cannot be encoded (a fallback `NO_SPACE` reply).

use core::sync::atomic::Ordering;

use probe_port_protocol::context::ProbeContext;
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::frame::{DefaultFrameDecoder, encode_stub_message, max_encoded_len};
use probe_port_protocol::isa::{INSN_SIZE, decode_into};
use probe_port_protocol::maps::{MapId, MapSpecError};
use probe_port_protocol::message::{
    ArmRequest, Capabilities, CpuStats, ErrorDetail, ErrorReply, Event, Hello, HelloReply,
    KernelIdentity, Limits, LostEvents, MAX_BUILD_ID, MAX_MARKER_ARGS, MAX_NAME, MapPage,
    MarkerArg, MarkerInfo, PROTOCOL_VERSION, ProbeId, Reply, ReplyBody, Request, RequestBody, Site,
    StubMessage, TimerScope, classify_undecodable, decode_request,
};
use probe_port_protocol::verifier::{ProgramKind, Rule, VerifierConfig, VerifierScratch, verify};

use crate::arch::{self, MAX_INSN_LEN, SLOT_SIZE};
use crate::jit::JitScratch;
use crate::jit::x86_64::{compile, max_code_size};
use crate::jump::{self, DETOUR_SLOTS, DetourError, JUMP_LEN};
use crate::limits::{
    MAX_BOUNDARY_SCAN, MAX_CPUS, MAX_MAPS, MAX_MESSAGE, MAX_OUT_OF_LINE_SLOTS, MAX_PAGE_ENTRIES,
    MAX_PROBES, MAX_PROGRAM_INSNS, MAX_RECORD, MAX_TIMERS, PROGRAM_ARENA_SLOTS, RETURN_DEPTH,
    RING_BYTES_PER_CPU, RING_WORDS, SITE_TABLE,
};
use crate::maps::{DefineError, MAP_MEMORY};
use crate::platform::Platform;
use crate::probes::{DYNAMIC, MARKER, ProbeData, RETURN, SiteData, TIMER};
use crate::stub::{Stub, TrapOutcome, jump_entry};

/// The verifier's working memory (164 KiB): one per kernel, used only by the
/// session that holds the session lock, so a second lock never waits.
static VERIFIER: spin::Mutex<VerifierScratch> = spin::Mutex::new(VerifierScratch::new());

/// The JIT's working memory and the buffer a program's code is compiled into
/// before it is copied into the compiled-code area; used under the same lock.
struct Compiler {
    scratch: JitScratch,
    code: [u8; MAX_COMPILED],
}

/// The most code of one probe: a handler and an entry program of the longest.
const MAX_COMPILED: usize = 2 * (max_code_size(MAX_PROGRAM_INSNS) + CODE_ALIGN);
/// Compiled programs start on this boundary.
const CODE_ALIGN: usize = 16;

static COMPILER: spin::Mutex<Compiler> = spin::Mutex::new(Compiler {
    scratch: JitScratch::new(),
    code: [0; MAX_COMPILED],
});

/// Wire bytes of the largest frame the stub sends.
const MAX_FRAME: usize = max_encoded_len(MAX_MESSAGE);
/// Tries at writing or removing a jump before giving up (the site then keeps its
/// breakpoint, or its jump).
const JUMP_ATTEMPTS: usize = 8;

/// The byte-stream side of the port ([`Stub::serve_bytes`]).
pub(crate) struct Port {
    decoder: DefaultFrameDecoder,
    scratch: [u8; MAX_MESSAGE],
    frame: [u8; MAX_FRAME],
}

impl Port {
    pub(crate) const fn new() -> Self {
        Self {
            decoder: DefaultFrameDecoder::new(),
            scratch: [0; MAX_MESSAGE],
            frame: [0; MAX_FRAME],
        }
    }
}

/// The session's view of a probe slot.
#[derive(Clone, Copy, Debug)]
struct ProbeRecord {
    /// Site index + 1 (dynamic, return and marker probes), 0 for none.
    site: u32,
    /// Timer index + 1, 0 for none.
    timer: u32,
    /// Marker index + 1, 0 for none.
    marker: u32,
}

impl ProbeRecord {
    const ZERO: ProbeRecord = ProbeRecord {
        site: 0,
        timer: 0,
        marker: 0,
    };
}

/// The session's view of a site.
#[derive(Clone, Copy, Debug)]
struct SiteRecord {
    address: u64,
    /// Whether the site is an instruction (a breakpoint to write), not a marker.
    text: bool,
    /// Whether the breakpoint is written.
    patched: bool,
    /// The bytes the breakpoint covers.
    original: [u8; arch::BREAKPOINT.len()],
    /// A jump probe's plan (`RequestBody::Jump`), if any.
    jump: JumpRecord,
}

impl SiteRecord {
    const ZERO: SiteRecord = SiteRecord {
        address: 0,
        text: false,
        patched: false,
        original: [0; arch::BREAKPOINT.len()],
        jump: JumpRecord::NONE,
    };
}

/// A site's jump (see `crate::jump`): planned by `Jump`, written while the site
/// is patched and the platform finds a moment to write it.
#[derive(Clone, Copy, Debug)]
struct JumpRecord {
    /// The detour's address; 0 for no plan.
    detour: u64,
    /// Bytes of original code the jump's detour runs (the window used).
    covered: u8,
    /// Whether the jump is written (else the site has its breakpoint, if patched).
    active: bool,
    /// The original bytes the jump overwrites.
    original: [u8; JUMP_LEN],
}

impl JumpRecord {
    const NONE: JumpRecord = JumpRecord {
        detour: 0,
        covered: 0,
        active: false,
        original: [0; JUMP_LEN],
    };

    fn planned(&self) -> bool {
        self.detour != 0
    }
}

/// Everything only the session touches.
pub(crate) struct Session {
    open: bool,
    started: bool,
    last_request_ns: u64,
    next_probe_id: u32,
    probes: [ProbeRecord; MAX_PROBES],
    sites: [SiteRecord; SITE_TABLE],
    /// For each out-of-line slot (index 0 is the trampoline), the probe address
    /// whose displaced instruction it holds; 0 while never written. Kept across
    /// sessions: a slot is written once per boot (see the module docs).
    slot_owners: [u64; MAX_OUT_OF_LINE_SLOTS],
    /// Probe slots written so far: the next fresh slot is `slots_used + 1`.
    slots_used: u32,
    /// Per CPU, the next sequence number the client has not been told about.
    expected_seq: [u64; MAX_CPUS],
    /// Scratch for the program allocator.
    ranges: [(u32, u32); MAX_PROBES],
    /// Reply bytes: map pages, memory, bytes found.
    buffer: [u8; MAX_MESSAGE],
    /// One event's data during a drain.
    event: [u8; MAX_RECORD],
    /// A function's code for the instruction-boundary check.
    code: [u8; MAX_BOUNDARY_SCAN + MAX_INSN_LEN],
}

impl Session {
    pub(crate) const fn new() -> Self {
        Self {
            open: false,
            started: false,
            last_request_ns: 0,
            next_probe_id: 0,
            probes: [ProbeRecord::ZERO; MAX_PROBES],
            sites: [SiteRecord::ZERO; SITE_TABLE],
            slot_owners: [0; MAX_OUT_OF_LINE_SLOTS],
            slots_used: 0,
            expected_seq: [0; MAX_CPUS],
            ranges: [(0, 0); MAX_PROBES],
            buffer: [0; MAX_MESSAGE],
            event: [0; MAX_RECORD],
            code: [0; MAX_BOUNDARY_SCAN + MAX_INSN_LEN],
        }
    }
}

/// An error reply with no borrowed detail.
type Refusal = ErrorReply<'static>;

fn refuse(code: ErrorCode) -> Refusal {
    ErrorReply::new(code)
}

fn refuse_value(code: ErrorCode, value: u64) -> Refusal {
    ErrorReply::with(code, ErrorDetail::Value(value))
}

fn refuse_address(code: ErrorCode, address: u64) -> Refusal {
    ErrorReply::with(code, ErrorDetail::Address(address))
}

fn refuse_field(field: &'static str) -> Refusal {
    ErrorReply::with(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text(field))
}

fn rejected(index: u32, rule: Rule, entry: bool) -> Refusal {
    ErrorReply::with(
        ErrorCode::PROGRAM_REJECTED,
        ErrorDetail::Verifier {
            index,
            rule: rule.code(),
            entry,
        },
    )
}

fn send_reply(out: &mut dyn FnMut(&StubMessage<'_>), seq: u32, reply: Reply<'_>) {
    out(&StubMessage::Reply { seq, reply });
}

/// `text` cut to at most `max` bytes at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or("")
}

/// Writes the original bytes of every patched site over `bytes` (read at
/// `address`), so checks see the kernel's text rather than the stub's breakpoints.
fn overlay_originals(sites: &[SiteRecord], address: u64, bytes: &mut [u8]) {
    for site in sites.iter().filter(|site| site.patched) {
        let original: &[u8] = if site.jump.active {
            &site.jump.original
        } else {
            &site.original
        };
        for (offset, original) in original.iter().enumerate() {
            let at = site.address.wrapping_add(offset as u64);
            if let Some(byte) = at
                .checked_sub(address)
                .and_then(|index| bytes.get_mut(usize::try_from(index).ok()?))
            {
                *byte = *original;
            }
        }
    }
}

/// Code written into out-of-line slots.
trait SlotContents {
    fn bytes(&self) -> &[u8];
}

impl SlotContents for (arch::Displaced, arch::SlotCode) {
    fn bytes(&self) -> &[u8] {
        self.1.bytes()
    }
}

impl SlotContents for jump::Detour {
    fn bytes(&self) -> &[u8] {
        jump::Detour::bytes(self)
    }
}

/// The first offset, a multiple of `align`, where `len` units fit in `0..capacity`
/// between the `(start, len)` ranges of `used` (sorted here).
fn first_fit(used: &mut [(u32, u32)], len: usize, capacity: usize, align: usize) -> Option<usize> {
    heap_sort(used);
    let mut cursor = 0usize;
    for &(start, used_len) in used.iter() {
        if (start as usize).saturating_sub(cursor) >= len {
            return Some(cursor);
        }
        cursor = cursor
            .max(start as usize + used_len as usize)
            .next_multiple_of(align);
    }
    (capacity.saturating_sub(cursor) >= len).then_some(cursor)
}

/// Sorts `items` in place, in O(n log n) and a few hundred bytes of code (the core
/// library's sort is several kilobytes, which a kernel stub pays for).
fn heap_sort(items: &mut [(u32, u32)]) {
    fn sift_down(items: &mut [(u32, u32)], mut root: usize, end: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= end {
                return;
            }
            if child + 1 < end && items[child] < items[child + 1] {
                child += 1;
            }
            if items[root] >= items[child] {
                return;
            }
            items.swap(root, child);
            root = child;
        }
    }
    let len = items.len();
    for root in (0..len / 2).rev() {
        sift_down(items, root, len);
    }
    for end in (1..len).rev() {
        items.swap(0, end);
        sift_down(items, 0, end);
    }
}

/// The site whose planned jump's window holds `address` (but for its first byte).
fn inside_jump(sites: &[SiteRecord], address: u64) -> Option<usize> {
    sites.iter().position(|site| {
        site.jump.planned()
            && address > site.address
            && address < site.address + u64::from(site.jump.covered)
    })
}

/// Frames `message` and writes it; a reply that cannot be encoded is replaced by
/// a `NO_SPACE` reply with the same sequence number, so it is never lost.
fn send_framed(
    message: &StubMessage<'_>,
    scratch: &mut [u8],
    frame: &mut [u8],
    write: &mut dyn FnMut(&[u8]),
) {
    match encode_stub_message(message, scratch, frame) {
        Ok(len) => write(frame.get(..len).unwrap_or(&[])),
        Err(_) => {
            if let StubMessage::Reply { seq, .. } = message {
                let fallback = StubMessage::Reply {
                    seq: *seq,
                    reply: Err(refuse_value(ErrorCode::NO_SPACE, MAX_MESSAGE as u64)),
                };
                if let Ok(len) = encode_stub_message(&fallback, scratch, frame) {
                    write(frame.get(..len).unwrap_or(&[]));
                }
            }
        }
    }
}

impl<P: Platform> Stub<P> {
    // ------------------------------------------------------------------------
    // The port.

    /// Handles one request payload and sends its one reply (and, for `Stop`, the
    /// events before it) through `out`. Session only: `out` must not call back
    /// into the stub.
    pub fn handle(&self, payload: &[u8], out: &mut dyn FnMut(&StubMessage<'_>)) {
        let mut session = self.session.lock();
        let reply_to = match decode_request(payload) {
            Ok(request) => request,
            Err(_) => {
                let undecodable = classify_undecodable(payload);
                send_reply(out, undecodable.seq, Err(refuse(undecodable.code)));
                return;
            }
        };
        let seq = reply_to.seq;
        let reply = self.dispatch(&mut session, &reply_to, out);
        send_reply(out, seq, reply);
    }

    /// Replies `NOT_PRIVILEGED` to a request from someone who does not hold the
    /// port's right, touching nothing else (for transports that let such a sender
    /// reach the stub at all, PROTOCOL.md §10.1).
    pub fn refuse_unprivileged(&self, payload: &[u8], out: &mut dyn FnMut(&StubMessage<'_>)) {
        let seq = match decode_request(payload) {
            Ok(request) => request.seq,
            Err(_) => classify_undecodable(payload).seq,
        };
        send_reply(out, seq, Err(refuse(ErrorCode::NOT_PRIVILEGED)));
    }

    /// The whole port over a byte stream: decodes the frames in `input` (keeping
    /// partial frames for the next call), handles each request, and writes the
    /// framed replies, then every pending event and loss report, through `write`.
    /// Frames the framing layer drops get no reply (PROTOCOL.md §5.4).
    pub fn serve_bytes(&self, input: &[u8], write: &mut dyn FnMut(&[u8])) {
        let mut port = self.port.lock();
        let Port {
            decoder,
            scratch,
            frame,
        } = &mut *port;
        let mut send = |message: &StubMessage<'_>| {
            send_framed(message, &mut scratch[..], &mut frame[..], write)
        };
        let mut input = input;
        while !input.is_empty() {
            if let Some(Ok(payload)) = decoder.feed(&mut input) {
                self.handle(payload, &mut send);
            }
        }
        self.drain(&mut send);
    }

    /// Sends every event and loss report waiting in the rings. Session only.
    pub fn drain(&self, out: &mut dyn FnMut(&StubMessage<'_>)) {
        let mut session = self.session.lock();
        if session.open {
            self.drain_locked(&mut session, out);
        }
    }

    /// Ends the session if its lease expired at `now_ns` (the platform's clock).
    /// Returns whether it did.
    pub fn poll(&self, now_ns: u64) -> bool {
        let lease_ns = u64::from(self.lease_ms()) * 1_000_000;
        let mut session = self.session.lock();
        if session.open
            && lease_ns > 0
            && now_ns.saturating_sub(session.last_request_ns) >= lease_ns
        {
            self.teardown(&mut session);
            true
        } else {
            false
        }
    }

    /// Ends the session as `Goodbye` does, for a transport that saw the holder go
    /// away (PROTOCOL.md §10.3). Nothing happens without a session.
    pub fn end_session(&self) {
        let mut session = self.session.lock();
        self.teardown(&mut session);
    }

    /// Whether a session is open.
    pub fn session_open(&self) -> bool {
        self.session.lock().open
    }

    /// Whether a session is open and its probes are live (`Start` was accepted
    /// and no `Stop` followed). A kernel that holds work back until tracing
    /// starts checks this after serving the port's bytes.
    pub fn session_started(&self) -> bool {
        let session = self.session.lock();
        session.open && session.started
    }

    // ------------------------------------------------------------------------
    // Requests.

    fn dispatch<'s>(
        &'s self,
        session: &'s mut Session,
        request: &Request<'_>,
        out: &mut dyn FnMut(&StubMessage<'_>),
    ) -> Reply<'s> {
        let hello = matches!(request.body, RequestBody::Hello(_));
        if !session.open && !hello {
            return Err(refuse(ErrorCode::NO_HANDSHAKE));
        }
        if session.open {
            session.last_request_ns = self.platform.now_ns();
        }
        if let Err(invalid) = request.validate() {
            return Err(refuse_field(invalid.field));
        }
        match &request.body {
            RequestBody::Hello(hello) => self.hello(session, hello),
            RequestBody::DefineMap(spec) => self.define_map(*spec),
            RequestBody::Arm(arm) => self.arm(session, arm),
            RequestBody::Disarm { probe } => self.disarm(session, probe.0),
            RequestBody::Start => self.start(session),
            RequestBody::Stop => self.stop(session, out),
            RequestBody::ReadMap { map, cursor } => self.read_map(session, *map, *cursor),
            RequestBody::ClearMap { map } => self.clear_map(*map),
            RequestBody::ProbeStats { probe } => match self.probes.find(probe.0) {
                Some((slot, data)) => {
                    Ok(ReplyBody::ProbeStats(self.probes.slot(slot).stats(data.id)))
                }
                None => Err(refuse_value(ErrorCode::UNKNOWN_PROBE, u64::from(probe.0))),
            },
            RequestBody::CpuStats { cpu } => self.cpu_stats(*cpu),
            RequestBody::DescribeMarker { index } => self.describe_marker(*index),
            RequestBody::ReadMemory { address, len } => {
                let len = usize::from(*len).min(session.buffer.len());
                match self
                    .platform
                    .read_kernel(&mut session.buffer[..len], *address)
                {
                    Ok(()) => Ok(ReplyBody::Memory {
                        address: *address,
                        bytes: &session.buffer[..len],
                    }),
                    Err(fault) => Err(refuse_address(ErrorCode::FAULT, fault.address)),
                }
            }
            RequestBody::KeepAlive => Ok(ReplyBody::Done),
            RequestBody::Jump { probe, window } => self.jump(session, probe.0, *window),
            // The stub holds no symbol table: clients name addresses from the
            // kernel's image (the capability is not announced).
            RequestBody::Symbolize { .. } => Err(refuse(ErrorCode::UNSUPPORTED)),
            RequestBody::Goodbye => {
                self.teardown(session);
                Ok(ReplyBody::Done)
            }
        }
    }

    fn hello<'s>(&'s self, session: &mut Session, hello: &Hello<'_>) -> Reply<'s> {
        if session.open {
            return Err(refuse(ErrorCode::BAD_STATE));
        }
        if !(hello.min_version..=hello.max_version).contains(&PROTOCOL_VERSION) {
            return Err(refuse_value(
                ErrorCode::VERSION,
                u64::from(PROTOCOL_VERSION),
            ));
        }
        let cpu_count = self.platform.cpu_count();
        if cpu_count == 0 || cpu_count > MAX_CPUS {
            return Err(refuse_value(ErrorCode::UNSUPPORTED, MAX_CPUS as u64));
        }
        // The return trampoline: the first slot of the out-of-line area, written
        // once and kept for good (pending returns outlive sessions).
        if self.trampoline.load(Ordering::Acquire) == 0 {
            let area = self.platform.out_of_line_area();
            if area.end.saturating_sub(area.start) >= SLOT_SIZE as u64
                && area.start != 0
                && self
                    .platform
                    .write_text(area.start, &arch::BREAKPOINT)
                    .is_ok()
            {
                self.trampoline.store(area.start, Ordering::Release);
            }
        }
        let generation = self.generation.load(Ordering::Relaxed).wrapping_add(1);
        self.generation.store(generation, Ordering::SeqCst);
        session.open = true;
        session.started = false;
        session.next_probe_id = 1;
        session.last_request_ns = self.platform.now_ns();
        session.expected_seq = [0; MAX_CPUS];

        let mut capabilities = Capabilities::MARKER
            | Capabilities::TIMER
            | Capabilities::PROFILE
            | Capabilities::STACK_TRACE;
        if self.out_of_line_slots() > 0 {
            capabilities |= Capabilities::DYNAMIC;
            if self.trampoline.load(Ordering::Acquire) != 0 {
                capabilities |= Capabilities::RETURN;
            }
            if self.platform.write_text_stopped(&[], &[]).is_ok() {
                capabilities |= Capabilities::JUMP;
            }
        }
        let build_id = self.platform.build_id();
        Ok(ReplyBody::Hello(HelloReply {
            version: PROTOCOL_VERSION,
            kernel: KernelIdentity {
                build_id: build_id.get(..MAX_BUILD_ID).unwrap_or(build_id),
                name: truncate(self.platform.kernel_name(), MAX_NAME),
                arch: self.platform.arch(),
            },
            cpu_count: cpu_count as u16,
            limits: Limits {
                max_message: MAX_MESSAGE as u32,
                max_program_insns: MAX_PROGRAM_INSNS as u32,
                max_probes: MAX_PROBES as u32,
                max_maps: MAX_MAPS as u32,
                map_memory: MAP_MEMORY,
                ring_bytes_per_cpu: RING_BYTES_PER_CPU as u32,
                max_record: MAX_RECORD as u32,
                return_depth: RETURN_DEPTH as u32,
            },
            capabilities: Capabilities(capabilities),
            lease_ms: self.lease_ms(),
        }))
    }

    fn define_map(&self, spec: probe_port_protocol::maps::MapSpec) -> Reply<'static> {
        if let Err(error) = spec.validate() {
            return Err(refuse_field(match error {
                MapSpecError::KeySize => "key_size",
                MapSpecError::ValueSize => "value_size",
                MapSpecError::HistogramRange => "kind",
                MapSpecError::NoEntries => "max_entries",
                _ => "map",
            }));
        }
        match self.maps.define(spec, self.cpu_count()) {
            Ok(()) => Ok(ReplyBody::Done),
            Err(DefineError::Exists) => {
                Err(refuse_value(ErrorCode::MAP_EXISTS, u64::from(spec.map.0)))
            }
            Err(DefineError::TooManyMaps) => {
                Err(refuse_value(ErrorCode::NO_SPACE, MAX_MAPS as u64))
            }
            Err(DefineError::NoMemory) => Err(refuse_value(ErrorCode::NO_SPACE, MAP_MEMORY)),
            Err(DefineError::EntryTooLarge) => {
                Err(refuse_value(ErrorCode::NO_SPACE, MAX_PAGE_ENTRIES as u64))
            }
        }
    }

    fn cpu_stats(&self, cpu: u16) -> Reply<'static> {
        let index = usize::from(cpu);
        let Some(percpu) = self.cpus.get(index).filter(|_| index < self.cpu_count()) else {
            return Err(refuse_field("cpu"));
        };
        Ok(ReplyBody::CpuStats(CpuStats {
            cpu,
            hits: percpu.hits.load(Ordering::Relaxed),
            reentered: percpu.reentered.load(Ordering::Relaxed),
            emitted: percpu.emitted.load(Ordering::Relaxed),
            lost: percpu.lost.load(Ordering::Relaxed),
            faults: percpu.faults.load(Ordering::Relaxed),
            next_seq: percpu.next_seq.load(Ordering::SeqCst),
        }))
    }

    fn describe_marker(&self, index: u32) -> Reply<'static> {
        let markers = self.platform.markers();
        let Some(site) = markers.get(index as usize) else {
            return Err(refuse_value(ErrorCode::UNKNOWN_MARKER, u64::from(index)));
        };
        let mut args = heapless::Vec::new();
        for (name, ty) in site.args.iter().take(MAX_MARKER_ARGS) {
            // Cannot fail: at most MAX_MARKER_ARGS are taken.
            let _ = args.push(MarkerArg {
                name: truncate(name, MAX_NAME),
                ty: *ty,
            });
        }
        Ok(ReplyBody::Marker(MarkerInfo {
            index,
            total: markers.len() as u32,
            name: truncate(site.name, MAX_NAME),
            address: core::ptr::from_ref(site) as u64,
            args,
        }))
    }

    // ------------------------------------------------------------------------
    // Arming.

    /// Probe slots of the out-of-line area, after the trampoline's.
    fn out_of_line_slots(&self) -> usize {
        let area = self.platform.out_of_line_area();
        let slots = area.end.saturating_sub(area.start) / SLOT_SIZE as u64;
        (slots.saturating_sub(1) as usize).min(MAX_OUT_OF_LINE_SLOTS - 1)
    }

    /// Whether `address` may never be probed: the out-of-line area, the
    /// platform's forbidden text, the stub's own entry points.
    fn forbidden(&self, address: u64) -> bool {
        let on_breakpoint: fn(&Self, &mut arch::TrapRegisters) -> TrapOutcome = Self::on_breakpoint;
        let on_timer: fn(&Self, &arch::TrapRegisters) = Self::on_timer;
        let fire: fn(&Self, &'static crate::MarkerSite, &[u64]) = Self::fire_marker;
        let fire_global: fn(&'static crate::MarkerSite, &[u64]) = crate::fire_marker;
        let on_jump: unsafe fn(&Self, &mut ProbeContext) = Self::on_jump;
        let entry_points = [
            on_breakpoint as usize as u64,
            on_timer as usize as u64,
            fire as usize as u64,
            fire_global as usize as u64,
            on_jump as usize as u64,
            Self::jump_entry_address(),
        ];
        address == 0
            || address == u64::MAX
            || self.platform.out_of_line_area().contains(&address)
            || self.platform.compiled_code_area().contains(&address)
            || self
                .platform
                .forbidden_text()
                .iter()
                .any(|range| range.contains(&address))
            || entry_points.contains(&address)
    }

    fn arm<'s>(&'s self, session: &'s mut Session, arm: &ArmRequest<'_>) -> Reply<'s> {
        match arm.site {
            Site::Dynamic { address, expected } => {
                self.arm_text(session, address, expected, arm.program, None)
            }
            Site::Return {
                address,
                expected,
                entry_program,
            } => self.arm_text(session, address, expected, arm.program, Some(entry_program)),
            Site::Marker { index } => self.arm_marker(session, index, arm.program),
            Site::Timer { period_ns, scope } => {
                self.arm_timer(session, period_ns, scope, arm.program)
            }
            // A kernel stub has no user address spaces to probe (no `USER` bit).
            Site::User { .. } => Err(ErrorReply::with(
                ErrorCode::UNSUPPORTED,
                ErrorDetail::Text("user-space sites"),
            )),
            // The client has the image's symbols: it sends addresses (no
            // `KERNEL_SYMBOL` bit).
            Site::KernelSymbol { .. } => Err(ErrorReply::with(
                ErrorCode::UNSUPPORTED,
                ErrorDetail::Text("kernel symbol sites"),
            )),
        }
    }

    fn arm_text<'s>(
        &'s self,
        session: &'s mut Session,
        address: u64,
        expected: &[u8],
        program: &[u8],
        entry_program: Option<&[u8]>,
    ) -> Reply<'s> {
        let is_return = entry_program.is_some();
        let slot_count = self.out_of_line_slots();
        if slot_count == 0 || (is_return && self.trampoline.load(Ordering::Acquire) == 0) {
            return Err(refuse(ErrorCode::UNSUPPORTED));
        }
        if self.forbidden(address) {
            return Err(refuse_address(ErrorCode::FORBIDDEN_ADDRESS, address));
        }
        // A probe inside a jump's window: that site goes back to its breakpoint.
        if let Some(site) = inside_jump(&session.sites, address) {
            self.drop_jump(session, site)
                .map_err(|address| refuse_address(ErrorCode::UNSUPPORTED, address))?;
        }
        let existing = self.sites.find(address);
        if let Some(index) = existing {
            let site = self.sites.entry(index);
            if site.data().displaced().is_none() {
                // A marker's site: stub data, not an instruction.
                return Err(refuse_address(ErrorCode::FORBIDDEN_ADDRESS, address));
            }
            if is_return && site.returns().is_none() {
                // A return probe needs the breakpoint: the jump goes.
                self.drop_jump(session, index)
                    .map_err(|address| refuse_address(ErrorCode::UNSUPPORTED, address))?;
            }
            let attached = if is_return {
                site.returns()
            } else {
                site.primary()
            };
            if let Some(slot) = attached {
                let id = self.probes.slot(slot).armed().map_or(0, |data| data.id);
                return Err(refuse_value(ErrorCode::ALREADY_PROBED, u64::from(id)));
            }
        }
        if let Some(start) = self.platform.function_start(address) {
            self.check_boundary(session, start, address)?;
        }
        // The bytes the kernel has there (without the stub's own breakpoints).
        let len = expected.len();
        if let Err(fault) = self.read_original(session, address, len) {
            return Err(refuse_address(ErrorCode::FAULT, fault));
        }
        if session.buffer[..len] != *expected {
            return Err(ErrorReply::with(
                ErrorCode::BYTES_MISMATCH,
                ErrorDetail::Bytes(&session.buffer[..len]),
            ));
        }
        let Some(probe_slot) = self.probes.free_slot() else {
            return Err(refuse_value(ErrorCode::NO_SPACE, MAX_PROBES as u64));
        };
        // A new site needs the displaced instruction (checked before anything is
        // written: an instruction that cannot run displaced consumes nothing).
        let prepared = match existing {
            Some(_) => None,
            None => {
                let code_len = self.read_code(session, address);
                let mut code = [0u8; MAX_INSN_LEN];
                code[..code_len].copy_from_slice(&session.buffer[..code_len]);
                let area = self.platform.out_of_line_area();
                let Ok((displaced, _)) =
                    arch::prepare(address, &code[..code_len], area.start + SLOT_SIZE as u64)
                else {
                    return Err(refuse_address(ErrorCode::UNRELOCATABLE, address));
                };
                let mut original = [0u8; arch::BREAKPOINT.len()];
                for (byte, code) in original.iter_mut().zip(&code[..code_len]) {
                    *byte = *code;
                }
                Some((displaced, code, code_len, original))
            }
        };
        let kind = if is_return { RETURN } else { DYNAMIC };
        let programs = self.stage_programs(session, program, entry_program)?;
        let site_index = match (existing, prepared) {
            (Some(index), _) => index,
            (None, Some((displaced, code, code_len, original))) => {
                // The slot's code first: a site is never published without it.
                let (displaced, slot_address) = if displaced.is_emulated() {
                    (displaced, 0)
                } else {
                    self.out_of_line_slot(session, address, &code[..code_len], slot_count)?
                };
                let data = SiteData::text(displaced, slot_address);
                let Some(index) = self.sites.insert(address, data) else {
                    return Err(refuse_value(ErrorCode::NO_SPACE, MAX_PROBES as u64));
                };
                session.sites[index] = SiteRecord {
                    address,
                    text: true,
                    patched: false,
                    original,
                    jump: JumpRecord::NONE,
                };
                index
            }
            (None, None) => return Err(refuse(ErrorCode::UNSUPPORTED)),
        };
        let id = self.next_probe_id(session);
        self.probes.slot(probe_slot).install(ProbeData {
            id,
            kind,
            address,
            ..programs
        });
        session.probes[probe_slot] = ProbeRecord {
            site: site_index as u32 + 1,
            ..ProbeRecord::ZERO
        };
        let site = self.sites.entry(site_index);
        if is_return {
            site.set_returns(Some(probe_slot));
        } else {
            site.set_primary(Some(probe_slot));
        }
        if session.started {
            self.probes.slot(probe_slot).set_live(true);
            if let Err(address) = self.patch(session, site_index) {
                let _ = self.unpublish_probe(session, probe_slot);
                self.synchronize();
                return Err(refuse_address(ErrorCode::UNSUPPORTED, address));
            }
        }
        Ok(ReplyBody::Armed { probe: ProbeId(id) })
    }

    fn arm_marker<'s>(&'s self, session: &'s mut Session, index: u32, program: &[u8]) -> Reply<'s> {
        let markers = self.platform.markers();
        let Some(marker) = markers.get(index as usize) else {
            return Err(refuse_value(ErrorCode::UNKNOWN_MARKER, u64::from(index)));
        };
        let address = core::ptr::from_ref(marker) as u64;
        let existing = self.sites.find(address);
        if let Some(slot) = existing.and_then(|site| self.sites.entry(site).primary()) {
            let id = self.probes.slot(slot).armed().map_or(0, |data| data.id);
            return Err(refuse_value(ErrorCode::ALREADY_PROBED, u64::from(id)));
        }
        let Some(probe_slot) = self.probes.free_slot() else {
            return Err(refuse_value(ErrorCode::NO_SPACE, MAX_PROBES as u64));
        };
        let programs = self.stage_programs(session, program, None)?;
        let site_index = match existing {
            Some(site) => site,
            None => {
                let data = SiteData::marker();
                let Some(site) = self.sites.insert(address, data) else {
                    return Err(refuse_value(ErrorCode::NO_SPACE, MAX_PROBES as u64));
                };
                session.sites[site] = SiteRecord {
                    address,
                    ..SiteRecord::ZERO
                };
                site
            }
        };
        let id = self.next_probe_id(session);
        self.probes.slot(probe_slot).install(ProbeData {
            id,
            kind: MARKER,
            address,
            ..programs
        });
        session.probes[probe_slot] = ProbeRecord {
            site: site_index as u32 + 1,
            marker: index + 1,
            ..ProbeRecord::ZERO
        };
        self.sites.entry(site_index).set_primary(Some(probe_slot));
        if session.started {
            self.probes.slot(probe_slot).set_live(true);
            marker.enabled.store(true, Ordering::SeqCst);
        }
        Ok(ReplyBody::Armed { probe: ProbeId(id) })
    }

    fn arm_timer<'s>(
        &'s self,
        session: &'s mut Session,
        period_ns: u64,
        scope: TimerScope,
        program: &[u8],
    ) -> Reply<'s> {
        let Some(timer) = self
            .timers
            .iter()
            .position(|timer| timer.load(Ordering::Relaxed) == 0)
        else {
            return Err(refuse_value(ErrorCode::NO_SPACE, MAX_TIMERS as u64));
        };
        let Some(probe_slot) = self.probes.free_slot() else {
            return Err(refuse_value(ErrorCode::NO_SPACE, MAX_PROBES as u64));
        };
        let programs = self.stage_programs(session, program, None)?;
        let id = self.next_probe_id(session);
        self.probes.slot(probe_slot).install(ProbeData {
            id,
            kind: TIMER,
            address: period_ns,
            each_cpu: scope == TimerScope::EachCpu,
            ..programs
        });
        session.probes[probe_slot] = ProbeRecord {
            timer: timer as u32 + 1,
            ..ProbeRecord::ZERO
        };
        self.reset_timer(timer, period_ns);
        self.timers[timer].store(probe_slot as u32 + 1, Ordering::SeqCst);
        if session.started {
            self.probes.slot(probe_slot).set_live(true);
        }
        Ok(ReplyBody::Armed { probe: ProbeId(id) })
    }

    /// Makes timer `timer` first due one period from now on every CPU.
    fn reset_timer(&self, timer: usize, period_ns: u64) {
        let due = self.platform.now_ns().saturating_add(period_ns);
        for percpu in &self.cpus {
            if let Some(cell) = percpu.timer_due.get(timer) {
                cell.store(due, Ordering::Relaxed);
            }
        }
    }

    fn next_probe_id(&self, session: &mut Session) -> u32 {
        let id = session.next_probe_id.max(1);
        session.next_probe_id = id.wrapping_add(1);
        id
    }

    /// Verifies the handler (and entry program) into a free range of the program
    /// arena; returns their places as the program fields of a [`ProbeData`].
    fn stage_programs(
        &self,
        session: &mut Session,
        program: &[u8],
        entry_program: Option<&[u8]>,
    ) -> Result<ProbeData, Refusal> {
        let entry_program = entry_program.unwrap_or(&[]);
        let program_len = program.len() / INSN_SIZE;
        let entry_len = entry_program.len() / INSN_SIZE;
        if program_len == 0 {
            return Err(rejected(0, Rule::EmptyProgram, false));
        }
        for (len, entry) in [(program_len, false), (entry_len, true)] {
            if len > MAX_PROGRAM_INSNS {
                return Err(rejected(MAX_PROGRAM_INSNS as u32, Rule::TooLong, entry));
            }
        }
        let total = program_len + entry_len;
        let Some(start) = self.allocate_program(session, total) else {
            return Err(refuse_value(
                ErrorCode::NO_SPACE,
                PROGRAM_ARENA_SLOTS as u64,
            ));
        };
        // SAFETY: `allocate_program` returned a range no armed probe names, and
        // every request that disarmed a probe reached quiescence before replying,
        // so no CPU reads these slots.
        let decoded = unsafe {
            self.programs.with_range_mut(start..start + total, |slots| {
                let (main, entry) = slots.split_at_mut(program_len);
                decode_into(program, main).is_ok() && decode_into(entry_program, entry).is_ok()
            })
        };
        if decoded != Some(true) {
            return Err(refuse(ErrorCode::MALFORMED));
        }
        let mut scratch = VERIFIER.lock();
        let mut compiler = COMPILER.lock();
        let compiler = &mut *compiler;
        let mut depths = [0u16; 2];
        // The programs' code, back to back in the compiler's buffer; `None` once
        // one of them does not compile (both are interpreted then), and from the
        // start on a platform without a compiled-code area, where the code could
        // not be placed (such an embedding then links no compiler at all).
        let area = self.platform.compiled_code_area();
        let mut compiled: Option<(usize, usize)> = (area.end > area.start).then_some((0, 0));
        for ((range, kind, entry), depth) in [
            (start..start + program_len, ProgramKind::Probe, false),
            (start + program_len..start + total, ProgramKind::Entry, true),
        ]
        .into_iter()
        .zip(&mut depths)
        {
            if range.is_empty() {
                continue;
            }
            // SAFETY: the session is the only writer of the arena and is not
            // writing; the range is not published yet.
            let insns = unsafe { self.programs.range(range) };
            let mut config = VerifierConfig::new(kind, &self.maps);
            config.max_insns = MAX_PROGRAM_INSNS;
            match verify(insns, &config, &mut scratch) {
                Ok(verified) => {
                    *depth = u16::try_from(verified.stack_depth()).unwrap_or(u16::MAX);
                    compiled = compiled.and_then(|(used, entry_offset)| {
                        let at = used.next_multiple_of(CODE_ALIGN);
                        let out = compiler.code.get_mut(at..)?;
                        let len = compile(&verified, out, &mut compiler.scratch).ok()?;
                        Some((at + len, if entry { at } else { entry_offset }))
                    });
                }
                Err(error) => return Err(rejected(error.index, error.rule, entry)),
            }
        }
        let mut data = ProbeData {
            program_start: start as u32,
            program_len: program_len as u32,
            entry_start: (start + program_len) as u32,
            entry_len: entry_len as u32,
            stack_depth: depths[0],
            entry_stack_depth: depths[1],
            ..ProbeData::default()
        };
        let placed = match compiled {
            Some((len, entry_offset)) => self.place_code(
                &mut session.ranges,
                &mut data,
                &compiler.code[..len],
                entry_offset,
            ),
            None if !P::INTERPRETER => {
                return Err(ErrorReply::with(
                    ErrorCode::UNSUPPORTED,
                    ErrorDetail::Text("compiled code"),
                ));
            }
            None => true,
        };
        if !placed && !P::INTERPRETER {
            return Err(ErrorReply::with(
                ErrorCode::NO_SPACE,
                ErrorDetail::Text("compiled code area"),
            ));
        }
        Ok(data)
    }

    /// Copies a probe's compiled code into the platform's compiled-code area (first
    /// fit between the code of armed probes) and records it in `data`. Returns
    /// whether it did; without room or a way to write, the probe's programs are
    /// interpreted, or refused on a platform without the interpreter.
    fn place_code(
        &self,
        used: &mut [(u32, u32); MAX_PROBES],
        data: &mut ProbeData,
        code: &[u8],
        entry_offset: usize,
    ) -> bool {
        let area = self.platform.compiled_code_area();
        let capacity = area.end.saturating_sub(area.start) as usize;
        if code.is_empty() || capacity == 0 {
            return false;
        }
        let mut count = 0;
        for (_, armed) in self.probes.armed() {
            if armed.code_len > 0
                && let Some(slot) = used.get_mut(count)
            {
                *slot = (armed.code_start, armed.code_len);
                count += 1;
            }
        }
        let Some(start) = first_fit(&mut used[..count], code.len(), capacity, CODE_ALIGN) else {
            return false;
        };
        if self
            .platform
            .write_text(area.start + start as u64, code)
            .is_err()
        {
            return false;
        }
        data.code_start = start as u32;
        data.code_len = code.len() as u32;
        data.entry_code_offset = entry_offset as u32;
        true
    }

    /// First fit in the program arena between the ranges of armed probes.
    fn allocate_program(&self, session: &mut Session, len: usize) -> Option<usize> {
        let mut count = 0;
        for (_, data) in self.probes.armed() {
            if let Some(range) = session.ranges.get_mut(count) {
                *range = (data.program_start, data.program_len + data.entry_len);
                count += 1;
            }
        }
        first_fit(&mut session.ranges[..count], len, PROGRAM_ARENA_SLOTS, 1)
    }

    /// The out-of-line slot that runs the instruction at `address` (`code`, its
    /// bytes), written once per boot (see [`Stub::write_once_slots`]). Returns the
    /// displaced instruction prepared for that slot and its address.
    fn out_of_line_slot(
        &self,
        session: &mut Session,
        address: u64,
        code: &[u8],
        slot_count: usize,
    ) -> Result<(arch::Displaced, u64), Refusal> {
        let ((displaced, _), slot) =
            self.write_once_slots(session, address, 1, slot_count, |slot| {
                arch::prepare(address, code, slot)
                    .map_err(|_| refuse_address(ErrorCode::UNRELOCATABLE, address))
            })?;
        Ok((displaced, slot))
    }

    /// A run of `count` out-of-line slots holding the code `build` gives for the
    /// run's address, tagged `owner` (the first slot; the others `u64::MAX`, which
    /// no search takes): the run written for `owner` earlier in the boot if it
    /// holds exactly that code, else fresh slots, written now. Slots are written
    /// once per boot: a thread may be preempted inside one. Returns what `build`
    /// gave and the run's address.
    fn write_once_slots<T: SlotContents>(
        &self,
        session: &mut Session,
        owner: u64,
        count: usize,
        slot_count: usize,
        mut build: impl FnMut(u64) -> Result<T, Refusal>,
    ) -> Result<(T, u64), Refusal> {
        let area = self.platform.out_of_line_area();
        let slot_address = |slot: usize| area.start + (slot * SLOT_SIZE) as u64;
        let used = (session.slots_used as usize).min(slot_count);
        for slot in 1..=used {
            if session.slot_owners.get(slot) != Some(&owner) {
                continue;
            }
            let Ok(built) = build(slot_address(slot)) else {
                continue;
            };
            let wanted = built.bytes();
            let Some(held) = session.buffer.get_mut(..wanted.len()) else {
                continue;
            };
            if self.platform.read_kernel(held, slot_address(slot)).is_ok() && held == wanted {
                return Ok((built, slot_address(slot)));
            }
        }
        let first = used + 1;
        if first + count - 1 > slot_count {
            return Err(refuse_value(ErrorCode::NO_SPACE, slot_count as u64));
        }
        let built = build(slot_address(first))?;
        if self
            .platform
            .write_text(slot_address(first), built.bytes())
            .is_err()
        {
            return Err(refuse_address(ErrorCode::UNSUPPORTED, slot_address(first)));
        }
        for (index, slot_owner) in session.slot_owners[first..first + count]
            .iter_mut()
            .enumerate()
        {
            *slot_owner = if index == 0 { owner } else { u64::MAX };
        }
        session.slots_used = (first + count - 1) as u32;
        Ok((built, slot_address(first)))
    }

    /// Reads `len` bytes at `address` into the session buffer, with the original
    /// bytes in place of the stub's breakpoints. Returns the faulting address.
    fn read_original(&self, session: &mut Session, address: u64, len: usize) -> Result<(), u64> {
        let Session { buffer, sites, .. } = session;
        let bytes = &mut buffer[..len];
        self.platform
            .read_kernel(bytes, address)
            .map_err(|fault| fault.address)?;
        overlay_originals(sites, address, bytes);
        Ok(())
    }

    /// Reads up to [`MAX_INSN_LEN`] bytes of original code at `address` into the
    /// session buffer, fewer if the text ends before; returns how many.
    fn read_code(&self, session: &mut Session, address: u64) -> usize {
        let mut len = MAX_INSN_LEN;
        while len > 0 {
            match self.read_original(session, address, len) {
                Ok(()) => return len,
                Err(fault) => {
                    let readable = fault.saturating_sub(address) as usize;
                    len = if readable < len { readable } else { len - 1 };
                }
            }
        }
        0
    }

    /// Refuses `address` unless decoding from the function start `start` lands on it.
    fn check_boundary(
        &self,
        session: &mut Session,
        start: u64,
        address: u64,
    ) -> Result<(), Refusal> {
        let not_boundary = refuse_address(ErrorCode::NOT_INSN_BOUNDARY, address);
        let Some(offset) = address.checked_sub(start) else {
            return Err(not_boundary);
        };
        let Ok(offset) = usize::try_from(offset) else {
            return Ok(());
        };
        if offset > MAX_BOUNDARY_SCAN {
            // Too far into the function to decode from its start here; the
            // expected bytes are still checked.
            return Ok(());
        }
        let Session { code, sites, .. } = session;
        let mut len = offset + MAX_INSN_LEN;
        let read = loop {
            match self.platform.read_kernel(&mut code[..len], start) {
                Ok(()) => break len,
                Err(fault) => {
                    let readable = fault.address.saturating_sub(start) as usize;
                    if readable <= offset {
                        return Err(refuse_address(ErrorCode::FAULT, fault.address));
                    }
                    len = readable.min(len - 1);
                }
            }
        };
        let code = &mut code[..read];
        overlay_originals(sites, start, code);
        if arch::is_instruction_boundary(start, code, address) {
            Ok(())
        } else {
            Err(not_boundary)
        }
    }

    // ------------------------------------------------------------------------
    // Jump probes.

    /// `Jump`: plans the jump of a dynamic probe's site (its detour written into
    /// the out-of-line area now) and writes the jump if the site is patched.
    fn jump<'s>(&'s self, session: &mut Session, id: u32, window: u8) -> Reply<'s> {
        let Some((slot, data)) = self.probes.find(id) else {
            return Err(refuse_value(ErrorCode::UNKNOWN_PROBE, u64::from(id)));
        };
        if self.platform.write_text_stopped(&[], &[]).is_err() {
            return Err(refuse(ErrorCode::UNSUPPORTED));
        }
        let site_index = session
            .probes
            .get(slot)
            .and_then(|record| (record.site as usize).checked_sub(1));
        let Some(site_index) = site_index else {
            return Err(refuse(ErrorCode::UNSUPPORTED));
        };
        let Some(record) = session.sites.get(site_index).copied() else {
            return Err(refuse(ErrorCode::UNSUPPORTED));
        };
        if data.kind != DYNAMIC || !record.text || self.sites.entry(site_index).returns().is_some()
        {
            return Err(refuse(ErrorCode::UNSUPPORTED));
        }
        if record.jump.planned() {
            return Ok(ReplyBody::Done);
        }
        let window = usize::from(window);
        if window < JUMP_LEN {
            return Err(refuse_field("window"));
        }
        let address = record.address;
        // The original bytes, as many as the detour may decode (fewer at the end
        // of the text, but never fewer than the window).
        let mut len = jump::MAX_WINDOW;
        while let Err(fault) = self.read_original(session, address, len) {
            let readable = fault.saturating_sub(address) as usize;
            if readable < window.min(jump::MAX_WINDOW) || readable >= len {
                return Err(refuse_address(ErrorCode::FAULT, fault));
            }
            len = readable;
        }
        let mut code = [0u8; jump::MAX_WINDOW];
        code[..len].copy_from_slice(&session.buffer[..len]);
        let code = &code[..len];

        // Where a fresh detour would go, to learn the window it covers first.
        let area = self.platform.out_of_line_area();
        let slot_address = |slot: usize| area.start + (slot * SLOT_SIZE) as u64;
        let slot_count = self.out_of_line_slots();
        let fresh = (session.slots_used as usize).min(slot_count) + 1;
        let covered = self
            .build_detour(address, code, window, slot_address(fresh))?
            .covered;
        if jump::jump(address, slot_address(fresh)).is_none()
            || (1..covered as u64).any(|other| self.forbidden(address + other))
        {
            return Err(refuse(ErrorCode::UNSUPPORTED));
        }
        for other in 1..covered as u64 {
            if let Some(index) = self.sites.find(address + other) {
                let site = self.sites.entry(index);
                let probe = site.primary().or(site.returns());
                let id = probe
                    .and_then(|slot| self.probes.slot(slot).armed())
                    .map_or(0, |data| data.id);
                return Err(refuse_value(ErrorCode::ALREADY_PROBED, u64::from(id)));
            }
        }
        let detour = self.detour_slots(session, address, code, window, slot_count)?;
        if let Some(record) = session.sites.get_mut(site_index) {
            let mut original = [0u8; JUMP_LEN];
            original.copy_from_slice(&code[..JUMP_LEN]);
            record.jump = JumpRecord {
                detour,
                covered: covered as u8,
                active: false,
                original,
            };
        }
        self.activate_jump(session, site_index);
        Ok(ReplyBody::Done)
    }

    /// The address the detours call: [`jump_entry`] for this platform.
    fn jump_entry_address() -> u64 {
        let entry: extern "sysv64" fn(&mut ProbeContext, &Stub<P>) = jump_entry::<P>;
        entry as usize as u64
    }

    /// The detour for `address` built to sit at `detour_address`.
    fn build_detour(
        &self,
        address: u64,
        code: &[u8],
        window: usize,
        detour_address: u64,
    ) -> Result<jump::Detour, Refusal> {
        jump::build(
            address,
            code,
            window,
            detour_address,
            Self::jump_entry_address(),
            core::ptr::from_ref(self) as u64,
        )
        .map_err(|error| match error {
            DetourError::WindowTooShort => refuse_field("window"),
            DetourError::Unrelocatable(at) => refuse_address(ErrorCode::UNRELOCATABLE, at),
            DetourError::TooLarge => refuse_address(ErrorCode::UNRELOCATABLE, address),
        })
    }

    /// The detour of `address`, written once per boot like the displaced
    /// instructions' slots (see [`Stub::write_once_slots`]); its run is tagged
    /// `!address`, so it is never taken for a displaced instruction's slot.
    fn detour_slots(
        &self,
        session: &mut Session,
        address: u64,
        code: &[u8],
        window: usize,
        slot_count: usize,
    ) -> Result<u64, Refusal> {
        let (_, detour) =
            self.write_once_slots(session, !address, DETOUR_SLOTS, slot_count, |slot| {
                self.build_detour(address, code, window, slot)
            })?;
        Ok(detour)
    }

    /// Writes a planned jump over a patched site's breakpoint, at a moment when
    /// nothing would resume inside the window or anywhere in the out-of-line area
    /// (slots and detours jump back into kernel text). Without such a moment the
    /// site keeps its breakpoint, which works as well, only slower.
    fn activate_jump(&self, session: &mut Session, site: usize) {
        let Some(record) = session.sites.get(site).copied() else {
            return;
        };
        if !record.patched || !record.jump.planned() || record.jump.active {
            return;
        }
        let address = record.address;
        let Some(bytes) = jump::jump(address, record.jump.detour) else {
            return;
        };
        // Nothing may resume inside the window, nor anywhere in the out-of-line
        // area: a slot or detour of any site, this one's or an earlier one's (slots
        // outlive their probes), may jump back into the window.
        let area = self.platform.out_of_line_area();
        let avoid = [address + 1..address + u64::from(record.jump.covered), area];
        for _ in 0..JUMP_ATTEMPTS {
            match self
                .platform
                .write_text_stopped(&avoid, &[(address, &bytes)])
            {
                Ok(true) => {
                    if let Some(record) = session.sites.get_mut(site) {
                        record.jump.active = true;
                    }
                    return;
                }
                Ok(false) => continue,
                Err(_) => return,
            }
        }
    }

    /// Puts a site's breakpoint back in place of its jump (the window's other bytes
    /// restored). Returns the address if the platform could not write it.
    fn deactivate_jump(&self, session: &mut Session, site: usize) -> Result<(), u64> {
        let Some(record) = session.sites.get(site).copied() else {
            return Ok(());
        };
        if !record.jump.active {
            return Ok(());
        }
        let mut bytes = record.jump.original;
        bytes[..arch::BREAKPOINT.len()].copy_from_slice(&arch::BREAKPOINT);
        for _ in 0..JUMP_ATTEMPTS {
            if let Ok(true) = self
                .platform
                .write_text_stopped(&[], &[(record.address, &bytes)])
            {
                if let Some(record) = session.sites.get_mut(site) {
                    record.jump.active = false;
                }
                return Ok(());
            }
        }
        Err(record.address)
    }

    /// Forgets a site's jump plan (the jump taken back first).
    fn drop_jump(&self, session: &mut Session, site: usize) -> Result<(), u64> {
        self.deactivate_jump(session, site)?;
        if let Some(record) = session.sites.get_mut(site) {
            record.jump = JumpRecord::NONE;
        }
        Ok(())
    }

    // ------------------------------------------------------------------------
    // Patching.

    /// Writes the breakpoint of a site. Returns the address on failure.
    fn patch(&self, session: &mut Session, site: usize) -> Result<(), u64> {
        let Some(record) = session.sites.get_mut(site) else {
            return Ok(());
        };
        if record.patched || !record.text {
            return Ok(());
        }
        self.platform
            .write_text(record.address, &arch::BREAKPOINT)
            .map_err(|_| record.address)?;
        record.patched = true;
        self.activate_jump(session, site);
        Ok(())
    }

    /// Restores the original bytes of a site. Returns the address on failure.
    fn unpatch(&self, session: &mut Session, site: usize) -> Result<(), u64> {
        let Some(record) = session.sites.get_mut(site) else {
            return Ok(());
        };
        if !record.patched {
            return Ok(());
        }
        self.deactivate_jump(session, site)?;
        let Some(record) = session.sites.get_mut(site) else {
            return Ok(());
        };
        self.platform
            .write_text(record.address, &record.original)
            .map_err(|_| record.address)?;
        record.patched = false;
        Ok(())
    }

    /// Unpublishes a probe: no handler of it starts any more; its site goes too
    /// if it was the site's last probe (the breakpoint byte restored first). The
    /// caller waits for quiescence before replying. Returns the address of a
    /// breakpoint that could not be restored; that site then stays published, so
    /// CPUs still hitting it resume correctly.
    fn unpublish_probe(&self, session: &mut Session, slot: usize) -> Result<(), u64> {
        let probe = self.probes.slot(slot);
        let Some(data) = probe.armed() else {
            return Ok(());
        };
        let record = session
            .probes
            .get(slot)
            .copied()
            .unwrap_or(ProbeRecord::ZERO);
        probe.remove();
        if let Some(probes) = session.probes.get_mut(slot) {
            *probes = ProbeRecord::ZERO;
        }
        if let Some(timer) = (record.timer as usize).checked_sub(1)
            && let Some(entry) = self.timers.get(timer)
        {
            entry.store(0, Ordering::SeqCst);
        }
        if let Some(marker) = (record.marker as usize).checked_sub(1)
            && let Some(site) = self.platform.markers().get(marker)
        {
            site.enabled.store(false, Ordering::SeqCst);
        }
        let Some(site_index) = (record.site as usize).checked_sub(1) else {
            return Ok(());
        };
        let site = self.sites.entry(site_index);
        if data.kind == RETURN {
            site.set_returns(None);
        } else {
            site.set_primary(None);
        }
        if site.primary().is_some() || site.returns().is_some() {
            return Ok(());
        }
        self.unpatch(session, site_index)?;
        self.sites.remove(site_index);
        // The out-of-line slot stays written (and owned by the address) for good.
        if let Some(site_record) = session.sites.get_mut(site_index) {
            *site_record = SiteRecord::ZERO;
        }
        Ok(())
    }

    fn disarm(&self, session: &mut Session, id: u32) -> Reply<'static> {
        let Some((slot, _)) = self.probes.find(id) else {
            return Err(refuse_value(ErrorCode::UNKNOWN_PROBE, u64::from(id)));
        };
        let restored = self.unpublish_probe(session, slot);
        self.synchronize();
        match restored {
            Ok(()) => Ok(ReplyBody::Done),
            Err(address) => Err(refuse_address(ErrorCode::UNSUPPORTED, address)),
        }
    }

    fn start(&self, session: &mut Session) -> Reply<'static> {
        if session.started {
            return Err(refuse(ErrorCode::BAD_STATE));
        }
        for (slot, data) in self.probes.armed() {
            if data.kind == TIMER
                && let Some(timer) = session
                    .probes
                    .get(slot)
                    .and_then(|record| (record.timer as usize).checked_sub(1))
            {
                self.reset_timer(timer, data.address);
            }
            self.probes.slot(slot).set_live(true);
        }
        for site in 0..SITE_TABLE {
            if let Err(address) = self.patch(session, site) {
                let _ = self.stage_all(session);
                self.synchronize();
                return Err(refuse_address(ErrorCode::UNSUPPORTED, address));
            }
        }
        let markers = self.platform.markers();
        for record in &session.probes {
            if let Some(marker) = (record.marker as usize)
                .checked_sub(1)
                .and_then(|index| markers.get(index))
            {
                marker.enabled.store(true, Ordering::SeqCst);
            }
        }
        session.started = true;
        Ok(ReplyBody::Done)
    }

    /// Stops every probe firing: staged, markers disabled, every byte restored.
    /// Returns the first address that could not be restored.
    fn stage_all(&self, session: &mut Session) -> Result<(), u64> {
        for (slot, _) in self.probes.armed() {
            self.probes.slot(slot).set_live(false);
        }
        let markers = self.platform.markers();
        for record in &session.probes {
            if let Some(marker) = (record.marker as usize)
                .checked_sub(1)
                .and_then(|index| markers.get(index))
            {
                marker.enabled.store(false, Ordering::SeqCst);
            }
        }
        let mut first_failure = Ok(());
        for site in 0..SITE_TABLE {
            if let Err(address) = self.unpatch(session, site) {
                first_failure = first_failure.and(Err(address));
            }
        }
        session.started = false;
        first_failure
    }

    fn stop(&self, session: &mut Session, out: &mut dyn FnMut(&StubMessage<'_>)) -> Reply<'static> {
        if !session.started {
            return Err(refuse(ErrorCode::BAD_STATE));
        }
        let restored = self.stage_all(session);
        self.synchronize();
        self.drain_locked(session, out);
        match restored {
            Ok(()) => Ok(ReplyBody::Done),
            Err(address) => Err(refuse_address(ErrorCode::UNSUPPORTED, address)),
        }
    }

    /// Ends the session (PROTOCOL.md §10.3).
    fn teardown(&self, session: &mut Session) {
        if !session.open {
            return;
        }
        let _ = self.stage_all(session);
        let mut all_restored = true;
        for slot in 0..MAX_PROBES {
            all_restored &= self.unpublish_probe(session, slot).is_ok();
        }
        self.synchronize();
        // Nothing can run a handler any more: forget the session's data.
        self.maps.reset();
        if all_restored {
            self.sites.reset();
        }
        for timer in &self.timers {
            timer.store(0, Ordering::SeqCst);
        }
        for percpu in &self.cpus {
            percpu.reset();
        }
        session.expected_seq = [0; MAX_CPUS];
        session.open = false;
        session.started = false;
        session.next_probe_id = 1;
        self.synchronize();
    }

    // ------------------------------------------------------------------------
    // Maps and events.

    fn read_map<'s>(&'s self, session: &'s mut Session, map: MapId, cursor: u32) -> Reply<'s> {
        let Some((slot, layout)) = self.maps.find(map) else {
            return Err(refuse_value(ErrorCode::UNKNOWN_MAP, u64::from(map.0)));
        };
        let buffer = &mut session.buffer[..MAX_PAGE_ENTRIES];
        let page = self.platform.without_interrupts(|| {
            self.maps
                .read_page(slot, &layout, cursor, buffer, self.platform.cpu_id())
        });
        let Some(page) = page else {
            return Err(refuse_field("cursor"));
        };
        Ok(ReplyBody::MapPage(MapPage {
            map,
            count: page.count,
            entries: &session.buffer[..page.len],
            next_cursor: page.next_cursor,
        }))
    }

    fn clear_map(&self, map: MapId) -> Reply<'static> {
        let Some((slot, layout)) = self.maps.find(map) else {
            return Err(refuse_value(ErrorCode::UNKNOWN_MAP, u64::from(map.0)));
        };
        if layout.spec.is_aggregate() {
            self.maps.begin_clear(slot);
            self.synchronize();
            self.maps.finish_clear(slot, &layout);
        } else {
            let cleared = self
                .platform
                .without_interrupts(|| self.maps.clear_hash(slot, &layout, self.platform.cpu_id()));
            if !cleared {
                return Err(refuse(ErrorCode::BAD_STATE));
            }
        }
        Ok(ReplyBody::Done)
    }

    /// Turns every ring's records into events, and every gap in the sequence
    /// numbers into a loss report, so that per CPU the events and losses cover
    /// `0..next_seq` exactly (PROTOCOL.md §7.2).
    fn drain_locked(&self, session: &mut Session, out: &mut dyn FnMut(&StubMessage<'_>)) {
        let Session {
            expected_seq,
            event,
            ..
        } = session;
        for (cpu, percpu) in self.cpus[..self.cpu_count()].iter().enumerate() {
            // First: every number below it is in the ring or lost (see `emit`).
            let next = percpu.next_seq.load(Ordering::SeqCst);
            let mut expected = expected_seq[cpu];
            let cpu_number = cpu as u16;
            // A full ring holds fewer records than words: this bound only stops
            // a drain from chasing a producer forever.
            for _ in 0..RING_WORDS {
                let Some(record) = percpu.ring.pop(event) else {
                    break;
                };
                if record.seq > expected {
                    out(&StubMessage::Lost(LostEvents {
                        cpu: cpu_number,
                        first_seq: expected,
                        count: record.seq - expected,
                    }));
                }
                out(&StubMessage::Event(Event {
                    cpu: cpu_number,
                    seq: record.seq,
                    probe: ProbeId(record.probe),
                    time_ns: record.time_ns,
                    data: &event[..record.len],
                }));
                expected = expected.max(record.seq + 1);
            }
            if next > expected {
                out(&StubMessage::Lost(LostEvents {
                    cpu: cpu_number,
                    first_seq: expected,
                    count: next - expected,
                }));
                expected = next;
            }
            expected_seq[cpu] = expected;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_sort_sorts_like_the_standard_sort() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in 0..200 {
            for _ in 0..20 {
                let mut items: Vec<(u32, u32)> = (0..len)
                    .map(|_| ((next() % 64) as u32, (next() % 8) as u32))
                    .collect();
                let mut expected = items.clone();
                expected.sort_unstable();
                heap_sort(&mut items);
                assert_eq!(items, expected);
            }
        }
    }

    #[test]
    fn first_fit_takes_the_lowest_aligned_gap() {
        let mut used = [(32, 16), (0, 8), (64, 64)];
        assert_eq!(first_fit(&mut used, 16, 256, 16), Some(16));
        assert_eq!(first_fit(&mut used, 17, 256, 16), Some(128));
        assert_eq!(first_fit(&mut used, 129, 256, 16), None);
        assert_eq!(first_fit(&mut [], 256, 256, 16), Some(0));
    }
}
