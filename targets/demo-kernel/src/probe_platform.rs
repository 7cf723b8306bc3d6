//! The probe stub embedded: the demo kernel's `kernel_stub::Platform`, the stub
//! itself, and the kernel mechanisms it needs (fault-tolerant copies, text patching
//! on every CPU, the trap and timer hooks).
//!
//! # Design
//!
//! [`STUB`] is the one `kernel_stub::Stub` of the kernel, in `.bss`. Its platform,
//! [`DemoPlatform`], is a zero-sized value whose methods map the stub's needs onto
//! the kernel:
//!
//! | stub asks for          | the kernel gives                                          |
//! |------------------------|-----------------------------------------------------------|
//! | arch, name, build-id   | x86_64, `demo-kernel <version>`, the `.note.gnu.build-id` descriptor (linker-script symbols) |
//! | CPUs, current CPU      | `sched::cpu_count()`, the per-CPU index read through GS   |
//! | task id and name       | the current thread's id (GS) and name (`sched.rs`)         |
//! | clock                  | `time::now_ns()` (TSC, calibrated against the PIT)        |
//! | fault-tolerant memory  | [`copy`]: one `global_asm!` routine whose faulting instructions are in an exception table (`traps.rs` resumes at their fix-up) |
//! | text patching          | a direct write (the identity-mapped text is writable), then every CPU serialises ([`write_text`]) |
//! | out-of-line slots      | `kernel_stub::out_of_line_area!` (256 KiB: 8191 slots)   |
//! | forbidden text         | `__probeport_forbidden_start..__probeport_forbidden_end` (`kernel.ld`) |
//! | markers                | `__start_probeport_markers..__stop_probeport_markers`     |
//! | stack traces           | the RBP chain (the kernel is built with frame pointers)   |
//! | wake the server        | a flag the relay checks every tick                         |
//!
//! **Fault-tolerant copies.** [`copy`] calls `probeport_copy`, which copies eight
//! bytes at a time, then bytes. A fault on a word access resumes in the byte loop
//! (so the faulting address reported is exact); a fault on a byte read or write
//! returns with the address in `rsi` or `rdi`. Page 0 is not mapped (`boot.rs`),
//! addresses above 4 GiB are not mapped, non-canonical ones raise #GP: all become a
//! `Fault`, never a crash. The uncached fourth GiB (device registers, where a read
//! can have effects) is refused without touching it.
//!
//! **Text patching.** Kernel text is identity-mapped with writable pages (CR0.WP
//! is clear too), so [`write_text`] writes the bytes in place; no alias is needed.
//! Then it makes every CPU serialise: it bumps a generation, sends the other CPUs
//! the serialise IPI (`traps.rs`), executes `cpuid` itself, and waits until every
//! other CPU has acknowledged the generation from its handler, which runs `cpuid`
//! first. Only then does it return, so the stub's "int3 first, serialise, then the
//! rest" protocol holds on real hardware. (Under QEMU's multi-threaded TCG, code
//! modified while another vCPU runs it is not reliably seen: tests that patch text
//! under load run `-accel tcg,thread=single`.)
//!
//! **Sections.** The platform methods that run in probe context, the copy routine,
//! the trap hooks and the exception-table lookup are in
//! `.text.probeport_forbidden`; `kernel.ld` puts that section, the trap entry code
//! (`.text.traps`), the stub's own `.text.probeport` and compiler_builtins' memory
//! routines into one range, [`DemoPlatform::forbidden_text`]. One helper is left out
//! on purpose: the thread-name copy behind `task_name` (`sched::copy_current_name`)
//! runs only inside handlers, after the stub's re-entry guard, so a probe on it is
//! legal and shows up as a re-entered hit (the nested-#BP test relies on it).
//!
//! # Invariants
//!
//! - Nothing here that probe context calls takes a lock, allocates or prints.
//! - [`init`] runs once on the BSP before any CPU can reach the stub.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kernel_stub::arch::TrapRegisters;
use kernel_stub::interpreter::Fault;
use kernel_stub::{MarkerSite, Platform, Stub, TextError, TrapOutcome};
use probe_port_protocol::message::Arch;

use crate::traps::{self, SERIALIZE_VECTOR, STOP_VECTOR, TrapDisposition, TrapFrame};
use crate::{apic, percpu, sched, time};

/// The probe stub.
pub(crate) static STUB: Stub<DemoPlatform> = Stub::new(DemoPlatform);

kernel_stub::out_of_line_area!(probe_slots, 256 * 1024);
kernel_stub::out_of_line_area!(compiled_handlers, 256 * 1024);

/// The kernel's name and version, for the handshake.
const KERNEL_NAME: &str = concat!("demo-kernel ", env!("CARGO_PKG_VERSION"));

/// Device memory (the uncached fourth GiB): `read_kernel` refuses it.
const DEVICE_MEMORY: Range<u64> = 0xc000_0000..0x1_0000_0000;

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __probeport_forbidden_start: u8;
    static __probeport_forbidden_end: u8;
    static __build_id_note_start: u8;
    static __build_id_note_end: u8;
    static __start_probeport_markers: u8;
    static __stop_probeport_markers: u8;
    static probeport_extable_start: u64;
    static probeport_extable_end: u64;
    /// The fault-tolerant copy routine (see the module docs and the assembly below).
    fn probeport_copy();
}

/// The demo kernel's side of the stub (zero-sized; everything is in statics).
#[derive(Debug)]
pub(crate) struct DemoPlatform;

/// A value written once by [`init`], before any CPU can read it, then only read.
struct InitOnce<T>(UnsafeCell<T>);

// SAFETY: written once by the BSP in `init`, before the stub (the only reader) is
// reachable from any CPU; read-only afterwards.
unsafe impl<T: Sync> Sync for InitOnce<T> {}

static FORBIDDEN: InitOnce<[Range<u64>; 1]> =
    InitOnce(UnsafeCell::new([Range { start: 0, end: 0 }]));
static BUILD_ID: InitOnce<&'static [u8]> = InitOnce(UnsafeCell::new(&[]));

/// Set from probe context when the event rings fill up; the relay drains soon.
static WAKE_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Bumped by every text write; each CPU acknowledges it from the serialise IPI.
static TEXT_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Stopped text writes: the generation of the latest stop, the generation up to
/// which held CPUs are released, and per CPU the generation it is held for.
static STOP_GENERATION: AtomicU64 = AtomicU64::new(0);
static RELEASED_GENERATION: AtomicU64 = AtomicU64::new(0);
static HELD: [AtomicU64; percpu::MAX_CPUS] = [const { AtomicU64::new(0) }; percpu::MAX_CPUS];
/// How long a stopped write waits for the other CPUs to be held.
const STOP_TIMEOUT_NS: u64 = 50_000_000;

/// An int3 the benchmark plants to measure a bare trap round trip: the #BP hook
/// resumes after it without asking the stub (0: none).
pub(crate) static BENCH_INT3: AtomicU64 = AtomicU64::new(0);

fn symbol_address(symbol: *const u8) -> u64 {
    symbol as u64
}

/// Reads the GNU build-id note the linker placed between the `__build_id_note_*`
/// symbols: `namesz`, `descsz`, `type` (3), the name `GNU\0`, then the descriptor.
fn read_build_id() -> &'static [u8] {
    let start = symbol_address(&raw const __build_id_note_start);
    let end = symbol_address(&raw const __build_id_note_end);
    let length = end.saturating_sub(start) as usize;
    if length < 16 {
        return &[];
    }
    // SAFETY: the linker script keeps the note between the two symbols, in a
    // loaded, read-only segment that lives as long as the kernel.
    let note = unsafe { core::slice::from_raw_parts(start as *const u8, length) };
    let word = |offset: usize| {
        u32::from_le_bytes([
            note[offset],
            note[offset + 1],
            note[offset + 2],
            note[offset + 3],
        ]) as usize
    };
    let (name_size, descriptor_size, kind) = (word(0), word(4), word(8));
    let descriptor = 12 + name_size.next_multiple_of(4);
    if kind != 3 || note.get(12..12 + name_size) != Some(b"GNU\0".as_slice()) {
        return &[];
    }
    note.get(descriptor..descriptor + descriptor_size)
        .unwrap_or(&[])
}

/// Records what the platform reads from the linker, registers the stub as the
/// markers' sink and installs the #BP hook. Called once, on the BSP, after the
/// trap self-tests and before the other CPUs start.
pub(crate) fn init() {
    // SAFETY: the only write to these cells, before any CPU can reach the stub.
    unsafe {
        *FORBIDDEN.0.get() = [Range {
            start: symbol_address(&raw const __probeport_forbidden_start),
            end: symbol_address(&raw const __probeport_forbidden_end),
        }];
        *BUILD_ID.0.get() = read_build_id();
    }
    kernel_stub::set_marker_sink(&STUB);
    traps::set_breakpoint_hook(Some(breakpoint_trap));
}

/// The kernel text, out-of-line area included.
pub(crate) fn text_range() -> Range<u64> {
    symbol_address(&raw const __text_start)..symbol_address(&raw const __text_end)
}

/// The forbidden text (see the module docs).
pub(crate) fn forbidden_range() -> Range<u64> {
    // SAFETY: written once in `init`, before this can run, and never again.
    unsafe { (*FORBIDDEN.0.get())[0].clone() }
}

/// Whether probe context asked for a drain since the last call.
pub(crate) fn take_wake_request() -> bool {
    WAKE_REQUESTED.swap(false, Ordering::AcqRel)
}

// ----------------------------------------------------------------------------
// Traps.

fn registers(frame: &TrapFrame) -> TrapRegisters {
    TrapRegisters {
        regs: [
            frame.rax, frame.rdx, frame.rcx, frame.rbx, frame.rsi, frame.rdi, frame.rbp, frame.rsp,
            frame.r8, frame.r9, frame.r10, frame.r11, frame.r12, frame.r13, frame.r14, frame.r15,
        ],
        pc: frame.rip,
        flags: frame.rflags,
    }
}

/// The #BP hook: the benchmark's bare int3, else the stub.
#[unsafe(link_section = ".text.probeport_forbidden")]
fn breakpoint_trap(frame: &mut TrapFrame) -> TrapDisposition {
    if frame.rip.wrapping_sub(1) == BENCH_INT3.load(Ordering::Relaxed) {
        return TrapDisposition::Handled;
    }
    let mut regs = registers(frame);
    if STUB.on_breakpoint(&mut regs) == TrapOutcome::NotMine {
        return TrapDisposition::NotMine;
    }
    let [
        rax,
        rdx,
        rcx,
        rbx,
        rsi,
        rdi,
        rbp,
        rsp,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
    ] = regs.regs;
    (frame.rax, frame.rdx, frame.rcx, frame.rbx) = (rax, rdx, rcx, rbx);
    (frame.rsi, frame.rdi, frame.rbp, frame.rsp) = (rsi, rdi, rbp, rsp);
    (frame.r8, frame.r9, frame.r10, frame.r11) = (r8, r9, r10, r11);
    (frame.r12, frame.r13, frame.r14, frame.r15) = (r12, r13, r14, r15);
    frame.rip = regs.pc;
    frame.rflags = regs.flags;
    TrapDisposition::Handled
}

/// The timer interrupt's hook (every CPU, every tick, interrupts off).
#[unsafe(link_section = ".text.probeport_forbidden")]
pub(crate) fn on_timer(frame: &TrapFrame) {
    STUB.on_timer(&registers(frame));
}

/// The fix-up address for a fault at `rip`, if `rip` is a listed instruction of the
/// copy routine.
#[unsafe(link_section = ".text.probeport_forbidden")]
pub(crate) fn exception_fixup(rip: u64) -> Option<u64> {
    let start = &raw const probeport_extable_start;
    let end = &raw const probeport_extable_end;
    let words = (end as usize - start as usize) / 8;
    // SAFETY: the assembly below lays out the table between the two labels as
    // pairs of addresses, in read-only data that lives as long as the kernel.
    let table = unsafe { core::slice::from_raw_parts(start, words) };
    table
        .chunks_exact(2)
        .find(|entry| entry[0] == rip)
        .map(|entry| entry[1])
}

// ----------------------------------------------------------------------------
// Fault-tolerant copies.

/// Where a [`copy`] faulted.
#[derive(Clone, Copy, Debug)]
enum CopyFault {
    Read(u64),
    Write(u64),
}

/// Copies `length` bytes from `source` to `destination`; a fault on either side
/// stops the copy and names the first byte that faulted.
#[unsafe(link_section = ".text.probeport_forbidden")]
fn copy(destination: u64, source: u64, length: usize) -> Result<(), CopyFault> {
    let status: u64;
    let mut destination = destination;
    let mut source = source;
    let mut remaining = length as u64;
    // SAFETY: `probeport_copy` only touches the two ranges, and every access that
    // can fault is in the exception table, so a bad address returns a status
    // instead of crashing. It clobbers rax and rcx and moves rdi, rsi and rdx,
    // which are declared; it uses no stack but its return address.
    unsafe {
        asm!(
            "call {copy}",
            copy = sym probeport_copy,
            inout("rdi") destination,
            inout("rsi") source,
            inout("rdx") remaining,
            out("rax") status,
            out("rcx") _,
        );
    }
    let _ = remaining;
    match status {
        0 => Ok(()),
        1 => Err(CopyFault::Read(source)),
        _ => Err(CopyFault::Write(destination)),
    }
}

global_asm!(
    r#"
    .pushsection .text.probeport_forbidden.copy, "ax"
    .balign 16
    /* rdi = destination, rsi = source, rdx = length.
       Returns rax = 0 (copied), 1 (read fault at rsi), 2 (write fault at rdi). */
    .global probeport_copy
    .type probeport_copy, @function
probeport_copy:
    xorl %eax, %eax
probeport_copy_words:
    cmpq $8, %rdx
    jb probeport_copy_bytes
probeport_copy_read_word:
    movq (%rsi), %rcx
probeport_copy_write_word:
    movq %rcx, (%rdi)
    addq $8, %rsi
    addq $8, %rdi
    subq $8, %rdx
    jmp probeport_copy_words
probeport_copy_bytes:
    testq %rdx, %rdx
    jz probeport_copy_done
probeport_copy_read_byte:
    movb (%rsi), %cl
probeport_copy_write_byte:
    movb %cl, (%rdi)
    incq %rsi
    incq %rdi
    decq %rdx
    jnz probeport_copy_read_byte
probeport_copy_done:
    ret
probeport_copy_read_fault:
    movl $1, %eax
    ret
probeport_copy_write_fault:
    movl $2, %eax
    ret
    .size probeport_copy, . - probeport_copy
    .popsection

    /* The exception table: faulting instruction, where to resume. A word that
       faults is retried byte by byte, which finds the exact faulting byte. */
    .pushsection .rodata.probeport_extable, "a"
    .balign 8
    .global probeport_extable_start
probeport_extable_start:
    .quad probeport_copy_read_word, probeport_copy_bytes
    .quad probeport_copy_write_word, probeport_copy_bytes
    .quad probeport_copy_read_byte, probeport_copy_read_fault
    .quad probeport_copy_write_byte, probeport_copy_write_fault
    .global probeport_extable_end
probeport_extable_end:
    .popsection
    "#,
    options(att_syntax),
);

// ----------------------------------------------------------------------------
// Text patching.

/// Executes `cpuid`, a serialising instruction: instructions fetched after it see
/// every store made before it.
#[inline(always)]
fn serialize() {
    // SAFETY: `cpuid` leaf 0 only reads identification registers. rbx is
    // reserved by LLVM, so it is saved around the instruction.
    unsafe {
        asm!(
            "mov {saved}, rbx",
            "cpuid",
            "mov rbx, {saved}",
            saved = out(reg) _,
            inout("eax") 0 => _,
            out("ecx") _,
            out("edx") _,
            options(nostack, preserves_flags)
        )
    };
}

/// The serialise IPI (interrupt context): serialise, then acknowledge the newest
/// text generation.
pub(crate) fn on_serialize_interrupt() {
    serialize();
    percpu::current()
        .serialized_generation
        .store(TEXT_GENERATION.load(Ordering::SeqCst), Ordering::SeqCst);
}

/// Makes every CPU execute a serialising instruction after the text writes made
/// before the call, and returns once all have.
fn serialize_every_cpu() {
    let generation = TEXT_GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    let me = percpu::current().index();
    let cpus = sched::cpu_count().max(1);
    for cpu in (0..cpus).filter(|&cpu| cpu != me) {
        apic::send_fixed_ipi(
            percpu::slot(cpu).apic_id.load(Ordering::Relaxed),
            SERIALIZE_VECTOR,
        );
    }
    serialize();
    for cpu in (0..cpus).filter(|&cpu| cpu != me) {
        let acknowledged = &percpu::slot(cpu).serialized_generation;
        while acknowledged.load(Ordering::SeqCst) < generation {
            core::hint::spin_loop();
        }
    }
}

/// The stop IPI: says this CPU is held, waits (interrupts off) until the writer
/// releases it, then serialises. A CPU arriving after its stop was given up is
/// released at once. Forbidden text: a held CPU spins here while text changes.
#[unsafe(link_section = ".text.probeport_forbidden")]
pub(crate) fn on_stop_interrupt() {
    let generation = STOP_GENERATION.load(Ordering::SeqCst);
    HELD[percpu::current().index()].store(generation, Ordering::SeqCst);
    while RELEASED_GENERATION.load(Ordering::SeqCst) < generation {
        core::hint::spin_loop();
    }
    serialize();
}

/// `Platform::write_text_stopped`: holds every other CPU in the stop IPI, checks
/// that no thread resumes inside `avoid` (the scheduler's records of interrupts in
/// progress, the held CPUs' own included), writes, releases. Forbidden text, as
/// everything running while the other CPUs are held.
#[unsafe(link_section = ".text.probeport_forbidden")]
fn write_text_stopped(avoid: &[Range<u64>], writes: &[(u64, &[u8])]) -> Result<bool, TextError> {
    let text = text_range();
    for (address, bytes) in writes {
        let end = address
            .checked_add(bytes.len() as u64)
            .ok_or(TextError::NotText)?;
        if *address < text.start || end > text.end {
            return Err(TextError::NotText);
        }
    }
    if writes.is_empty() {
        return Ok(true);
    }
    Ok(DemoPlatform.without_interrupts(|| {
        let generation = STOP_GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
        let me = percpu::current().index();
        let cpus = sched::cpu_count().max(1);
        for cpu in (0..cpus).filter(|&cpu| cpu != me) {
            apic::send_fixed_ipi(
                percpu::slot(cpu).apic_id.load(Ordering::Relaxed),
                STOP_VECTOR,
            );
        }
        let deadline = time::now_ns() + STOP_TIMEOUT_NS;
        let held = |cpu: usize| HELD[cpu].load(Ordering::SeqCst) >= generation;
        while !(0..cpus).filter(|&cpu| cpu != me).all(held) && time::now_ns() < deadline {
            core::hint::spin_loop();
        }
        let all_held = (0..cpus).filter(|&cpu| cpu != me).all(held);
        let write = all_held && !sched::any_resumes_in(avoid);
        if write {
            for (address, bytes) in writes {
                for (offset, byte) in bytes.iter().enumerate() {
                    // SAFETY: inside the kernel's text (checked above), which is
                    // identity-mapped writable; every other CPU is held in the stop
                    // IPI and no thread resumes inside `avoid`.
                    unsafe { ((address + offset as u64) as *mut u8).write_volatile(*byte) };
                }
            }
        }
        RELEASED_GENERATION.fetch_max(generation, Ordering::SeqCst);
        serialize();
        write
    }))
}

/// Writes kernel text in place and returns once every CPU serialised.
fn write_text(address: u64, bytes: &[u8]) -> Result<(), TextError> {
    let text = text_range();
    let end = address
        .checked_add(bytes.len() as u64)
        .ok_or(TextError::NotText)?;
    if address < text.start || end > text.end {
        return Err(TextError::NotText);
    }
    for (offset, byte) in bytes.iter().enumerate() {
        // SAFETY: the byte is inside the kernel's text (checked above), which is
        // identity-mapped writable; the stub writes live instructions one byte at a
        // time, which every CPU sees atomically.
        unsafe { ((address + offset as u64) as *mut u8).write_volatile(*byte) };
    }
    serialize_every_cpu();
    Ok(())
}

// ----------------------------------------------------------------------------
// The platform.

impl Platform for DemoPlatform {
    fn arch(&self) -> Arch {
        Arch::X86_64
    }

    fn kernel_name(&self) -> &str {
        KERNEL_NAME
    }

    fn build_id(&self) -> &[u8] {
        // SAFETY: written once in `init`, before the stub runs.
        unsafe { *BUILD_ID.0.get() }
    }

    fn cpu_count(&self) -> usize {
        sched::cpu_count()
    }

    #[unsafe(link_section = ".text.probeport_forbidden")]
    fn cpu_id(&self) -> usize {
        percpu::fast_index()
    }

    #[unsafe(link_section = ".text.probeport_forbidden")]
    fn task_id(&self) -> u64 {
        u64::from(percpu::fast_thread_id())
    }

    // Deliberately not in the forbidden section: see the module docs.
    fn task_name(&self, dst: &mut [u8]) -> usize {
        sched::copy_current_name(dst)
    }

    #[unsafe(link_section = ".text.probeport_forbidden")]
    fn now_ns(&self) -> u64 {
        time::now_ns()
    }

    #[unsafe(link_section = ".text.probeport_forbidden")]
    fn read_kernel(&self, dst: &mut [u8], src: u64) -> Result<(), Fault> {
        let end = src.saturating_add(dst.len() as u64);
        let readable = if src < DEVICE_MEMORY.end && end > DEVICE_MEMORY.start {
            DEVICE_MEMORY.start.saturating_sub(src) as usize
        } else {
            dst.len()
        };
        let (head, _) = dst.split_at_mut(readable.min(dst.len()));
        match copy(head.as_mut_ptr() as u64, src, head.len()) {
            Ok(()) if readable >= dst.len() => Ok(()),
            Ok(()) => Err(Fault {
                address: src.max(DEVICE_MEMORY.start),
            }),
            Err(CopyFault::Read(address) | CopyFault::Write(address)) => Err(Fault { address }),
        }
    }

    fn write_text(&self, address: u64, bytes: &[u8]) -> Result<(), TextError> {
        write_text(address, bytes)
    }

    fn write_text_stopped(
        &self,
        avoid: &[Range<u64>],
        writes: &[(u64, &[u8])],
    ) -> Result<bool, TextError> {
        write_text_stopped(avoid, writes)
    }

    #[unsafe(link_section = ".text.probeport_forbidden")]
    fn write_kernel(&self, address: u64, bytes: &[u8]) -> Result<(), Fault> {
        let end = address.saturating_add(bytes.len() as u64);
        if address < DEVICE_MEMORY.end && end > DEVICE_MEMORY.start {
            return Err(Fault {
                address: address.max(DEVICE_MEMORY.start),
            });
        }
        match copy(address, bytes.as_ptr() as u64, bytes.len()) {
            Ok(()) => Ok(()),
            Err(CopyFault::Read(address) | CopyFault::Write(address)) => Err(Fault { address }),
        }
    }

    fn out_of_line_area(&self) -> Range<u64> {
        probe_slots::range()
    }

    fn compiled_code_area(&self) -> Range<u64> {
        compiled_handlers::range()
    }

    // Every handler runs compiled: the kernel links no interpreter.
    const INTERPRETER: bool = false;

    #[unsafe(link_section = ".text.probeport_forbidden")]
    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R {
        let flags: u64;
        // SAFETY: reads RFLAGS through the stack and clears IF; balanced stack use.
        unsafe { asm!("pushfq", "pop {}", "cli", out(reg) flags, options(nomem)) };
        let result = f();
        if flags & (1 << 9) != 0 {
            // SAFETY: interrupts were on when we came in: turn them back on.
            unsafe { asm!("sti", options(nomem, nostack)) };
        }
        result
    }

    fn forbidden_text(&self) -> &[Range<u64>] {
        // SAFETY: written once in `init`, before the stub runs.
        unsafe { &*FORBIDDEN.0.get() }
    }

    fn markers(&self) -> &'static [MarkerSite] {
        let start = (&raw const __start_probeport_markers).cast::<MarkerSite>();
        let stop = (&raw const __stop_probeport_markers).cast::<MarkerSite>();
        let count = (stop as usize - start as usize) / size_of::<MarkerSite>();
        // SAFETY: the linker script lays the section out as `count` consecutive
        // sites (each a `static` of `kernel_stub::marker!`), which live as long as
        // the kernel.
        unsafe { core::slice::from_raw_parts(start, count) }
    }

    #[unsafe(link_section = ".text.probeport_forbidden")]
    fn stack_trace(&self, frame_pointer: u64, dst: &mut [u64]) -> usize {
        let mut frame = frame_pointer;
        let mut count = 0;
        while count < dst.len() && frame != 0 && frame.is_multiple_of(8) {
            let mut words = [0u8; 16];
            if self.read_kernel(&mut words, frame).is_err() {
                break;
            }
            let (saved, rest) = words.split_at(8);
            let word = |bytes: &[u8]| bytes.try_into().map_or(0, u64::from_le_bytes);
            let (next, return_address) = (word(saved), word(rest));
            if return_address == 0 {
                break;
            }
            dst[count] = return_address;
            count += 1;
            // Frames go up the stack; anything else ends the walk.
            if next <= frame {
                break;
            }
            frame = next;
        }
        count
    }

    #[unsafe(link_section = ".text.probeport_forbidden")]
    fn wake_server(&self) {
        WAKE_REQUESTED.store(true, Ordering::Release);
    }
}
