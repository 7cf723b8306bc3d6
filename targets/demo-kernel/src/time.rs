//! Waiting on the local APIC timer.
//!
//! # Design
//!
//! Time is this CPU's timer tick count (100 Hz). A wait halts between checks, so an
//! idle CPU costs the host nothing under TCG; the condition is re-checked after every
//! interrupt, so a condition set by another CPU is seen within one tick.
//!
//! # Invariants
//!
//! - Only call these once this CPU's timer runs: otherwise a wait never ends.
//! - Waiting enables interrupts: never call from probe context or with a lock held.

use core::sync::atomic::Ordering;

use crate::apic::TICKS_PER_SECOND;
use crate::cpu;
use crate::percpu;

/// This CPU's tick count.
pub(crate) fn ticks() -> u64 {
    percpu::current().timer_ticks.load(Ordering::Relaxed)
}

/// The tick count `millis` milliseconds from now (rounded up by one tick).
pub(crate) fn deadline_after_millis(millis: u64) -> u64 {
    ticks() + millis * TICKS_PER_SECOND / 1000 + 1
}

/// Halts until `done()` holds or `timeout_millis` pass; returns whether `done()` held.
pub(crate) fn wait_until(timeout_millis: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = deadline_after_millis(timeout_millis);
    loop {
        if done() {
            return true;
        }
        if ticks() >= deadline {
            return false;
        }
        cpu::enable_interrupts_and_halt();
    }
}
