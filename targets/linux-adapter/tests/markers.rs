//! The daemon's marker table (kernel tracepoints), its timers and `Symbolize`, at
//! the protocol level on this host: what `Hello` announces, what `DescribeMarker`
//! lists, what a marker program may read, and how addresses are named. Needs root
//! (the daemon mounts tracefs when it is missing); never skips.

mod common;

use common::*;
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::message::{
    ArgType, Capabilities, ErrorDetail, ReplyBody, RequestBody, Site, TimerScope,
};

#[test]
fn tracepoints_are_the_marker_table() {
    let daemon = Daemon::start(&[]);
    let mut port = daemon.client();
    let mut names = Vec::new();
    let mut index = 0;
    loop {
        let reply = port.request(RequestBody::DescribeMarker { index }).unwrap();
        match reply.ok() {
            Ok(ReplyBody::Marker(marker)) => {
                assert_eq!((marker.index, marker.total, marker.address), (index, 3, 0));
                let args: Vec<(&str, ArgType)> =
                    marker.args.iter().map(|arg| (arg.name, arg.ty)).collect();
                if marker.name == "raw_syscalls:sys_enter" {
                    let mut expected = vec![("number", ArgType::I64)];
                    let elements = ["arg0", "arg1", "arg2", "arg3", "arg4", "arg5"];
                    expected.extend(elements.map(|name| (name, ArgType::U64)));
                    assert_eq!(args, expected);
                }
                names.push(marker.name.to_string());
            }
            _ => {
                let error = reply.get().expect_err("past the table");
                assert_eq!(error.code, ErrorCode::UNKNOWN_MARKER);
                assert_eq!(error.detail, ErrorDetail::Value(3));
                break;
            }
        }
        index += 1;
    }
    assert_eq!(
        names,
        [
            "raw_syscalls:sys_enter",
            "raw_syscalls:sys_exit",
            "sched:sched_switch"
        ]
    );
}

#[test]
fn hello_announces_markers_timers_and_symbolize() {
    let daemon = Daemon::start(&["--tracepoints", "raw_syscalls:sys_enter,no:such"]);
    let stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let mut port = userland_client::port::Port::new(stream);
    port.set_timeout(std::time::Duration::from_secs(20));
    let reply = port.hello("capabilities").unwrap();
    let Ok(ReplyBody::Hello(hello)) = reply.ok() else {
        panic!("{:?}", reply.get());
    };
    for bit in [
        Capabilities::MARKER,
        Capabilities::TIMER,
        Capabilities::PROFILE,
        Capabilities::SYMBOLIZE,
    ] {
        assert!(hello.capabilities.has(bit), "{:?}", hello.capabilities);
    }
    // A tracepoint tracefs does not have is left out of the table.
    let reply = port
        .request(RequestBody::DescribeMarker { index: 0 })
        .unwrap();
    let Ok(ReplyBody::Marker(marker)) = reply.ok() else {
        panic!("{:?}", reply.get());
    };
    assert_eq!((marker.name, marker.total), ("raw_syscalls:sys_enter", 1));
}

#[test]
fn marker_arguments_are_read_whole_and_timers_need_a_period() {
    let daemon = Daemon::start(&[]);
    let mut port = daemon.client();
    // Argument 0 (`number`) read as its 8-byte slot: armed.
    let whole = arm(
        &mut port,
        Site::Marker { index: 0 },
        &program("ldxdw r2, [r1+0]\nmov64 r0, 0\nexit"),
    );
    assert!(
        matches!(whole.ok(), Ok(ReplyBody::Armed { .. })),
        "{:?}",
        whole.get()
    );
    // Half of it: refused, as the translator cannot say what that means.
    let half = arm(
        &mut port,
        Site::Marker { index: 0 },
        &program("ldxw r2, [r1+0]\nmov64 r0, 0\nexit"),
    );
    let error = half.get().expect_err("refused");
    assert_eq!(error.code, ErrorCode::UNSUPPORTED);
    let timer = arm(
        &mut port,
        Site::Timer {
            period_ns: 10_000_000,
            scope: TimerScope::EachCpu,
        },
        &program("ldxdw r2, [r1+128]\nmov64 r0, 0\nexit"),
    );
    assert!(
        matches!(timer.ok(), Ok(ReplyBody::Armed { .. })),
        "{:?}",
        timer.get()
    );
    let no_period = arm(
        &mut port,
        Site::Timer {
            period_ns: 0,
            scope: TimerScope::OneCpu,
        },
        &program("mov64 r0, 0\nexit"),
    );
    let error = no_period.get().expect_err("refused");
    assert_eq!(error.code, ErrorCode::INVALID_ARGUMENT);
    let missing = arm(
        &mut port,
        Site::Marker { index: 9 },
        &program("mov64 r0, 0\nexit"),
    );
    let error = missing.get().expect_err("refused");
    assert_eq!(
        (error.code, error.detail),
        (ErrorCode::UNKNOWN_MARKER, ErrorDetail::Value(9))
    );
}

#[test]
fn symbolize_names_kernel_text_from_kallsyms() {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("/proc/kallsyms");
    let (start, name) = kallsyms
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let address = u64::from_str_radix(parts.next()?, 16).ok()?;
            let kind = parts.next()?;
            let name = parts.next()?;
            (kind == "T" && name == "schedule").then(|| (address, name.to_string()))
        })
        .next()
        .expect("schedule in kallsyms");
    let daemon = Daemon::start(&[]);
    let mut port = daemon.client();
    let reply = port
        .request(RequestBody::Symbolize { address: start + 3 })
        .unwrap();
    match reply.ok() {
        Ok(ReplyBody::Symbol {
            address,
            name: found,
            offset,
        }) => assert_eq!((address, found, offset), (start + 3, name.as_str(), 3)),
        _ => panic!("{:?}", reply.get()),
    }
    let reply = port
        .request(RequestBody::Symbolize { address: 0x1000 })
        .unwrap();
    let error = reply.get().expect_err("no symbol");
    assert_eq!(
        (error.code, error.detail),
        (ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("address"))
    );
}
