//! The relay thread: owns COM2 and the probe port's send right, and bridges the two.
//!
//! # Design
//!
//! The relay is the only thread that holds a send right to the probe port
//! (`probe_port.rs`); a client on the host reaches the stub through it and through
//! nothing else. It runs pinned to one CPU (the one COM2's interrupt is routed to)
//! and loops, once per timer tick at least:
//!
//! 1. it takes what COM2 received, waiting up to one tick for it (`com2.rs`);
//! 2. it hands those bytes to the stub through `probe_port::submit`, which passes the
//!    rights check and runs the stub's byte-level server: requests are handled, and
//!    replies, then every pending event and loss report, are written to COM2 — so
//!    the event rings are drained every tick even when the client sends nothing
//!    (and sooner when probe context asks for it: `probe_platform::take_wake_request`);
//! 3. it lets the stub check the port's lease (`Stub::poll`): a client that stops
//!    talking for longer than the lease loses its session, every probe disarmed and
//!    the kernel text restored, exactly as after `Goodbye`;
//! 4. once a session has started (the client's `Start`), it opens the workload's
//!    start gate (`workload::release`, a no-op unless `demo.wait_start` parked it).
//!
//! A session that ends with the client's `Goodbye` signals [`FINISHED`]: the init
//! thread ends the run with its verdict once the workload is done too. A session
//! lost to its lease does not: the kernel runs on, and a new client may connect.
//!
//! # Invariants
//!
//! - Only the relay calls the stub's session side (`submit`, `poll`); probe context
//!   never waits for it.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::com2::Com2;
use crate::console::println;
use crate::ipc::RightName;
use crate::probe_platform::{self, STUB};
use crate::sched::{self, Event, SpawnError, Thread, ThreadKind};
use crate::{probe_port, time, verdict, workload};

/// Signalled when the client ended its session with `Goodbye`.
pub(crate) static FINISHED: Event = Event::new();

/// The CPU the relay runs on (and COM2's interrupt goes to): the second CPU if there
/// is one, away from the server.
pub(crate) fn cpu(cpu_count: usize) -> usize {
    if cpu_count > 1 { 1 } else { 0 }
}

/// Creates the relay on `cpu`, grants it the probe port's send right and starts it.
pub(crate) fn spawn(cpu: usize) -> Result<&'static Thread, SpawnError> {
    let relay = sched::create("relay", cpu, ThreadKind::Kernel, relay_main, 0)?;
    let right = probe_port::grant_relay_right(relay)
        .unwrap_or_else(|error| verdict::fail(format_args!("relay: probe port right: {error}")));
    RELAY_RIGHT.store(right.0, Ordering::Release);
    sched::start_thread(relay);
    Ok(relay)
}

/// The relay's name for its send right to the probe port (granted after the thread
/// is created, before it starts).
static RELAY_RIGHT: AtomicU32 = AtomicU32::new(u32::MAX);

fn relay_main(_: usize) {
    let me = sched::current();
    let right = RightName(RELAY_RIGHT.load(Ordering::Acquire));
    let Some(mut com2) = Com2::open() else {
        verdict::fail(format_args!("relay: COM2 already in use"));
    };
    println!(
        "relay: {me} on cpu {} owns COM2 and the probe port's send right (name {})",
        me.cpu, right.0
    );
    // The real path, with nothing to say: proves the right before any client comes.
    if let Err(refusal) = probe_port::submit(right, &[], &mut |_| {}) {
        verdict::fail(format_args!("relay refused by the probe port: {refusal}"));
    }
    println!(
        "probe-port: relay thread {} passed the rights check; the stub serves COM2",
        me.id
    );

    let mut buffer = [0u8; 512];
    let mut was_open = false;
    loop {
        // A full ring asked for a drain: do not wait for input first.
        let wait = if probe_platform::take_wake_request() {
            0
        } else {
            1
        };
        let input = com2.read_within(&mut buffer, wait);
        if let Err(refusal) = probe_port::submit(right, input, &mut |bytes| com2.write(bytes)) {
            verdict::fail(format_args!("relay refused by the probe port: {refusal}"));
        }
        let open = STUB.session_open();
        if open && !was_open {
            println!("probe-port: session opened");
        }
        if was_open && !open {
            println!("probe-port: session ended by the client (goodbye); every probe disarmed");
            FINISHED.signal();
        }
        if STUB.poll(time::now_ns()) {
            println!(
                "probe-port: lease expired, the port's holder is gone; every probe disarmed, text restored"
            );
        }
        if STUB.session_started() {
            workload::release();
        }
        was_open = STUB.session_open();
    }
}
