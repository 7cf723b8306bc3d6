//! The probe stub for GNU Mach: `kernel-stub` behind a small C ABI.
//!
//! # Design
//!
//! GNU Mach is written in C, so the stub reaches it through two sets of plain
//! functions, declared for C in `include/probeport_stub.h`:
//!
//! - **the stub's entry points** (`probeport_stub_*`, defined here): init, the
//!   breakpoint and timer hooks for probe context, and the session side (one
//!   request payload, a byte stream, a drain, the lease, the end of a session);
//! - **the platform** (`probeport_md_*`, defined by the kernel's C glue): CPUs,
//!   the current thread, the clock, fault-tolerant reads and writes, text
//!   patching through a writable alias, interrupt masking, the kernel's identity,
//!   the forbidden text and the drainer's wake-up. [`MachPlatform`] is the
//!   zero-sized `kernel_stub::Platform` that forwards each method to one of them.
//!
//! The one [`Stub`] lives in `.bss` of this archive. Messages cross the ABI as
//! postcard payloads (PROTOCOL.md §4) for Mach IPC, which delimits messages
//! itself (§2.2), or as framed bytes (§3) for a serial relay. Output goes through
//! a callback with an opaque cookie, so the C side decides whether a message is a
//! routine's reply or an event for the registered consumer.
//!
//! Static markers come from C: GNU Mach declares each one with
//! `PROBEPORT_MARKER_DEFINE` (a [`ProbeportMarker`] in section
//! `.data.probeport_markers`, gathered into one table by the linker script) and
//! fires it with `PROBEPORT_MARKER`, whose disabled cost is one load of the C
//! site's `enabled` byte and a branch not taken. `probeport_stub_init` builds a
//! `kernel_stub::MarkerSite` for each C site (same index, name, and the
//! arguments parsed from the site's `"name:type ..."` string), which is what
//! [`Platform::markers`] returns. The stub enables and disables those Rust
//! sites; every session-side entry point here copies their flags into the C
//! sites before it returns, and a firing C site reaches the stub through
//! `probeport_stub_marker`.
//!
//! The out-of-line area (64 KiB of `int3`) is defined here, in section
//! `.text.probeport_slots`. GNU Mach's linker script gathers the stub's
//! `.text.probeport` and the glue's trap path between `__probeport_forbidden_start`
//! and `__probeport_forbidden_end`, which the glue reports as the forbidden text
//! (the stub refuses its out-of-line area by itself).
//!
//! # Invariants
//!
//! - Every function here that probe context calls is in `.text.probeport`.
//! - Nothing allocates: the archive has no global allocator and links no
//!   `alloc` crate; a panic is a kernel panic (`probeport_md_panic`).
//! - `probeport_stub_init` runs once, before the breakpoint hook can reach the stub.
//! - Marker `i` of [`Platform::markers`] is C site `i` of the kernel's table; a
//!   C site's `enabled` byte is 1 only while its Rust site's flag is set (it may
//!   lag behind by one session call, and a marker firing while the stub has no
//!   live probe on it does nothing).
#![cfg_attr(target_os = "none", no_std)]

use core::cell::UnsafeCell;
use core::ffi::{CStr, c_char, c_int, c_uint, c_ulong, c_void};
use core::ops::Range;
use core::sync::atomic::{AtomicU8, Ordering};

use kernel_stub::arch::TrapRegisters;
use kernel_stub::interpreter::Fault;
use kernel_stub::{ArgType, MAX_MARKER_ARGS, MarkerSite, Platform, Stub, TextError, TrapOutcome};
use probe_port_protocol::message::{Arch, StubMessage, encode_into};

// The out-of-line area: 64 KiB, 2047 slots of 32 bytes plus the trampoline's.
kernel_stub::out_of_line_area!(probeport_slots, 64 * 1024);

/// The probe stub of the kernel, all zeros (`.bss`, about 4 MiB). It keeps the
/// default lease, so a consumer that stops talking loses its session even if its
/// port stays alive (`probeport_stub_poll`); the glue also ends the session as
/// soon as it sees the consumer's port die (`probeport_stub_end_session`).
static STUB: Stub<MachPlatform> = Stub::new(MachPlatform);

/// Registers at a breakpoint, as the C glue fills them from GNU Mach's
/// `struct i386_saved_state` (see `probeport_stub.h`). DWARF register order.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbeportTrapRegs {
    /// rax, rdx, rcx, rbx, rsi, rdi, rbp, rsp, r8 … r15.
    pub regs: [u64; 16],
    /// RIP as the CPU saved it (past the `int3`).
    pub pc: u64,
    /// RFLAGS.
    pub flags: u64,
}

/// Where the stub's output goes: `kind` is [`OUT_REPLY`] for the reply to the
/// request being handled, [`OUT_EVENT`] for anything else (events, loss
/// reports), [`OUT_BYTES`] for framed bytes of a byte stream.
pub type ProbeportOut =
    Option<unsafe extern "C" fn(cookie: *mut c_void, bytes: *const u8, length: usize, kind: c_int)>;

/// Output kind: the reply to the current request.
pub const OUT_REPLY: c_int = 0;
/// Output kind: an unsolicited message (event, loss report).
pub const OUT_EVENT: c_int = 1;
/// Output kind: framed bytes for a byte stream.
pub const OUT_BYTES: c_int = 2;

// ----------------------------------------------------------------------------
// The platform, as the C glue provides it.

unsafe extern "C" {
    fn probeport_md_cpu_count() -> c_uint;
    fn probeport_md_cpu_id() -> c_uint;
    fn probeport_md_task_id() -> u64;
    fn probeport_md_task_name(dst: *mut u8, size: usize) -> usize;
    fn probeport_md_now_ns() -> u64;
    fn probeport_md_read(dst: *mut u8, src: u64, length: usize, fault: *mut u64) -> c_int;
    fn probeport_md_write(dst: u64, src: *const u8, length: usize, fault: *mut u64) -> c_int;
    fn probeport_md_write_text(address: u64, bytes: *const u8, length: usize) -> c_int;
    fn probeport_md_intr_disable() -> c_ulong;
    fn probeport_md_intr_restore(state: c_ulong);
    fn probeport_md_kernel_name(length: *mut usize) -> *const u8;
    fn probeport_md_build_id(length: *mut usize) -> *const u8;
    fn probeport_md_forbidden_text(start: *mut u64, end: *mut u64);
    fn probeport_md_wake_server();
    fn probeport_md_markers(count: *mut usize) -> *mut ProbeportMarker;
    #[cfg(target_os = "none")]
    fn probeport_md_panic(message: *const u8, length: usize) -> !;
}

/// `probeport_md_write_text`: the address is not writable kernel text.
const TEXT_NOT_TEXT: c_int = -1;

/// A value written once by `probeport_stub_init`, before any CPU can read it.
struct InitOnce<T>(UnsafeCell<T>);

// SAFETY: written once by `probeport_stub_init` on the boot CPU before the stub is
// reachable from anywhere else (the C glue's contract), read-only afterwards.
unsafe impl<T: Sync> Sync for InitOnce<T> {}

static FORBIDDEN: InitOnce<[Range<u64>; 1]> =
    InitOnce(UnsafeCell::new([Range { start: 0, end: 0 }]));

/// A static marker as C declares it (`struct probeport_marker` of
/// `probeport_stub.h`).
#[repr(C)]
#[derive(Debug)]
pub struct ProbeportMarker {
    /// `subsystem:event`, NUL-terminated.
    pub name: *const c_char,
    /// The arguments, `"name:type name:type ..."` (types `u8` … `u64`, `i8` …
    /// `i64`, `bool`, `pointer`, `string`), NUL-terminated.
    pub args: *const c_char,
    /// 1 while a live probe uses the marker; the only thing a disabled marker reads.
    pub enabled: AtomicU8,
}

/// Markers the kernel may declare at most; further ones are left out of the table.
const MAX_MARKERS: usize = 64;

/// The Rust sites of the C markers and their argument lists, built by
/// `probeport_stub_init`.
struct Markers {
    /// The C table, as an address, and how many of its sites are in `sites`.
    table: usize,
    count: usize,
    sites: [MarkerSite; MAX_MARKERS],
}

static MARKER_ARGS: InitOnce<[[(&str, ArgType); MAX_MARKER_ARGS]; MAX_MARKERS]> = InitOnce(
    UnsafeCell::new([[("", ArgType::U64); MAX_MARKER_ARGS]; MAX_MARKERS]),
);

static MARKERS: InitOnce<Markers> = InitOnce(UnsafeCell::new(Markers {
    table: 0,
    count: 0,
    sites: [const { MarkerSite::new("", &[]) }; MAX_MARKERS],
}));

/// The markers' table, built once.
fn markers() -> &'static Markers {
    // SAFETY: written once in `probeport_stub_init`, before any reader.
    unsafe { &*MARKERS.0.get() }
}

/// The argument type a C marker names, `None` if unknown.
fn arg_type(name: &str) -> Option<ArgType> {
    Some(match name {
        "u8" => ArgType::U8,
        "u16" => ArgType::U16,
        "u32" => ArgType::U32,
        "u64" => ArgType::U64,
        "i8" => ArgType::I8,
        "i16" => ArgType::I16,
        "i32" => ArgType::I32,
        "i64" => ArgType::I64,
        "bool" => ArgType::Bool,
        "pointer" => ArgType::Pointer,
        "string" => ArgType::String,
        _ => return None,
    })
}

/// A static C string as `&'static str` (empty if null or not UTF-8).
///
/// # Safety
///
/// A non-null `pointer` is a NUL-terminated string that lives as long as the kernel.
unsafe fn static_str(pointer: *const c_char) -> &'static str {
    if pointer.is_null() {
        return "";
    }
    // SAFETY: the caller's contract.
    unsafe { CStr::from_ptr(pointer) }.to_str().unwrap_or("")
}

/// Builds the Rust sites of the kernel's C markers. An argument whose type is
/// unknown becomes `u64`; arguments past the eighth are left out.
///
/// # Safety
///
/// Once, before the stub can read the markers; the glue's table is static.
unsafe fn init_markers() {
    let mut count = 0usize;
    // SAFETY: the glue returns its static table and its length.
    let table = unsafe { probeport_md_markers(&mut count) };
    let count = if table.is_null() {
        0
    } else {
        count.min(MAX_MARKERS)
    };
    // SAFETY: the only writes to these statics, before any reader (the
    // function's contract).
    let (all_args, markers) = unsafe { (&mut *MARKER_ARGS.0.get(), &mut *MARKERS.0.get()) };
    for (index, args) in all_args.iter_mut().enumerate().take(count) {
        // SAFETY: `index` is below the table's length.
        let c_site = unsafe { &*table.add(index) };
        // SAFETY: the C sites' strings are static literals.
        let (name, signature) = unsafe { (static_str(c_site.name), static_str(c_site.args)) };
        let mut length = 0;
        for (slot, word) in args.iter_mut().zip(signature.split_ascii_whitespace()) {
            let (arg, ty) = word.split_once(':').unwrap_or((word, "u64"));
            *slot = (arg, arg_type(ty).unwrap_or(ArgType::U64));
            length += 1;
        }
        let args: &'static [(&'static str, ArgType)] = &args[..length];
        markers.sites[index] = MarkerSite::new(name, args);
    }
    markers.table = table as usize;
    markers.count = count;
}

/// Copies the stub's marker flags into the C sites. Session side, after every
/// call that may have started or stopped probes.
fn sync_markers() {
    let markers = markers();
    let table = markers.table as *const ProbeportMarker;
    for (index, site) in markers.sites[..markers.count].iter().enumerate() {
        // SAFETY: `index` is below the C table's length (`init_markers`).
        let c_site = unsafe { &*table.add(index) };
        let enabled = u8::from(site.enabled.load(Ordering::SeqCst));
        if c_site.enabled.load(Ordering::Relaxed) != enabled {
            c_site.enabled.store(enabled, Ordering::SeqCst);
        }
    }
}

/// GNU Mach's side of the stub: every method is one call into the C glue.
#[derive(Debug)]
pub struct MachPlatform;

/// A static byte string the C glue returns as pointer and length.
fn static_bytes(getter: unsafe extern "C" fn(*mut usize) -> *const u8) -> &'static [u8] {
    let mut length = 0usize;
    // SAFETY: the glue returns a pointer to static kernel data of `length` bytes
    // (or null), valid for the kernel's lifetime.
    unsafe {
        let pointer = getter(&mut length);
        if pointer.is_null() {
            &[]
        } else {
            core::slice::from_raw_parts(pointer, length)
        }
    }
}

impl Platform for MachPlatform {
    fn arch(&self) -> Arch {
        Arch::X86_64
    }

    fn kernel_name(&self) -> &str {
        core::str::from_utf8(static_bytes(probeport_md_kernel_name)).unwrap_or("GNU Mach")
    }

    fn build_id(&self) -> &[u8] {
        static_bytes(probeport_md_build_id)
    }

    fn cpu_count(&self) -> usize {
        // SAFETY: a plain query of the glue.
        unsafe { probeport_md_cpu_count() as usize }
    }

    #[unsafe(link_section = ".text.probeport")]
    fn cpu_id(&self) -> usize {
        // SAFETY: a plain query of the glue, safe in probe context.
        unsafe { probeport_md_cpu_id() as usize }
    }

    #[unsafe(link_section = ".text.probeport")]
    fn task_id(&self) -> u64 {
        // SAFETY: a plain query of the glue, safe in probe context.
        unsafe { probeport_md_task_id() }
    }

    fn task_name(&self, dst: &mut [u8]) -> usize {
        // SAFETY: the glue writes at most `dst.len()` bytes into `dst`.
        let length = unsafe { probeport_md_task_name(dst.as_mut_ptr(), dst.len()) };
        length.min(dst.len())
    }

    #[unsafe(link_section = ".text.probeport")]
    fn now_ns(&self) -> u64 {
        // SAFETY: a plain query of the glue, safe in probe context.
        unsafe { probeport_md_now_ns() }
    }

    #[unsafe(link_section = ".text.probeport")]
    fn read_kernel(&self, dst: &mut [u8], src: u64) -> Result<(), Fault> {
        let mut fault = src;
        // SAFETY: the glue writes at most `dst.len()` bytes into `dst`; it never
        // faults the kernel on `src` (GNU Mach's page tables are checked first and
        // the copy routine has its own recovery entries).
        let status = unsafe { probeport_md_read(dst.as_mut_ptr(), src, dst.len(), &mut fault) };
        if status == 0 {
            Ok(())
        } else {
            Err(Fault { address: fault })
        }
    }

    fn write_text(&self, address: u64, bytes: &[u8]) -> Result<(), TextError> {
        // SAFETY: the glue reads `bytes.len()` bytes from `bytes` and checks that
        // the destination is kernel text before writing it through an alias.
        match unsafe { probeport_md_write_text(address, bytes.as_ptr(), bytes.len()) } {
            0 => Ok(()),
            TEXT_NOT_TEXT => Err(TextError::NotText),
            _ => Err(TextError::Unsupported),
        }
    }

    #[unsafe(link_section = ".text.probeport")]
    fn write_kernel(&self, address: u64, bytes: &[u8]) -> Result<(), Fault> {
        let mut fault = address;
        // SAFETY: as for `read_kernel`, in the other direction.
        let status =
            unsafe { probeport_md_write(address, bytes.as_ptr(), bytes.len(), &mut fault) };
        if status == 0 {
            Ok(())
        } else {
            Err(Fault { address: fault })
        }
    }

    fn out_of_line_area(&self) -> Range<u64> {
        probeport_slots::range()
    }

    #[unsafe(link_section = ".text.probeport")]
    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R {
        // SAFETY: the glue saves the interrupt state and masks interrupts; the
        // state goes back unchanged below.
        let state = unsafe { probeport_md_intr_disable() };
        let result = f();
        // SAFETY: restores exactly what `probeport_md_intr_disable` returned.
        unsafe { probeport_md_intr_restore(state) };
        result
    }

    fn forbidden_text(&self) -> &[Range<u64>] {
        // SAFETY: written once in `probeport_stub_init`, before any reader.
        unsafe { &*FORBIDDEN.0.get() }
    }

    fn markers(&self) -> &'static [MarkerSite] {
        let markers = markers();
        &markers.sites[..markers.count]
    }

    #[unsafe(link_section = ".text.probeport")]
    fn wake_server(&self) {
        // SAFETY: the glue only sets a flag or wakes a thread without blocking.
        unsafe { probeport_md_wake_server() }
    }
}

// ----------------------------------------------------------------------------
// The stub's entry points, for C.

/// Initialises the stub: records the forbidden text. Call once, on the boot CPU,
/// before the breakpoint hook can reach the stub.
#[unsafe(no_mangle)]
pub extern "C" fn probeport_stub_init() {
    let (mut start, mut end) = (0u64, 0u64);
    // SAFETY: the glue writes the two values; this is the only write to
    // `FORBIDDEN`, before any CPU can read it (the function's contract).
    unsafe {
        probeport_md_forbidden_text(&mut start, &mut end);
        *FORBIDDEN.0.get() = [Range { start, end }];
        init_markers();
    }
}

/// An enabled C marker fired (`PROBEPORT_MARKER`): `args` holds its `count`
/// arguments. Interrupts masked, on a stack with room for the handler; a site
/// that is not in the table is ignored.
///
/// # Safety
///
/// `args` points to `count` readable values.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.probeport")]
pub unsafe extern "C" fn probeport_stub_marker(
    marker: *const ProbeportMarker,
    args: *const u64,
    count: usize,
) {
    let markers = markers();
    let offset = (marker as usize).wrapping_sub(markers.table);
    let size = size_of::<ProbeportMarker>();
    if !offset.is_multiple_of(size) {
        return;
    }
    let Some(site) = markers.sites[..markers.count].get(offset / size) else {
        return;
    };
    // SAFETY: the caller's contract; at most eight values are read.
    let args = unsafe { words(args, count.min(MAX_MARKER_ARGS)) };
    STUB.fire_marker(site, args);
}

/// The breakpoint trap's hook (`#BP` in kernel mode, interrupts off). Returns 1
/// when the stub handled the trap (`regs` now say where to resume), 0 when the
/// breakpoint is not the stub's.
///
/// # Safety
///
/// `regs` points to a valid, writable register block for the duration of the call.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.probeport")]
pub unsafe extern "C" fn probeport_stub_breakpoint(regs: *mut ProbeportTrapRegs) -> c_int {
    // SAFETY: the caller passes a valid, exclusive register block.
    let regs = unsafe { &mut *regs };
    let mut trap = TrapRegisters {
        regs: regs.regs,
        pc: regs.pc,
        flags: regs.flags,
    };
    match STUB.on_breakpoint(&mut trap) {
        TrapOutcome::Handled => {
            regs.regs = trap.regs;
            regs.pc = trap.pc;
            regs.flags = trap.flags;
            1
        }
        TrapOutcome::NotMine => 0,
    }
}

/// The timer interrupt's hook (every CPU, interrupts off): runs due timer probes.
///
/// # Safety
///
/// `regs` points to a valid register block for the duration of the call.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.probeport")]
pub unsafe extern "C" fn probeport_stub_timer(regs: *const ProbeportTrapRegs) {
    // SAFETY: the caller passes a valid register block.
    let regs = unsafe { &*regs };
    STUB.on_timer(&TrapRegisters {
        regs: regs.regs,
        pc: regs.pc,
        flags: regs.flags,
    });
}

/// Encodes `message` and hands it to `out`.
fn send(out: ProbeportOut, cookie: *mut c_void, message: &StubMessage<'_>) {
    // One payload at a time: the stub serialises the session, and a payload
    // may take 40 KiB, more than any stack the glue runs the session on (GNU
    // Mach's kernel stacks are one page; the glue's session stack is 64 KiB), so
    // the scratch buffer lives in `.bss` behind its own lock.
    static SCRATCH: spin::Mutex<[u8; kernel_stub::limits::MAX_MESSAGE]> =
        spin::Mutex::new([0; kernel_stub::limits::MAX_MESSAGE]);
    let Some(out) = out else { return };
    let kind = match message {
        StubMessage::Reply { .. } => OUT_REPLY,
        _ => OUT_EVENT,
    };
    let mut scratch = SCRATCH.lock();
    if let Ok(bytes) = encode_into(message, &mut scratch[..]) {
        // SAFETY: the callback's contract: it reads `length` bytes and does not
        // call back into the stub.
        unsafe { out(cookie, bytes.as_ptr(), bytes.len(), kind) };
    }
}

/// Handles one request payload (PROTOCOL.md §4, no framing) and sends its reply
/// (kind `OUT_REPLY`) and, before it, any events the request produced (kind
/// `OUT_EVENT`) through `out`. Session side: a thread that may block briefly.
///
/// # Safety
///
/// `payload` points to `length` readable bytes; `out` does not call back into the
/// stub.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn probeport_stub_handle(
    payload: *const u8,
    length: usize,
    out: ProbeportOut,
    cookie: *mut c_void,
) {
    // SAFETY: the caller's contract.
    let payload = unsafe { bytes(payload, length) };
    STUB.handle(payload, &mut |message| send(out, cookie, message));
    sync_markers();
}

/// Sends every pending event and loss report through `out` (kind `OUT_EVENT`).
///
/// # Safety
///
/// `out` does not call back into the stub.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn probeport_stub_drain(out: ProbeportOut, cookie: *mut c_void) {
    STUB.drain(&mut |message| send(out, cookie, message));
}

/// The port over a byte stream (a serial line): decodes the frames in `input`,
/// handles each request, and writes framed replies, events and loss reports
/// through `out` (kind `OUT_BYTES`).
///
/// # Safety
///
/// `input` points to `length` readable bytes; `out` does not call back into the
/// stub.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn probeport_stub_serve_bytes(
    input: *const u8,
    length: usize,
    out: ProbeportOut,
    cookie: *mut c_void,
) {
    // SAFETY: the caller's contract.
    let input = unsafe { bytes(input, length) };
    STUB.serve_bytes(input, &mut |frame| {
        if let Some(out) = out {
            // SAFETY: the callback's contract.
            unsafe { out(cookie, frame.as_ptr(), frame.len(), OUT_BYTES) };
        }
    });
    sync_markers();
}

/// Ends the session as `Goodbye` would: every probe disarmed, every text byte
/// restored. For the consumer's death. Nothing happens without a session.
#[unsafe(no_mangle)]
pub extern "C" fn probeport_stub_end_session() {
    STUB.end_session();
    sync_markers();
}

/// Ends the session if its lease expired at `now_ns` (the platform's clock);
/// returns 1 if it did.
#[unsafe(no_mangle)]
pub extern "C" fn probeport_stub_poll(now_ns: u64) -> c_int {
    let expired = STUB.poll(now_ns);
    sync_markers();
    c_int::from(expired)
}

/// Whether a session is open (1) or not (0).
#[unsafe(no_mangle)]
pub extern "C" fn probeport_stub_session_open() -> c_int {
    c_int::from(STUB.session_open())
}

/// `length` bytes at `pointer` (an empty slice for a null pointer).
///
/// # Safety
///
/// A non-null `pointer` points to `length` readable bytes that outlive the use.
unsafe fn bytes<'a>(pointer: *const u8, length: usize) -> &'a [u8] {
    if pointer.is_null() || length == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { core::slice::from_raw_parts(pointer, length) }
    }
}

/// `count` values at `pointer` (an empty slice for a null pointer).
///
/// # Safety
///
/// A non-null `pointer` points to `count` readable values that outlive the use.
unsafe fn words<'a>(pointer: *const u64, count: usize) -> &'a [u64] {
    if pointer.is_null() || count == 0 {
        &[]
    } else {
        // SAFETY: the caller's contract.
        unsafe { core::slice::from_raw_parts(pointer, count) }
    }
}

/// A panic in the stub is a kernel panic; the message is the panic's location.
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let message: &[u8] = match info.location() {
        Some(location) => location.file().as_bytes(),
        None => b"probeport stub",
    };
    // SAFETY: the glue reads `message.len()` bytes and never returns.
    unsafe { probeport_md_panic(message.as_ptr(), message.len()) }
}
