//! The init thread: sets up the probe port, the relay and the workload, waits for
//! them and gives the run its verdict.
//!
//! # Design
//!
//! `kernel_main` brings the machine up, creates this thread and becomes CPU 0's idle
//! thread; from then on everything happens in threads. The init thread:
//!
//! 0. checks that the timer preempts: it spins on CPU 0, without yielding, until a
//!    thread it started on the same CPU has run — which only a tick can allow;
//! 1. creates the probe port (receive right: the stub side);
//! 2. starts the relay on COM2 with the probe port's only send right (unless
//!    `demo.com2=off`);
//! 3. prepares the workload, whose threads wait at the start gate, and, with
//!    `demo.intruder`, a thread that tries the probe port without the right;
//! 4. opens the gate — or, with `demo.wait_start`, waits until every workload thread
//!    is at the gate, prints `workload: waiting for start` and leaves the gate to
//!    `workload::release()`;
//! 5. waits for the workload, prints the ground-truth line
//!    `workload: done rounds=… sends=… receives=… faults=… minor=… major=… syscalls=…
//!    switches=… bytes=…` and checks it against the plan's totals;
//! 6. passes at once with `demo.exit_when_done`; otherwise waits until the client
//!    on the probe port has ended its session with `Goodbye` as well (a kernel that
//!    nobody talks to runs until the harness stops it), then passes.
//!
//! With `demo.hang` it stops after step 4: the kernel runs on without a verdict.
//! With `demo.bench` it runs the probe benchmark (`bench.rs`) after step 0 instead
//! of everything else, and passes.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::cmdline::Options;
use crate::console::println;
use crate::ipc::{self, RIGHTS_PER_THREAD, RightKind, RightName};
use crate::sched::{self, SpawnError, ThreadKind};
use crate::sync::SpinLock;
use crate::{bench, cpu, probe_port, relay, sched::Thread, time, verdict, workload, workload_plan};

static OPTIONS: SpinLock<Option<Options>> = SpinLock::new(None);

/// Creates and starts the init thread (on CPU 0) with the boot options.
pub(crate) fn spawn(options: Options) -> Result<(), SpawnError> {
    *OPTIONS.lock() = Some(options);
    sched::spawn("init", 0, ThreadKind::Kernel, init_main, 0).map(drop)
}

fn init_main(_: usize) {
    let options = OPTIONS
        .lock()
        .expect("the options are set before init runs");
    check_preemption();
    if options.bench {
        bench::run(if options.bench_instructions {
            bench::Unit::Instructions
        } else {
            bench::Unit::Cycles
        });
    }
    let probe = probe_port::create()
        .unwrap_or_else(|error| verdict::fail(format_args!("probe port: {error}")));
    println!(
        "probe-port: port {} created; receive right: the stub side; send right: the relay only",
        probe.0
    );

    if options.com2_relay {
        relay::spawn(relay::cpu(sched::cpu_count()))
            .unwrap_or_else(|error| verdict::fail(format_args!("relay thread: {error}")));
    } else {
        println!("com2: relay not started (demo.com2=off)");
        relay::FINISHED.signal();
    }

    workload::prepare(options.rounds);
    if options.intruder {
        spawn_intruder();
    }
    if options.wait_start {
        workload::wait_until_all_at_gate();
        println!(
            "workload: waiting for start ({} threads at the gate until workload::release())",
            workload::THREADS
        );
    } else {
        workload::release();
    }
    if options.hang {
        println!("demo.hang on the kernel command line: idling without a verdict");
        return;
    }

    let totals = workload::wait_done();
    println!(
        "workload: done rounds={} sends={} receives={} faults={} minor={} major={} syscalls={} switches={} bytes={}",
        workload::rounds(),
        totals.sends,
        totals.receives,
        totals.faults,
        totals.minor,
        totals.major,
        totals.syscalls,
        workload::switches(),
        totals.bytes
    );
    let expected = workload_plan::expected_totals(workload::rounds());
    if totals != expected {
        verdict::fail(format_args!(
            "workload totals differ from the plan: counted {totals:?}, expected {expected:?}"
        ));
    }
    workload::report_heap();
    println!(
        "sched: {} context switches on {} cpu(s)",
        sched::SWITCHES.load(Ordering::Relaxed),
        sched::cpu_count()
    );
    if options.exit_when_done {
        verdict::pass();
    }
    if !relay::FINISHED.is_signalled() {
        println!(
            "init: workload done; the kernel runs on until the probe port's client says goodbye"
        );
    }
    relay::FINISHED.wait();
    verdict::pass()
}

/// Starts a thread that holds a send right to a port of its own, but none to the probe
/// port, and tries to submit with it.
fn spawn_intruder() {
    let failed = |error: &dyn core::fmt::Display| -> ! {
        verdict::fail(format_args!("intruder setup: {error}"))
    };
    let intruder = sched::create("intruder", 0, ThreadKind::Kernel, intruder_main, 0)
        .unwrap_or_else(|error| failed(&error));
    let mailbox = ipc::create_port("intruder.mailbox", 1).unwrap_or_else(|error| failed(&error));
    ipc::grant(intruder, mailbox, RightKind::Send).unwrap_or_else(|error| failed(&error));
    sched::start_thread(intruder);
}

fn intruder_main(_: usize) {
    let me = sched::current();
    println!("intruder: {me} tries to arm a probe without the probe port's right");
    // Name 0 is its send right to its own mailbox; the last name is empty. Names are
    // local to a thread's table: no name of the intruder's reaches the relay's right.
    let attempts = [RightName(0), RightName(RIGHTS_PER_THREAD as u32 - 1)];
    let mut refused = 0;
    for (seq, right) in (7..).zip(attempts) {
        let mut answer = [0u8; 64];
        let mut answer_length = 0;
        let submitted = probe_port::submit(right, &intruder_request(seq), &mut |bytes| {
            let end = (answer_length + bytes.len()).min(answer.len());
            answer[answer_length..end].copy_from_slice(&bytes[..end - answer_length]);
            answer_length = end;
        });
        if submitted.is_ok() {
            verdict::fail(format_args!(
                "{me} reached the probe port without its right"
            ));
        }
        refused += 1;
        report_refusal(me, seq, &answer[..answer_length]);
    }
    println!(
        "intruder: {refused} of {} attempts refused; the kernel carries on",
        attempts.len()
    );
}

/// A framed `Arm` request for a probe on `sys::dispatch`, as a client would send it.
fn intruder_request(seq: u32) -> alloc::vec::Vec<u8> {
    use probe_port_protocol::message::{ArmRequest, Request, RequestBody, Site};
    let address = crate::sys::dispatch as *const () as u64;
    // SAFETY: the first byte of a function of this kernel: mapped, readable text.
    let expected = [unsafe { (address as *const u8).read_volatile() }];
    let program = probe_port_protocol::isa::encode(
        &probe_port_protocol::asm::assemble("mov64 r0, 0\nexit").unwrap_or_default(),
    );
    let request = Request {
        seq,
        body: RequestBody::Arm(ArmRequest {
            site: Site::Dynamic {
                address,
                expected: &expected,
            },
            program: &program,
        }),
    };
    let mut scratch = [0u8; 128];
    let mut frame = [0u8; 160];
    let length =
        probe_port_protocol::frame::encode_request(&request, &mut scratch, &mut frame).unwrap_or(0);
    frame[..length].to_vec()
}

/// Prints what the probe port answered to the intruder's request `seq`.
fn report_refusal(me: &Thread, seq: u32, answer: &[u8]) {
    use probe_port_protocol::error::ErrorCode;
    use probe_port_protocol::frame::FrameDecoder;
    use probe_port_protocol::message::{StubMessage, decode_stub_message};
    let mut decoder = FrameDecoder::<128>::new();
    let mut input = answer;
    let reply = loop {
        match decoder.feed(&mut input) {
            Some(Ok(payload)) => break decode_stub_message(payload).ok(),
            Some(Err(_)) => break None,
            None if input.is_empty() => break None,
            None => {}
        }
    };
    match reply {
        Some(StubMessage::Reply {
            seq: replied,
            reply: Err(error),
        }) if replied == seq && error.code == ErrorCode::NOT_PRIVILEGED => println!(
            "intruder: {me}: the probe port answered request {seq} with NOT_PRIVILEGED (code {})",
            error.code.0
        ),
        other => verdict::fail(format_args!(
            "{me}: the probe port did not answer NOT_PRIVILEGED to request {seq}: {other:?}"
        )),
    }
}

/// Set by the spinner thread of [`check_preemption`].
static SPINNER_RAN: AtomicBool = AtomicBool::new(false);

/// How long [`check_preemption`] spins at most (ticks of CPU 0).
const PREEMPTION_CHECK_TICKS: u64 = 100;

/// Spins on CPU 0 without yielding until a thread started on CPU 0 has run: only the
/// timer tick can preempt the spinning thread (no other interrupt reschedules CPU 0
/// here), so this proves preemptive round robin.
fn check_preemption() {
    let me = sched::current();
    let spinner = sched::spawn("spinner", me.cpu as usize, ThreadKind::Kernel, spin_once, 0)
        .unwrap_or_else(|error| verdict::fail(format_args!("spinner thread: {error}")));
    let started = time::ticks();
    while !SPINNER_RAN.load(Ordering::Acquire) {
        if time::ticks() - started > PREEMPTION_CHECK_TICKS {
            verdict::fail(format_args!(
                "sched: {spinner} never ran while {me} spun on cpu {}: no timer preemption",
                me.cpu
            ));
        }
        cpu::spin_hint();
    }
    println!(
        "sched: timer preemption ran {spinner} while {me} spun on cpu {} ({} tick(s))",
        me.cpu,
        time::ticks() - started
    );
}

fn spin_once(_: usize) {
    SPINNER_RAN.store(true, Ordering::Release);
}
