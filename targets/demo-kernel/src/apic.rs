//! The local APIC: enabling it, its periodic timer, end-of-interrupt and the
//! INIT/SIPI inter-processor interrupts used to start the other CPUs.
//!
//! # Design
//!
//! The xAPIC registers are memory-mapped at the address in `IA32_APIC_BASE`
//! (`0xfee0_0000` on QEMU), inside the identity map's uncached fourth GiB. The BSP
//! calibrates the timer once: with the divider at 16 it lets the timer count down
//! from `u32::MAX` while the PIT measures 10 ms (three times, keeping the smallest),
//! and uses the counts consumed as the
//! initial count of a periodic 100 Hz timer on every CPU. Under QEMU the APIC timer
//! runs at 1 GHz, so the expected result is about 625 000; if the PIT does not
//! respond the kernel falls back to exactly that ([`FALLBACK_COUNTS_PER_TICK`]).
//! Calibration against QEMU's virtual clock is rough (TCG runs the guest slower than
//! real time, and the measured value moves with host load), which is fine: the ticks
//! only pace waits and prove interrupts arrive.
//!
//! # Invariants
//!
//! - [`init_bsp`] runs before any other function here (it records the base address).
//! - The timer handler only counts and acknowledges; the scheduler's tick runs after
//!   it (`traps.rs`).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::cpu;
use crate::percpu;
use crate::pit;
use crate::traps::{SPURIOUS_VECTOR, TIMER_VECTOR};

/// Timer interrupts per second on each CPU.
pub(crate) const TICKS_PER_SECOND: u64 = 100;

/// Timer counts per tick assumed when the PIT cannot calibrate (QEMU's 1 GHz APIC
/// clock divided by 16, over 10 ms).
const FALLBACK_COUNTS_PER_TICK: u32 = 625_000;

/// Calibration measurements taken (the smallest wins).
const CALIBRATION_ROUNDS: usize = 3;

/// Fewer counts than this in one tick means the measurement is broken.
const MIN_PLAUSIBLE_COUNTS: u32 = 1000;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;

// Register offsets.
const ID: usize = 0x20;
const VERSION: usize = 0x30;
const TASK_PRIORITY: usize = 0x80;
const END_OF_INTERRUPT: usize = 0xb0;
const SPURIOUS_INTERRUPT: usize = 0xf0;
const ERROR_STATUS: usize = 0x280;
const INTERRUPT_COMMAND_LOW: usize = 0x300;
const INTERRUPT_COMMAND_HIGH: usize = 0x310;
const LVT_TIMER: usize = 0x320;
const LVT_LINT0: usize = 0x350;
const LVT_ERROR: usize = 0x370;
const TIMER_INITIAL_COUNT: usize = 0x380;
const TIMER_CURRENT_COUNT: usize = 0x390;
const TIMER_DIVIDE: usize = 0x3e0;

const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const TIMER_DIVIDE_BY_16: u32 = 0b0011;
const SPURIOUS_APIC_ENABLE: u32 = 1 << 8;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_DELIVERY_INIT: u32 = 0b101 << 8;
const ICR_DELIVERY_STARTUP: u32 = 0b110 << 8;

/// Physical (= virtual) base of the xAPIC registers.
static BASE: AtomicU64 = AtomicU64::new(0);
/// Initial count of the periodic timer, from calibration.
static COUNTS_PER_TICK: AtomicU32 = AtomicU32::new(0);

fn read(register: usize) -> u32 {
    let address = BASE.load(Ordering::Relaxed) as usize + register;
    // SAFETY: the base comes from IA32_APIC_BASE and is identity-mapped; `register`
    // is one of the documented xAPIC register offsets.
    unsafe { core::ptr::read_volatile(address as *const u32) }
}

fn write(register: usize, value: u32) {
    let address = BASE.load(Ordering::Relaxed) as usize + register;
    // SAFETY: as in `read`; writes to these registers only affect this CPU's APIC.
    unsafe { core::ptr::write_volatile(address as *mut u32, value) };
}

/// Records the APIC base (from `IA32_APIC_BASE`), makes sure the APIC is globally
/// enabled and enables it on the BSP. Returns the base address.
pub(crate) fn init_bsp() -> u64 {
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
    let apic_base_msr = unsafe { cpu::read_msr(IA32_APIC_BASE) };
    if apic_base_msr & APIC_BASE_ENABLE == 0 {
        // SAFETY: setting the global enable bit keeps the base address unchanged.
        unsafe { cpu::write_msr(IA32_APIC_BASE, apic_base_msr | APIC_BASE_ENABLE) };
    }
    let base = apic_base_msr & 0x000f_ffff_ffff_f000;
    BASE.store(base, Ordering::Relaxed);
    enable_this_cpu();
    base
}

/// Software-enables this CPU's APIC: spurious vector, priority 0, LINT0 and error
/// interrupts masked (the legacy PIC is not used).
pub(crate) fn enable_this_cpu() {
    write(
        SPURIOUS_INTERRUPT,
        SPURIOUS_APIC_ENABLE | u32::from(SPURIOUS_VECTOR),
    );
    write(TASK_PRIORITY, 0);
    write(LVT_LINT0, LVT_MASKED);
    write(LVT_ERROR, LVT_MASKED);
    write(ERROR_STATUS, 0);
}

/// This CPU's local APIC id.
pub(crate) fn id() -> u32 {
    read(ID) >> 24
}

/// The APIC version register (version in bits 0-7, max LVT entry in bits 16-23).
pub(crate) fn version() -> u32 {
    read(VERSION)
}

/// Measures the timer against the PIT; returns counts per tick and whether the PIT
/// answered (`false`: the fallback value is used).
///
/// Takes the smallest of [`CALIBRATION_ROUNDS`] measurements: under TCG the host may
/// preempt the vCPU between starting the APIC count and raising the PIT gate, which
/// only ever makes a measurement too long.
pub(crate) fn calibrate_timer() -> (u32, bool) {
    let window_micros = 1_000_000 / TICKS_PER_SECOND;
    write(TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    write(LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR));
    let mut best: Option<u32> = None;
    for _ in 0..CALIBRATION_ROUNDS {
        let countdown = pit::Countdown::prepare(window_micros);
        write(TIMER_INITIAL_COUNT, u32::MAX);
        countdown.start();
        let answered = countdown.wait();
        let consumed = u32::MAX - read(TIMER_CURRENT_COUNT);
        write(TIMER_INITIAL_COUNT, 0);
        if !answered || consumed <= MIN_PLAUSIBLE_COUNTS {
            best = None;
            break;
        }
        best = Some(best.map_or(consumed, |best| best.min(consumed)));
    }
    let counts = best.unwrap_or(FALLBACK_COUNTS_PER_TICK);
    COUNTS_PER_TICK.store(counts, Ordering::Relaxed);
    (counts, best.is_some())
}

/// Starts this CPU's periodic timer with the calibrated count.
pub(crate) fn start_timer() {
    write(TIMER_DIVIDE, TIMER_DIVIDE_BY_16);
    write(LVT_TIMER, LVT_TIMER_PERIODIC | u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL_COUNT, COUNTS_PER_TICK.load(Ordering::Relaxed));
}

/// Timer interrupt: count the tick on this CPU and acknowledge.
pub(crate) fn on_timer_interrupt() {
    percpu::current()
        .timer_ticks
        .fetch_add(1, Ordering::Relaxed);
    end_of_interrupt();
}

/// Acknowledges the interrupt in service on this CPU.
pub(crate) fn end_of_interrupt() {
    write(END_OF_INTERRUPT, 0);
}

/// Writes the two halves of the interrupt command register and waits for delivery,
/// with interrupts off: an interrupt handler sending its own IPI between the two
/// writes would change the destination under this one.
fn send_ipi(apic_id: u32, command: u32) {
    let interrupts_were_enabled = cpu::interrupts_enabled();
    cpu::disable_interrupts();
    write(INTERRUPT_COMMAND_HIGH, apic_id << 24);
    write(INTERRUPT_COMMAND_LOW, command);
    while read(INTERRUPT_COMMAND_LOW) & ICR_DELIVERY_PENDING != 0 {
        cpu::spin_hint();
    }
    if interrupts_were_enabled {
        cpu::enable_interrupts();
    }
}

/// Sends `vector` to the CPU with local APIC id `apic_id` (fixed delivery).
pub(crate) fn send_fixed_ipi(apic_id: u32, vector: u8) {
    send_ipi(apic_id, ICR_LEVEL_ASSERT | u32::from(vector));
}

/// Sends INIT to the CPU with local APIC id `apic_id` (it then waits for a SIPI).
pub(crate) fn send_init(apic_id: u32) {
    send_ipi(apic_id, ICR_DELIVERY_INIT | ICR_LEVEL_ASSERT);
}

/// Sends a start-up IPI: the target starts in real mode at `page << 12`.
pub(crate) fn send_startup(apic_id: u32, page: u8) {
    send_ipi(
        apic_id,
        ICR_DELIVERY_STARTUP | ICR_LEVEL_ASSERT | u32::from(page),
    );
}
