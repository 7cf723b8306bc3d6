//! Trap round trips: an `int3` and a single step that the kernel survives.
//!
//! # Design
//!
//! These exercise exactly the path the probe stub will use. The int3 test plants
//! `int3; ud2` and a marker in `rax`; its hook checks the marker, records the RIP it
//! saw in `rdx`, rewrites `rax`, and moves RIP past the `ud2`. Like the stub emulating
//! a `call`, it also writes a word just below the interrupted stack pointer, which the
//! interrupted code reads back. Surviving proves the frame reaches Rust, register
//! writes reach the interrupted code, RIP can be redirected, and the frame does not
//! live on the interrupted stack (it must be on the #BP IST stack, which the test
//! checks too: see `traps.rs`). The single-step test sets RFLAGS.TF with `popfq`; the #DB after the
//! next instruction reaches its hook, which clears TF in the saved RFLAGS and rewrites
//! `rcx`.
//!
//! # Invariants
//!
//! - The hooks claim only traps carrying their marker and are removed afterwards, so
//!   a stray int3 or #DB still ends in a fatal report.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::traps::{self, TrapDisposition, TrapFrame};
use crate::{cpu, percpu};

const INT3_MARKER_IN: u64 = 0x1b7e_0000_0000_0003;
const INT3_MARKER_OUT: u64 = 0x1b7e_0000_0000_0333;
/// Written by the #BP hook just below the interrupted stack pointer.
const PUSHED_MARKER: u64 = 0x1b7e_0000_0000_0cc0;
const STEP_MARKER_IN: u64 = 0x1b7e_0000_0000_0001;
const STEP_MARKER_OUT: u64 = 0x1b7e_0000_0000_0111;
const RFLAGS_TRAP: u64 = 1 << 8;
const UD2_LENGTH: u64 = 2;

static BREAKPOINTS_SEEN: AtomicU64 = AtomicU64::new(0);
static BREAKPOINT_FRAME: AtomicU64 = AtomicU64::new(0);
static SINGLE_STEPS_SEEN: AtomicU64 = AtomicU64::new(0);
static LAST_DR6: AtomicU64 = AtomicU64::new(0);

fn breakpoint_hook(frame: &mut TrapFrame) -> TrapDisposition {
    if frame.rax != INT3_MARKER_IN {
        return TrapDisposition::NotMine;
    }
    BREAKPOINTS_SEEN.fetch_add(1, Ordering::Relaxed);
    BREAKPOINT_FRAME.store(frame as *const TrapFrame as u64, Ordering::Relaxed);
    // SAFETY: the word below the interrupted RSP is free (the kernel has no red zone,
    // and the interrupted asm reads it right after the trap); the frame itself is on
    // the IST stack, so this write cannot reach it.
    unsafe { ((frame.rsp - 8) as *mut u64).write(PUSHED_MARKER) };
    frame.rdx = frame.rip;
    frame.rax = INT3_MARKER_OUT;
    frame.rip += UD2_LENGTH;
    TrapDisposition::Handled
}

fn debug_hook(frame: &mut TrapFrame) -> TrapDisposition {
    let dr6 = cpu::take_dr6();
    if frame.rcx != STEP_MARKER_IN || frame.rflags & RFLAGS_TRAP == 0 {
        return TrapDisposition::NotMine;
    }
    LAST_DR6.store(dr6, Ordering::Relaxed);
    SINGLE_STEPS_SEEN.fetch_add(1, Ordering::Relaxed);
    frame.rflags &= !RFLAGS_TRAP;
    frame.rcx = STEP_MARKER_OUT;
    TrapDisposition::Handled
}

/// What the int3 round trip observed.
#[derive(Debug)]
pub(crate) struct Int3Report {
    /// Address of the int3 instruction.
    pub(crate) address: u64,
    /// Address of the trap frame the hook saw (on the #BP IST stack).
    pub(crate) frame: u64,
}

/// Executes `int3` with the test hook installed. `Err` says what went wrong.
pub(crate) fn int3_round_trip() -> Result<Int3Report, &'static str> {
    traps::set_breakpoint_hook(Some(breakpoint_hook));
    let rax_after: u64;
    let rip_seen: u64;
    let rip_expected: u64;
    let pushed: u64;
    // SAFETY: the hook installed above claims this int3 (marker in rax), writes rax,
    // rdx and the word below the stack pointer, and resumes after the ud2; the asm
    // declares the registers as outputs and only reads below the stack pointer.
    unsafe {
        asm!(
            "lea {expected}, [rip + 2f]",
            "int3",
            "2:",
            "ud2",
            "mov {pushed}, [rsp - 8]",
            expected = out(reg) rip_expected,
            pushed = out(reg) pushed,
            inout("rax") INT3_MARKER_IN => rax_after,
            out("rdx") rip_seen,
        );
    }
    traps::set_breakpoint_hook(None);
    if BREAKPOINTS_SEEN.load(Ordering::Relaxed) != 1 {
        return Err("the breakpoint hook did not run exactly once");
    }
    if rax_after != INT3_MARKER_OUT {
        return Err("rax written by the breakpoint hook did not reach the interrupted code");
    }
    if rip_seen != rip_expected {
        return Err("the trap frame's rip is not the address after the int3");
    }
    if pushed != PUSHED_MARKER {
        return Err("the word the hook wrote below the interrupted stack pointer is gone");
    }
    let frame = BREAKPOINT_FRAME.load(Ordering::Relaxed);
    let index = percpu::current().index();
    if !percpu::breakpoint_stack(index).contains(&frame) {
        return Err("the #BP trap frame is not on this CPU's #BP IST stack");
    }
    Ok(Int3Report {
        address: rip_expected - 1,
        frame,
    })
}

/// Single-steps one instruction with RFLAGS.TF and the test #DB hook. Returns DR6.
pub(crate) fn single_step_round_trip() -> Result<u64, &'static str> {
    traps::set_debug_hook(Some(debug_hook));
    let rcx_after: u64;
    // SAFETY: setting TF traps after the `nop`; the hook installed above claims the
    // #DB (marker in rcx), clears TF in the saved RFLAGS and writes rcx, declared as
    // an output. The stack use is balanced (pushfq/popfq).
    unsafe {
        asm!(
            "pushfq",
            "or qword ptr [rsp], {trap_flag}",
            "popfq",
            "nop",
            trap_flag = const RFLAGS_TRAP,
            inout("rcx") STEP_MARKER_IN => rcx_after,
        );
    }
    traps::set_debug_hook(None);
    if SINGLE_STEPS_SEEN.load(Ordering::Relaxed) != 1 {
        return Err("the debug hook did not run exactly once");
    }
    if rcx_after != STEP_MARKER_OUT {
        return Err("rcx written by the debug hook did not reach the interrupted code");
    }
    Ok(LAST_DR6.load(Ordering::Relaxed))
}
