//! The demo kernel's workload under QEMU: exact ground truth, the start gate, and the
//! probe port's rights check.
//!
//! Every test runs QEMU with TCG (never KVM) on two CPUs and says which TCG threading
//! mode it uses. The boots run one at a time (a lock below), as in `demo_boot.rs`.
//!
//! The expected totals are computed here from the number of rounds, independently of
//! the kernel's own `workload_plan.rs` (which documents the same formulas): four
//! clients; each round a client stores to its address space (pages touched in order,
//! 16 pages, the map aged every 32 rounds), sends a request of 8, 16, 24 or 32 bytes,
//! receives a 16-byte reply, and yields every 8th round; the server receives and
//! replies, all through the syscall-like interface. `switches` depends on timing and
//! is only bounded from below.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use qemu::{Config, EXIT_STATUS_PASS, Error, Qemu, TcgThreading, build_demo_kernel};

/// Client threads of the workload.
const CLIENTS: u64 = 4;
/// Workload threads: the clients and the server.
const WORKLOAD_THREADS: u64 = CLIENTS + 1;
/// Pages each client touches in order.
const PAGES: u64 = 16;
/// Rounds between two agings of a client's map.
const AGE_WINDOW: u64 = 2 * PAGES;
/// A client yields after every this many rounds.
const YIELD_EVERY: u64 = 8;
/// Size field of every reply.
const REPLY_SIZE: u64 = 16;

/// One QEMU at a time in this test binary.
fn one_boot_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

fn demo_kernel() -> PathBuf {
    build_demo_kernel().unwrap_or_else(|error| panic!("{error}"))
}

/// Panics if the QEMU of a finished run is still there (by pid and by its private
/// run directory, never by a global process name).
fn assert_no_qemu_left(pid: u32, run_directory: &Path) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU (pid {pid}) still exists after the run"
    );
    let output = Command::new("pgrep")
        .arg("-f")
        .arg(run_directory)
        .output()
        .expect("pgrep (procps) is needed to look for leftover QEMU processes");
    let leftovers = String::from_utf8_lossy(&output.stdout);
    assert!(
        leftovers.trim().is_empty(),
        "processes of {} left: {leftovers}",
        run_directory.display()
    );
}

/// The exact totals of `rounds` rounds (see the module docs).
fn expected_totals(rounds: u64) -> BTreeMap<&'static str, u64> {
    let faults_per_client = rounds / AGE_WINDOW * PAGES + (rounds % AGE_WINDOW).min(PAGES);
    let major = CLIENTS * rounds.min(PAGES);
    let faults = CLIENTS * faults_per_client;
    let request_bytes: u64 = (0..CLIENTS)
        .flat_map(|client| (0..rounds).map(move |round| 8 * (1 + (round + client) % 4)))
        .sum();
    BTreeMap::from([
        ("rounds", rounds),
        ("sends", 2 * CLIENTS * rounds),
        ("receives", 2 * CLIENTS * rounds),
        ("faults", faults),
        ("minor", faults - major),
        ("major", major),
        (
            "syscalls",
            CLIENTS * (3 * rounds + rounds / YIELD_EVERY) + 2 * CLIENTS * rounds,
        ),
        ("bytes", request_bytes + CLIENTS * rounds * REPLY_SIZE),
    ])
}

/// The `key=value` fields of the one `workload: done` line.
fn done_line(console: &str) -> BTreeMap<String, u64> {
    let lines: Vec<&str> = console
        .lines()
        .filter(|line| line.starts_with("workload: done "))
        .collect();
    assert_eq!(lines.len(), 1, "one done line expected:\n{console}");
    lines[0]["workload: done ".len()..]
        .split_whitespace()
        .map(|field| {
            let (key, value) = field
                .split_once('=')
                .unwrap_or_else(|| panic!("malformed field {field:?} in {:?}", lines[0]));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("non-numeric field {field:?} in {:?}", lines[0]));
            (key.to_owned(), value)
        })
        .collect()
}

/// Checks the done line against the totals of `rounds` rounds; returns `switches`.
fn assert_exact_totals(console: &str, rounds: u64) -> u64 {
    let counted = done_line(console);
    let field_order: Vec<&str> = counted.keys().map(String::as_str).collect();
    for key in [
        "rounds", "sends", "receives", "faults", "minor", "major", "syscalls", "switches",
    ] {
        assert!(
            field_order.contains(&key),
            "done line lacks {key}:\n{console}"
        );
    }
    for (key, expected) in expected_totals(rounds) {
        assert_eq!(
            counted.get(key),
            Some(&expected),
            "{key} for {rounds} rounds:\n{console}"
        );
    }
    let switches = counted["switches"];
    // After the start every workload thread is switched in at least once (it was
    // parked at the gate or had not run) and out once when it exits.
    assert!(
        switches >= 2 * WORKLOAD_THREADS,
        "only {switches} switches involving workload threads:\n{console}"
    );
    switches
}

/// Reads the COM2 hello and answers it; returns the kernel's echo.
fn answer_com2(qemu: &mut Qemu, line: &str) -> String {
    let hello = qemu
        .read_port_line()
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(hello.as_deref(), Some("probeport demo-kernel: COM2 hello"));
    qemu.write_port(format!("{line}\n").as_bytes())
        .unwrap_or_else(|error| panic!("{error}"));
    qemu.read_port_line()
        .unwrap_or_else(|error| panic!("{error}"))
        .expect("the kernel echoes the line")
}

/// Boots with `append` (COM2 wired and answered as `com2` says), waits for the pass
/// and checks the totals of `rounds` rounds. Returns the console and the run's time.
fn run_workload(
    threading: TcgThreading,
    append: &str,
    rounds: u64,
    com2: Com2,
) -> (String, Duration) {
    let _guard = one_boot_at_a_time();
    let config = Config::new(demo_kernel())
        .cpus(2)
        .tcg_threading(threading)
        .probe_port(com2 != Com2::Absent)
        .append(append)
        .timeout(Duration::from_secs(60));
    let started = Instant::now();
    let mut qemu = Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
    let (pid, run_directory) = (qemu.pid(), qemu.run_directory().to_path_buf());
    if com2 == Com2::Answered {
        let echo = answer_com2(&mut qemu, "totals please");
        assert_eq!(echo, "echo: totals please");
    }
    let outcome = qemu.wait().unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(outcome.exit_status, EXIT_STATUS_PASS);
    let console = outcome.console;
    let switches = assert_exact_totals(&console, rounds);
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
    assert_no_qemu_left(pid, &run_directory);
    (console, outcome.elapsed)
}

/// How COM2 is wired in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Com2 {
    /// Not wired (`demo.com2=off` on the kernel side).
    Absent,
    /// Wired, and the test answers the relay's hello.
    Answered,
    /// Wired, never answered: the relay waits for its client all run long.
    Silent,
}

#[test]
fn default_thousand_rounds_have_exact_totals_with_multi_threaded_tcg() {
    // No workload flags: 1000 rounds, started at boot; the run ends once the workload
    // is done *and* the relay's echo session is over.
    let (console, _) = run_workload(TcgThreading::Multi, "", 1000, Com2::Answered);
    assert!(
        console.contains("probe-port: relay thread ")
            && console
                .contains("passed the rights check; stub not embedded yet (answer: unavailable)"),
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
    let (console, _) = run_workload(
        TcgThreading::Multi,
        "demo.rounds=37 demo.exit_when_done",
        37,
        Com2::Silent,
    );
    assert!(
        console.contains("com2: hello sent, waiting for a line from the host"),
        "{console}"
    );
    assert!(!console.contains("com2: echoed"), "{console}");
}

#[test]
fn wait_start_parks_the_workload_until_release() {
    let _guard = one_boot_at_a_time();
    // Stopped by the harness's deadline: nothing in the kernel calls
    // `workload::release()` yet, so the run cannot end by itself.
    let timeout = Duration::from_secs(8);
    let config = Config::new(demo_kernel())
        .cpus(2)
        .tcg_threading(TcgThreading::Multi)
        .append("demo.wait_start")
        .timeout(timeout);
    let mut qemu = Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
    let (pid, run_directory) = (qemu.pid(), qemu.run_directory().to_path_buf());

    // The kernel prints the waiting line only once all five workload threads are at
    // the gate, which only `workload::release()` opens.
    while !qemu.console().contains("workload: waiting for start") {
        assert!(
            !qemu.remaining().is_zero(),
            "no waiting line before the deadline:\n{}",
            qemu.console()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The kernel keeps scheduling other threads meanwhile: the relay serves COM2.
    let echo = answer_com2(&mut qemu, "are you waiting?");
    assert_eq!(echo, "echo: are you waiting?");

    let error = qemu
        .wait()
        .expect_err("a parked workload never ends the run");
    match &error {
        Error::Timeout { console, .. } => {
            let console = &console.contents;
            let workload_lines: Vec<&str> = console
                .lines()
                .filter(|line| line.starts_with("workload:"))
                .collect();
            assert_eq!(
                workload_lines,
                ["workload: waiting for start (5 threads at the gate until workload::release())"],
                "{console}"
            );
            assert!(
                console.contains("com2: echoed a 16-byte line back to the host"),
                "{console}"
            );
            assert!(!console.contains("VERDICT"), "{console}");
        }
        other => panic!("expected the harness to stop the run, got {other}"),
    }
    assert_no_qemu_left(pid, &run_directory);
    std::fs::remove_dir_all(&run_directory).expect("removing the kept run directory");
}

#[test]
fn an_unprivileged_submit_is_refused_and_the_kernel_survives() {
    let (console, _) = run_workload(
        TcgThreading::Multi,
        "demo.intruder demo.rounds=100",
        100,
        Com2::Answered,
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
        console.contains("passed the rights check; stub not embedded yet (answer: unavailable)"),
        "{console}"
    );
}
