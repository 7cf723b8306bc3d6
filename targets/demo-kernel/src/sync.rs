//! An interrupt-safe spin lock, the kernel's only lock.
//!
//! # Design
//!
//! Taking the lock disables interrupts on this CPU and the guard restores the previous
//! interrupt flag, so an interrupt handler on the same CPU can never spin on a lock
//! its own CPU holds. Fatal paths (panic, fatal exception) use [`SpinLock::try_lock_for`]
//! and fall back to writing without the lock rather than dead-locking.
//!
//! # Invariants
//!
//! - Probe context (the #BP/#DB path) never takes a lock; only normal kernel code
//!   and fatal paths do.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::cpu;

/// A mutual-exclusion lock that spins with interrupts disabled.
pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out at most one reference to the value at a time, so sharing
// the lock between CPUs is sound whenever the value itself may move between them.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// A new, unlocked lock around `value`.
    pub(crate) const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock, spinning until it is free.
    pub(crate) fn lock(&self) -> SpinLockGuard<'_, T> {
        let interrupts_were_enabled = cpu::interrupts_enabled();
        cpu::disable_interrupts();
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            cpu::spin_hint();
        }
        SpinLockGuard {
            lock: self,
            interrupts_were_enabled,
        }
    }

    /// Takes the lock unless it stays busy for `attempts` tries (fatal paths only).
    pub(crate) fn try_lock_for(&self, attempts: usize) -> Option<SpinLockGuard<'_, T>> {
        let interrupts_were_enabled = cpu::interrupts_enabled();
        cpu::disable_interrupts();
        for _ in 0..attempts {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some(SpinLockGuard {
                    lock: self,
                    interrupts_were_enabled,
                });
            }
            cpu::spin_hint();
        }
        if interrupts_were_enabled {
            cpu::enable_interrupts();
        }
        None
    }

    /// The value without taking the lock.
    ///
    /// # Safety
    ///
    /// Only for fatal paths that never return: the caller accepts that another CPU
    /// may be using the value at the same time (for a UART: interleaved bytes).
    #[allow(
        clippy::mut_from_ref,
        reason = "the caller accepts the aliasing, see # Safety"
    )]
    pub(crate) unsafe fn force_get(&self) -> &mut T {
        // SAFETY: the caller accepts the aliasing (see above).
        unsafe { &mut *self.value.get() }
    }
}

/// Proof that the lock is held; releases it (and restores the interrupt flag) on drop.
pub(crate) struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
    interrupts_were_enabled: bool,
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held, so no other reference exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held, so no other reference exists.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
        if self.interrupts_were_enabled {
            cpu::enable_interrupts();
        }
    }
}
