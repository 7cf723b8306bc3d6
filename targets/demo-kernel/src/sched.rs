//! Kernel threads and the scheduler: per-CPU run queues, preemptive round robin,
//! blocking and waking, timed sleeps, and the one function every switch goes through.
//!
//! # Design
//!
//! **Threads.** A static pool of [`MAX_THREADS`] [`Thread`]s with 64 KiB stacks each
//! (no guard pages). A thread has an id (`tid`, its slot + 1, so 0 means "no thread"),
//! a name of up to 16 bytes, a kind (idle, kernel, workload), the CPU it is pinned to,
//! its right table (`ipc.rs`) and optionally a simulated address space (`vm.rs`). The
//! id and the name are what the probe stub reports as `task_id` / `task_name`. Slots are
//! never reused: a thread that exits stays `Dead`.
//!
//! **Run queues and affinity.** Each CPU has its own FIFO run queue behind its own spin
//! lock. A thread is pinned to one CPU for its whole life (its affinity), so a thread
//! is only ever queued on, and run by, its home CPU; waking a thread homed elsewhere
//! queues it there and sends that CPU a reschedule IPI. Because threads never migrate,
//! a thread that is being switched out on its CPU cannot be picked up by another CPU
//! before its registers are saved: only its own CPU pops its queue, and that CPU is
//! busy switching.
//!
//! **Scheduling.** [`schedule`] runs with interrupts off: it puts the current thread
//! back at the tail of the queue if it is still runnable, pops the head (or falls back
//! to the CPU's idle thread) and calls [`switch_to`]. It is entered by a voluntary
//! [`yield_now`], by blocking, by exiting, and from interrupts: the LAPIC timer (each
//! tick is one time slice: round robin), the reschedule IPI and COM2's interrupt. The
//! idle thread of each CPU is the context the CPU booted on: it halts with interrupts
//! on (`sti; hlt`) whenever its queue is empty.
//!
//! **Blocking.** A thread that must wait puts itself on a [`WaitList`] under the lock
//! that protects the condition, then calls [`block`] with that lock's guard: `block`
//! marks it `Blocked` (under its run-queue lock) *before* releasing the caller's lock,
//! so a waker, which takes the waiter off the list under that same lock, always finds
//! it `Blocked` or later — no wake-up is lost. [`wake`] turns `Blocked` into `Ready`
//! and queues it; waking a thread that is not blocked does nothing. Every wait is a
//! loop that re-checks its condition, so spurious wake-ups are harmless.
//!
//! **The switch.** [`switch_to`] (`#[inline(never)]`) is the single function every
//! context switch passes through: the `sched:switch` marker site and a probe point.
//! The assembly routine `demo_context_switch` pushes the callee-saved registers (rbx,
//! rbp, r12-r15) on the old stack, stores the stack pointer in the old thread, loads
//! the new thread's and pops them (the caller-saved registers are saved by the
//! compiler around the call). The kernel uses no FPU/SSE state (soft-float target),
//! so there is nothing else to save. A new thread's stack is prepared so that the
//! first switch "returns" into `demo_thread_entry`, which calls [`thread_start`].
//!
//! # Invariants
//!
//! - Lock order: a condition's lock (port, event) before a run-queue lock; never the
//!   other way round. Nothing is locked across [`switch_to`].
//! - [`schedule`] is never called with a spin lock held (spin locks disable interrupts,
//!   so the timer cannot preempt a lock holder either).
//! - A thread's `state` changes only under its home CPU's run-queue lock.
//! - The fields of a [`Thread`] other than its atomics and locks are written once,
//!   before the slot is published, and only read afterwards.
//! - Probe context may read [`current_tid`] and a thread's name, nothing else here.

use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::fmt;
use core::ptr;
use core::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

use crate::apic;
use crate::cpu;
use crate::ipc::RightTable;
use crate::marker::trace_marker;
use crate::percpu::{self, MAX_CPUS};
use crate::sync::{SpinLock, SpinLockGuard};
use crate::traps::RESCHEDULE_VECTOR;
use crate::vm::VmMap;

/// Threads the kernel can have over its whole life (idle threads included).
pub(crate) const MAX_THREADS: usize = 16;
/// Stack size of every thread but the idle ones (which keep their boot stacks).
pub(crate) const THREAD_STACK_SIZE: usize = 64 * 1024;
/// Longest thread name kept (longer names are cut).
pub(crate) const NAME_CAPACITY: usize = 16;

const _: () = assert!(
    MAX_THREADS <= 32,
    "a WaitList is a 32-bit set of thread slots"
);

/// What a thread is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ThreadKind {
    /// A CPU's idle thread (the context it booted on).
    Idle,
    /// A kernel service thread (init, relay, ...).
    Kernel,
    /// A thread of the workload: its switches are counted as ground truth.
    Workload,
}

/// Where a thread is in its life.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ThreadState {
    /// Created, not started yet.
    New = 0,
    /// On its CPU's run queue.
    Ready = 1,
    /// Running on its CPU (idle threads stay in this state).
    Running = 2,
    /// Waiting for a wake-up.
    Blocked = 3,
    /// Exited; never runs again.
    Dead = 4,
}

impl ThreadState {
    fn from_raw(raw: u8) -> ThreadState {
        match raw {
            0 => ThreadState::New,
            1 => ThreadState::Ready,
            2 => ThreadState::Running,
            3 => ThreadState::Blocked,
            _ => ThreadState::Dead,
        }
    }
}

/// A kernel thread (see the module docs).
#[repr(C)]
pub(crate) struct Thread {
    /// Thread id: slot + 1, never 0.
    pub(crate) id: u32,
    /// The CPU the thread is pinned to.
    pub(crate) cpu: u32,
    /// What the thread is for.
    pub(crate) kind: ThreadKind,
    name: [u8; NAME_CAPACITY],
    name_length: u8,
    entry: Option<fn(usize)>,
    argument: usize,
    state: AtomicU8,
    /// The stack pointer saved by the last switch away from this thread.
    saved_stack_pointer: AtomicU64,
    /// The tick (of the home CPU) at which a timed wait ends; 0 for none.
    wake_at_tick: AtomicU64,
    /// Set once a dead thread has been switched away from for the last time.
    exited: AtomicBool,
    /// The thread's rights (port names), see `ipc.rs`.
    pub(crate) rights: SpinLock<RightTable>,
    /// The simulated address space the syscall-like interface works on, or null.
    pub(crate) address_space: AtomicPtr<VmMap>,
    /// Where the thread resumes from the interrupts in progress on it, innermost
    /// last (see [`interrupted`]): a thread preempted by a timer tick keeps its
    /// entry until it runs again and returns from that interrupt.
    interrupted_pc: [AtomicU64; INTERRUPT_NESTING],
    /// Entries of `interrupted_pc` in use.
    interrupt_depth: AtomicUsize,
}

/// Interrupts that may be in progress on one thread at once and are recorded (the
/// kernel's interrupt gates do not nest; one more level is headroom).
const INTERRUPT_NESTING: usize = 4;

impl Thread {
    const fn vacant() -> Thread {
        Thread {
            id: 0,
            cpu: 0,
            kind: ThreadKind::Kernel,
            name: [0; NAME_CAPACITY],
            name_length: 0,
            entry: None,
            argument: 0,
            state: AtomicU8::new(ThreadState::New as u8),
            saved_stack_pointer: AtomicU64::new(0),
            wake_at_tick: AtomicU64::new(0),
            exited: AtomicBool::new(false),
            rights: SpinLock::new(RightTable::new()),
            address_space: AtomicPtr::new(ptr::null_mut()),
            interrupted_pc: [const { AtomicU64::new(0) }; INTERRUPT_NESTING],
            interrupt_depth: AtomicUsize::new(0),
        }
    }

    /// The thread's name.
    pub(crate) fn name(&self) -> &str {
        core::str::from_utf8(&self.name[..usize::from(self.name_length)]).unwrap_or("?")
    }

    /// Where the thread is in its life.
    pub(crate) fn state(&self) -> ThreadState {
        ThreadState::from_raw(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: ThreadState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Whether the thread is dead and its CPU has switched away from it for good.
    pub(crate) fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }

    fn slot(&self) -> usize {
        self.id as usize - 1
    }
}

impl fmt::Display for Thread {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "thread {} ({})", self.id, self.name())
    }
}

/// One slot of the thread pool.
struct ThreadSlot {
    published: AtomicBool,
    thread: UnsafeCell<Thread>,
}

// SAFETY: a slot's thread is written only by the creator that claimed the slot (an
// atomic counter hands each slot out once), before `published` is set with release
// ordering; everyone else reads it only after seeing `published` (acquire), and then
// only reads plain fields or uses the atomics and locks.
unsafe impl Sync for ThreadSlot {}

static THREADS: [ThreadSlot; MAX_THREADS] = [const {
    ThreadSlot {
        published: AtomicBool::new(false),
        thread: UnsafeCell::new(Thread::vacant()),
    }
}; MAX_THREADS];

/// Next unclaimed slot.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// A thread stack, a zero-initialised static.
#[repr(C, align(16))]
struct Stack(UnsafeCell<[u8; THREAD_STACK_SIZE]>);

// SAFETY: each stack belongs to the thread of the same slot and is only used by it
// (and by its creator, which writes the initial frame before publishing the thread).
unsafe impl Sync for Stack {}

static STACKS: [Stack; MAX_THREADS] =
    [const { Stack(UnsafeCell::new([0; THREAD_STACK_SIZE])) }; MAX_THREADS];

/// The thread in `slot`, if published.
fn published(slot: usize) -> Option<&'static Thread> {
    let entry = THREADS.get(slot)?;
    if !entry.published.load(Ordering::Acquire) {
        return None;
    }
    // SAFETY: published, so no one writes the slot any more (see `ThreadSlot`).
    Some(unsafe { &*entry.thread.get() })
}

/// The thread with id `tid`. Panics for an id no thread has.
pub(crate) fn thread(tid: u32) -> &'static Thread {
    (tid as usize)
        .checked_sub(1)
        .and_then(published)
        .unwrap_or_else(|| panic!("no thread with id {tid}"))
}

/// Every published thread, in id order.
pub(crate) fn threads() -> impl Iterator<Item = &'static Thread> {
    (0..MAX_THREADS).map_while(published)
}

/// A set of waiting threads (by slot), kept under the lock of what they wait for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WaitList(u32);

impl WaitList {
    /// An empty list.
    pub(crate) const fn new() -> WaitList {
        WaitList(0)
    }

    /// Adds `thread`.
    pub(crate) fn add(&mut self, thread: &Thread) {
        self.0 |= 1 << thread.slot();
    }

    /// Takes every waiter out of the list.
    pub(crate) fn take(&mut self) -> WaitList {
        core::mem::take(self)
    }

    /// Wakes every thread in the list (call after releasing the lock).
    pub(crate) fn wake_all(self) {
        let mut bits = self.0;
        while bits != 0 {
            let slot = bits.trailing_zeros();
            bits &= bits - 1;
            wake(thread(slot + 1));
        }
    }
}

/// A CPU's run queue: thread slots in FIFO order.
struct RunQueue {
    slots: [u8; MAX_THREADS],
    head: usize,
    length: usize,
}

impl RunQueue {
    const fn new() -> RunQueue {
        RunQueue {
            slots: [0; MAX_THREADS],
            head: 0,
            length: 0,
        }
    }

    fn push(&mut self, thread: &Thread) {
        // Each thread is queued at most once (only `Ready` threads are queued, and a
        // thread becomes `Ready` once per wake-up), so the queue cannot overflow.
        assert!(self.length < MAX_THREADS, "run queue overflow");
        self.slots[(self.head + self.length) % MAX_THREADS] = thread.slot() as u8;
        self.length += 1;
    }

    fn pop(&mut self) -> Option<&'static Thread> {
        if self.length == 0 {
            return None;
        }
        let slot = self.slots[self.head];
        self.head = (self.head + 1) % MAX_THREADS;
        self.length -= 1;
        Some(thread(u32::from(slot) + 1))
    }

    fn is_empty(&self) -> bool {
        self.length == 0
    }
}

static RUN_QUEUES: [SpinLock<RunQueue>; MAX_CPUS] =
    [const { SpinLock::new(RunQueue::new()) }; MAX_CPUS];

/// Each CPU's idle thread id (0 until `init`).
static IDLE_THREADS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// CPUs the scheduler runs on.
static CPU_COUNT: AtomicUsize = AtomicUsize::new(0);

/// Set by [`start`]: application processors enter their idle threads.
static STARTED: AtomicBool = AtomicBool::new(false);

/// Context switches on every CPU since the scheduler started.
pub(crate) static SWITCHES: AtomicU64 = AtomicU64::new(0);

/// Switches into or out of a workload thread since [`count_workload_switches`].
pub(crate) static WORKLOAD_SWITCHES: AtomicU64 = AtomicU64::new(0);
static COUNTING_WORKLOAD_SWITCHES: AtomicBool = AtomicBool::new(false);

/// Starts counting switches that involve workload threads (the workload's start).
pub(crate) fn count_workload_switches() {
    COUNTING_WORKLOAD_SWITCHES.store(true, Ordering::SeqCst);
}

/// Why a thread could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpawnError {
    /// Every slot of the pool is taken.
    TooManyThreads,
    /// The CPU does not run the scheduler.
    NoSuchCpu(usize),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::TooManyThreads => {
                write!(formatter, "all {MAX_THREADS} thread slots are taken")
            }
            SpawnError::NoSuchCpu(cpu) => write!(formatter, "cpu {cpu} is not scheduled"),
        }
    }
}

/// Claims a slot and fills it; the thread is published in state `New`.
fn claim(
    name: &str,
    cpu: usize,
    kind: ThreadKind,
    entry: Option<fn(usize)>,
    argument: usize,
) -> Result<&'static Thread, SpawnError> {
    if cpu >= CPU_COUNT.load(Ordering::Acquire) {
        return Err(SpawnError::NoSuchCpu(cpu));
    }
    let slot = NEXT_SLOT.fetch_add(1, Ordering::AcqRel);
    if slot >= MAX_THREADS {
        return Err(SpawnError::TooManyThreads);
    }
    let saved_stack_pointer = if entry.is_some() {
        prepare_stack(slot)
    } else {
        0
    };
    // SAFETY: the slot was handed out once by the counter above and is not published
    // yet, so no other reference to it exists (see `ThreadSlot`).
    let thread = unsafe { &mut *THREADS[slot].thread.get() };
    let length = name.len().min(NAME_CAPACITY);
    thread.id = slot as u32 + 1;
    thread.cpu = cpu as u32;
    thread.kind = kind;
    thread.name[..length].copy_from_slice(&name.as_bytes()[..length]);
    thread.name_length = length as u8;
    thread.entry = entry;
    thread.argument = argument;
    thread
        .saved_stack_pointer
        .store(saved_stack_pointer, Ordering::Relaxed);
    THREADS[slot].published.store(true, Ordering::Release);
    Ok(thread)
}

/// Writes the frame the first switch into a new thread pops (see the module docs) and
/// returns the thread's initial stack pointer.
fn prepare_stack(slot: usize) -> u64 {
    let top = STACKS[slot].0.get() as u64 + THREAD_STACK_SIZE as u64;
    // In address order: r15, r14, r13, r12, rbx, rbp (all zero, so the frame-pointer
    // chain ends here), the return address into `demo_thread_entry`, and two zero
    // words up to the top, so that after the `ret` the stack pointer is 16-byte
    // aligned, as the `call` there wants.
    let frame: [u64; 9] = [
        0,
        0,
        0,
        0,
        0,
        0,
        demo_thread_entry as *const () as u64,
        0,
        0,
    ];
    let start = top - size_of_val(&frame) as u64;
    // SAFETY: the stack belongs to the slot being created, which nothing runs on yet;
    // the frame lies inside it (72 bytes below the 16-byte aligned top).
    unsafe { ptr::copy_nonoverlapping(frame.as_ptr(), start as *mut u64, frame.len()) };
    start
}

/// Creates a thread pinned to `cpu`, in state `New`: grant it rights, then [`start_thread`].
pub(crate) fn create(
    name: &str,
    cpu: usize,
    kind: ThreadKind,
    entry: fn(usize),
    argument: usize,
) -> Result<&'static Thread, SpawnError> {
    claim(name, cpu, kind, Some(entry), argument)
}

/// Makes a `New` thread runnable on its CPU.
pub(crate) fn start_thread(thread: &Thread) {
    assert_eq!(thread.state(), ThreadState::New, "{thread} started twice");
    make_ready(thread, ThreadState::New);
}

/// Creates and starts a thread.
pub(crate) fn spawn(
    name: &str,
    cpu: usize,
    kind: ThreadKind,
    entry: fn(usize),
    argument: usize,
) -> Result<&'static Thread, SpawnError> {
    let thread = create(name, cpu, kind, entry, argument)?;
    start_thread(thread);
    Ok(thread)
}

/// Creates the idle threads of CPUs `0..cpu_count`. Called once, by the BSP, before
/// any other thread exists.
pub(crate) fn init(cpu_count: usize) {
    const IDLE_NAMES: [&str; MAX_CPUS] = [
        "idle/0", "idle/1", "idle/2", "idle/3", "idle/4", "idle/5", "idle/6", "idle/7", "idle/8",
        "idle/9", "idle/10", "idle/11", "idle/12", "idle/13", "idle/14", "idle/15",
    ];
    CPU_COUNT.store(cpu_count.min(MAX_CPUS), Ordering::Release);
    for (cpu, name) in IDLE_NAMES.iter().enumerate().take(cpu_count) {
        let idle = claim(name, cpu, ThreadKind::Idle, None, 0)
            .unwrap_or_else(|error| panic!("creating {name}: {error}"));
        IDLE_THREADS[cpu].store(idle.id, Ordering::Release);
    }
}

/// CPUs the scheduler runs on.
pub(crate) fn cpu_count() -> usize {
    CPU_COUNT.load(Ordering::Acquire)
}

/// Lets the application processors enter their idle threads ([`enter`]).
pub(crate) fn start() {
    STARTED.store(true, Ordering::Release);
}

/// Whether [`start`] ran.
pub(crate) fn started() -> bool {
    STARTED.load(Ordering::Acquire)
}

/// Turns the calling context into this CPU's idle thread and schedules forever.
pub(crate) fn enter(cpu: usize) -> ! {
    let idle = thread(IDLE_THREADS[cpu].load(Ordering::Acquire));
    idle.set_state(ThreadState::Running);
    percpu::current()
        .current_thread
        .store(idle.id, Ordering::Release);
    loop {
        cpu::disable_interrupts();
        // The guard restores the interrupt flag it found: off.
        let idle_now = RUN_QUEUES[cpu].lock().is_empty();
        if idle_now {
            // `sti; hlt` is atomic: a wake-up IPI sent after the check still ends the halt.
            cpu::enable_interrupts_and_halt();
        } else {
            schedule();
        }
    }
}

/// The id of the thread running on this CPU, 0 before the scheduler runs here.
/// Safe in probe context (one load through the per-CPU block).
pub(crate) fn current_tid() -> u32 {
    percpu::current().current_thread.load(Ordering::Acquire)
}

/// Copies the current thread's name into `dst` (cut to fit) and returns its
/// length; 0 before the scheduler runs here. For the probe stub's `task_name`
/// helper: no lock, no panic. Not inlined, and not in the probe stub's forbidden
/// text: it only runs inside handlers, so a probe on it is a re-entered hit
/// (`probe_platform.rs`).
#[inline(never)]
pub(crate) fn copy_current_name(dst: &mut [u8]) -> usize {
    let Some(thread) = (percpu::fast_thread_id() as usize)
        .checked_sub(1)
        .and_then(published)
    else {
        return 0;
    };
    let name = &thread.name[..usize::from(thread.name_length)];
    let length = name.len().min(dst.len());
    dst[..length].copy_from_slice(&name[..length]);
    length
}

/// Records that an interrupt which may preempt (a tick, an IPI, a device) arrived
/// on this CPU at `pc`; returns what [`interrupt_done`] needs. Interrupts off.
pub(crate) fn interrupted(pc: u64) -> Option<&'static Thread> {
    let thread = (current_tid() as usize)
        .checked_sub(1)
        .and_then(published)?;
    let depth = thread.interrupt_depth.load(Ordering::Relaxed);
    if let Some(slot) = thread.interrupted_pc.get(depth) {
        slot.store(pc, Ordering::SeqCst);
        thread.interrupt_depth.store(depth + 1, Ordering::SeqCst);
    }
    Some(thread)
}

/// Ends what [`interrupted`] recorded, on the same thread (which may have been
/// switched out and back in meanwhile). Interrupts off.
pub(crate) fn interrupt_done(thread: Option<&'static Thread>) {
    if let Some(thread) = thread {
        let depth = thread.interrupt_depth.load(Ordering::Relaxed);
        if depth > 0 && depth <= INTERRUPT_NESTING {
            thread.interrupt_depth.store(depth - 1, Ordering::SeqCst);
        }
    }
}

/// Whether some thread would resume, from an interrupt in progress on it, at an
/// address inside one of `ranges`. Meaningful while every other CPU is held (the
/// probe platform's stopped writes): then no record changes.
pub(crate) fn any_resumes_in(ranges: &[core::ops::Range<u64>]) -> bool {
    // Every published slot: a slot claimed but not yet published may sit between
    // published ones (`threads` stops at the first gap).
    (0..MAX_THREADS).filter_map(published).any(|thread| {
        let depth = thread
            .interrupt_depth
            .load(Ordering::SeqCst)
            .min(INTERRUPT_NESTING);
        thread.interrupted_pc[..depth].iter().any(|pc| {
            let pc = pc.load(Ordering::SeqCst);
            ranges.iter().any(|range| range.contains(&pc))
        })
    })
}

/// The thread running on this CPU. Panics before the scheduler runs here.
pub(crate) fn current() -> &'static Thread {
    thread(current_tid())
}

/// Wakes `thread` if it is blocked: it becomes ready on its CPU, which gets a
/// reschedule IPI when it is another CPU. Waking a thread that is not blocked does
/// nothing.
pub(crate) fn wake(thread: &Thread) {
    make_ready(thread, ThreadState::Blocked);
}

/// `from` → `Ready` and queued on the thread's CPU, if the thread is in state `from`.
fn make_ready(thread: &Thread, from: ThreadState) {
    let cpu = thread.cpu as usize;
    let queued = {
        let mut queue = RUN_QUEUES[cpu].lock();
        let queued = thread.state() == from;
        if queued {
            thread.set_state(ThreadState::Ready);
            queue.push(thread);
        }
        queued
    };
    let home = percpu::slot(cpu);
    let home_schedules = home.current_thread.load(Ordering::Acquire) != 0;
    if queued && home_schedules && cpu != percpu::current().index() {
        apic::send_fixed_ipi(home.apic_id.load(Ordering::Relaxed), RESCHEDULE_VECTOR);
    }
}

/// Marks the current thread blocked, releases `guard` (the lock of the condition it
/// waits for, under which it put itself on a [`WaitList`]) and switches away until
/// woken. See the module docs for why no wake-up is lost.
pub(crate) fn block<T>(guard: SpinLockGuard<'_, T>) {
    let me = current();
    {
        let _queue = RUN_QUEUES[me.cpu as usize].lock();
        me.set_state(ThreadState::Blocked);
    }
    drop(guard);
    schedule();
}

/// Puts the current thread to sleep for `ticks` timer ticks (at least one).
pub(crate) fn sleep_ticks(ticks: u64) {
    let me = current();
    let interrupts_were_enabled = cpu::interrupts_enabled();
    cpu::disable_interrupts();
    me.wake_at_tick
        .store(crate::time::ticks() + ticks.max(1), Ordering::Release);
    {
        let _queue = RUN_QUEUES[me.cpu as usize].lock();
        me.set_state(ThreadState::Blocked);
    }
    schedule();
    me.wake_at_tick.store(0, Ordering::Release);
    if interrupts_were_enabled {
        cpu::enable_interrupts();
    }
}

/// Gives the CPU to the next ready thread of this CPU, if any.
pub(crate) fn yield_now() {
    schedule();
}

/// Ends the current thread.
pub(crate) fn exit() -> ! {
    let me = current();
    cpu::disable_interrupts();
    {
        let _queue = RUN_QUEUES[me.cpu as usize].lock();
        me.set_state(ThreadState::Dead);
    }
    schedule();
    unreachable!("{me} ran after it exited");
}

/// Picks the next thread of this CPU and switches to it (see the module docs).
fn schedule() {
    let interrupts_were_enabled = cpu::interrupts_enabled();
    cpu::disable_interrupts();
    let block = percpu::current();
    let cpu = block.index();
    let previous = thread(block.current_thread.load(Ordering::Acquire));
    let next = {
        let mut queue = RUN_QUEUES[cpu].lock();
        if previous.state() == ThreadState::Running && previous.kind != ThreadKind::Idle {
            previous.set_state(ThreadState::Ready);
            queue.push(previous);
        }
        // A `Ready` previous thread was woken after it marked itself blocked and is
        // queued already; a `Blocked` or `Dead` one leaves the CPU.
        let next = queue
            .pop()
            .unwrap_or_else(|| thread(IDLE_THREADS[cpu].load(Ordering::Acquire)));
        next.set_state(ThreadState::Running);
        next
    };
    if !ptr::eq(previous, next) {
        switch_to(previous, next, cpu as u32);
    }
    if interrupts_were_enabled {
        cpu::enable_interrupts();
    }
}

/// Switches this CPU from `prev` to `next`. Every context switch passes through here
/// (marker `sched:switch`). Runs with interrupts off and no lock held; returns when
/// `prev` is switched back in.
#[inline(never)]
pub(crate) fn switch_to(prev: &Thread, next: &Thread, cpu: u32) {
    trace_marker!(
        "sched:switch",
        prev: U32 = prev.id,
        next: U32 = next.id,
        cpu: U32 = cpu
    );
    SWITCHES.fetch_add(1, Ordering::Relaxed);
    if COUNTING_WORKLOAD_SWITCHES.load(Ordering::Relaxed)
        && (prev.kind == ThreadKind::Workload || next.kind == ThreadKind::Workload)
    {
        WORKLOAD_SWITCHES.fetch_add(1, Ordering::Relaxed);
    }
    percpu::slot(cpu as usize)
        .current_thread
        .store(next.id, Ordering::Release);
    if prev.state() == ThreadState::Dead {
        // Counted above: whoever waits for the thread's end may read the counters now
        // (its stack stays allocated, so finishing the switch on it is fine).
        prev.exited.store(true, Ordering::Release);
    }
    // SAFETY: `prev` is the thread running on this CPU (this code runs on its stack)
    // and `next` a thread of this CPU whose saved stack pointer holds the frame
    // `demo_context_switch` pops: saved by an earlier switch away from it, or
    // prepared by `prepare_stack`. Interrupts are off, so nothing runs in between.
    unsafe {
        demo_context_switch(
            prev.saved_stack_pointer.as_ptr(),
            next.saved_stack_pointer.load(Ordering::Acquire),
        );
    }
}

/// First Rust code of every new thread (called from `demo_thread_entry`).
extern "C" fn thread_start() -> ! {
    let me = current();
    // The switch into this thread happened with interrupts off.
    cpu::enable_interrupts();
    if let Some(entry) = me.entry {
        entry(me.argument);
    }
    exit()
}

/// Timer tick on this CPU (interrupt context, after the EOI): wakes the threads whose
/// timed wait ended, then lets the next ready thread run (round robin). Never
/// inlined: a probe point (the tests arm it).
#[inline(never)]
pub(crate) fn on_tick() {
    let block = percpu::current();
    if block.current_thread.load(Ordering::Acquire) == 0 {
        return;
    }
    let cpu = block.index() as u32;
    let now = block.timer_ticks.load(Ordering::Relaxed);
    for thread in threads().filter(|thread| thread.cpu == cpu) {
        let wake_at = thread.wake_at_tick.load(Ordering::Acquire);
        if wake_at != 0 && wake_at <= now {
            thread.wake_at_tick.store(0, Ordering::Release);
            wake(thread);
        }
    }
    schedule();
}

/// From an interrupt that woke a thread of this CPU (the reschedule IPI, COM2), after
/// the EOI: let the next ready thread run now rather than at the next tick.
pub(crate) fn preempt() {
    if percpu::current().current_thread.load(Ordering::Acquire) != 0 {
        schedule();
    }
}

/// A one-shot event threads can wait for; once signalled it stays signalled.
pub(crate) struct Event {
    state: SpinLock<(bool, WaitList)>,
}

impl Event {
    pub(crate) const fn new() -> Event {
        Event {
            state: SpinLock::new((false, WaitList::new())),
        }
    }

    /// Signals the event, waking every waiter.
    pub(crate) fn signal(&self) {
        let waiters = {
            let mut state = self.state.lock();
            state.0 = true;
            state.1.take()
        };
        waiters.wake_all();
    }

    /// Whether the event was signalled.
    pub(crate) fn is_signalled(&self) -> bool {
        self.state.lock().0
    }

    /// Blocks until the event is signalled.
    pub(crate) fn wait(&self) {
        loop {
            let mut state = self.state.lock();
            if state.0 {
                return;
            }
            state.1.add(current());
            block(state);
        }
    }
}

/// A doorbell: `ring` (from any context, interrupts included) leaves one pending
/// notification that the next `wait` consumes.
pub(crate) struct Doorbell {
    state: SpinLock<(bool, WaitList)>,
}

impl Doorbell {
    pub(crate) const fn new() -> Doorbell {
        Doorbell {
            state: SpinLock::new((false, WaitList::new())),
        }
    }

    /// Leaves a notification and wakes the waiters.
    pub(crate) fn ring(&self) {
        let waiters = {
            let mut state = self.state.lock();
            state.0 = true;
            state.1.take()
        };
        waiters.wake_all();
    }

    /// Waits until rung or `timeout_ticks` pass; returns whether it was rung (and
    /// consumes the notification).
    pub(crate) fn wait_timeout(&self, timeout_ticks: u64) -> bool {
        let me = current();
        let deadline = crate::time::ticks() + timeout_ticks.max(1);
        loop {
            let mut state = self.state.lock();
            if core::mem::take(&mut state.0) {
                return true;
            }
            if crate::time::ticks() >= deadline {
                return false;
            }
            state.1.add(me);
            me.wake_at_tick.store(deadline, Ordering::Release);
            block(state);
            me.wake_at_tick.store(0, Ordering::Release);
        }
    }
}

unsafe extern "C" {
    /// Saves the callee-saved registers and the stack pointer at `save_stack_pointer`,
    /// loads `load_stack_pointer` and restores the registers found there.
    fn demo_context_switch(save_stack_pointer: *mut u64, load_stack_pointer: u64);
    /// Where a new thread's first switch returns to: calls [`thread_start`].
    fn demo_thread_entry();
}

global_asm!(
    r#"
    .pushsection .text.demo_context_switch, "ax"
    .global demo_context_switch
demo_context_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret

    .global demo_thread_entry
demo_thread_entry:
    /* The stack pointer is 16-byte aligned here (see prepare_stack). */
    call {thread_start}
    ud2
    .popsection
    "#,
    thread_start = sym thread_start,
    options(att_syntax),
);
