//! Every message of the probe port.
//!
//! # Design
//!
//! Two directions, two top-level types: the client sends [`Request`]s, the stub
//! sends [`StubMessage`]s (replies, events, lost-event reports). Messages are
//! serialised with postcard (see `PROTOCOL.md` §4 for the byte-level rules) and
//! borrow their variable-length fields (`&[u8]`, `&str`) from the receive buffer,
//! so a `no_std` stub decodes them without allocating.
//!
//! Every request carries a sequence number and gets exactly one reply with the
//! same number: [`Reply`] with `Ok` (a [`ReplyBody`]) or `Err` (an [`ErrorReply`]
//! with a numbered [`ErrorCode`] and a detail). Events and lost-event reports are
//! unsolicited and carry per-CPU sequence numbers: on each CPU every record the
//! handlers try to emit consumes the next number, so the client can prove that
//! every number was either delivered in an [`Event`] or counted in a [`LostEvents`].
//!
//! # Invariants
//!
//! - Variants are only ever appended; an existing variant's index and fields never
//!   change within a protocol version (`PROTOCOL.md` §7).
//! - Every bound here (`MAX_*`) is checked by [`Request::validate`] and by the
//!   stub before it acts.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::maps::{MapId, MapSpec};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Longest build-id a kernel identity may carry, in bytes.
pub const MAX_BUILD_ID: usize = 64;
/// Longest name (kernel, client, marker, argument) in bytes.
pub const MAX_NAME: usize = 64;
/// Longest expected-bytes field of a dynamic site (the longest x86 instruction).
pub const MAX_EXPECTED: usize = 15;
/// Most arguments a static marker declares.
pub const MAX_MARKER_ARGS: usize = 8;
/// Longest free-text error detail, in bytes.
pub const MAX_DETAIL_TEXT: usize = 96;
/// Most bytes one `ReadMemory` request may ask for.
pub const MAX_READ_MEMORY: u16 = 1024;
/// Longest file path of a user-space site, in bytes.
pub const MAX_PATH: usize = 256;
/// Longest `Site::KernelSymbol` symbol in bytes.
pub const MAX_SYMBOL: usize = 256;

/// A probe's number, assigned by the stub when it arms the probe.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ProbeId(pub u32);

impl fmt::Display for ProbeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "probe {}", self.0)
    }
}

/// A message from the client to the stub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<'a> {
    /// Chosen by the client; echoed in the one reply to this request.
    pub seq: u32,
    /// What is asked.
    #[serde(borrow)]
    pub body: RequestBody<'a>,
}

/// What a request asks for. The variant index is the request's number on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestBody<'a> {
    /// 0. Open the session: must be first. Reply: [`ReplyBody::Hello`].
    Hello(#[serde(borrow)] Hello<'a>),
    /// 1. Define a map before arming programs that use it. Reply: `Done`.
    DefineMap(MapSpec),
    /// 2. Arm a probe (installed, not yet firing until `Start`). Reply: `Armed`.
    Arm(#[serde(borrow)] ArmRequest<'a>),
    /// 3. Remove a probe; its text is restored. Reply: `Done`.
    Disarm {
        /// The probe to remove.
        probe: ProbeId,
    },
    /// 4. Make every armed probe live. Reply: `Done`.
    Start,
    /// 5. Stop every probe firing, then drain the rings: all events before the
    ///    reply. Reply: `Done`.
    Stop,
    /// 6. Read one page of a map, from `cursor` (0 first). Reply: `MapPage`.
    ReadMap {
        /// The map to read.
        map: MapId,
        /// Where to continue; `next_cursor` of the previous page.
        cursor: u32,
    },
    /// 7. Remove every entry of a map. Reply: `Done`.
    ClearMap {
        /// The map to clear.
        map: MapId,
    },
    /// 8. Counters of one probe. Reply: `ProbeStats`.
    ProbeStats {
        /// The probe asked about.
        probe: ProbeId,
    },
    /// 9. Counters of one CPU. Reply: `CpuStats`.
    CpuStats {
        /// The CPU asked about, `0..cpu_count`.
        cpu: u16,
    },
    /// 10. Describe the static marker with this index. Reply: `Marker`.
    DescribeMarker {
        /// Index in the kernel's marker table, `0..total`.
        index: u32,
    },
    /// 11. Read kernel memory (text checksums, expected bytes). Reply: `Memory`.
    ReadMemory {
        /// First byte.
        address: u64,
        /// Bytes wanted, `1..=MAX_READ_MEMORY`.
        len: u16,
    },
    /// 12. Renew the lease. Reply: `Done`.
    KeepAlive,
    /// 13. End the session: every probe is disarmed, every map freed. Reply: `Done`.
    Goodbye,
    /// 14. Let a dynamic probe enter by a jump instead of a breakpoint while it is
    ///     live (capability [`Capabilities::JUMP`]). Reply: `Done`.
    Jump {
        /// The probe (a dynamic probe, alone at its address).
        probe: ProbeId,
        /// Bytes from the probe's address that the client vouches no branch
        /// enters (no jump or call targets an address inside them but the first):
        /// the jump covers whole instructions within them.
        window: u8,
    },
    /// 15. Name the kernel function containing `address`, from the running
    ///     kernel's own symbol table, for a client without the kernel's image
    ///     (capability [`Capabilities::SYMBOLIZE`]). Reply: `Symbol`.
    Symbolize {
        /// A kernel code address (a `PC` a handler recorded, say).
        address: u64,
    },
}

/// The client's half of the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello<'a> {
    /// Oldest protocol version the client speaks.
    pub min_version: u16,
    /// Newest protocol version the client speaks.
    pub max_version: u16,
    /// The client's name and version, for the kernel's log (at most `MAX_NAME` bytes).
    pub client: &'a str,
}

/// Where and how a probe fires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmRequest<'a> {
    /// The probe site.
    #[serde(borrow)]
    pub site: Site<'a>,
    /// The handler: encoded instructions (`isa::INSN_SIZE` bytes each).
    pub program: &'a [u8],
}

/// A probe site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Site<'a> {
    /// 0. An instruction boundary in kernel text.
    Dynamic {
        /// The instruction's address.
        address: u64,
        /// The bytes the client expects at `address` (1..=`MAX_EXPECTED`); the stub
        /// refuses to patch if the kernel's bytes differ.
        expected: &'a [u8],
    },
    /// 1. The return of the function starting at `address`.
    Return {
        /// The function's entry address.
        address: u64,
        /// The bytes the client expects at `address`.
        expected: &'a [u8],
        /// Runs at entry and may save up to `context::ENTRY_SLOTS` values with
        /// `entry_save` for the return program; empty for none.
        entry_program: &'a [u8],
    },
    /// 2. A static marker of the kernel's marker table.
    Marker {
        /// Index in the marker table.
        index: u32,
    },
    /// 3. A periodic timer.
    Timer {
        /// Period in nanoseconds; the stub may refuse periods below its tick.
        period_ns: u64,
        /// On one CPU, or on every CPU (profiling).
        scope: TimerScope,
    },
    /// 4. An instruction of a user-space executable or library, in every process
    ///    that maps it (Linux: a uprobe). Needs [`Capabilities::USER`].
    User {
        /// Absolute path of the ELF file (at most [`MAX_PATH`] bytes).
        path: &'a str,
        /// Offset of the instruction in the file (not its virtual address: the
        /// client maps the address through the `PT_LOAD` segment that holds it).
        file_offset: u64,
        /// Fire when the function starting at `file_offset` returns instead.
        is_return: bool,
        /// File offset of a USDT semaphore (a 16-bit counter the kernel increments
        /// while the probe is armed), or 0 for none.
        ref_ctr_offset: u64,
        /// With `is_return`: runs at the function's entry and may save up to
        /// `context::ENTRY_SLOTS` values with `entry_save` for the return program;
        /// empty for none (and always empty without `is_return`).
        entry_program: &'a [u8],
    },
    /// 5. An instruction of kernel text named by a symbol of the running kernel and
    ///    an offset from it (Linux: a kprobe), for clients without the kernel's
    ///    debuginfo: the stub resolves the name. Needs [`Capabilities::KERNEL_SYMBOL`].
    KernelSymbol {
        /// The function's symbol as the running kernel names it (at most
        /// [`MAX_SYMBOL`] bytes).
        symbol: &'a str,
        /// Bytes from the symbol's address to the instruction (0: its entry).
        offset: u64,
        /// Fire when the function entered at `symbol` returns instead (`offset`
        /// must be 0).
        is_return: bool,
        /// With `is_return`: runs at the function's entry and may save values for
        /// the return program; empty for none (and always empty without
        /// `is_return`).
        entry_program: &'a [u8],
    },
}

/// Where a timer probe fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerScope {
    /// 0. On one CPU (an interval).
    OneCpu,
    /// 1. On every CPU (a profile).
    EachCpu,
}

/// A message from the stub to the client.
#[allow(
    clippy::large_enum_variant,
    reason = "messages are short-lived values on the stack; no_std cannot box the marker list"
)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StubMessage<'a> {
    /// 0. The one reply to the request with this sequence number.
    Reply {
        /// The request's sequence number.
        seq: u32,
        /// Its outcome.
        #[serde(borrow)]
        reply: Reply<'a>,
    },
    /// 1. A record a handler emitted.
    Event(#[serde(borrow)] Event<'a>),
    /// 2. Records that could not be delivered.
    Lost(LostEvents),
}

/// The outcome of a request.
pub type Reply<'a> = Result<ReplyBody<'a>, ErrorReply<'a>>;

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyBody<'a> {
    /// 0. Done, nothing to report.
    Done,
    /// 1. The stub's half of the handshake.
    Hello(#[serde(borrow)] HelloReply<'a>),
    /// 2. The probe was armed with this number.
    Armed {
        /// The new probe's number.
        probe: ProbeId,
    },
    /// 3. One page of a map.
    MapPage(#[serde(borrow)] MapPage<'a>),
    /// 4. Counters of one probe.
    ProbeStats(ProbeStats),
    /// 5. Counters of one CPU.
    CpuStats(CpuStats),
    /// 6. One static marker.
    Marker(#[serde(borrow)] MarkerInfo<'a>),
    /// 7. Kernel memory.
    Memory {
        /// The first byte's address.
        address: u64,
        /// The bytes read.
        bytes: &'a [u8],
    },
    /// 8. The kernel function containing an address (`Symbolize`).
    Symbol {
        /// The address asked about.
        address: u64,
        /// The function's name (at most `MAX_NAME` bytes).
        name: &'a str,
        /// `address` minus the function's start.
        offset: u64,
    },
}

/// The stub's half of the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply<'a> {
    /// The version chosen for this session, within the client's range.
    pub version: u16,
    /// Which kernel this is.
    #[serde(borrow)]
    pub kernel: KernelIdentity<'a>,
    /// Number of CPUs; per-CPU values come in this many copies.
    pub cpu_count: u16,
    /// What the stub accepts.
    pub limits: Limits,
    /// What the stub can do ([`Capabilities`] bits).
    pub capabilities: Capabilities,
    /// The lease: if no request arrives for this many milliseconds, the stub ends
    /// the session as for `Goodbye`. 0 means no lease (the transport tells).
    pub lease_ms: u32,
}

/// Which kernel is running, so the client can check its debuginfo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelIdentity<'a> {
    /// The GNU build-id of the running kernel image (empty if it has none).
    pub build_id: &'a [u8],
    /// The kernel's name and version, e.g. `demo-kernel 0.1.0` (at most `MAX_NAME` bytes).
    pub name: &'a str,
    /// Its architecture.
    pub arch: Arch,
}

/// A processor architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// 0. x86-64.
    X86_64,
    /// 1. 32-bit x86.
    I386,
    /// 2. 64-bit Arm.
    Aarch64,
    /// 3. 64-bit RISC-V.
    Riscv64,
}

/// Limits the stub enforces, announced in the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest message payload the stub accepts or sends, in bytes.
    pub max_message: u32,
    /// Longest handler program, in instruction slots.
    pub max_program_insns: u32,
    /// Most probes armed at once.
    pub max_probes: u32,
    /// Most maps defined at once.
    pub max_maps: u32,
    /// Bytes available for all maps together (per-CPU copies included).
    pub map_memory: u64,
    /// Bytes of event ring per CPU.
    pub ring_bytes_per_cpu: u32,
    /// Largest record one `emit` may send, in bytes.
    pub max_record: u32,
    /// Return probes pending at once per CPU; more are counted as misses.
    pub return_depth: u32,
}

/// Capability bits of a stub.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// `Site::Dynamic`.
    pub const DYNAMIC: u32 = 1 << 0;
    /// `Site::Return`.
    pub const RETURN: u32 = 1 << 1;
    /// `Site::Marker`.
    pub const MARKER: u32 = 1 << 2;
    /// `Site::Timer` with `TimerScope::OneCpu`.
    pub const TIMER: u32 = 1 << 3;
    /// `Site::Timer` with `TimerScope::EachCpu`.
    pub const PROFILE: u32 = 1 << 4;
    /// The `read_user` and `read_user_str` helpers.
    pub const READ_USER: u32 = 1 << 5;
    /// The `stack_trace` helper.
    pub const STACK_TRACE: u32 = 1 << 6;
    /// `Site::User` (user-space instructions and USDT markers).
    pub const USER: u32 = 1 << 7;
    /// The `Jump` request: dynamic probes entered by a jump.
    pub const JUMP: u32 = 1 << 8;
    /// `Site::KernelSymbol` (kernel text named by symbol and offset).
    pub const KERNEL_SYMBOL: u32 = 1 << 9;
    /// The `Symbolize` request (kernel addresses named by the stub).
    pub const SYMBOLIZE: u32 = 1 << 10;

    /// Whether every bit of `bits` is set.
    pub const fn has(self, bits: u32) -> bool {
        self.0 & bits == bits
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(u32, &str); 11] = [
            (Capabilities::DYNAMIC, "dynamic"),
            (Capabilities::RETURN, "return"),
            (Capabilities::MARKER, "marker"),
            (Capabilities::TIMER, "timer"),
            (Capabilities::PROFILE, "profile"),
            (Capabilities::READ_USER, "read-user"),
            (Capabilities::STACK_TRACE, "stack-trace"),
            (Capabilities::USER, "user"),
            (Capabilities::JUMP, "jump"),
            (Capabilities::KERNEL_SYMBOL, "kernel-symbol"),
            (Capabilities::SYMBOLIZE, "symbolize"),
        ];
        let mut list = f.debug_set();
        for (bit, name) in NAMES {
            if self.0 & bit != 0 {
                list.entry(&name);
            }
        }
        let unknown = self.0 & !NAMES.iter().fold(0, |all, (bit, _)| all | bit);
        if unknown != 0 {
            list.entry(&unknown);
        }
        list.finish()
    }
}

/// One page of a map.
///
/// `entries` holds `count` entries back to back. For a hash map each entry is the
/// key followed by the value. For an aggregation each entry is the key followed by
/// `cpu_count` values, CPU 0 first; the client merges them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapPage<'a> {
    /// The map read.
    pub map: MapId,
    /// Number of entries in this page.
    pub count: u32,
    /// The entries' bytes.
    pub entries: &'a [u8],
    /// Cursor of the next page, `None` after the last one.
    pub next_cursor: Option<u32>,
}

/// Counters of one probe. All counts are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStats {
    /// The probe.
    pub probe: ProbeId,
    /// Times its handler ran.
    pub hits: u64,
    /// Times it fired but its handler was skipped: re-entered on the same CPU, or a
    /// return probe whose pending-return stack was full.
    pub misses: u64,
    /// Handler faults (bad memory reads, traps).
    pub faults: u64,
    /// Address of the last fault (0 if none).
    pub last_fault_address: u64,
    /// Records or map updates that found no room.
    pub drops: u64,
}

/// Counters of one CPU. All counts are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    /// The CPU.
    pub cpu: u16,
    /// Handler runs on this CPU.
    pub hits: u64,
    /// Probe hits skipped because a handler was already running on this CPU.
    pub reentered: u64,
    /// Records written to this CPU's ring.
    pub emitted: u64,
    /// Records lost on this CPU (ring full); also reported in `LostEvents`.
    pub lost: u64,
    /// Handler faults on this CPU.
    pub faults: u64,
    /// The next event sequence number this CPU will use.
    pub next_seq: u64,
}

/// The C-like type of a marker argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ArgType {
    /// 0. `u8`.
    U8,
    /// 1. `u16`.
    U16,
    /// 2. `u32`.
    U32,
    /// 3. `u64`.
    U64,
    /// 4. `i8`.
    I8,
    /// 5. `i16`.
    I16,
    /// 6. `i32`.
    I32,
    /// 7. `i64`.
    I64,
    /// 8. `bool`.
    Bool,
    /// 9. An untyped kernel pointer.
    Pointer,
    /// 10. A pointer to a NUL-terminated kernel string.
    String,
}

/// One argument of a static marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerArg<'a> {
    /// Its name (at most `MAX_NAME` bytes).
    pub name: &'a str,
    /// Its type.
    pub ty: ArgType,
}

/// One static marker of the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerInfo<'a> {
    /// Its index in the marker table.
    pub index: u32,
    /// How many markers the table has.
    pub total: u32,
    /// Its name, `subsystem:event` by convention (at most `MAX_NAME` bytes).
    pub name: &'a str,
    /// Address of the marker site (for the client's symbolisation).
    pub address: u64,
    /// Its arguments, in context-slot order.
    #[serde(borrow)]
    pub args: heapless::Vec<MarkerArg<'a>, MAX_MARKER_ARGS>,
}

/// A failed request: a numbered code and a detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply<'a> {
    /// What went wrong.
    pub code: ErrorCode,
    /// Where or why.
    #[serde(borrow)]
    pub detail: ErrorDetail<'a>,
}

/// The detail of an error reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorDetail<'a> {
    /// 0. Nothing more to say.
    None,
    /// 1. The address concerned (fault, forbidden address, not a boundary).
    Address(u64),
    /// 2. A number concerned (the limit reached, the unknown id, the stub's version).
    Value(u64),
    /// 3. Where a program failed verification: instruction index and rule number
    ///    (`verifier::Rule`); `entry` is true for a return site's entry program.
    Verifier {
        /// Index of the offending instruction slot.
        index: u32,
        /// The rule broken.
        rule: u16,
        /// Whether it is the entry program of a return site.
        entry: bool,
    },
    /// 4. The bytes actually found (for `BYTES_MISMATCH`).
    Bytes(&'a [u8]),
    /// 5. Free text (at most `MAX_DETAIL_TEXT` bytes).
    Text(&'a str),
}

impl<'a> ErrorReply<'a> {
    /// An error with no detail.
    pub const fn new(code: ErrorCode) -> Self {
        Self {
            code,
            detail: ErrorDetail::None,
        }
    }

    /// An error with a detail.
    pub const fn with(code: ErrorCode, detail: ErrorDetail<'a>) -> Self {
        Self { code, detail }
    }
}

impl fmt::Display for ErrorReply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        match self.detail {
            ErrorDetail::None => Ok(()),
            ErrorDetail::Address(address) => write!(f, " at {address:#x}"),
            ErrorDetail::Value(value) => write!(f, ": {value}"),
            ErrorDetail::Verifier { index, rule, entry } => {
                let program = if entry { "entry program" } else { "program" };
                match crate::verifier::Rule::from_code(rule) {
                    Some(rule) => write!(f, ": {program} instruction {index}: {rule}"),
                    None => write!(f, ": {program} instruction {index}: rule {rule}"),
                }
            }
            ErrorDetail::Bytes(bytes) => {
                f.write_str(": found")?;
                for byte in bytes {
                    write!(f, " {byte:02x}")?;
                }
                Ok(())
            }
            ErrorDetail::Text(text) => write!(f, ": {text}"),
        }
    }
}

/// A record emitted by a handler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<'a> {
    /// The CPU it was emitted on.
    pub cpu: u16,
    /// Its sequence number on that CPU.
    pub seq: u64,
    /// The probe whose handler emitted it.
    pub probe: ProbeId,
    /// Monotonic nanoseconds at emission.
    pub time_ns: u64,
    /// The bytes the handler passed to `emit`.
    pub data: &'a [u8],
}

/// Records lost on one CPU: sequence numbers `first_seq..first_seq + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvents {
    /// The CPU.
    pub cpu: u16,
    /// The first lost sequence number.
    pub first_seq: u64,
    /// How many consecutive numbers were lost.
    pub count: u64,
}

/// Why a decoded request is out of bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidRequest {
    /// The field that is out of bounds.
    pub field: &'static str,
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}` out of bounds", self.field)
    }
}

impl Request<'_> {
    /// Checks the protocol's fixed bounds on variable-length fields. A stub replies
    /// `INVALID_ARGUMENT` with the field name when this fails.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        let check = |ok: bool, field: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(InvalidRequest { field })
            }
        };
        match &self.body {
            RequestBody::Hello(hello) => {
                check(hello.client.len() <= MAX_NAME, "client")?;
                check(hello.min_version <= hello.max_version, "min_version")
            }
            RequestBody::Arm(arm) => {
                check(
                    arm.program.len().is_multiple_of(crate::isa::INSN_SIZE),
                    "program",
                )?;
                match &arm.site {
                    Site::Dynamic { expected, .. } => {
                        check((1..=MAX_EXPECTED).contains(&expected.len()), "expected")
                    }
                    Site::Return {
                        expected,
                        entry_program,
                        ..
                    } => {
                        check((1..=MAX_EXPECTED).contains(&expected.len()), "expected")?;
                        check(
                            entry_program.len().is_multiple_of(crate::isa::INSN_SIZE),
                            "entry_program",
                        )
                    }
                    Site::Marker { .. } => Ok(()),
                    Site::Timer { period_ns, .. } => check(*period_ns > 0, "period_ns"),
                    Site::User {
                        path,
                        is_return,
                        entry_program,
                        ..
                    } => {
                        check((1..=MAX_PATH).contains(&path.len()), "path")?;
                        check(
                            entry_program.len().is_multiple_of(crate::isa::INSN_SIZE)
                                && (*is_return || entry_program.is_empty()),
                            "entry_program",
                        )
                    }
                    Site::KernelSymbol {
                        symbol,
                        offset,
                        is_return,
                        entry_program,
                    } => {
                        check((1..=MAX_SYMBOL).contains(&symbol.len()), "symbol")?;
                        check(!*is_return || *offset == 0, "offset")?;
                        check(
                            entry_program.len().is_multiple_of(crate::isa::INSN_SIZE)
                                && (*is_return || entry_program.is_empty()),
                            "entry_program",
                        )
                    }
                }
            }
            RequestBody::ReadMemory { len, .. } => {
                check((1..=MAX_READ_MEMORY).contains(len), "len")
            }
            _ => Ok(()),
        }
    }
}

/// The sequence number a stub uses to reply to a payload whose own sequence
/// number cannot be read. Clients never send it.
pub const UNATTRIBUTED_SEQ: u32 = u32::MAX;

/// Number of request kinds this version knows (`RequestBody` variants).
pub const REQUEST_KINDS: u32 = 16;

/// What a stub can still learn from a request it cannot decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UndecodableRequest {
    /// The sequence number to reply with ([`UNATTRIBUTED_SEQ`] if unreadable).
    pub seq: u32,
    /// `UNKNOWN_REQUEST` if the kind is beyond this version's, else `MALFORMED`.
    pub code: ErrorCode,
}

/// Classifies a payload that [`decode_request`] refused, so that the stub can
/// still send its one reply.
pub fn classify_undecodable(payload: &[u8]) -> UndecodableRequest {
    let Some((seq, rest)) = read_varint_u32(payload) else {
        return UndecodableRequest {
            seq: UNATTRIBUTED_SEQ,
            code: ErrorCode::MALFORMED,
        };
    };
    let code = match read_varint_u32(rest) {
        Some((kind, _)) if kind >= REQUEST_KINDS => ErrorCode::UNKNOWN_REQUEST,
        _ => ErrorCode::MALFORMED,
    };
    UndecodableRequest { seq, code }
}

/// Reads one postcard varint (LEB128, at most 5 bytes for a u32).
fn read_varint_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let mut value: u32 = 0;
    for (position, byte) in bytes.iter().enumerate().take(5) {
        let chunk = u32::from(byte & 0x7f);
        if position == 4 && chunk > 0x0f {
            return None;
        }
        value |= chunk << (7 * position);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[position + 1..]));
        }
    }
    None
}

/// Decodes a request from a frame payload. Never panics.
///
/// Kept out of line: the decoder is compiled here, where kernel profiles
/// optimise it for size (it is cold: one call per request).
#[inline(never)]
pub fn decode_request(payload: &[u8]) -> Result<Request<'_>, postcard::Error> {
    postcard::from_bytes(payload)
}

/// Decodes a stub message from a frame payload. Never panics.
pub fn decode_stub_message(payload: &[u8]) -> Result<StubMessage<'_>, postcard::Error> {
    postcard::from_bytes(payload)
}

/// Serialises any message into `out`, returning the used prefix.
pub fn encode_into<'o, T: Serialize>(
    message: &T,
    out: &'o mut [u8],
) -> Result<&'o mut [u8], postcard::Error> {
    postcard::to_slice(message, out)
}

/// Serialises any message into a vector.
#[cfg(feature = "alloc")]
pub fn encode<T: Serialize>(message: &T) -> Result<alloc::vec::Vec<u8>, postcard::Error> {
    postcard::to_allocvec(message)
}
