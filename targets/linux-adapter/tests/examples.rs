//! The shipped examples that make sense on Linux, run unchanged with the
//! `probeport` binary against the daemon on a Unix socket, on this host (no
//! kprobes needed: `syscalls.probe` uses the `raw_syscalls:sys_enter` tracepoint,
//! `profile.probe` cpu-clock timers). The workload is `getppid_loop` (a static C
//! program) run under names of its own, so its `comm` tells it apart from the
//! rest of the machine; the test reads the counts under those names.

mod common;
mod guest;

use std::process::Command;
use std::time::Duration;

use common::Daemon;
use common::cli::{Run, examples, named_copy};

/// `getppid` calls of the counted workload.
const CALLS: u64 = 1000;

fn run_workload(path: &std::path::Path, calls: u64) {
    let output = Command::new(path)
        .arg(calls.to_string())
        .output()
        .expect("the workload runs");
    assert!(output.status.success(), "{}", path.display());
}

/// `syscalls.probe`: `@calls[getppid]` counts the workload's calls and
/// `@by_thread[NAME]` every system call of a process named NAME. The workload runs
/// twice under two names, with no calls and with `CALLS`: its start-up and exit
/// make the same system calls both times, so the two counts differ by exactly
/// `CALLS`.
#[test]
fn syscalls_example_counts_a_workloads_calls() {
    let daemon = Daemon::start(&[]);
    let directory = tempdir();
    let idle = named_copy(guest::workload(), &directory, "ppx-idle");
    let busy = named_copy(guest::workload(), &directory, "ppx-busy");
    let port = format!("unix:{}", daemon.socket.display());
    let mut run = Run::start(&port, &examples().join("syscalls.probe"));
    let mut seen = Vec::new();
    run.wait_line("Counting system calls", Duration::from_secs(60), &mut seen);
    // `begin` prints before `Start`; give it a moment, well inside the 2 s.
    std::thread::sleep(Duration::from_millis(300));
    run_workload(&idle, 0);
    run_workload(&busy, CALLS);
    let finished = run.finish(Duration::from_secs(60), seen);
    let text = finished.text();
    let calls = finished.map("calls");
    let by_thread = finished.map("by_thread");
    let getppid = calls.get("getppid").copied().unwrap_or(0);
    // Other processes of the machine may call getppid too; none of them is ours.
    assert!(getppid >= CALLS, "@calls[getppid] = {getppid}:\n{text}");
    let (Some(idle_calls), Some(busy_calls)) =
        (by_thread.get("ppx-idle"), by_thread.get("ppx-busy"))
    else {
        panic!("the workload's names are missing:\n{text}");
    };
    assert_eq!(busy_calls - idle_calls, CALLS, "{text}");
    assert!(
        finished.output[0].starts_with("Counting system calls for 2 s"),
        "{text}"
    );
    // Names come from the client's table; a number without a name would print
    // as `syscall_N`.
    assert!(calls.contains_key("exit_group"), "{text}");
    let _ = std::fs::remove_dir_all(directory);
}

/// `profile.probe`: 50 samples a second on every CPU for about a second, each
/// counted once in `@samples[cpu, comm]` and once in `@where[probefunc]`; a
/// process spinning meanwhile is among the samples.
#[test]
fn profile_example_samples_every_cpu() {
    let daemon = Daemon::start(&[]);
    let directory = tempdir();
    let spinner_path = named_copy(guest::workload(), &directory, "ppx-spin");
    let mut spinner = Command::new(&spinner_path)
        .arg("100000000")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the spinning workload starts");
    let port = format!("unix:{}", daemon.socket.display());
    let run = Run::start(&port, &examples().join("profile.probe"));
    let finished = run.finish(Duration::from_secs(60), Vec::new());
    let _ = spinner.kill();
    let _ = spinner.wait();
    let text = finished.text();
    let samples = finished.map("samples");
    let places = finished.map("where");
    let online = linux_adapter::sys::online_cpus().expect("online CPUs");
    let mut per_cpu = vec![0u64; online.iter().max().map_or(1, |cpu| cpu + 1)];
    for (key, count) in &samples {
        let (cpu, _) = key.split_once(", ").expect("cpu, comm");
        per_cpu[cpu.parse::<usize>().expect("a CPU number")] += count;
    }
    // At most 50 a second on each CPU for as long as the run lasted (the timer
    // ends it after 1 s; the client then stops the probes).
    let most = (50.0 * finished.elapsed.as_secs_f64()).ceil() as u64 + 1;
    for cpu in &online {
        assert!(
            (1..=most).contains(&per_cpu[*cpu]),
            "CPU {cpu}: {} samples, at most {most}:\n{text}",
            per_cpu[*cpu]
        );
    }
    assert_eq!(
        samples.values().sum::<u64>(),
        places.values().sum::<u64>(),
        "{text}"
    );
    // `probefunc`: kernel addresses named by the daemon from this kernel's
    // kallsyms (`Symbolize`), user-space ones in hex.
    for place in places.keys() {
        let named = place.split_once("+0x").is_some_and(|(name, offset)| {
            !name.is_empty() && u64::from_str_radix(offset, 16).is_ok()
        });
        let user = place
            .strip_prefix("0x")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .is_some_and(|address| address < 0xffff_8000_0000_0000);
        assert!(
            named || user,
            "@where[{place}] is neither named nor user space:\n{text}"
        );
    }
    assert!(places.keys().any(|place| place.contains("+0x")), "{text}");
    assert!(
        samples.keys().any(|key| key.ends_with(", ppx-spin")),
        "the spinning process was never sampled:\n{text}"
    );
    let _ = std::fs::remove_dir_all(directory);
}

fn tempdir() -> std::path::PathBuf {
    let thread = std::thread::current();
    guest::tempdir(&thread.name().unwrap_or("examples").replace("::", "-"))
}
