//! The 8254 PIT's channel 2 as a one-shot stopwatch, for delays before the local APIC
//! timer runs and for calibrating that timer.
//!
//! # Design
//!
//! Channel 2's gate and output are wired to system control port B (`0x61`): bit 0 is
//! the gate, bit 5 reads the output. In mode 0 ("interrupt on terminal count") the
//! output goes high when the count reaches zero, so loading a count with the gate low,
//! raising the gate and polling bit 5 measures a fixed interval without interrupts.
//! QEMU emulates this (the PC speaker device owns port `0x61`); every poll loop is
//! bounded anyway so a missing PIT degrades to "no delay" instead of a hang.

use crate::cpu;

/// Input clock of the PIT.
const PIT_FREQUENCY_HZ: u64 = 1_193_182;
const CHANNEL2_DATA: u16 = 0x42;
const COMMAND: u16 = 0x43;
const PORT_B: u16 = 0x61;
const PORT_B_GATE2: u8 = 1 << 0;
const PORT_B_SPEAKER: u8 = 1 << 1;
const PORT_B_OUT2: u8 = 1 << 5;

/// Longest interval one countdown can measure (65535 PIT ticks, about 54.9 ms).
const MAX_MICROS_PER_COUNTDOWN: u64 = 50_000;

/// Upper bound on polls of port B for one countdown (far more than 55 ms of port
/// reads under TCG); reaching it means the PIT is not there.
const MAX_POLLS: u32 = 50_000_000;

/// A running channel-2 countdown.
pub(crate) struct Countdown(());

impl Countdown {
    /// Programs channel 2 for `micros` (at most [`MAX_MICROS_PER_COUNTDOWN`]) with
    /// the gate low; the countdown starts at [`Countdown::start`].
    pub(crate) fn prepare(micros: u64) -> Countdown {
        let ticks =
            (micros.min(MAX_MICROS_PER_COUNTDOWN) * PIT_FREQUENCY_HZ / 1_000_000).max(1) as u16;
        // SAFETY: ports 0x42, 0x43 and 0x61 belong to the PIT and port B, which only
        // this module drives.
        unsafe {
            let port_b = cpu::inb(PORT_B);
            cpu::outb(PORT_B, port_b & !(PORT_B_GATE2 | PORT_B_SPEAKER));
            cpu::outb(COMMAND, 0b1011_0000); // channel 2, low then high byte, mode 0, binary
            cpu::outb(CHANNEL2_DATA, ticks as u8);
            cpu::outb(CHANNEL2_DATA, (ticks >> 8) as u8);
        }
        Countdown(())
    }

    /// Raises the gate: counting starts now.
    pub(crate) fn start(&self) {
        // SAFETY: port B is driven only by this module; the speaker stays off.
        unsafe {
            let port_b = cpu::inb(PORT_B);
            cpu::outb(PORT_B, (port_b & !PORT_B_SPEAKER) | PORT_B_GATE2);
        }
    }

    /// Waits until the count reaches zero; `false` if the PIT never got there.
    pub(crate) fn wait(&self) -> bool {
        for _ in 0..MAX_POLLS {
            // SAFETY: reading port B has no side effect on the PIT.
            if unsafe { cpu::inb(PORT_B) } & PORT_B_OUT2 != 0 {
                return true;
            }
            cpu::spin_hint();
        }
        false
    }
}

/// Busy-waits for about `micros` microseconds (interrupts are not needed).
pub(crate) fn busy_wait_micros(mut micros: u64) {
    while micros > 0 {
        let chunk = micros.min(MAX_MICROS_PER_COUNTDOWN);
        let countdown = Countdown::prepare(chunk);
        countdown.start();
        if !countdown.wait() {
            return;
        }
        micros -= chunk;
    }
}
