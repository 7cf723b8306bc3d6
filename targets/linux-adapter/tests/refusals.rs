//! Bad input and bad endings on this host: programs refused by our verifier, by
//! the translator and by Linux's verifier; clients without privilege; clients that
//! vanish or let their lease expire; a full event ring. Needs root; never skips.

mod common;

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::message::{ErrorDetail, ReplyBody, RequestBody, Site};
use probe_port_protocol::verifier::Rule;
use userland_client::port::{Port, Unsolicited};

fn work_site(path: &str) -> Site<'_> {
    let (_, offset) = function_site("probeport_work");
    Site::User {
        path,
        file_offset: offset,
        is_return: false,
        ref_ctr_offset: 0,
        entry_program: &[],
    }
}

#[test]
fn a_program_the_linux_verifier_refuses_carries_its_log() {
    let daemon = Daemon::start(&[]);
    let mut port = daemon.client();
    let path = traced().display().to_string();
    // Our verifier makes the product of a context pointer a plain number; Linux
    // refuses any multiplication of a pointer.
    let reply = arm(
        &mut port,
        work_site(&path),
        &program("mov64 r2, r1\nmul64 r2, 3\nmov64 r0, 0\nexit"),
    );
    let error = reply.get().unwrap_err();
    assert_eq!(error.code, ErrorCode::PROGRAM_REJECTED, "{error}");
    let ErrorDetail::Text(text) = error.detail else {
        panic!("no log text: {error}");
    };
    assert!(text.starts_with("Linux verifier: "), "{text}");
    assert!(text.contains("pointer arithmetic"), "{text}");
}

#[test]
fn our_verifier_and_the_translator_refuse_first() {
    let daemon = Daemon::start(&[]);
    let mut port = daemon.client();
    let path = traced().display().to_string();
    let reply = arm(
        &mut port,
        work_site(&path),
        &program("mov64 r0, 0\nja -2\nexit"),
    );
    let error = reply.get().unwrap_err();
    assert_eq!(error.code, ErrorCode::PROGRAM_REJECTED);
    assert_eq!(
        error.detail,
        ErrorDetail::Verifier {
            index: 1,
            rule: Rule::JumpBackward.code(),
            entry: false
        }
    );
    // Entry values exist only at return sites of the stub, for now.
    let reply = arm(
        &mut port,
        work_site(&path),
        &program("ldxdw r0, [r1+192]\nmov64 r0, 0\nexit"),
    );
    let error = reply.get().unwrap_err();
    assert_eq!(error.code, ErrorCode::UNSUPPORTED);
    assert!(error.to_string().contains("entry values"), "{error}");
    // Kernel sites are the stub's; the adapter has only user sites for now.
    let reply = arm(
        &mut port,
        Site::Dynamic {
            address: 0xffff_ffff_8100_0000,
            expected: &[0x55],
        },
        &program("mov64 r0, 0\nexit"),
    );
    assert_eq!(reply.get().unwrap_err().code, ErrorCode::UNSUPPORTED);
}

/// Run as `nobody` by [`clients_without_privilege_are_refused`]: connects to the
/// socket in `PROBEPORT_NOBODY_SOCKET` and prints what happened. Ignored in a
/// plain run: it is that test's child, not a test of its own.
#[test]
#[ignore = "run as nobody by clients_without_privilege_are_refused"]
fn nobody_client_helper() {
    let socket = std::env::var_os("PROBEPORT_NOBODY_SOCKET")
        .expect("PROBEPORT_NOBODY_SOCKET names the socket (set by the parent test)");
    match UnixStream::connect(&socket) {
        Err(error) => println!("OUTCOME connect-error {:?}", error.kind()),
        Ok(stream) => {
            let mut port = Port::new(stream);
            port.set_timeout(Duration::from_secs(10));
            match port.hello("nobody") {
                Ok(reply) => match reply.get() {
                    Ok(_) => println!("OUTCOME accepted"),
                    Err(error) => println!("OUTCOME refused {:?}", error.code),
                },
                Err(error) => println!("OUTCOME port-error {error}"),
            }
        }
    }
}

fn as_nobody(socket: &std::path::Path) -> String {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "nobody_client_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PROBEPORT_NOBODY_SOCKET", socket)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("the helper runs as nobody");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.split_once("OUTCOME ").map(|(_, outcome)| outcome))
        .unwrap_or_else(|| {
            panic!(
                "no outcome from the helper:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_string()
}

#[test]
fn clients_without_privilege_are_refused() {
    // The socket is root-only: nobody cannot even connect.
    let daemon = Daemon::start(&[]);
    assert_eq!(as_nobody(&daemon.socket), "connect-error PermissionDenied");
    // Opened to everyone, the peer's credentials still refuse it.
    let open = Daemon::start(&["--socket-mode", "666"]);
    assert_eq!(as_nobody(&open.socket), "refused ErrorCode::NOT_PRIVILEGED");
    // Root is still served.
    let mut port = open.client();
    port.request(RequestBody::Goodbye).unwrap().ok().unwrap();
}

/// The daemon's BPF object ids, from the `fdinfo` of its descriptors.
fn daemon_object_ids(daemon: &Daemon) -> (Vec<u32>, Vec<u32>) {
    let (mut programs, mut maps) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(format!("/proc/{}/fdinfo", daemon.pid())) else {
        return (programs, maps);
    };
    for entry in entries.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in info.lines() {
            if let Some(id) = line.strip_prefix("prog_id:") {
                programs.push(id.trim().parse().unwrap());
            } else if let Some(id) = line.strip_prefix("map_id:") {
                maps.push(id.trim().parse().unwrap());
            }
        }
    }
    (programs, maps)
}

fn uprobe_events() -> Option<String> {
    [
        "/sys/kernel/tracing/uprobe_events",
        "/sys/kernel/debug/tracing/uprobe_events",
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
}

/// Arms the USDT marker (semaphore included) and a function probe, starts them.
fn arm_and_start(port: &mut Port<UnixStream>) {
    let path = traced().display().to_string();
    let marker = userland_client::uprobe::usdt_marker(&traced(), "probeport", "tick").unwrap();
    let emit = program(
        "stdw [r10-8], 1\nmov64 r1, r10\nadd64 r1, -8\nmov64 r2, 8\ncall emit\nmov64 r0, 0\nexit",
    );
    for site in [
        Site::User {
            path: &path,
            file_offset: marker.file_offset,
            is_return: false,
            ref_ctr_offset: marker.semaphore_offset,
            entry_program: &[],
        },
        work_site(&path),
    ] {
        let reply = arm(port, site, &emit);
        assert!(
            matches!(reply.ok(), Ok(ReplyBody::Armed { .. })),
            "{:?}",
            reply.get()
        );
    }
    port.request(RequestBody::Start).unwrap().ok().unwrap();
}

/// Waits until the daemon holds no BPF object or perf event, and the ids it held
/// are gone from the system.
fn assert_everything_released(daemon: &Daemon, programs: &[u32], maps: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fds = daemon.kernel_object_fds();
        let live_programs = linux_adapter::sys::program_ids().unwrap();
        let live_maps = linux_adapter::sys::map_ids().unwrap();
        let left: Vec<u32> = programs
            .iter()
            .filter(|id| live_programs.contains(id))
            .chain(maps.iter().filter(|id| live_maps.contains(id)))
            .copied()
            .collect();
        if fds.is_empty() && left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still held: descriptors {fds:?}, ids {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_that_vanishes_mid_trace_leaves_nothing_behind() {
    let daemon = Daemon::start(&[]);
    let events_before = uprobe_events();
    let mut port = daemon.client();
    arm_and_start(&mut port);
    assert!(run_traced(10).ends_with("marks=10"));
    let (programs, maps) = daemon_object_ids(&daemon);
    assert_eq!(programs.len(), 2, "one program per probe");
    assert!(maps.len() >= 3, "ring, counters, statistics: {maps:?}");
    assert!(!daemon.kernel_object_fds().is_empty());

    drop(port); // No goodbye: the stream just ends.
    assert_everything_released(&daemon, &programs, &maps);
    // No uprobe is left: the semaphore is back to 0 and nothing fires.
    assert!(run_traced(10).ends_with("marks=0"));
    assert_eq!(uprobe_events(), events_before);
    // The daemon serves the next client.
    let mut port = daemon.client();
    port.request(RequestBody::Goodbye).unwrap().ok().unwrap();
}

#[test]
fn an_expired_lease_ends_the_session() {
    let daemon = Daemon::start(&["--lease-ms", "300"]);
    let mut port = daemon.client();
    arm_and_start(&mut port);
    let (programs, maps) = daemon_object_ids(&daemon);
    assert_eq!(programs.len(), 2);
    // Silence past the lease: the daemon ends the session and closes the stream.
    std::thread::sleep(Duration::from_millis(600));
    assert_everything_released(&daemon, &programs, &maps);
    assert!(run_traced(10).ends_with("marks=0"));
    assert!(port.request(RequestBody::KeepAlive).is_err());
}

#[test]
fn a_full_ring_loses_events_and_counts_each_one() {
    // One page of ring: 48 bytes per record, so at most 85 fit.
    let daemon = Daemon::start(&["--ring-bytes", "4096"]);
    let mut port = daemon.client();
    let path = traced().display().to_string();
    let reply = arm(
        &mut port,
        work_site(&path),
        &program(
            "ldxdw r6, [r1+40]\nstxdw [r10-16], r6\nstdw [r10-8], 7\nmov64 r1, r10\n\
             add64 r1, -16\nmov64 r2, 16\ncall emit\nmov64 r0, 0\nexit",
        ),
    );
    let Ok(ReplyBody::Armed { probe }) = reply.ok() else {
        panic!("{:?}", reply.get());
    };
    port.request(RequestBody::Start).unwrap().ok().unwrap();
    // With the daemon stopped nothing drains the ring while the program runs.
    const CALLS: u64 = 1000;
    let pid = daemon.pid() as libc::pid_t;
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let line = run_traced(CALLS);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(line.starts_with("total="));
    port.request(RequestBody::Stop).unwrap().ok().unwrap();
    port.poll(Duration::from_millis(100)).unwrap();

    // Per CPU, every sequence number is delivered or lost, exactly once.
    let mut covered: BTreeMap<u16, Vec<(u64, u64)>> = BTreeMap::new();
    let (mut delivered, mut lost) = (0u64, 0u64);
    for message in port.take_unsolicited() {
        match message {
            Unsolicited::Event(event) => {
                delivered += 1;
                covered.entry(event.cpu).or_default().push((event.seq, 1));
            }
            Unsolicited::Lost(report) => {
                lost += report.count;
                covered
                    .entry(report.cpu)
                    .or_default()
                    .push((report.first_seq, report.count));
            }
        }
    }
    assert_eq!(delivered + lost, CALLS);
    println!("{delivered} delivered, {lost} lost");
    assert!(lost > 0, "the ring never filled");
    assert!(delivered > 0 && delivered <= 85, "{delivered} delivered");
    let mut cpu_lost = 0;
    for (cpu, mut ranges) in covered {
        ranges.sort_unstable();
        let mut next = 0;
        for (first, count) in ranges {
            assert_eq!(first, next, "cpu {cpu}: a gap or an overlap");
            next = first + count;
        }
        let reply = port.request(RequestBody::CpuStats { cpu }).unwrap();
        let Ok(ReplyBody::CpuStats(stats)) = reply.ok() else {
            panic!("{:?}", reply.get());
        };
        assert_eq!(stats.next_seq, next);
        cpu_lost += stats.lost;
    }
    assert_eq!(cpu_lost, lost);
    let reply = port.request(RequestBody::ProbeStats { probe }).unwrap();
    let Ok(ReplyBody::ProbeStats(stats)) = reply.ok() else {
        panic!("{:?}", reply.get());
    };
    assert_eq!((stats.hits, stats.drops), (CALLS, lost));
}

#[test]
fn a_second_client_is_refused_while_a_session_is_open() {
    let daemon = Daemon::start(&[]);
    let mut first = daemon.client();
    let mut second = Port::new(UnixStream::connect(&daemon.socket).unwrap());
    second.set_timeout(Duration::from_secs(10));
    let reply = second.hello("second").unwrap();
    let error = reply.get().unwrap_err();
    assert_eq!(error.code, ErrorCode::BAD_STATE);
    assert_eq!(error.detail, ErrorDetail::Text("another session is open"));
    // The first session is untouched and, once it ends, the port is free again
    // (the daemon frees it just after the goodbye's reply, so allow it a moment).
    first.request(RequestBody::KeepAlive).unwrap().ok().unwrap();
    first.request(RequestBody::Goodbye).unwrap().ok().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut next = Port::new(UnixStream::connect(&daemon.socket).unwrap());
        next.set_timeout(Duration::from_secs(10));
        let reply = next.hello("third").unwrap();
        match reply.get() {
            Ok(_) => break,
            Err(error) if error.code == ErrorCode::BAD_STATE => {
                assert!(Instant::now() < deadline, "the port stays busy");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("{error}"),
        }
    }
}

#[test]
fn kernel_symbol_sites_follow_the_kprobe_pmu() {
    let daemon = Daemon::start(&[]);
    let stream = UnixStream::connect(&daemon.socket).expect("connect");
    let mut port = Port::new(stream);
    port.set_timeout(Duration::from_secs(20));
    let reply = port.hello("kprobe pmu").expect("hello");
    let Ok(ReplyBody::Hello(hello)) = reply.ok() else {
        panic!("{:?}", reply.get());
    };
    let has_kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    assert_eq!(
        hello
            .capabilities
            .has(probe_port_protocol::message::Capabilities::KERNEL_SYMBOL),
        has_kprobes
    );
    if !has_kprobes {
        // The build machines' kernel: refused, nothing armed.
        let reply = arm(
            &mut port,
            Site::KernelSymbol {
                symbol: "__x64_sys_getpid",
                offset: 0,
                is_return: false,
                entry_program: &[],
            },
            &program("mov64 r0, 0\nexit"),
        );
        let error = reply.get().expect_err("refused");
        assert_eq!(error.code, ErrorCode::UNSUPPORTED);
        assert_eq!(
            error.detail,
            ErrorDetail::Text("kernel symbol sites: no kprobe PMU")
        );
    }
}
