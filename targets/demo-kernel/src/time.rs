//! Waiting on the local APIC timer, and a nanosecond clock from the TSC.
//!
//! # Design
//!
//! For waits, time is this CPU's timer tick count (100 Hz). A wait halts between
//! checks, so an idle CPU costs the host nothing under TCG; the condition is
//! re-checked after every interrupt, so a condition set by another CPU is seen
//! within one tick.
//!
//! For the probe stub (event timestamps, timer probes, the port's lease) ticks are
//! too coarse: [`now_ns`] reads the time-stamp counter, which every CPU shares
//! (QEMU's TCG hands every vCPU the host's TSC; on hardware an invariant TSC), and
//! scales it with a factor measured once at boot against the PIT
//! ([`calibrate_clock`]: three 10 ms windows, the smallest count kept, as for the
//! APIC timer).
//!
//! # Invariants
//!
//! - Only call the waits once this CPU's timer runs: otherwise a wait never ends.
//! - Waiting enables interrupts: never call from probe context or with a lock held.
//! - [`now_ns`] takes no lock and never waits: it is safe in probe context.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::apic::TICKS_PER_SECOND;
use crate::cpu;
use crate::percpu;
use crate::pit;

/// TSC frequency assumed when the PIT does not answer.
const FALLBACK_TSC_HZ: u64 = 2_000_000_000;

/// The TSC value that [`now_ns`] counts from.
static CLOCK_ORIGIN: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per TSC count, as a 32.32 fixed-point number.
static NANOS_PER_COUNT: AtomicU64 = AtomicU64::new(1 << 32);

/// The time-stamp counter.
#[inline(always)]
pub(crate) fn read_tsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: `rdtsc` only reads the counter (CR4.TSD is clear: ring 0 anyway).
    unsafe {
        core::arch::asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    };
    (u64::from(high) << 32) | u64::from(low)
}

/// Measures the TSC against PIT channel 2 and starts [`now_ns`] at zero. Returns
/// the TSC frequency and whether the PIT answered. Called once by the BSP at boot.
pub(crate) fn calibrate_clock() -> (u64, bool) {
    const WINDOW_MICROS: u64 = 10_000;
    let mut best: Option<u64> = None;
    for _ in 0..3 {
        let countdown = pit::Countdown::prepare(WINDOW_MICROS);
        let start = read_tsc();
        countdown.start();
        let answered = countdown.wait();
        let counts = read_tsc().wrapping_sub(start);
        if !answered || counts == 0 {
            best = None;
            break;
        }
        best = Some(best.map_or(counts, |best| best.min(counts)));
    }
    let hz = best.map_or(FALLBACK_TSC_HZ, |counts| {
        counts * (1_000_000 / WINDOW_MICROS)
    });
    NANOS_PER_COUNT.store(
        ((1_000_000_000u128 << 32) / u128::from(hz)) as u64,
        Ordering::Relaxed,
    );
    CLOCK_ORIGIN.store(read_tsc(), Ordering::Release);
    (hz, best.is_some())
}

/// Nanoseconds since [`calibrate_clock`], on a clock every CPU shares.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    let counts = read_tsc().wrapping_sub(CLOCK_ORIGIN.load(Ordering::Relaxed));
    ((u128::from(counts) * u128::from(NANOS_PER_COUNT.load(Ordering::Relaxed))) >> 32) as u64
}

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
