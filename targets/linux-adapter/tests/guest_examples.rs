//! The shipped examples that make sense on Linux (`syscalls.probe`,
//! `profile.probe`), run unchanged by the `probeport` binary against the daemon in
//! Debian's kernel under QEMU (TCG, one thread: enabling tracepoints and timers
//! patches kernel text, see DESIGN.md), serving the port on the guest's COM2. The
//! binary reaches COM2 through a Unix socket the test relays
//! (`--port unix:PATH`), one session after the other, as a user would run it.
//!
//! The guest knows when the host's probes are live without a channel back: with
//! `kernel.bpf_stats_enabled` set, the `run_cnt` of the daemon's BPF programs
//! (`/proc/PID/fdinfo`) turns non-zero at the first hit, which for the
//! `raw_syscalls:sys_enter` handler is at once. It then runs its workload under
//! two names (`ppx-idle` with no `getppid` call, `ppx-busy` with 1000), so the
//! counts are exact: nothing else in the guest calls `getppid`, and the two runs
//! make the same other system calls.

mod common;
mod guest;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cli::{Run, examples, relay};
use guest::{DAEMON_HELPERS, initramfs_with, one_guest_at_a_time, tempdir, wait_console, workload};
use qemu::linux::{DebianKernel, INIT_PROLOGUE, PASS_AND_EXIT};

/// `getppid` calls of the counted workload.
const CALLS: u64 = 1000;

fn init() -> String {
    format!(
        "{INIT_PROLOGUE}
fail() {{ echo \"VERDICT: FAIL $*\"; poweroff -f; }}
echo 1 > /proc/sys/kernel/bpf_stats_enabled
{DAEMON_HELPERS}daemon --serial /dev/ttyS1
until daemon=$(pidof probeport-linuxd); do usleep 50000; done
programs() {{ ls -l /proc/$daemon/fd 2>/dev/null | grep -c bpf-prog; }}
running() {{ grep -h '^run_cnt' /proc/$daemon/fdinfo/* 2>/dev/null | grep -vc 'run_cnt:[[:space:]]*0$'; }}
wait_for() {{ n=0; until eval \"$1\"; do usleep 50000; n=$((n+1)); [ $n -lt $2 ] || fail \"waiting for $1\"; done; }}
wait_for '[ $(running) -ge 1 ]' 4800
ppx-idle 0 > /dev/null
ppx-busy {CALLS} > /dev/null
echo \"guest: syscalls workload done\"
wait_for '[ $(programs) = 0 ]' 4800
ppx-spin 1000000000 > /dev/null &
spin=$!
echo \"guest: spinning\"
wait_for '[ $(programs) -ge 1 ]' 4800
wait_for '[ $(programs) = 0 ]' 4800
wait_for '[ $(ended) = 2 ]' 4800
kill $spin
echo \"guest: profile session over\"
{PASS_AND_EXIT}
"
    )
}

#[test]
fn syscalls_and_profile_examples_in_debians_kernel() {
    let _guard = one_guest_at_a_time();
    let kernel = DebianKernel::get().unwrap_or_else(|error| panic!("{error}"));
    let directory = tempdir("guest-examples");
    let initrd = initramfs_with(
        &kernel,
        &init(),
        &directory,
        &[
            ("bin/ppx-idle", workload()),
            ("bin/ppx-busy", workload()),
            ("bin/ppx-spin", workload()),
        ],
    );
    let mut config = kernel
        .config(&initrd, "")
        .probe_port(true)
        .tcg_threading(qemu::TcgThreading::Single);
    config.timeout = Duration::from_secs(400);
    let mut qemu = qemu::Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
    wait_console(&qemu, "probeport-linuxd: serving", Duration::from_secs(120));
    let socket = directory.join("com2.sock");
    relay(qemu.take_port().expect("COM2 is wired"), &socket);
    let port = format!("unix:{}", socket.display());

    let run = Run::start(&port, &examples().join("syscalls.probe"));
    let syscalls = run.finish(Duration::from_secs(180), Vec::new());
    let text = format!("{}\n--- console:\n{}", syscalls.text(), qemu.console());
    assert!(
        qemu.console().contains("guest: syscalls workload done"),
        "the workload did not run while the probes were live:\n{text}"
    );
    let calls = syscalls.map("calls");
    let by_thread = syscalls.map("by_thread");
    assert_eq!(calls.get("getppid"), Some(&CALLS), "{text}");
    let (Some(idle), Some(busy)) = (by_thread.get("ppx-idle"), by_thread.get("ppx-busy")) else {
        panic!("the workload's names are missing:\n{text}");
    };
    assert_eq!(busy - idle, CALLS, "{text}");
    eprintln!(
        "syscalls.probe in the guest:\n{}",
        syscalls.output.join("\n")
    );

    wait_console(&qemu, "guest: spinning", Duration::from_secs(60));
    let run = Run::start(&port, &examples().join("profile.probe"));
    let profile = run.finish(Duration::from_secs(180), Vec::new());
    let text = format!("{}\n--- console:\n{}", profile.text(), qemu.console());
    let samples = profile.map("samples");
    let places = profile.map("where");
    let mut per_cpu = [0u64; 2];
    for (key, count) in &samples {
        let (cpu, _) = key.split_once(", ").expect("cpu, comm");
        per_cpu[cpu.parse::<usize>().expect("a CPU of the guest's two")] += count;
    }
    let most = (50.0 * profile.elapsed.as_secs_f64()).ceil() as u64 + 1;
    for (cpu, count) in per_cpu.iter().enumerate() {
        assert!(
            (1..=most).contains(count),
            "CPU {cpu}: {count} samples, at most {most}:\n{text}"
        );
    }
    assert_eq!(
        samples.values().sum::<u64>(),
        places.values().sum::<u64>(),
        "{text}"
    );
    // `probefunc`: kernel addresses named by the daemon from the guest's own
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
    let sampled: BTreeSet<&str> = samples
        .keys()
        .filter_map(|key| key.split_once(", ").map(|(_, comm)| comm))
        .collect();
    assert!(sampled.contains("ppx-spin"), "{text}");
    eprintln!("profile.probe in the guest:\n{}", profile.output.join("\n"));

    let outcome = qemu.wait().unwrap_or_else(|error| panic!("{error}"));
    assert!(
        outcome.console.contains("VERDICT: PASS"),
        "{}",
        outcome.console
    );
    let _ = std::fs::remove_dir_all(&directory);
}
