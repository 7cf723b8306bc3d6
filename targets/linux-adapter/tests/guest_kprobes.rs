//! Kernel probes in Debian's kernel under QEMU (TCG): the daemon runs in the guest
//! and serves the port on `/dev/ttyS1`, the test is the client on the harness's
//! socket. The build machines' kernel has no kprobes; the guest's has.
//!
//! The guest waits for the host: its workload runs once the host's probes are live,
//! which it sees in `/sys/kernel/debug/kprobes/list` (a perf kprobe is listed from
//! `perf_event_open` on, marked `[DISABLED]` until `Start` enables it). It then
//! waits for the probes to disappear from the list, which is how it sees the
//! session end.

mod common;
mod guest;

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{aggregate_map, arm, define, program, read_map};
use guest::{
    DAEMON_HELPERS, guest_lines, initramfs, one_guest_at_a_time, run_script_until_workload,
    tempdir, wait_console,
};
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::maps::AggregateKind;
use probe_port_protocol::message::{Capabilities, ReplyBody, RequestBody, Site};
use qemu::linux::{DebianKernel, INIT_PROLOGUE, PASS_AND_EXIT};
use userland_client::port::Port;

/// Calls the workload makes while the first session's probes are live.
const CALLS: u32 = 1000;
/// What the workload passes in the first argument register of each call.
const ARG: u64 = 4242;

/// The guest's script: the daemon, then the two phases the host drives.
fn init() -> String {
    format!(
        "{INIT_PROLOGUE}
fail() {{ echo \"VERDICT: FAIL $*\"; poweroff -f; }}
list=/sys/kernel/debug/kprobes/list
probes() {{ grep -c sys_getppid $list; }}
live() {{ grep sys_getppid $list | grep -vc DISABLED; }}
wait_until() {{ n=0; until [ \"$($1)\" = \"$2\" ]; do usleep 100000; n=$((n+1)); [ $((n % 50)) = 0 ] && {{ echo \"guest: waiting for $1 = $2:\"; cat $list; }}; [ $n -lt $3 ] || {{ cat $list; fail \"$1 is $($1), not $2\"; }}; done; }}
pmu=/sys/bus/event_source/devices/kprobe
echo \"guest: kprobe PMU type $(cat $pmu/type), retprobe $(cat $pmu/format/retprobe)\"
echo \"guest: kernel $(uname -r), kprobes on getppid at boot: $(probes)\"
{DAEMON_HELPERS}daemon --serial /dev/ttyS1 --lease-ms 3000
wait_until live 2 300
echo \"guest: live: $(grep sys_getppid $list | tr -s ' ' | tr '\\n' ';')\"
getppid_loop {CALLS} {ARG}
wait_until probes 0 1200
wait_until ended 1 1200
echo \"guest: first session over, kprobes on getppid: $(probes)\"
wait_until live 1 1200
getppid_loop 10 0
echo \"guest: client gone quiet\"
wait_until probes 0 300
wait_until ended 2 300
echo \"guest: after the silent client: $(probes) kprobes on getppid\"
{PASS_AND_EXIT}
"
    )
}

/// Waits for a console line containing `text`, renewing the lease meanwhile.
fn wait_alive(qemu: &qemu::Qemu, port: &mut Port<UnixStream>, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let console = qemu.console();
        if let Some(line) = console.lines().find(|line| line.contains(text)) {
            return line.to_string();
        }
        if console.contains("VERDICT: FAIL") || Instant::now() > deadline {
            panic!("no {text:?} on the guest's console:\n{console}");
        }
        port.request(RequestBody::KeepAlive)
            .unwrap_or_else(|error| panic!("keep-alive: {error}\n{console}"))
            .ok()
            .unwrap_or_else(|error| panic!("keep-alive: {error}\n{console}"));
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn armed(reply: &userland_client::port::Reply) -> u32 {
    match reply.ok() {
        Ok(ReplyBody::Armed { probe }) => probe.0,
        _ => panic!("not armed: {:?}", reply.get()),
    }
}

#[test]
fn kprobes_and_kretprobes_count_a_syscall_exactly_in_debians_kernel() {
    let _guard = one_guest_at_a_time();
    let started = Instant::now();
    let kernel = DebianKernel::get().unwrap_or_else(|error| panic!("{error}"));
    let directory = tempdir("guest-kprobes");
    let initrd = initramfs(&kernel, &init(), &directory);
    let config = kernel.config(&initrd, "").probe_port(true);
    let mut qemu = qemu::Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
    let stream: UnixStream = qemu.take_port().expect("COM2 is wired");
    let mut port = Port::new(stream);
    port.set_timeout(Duration::from_secs(60));

    // Session 1, once the daemon has opened (and flushed) the line.
    wait_console(&qemu, "probeport-linuxd: serving", Duration::from_secs(90));
    let reply = port
        .hello("guest kprobe test")
        .unwrap_or_else(|error| panic!("hello: {error}\n{}", qemu.console()));
    let cpus = match reply.ok() {
        Ok(ReplyBody::Hello(hello)) => {
            assert!(
                hello.capabilities.has(Capabilities::KERNEL_SYMBOL),
                "{hello:?}"
            );
            assert!(hello.kernel.name.starts_with("Linux 6."), "{hello:?}");
            assert_eq!(hello.kernel.build_id.len(), 20, "{hello:?}");
            usize::from(hello.cpu_count)
        }
        _ => panic!("no hello: {:?}", reply.get()),
    };
    let booted = started.elapsed();
    let count = aggregate_map(0, AggregateKind::Count, 8);
    let returned = aggregate_map(1, AggregateKind::Max, 8);
    let argument = aggregate_map(2, AggregateKind::Max, 8);
    for spec in [count, returned, argument] {
        define(&mut port, spec);
    }
    // Unknown symbols are the kernel's to refuse.
    let refused = arm(
        &mut port,
        Site::KernelSymbol {
            symbol: "probeport_no_such_function",
            offset: 0,
            is_return: false,
            entry_program: &[],
        },
        &program("mov64 r0, 0\nexit"),
    );
    let error = refused.get().expect_err("an unknown symbol is refused");
    assert_eq!(error.code, ErrorCode::INVALID_ARGUMENT, "{error:?}");
    // An offset inside an instruction is the kernel's to refuse.
    let refused = arm(
        &mut port,
        Site::KernelSymbol {
            symbol: "__x64_sys_getppid",
            offset: 1,
            is_return: false,
            entry_program: &[],
        },
        &program("mov64 r0, 0\nexit"),
    );
    let error = refused
        .get()
        .expect_err("an offset inside an instruction is refused");
    assert_eq!(error.code, ErrorCode::UNSUPPORTED, "{error:?}");
    assert_eq!(
        error.detail,
        probe_port_protocol::message::ErrorDetail::Text("not an instruction boundary")
    );
    // Entry: count, and the user's first argument through `struct pt_regs *` in rdi.
    let entry = armed(&arm(
        &mut port,
        Site::KernelSymbol {
            symbol: "__x64_sys_getppid",
            offset: 0,
            is_return: false,
            entry_program: &[],
        },
        &program(
            "
    ldxdw r3, [r1+40]
    add64 r3, 112
    mov64 r1, r10
    add64 r1, -16
    mov64 r2, 8
    call read_kernel
    ldxdw r6, [r10-16]
    mov64 r7, 0
    stxdw [r10-8], r7
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, 1
    call aggregate
    mov64 r1, 2
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, r6
    call aggregate
    mov64 r0, 0
    exit
",
        ),
    ));
    // Return: the largest value returned (rax).
    let exit = armed(&arm(
        &mut port,
        Site::KernelSymbol {
            symbol: "__x64_sys_getppid",
            offset: 0,
            is_return: true,
            entry_program: &[],
        },
        &program(
            "
    ldxdw r3, [r1+0]
    mov64 r7, 0
    stxdw [r10-8], r7
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -8
    call aggregate
    mov64 r0, 0
    exit
",
        ),
    ));
    port.request(RequestBody::Start).unwrap().ok().unwrap();
    let workload = wait_alive(&qemu, &mut port, "guest: workload");
    assert!(
        workload.starts_with(&format!("guest: workload {CALLS} calls, getppid 1,")),
        "the workload's parent is init: {workload}"
    );
    port.request(RequestBody::Stop).unwrap().ok().unwrap();
    let mut total = |spec| -> Vec<(Vec<u8>, Vec<u64>)> {
        read_map(&mut port, &spec, cpus)
            .into_iter()
            .map(|(key, per_cpu)| (key, per_cpu.into_iter().map(|words| words[0]).collect()))
            .collect()
    };
    let counts = total(count);
    assert_eq!(counts.len(), 1);
    assert_eq!(
        counts[0].1.iter().sum::<u64>(),
        u64::from(CALLS),
        "{counts:?}"
    );
    let largest = |entries: Vec<(Vec<u8>, Vec<u64>)>| {
        entries[0].1.iter().map(|word| *word as i64).max().unwrap()
    };
    assert_eq!(largest(total(returned)), 1, "getppid returned 1");
    assert_eq!(largest(total(argument)), ARG as i64, "the user's rdi");
    for probe in [entry, exit] {
        let reply = port
            .request(RequestBody::ProbeStats {
                probe: probe_port_protocol::message::ProbeId(probe),
            })
            .unwrap();
        match reply.ok() {
            Ok(ReplyBody::ProbeStats(stats)) => {
                assert_eq!(stats.hits, u64::from(CALLS), "probe {probe}: {stats:?}");
                assert_eq!(stats.faults, 0, "probe {probe}: {stats:?}");
            }
            _ => panic!("no stats: {:?}", reply.get()),
        }
    }
    port.request(RequestBody::Goodbye).unwrap().ok().unwrap();
    wait_console(&qemu, "guest: first session over", Duration::from_secs(60));

    // Session 2: a probe, Start, then the client goes silent and the lease ends
    // the session; the guest checks that no kprobe is left.
    let reply = port.hello("silent client").expect("hello answered");
    assert!(
        matches!(reply.ok(), Ok(ReplyBody::Hello(_))),
        "{:?}",
        reply.get()
    );
    armed(&arm(
        &mut port,
        Site::KernelSymbol {
            symbol: "__x64_sys_getppid",
            offset: 0,
            is_return: false,
            entry_program: &[],
        },
        &program("mov64 r0, 0\nexit"),
    ));
    port.request(RequestBody::Start).unwrap().ok().unwrap();
    let quiet = Instant::now();
    drop(port);
    let outcome = qemu.wait().unwrap_or_else(|error| panic!("{error}"));
    let console = &outcome.console;
    for line in guest_lines(console) {
        eprintln!("{line}");
    }
    eprintln!(
        "booted and answered Hello in {booted:?}; lease end seen {:?} after the client went quiet; whole run {:?}",
        quiet.elapsed(),
        started.elapsed()
    );
    assert!(
        console.contains("kprobes on getppid at boot: 0"),
        "{console}"
    );
    assert!(
        console.contains("guest: after the silent client: 0 kprobes on getppid"),
        "{console}"
    );
    assert!(console.contains("VERDICT: PASS"), "{console}");
    let _ = std::fs::remove_dir_all(&directory);
}

/// The guest's script for the client test: the daemon, the workload once the
/// three kprobes are live (the entry, the return and the return's entry program), then the end of the session seen in the kprobe list.
fn client_init() -> String {
    format!(
        "{INIT_PROLOGUE}
fail() {{ echo \"VERDICT: FAIL $*\"; poweroff -f; }}
list=/sys/kernel/debug/kprobes/list
probes() {{ grep -c sys_getppid $list; }}
live() {{ grep sys_getppid $list | grep -vc DISABLED; }}
wait_until() {{ n=0; until [ \"$($1)\" = \"$2\" ]; do usleep 100000; n=$((n+1)); [ $n -lt $3 ] || {{ cat $list; fail \"$1 is $($1), not $2\"; }}; done; }}
{DAEMON_HELPERS}daemon --serial /dev/ttyS1
wait_until live 3 1200
getppid_loop {CALLS} {ARG}
wait_until probes 0 1200
wait_until ended 1 1200
echo \"guest: session over, kprobes on getppid: $(probes)\"
{PASS_AND_EXIT}
"
    )
}

/// The script a user would write, compiled and run by the client library: kernel
/// functions by name (no `--kernel`), a register, memory through it, `$return`, and
/// a value saved at the entry for the return (`@entry`).
const SCRIPT: &str = r#"
probe kernel.function("__x64_sys_getppid") {
    @calls = count();
    @arg = max(*(u64 *)(reg("rdi") + 112));
}
probe kernel.function("__x64_sys_getppid").return {
    @returned = max($return);
    @arg_at_entry = max(@entry(*(u64 *)(reg("rdi") + 112)));
}
"#;

#[test]
fn the_client_runs_a_script_on_kernel_functions_by_name_in_debians_kernel() {
    use userland_client::session::SessionOptions;

    let _guard = one_guest_at_a_time();
    let started = Instant::now();
    let kernel = DebianKernel::get().unwrap_or_else(|error| panic!("{error}"));
    let directory = tempdir("guest-client");
    let initrd = initramfs(&kernel, &client_init(), &directory);
    let config = kernel.config(&initrd, "").probe_port(true);
    let mut qemu = qemu::Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
    let mut port = Port::new(qemu.take_port().expect("COM2 is wired"));
    port.set_timeout(Duration::from_secs(30));
    wait_console(&qemu, "probeport-linuxd: serving", Duration::from_secs(90));
    let booted = started.elapsed();

    // The session ends when the guest's workload is done (Ctrl-C, as it were).
    let (summary, out, err) = run_script_until_workload(
        &qemu,
        &mut port,
        ("getppid.probe", SCRIPT),
        &SessionOptions::default(),
        Duration::from_secs(120),
    );
    drop(port);
    let outcome = qemu.wait().unwrap_or_else(|error| panic!("{error}"));
    for line in guest_lines(&outcome.console) {
        eprintln!("{line}");
    }
    eprintln!("client output:\n{out}{err}");
    eprintln!("booted in {booted:?}; whole run {:?}", started.elapsed());
    assert!(summary.unaccounted.is_empty(), "{summary:?}");
    assert!(
        out.contains(&format!("@calls: {CALLS}")),
        "exact count:\n{out}"
    );
    assert!(
        out.contains(&format!("@arg: {ARG}")),
        "the user's rdi:\n{out}"
    );
    assert!(out.contains("@returned: 1"), "getppid returned 1:\n{out}");
    assert!(
        out.contains(&format!("@arg_at_entry: {ARG}")),
        "the entry's value at the return:\n{out}"
    );
    assert!(
        outcome
            .console
            .contains("guest: session over, kprobes on getppid: 0"),
        "{}",
        outcome.console
    );
    assert!(
        outcome.console.contains("VERDICT: PASS"),
        "{}",
        outcome.console
    );
    let _ = std::fs::remove_dir_all(&directory);
}
