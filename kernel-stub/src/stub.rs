//! The stub: one value holding every table, and the probe-context entry points.
//!
//! # Design
//!
//! A kernel places one [`Stub`] in a `static` (`Stub::new` is `const`; every table
//! starts zeroed, so with a zero-sized platform value the whole stub lands in
//! `.bss`) and calls into it from two worlds:
//!
//! - **Probe context**: [`Stub::on_breakpoint`] from the breakpoint trap,
//!   [`Stub::on_timer`] from the timer interrupt of each CPU, and
//!   [`Stub::fire_marker`] from enabled markers (through the
//!   [`MarkerSink`]). These run with interrupts off, on every CPU
//!   at once; they never allocate, block or send anything, and the only lock they
//!   take is a hash map's `CpuLock` (`sync.rs`), which refuses rather than waits
//!   when the current CPU holds it.
//! - **Session**: the thread serving the port ([`Stub::handle`],
//!   [`Stub::serve_bytes`], [`Stub::drain`], [`Stub::poll`],
//!   [`Stub::end_session`], in `session.rs`). One at a time, under a spin mutex
//!   that probe context never takes.
//!
//! Each CPU has an `in_handler` flag and a count of finished handler runs. Probe
//! context sets the flag (an atomic swap, which also detects re-entry on the same
//! CPU) before it looks anything up and clears it when it is done. The session
//! unpublishes a probe, site or map, then calls [`Stub::synchronize`], which waits
//! until every CPU has been seen outside a handler, or has finished the handler it
//! was in; after that no CPU can still use what was unpublished, and its memory
//! (program, out-of-line slot, table entry) may be reused. Publication variables
//! and the setting of the flag use sequentially consistent accesses, which is what
//! makes the "either the CPU saw the removal or the session saw the CPU" argument
//! hold; on x86 those loads are plain moves and the swap is the one locked
//! instruction of a hit. Leaving needs only release stores (the count of runs has
//! one writer, its CPU), which on x86 are plain moves too.
//!
//! A breakpoint hit looks the address up in the site index: the return
//! trampoline (one slot at the start of the out-of-line area) first, then the
//! sites. At a site, the dynamic probe's handler runs, then the return probe's
//! entry work (swap the return address for the trampoline's), then
//! [`arch::resume`] makes the CPU execute the displaced
//! instruction out of line. A hit at an address the index no longer knows is a
//! probe removed while the CPU was trapping: if the byte there is no longer a
//! breakpoint the CPU simply re-executes the restored instruction.
//!
//! # The stub's own text
//!
//! A breakpoint in the code that runs before the re-entry guard (the entry
//! points, the per-CPU guard, the site lookup) would trap again before the guard
//! could see it, forever; a breakpoint in what a re-entered hit still runs (the
//! resume of the displaced instruction, the trampoline's lookup) would do the same
//! one level down. Those functions carry `#[link_section = ".text.probeport"]`
//! (monomorphised copies keep the section), so a kernel's linker script can
//! collect `.text.probeport*` into a range it returns from
//! [`Platform::forbidden_text`]. Everything else of the stub runs after the guard
//! and is protected by it: a probe there fires as a re-entered hit, counted and
//! skipped.
//!
//! # Invariants
//!
//! - Probe context never panics, allocates, blocks or takes a lock its own CPU
//!   may hold.
//! - A re-entered CPU (a breakpoint hit while a handler runs on it) runs no
//!   handler — it counts `reentered` on the CPU and a miss on each probe — but
//!   still resumes the displaced instruction or the return address correctly.
//! - Every record a handler emits consumes its CPU's next sequence number; it is
//!   either in the ring or counted lost (PROTOCOL.md §7.2).
//! - A return trampoline hit always finds its activation (see `returns.rs`); if it
//!   ever did not, the stub returns [`TrapOutcome::NotMine`] so the kernel stops
//!   loudly instead of running on with an unknown return address.

use core::cell::Cell;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};

use probe_port_protocol::context::{ENTRY_SLOTS, ProbeContext, slot};
use probe_port_protocol::isa::Insn;
use probe_port_protocol::maps::{MapId, MapSpec};

use crate::arch::{self, StackAccess, TrapRegisters};
use crate::interpreter::{self, EntrySaveError, Fault, Full, Helpers, TrapKind};
use crate::jit::x86_64::JitProgram;
use crate::limits::{MAX_CPUS, MAX_RECORD, MAX_STACK_TRACE, MAX_TIMERS};
use crate::maps::{MapLayout, MapStore};
use crate::markers::MarkerSink;
use crate::platform::{MarkerSite, Platform};
use crate::probes::{MARKER, ProbeData, ProbeSlot, ProbeTable, RETURN, SiteTable, TIMER};
use crate::returns::{Activation, PendingReturns};
use crate::ring::Ring;
use crate::session::{Port, Session};
use crate::sync::{HandlerStack, ProgramArena};

/// What the stub did with a breakpoint trap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapOutcome {
    /// The breakpoint was the stub's: the registers now say where the CPU
    /// continues (an out-of-line slot, an emulated target, a return address).
    /// Return from the trap with them.
    Handled,
    /// Not the stub's breakpoint (or one it cannot resume: the kernel should
    /// treat it as it treats any unexpected breakpoint).
    NotMine,
}

/// State of one CPU.
pub(crate) struct PerCpu {
    /// Whether a handler (or any probe-context entry point) runs on the CPU.
    in_handler: AtomicBool,
    /// Probe-context entries completed on the CPU (for quiescence).
    runs: AtomicU64,
    pub(crate) hits: AtomicU64,
    pub(crate) reentered: AtomicU64,
    pub(crate) emitted: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) faults: AtomicU64,
    /// The sequence number the next `emit` on this CPU takes.
    pub(crate) next_seq: AtomicU64,
    pub(crate) ring: Ring,
    /// When each timer probe is next due on this CPU (nanoseconds).
    pub(crate) timer_due: [AtomicU64; MAX_TIMERS],
    /// The stack handlers run on (see `HandlerStack`).
    stack: HandlerStack,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            in_handler: AtomicBool::new(false),
            runs: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            reentered: AtomicU64::new(0),
            emitted: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            ring: Ring::new(),
            timer_due: [const { AtomicU64::new(0) }; MAX_TIMERS],
            stack: HandlerStack::new(),
        }
    }

    /// Session, quiescent: forgets the session's events and counters.
    pub(crate) fn reset(&self) {
        self.ring.reset();
        for counter in [
            &self.hits,
            &self.reentered,
            &self.emitted,
            &self.lost,
            &self.faults,
            &self.next_seq,
        ] {
            counter.store(0, Ordering::SeqCst);
        }
    }
}

/// The probe stub a kernel embeds (see the crate documentation for the API a
/// kernel uses, and `session.rs` for the port side).
pub struct Stub<P: Platform> {
    pub(crate) platform: P,
    /// The lease in milliseconds, stored as its difference from the default so a
    /// default stub is all zero bytes.
    lease_delta: u32,
    pub(crate) cpus: [PerCpu; MAX_CPUS],
    pub(crate) probes: ProbeTable,
    pub(crate) sites: SiteTable,
    /// Probe slot + 1 of each timer probe, 0 if free.
    pub(crate) timers: [AtomicU32; MAX_TIMERS],
    pub(crate) programs: ProgramArena,
    pub(crate) maps: MapStore,
    pub(crate) returns: PendingReturns,
    /// Number of the current (or last) session; pending returns remember it.
    pub(crate) generation: AtomicU32,
    /// Address of the return trampoline once written, 0 before.
    pub(crate) trampoline: AtomicU64,
    /// Trampoline hits whose activation was not found (never expected).
    pub(crate) orphan_returns: AtomicU64,
    /// Displaced instructions that could not be resumed (stack not writable).
    pub(crate) resume_failures: AtomicU64,
    pub(crate) session: spin::Mutex<Session>,
    pub(crate) port: spin::Mutex<Port>,
}

impl<P: Platform> fmt::Debug for Stub<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stub")
            .field("lease_ms", &self.lease_ms())
            .field("trampoline", &self.trampoline.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<P: Platform> Stub<P> {
    /// A stub with no session, every table empty, and the default lease
    /// ([`DEFAULT_LEASE_MS`](crate::DEFAULT_LEASE_MS)).
    pub const fn new(platform: P) -> Self {
        Self {
            platform,
            lease_delta: 0,
            cpus: [const { PerCpu::new() }; MAX_CPUS],
            probes: ProbeTable::new(),
            sites: SiteTable::new(),
            timers: [const { AtomicU32::new(0) }; MAX_TIMERS],
            programs: ProgramArena::new(),
            maps: MapStore::new(),
            returns: PendingReturns::new(),
            generation: AtomicU32::new(0),
            trampoline: AtomicU64::new(0),
            orphan_returns: AtomicU64::new(0),
            resume_failures: AtomicU64::new(0),
            session: spin::Mutex::new(Session::new()),
            port: spin::Mutex::new(Port::new()),
        }
    }

    /// The same stub announcing a lease of `lease_ms` milliseconds (0: none; the
    /// transport then reports the holder's death through [`Stub::end_session`]).
    pub const fn with_lease_ms(mut self, lease_ms: u32) -> Self {
        self.lease_delta = lease_ms ^ crate::limits::DEFAULT_LEASE_MS;
        self
    }

    /// The lease announced in the handshake, in milliseconds.
    pub const fn lease_ms(&self) -> u32 {
        self.lease_delta ^ crate::limits::DEFAULT_LEASE_MS
    }

    /// The platform the stub was built with.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// CPUs served: the platform's count, capped at [`MAX_CPUS`].
    pub(crate) fn cpu_count(&self) -> usize {
        self.platform.cpu_count().min(MAX_CPUS)
    }

    /// How many returns are pending (function entered, return trampoline not yet
    /// hit), across every session.
    pub fn pending_returns(&self) -> usize {
        self.returns.pending()
    }

    /// Trampoline hits whose activation was not found, and displaced
    /// instructions that could not be resumed: both answered `NotMine`. Neither
    /// should ever be non-zero.
    pub fn anomalies(&self) -> (u64, u64) {
        (
            self.orphan_returns.load(Ordering::Relaxed),
            self.resume_failures.load(Ordering::Relaxed),
        )
    }

    // ------------------------------------------------------------------------
    // Quiescence.

    /// Marks the current CPU as running probe context. Returns the CPU and
    /// whether it already was (re-entry); `None` if the platform reports a CPU
    /// beyond [`MAX_CPUS`].
    #[unsafe(link_section = ".text.probeport")]
    fn enter(&self) -> Option<(usize, bool)> {
        let cpu = self.platform.cpu_id();
        let percpu = self.cpus.get(cpu)?;
        let nested = percpu.in_handler.swap(true, Ordering::SeqCst);
        Some((cpu, nested))
    }

    /// Ends what [`Stub::enter`] began.
    #[unsafe(link_section = ".text.probeport")]
    fn leave(&self, cpu: usize, nested: bool) {
        if nested {
            return;
        }
        if let Some(percpu) = self.cpus.get(cpu) {
            // Only this CPU writes its `runs` (with interrupts off, and a nested
            // entry returns above), so a load and a store replace the locked
            // read-modify-write. Release on both: whatever the handler read of
            // the tables is ordered before a session that sees the new count or
            // the cleared flag goes on to reuse memory. The session's side of the
            // argument needs no more: its SeqCst fence and loads in
            // `synchronize` come after it unpublished, and this CPU's SeqCst
            // swap in `enter` orders its later lookups after its flag, so either
            // the session sees the flag set (and waits for one of these stores)
            // or this CPU's lookups see the removal.
            let runs = percpu.runs.load(Ordering::Relaxed);
            percpu.runs.store(runs.wrapping_add(1), Ordering::Release);
            percpu.in_handler.store(false, Ordering::Release);
        }
    }

    /// Waits until every CPU has been outside probe context since the call began:
    /// afterwards no CPU still uses anything unpublished before the call.
    /// Session only; never with a lock probe context takes.
    pub(crate) fn synchronize(&self) {
        fence(Ordering::SeqCst);
        for percpu in &self.cpus[..self.cpu_count()] {
            let runs = percpu.runs.load(Ordering::SeqCst);
            while percpu.in_handler.load(Ordering::SeqCst)
                && percpu.runs.load(Ordering::SeqCst) == runs
            {
                core::hint::spin_loop();
            }
        }
    }

    // ------------------------------------------------------------------------
    // Entry points.

    /// The breakpoint trap handler's hook. `regs` are the trapped registers
    /// (`pc` just past the breakpoint); on [`TrapOutcome::Handled`] the kernel
    /// returns from the trap with `regs` as modified. *Probe context*: call it
    /// with interrupts off (an interrupt gate), never from the session thread's
    /// own code.
    #[unsafe(link_section = ".text.probeport")]
    pub fn on_breakpoint(&self, regs: &mut TrapRegisters) -> TrapOutcome {
        let Some((cpu, nested)) = self.enter() else {
            return TrapOutcome::NotMine;
        };
        let outcome = self.breakpoint(cpu, nested, regs);
        self.leave(cpu, nested);
        outcome
    }

    /// The timer interrupt's hook, called on every CPU with the interrupted
    /// registers: runs the timer probes due on this CPU (`OneCpu` timers on CPU 0
    /// only, `EachCpu` timers on every CPU). *Probe context*, interrupts off. A
    /// timer fires at most once per call, however late the call is.
    #[unsafe(link_section = ".text.probeport")]
    pub fn on_timer(&self, regs: &TrapRegisters) {
        let Some((cpu, nested)) = self.enter() else {
            return;
        };
        if nested {
            self.count_reentered(cpu);
        } else {
            self.timers_due(cpu, regs);
        }
        self.leave(cpu, nested);
    }

    /// A marker fired (normally reached through [`crate::fire_marker`] and the
    /// registered sink). Markers sit in ordinary kernel code, where interrupts
    /// may be on and the thread may migrate, so this runs the handler inside
    /// [`Platform::without_interrupts`]: it must stay on one CPU to use that
    /// CPU's ring and tables. *Probe context* once inside.
    #[unsafe(link_section = ".text.probeport")]
    pub fn fire_marker(&self, site: &'static MarkerSite, args: &[u64]) {
        self.platform
            .without_interrupts(|| self.marker_hit(site, args));
    }

    /// A jump probe fired: what a detour calls (through `jump_entry`).
    /// `context` is the detour's frame: the probed code's registers, `PC` (the
    /// probe's address) and `FLAGS` in their slots and every later slot zero
    /// (`crate::jump`); the stub fills in `PROBE`. Runs the handler as a
    /// breakpoint hit would; the detour then runs the displaced instructions
    /// itself. Public for simulated platforms; a kernel never calls it.
    ///
    /// # Safety
    ///
    /// *Probe context*: the caller runs with interrupts off (the detour clears IF)
    /// and stays on one CPU until it returns, as the platform's
    /// `without_interrupts` would keep it. Otherwise a thread could be preempted
    /// holding this CPU's handler stack or a map's lock, and whoever waits for it
    /// with interrupts off would spin for ever.
    #[unsafe(link_section = ".text.probeport")]
    pub unsafe fn on_jump(&self, context: &mut ProbeContext) {
        let Some((cpu, nested)) = self.enter() else {
            return;
        };
        if nested {
            self.count_reentered(cpu);
        }
        let pc = context.slots[slot::PC];
        let primary = self
            .sites
            .find_inline(pc)
            .and_then(|index| self.sites.entry(index).primary());
        if let Some(slot) = primary {
            let probe = self.probes.slot(slot);
            // SAFETY: this CPU is marked in probe context (`enter`) until `leave`,
            // and the borrow ends before that.
            if let Some(data) = unsafe { probe.live_ref() } {
                if nested {
                    probe.counters.misses.fetch_add(1, Ordering::Relaxed);
                } else {
                    context.slots[slot::PROBE] = u64::from(data.id);
                    let frame_pointer = context.slots[arch::FRAME_POINTER_SLOT];
                    self.run_handler_inline(cpu, probe, data, context, frame_pointer);
                }
            }
        }
        self.leave(cpu, nested);
    }

    #[unsafe(link_section = ".text.probeport")]
    fn marker_hit(&self, site: &'static MarkerSite, args: &[u64]) {
        let Some((cpu, nested)) = self.enter() else {
            return;
        };
        let address = core::ptr::from_ref(site) as u64;
        let probe = self
            .sites
            .find(address)
            .and_then(|index| self.sites.entry(index).primary())
            .map(|slot| self.probes.slot(slot));
        if let Some(probe) = probe
            && let Some(data) = probe.live()
            && data.kind == MARKER
        {
            if nested {
                self.count_reentered(cpu);
                probe.counters.misses.fetch_add(1, Ordering::Relaxed);
            } else {
                let mut context = ProbeContext::default();
                for (slot, value) in context.slots[..slot::REGISTER_SLOTS].iter_mut().zip(args) {
                    *slot = *value;
                }
                context.slots[slot::PC] = address;
                context.slots[slot::PROBE] = u64::from(data.id);
                self.run_handler(cpu, probe, &data, &context, 0);
            }
        }
        self.leave(cpu, nested);
    }

    // ------------------------------------------------------------------------
    // Breakpoints.

    #[unsafe(link_section = ".text.probeport")]
    fn count_reentered(&self, cpu: usize) {
        if let Some(percpu) = self.cpus.get(cpu) {
            percpu.reentered.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[unsafe(link_section = ".text.probeport")]
    fn breakpoint(&self, cpu: usize, nested: bool, regs: &mut TrapRegisters) -> TrapOutcome {
        let address = arch::breakpoint_address(regs);
        if nested {
            self.count_reentered(cpu);
        }
        let trampoline = self.trampoline.load(Ordering::Acquire);
        if trampoline != 0 && address == trampoline {
            return self.trampoline_hit(cpu, nested, regs);
        }
        let Some(index) = self.sites.find(address) else {
            // A probe removed while this CPU was on its way here: if the text is
            // restored, running on at the address runs the original instruction.
            let mut current = [0u8; arch::BREAKPOINT.len()];
            return match self.platform.read_kernel(&mut current, address) {
                Ok(()) if current != arch::BREAKPOINT => {
                    regs.pc = address;
                    TrapOutcome::Handled
                }
                _ => TrapOutcome::NotMine,
            };
        };
        let site = self.sites.entry(index);
        let data = site.data();
        let Some(displaced) = data.displaced() else {
            return TrapOutcome::NotMine;
        };
        if let Some(slot) = site.primary() {
            self.dynamic_hit(cpu, nested, slot, address, regs);
        }
        if let Some(slot) = site.returns() {
            self.return_entry(cpu, nested, slot, address, regs);
        }
        let mut stack = PlatformStack {
            platform: &self.platform,
        };
        match arch::resume(&displaced, regs, data.slot_address(), &mut stack) {
            Ok(()) => TrapOutcome::Handled,
            Err(_) => {
                self.resume_failures.fetch_add(1, Ordering::Relaxed);
                TrapOutcome::NotMine
            }
        }
    }

    /// The probe in `slot` if it is live and its handler may run now; a re-entered
    /// hit (`nested`) counts as a miss on the probe and runs nothing.
    #[unsafe(link_section = ".text.probeport")]
    fn runnable(&self, slot: usize, nested: bool) -> Option<(&ProbeSlot, ProbeData)> {
        let probe = self.probes.slot(slot);
        let data = probe.live()?;
        if nested {
            probe.counters.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some((probe, data))
    }

    /// The handler of a dynamic probe.
    #[unsafe(link_section = ".text.probeport")]
    fn dynamic_hit(
        &self,
        cpu: usize,
        nested: bool,
        slot: usize,
        address: u64,
        regs: &TrapRegisters,
    ) {
        let Some((probe, data)) = self.runnable(slot, nested) else {
            return;
        };
        let context = register_context(regs, address, data.id);
        self.run_handler(cpu, probe, &data, &context, arch::frame_pointer(regs));
    }

    /// The entry half of a return probe: run the entry program, remember the
    /// activation and swap its return address for the trampoline's.
    #[unsafe(link_section = ".text.probeport")]
    fn return_entry(
        &self,
        cpu: usize,
        nested: bool,
        slot: usize,
        address: u64,
        regs: &TrapRegisters,
    ) {
        let Some((probe, data)) = self.runnable(slot, nested) else {
            return;
        };
        let trampoline = self.trampoline.load(Ordering::Acquire);
        if trampoline == 0 {
            return;
        }
        let entry_sp = arch::stack_pointer(regs);
        let mut word = [0u8; 8];
        if let Err(fault) = self.platform.read_kernel(&mut word, entry_sp) {
            self.count_fault(cpu, probe, Some(fault.address));
            return;
        }
        let return_address = u64::from_le_bytes(word);
        if return_address == trampoline {
            // A tail call from another return-probed function: its activation
            // owns this stack slot, and swapping again would lose the address.
            probe.counters.misses.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(index) = self.returns.claim(entry_sp) else {
            probe.counters.misses.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut values = [0u64; ENTRY_SLOTS];
        if data.entry_len > 0 {
            let context = register_context(regs, address, data.id);
            // SAFETY: see `Stub::program`.
            let program = unsafe { self.programs.range(data.entry_program()) };
            let frame_pointer = arch::frame_pointer(regs);
            self.run(
                cpu,
                probe,
                &data,
                program,
                &context,
                frame_pointer,
                Some(&mut values),
                false,
            );
        }
        let activation = Activation {
            entry_sp,
            return_address,
            probe_slot: slot as u32,
            probe_id: data.id,
            session: self.generation.load(Ordering::Relaxed),
            values,
        };
        self.returns.publish(index, &activation);
        if let Err(fault) = self
            .platform
            .write_kernel(entry_sp, &trampoline.to_le_bytes())
        {
            self.returns.release(index);
            self.count_fault(cpu, probe, Some(fault.address));
        }
    }

    /// A function with a swapped return address returned into the trampoline.
    #[unsafe(link_section = ".text.probeport")]
    fn trampoline_hit(&self, cpu: usize, nested: bool, regs: &mut TrapRegisters) -> TrapOutcome {
        // The `ret` popped the trampoline's address from `entry_sp`.
        let entry_sp = arch::stack_pointer(regs).wrapping_sub(8);
        let Some(activation) = self.returns.take(entry_sp) else {
            self.orphan_returns.fetch_add(1, Ordering::Relaxed);
            return TrapOutcome::NotMine;
        };
        let probe = self.probes.slot(activation.probe_slot as usize);
        let live = probe.live().filter(|data| {
            data.id == activation.probe_id
                && data.kind == RETURN
                && activation.session == self.generation.load(Ordering::Relaxed)
        });
        if let Some(data) = live {
            if nested {
                probe.counters.misses.fetch_add(1, Ordering::Relaxed);
            } else {
                let mut context = register_context(regs, data.address, data.id);
                context.slots[slot::RETURN_ADDRESS] = activation.return_address;
                context.slots[slot::ENTRY_SP] = activation.entry_sp;
                context.slots[slot::ENTRY_BASE..slot::ENTRY_BASE + ENTRY_SLOTS]
                    .copy_from_slice(&activation.values);
                self.run_handler(cpu, probe, &data, &context, arch::frame_pointer(regs));
            }
        }
        regs.pc = activation.return_address;
        TrapOutcome::Handled
    }

    // ------------------------------------------------------------------------
    // Timers.

    fn timers_due(&self, cpu: usize, regs: &TrapRegisters) {
        let Some(percpu) = self.cpus.get(cpu) else {
            return;
        };
        let now = self.platform.now_ns();
        for (timer, entry) in self.timers.iter().enumerate() {
            let Some(slot) = (entry.load(Ordering::SeqCst) as usize).checked_sub(1) else {
                continue;
            };
            let probe = self.probes.slot(slot);
            let Some(data) = probe.live() else {
                continue;
            };
            if data.kind != TIMER || (!data.each_cpu && cpu != 0) {
                continue;
            }
            let due_cell = &percpu.timer_due[timer];
            let due = due_cell.load(Ordering::Relaxed);
            if now < due {
                continue;
            }
            let period = data.address.max(1);
            let next = due.saturating_add(period);
            due_cell.store(
                if next <= now {
                    now.saturating_add(period)
                } else {
                    next
                },
                Ordering::Relaxed,
            );
            let mut context = register_context(regs, regs.pc, data.id);
            context.slots[slot::PC] = regs.pc;
            self.run_handler(cpu, probe, &data, &context, arch::frame_pointer(regs));
        }
    }

    // ------------------------------------------------------------------------
    // Running handlers.

    /// The handler program of a live probe.
    fn program(&self, data: &ProbeData) -> &[Insn] {
        // SAFETY: `data` comes from a probe found live while this CPU is marked
        // in a handler; the session frees a program's slots only after removing
        // its probe and waiting for quiescence, which waits for this handler.
        unsafe { self.programs.range(data.program()) }
    }

    /// Runs a probe's own program (not a return site's entry program) and counts
    /// the hit.
    #[unsafe(link_section = ".text.probeport")]
    fn run_handler(
        &self,
        cpu: usize,
        probe: &ProbeSlot,
        data: &ProbeData,
        context: &ProbeContext,
        frame_pointer: u64,
    ) {
        let program = self.program(data);
        self.run(
            cpu,
            probe,
            data,
            program,
            context,
            frame_pointer,
            None,
            true,
        );
    }

    /// [`Stub::run_handler`], inlined into the jump probe's entry, where every
    /// call saved counts.
    #[inline(always)]
    fn run_handler_inline(
        &self,
        cpu: usize,
        probe: &ProbeSlot,
        data: &ProbeData,
        context: &ProbeContext,
        frame_pointer: u64,
    ) {
        let program = self.program(data);
        self.run_inline(
            cpu,
            probe,
            data,
            program,
            context,
            frame_pointer,
            None,
            true,
        );
    }

    /// Runs one program and accounts for it: the handler of `data`, or its entry
    /// program when `entry_values` is given. Only from the non-nested entry that
    /// holds `cpu`'s `in_handler` flag (every caller checks `nested` first).
    #[allow(
        clippy::too_many_arguments,
        reason = "one private call path; a struct would only rename the arguments"
    )]
    #[inline(never)]
    #[unsafe(link_section = ".text.probeport")]
    fn run(
        &self,
        cpu: usize,
        probe: &ProbeSlot,
        data: &ProbeData,
        program: &[Insn],
        context: &ProbeContext,
        frame_pointer: u64,
        entry_values: Option<&mut [u64; ENTRY_SLOTS]>,
        count_hit: bool,
    ) {
        self.run_inline(
            cpu,
            probe,
            data,
            program,
            context,
            frame_pointer,
            entry_values,
            count_hit,
        );
    }

    /// [`Stub::run`]'s body (see [`Stub::run_handler_inline`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "one private call path; a struct would only rename the arguments"
    )]
    #[inline(always)]
    fn run_inline(
        &self,
        cpu: usize,
        probe: &ProbeSlot,
        data: &ProbeData,
        program: &[Insn],
        context: &ProbeContext,
        frame_pointer: u64,
        entry_values: Option<&mut [u64; ENTRY_SLOTS]>,
        count_hit: bool,
    ) {
        let Some(percpu) = self.cpus.get(cpu) else {
            return;
        };
        if count_hit {
            probe.counters.hits.fetch_add(1, Ordering::Relaxed);
            // The CPU's own count has one writer, this CPU's probe context (the
            // session resets it only when quiescent): a load and a store, not a
            // locked read-modify-write. Relaxed: readers only want a number.
            let hits = percpu.hits.load(Ordering::Relaxed);
            percpu.hits.store(hits.wrapping_add(1), Ordering::Relaxed);
        }
        let is_entry = entry_values.is_some();
        let stack_depth = if is_entry {
            data.entry_stack_depth
        } else {
            data.stack_depth
        };
        let mut executor = Executor {
            stub: self,
            cpu,
            probe,
            probe_id: data.id,
            frame_pointer,
            entry_values,
            last_map: Cell::new(None),
        };
        // SAFETY: this is the non-nested entry holding `cpu`'s `in_handler` flag
        // (see above), and the borrow ends with this run.
        let stack = unsafe { percpu.stack.get() };
        let result = match self.compiled(data, is_entry) {
            Some(code) => {
                // SAFETY: the session copied exactly the JIT's code for this
                // verified program (of this stack depth) to `code` with
                // `Platform::write_text` (every CPU serialised) before it published
                // the probe, and rewrites those bytes only after the probe is
                // unpublished and quiescence reached, which waits for this run.
                let program =
                    unsafe { JitProgram::new(code as *const u8, usize::from(stack_depth)) };
                program.run(context, &mut executor, stack)
            }
            None if P::INTERPRETER => interpreter::run_on_stack(
                program,
                context,
                &mut executor,
                stack,
                usize::from(stack_depth),
            ),
            // Not reached: without the interpreter, arming refuses a probe
            // whose programs are not compiled and placed (`stage_programs`).
            None => return,
        };
        if let Err(trap) = result {
            let address = match trap.kind {
                TrapKind::OutOfBounds { address, .. } => Some(address),
                _ => None,
            };
            self.count_fault(cpu, probe, address);
        }
    }

    /// The address of the compiled code of `data`'s handler (`entry`: of its entry
    /// program), if its programs were compiled.
    #[inline]
    #[unsafe(link_section = ".text.probeport")]
    fn compiled(&self, data: &ProbeData, entry: bool) -> Option<u64> {
        if data.code_len == 0 {
            return None;
        }
        let offset = u64::from(data.code_start)
            + if entry {
                u64::from(data.entry_code_offset)
            } else {
                0
            };
        Some(self.platform.compiled_code_area().start + offset)
    }

    fn count_fault(&self, cpu: usize, probe: &ProbeSlot, address: Option<u64>) {
        probe.counters.fault(address);
        if let Some(percpu) = self.cpus.get(cpu) {
            percpu.faults.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends a record to `cpu`'s ring, consuming its next sequence number
    /// whether it fits or not.
    #[unsafe(link_section = ".text.probeport")]
    fn emit(
        &self,
        cpu: usize,
        probe: &ProbeSlot,
        probe_id: u32,
        record: &[u8],
    ) -> Result<(), Full> {
        let Some(percpu) = self.cpus.get(cpu) else {
            return Err(Full);
        };
        let seq = percpu.next_seq.load(Ordering::Relaxed);
        let time_ns = self.platform.now_ns();
        let pushed = if record.len() <= MAX_RECORD {
            percpu.ring.push(seq, probe_id, time_ns, record).ok()
        } else {
            None
        };
        match pushed {
            Some(_) => percpu.emitted.fetch_add(1, Ordering::Relaxed),
            None => percpu.lost.fetch_add(1, Ordering::Relaxed),
        };
        // After the record is in the ring: the drain reads `next_seq` first, so
        // every number below it is either in the ring or lost.
        percpu.next_seq.store(seq + 1, Ordering::SeqCst);
        match pushed {
            Some(half_full) => {
                if half_full {
                    self.platform.wake_server();
                }
                Ok(())
            }
            None => {
                probe.counters.drops.fetch_add(1, Ordering::Relaxed);
                Err(Full)
            }
        }
    }
}

impl<P: Platform> MarkerSink for Stub<P> {
    #[unsafe(link_section = ".text.probeport")]
    fn fire(&self, site: &'static MarkerSite, args: &[u64]) {
        self.fire_marker(site, args);
    }
}

/// What a jump probe's detour calls (see `crate::jump`): `context` is the
/// detour's frame, `stub` the stub that wrote the detour (a stub serving a port
/// lives in a `static` for as long as the kernel runs).
#[unsafe(link_section = ".text.probeport")]
pub(crate) extern "sysv64" fn jump_entry<P: Platform>(context: &mut ProbeContext, stub: &Stub<P>) {
    // SAFETY: the detour calls this after `cli`, on the probed thread's CPU.
    unsafe { stub.on_jump(context) };
}

/// The context of a register-based site: registers, `PC`, `FLAGS`, `PROBE`.
fn register_context(regs: &TrapRegisters, pc: u64, probe_id: u32) -> ProbeContext {
    let mut context = ProbeContext::default();
    context.slots[..slot::REGISTER_SLOTS].copy_from_slice(&regs.regs);
    context.slots[slot::PC] = pc;
    context.slots[slot::FLAGS] = regs.flags;
    context.slots[slot::PROBE] = u64::from(probe_id);
    context
}

/// The interrupted stack, through the platform's fault-tolerant accessors.
struct PlatformStack<'p, P: Platform> {
    platform: &'p P,
}

impl<P: Platform> StackAccess for PlatformStack<'_, P> {
    #[unsafe(link_section = ".text.probeport")]
    fn read_u64(&mut self, address: u64) -> Result<u64, Fault> {
        let mut word = [0u8; 8];
        self.platform.read_kernel(&mut word, address)?;
        Ok(u64::from_le_bytes(word))
    }

    #[unsafe(link_section = ".text.probeport")]
    fn write_u64(&mut self, address: u64, value: u64) -> Result<(), Fault> {
        self.platform.write_kernel(address, &value.to_le_bytes())
    }
}

/// The helpers of one handler run.
struct Executor<'s, 'v, P: Platform> {
    stub: &'s Stub<P>,
    cpu: usize,
    probe: &'s ProbeSlot,
    probe_id: u32,
    frame_pointer: u64,
    /// The activation's entry slots, when running a return site's entry program.
    entry_values: Option<&'v mut [u64; ENTRY_SLOTS]>,
    /// The map the run used last, with its directory slot and layout: every map
    /// helper asks the interpreter's `map_spec` first and then does its work on
    /// the same map, so this saves the second directory search of each call (and
    /// every search after the first for a program using one map). Valid for the
    /// whole run: a map's layout changes only after the session reaches
    /// quiescence, which waits for this run.
    last_map: Cell<Option<(MapId, usize, &'s MapLayout)>>,
}

impl<'s, P: Platform> Executor<'s, '_, P> {
    /// The directory slot and layout of `map`, through [`Executor::last_map`].
    #[inline(always)]
    fn find_map(&self, map: MapId) -> Option<(usize, &'s MapLayout)> {
        if let Some((last, slot, layout)) = self.last_map.get()
            && last == map
        {
            return Some((slot, layout));
        }
        let (slot, layout) = self.stub.maps.find_published(map)?;
        self.last_map.set(Some((map, slot, layout)));
        Some((slot, layout))
    }

    /// [`Executor::find_map`] out of line, for the map helpers off the
    /// aggregation's hit path: one copy of the directory search for them all.
    #[inline(never)]
    #[unsafe(link_section = ".text.probeport")]
    fn find_map_shared(&self, map: MapId) -> Option<(usize, &'s MapLayout)> {
        self.find_map(map)
    }

    fn fault(&self, fault: Fault) -> Fault {
        self.stub
            .count_fault(self.cpu, self.probe, Some(fault.address));
        fault
    }

    /// Reads a NUL-terminated string in chunks that never cross a 4 KiB page, so
    /// a read beyond the terminator never touches a page the string does not.
    fn read_str(&mut self, dst: &mut [u8], src: u64, user: bool) -> Result<usize, Fault> {
        const PAGE: u64 = 4096;
        let limit = dst.len().saturating_sub(1);
        let mut done = 0;
        while done < limit {
            let address = src.wrapping_add(done as u64);
            let page_left = (PAGE - address % PAGE) as usize;
            let chunk = (limit - done).min(page_left);
            let Some(out) = dst.get_mut(done..done + chunk) else {
                break;
            };
            let read = if user {
                self.stub.platform.read_user(out, address)
            } else {
                self.stub.platform.read_kernel(out, address)
            };
            read.map_err(|fault| self.fault(fault))?;
            if let Some(nul) = out.iter().position(|&byte| byte == 0) {
                return Ok(done + nul + 1);
            }
            done += chunk;
        }
        if let Some(last) = dst.get_mut(limit) {
            *last = 0;
        }
        Ok(limit + 1)
    }
}

impl<P: Platform> Helpers for Executor<'_, '_, P> {
    fn read_kernel(&mut self, dst: &mut [u8], src: u64) -> Result<(), Fault> {
        self.stub
            .platform
            .read_kernel(dst, src)
            .map_err(|fault| self.fault(fault))
    }

    fn read_kernel_str(&mut self, dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        self.read_str(dst, src, false)
    }

    fn read_user(&mut self, dst: &mut [u8], src: u64) -> Result<(), Fault> {
        self.stub
            .platform
            .read_user(dst, src)
            .map_err(|fault| self.fault(fault))
    }

    fn read_user_str(&mut self, dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        self.read_str(dst, src, true)
    }

    fn cpu(&mut self) -> u64 {
        self.cpu as u64
    }

    fn task_id(&mut self) -> u64 {
        self.stub.platform.task_id()
    }

    fn task_name(&mut self, dst: &mut [u8]) -> usize {
        self.stub.platform.task_name(dst)
    }

    fn time_ns(&mut self) -> u64 {
        self.stub.platform.now_ns()
    }

    #[inline(always)]
    fn map_spec(&self, map: MapId) -> Option<MapSpec> {
        self.find_map(map).map(|(_, layout)| layout.spec)
    }

    #[unsafe(link_section = ".text.probeport")]
    fn map_lookup(&mut self, map: MapId, key: &[u8], value: &mut [u8]) -> bool {
        self.find_map_shared(map)
            .is_some_and(|(slot, layout)| self.stub.maps.lookup(slot, layout, key, value, self.cpu))
    }

    #[unsafe(link_section = ".text.probeport")]
    fn map_update(&mut self, map: MapId, key: &[u8], value: &[u8]) -> Result<(), Full> {
        let result = match self.find_map_shared(map) {
            Some((slot, layout)) => self.stub.maps.update(slot, layout, key, value, self.cpu),
            None => Err(Full),
        };
        if result.is_err() {
            self.probe.counters.drops.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn map_delete(&mut self, map: MapId, key: &[u8]) -> bool {
        self.find_map_shared(map)
            .is_some_and(|(slot, layout)| self.stub.maps.delete(slot, layout, key, self.cpu))
    }

    #[inline(always)]
    fn aggregate(&mut self, map: MapId, key: &[u8], value: i64) -> Result<(), Full> {
        let result = match self.find_map(map) {
            Some((slot, layout)) => self.stub.maps.aggregate(slot, layout, key, value, self.cpu),
            None => Err(Full),
        };
        if result.is_err() {
            self.probe.counters.drops.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    #[unsafe(link_section = ".text.probeport")]
    fn emit(&mut self, record: &[u8]) -> Result<(), Full> {
        self.stub.emit(self.cpu, self.probe, self.probe_id, record)
    }

    fn stack_trace(&mut self, dst: &mut [u8]) -> usize {
        let mut frames = [0u64; MAX_STACK_TRACE];
        let room = (dst.len() / 8).min(MAX_STACK_TRACE);
        let count = self
            .stub
            .platform
            .stack_trace(self.frame_pointer, &mut frames[..room])
            .min(room);
        for (chunk, frame) in dst.chunks_exact_mut(8).zip(&frames[..count]) {
            chunk.copy_from_slice(&frame.to_le_bytes());
        }
        count
    }

    fn entry_save(&mut self, slot: usize, value: u64) -> Result<(), EntrySaveError> {
        match self.entry_values.as_deref_mut() {
            Some(values) => {
                if let Some(entry) = values.get_mut(slot) {
                    *entry = value;
                }
                Ok(())
            }
            None => Err(EntrySaveError::NotEntryProgram),
        }
    }
}
