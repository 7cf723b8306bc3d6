//! Boots of the demo kernel under QEMU through the harness.
//!
//! Every test runs QEMU with TCG (never KVM); each says which TCG threading mode it
//! uses. The boots run one at a time (a lock in `common`): the machines have two
//! cores and other test binaries may run QEMU too. Nothing is skipped when QEMU is
//! missing: the harness installs it (as root) or the test fails with the reason.
//!
//! Leftover processes are checked per run, by QEMU's pid and by `pgrep -f` on the
//! run's private directory (which appears on QEMU's command line), not with a global
//! `pgrep qemu`, which would see other engineers' and other tests' QEMUs.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{DemoRun, assert_no_qemu_left, demo_kernel, kernel_image, one_boot_at_a_time};
use qemu::{Config, EXIT_STATUS_FAIL, EXIT_STATUS_PASS, Error, Qemu, TcgThreading};

/// The tick count the kernel printed for `cpu N`.
fn timer_ticks(console: &str, cpu: usize) -> Option<u64> {
    let prefix = format!("cpu {cpu} (apic ");
    console.lines().find_map(|line| {
        let rest = line.strip_prefix(&prefix)?;
        let (_, counted) = rest.split_once("): ")?;
        counted.strip_suffix(" timer ticks")?.parse().ok()
    })
}

/// Boots with two CPUs, opens and ends a session on the probe port (COM2) and
/// checks the whole console.
fn boot_two_cpus_and_open_the_port(threading: TcgThreading) {
    let started = Instant::now();
    let mut run = DemoRun::boot("demo.rounds=50", threading, Duration::from_secs(60));
    let hello = run.hello();
    assert_eq!(hello.cpu_count, 2);
    assert_eq!(
        hello.name,
        format!("demo-kernel {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(hello.build_id.len(), 20, "a sha1 build-id");
    assert_eq!(hello.build_id, kernel_image().build_id);
    let outcome = run.goodbye_and_pass();
    eprintln!(
        "{threading:?} TCG: {:.2?} with the harness",
        started.elapsed()
    );
    assert_eq!(outcome.exit_status, EXIT_STATUS_PASS);
    let console = &outcome.console;
    for expected in [
        "cpu 0 (apic 0): up",
        "cpu 1 (apic 1): up",
        "smp: 2 of 2 CPU(s) online",
        "selftest: int3 round trip survived",
        "selftest: single-step #DB round trip survived",
        "probe-stub: embedded; #BP hook installed",
        "time: TSC at ",
        "probe-port: relay thread 5 passed the rights check; the stub serves COM2",
        "probe-port: session opened",
        "VERDICT: PASS",
    ] {
        assert!(
            console.contains(expected),
            "console lacks {expected:?}:\n{console}"
        );
    }
    for cpu in 0..2 {
        let ticks = timer_ticks(console, cpu)
            .unwrap_or_else(|| panic!("no tick count for cpu {cpu}:\n{console}"));
        assert!(
            ticks >= 10,
            "cpu {cpu} took only {ticks} timer ticks:\n{console}"
        );
    }
}

#[test]
fn two_cpus_timer_int3_and_a_port_session_with_multi_threaded_tcg() {
    boot_two_cpus_and_open_the_port(TcgThreading::Multi);
}

#[test]
fn two_cpus_timer_int3_and_a_port_session_with_single_threaded_tcg() {
    boot_two_cpus_and_open_the_port(TcgThreading::Single);
}

#[test]
fn kernel_panic_fails_the_run_with_the_panic_message() {
    let _guard = one_boot_at_a_time();
    let config = Config::new(demo_kernel())
        .append("demo.panic")
        .timeout(Duration::from_secs(60));
    let qemu = Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
    let (pid, run_directory) = (qemu.pid(), qemu.run_directory().to_path_buf());

    let error = qemu
        .wait()
        .expect_err("a panicking kernel must fail the run");
    let message = error.to_string();
    match &error {
        Error::GuestFailed {
            reason,
            exit_status,
            console,
        } => {
            assert!(
                reason.contains("demo.panic on the kernel command line: panicking on purpose"),
                "{reason}"
            );
            assert!(reason.starts_with("panic on cpu 0 at "), "{reason}");
            assert_eq!(*exit_status, Some(EXIT_STATUS_FAIL));
            assert!(
                console.contents.contains("PANIC on cpu 0"),
                "{}",
                console.contents
            );
            assert!(
                console.path.is_file(),
                "the console log of a failed run is kept"
            );
        }
        other => panic!("expected GuestFailed, got {other}"),
    }
    assert!(
        message.contains("panicking on purpose") && message.contains("console log kept at"),
        "{message}"
    );
    assert_no_qemu_left(pid, &run_directory);
    std::fs::remove_dir_all(&run_directory).expect("removing the kept run directory");
}

#[test]
fn timeout_kills_qemu_and_leaves_no_process() {
    let _guard = one_boot_at_a_time();
    let timeout = Duration::from_secs(5);
    let config = Config::new(demo_kernel())
        .append("demo.hang demo.com2=off")
        .timeout(timeout);
    let started = Instant::now();
    let qemu = Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
    let (pid, run_directory) = (qemu.pid(), qemu.run_directory().to_path_buf());

    let error = qemu.wait().expect_err("a hanging kernel must time out");
    let waited = started.elapsed();
    match &error {
        Error::Timeout {
            timeout: reported,
            console,
        } => {
            assert_eq!(*reported, timeout);
            assert!(
                console.contents.contains("idling without a verdict"),
                "{}",
                console.contents
            );
            assert!(
                !console.contents.contains("VERDICT"),
                "{}",
                console.contents
            );
        }
        other => panic!("expected Timeout, got {other}"),
    }
    assert!(
        waited >= timeout && waited < timeout + Duration::from_secs(5),
        "waited {waited:?}"
    );
    assert!(
        error.to_string().contains("did not finish within 5s"),
        "{error}"
    );
    assert_no_qemu_left(pid, &run_directory);
    std::fs::remove_dir_all(&run_directory).expect("removing the kept run directory");
}

#[test]
fn dropping_a_run_kills_qemu() {
    // Multi-threaded TCG.
    let mut run = DemoRun::boot("demo.hang", TcgThreading::Multi, Duration::from_secs(60));
    // The kernel is up once its probe port answers; then drop the run in the middle.
    run.hello();
    let (pid, run_directory) = (run.qemu.pid(), run.qemu.run_directory().to_path_buf());
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU runs before the drop"
    );
    drop(run);
    assert_no_qemu_left(pid, &run_directory);
    std::fs::remove_dir_all(&run_directory).expect("removing the kept run directory");
}
