//! The relay thread: owns COM2 and the probe port's send right, and bridges the two.
//!
//! # Design
//!
//! The relay is the only thread that holds a send right to the probe port
//! (`probe_port.rs`); a client on the host reaches the stub through it and through
//! nothing else. It runs pinned to one CPU (the one COM2's interrupt is routed to),
//! blocks until COM2 has bytes (`com2.rs`) and hands them on.
//!
//! At start it proves its privilege through the real path: an empty request through
//! `probe_port::submit`, which passes the rights check and today gets the
//! placeholder's `unavailable` answer. Then it serves COM2 with the [`EchoSession`]
//! (hello, one line, echo) and finishes, signalling [`FINISHED`].
//!
//! Integration point: replace the echo session by the stub's byte-level server, which
//! is two lines in [`relay_main`]: drop `session`, and for every chunk call
//! `probe_port::submit(right, input, &mut |output| com2.write(output))` in a loop that
//! never finishes.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::com2::{self, Com2};
use crate::console::println;
use crate::echo::{EchoSession, Progress};
use crate::ipc::RightName;
use crate::sched::{self, Event, SpawnError, Thread, ThreadKind};
use crate::{probe_port, verdict};

/// Signalled when the relay's session is over (today: after the echo).
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

    let mut answer = [0u8; 64];
    let mut answer_length = 0;
    let submitted = probe_port::submit(right, &[], &mut |bytes| {
        let end = (answer_length + bytes.len()).min(answer.len());
        answer[answer_length..end].copy_from_slice(&bytes[..end - answer_length]);
        answer_length = end;
    });
    match submitted {
        Ok(_) if answer[..answer_length] == *probe_port::UNAVAILABLE => println!(
            "probe-port: relay thread {} passed the rights check; stub not embedded yet (answer: unavailable)",
            me.id
        ),
        Ok(length) => println!(
            "probe-port: relay thread {} passed the rights check; the stub answered {length} bytes",
            me.id
        ),
        Err(refusal) => verdict::fail(format_args!("relay refused by the probe port: {refusal}")),
    }

    let mut session = EchoSession::new();
    session.start(&mut |bytes| com2.write(bytes));
    println!("com2: hello sent, waiting for a line from the host");
    let mut buffer = [0u8; 64];
    loop {
        let input = com2.read_available(&mut buffer);
        match session.serve_bytes(input, &mut |bytes| com2.write(bytes)) {
            Ok(Progress::Continue) => {}
            Ok(Progress::Finished { echoed }) => {
                println!(
                    "com2: echoed a {echoed}-byte line back to the host ({} COM2 interrupts)",
                    com2::INTERRUPTS.load(Ordering::Relaxed)
                );
                break;
            }
            Err(error) => verdict::fail(format_args!("COM2 echo: {error}")),
        }
    }
    FINISHED.signal();
}
