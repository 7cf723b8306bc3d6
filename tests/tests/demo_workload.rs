//! The demo kernel's workload under QEMU: exact ground truth, the start gate, and the
//! probe port's rights check.
//!
//! Every test runs QEMU with TCG (never KVM) on two CPUs and says which TCG threading
//! mode it uses. The boots run one at a time (a lock in `common`), as in `demo_boot.rs`.
//!
//! The expected totals are computed in `common` from the number of rounds, independently of
//! the kernel's own `workload_plan.rs` (which documents the same formulas): four
//! clients; each round a client stores to its address space (pages touched in order,
//! 16 pages, the map aged every 32 rounds), sends a request of 8, 16, 24 or 32 bytes,
//! receives a 16-byte reply, and yields every 8th round; the server receives and
//! replies, all through the syscall-like interface. `switches` depends on timing and
//! is only bounded from below.

mod common;

use std::time::{Duration, Instant};

use common::{
    DemoRun, assert_exact_totals, assert_no_qemu_left, demo_kernel, done_line, one_boot_at_a_time,
};
use probe_port_protocol::message::RequestBody;
use qemu::{Config, EXIT_STATUS_PASS, Qemu, TcgThreading};

/// Workload threads: the clients and the server.
const WORKLOAD_THREADS: u64 = common::CLIENTS + 1;

/// Checks the done line against the totals of `rounds` rounds; returns `switches`.
fn assert_totals_and_switches(console: &str, rounds: u64) -> u64 {
    assert_exact_totals(console, rounds);
    let switches = done_line(console)["switches"];
    // After the start every workload thread is switched in at least once (it was
    // parked at the gate or had not run) and out once when it exits.
    assert!(
        switches >= 2 * WORKLOAD_THREADS,
        "only {switches} switches involving workload threads:\n{console}"
    );
    switches
}

/// Boots with `append` (COM2 wired and served as `com2` says), waits for the pass
/// and checks the totals of `rounds` rounds. Returns the console and the run's time.
fn run_workload(
    threading: TcgThreading,
    append: &str,
    rounds: u64,
    com2: Com2,
) -> (String, Duration) {
    let started = Instant::now();
    let outcome = if com2 == Com2::Session {
        let mut run = DemoRun::boot(append, threading, Duration::from_secs(60));
        run.hello();
        run.wait_workload(rounds, Duration::from_secs(50));
        run.goodbye_and_pass()
    } else {
        let _guard = one_boot_at_a_time();
        let config = Config::new(demo_kernel())
            .cpus(2)
            .tcg_threading(threading)
            .probe_port(com2 != Com2::Absent)
            .append(append)
            .timeout(Duration::from_secs(60));
        let qemu = Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
        let (pid, run_directory) = (qemu.pid(), qemu.run_directory().to_path_buf());
        let outcome = qemu.wait().unwrap_or_else(|error| panic!("{error}"));
        assert_no_qemu_left(pid, &run_directory);
        outcome
    };
    assert_eq!(outcome.exit_status, EXIT_STATUS_PASS);
    let console = outcome.console;
    let switches = assert_totals_and_switches(&console, rounds);
    for expected in [
        "smp: 2 of 2 CPU(s) online",
        "sched: timer preemption ran ",
        "workload: started: ",
        "heap: 4096 KiB arena, 0 bytes in use",
        "VERDICT: PASS",
    ] {
        assert!(
            console.contains(expected),
            "console lacks {expected:?}:\n{console}"
        );
    }
    eprintln!(
        "{threading:?} TCG, {append:?}: boot to verdict in {:.2?} ({:.2?} with the harness), \
         {switches} workload switches",
        outcome.elapsed,
        started.elapsed()
    );
    (console, outcome.elapsed)
}

/// How COM2 is wired in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Com2 {
    /// Not wired (`demo.com2=off` on the kernel side).
    Absent,
    /// Wired, and the test holds a session on the probe port (hello … goodbye).
    Session,
    /// Wired, never spoken to: the relay serves a port nobody uses.
    Silent,
}

#[test]
fn default_thousand_rounds_have_exact_totals_with_multi_threaded_tcg() {
    // No workload flags: 1000 rounds, started at boot; the run ends once the workload
    // is done *and* the client on the probe port has said goodbye.
    let (console, _) = run_workload(TcgThreading::Multi, "", 1000, Com2::Session);
    assert!(
        console.contains("probe-port: relay thread ")
            && console.contains("passed the rights check; the stub serves COM2"),
        "{console}"
    );
    assert!(!console.contains("refused"), "{console}");
}

#[test]
fn workload_has_exact_totals_with_single_threaded_tcg() {
    run_workload(
        TcgThreading::Single,
        "demo.rounds=333 demo.com2=off",
        333,
        Com2::Absent,
    );
}

#[test]
fn exit_when_done_ends_the_run_while_the_relay_still_waits() {
    // Multi-threaded TCG.
    let (console, _) = run_workload(
        TcgThreading::Multi,
        "demo.rounds=37 demo.exit_when_done",
        37,
        Com2::Silent,
    );
    assert!(console.contains("the stub serves COM2"), "{console}");
    assert!(!console.contains("probe-port: session opened"), "{console}");
}

#[test]
fn wait_start_parks_the_workload_until_the_client_starts_tracing() {
    // Multi-threaded TCG (nothing is armed).
    let mut run = DemoRun::boot(
        "demo.wait_start demo.rounds=64",
        TcgThreading::Multi,
        Duration::from_secs(60),
    );
    // The kernel prints the waiting line only once all five workload threads are at
    // the gate, which only `workload::release()` opens: the relay calls it when the
    // session starts.
    run.wait_console("workload: waiting for start", Duration::from_secs(30));
    run.hello();
    run.pump(Duration::from_millis(1000));
    let console = run.qemu.console();
    let workload_lines: Vec<&str> = console
        .lines()
        .filter(|line| line.starts_with("workload:"))
        .collect();
    assert_eq!(
        workload_lines,
        ["workload: waiting for start (5 threads at the gate until workload::release())"],
        "{console}"
    );
    run.done(RequestBody::Start);
    let console = run.wait_workload(64, Duration::from_secs(50));
    assert_totals_and_switches(&console, 64);
    run.goodbye_and_pass();
}

#[test]
fn an_unprivileged_submit_is_refused_and_the_kernel_survives() {
    // Multi-threaded TCG (nothing is armed).
    let (console, _) = run_workload(
        TcgThreading::Multi,
        "demo.intruder demo.rounds=100",
        100,
        Com2::Session,
    );
    let intruder = console
        .lines()
        .find_map(|line| {
            line.strip_prefix("intruder: thread ")?
                .split_once(" (intruder) tries to arm a probe")
                .map(|(tid, _)| tid.to_owned())
        })
        .unwrap_or_else(|| panic!("no intruder line:\n{console}"));
    let refusals: Vec<&str> = console
        .lines()
        .filter(|line| line.starts_with("probe-port: refused unprivileged thread "))
        .collect();
    assert_eq!(refusals.len(), 2, "{console}");
    for refusal in &refusals {
        assert!(
            refusal.starts_with(&format!(
                "probe-port: refused unprivileged thread {intruder} (intruder): "
            )),
            "{refusal}"
        );
    }
    assert!(
        refusals[0].contains("not the probe port") && refusals[1].contains("no right named"),
        "{refusals:?}"
    );
    assert!(
        console.contains("intruder: 2 of 2 attempts refused; the kernel carries on"),
        "{console}"
    );
    // The holder of the right still gets through.
    assert!(
        console.contains("passed the rights check; the stub serves COM2"),
        "{console}"
    );
}
