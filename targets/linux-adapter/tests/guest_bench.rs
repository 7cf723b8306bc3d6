//! The cost of kernel probes in Debian's kernel under QEMU (TCG, so the numbers
//! are the emulator's, useful only compared with each other), in one boot: the
//! mean time of a `getppid` call un-probed; with a bare kprobe event made through
//! tracefs (`p:probeport_bare __x64_sys_getppid` in `kprobe_events`, enabled, no
//! BPF program), once writing each hit to the ftrace ring buffer and once with
//! `tracing_on` 0 (the kprobe and the event's handler, nothing recorded); with a
//! kprobe running an empty handler through the port (the translated program's
//! prologue: the hit counted); and with `count()` through the `probeport` binary,
//! as a user runs it. And the time from starting `probeport run` on a script to
//! its probes being armed, over the guest's serial port.
//!
//! `cargo test -p linux-adapter --test guest_bench -- --nocapture` prints them.
//! The guest runs under single-threaded TCG (its two vCPUs interleave on one host
//! thread), because enabling probes patches kernel text.

mod common;
mod guest;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::cli::{Run, relay};
use common::{arm, program};
use guest::{DAEMON_HELPERS, SHELL_HELPERS, initramfs, one_guest_at_a_time, tempdir, wait_console};
use probe_port_protocol::message::{ProbeId, ReplyBody, RequestBody, Site};
use qemu::linux::{DebianKernel, INIT_PROLOGUE, PASS_AND_EXIT};
use userland_client::port::Port;

/// Calls per measurement.
const CALLS: u64 = 100_000;

/// The guest's script: the measurements without the daemon first (so no probe of
/// the host's can be live during them), then the daemon and the two sessions. A
/// kprobe is listed enabled a moment before ftrace has patched its call site
/// (under TCG, runs that started at once counted 2049 to 58683 of 100000 calls),
/// so the guest waits a second after it sees the probe enabled.
fn init() -> String {
    format!(
        "{INIT_PROLOGUE}{SHELL_HELPERS}
getppid_loop 1000 0 > /dev/null
echo \"bench unprobed: $(getppid_loop {CALLS} 0)\"
t=/sys/kernel/tracing
echo 'p:probeport_bare __x64_sys_getppid' > $t/kprobe_events || fail 'no tracefs kprobe event'
echo 1 > $t/events/kprobes/probeport_bare/enable
echo \"bench bare kprobe event, recorded: $(getppid_loop {CALLS} 0)\"
echo 0 > $t/tracing_on
echo \"bench bare kprobe event, tracing off: $(getppid_loop {CALLS} 0)\"
echo 1 > $t/tracing_on
echo 0 > $t/events/kprobes/probeport_bare/enable
echo \"bench bare hits: $(grep probeport_bare $t/kprobe_profile)\"
echo '-:probeport_bare' >> $t/kprobe_events
echo > $t/trace
{DAEMON_HELPERS}daemon --serial /dev/ttyS1
wait_until live 1 1200
sleep 1
echo \"bench empty handler: $(getppid_loop {CALLS} 0)\"
wait_until probes 0 1200
echo \"bench: between sessions\"
wait_until live 1 1200
sleep 1
echo \"bench count: $(getppid_loop {CALLS} 0)\"
wait_until probes 0 1200
wait_until ended 2 1200
{PASS_AND_EXIT}
"
    )
}

/// Waits for a console line containing `text`, renewing the lease meanwhile.
fn wait_alive(qemu: &qemu::Qemu, port: &mut Port<UnixStream>, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let console = qemu.console();
        if let Some(line) = console.lines().find(|line| line.contains(text)) {
            return line.to_string();
        }
        assert!(
            !console.contains("VERDICT: FAIL") && Instant::now() < deadline,
            "no {text:?} on the guest's console:\n{console}"
        );
        port.request(RequestBody::KeepAlive)
            .expect("keep-alive answered")
            .ok()
            .expect("keep-alive accepted");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The nanoseconds per call a `bench` line reports.
fn per_call(line: &str) -> u64 {
    line.rsplit_once(", ")
        .and_then(|(_, tail)| tail.strip_suffix(" ns per call"))
        .and_then(|number| number.trim().parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"))
}

fn hits(port: &mut Port<UnixStream>, probe: u32) -> u64 {
    let reply = port
        .request(RequestBody::ProbeStats {
            probe: ProbeId(probe),
        })
        .expect("stats answered");
    match reply.ok() {
        Ok(ReplyBody::ProbeStats(stats)) => {
            eprintln!(
                "probe {probe}: {} hits, {} misses",
                stats.hits, stats.misses
            );
            stats.hits
        }
        _ => panic!("no stats: {:?}", reply.get()),
    }
}

#[test]
fn probe_costs_and_script_to_live_latency_in_debians_kernel() {
    let _guard = one_guest_at_a_time();
    let kernel = DebianKernel::get().unwrap_or_else(|error| panic!("{error}"));
    let directory = tempdir("guest-bench");
    let initrd = initramfs(&kernel, &init(), &directory);
    // One TCG thread: enabling kprobes and the tracefs event patches kernel text,
    // which multi-threaded TCG in QEMU 7.2 can miss on the other vCPU (DESIGN.md).
    let mut config = kernel
        .config(&initrd, "")
        .probe_port(true)
        .tcg_threading(qemu::TcgThreading::Single);
    config.timeout = Duration::from_secs(300);
    let mut qemu = qemu::Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
    let com2 = qemu.take_port().expect("COM2 is wired");
    let for_relay = com2.try_clone().expect("a second handle on COM2");
    let mut port = Port::new(com2);
    port.set_timeout(Duration::from_secs(30));
    wait_console(&qemu, "probeport-linuxd: serving", Duration::from_secs(90));

    // A kprobe with an empty handler.
    port.hello("bench")
        .expect("hello")
        .ok()
        .expect("hello accepted");
    let reply = arm(
        &mut port,
        Site::KernelSymbol {
            symbol: "__x64_sys_getppid",
            offset: 0,
            is_return: false,
            entry_program: &[],
        },
        &program("mov64 r0, 0\nexit"),
    );
    let Ok(ReplyBody::Armed { probe }) = reply.ok() else {
        panic!("not armed: {:?}", reply.get());
    };
    port.request(RequestBody::Start).unwrap().ok().unwrap();
    let empty = wait_alive(&qemu, &mut port, "bench empty handler:");
    assert_eq!(hits(&mut port, probe.0), CALLS);
    port.request(RequestBody::Goodbye).unwrap().ok().unwrap();
    drop(port);

    // The previous session's end must reach the guest first.
    wait_console(&qemu, "bench: between sessions", Duration::from_secs(60));
    // `count()` through the probeport binary on COM2 (relayed to a socket): from
    // starting it to the `begin` probe's line, which it prints once every probe
    // is armed (and before `Start`).
    let socket = directory.join("com2.sock");
    relay(for_relay, &socket);
    let script_text = r#"probe begin { printf("armed\n"); }
probe kernel.function("__x64_sys_getppid") { @calls = count(); }"#;
    let port_argument = format!("unix:{}", socket.display());
    let mut run = Run::with_args(&[
        "run".as_ref(),
        "--port".as_ref(),
        port_argument.as_ref(),
        "-e".as_ref(),
        script_text.as_ref(),
    ]);
    let mut seen = Vec::new();
    run.wait_line("armed", Duration::from_secs(120), &mut seen);
    let armed = run.started.elapsed();
    let counted = wait_console(&qemu, "bench count:", Duration::from_secs(180));
    run.interrupt();
    let finished = run.finish(Duration::from_secs(300), seen);
    let count_line = format!("@calls: {CALLS}");
    assert!(
        finished.output.iter().any(|line| line == &count_line),
        "no {count_line:?}:\n{}",
        finished.text()
    );
    let outcome = qemu.wait().unwrap_or_else(|error| panic!("{error}"));
    assert!(
        outcome.console.contains("VERDICT: PASS"),
        "{}",
        outcome.console
    );
    let unprobed = outcome
        .console
        .lines()
        .find(|line| line.contains("bench unprobed:"))
        .map(per_call)
        .expect("the un-probed measurement");
    let console_figure = |text: &str| {
        outcome
            .console
            .lines()
            .find(|line| line.contains(text))
            .map(per_call)
            .unwrap_or_else(|| panic!("no {text:?} measurement"))
    };
    let recorded = console_figure("bench bare kprobe event, recorded:");
    let tracing_off = console_figure("bench bare kprobe event, tracing off:");
    let bare_hits = outcome
        .console
        .lines()
        .find(|line| line.contains("bench bare hits:"))
        .expect("the bare event's hits");
    // `kprobe_profile`: the event's name, its hits, its misses.
    let bare_counts: Vec<&str> = bare_hits.split_whitespace().skip(4).collect();
    assert_eq!(
        bare_counts,
        [(2 * CALLS).to_string().as_str(), "0"],
        "{bare_hits}"
    );
    let (empty, counted) = (per_call(&empty), per_call(&counted));
    let above = |figure: u64| figure as i64 - unprobed as i64;
    eprintln!("getppid under TCG, {CALLS} calls each, mean per call:");
    for (what, figure) in [
        ("un-probed", unprobed),
        (
            "tracefs kprobe event, no BPF, recorded in the trace buffer",
            recorded,
        ),
        ("tracefs kprobe event, no BPF, tracing_on 0", tracing_off),
        ("kprobe through the port, empty handler", empty),
        ("kprobe through the probeport binary, count()", counted),
    ] {
        eprintln!(
            "  {what:<60} {figure:>6} ns  (+{} ns per hit)",
            above(figure)
        );
    }
    eprintln!(
        "script to armed: {armed:?} from starting `probeport run -e SCRIPT` to its begin \
         line (compile, handshake, marker table, map, arm; over the guest's COM2)"
    );
    assert!(unprobed > 0 && recorded > 0 && tracing_off > 0 && empty > 0 && counted > 0);
    let _ = std::fs::remove_dir_all(&directory);
}
