//! The IDT, the trap entry stubs, the register frame and the Rust dispatcher.
//!
//! # Design
//!
//! All 256 vectors enter through one assembly path. Each vector has a 16-byte stub
//! that pushes a zero in place of an error code when the CPU does not push one, then
//! the vector number, and jumps to `trap_common`, which pushes every general-purpose
//! register and calls [`trap_dispatch`] with a pointer to the resulting [`TrapFrame`].
//! On return it pops the registers *from the frame*, so whatever the Rust side wrote
//! into the frame (RIP, RFLAGS, RSP, any register) is what `iretq` resumes with. This
//! is the hook the probe stub needs: a #BP (int3, vector 3) or #DB (vector 1) hands
//! the full frame to the registered [`TrapHook`], which may redirect execution.
//!
//! Every gate is an interrupt gate (interrupts stay off inside handlers) with DPL 0.
//! Vectors without a handler end in a fatal report: vector, error code, RIP (and CR2
//! for a page fault) on the console, then `VERDICT: FAIL`.
//!
//! ## Interrupt stacks: #DF, #BP and #DB never run on the interrupted stack
//!
//! The kernel runs in ring 0 only, so by default the CPU pushes the trap frame on the
//! stack in use when the trap hits: right below the interrupted RSP (after aligning
//! it down to 16 bytes). Three vectors use an interrupt-stack-table entry instead
//! (`gdt.rs`), a per-CPU stack the CPU switches to unconditionally:
//!
//! - **#DF, IST 1**: a double fault usually means the stack overflowed.
//! - **#BP, IST 2, and #DB, IST 3**: the probe stub executes the instruction its int3
//!   displaced *out of line*, and some instructions it emulates instead — a `call`
//!   is emulated by pushing the return address onto the interrupted stack, i.e.
//!   writing at `frame.rsp - 8` and lowering `frame.rsp`. Without an IST entry that
//!   word is where the CPU saved the trap frame itself (SS, RSP, ...), so the push
//!   would overwrite the very frame `iretq` resumes from. On the IST stack the frame
//!   lives elsewhere and the interrupted stack is free to be written below its RSP
//!   (the kernel is built without a red zone). The int3 self-test checks exactly
//!   this (`selftest.rs`). #DB gets its own stack so a debug exception raised while
//!   the #BP hook runs does not overwrite the #BP frame.
//!
//! The CPU starts an IST stack from the pointer in the TSS on every entry, so a #BP
//! taken while a #BP handler runs would overwrite the outer frame. That can happen:
//! the stub refuses to probe itself and the trap path, but a probe on something a
//! handler calls (a helper of the kernel) is legal, and is caught by the stub's
//! re-entry guard *after* the nested trap. So the #BP entry path (`trap_breakpoint`)
//! moves this CPU's IST 2 pointer down by `BREAKPOINT_NESTING_SHIFT` while its
//! handler runs and back up on exit: a nested #BP starts below everything the outer
//! one can use. The #BP stack has room for three levels; a fourth (a bug: only the
//! stub's own entry path could nest that deep, and it is never probed) is a fatal
//! report instead of a silent overwrite. The timer and the other interrupts stay on
//! the interrupted thread's own stack, which is what lets the scheduler switch
//! threads from inside the timer interrupt (`sched.rs`).
//!
//! ## Faults the kernel expects: the exception table
//!
//! The probe stub reads kernel memory at addresses a handler chose (a NULL pointer,
//! a wild one). Those reads go through one copy routine (`probe_platform.rs`) whose
//! possibly-faulting instructions are listed, with a fix-up address each, in an
//! exception table. A page fault (#PF) or general-protection fault (#GP, raised by
//! non-canonical addresses) whose RIP is in the table resumes at the fix-up, which
//! makes the routine return the faulting address: no report, no verdict. Any other
//! #PF or #GP is fatal as before.
//!
//! ## The probe stub's text
//!
//! Everything on the way from a trap to the stub (the entry stubs, `trap_common`,
//! `trap_breakpoint`, [`trap_dispatch`], the exception-table lookup, the hooks) lives
//! in `.text.traps` or `.text.probeport_forbidden`, which `kernel.ld` gathers into
//! the range the platform reports as forbidden: a breakpoint there would trap again
//! before the stub's re-entry guard could see it.
//!
//! # Invariants
//!
//! - The frame layout in [`TrapFrame`] matches the push order in `trap_common`
//!   (checked by a size assertion and by the int3 self-test, which reads and writes
//!   registers through it).
//! - `trap_common` keeps the stack 16-byte aligned at the `call` (the CPU aligns it
//!   before pushing its 40-byte frame; stub and registers add 136 bytes).
//! - Hooks run in probe context: no allocation, no lock, no printing, no scheduling.
//! - #BP and #DB frames live on their IST stacks, never on the interrupted stack.

use core::arch::global_asm;
use core::mem::size_of;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::console::println;
use crate::gdt::{
    BREAKPOINT_IST, DEBUG_IST, DOUBLE_FAULT_IST, DescriptorTablePointer, KERNEL_CODE_SELECTOR,
};
use crate::{apic, com2, percpu, sched, verdict};

/// Debug exception (single step, hardware breakpoints).
pub(crate) const DEBUG_VECTOR: u64 = 1;
/// Breakpoint (`int3`).
pub(crate) const BREAKPOINT_VECTOR: u64 = 3;
const DOUBLE_FAULT_VECTOR: u64 = 8;
const PAGE_FAULT_VECTOR: u64 = 14;
/// First vector of the legacy PICs after remapping; they stay masked, but a spurious
/// IRQ 7 or 15 can still arrive.
pub(crate) const PIC_VECTOR_BASE: u8 = 0x20;
/// Local APIC timer.
pub(crate) const TIMER_VECTOR: u8 = 0x40;
/// Inter-processor interrupt: a thread of the receiving CPU became ready.
pub(crate) const RESCHEDULE_VECTOR: u8 = 0x41;
/// Inter-processor interrupt: kernel text changed; execute a serialising
/// instruction and acknowledge (`probe_platform.rs`).
pub(crate) const SERIALIZE_VECTOR: u8 = 0x42;
const GENERAL_PROTECTION_VECTOR: u64 = 13;
/// COM2 (ISA IRQ 3) through the IOAPIC.
pub(crate) const COM2_VECTOR: u8 = 0x43;
/// Inter-processor interrupt: hold here while another CPU writes text
/// (`probe_platform.rs`, stopped writes).
pub(crate) const STOP_VECTOR: u8 = 0x44;
/// Local APIC spurious-interrupt vector.
pub(crate) const SPURIOUS_VECTOR: u8 = 0xff;

/// Size of one entry stub; stub `n` is at `trap_stubs + n * STUB_SIZE`.
const STUB_SIZE: usize = 16;

/// The registers of the interrupted code, as `trap_common` saved them. Writing a field
/// changes what the interrupted code resumes with.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct TrapFrame {
    pub(crate) r15: u64,
    pub(crate) r14: u64,
    pub(crate) r13: u64,
    pub(crate) r12: u64,
    pub(crate) r11: u64,
    pub(crate) r10: u64,
    pub(crate) r9: u64,
    pub(crate) r8: u64,
    pub(crate) rbp: u64,
    pub(crate) rdi: u64,
    pub(crate) rsi: u64,
    pub(crate) rdx: u64,
    pub(crate) rcx: u64,
    pub(crate) rbx: u64,
    pub(crate) rax: u64,
    /// Vector number pushed by the stub.
    pub(crate) vector: u64,
    /// Error code pushed by the CPU, or 0 for vectors without one.
    pub(crate) error_code: u64,
    // Pushed by the CPU.
    pub(crate) rip: u64,
    pub(crate) cs: u64,
    pub(crate) rflags: u64,
    pub(crate) rsp: u64,
    pub(crate) ss: u64,
}

const _: () = assert!(size_of::<TrapFrame>() == 22 * 8);

/// What a trap hook did with a trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrapDisposition {
    /// The hook handled the trap; resume with the (possibly modified) frame.
    Handled,
    /// Not the hook's trap (for example an int3 it did not plant): fatal.
    NotMine,
}

/// A function that handles #BP or #DB in probe context.
pub(crate) type TrapHook = fn(&mut TrapFrame) -> TrapDisposition;

/// A slot holding at most one hook, readable from any CPU without a lock.
struct HookSlot(AtomicUsize);

impl HookSlot {
    const fn empty() -> Self {
        Self(AtomicUsize::new(0))
    }

    fn set(&self, hook: Option<TrapHook>) {
        self.0
            .store(hook.map_or(0, |hook| hook as usize), Ordering::Release);
    }

    #[unsafe(link_section = ".text.probeport_forbidden")]
    fn get(&self) -> Option<TrapHook> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            // SAFETY: every non-zero value was stored by `set` from a `TrapHook`.
            address => Some(unsafe { core::mem::transmute::<usize, TrapHook>(address) }),
        }
    }
}

static BREAKPOINT_HOOK: HookSlot = HookSlot::empty();
static DEBUG_HOOK: HookSlot = HookSlot::empty();

/// Installs (or with `None` removes) the #BP hook; this is where the probe stub hooks in.
pub(crate) fn set_breakpoint_hook(hook: Option<TrapHook>) {
    BREAKPOINT_HOOK.set(hook);
}

/// Installs (or with `None` removes) the #DB hook.
pub(crate) fn set_debug_hook(hook: Option<TrapHook>) {
    DEBUG_HOOK.set(hook);
}

/// One IDT gate descriptor.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    interrupt_stack: u8,
    type_and_attributes: u8,
    offset_middle: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        interrupt_stack: 0,
        type_and_attributes: 0,
        offset_middle: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn interrupt_gate(handler: u64, interrupt_stack: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: KERNEL_CODE_SELECTOR,
            interrupt_stack,
            type_and_attributes: 0x8e, // present, DPL 0, 64-bit interrupt gate
            offset_middle: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

/// The IDT, shared by every CPU.
struct Idt(core::cell::UnsafeCell<[Gate; 256]>);

// SAFETY: the BSP fills the table once in `init`, before any other CPU runs or any
// interrupt is enabled; afterwards it is only read (by the CPUs, through IDTR).
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(core::cell::UnsafeCell::new([Gate::MISSING; 256]));

unsafe extern "C" {
    /// First entry stub (vector 0); see the module docs.
    static trap_stubs: u8;
}

/// Fills the IDT. Called once, by the BSP, before [`load`].
pub(crate) fn init() {
    let stubs = &raw const trap_stubs as u64;
    // SAFETY: runs once on the BSP before any CPU loads the IDT (see `Idt`).
    let gates = unsafe { &mut *IDT.0.get() };
    for (vector, gate) in gates.iter_mut().enumerate() {
        let interrupt_stack = match vector as u64 {
            DOUBLE_FAULT_VECTOR => DOUBLE_FAULT_IST,
            BREAKPOINT_VECTOR => BREAKPOINT_IST,
            DEBUG_VECTOR => DEBUG_IST,
            _ => 0,
        };
        *gate = Gate::interrupt_gate(stubs + (vector * STUB_SIZE) as u64, interrupt_stack);
    }
}

/// Loads the IDT on this CPU.
pub(crate) fn load() {
    let pointer = DescriptorTablePointer {
        limit: (size_of::<[Gate; 256]>() - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is a filled static (init ran on the BSP first) with valid stubs.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags))
    };
}

/// Called by `trap_common` (and `trap_breakpoint`) for every vector, with
/// interrupts off.
#[unsafe(link_section = ".text.probeport_forbidden")]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    match frame.vector {
        // A fault the kernel expects (a probe handler's read of a bad address):
        // resume at the routine's fix-up.
        PAGE_FAULT_VECTOR | GENERAL_PROTECTION_VECTOR => {
            match crate::probe_platform::exception_fixup(frame.rip) {
                Some(fixup) => frame.rip = fixup,
                None => fatal(frame, "unexpected trap"),
            }
        }
        BREAKPOINT_VECTOR => run_hook(&BREAKPOINT_HOOK, frame, "int3 with no hook that claims it"),
        DEBUG_VECTOR => run_hook(
            &DEBUG_HOOK,
            frame,
            "debug exception with no hook that claims it",
        ),
        // The interrupts acknowledge first: the scheduler may switch threads before
        // this handler returns, and an unacknowledged vector would block its CPU.
        // Each records where its thread resumes, for the stopped text writes.
        vector if vector == u64::from(TIMER_VECTOR) => {
            let thread = sched::interrupted(frame.rip);
            apic::on_timer_interrupt();
            crate::probe_platform::on_timer(frame);
            sched::on_tick();
            sched::interrupt_done(thread);
        }
        vector if vector == u64::from(SERIALIZE_VECTOR) => {
            crate::probe_platform::on_serialize_interrupt();
            apic::end_of_interrupt();
        }
        vector if vector == u64::from(STOP_VECTOR) => {
            let thread = sched::interrupted(frame.rip);
            apic::end_of_interrupt();
            crate::probe_platform::on_stop_interrupt();
            sched::interrupt_done(thread);
        }
        vector if vector == u64::from(RESCHEDULE_VECTOR) => {
            let thread = sched::interrupted(frame.rip);
            apic::end_of_interrupt();
            sched::preempt();
            sched::interrupt_done(thread);
        }
        // The relay was woken: let it run now rather than at the next tick.
        vector if vector == u64::from(COM2_VECTOR) => {
            let thread = sched::interrupted(frame.rip);
            com2::on_interrupt();
            apic::end_of_interrupt();
            sched::preempt();
            sched::interrupt_done(thread);
        }
        vector if vector == u64::from(SPURIOUS_VECTOR) => {}
        // Spurious IRQ 7 / 15 from the (masked) legacy PICs: no EOI, nothing to do.
        vector
            if vector == u64::from(PIC_VECTOR_BASE + 7)
                || vector == u64::from(PIC_VECTOR_BASE + 15) => {}
        _ => fatal(frame, "unexpected trap"),
    }
}

#[unsafe(link_section = ".text.probeport_forbidden")]
fn run_hook(slot: &HookSlot, frame: &mut TrapFrame, complaint: &str) {
    let disposition = slot
        .get()
        .map_or(TrapDisposition::NotMine, |hook| hook(frame));
    if disposition == TrapDisposition::NotMine {
        fatal(frame, complaint);
    }
}

/// Reports a trap nobody handles and ends the run with `VERDICT: FAIL`.
#[unsafe(link_section = ".text.probeport_forbidden")]
fn fatal(frame: &TrapFrame, what: &str) -> ! {
    let cpu = percpu::current_index_if_installed();
    let name = exception_name(frame.vector);
    let cpu_label = CpuLabel(cpu);
    crate::console::emergency_write(format_args!(
        "FATAL: {cpu_label}: {what}: vector {vector} ({name}), error code {error:#x}, rip {rip:#x}, \
         rsp {rsp:#x}, rflags {rflags:#x}\n",
        vector = frame.vector,
        error = frame.error_code,
        rip = frame.rip,
        rsp = frame.rsp,
        rflags = frame.rflags,
    ));
    if frame.vector == PAGE_FAULT_VECTOR {
        crate::console::emergency_write(format_args!(
            "FATAL: page fault address (cr2) {:#x}\n",
            crate::cpu::read_cr2()
        ));
    }
    verdict::fail(format_args!(
        "{cpu_label}: {what}: vector {} ({name}) at rip {:#x}, error code {:#x}",
        frame.vector, frame.rip, frame.error_code
    ))
}

/// A #BP arrived while this CPU's #BP handlers were already nested as deep as the
/// #BP stack allows (`trap_breakpoint`): report and fail rather than overwrite.
#[unsafe(link_section = ".text.probeport_forbidden")]
extern "C" fn breakpoints_nested_too_deep(frame: &mut TrapFrame) -> ! {
    fatal(frame, "breakpoints nested deeper than the #BP stack allows")
}

/// "cpu N" or "cpu ?" before per-CPU setup.
struct CpuLabel(Option<usize>);

impl core::fmt::Display for CpuLabel {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(index) => write!(formatter, "cpu {index}"),
            None => formatter.write_str("cpu ?"),
        }
    }
}

fn exception_name(vector: u64) -> &'static str {
    const NAMES: [&str; 32] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack fault",
        "#GP general protection",
        "#PF page fault",
        "reserved",
        "#MF x87 error",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD error",
        "#VE virtualization",
        "#CP control protection",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "reserved",
        "#HV hypervisor injection",
        "#VC VMM communication",
        "#SX security",
        "reserved",
    ];
    NAMES
        .get(vector as usize)
        .copied()
        .unwrap_or("external interrupt")
}

/// Prints the vectors the kernel handles (boot log).
pub(crate) fn describe() {
    println!(
        "traps: IDT with 256 gates; #BP/#DB hand a full frame to hooks on IST {BREAKPOINT_IST}/{DEBUG_IST}, \
         #DF on IST {DOUBLE_FAULT_IST}, timer vector {TIMER_VECTOR:#x}, reschedule IPI {RESCHEDULE_VECTOR:#x}, \
         COM2 {COM2_VECTOR:#x}"
    );
}

global_asm!(
    r#"
    .pushsection .text.traps, "ax"
    .balign {stub_size}
    .global trap_stubs
trap_stubs:
    .set trap_vector, 0
    .rept 256
    .balign {stub_size}
    /* The CPU pushes an error code for vectors 8, 10-14, 17, 21, 29 and 30. */
    .if (trap_vector == 8) || ((trap_vector >= 10) && (trap_vector <= 14)) || (trap_vector == 17) || (trap_vector == 21) || (trap_vector == 29) || (trap_vector == 30)
    .else
    pushq $0
    .endif
    pushq $trap_vector
    .if trap_vector == {breakpoint_vector}
    jmp trap_breakpoint
    .else
    jmp trap_common
    .endif
    .set trap_vector, trap_vector + 1
    .endr

    /* #BP: as trap_common, but the CPU's IST 2 pointer (in its TSS, reached through
       GS) moves down while the handler runs, so a nested #BP starts below. */
trap_breakpoint:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    movq %gs:{breakpoint_ist}, %rax
    subq ${nesting_shift}, %rax
    cmpq %gs:{breakpoint_floor}, %rax
    jb 1f
    movq %rax, %gs:{breakpoint_ist}
    movq %rsp, %rdi
    call {dispatch}
    addq ${nesting_shift}, %gs:{breakpoint_ist}
    jmp trap_return
1:
    movq %rsp, %rdi
    call {too_deep}

trap_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    movq %rsp, %rdi
    call {dispatch}
trap_return:
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp                  /* vector and error code */
    iretq
    .popsection
    "#,
    stub_size = const STUB_SIZE,
    dispatch = sym trap_dispatch,
    too_deep = sym breakpoints_nested_too_deep,
    breakpoint_vector = const BREAKPOINT_VECTOR,
    breakpoint_ist = const crate::percpu::BREAKPOINT_IST_OFFSET,
    breakpoint_floor = const crate::percpu::BREAKPOINT_FLOOR_OFFSET,
    nesting_shift = const crate::percpu::BREAKPOINT_NESTING_SHIFT,
    options(att_syntax),
);
