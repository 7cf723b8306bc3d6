//! The workload: client and server threads on both CPUs passing messages over ports,
//! faulting pages in, making syscall-like calls — with exact ground truth.
//!
//! # Design
//!
//! One server thread (CPU 0) and [`CLIENTS`] client threads (client `c` on CPU
//! `c % cpus`) are created at boot with their rights (fixed names, like well-known
//! ports):
//!
//! | thread   | right name | right                                  |
//! |----------|------------|----------------------------------------|
//! | server   | 0          | receive right to `workload.request`    |
//! | server   | 1 + c      | send right to `workload.reply.c`       |
//! | client c | 0          | send right to `workload.request`       |
//! | client c | 1          | receive right to `workload.reply.c`    |
//!
//! Each client owns a simulated address space (`vm.rs`). Every round it stores to its
//! address space, sends a request, waits for the reply and checks it; it yields every
//! few rounds and ages its map at the end of every window — all through the
//! syscall-like interface (`sys.rs`) except the ageing, which is the kernel's page-out
//! scan. The server answers each request with a digest of it. The request port holds
//! only two messages, so senders really block; replies wake clients on both CPUs.
//! `workload_plan.rs` fixes the pattern and gives the exact totals.
//!
//! Start: every workload thread first waits at a gate. Without `demo.wait_start` the
//! init thread opens it at once; with it, the gate stays shut until [`release`] — the
//! call the stub integration makes when the client sends `Start`. [`release`] is also
//! where counting of workload switches begins. Done: each thread reports when it
//! finishes; [`wait_done`] returns once every one has also been switched away from for
//! the last time, so every counter is final.
//!
//! # Invariants
//!
//! - The totals depend on the number of rounds only, never on timing; only the
//!   `switches` count depends on how the threads interleaved.
//! - Only workload threads use ports, faults and syscalls, so the kernel-wide
//!   counters are the workload's.

use alloc::boxed::Box;
use core::fmt;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::console::println;
use crate::ipc::{self, Message, PortId, RightKind, RightName};
use crate::sched::{self, Event, Thread, ThreadKind};
use crate::sys::{self, SysError};
use crate::vm::{self, Access, VmMap};
use crate::workload_plan::{
    self as plan, CLIENT_VM_BASE, CLIENTS, PAGES_PER_CLIENT, REPLY_QUEUE_LIMIT, REPLY_SIZE,
    REQUEST_QUEUE_LIMIT, Totals,
};
use crate::{heap, verdict};

/// Workload threads: the clients and the server.
pub(crate) const THREADS: usize = CLIENTS + 1;

/// The server's receive right to the request port.
const SERVER_REQUEST_RIGHT: RightName = RightName(0);
/// A client's send right to the request port.
const CLIENT_REQUEST_RIGHT: RightName = RightName(0);
/// A client's receive right to its reply port.
const CLIENT_REPLY_RIGHT: RightName = RightName(1);

/// The server's send right to client `client`'s reply port.
fn server_reply_right(client: usize) -> RightName {
    RightName(1 + client as u32)
}

const CLIENT_NAMES: [&str; CLIENTS] = ["client/0", "client/1", "client/2", "client/3"];
const REPLY_PORT_LABELS: [&str; CLIENTS] = [
    "workload.reply.0",
    "workload.reply.1",
    "workload.reply.2",
    "workload.reply.3",
];

static ROUNDS: AtomicU32 = AtomicU32::new(0);
static START: Event = Event::new();
static DONE: Event = Event::new();
static RELEASED: AtomicBool = AtomicBool::new(false);
/// Threads that reached the start gate.
static AT_GATE: AtomicU32 = AtomicU32::new(0);
/// Threads that finished their part.
static FINISHED: AtomicU32 = AtomicU32::new(0);
/// Ids of the workload threads (server first).
static THREAD_IDS: [AtomicU32; THREADS] = [const { AtomicU32::new(0) }; THREADS];

/// Why a client's round or the server's loop failed (a kernel bug: the run fails).
#[derive(Clone, Copy, Debug)]
enum WorkloadError {
    Call(SysError),
    BadReply { expected: u64, got: Message },
    BadRequest(Message),
}

impl From<SysError> for WorkloadError {
    fn from(error: SysError) -> Self {
        WorkloadError::Call(error)
    }
}

impl fmt::Display for WorkloadError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadError::Call(error) => write!(formatter, "{error}"),
            WorkloadError::BadReply { expected, got } => {
                write!(
                    formatter,
                    "expected digest {expected:#x}, got reply {got:?}"
                )
            }
            WorkloadError::BadRequest(message) => {
                write!(formatter, "malformed request {message:?}")
            }
        }
    }
}

fn setup_failed(what: &str, error: impl fmt::Display) -> ! {
    verdict::fail(format_args!("workload setup: {what}: {error}"))
}

fn grant(thread: &Thread, port: PortId, kind: RightKind, expected: RightName) {
    match ipc::grant(thread, port, kind) {
        Ok(name) if name == expected => {}
        Ok(name) => setup_failed(
            "right names",
            format_args!("{thread} got name {} instead of {}", name.0, expected.0),
        ),
        Err(error) => setup_failed("granting a right", error),
    }
}

/// Creates the ports and threads of a `rounds`-round workload; the threads start and
/// wait at the gate.
pub(crate) fn prepare(rounds: u32) {
    ROUNDS.store(rounds, Ordering::Release);
    let cpus = sched::cpu_count();
    let request_port = ipc::create_port("workload.request", REQUEST_QUEUE_LIMIT)
        .unwrap_or_else(|error| setup_failed("request port", error));
    let server = sched::create("server", 0, ThreadKind::Workload, server_main, 0)
        .unwrap_or_else(|error| setup_failed("server thread", error));
    grant(
        server,
        request_port,
        RightKind::Receive,
        SERVER_REQUEST_RIGHT,
    );
    THREAD_IDS[0].store(server.id, Ordering::Release);

    let mut clients: [Option<&'static Thread>; CLIENTS] = [None; CLIENTS];
    for (index, client) in clients.iter_mut().enumerate() {
        let reply_port = ipc::create_port(REPLY_PORT_LABELS[index], REPLY_QUEUE_LIMIT)
            .unwrap_or_else(|error| setup_failed("reply port", error));
        let thread = sched::create(
            CLIENT_NAMES[index],
            index % cpus,
            ThreadKind::Workload,
            client_main,
            index,
        )
        .unwrap_or_else(|error| setup_failed("client thread", error));
        grant(thread, request_port, RightKind::Send, CLIENT_REQUEST_RIGHT);
        grant(thread, reply_port, RightKind::Receive, CLIENT_REPLY_RIGHT);
        grant(
            server,
            reply_port,
            RightKind::Send,
            server_reply_right(index),
        );
        THREAD_IDS[1 + index].store(thread.id, Ordering::Release);
        *client = Some(thread);
    }
    sched::start_thread(server);
    for client in clients.into_iter().flatten() {
        sched::start_thread(client);
    }
}

/// Waits until every workload thread reached the start gate.
pub(crate) fn wait_until_all_at_gate() {
    while AT_GATE.load(Ordering::Acquire) < THREADS as u32 {
        sched::sleep_ticks(1);
    }
}

/// Opens the start gate: the workload runs. Idempotent. The stub integration calls
/// this when the client sends `Start` (with `demo.wait_start`); otherwise the init
/// thread does at boot.
#[inline(never)]
pub(crate) fn release() {
    if RELEASED.swap(true, Ordering::AcqRel) {
        return;
    }
    sched::count_workload_switches();
    println!(
        "workload: started: {} rounds, {CLIENTS} clients on {} cpu(s), server on cpu 0",
        ROUNDS.load(Ordering::Acquire),
        sched::cpu_count()
    );
    START.signal();
}

fn wait_at_gate() {
    AT_GATE.fetch_add(1, Ordering::AcqRel);
    START.wait();
}

fn finish() {
    if FINISHED.fetch_add(1, Ordering::AcqRel) + 1 == THREADS as u32 {
        DONE.signal();
    }
}

/// Waits until the workload is done and every workload thread is off its CPU for good;
/// returns the kernel's counters then.
pub(crate) fn wait_done() -> Totals {
    DONE.wait();
    for id in &THREAD_IDS {
        let thread = sched::thread(id.load(Ordering::Acquire));
        while !thread.has_exited() {
            sched::sleep_ticks(1);
        }
    }
    Totals {
        sends: ipc::SENDS.load(Ordering::Acquire),
        receives: ipc::RECEIVES.load(Ordering::Acquire),
        faults: vm::MINOR_FAULTS.load(Ordering::Acquire) + vm::MAJOR_FAULTS.load(Ordering::Acquire),
        minor: vm::MINOR_FAULTS.load(Ordering::Acquire),
        major: vm::MAJOR_FAULTS.load(Ordering::Acquire),
        syscalls: sys::SYSCALLS.load(Ordering::Acquire),
        bytes: ipc::BYTES.load(Ordering::Acquire),
    }
}

/// The switches into or out of workload threads since [`release`].
pub(crate) fn switches() -> u64 {
    sched::WORKLOAD_SWITCHES.load(Ordering::Acquire)
}

/// The rounds this run was prepared with.
pub(crate) fn rounds() -> u32 {
    ROUNDS.load(Ordering::Acquire)
}

fn client_main(index: usize) {
    wait_at_gate();
    let me = sched::current();
    let map = Box::into_raw(Box::new(VmMap::new(
        CLIENT_VM_BASE,
        PAGES_PER_CLIENT,
        true,
        me.id,
    )));
    me.address_space.store(map, Ordering::Release);
    for round in 0..rounds() {
        if let Err(error) = client_round(index as u32, round) {
            verdict::fail(format_args!("workload: {me}, round {round}: {error}"));
        }
        if plan::ages_after(round) {
            // SAFETY: the map belongs to this thread and no call that uses it runs now
            // (the syscall-like interface is only entered by this thread, for itself).
            vm::age(unsafe { &mut *map });
        }
    }
    me.address_space.store(ptr::null_mut(), Ordering::Release);
    // SAFETY: `map` came from `Box::into_raw` above and nothing refers to it any more
    // (unregistered just now): its frames and tables go back to the heap.
    drop(unsafe { Box::from_raw(map) });
    finish();
}

/// One round of a client (see `workload_plan.rs`).
#[inline(never)]
fn client_round(client: u32, round: u32) -> Result<(), WorkloadError> {
    let value = (u64::from(client) << 32) | u64::from(round);
    sys::touch(plan::touch_address(round), Access::Write, value)?;
    let id = plan::request_id(round, client as usize);
    let request = Message {
        id,
        size: plan::request_size(round, client as usize),
        payload: [
            u64::from(round),
            u64::from(client),
            value,
            u64::from(id).rotate_left(17),
        ],
    };
    sys::send(CLIENT_REQUEST_RIGHT, &request)?;
    let reply = sys::receive(CLIENT_REPLY_RIGHT)?;
    let expected = plan::digest(request.id, &request.payload);
    if reply.id != request.id || reply.size != REPLY_SIZE || reply.payload[0] != expected {
        return Err(WorkloadError::BadReply {
            expected,
            got: reply,
        });
    }
    if plan::yields_after(round) {
        sys::yield_now()?;
    }
    Ok(())
}

fn server_main(_: usize) {
    wait_at_gate();
    let me = sched::current();
    let requests = u64::from(rounds()) * CLIENTS as u64;
    for _ in 0..requests {
        if let Err(error) = serve_one(me) {
            verdict::fail(format_args!("workload: {me}: {error}"));
        }
    }
    finish();
}

fn serve_one(server: &Thread) -> Result<(), WorkloadError> {
    let request = sys::receive(SERVER_REQUEST_RIGHT)?;
    let client = request.payload[1] as usize;
    if client >= CLIENTS {
        return Err(WorkloadError::BadRequest(request));
    }
    let reply = serve_request(&request, server.id);
    sys::send(server_reply_right(client), &reply)?;
    Ok(())
}

/// The server's work on one request: the reply carries the request's digest.
#[inline(never)]
fn serve_request(request: &Message, server_tid: u32) -> Message {
    Message {
        id: request.id,
        size: REPLY_SIZE,
        payload: [
            plan::digest(request.id, &request.payload),
            u64::from(server_tid),
            0,
            0,
        ],
    }
}

/// Prints the heap's figures (after the workload freed its address spaces).
pub(crate) fn report_heap() {
    let stats = heap::stats();
    println!(
        "heap: {} KiB arena, {} bytes in use, peak {} bytes, {} allocations, {} frees, {} failures",
        stats.capacity / 1024,
        stats.in_use,
        stats.peak,
        stats.allocations,
        stats.frees,
        stats.failures
    );
}
