//! The cost of kernel probes in Debian's kernel under QEMU (TCG, so the numbers
//! are the emulator's, useful only compared with each other): the mean time of a
//! `getppid` call un-probed, with a kprobe running an empty handler (the translated
//! program's prologue: the hit counted), and with a kprobe running `count()`; and
//! the time from a script's text to its probes being live over the serial port.
//!
//! `cargo test -p linux-adapter --test guest_bench -- --nocapture` prints them.

mod common;
mod guest;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{arm, program};
use guest::{SHELL_HELPERS, initramfs, one_guest_at_a_time, tempdir, wait_console};
use lang::compile;
use lang::source::Sources;
use probe_port_protocol::message::{ArmRequest, ProbeId, ReplyBody, RequestBody, Site};
use qemu::linux::{DebianKernel, INIT_PROLOGUE, PASS_AND_EXIT};
use userland_client::port::Port;
use userland_client::uprobe::KernelSymbolResolver;

/// Calls per measurement.
const CALLS: u64 = 100_000;

fn init() -> String {
    format!(
        "{INIT_PROLOGUE}{SHELL_HELPERS}
probeport-linuxd --serial /dev/ttyS1 &
getppid_loop 1000 0 > /dev/null
echo \"bench unprobed: $(getppid_loop {CALLS} 0)\"
wait_until live 1 1200
echo \"bench empty handler: $(getppid_loop {CALLS} 0)\"
wait_until probes 0 1200
echo \"bench: between sessions\"
wait_until live 1 1200
echo \"bench count: $(getppid_loop {CALLS} 0)\"
wait_until probes 0 1200
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
        Ok(ReplyBody::ProbeStats(stats)) => stats.hits,
        _ => panic!("no stats: {:?}", reply.get()),
    }
}

#[test]
fn probe_costs_and_script_to_live_latency_in_debians_kernel() {
    let _guard = one_guest_at_a_time();
    let kernel = DebianKernel::get().unwrap_or_else(|error| panic!("{error}"));
    let directory = tempdir("guest-bench");
    let initrd = initramfs(&kernel, &init(), &directory);
    let mut config = kernel.config(&initrd, "").probe_port(true);
    config.timeout = Duration::from_secs(300);
    let mut qemu = qemu::Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
    let mut port = Port::new(qemu.take_port().expect("COM2 is wired"));
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

    // The previous session's end must reach the guest first.
    wait_console(&qemu, "bench: between sessions", Duration::from_secs(60));
    // A script, from its text to live probes: compile, handshake, maps, arm, start.
    let script_text = r#"probe kernel.function("__x64_sys_getppid") { @calls = count(); }"#;
    let begun = Instant::now();
    let mut sources = Sources::new();
    sources.add_script("bench.probe", script_text);
    let (script, diagnostics) = compile(&sources, &KernelSymbolResolver, &Default::default());
    let script = script.unwrap_or_else(|| panic!("{diagnostics:?}"));
    let compiled = begun.elapsed();
    port.hello("bench")
        .expect("hello")
        .ok()
        .expect("hello accepted");
    for info in &script.maps {
        port.request(RequestBody::DefineMap(info.spec))
            .unwrap()
            .ok()
            .unwrap();
    }
    let mut armed = Vec::new();
    for attachment in script.probes.iter().flat_map(|probe| &probe.attachments) {
        let (code, entry) = (attachment.program_bytes(), attachment.entry_program_bytes());
        let reply = port
            .request(RequestBody::Arm(ArmRequest {
                site: attachment.site.to_wire(&entry),
                program: &code,
            }))
            .unwrap();
        match reply.ok() {
            Ok(ReplyBody::Armed { probe }) => armed.push(probe.0),
            _ => panic!("not armed: {:?}", reply.get()),
        }
    }
    let at_armed = begun.elapsed();
    port.request(RequestBody::Start).unwrap().ok().unwrap();
    let live = begun.elapsed();
    let counted = wait_alive(&qemu, &mut port, "bench count:");
    assert_eq!(hits(&mut port, armed[0]), CALLS);
    port.request(RequestBody::Goodbye).unwrap().ok().unwrap();
    drop(port);
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
    let (empty, counted) = (per_call(&empty), per_call(&counted));
    eprintln!("getppid under TCG, {CALLS} calls each, mean per call:");
    eprintln!("  un-probed                 {unprobed:>7} ns");
    eprintln!(
        "  kprobe, empty handler     {empty:>7} ns  (+{} ns per hit)",
        empty as i64 - unprobed as i64
    );
    eprintln!(
        "  kprobe, count()           {counted:>7} ns  (+{} ns per hit)",
        counted as i64 - unprobed as i64
    );
    eprintln!(
        "script to live: compiled in {compiled:?}, armed at {at_armed:?}, live at {live:?} \
         (over the guest's COM2, {} probe)",
        armed.len()
    );
    assert!(unprobed > 0 && empty > 0 && counted > 0);
    let _ = std::fs::remove_dir_all(&directory);
}
