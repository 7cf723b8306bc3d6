//! End to end on this host: the daemon, real uprobes and BPF programs, the real
//! client library, and a C program with known calls (`tests/fixtures/traced.c`).
//!
//! Handlers are written in assembler text (the language has no `process(...)`
//! probe points yet). Needs root; fails, never skips, without it.

mod common;

use std::time::Duration;

use common::*;
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::maps::{AggregateKind, linear_bucket, log2_bucket};
use probe_port_protocol::message::{ErrorDetail, ReplyBody, RequestBody, Site};
use userland_client::port::Unsolicited;

/// Records `[index, step]` of every call of `probeport_work(index, step)` and
/// folds `index` into maps 0..=7 (every aggregation kind) under the key `step`.
fn unrolled_work_handler() -> String {
    // Jumps only go forward: one aggregate call per map.
    let mut text = String::from(
        "
    mov64 r9, r1
    ldxdw r6, [r9+40]
    ldxdw r7, [r9+32]
    stxdw [r10-16], r6
    stxdw [r10-8], r7
    mov64 r1, r10
    add64 r1, -16
    mov64 r2, 16
    call emit
    stxdw [r10-24], r7
",
    );
    for map in 0..8 {
        text.push_str(&format!(
            "    mov64 r1, {map}\n    mov64 r2, r10\n    add64 r2, -24\n    mov64 r3, r6\n    call aggregate\n"
        ));
    }
    text.push_str("    mov64 r0, 0\n    exit\n");
    text
}

fn kinds() -> [AggregateKind; 8] {
    [
        AggregateKind::Count,
        AggregateKind::Sum,
        AggregateKind::Min,
        AggregateKind::Max,
        AggregateKind::Avg,
        AggregateKind::Stats,
        AggregateKind::Log2Hist,
        AggregateKind::LinearHist {
            min: 10,
            max: 900,
            step: 100,
        },
    ]
}

#[test]
fn function_arguments_and_every_aggregation_are_exact() {
    let daemon = Daemon::start(&[]);
    let mut port = daemon.client();
    let cpus = linux_adapter::sys::possible_cpus().unwrap();
    let specs: Vec<_> = kinds()
        .iter()
        .enumerate()
        .map(|(map, kind)| aggregate_map(map as u16, *kind, 8))
        .collect();
    for spec in &specs {
        define(&mut port, *spec);
    }
    let (path, offset) = function_site("probeport_work");
    let reply = arm(
        &mut port,
        Site::User {
            path: &path,
            file_offset: offset,
            is_return: false,
            ref_ctr_offset: 0,
            entry_program: &[],
        },
        &program(&unrolled_work_handler()),
    );
    let Ok(ReplyBody::Armed { probe }) = reply.ok() else {
        panic!("not armed: {:?}", reply.get());
    };
    port.request(RequestBody::Start).unwrap().ok().unwrap();

    const CALLS: u64 = 1000;
    let line = run_traced(CALLS);
    assert!(line.starts_with("total="), "{line}");

    port.request(RequestBody::Stop).unwrap().ok().unwrap();
    port.poll(Duration::from_millis(100)).unwrap();
    let mut indexes = Vec::new();
    let mut lost = 0;
    for message in port.take_unsolicited() {
        match message {
            Unsolicited::Event(event) => {
                assert_eq!(event.probe, probe.0);
                assert_eq!(event.data.len(), 16);
                let index = u64::from_le_bytes(event.data[..8].try_into().unwrap());
                let step = u64::from_le_bytes(event.data[8..].try_into().unwrap());
                assert_eq!(step, 7);
                indexes.push(index);
            }
            Unsolicited::Lost(report) => lost += report.count,
        }
    }
    assert_eq!(lost, 0);
    indexes.sort_unstable();
    assert_eq!(indexes, (0..CALLS).collect::<Vec<_>>());

    let values: Vec<i64> = (0..CALLS as i64).collect();
    for spec in &specs {
        let entries = read_map(&mut port, spec, cpus);
        assert_eq!(entries.len(), 1, "{spec:?}");
        let (key, per_cpu) = &entries[0];
        assert_eq!(key, &7u64.to_le_bytes());
        let merged = merge(spec, per_cpu);
        let expected = expected(spec, &values);
        assert_eq!(merged, expected, "{spec:?}");
    }

    let reply = port.request(RequestBody::ProbeStats { probe }).unwrap();
    let Ok(ReplyBody::ProbeStats(stats)) = reply.ok() else {
        panic!("{:?}", reply.get());
    };
    assert_eq!((stats.hits, stats.faults, stats.drops), (CALLS, 0, 0));
    port.request(RequestBody::Goodbye).unwrap().ok().unwrap();
}

/// Merges per-CPU values with the client's own merge.
fn merge(spec: &probe_port_protocol::maps::MapSpec, per_cpu: &[Vec<u64>]) -> Vec<u64> {
    let probe_port_protocol::maps::MapKind::Aggregate(kind) = spec.kind else {
        panic!()
    };
    let bytes: Vec<Vec<u8>> = per_cpu
        .iter()
        .map(|words| words.iter().flat_map(|word| word.to_le_bytes()).collect())
        .collect();
    let values: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    lang::format::merge_aggregate(kind, &values)
        .into_iter()
        .map(|word| word as u64)
        .collect()
}

fn expected(spec: &probe_port_protocol::maps::MapSpec, values: &[i64]) -> Vec<u64> {
    let probe_port_protocol::maps::MapKind::Aggregate(kind) = spec.kind else {
        panic!()
    };
    let count = values.len() as u64;
    let sum = values.iter().sum::<i64>() as u64;
    let min = *values.iter().min().unwrap() as u64;
    let max = *values.iter().max().unwrap() as u64;
    match kind {
        AggregateKind::Count => vec![count],
        AggregateKind::Sum => vec![sum],
        AggregateKind::Min => vec![min],
        AggregateKind::Max => vec![max],
        AggregateKind::Avg => vec![count, sum],
        AggregateKind::Stats => vec![count, sum, min, max],
        AggregateKind::Log2Hist => {
            let mut buckets = vec![0; 65];
            for value in values {
                buckets[log2_bucket(*value)] += 1;
            }
            buckets
        }
        AggregateKind::LinearHist { min, max, step } => {
            let mut buckets = vec![0; usize::from(spec.value_size) / 8];
            for value in values {
                buckets[linear_bucket(*value, min, max, step)] += 1;
            }
            buckets
        }
    }
}

#[test]
fn a_missing_binary_or_symbol_is_refused_clearly() {
    let daemon = Daemon::start(&[]);
    let mut port = daemon.client();
    let reply = arm(
        &mut port,
        Site::User {
            path: "/nonexistent/probeport-traced",
            file_offset: 0x1000,
            is_return: false,
            ref_ctr_offset: 0,
            entry_program: &[],
        },
        &program("mov64 r0, 0\nexit"),
    );
    let error = reply.get().unwrap_err();
    assert_eq!(error.code, ErrorCode::INVALID_ARGUMENT);
    assert_eq!(error.detail, ErrorDetail::Text("path"));

    let missing = userland_client::uprobe::function_offset(&common::traced(), "no_such_function")
        .unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("no function named \"no_such_function\""),
        "{missing}"
    );
}

/// A handler emitting the marker's register arguments as 8-byte values, each
/// sign- or zero-extended from its declared size.
fn usdt_handler(arguments: &[userland_client::uprobe::UsdtArgument]) -> String {
    let mut text = String::from("    mov64 r9, r1\n");
    for (index, argument) in arguments.iter().enumerate() {
        let offset = argument.slot * 8;
        text.push_str(&format!("    ldxdw r6, [r9+{offset}]\n"));
        match argument.size {
            -1 => text.push_str("    mov64sx8 r6, r6\n"),
            -2 => text.push_str("    mov64sx16 r6, r6\n"),
            -4 => text.push_str("    mov64sx32 r6, r6\n"),
            1 => text.push_str("    and64 r6, 0xff\n"),
            2 => text.push_str("    and64 r6, 0xffff\n"),
            4 => text.push_str("    mov32 r6, r6\n"),
            _ => {}
        }
        let at = -8 * (arguments.len() - index) as i64;
        text.push_str(&format!("    stxdw [r10{at}], r6\n"));
    }
    let size = 8 * arguments.len();
    text.push_str(&format!(
        "    mov64 r1, r10\n    add64 r1, -{size}\n    mov64 r2, {size}\n    call emit\n    mov64 r0, 0\n    exit\n"
    ));
    text
}

fn events(port: &mut userland_client::port::Port<std::os::unix::net::UnixStream>) -> Vec<Vec<u64>> {
    port.poll(Duration::from_millis(100)).unwrap();
    let mut records = Vec::new();
    for message in port.take_unsolicited() {
        match message {
            Unsolicited::Event(event) => records.push(
                event
                    .data
                    .chunks_exact(8)
                    .map(|word| u64::from_le_bytes(word.try_into().unwrap()))
                    .collect(),
            ),
            Unsolicited::Lost(report) => panic!("lost events: {report:?}"),
        }
    }
    records
}

#[test]
fn a_usdt_marker_with_a_semaphore_fires_with_its_arguments() {
    let daemon = Daemon::start(&[]);
    let mut port = daemon.client();
    let marker = userland_client::uprobe::usdt_marker(&traced(), "probeport", "tick").unwrap();
    assert_ne!(marker.semaphore_offset, 0);
    let arguments = userland_client::uprobe::usdt_register_arguments(&marker.arguments)
        .unwrap_or_else(|| panic!("not register arguments: {}", marker.arguments));
    assert_eq!(arguments.len(), 2);
    assert_eq!(arguments[0].size, -4);

    // Without the probe the semaphore is 0 and the marker code never runs.
    assert!(run_traced(50).ends_with("marks=0"));

    let path = traced().display().to_string();
    let reply = arm(
        &mut port,
        Site::User {
            path: &path,
            file_offset: marker.file_offset,
            is_return: false,
            ref_ctr_offset: marker.semaphore_offset,
            entry_program: &[],
        },
        &program(&usdt_handler(&arguments)),
    );
    assert!(
        matches!(reply.ok(), Ok(ReplyBody::Armed { .. })),
        "{:?}",
        reply.get()
    );
    port.request(RequestBody::Start).unwrap().ok().unwrap();
    let line = run_traced(50);
    port.request(RequestBody::Stop).unwrap().ok().unwrap();
    assert!(line.ends_with("marks=50"), "{line}");

    let mut records = events(&mut port);
    records.sort();
    let mut total = 0u64;
    let expected: Vec<Vec<u64>> = (0..50u64)
        .map(|index| {
            total += index * 7 + 1;
            vec![index, total]
        })
        .collect();
    assert_eq!(records, expected);

    port.request(RequestBody::Goodbye).unwrap().ok().unwrap();
    drop(port);
    // The uprobe is gone with the session, and with it the semaphore's count.
    std::thread::sleep(Duration::from_millis(200));
    assert!(run_traced(50).ends_with("marks=0"));
}

#[test]
fn a_return_probe_sees_the_return_value() {
    let daemon = Daemon::start(&[]);
    let mut port = daemon.client();
    let (path, offset) = function_site("probeport_work");
    // rax (slot 0) is the return value; the PC slot is where the function returned to.
    let handler = "
        mov64 r9, r1
        ldxdw r6, [r9+0]
        stxdw [r10-8], r6
        mov64 r1, r10
        add64 r1, -8
        mov64 r2, 8
        call emit
        mov64 r0, 0
        exit
    ";
    let reply = arm(
        &mut port,
        Site::User {
            path: &path,
            file_offset: offset,
            is_return: true,
            ref_ctr_offset: 0,
            entry_program: &[],
        },
        &program(handler),
    );
    assert!(
        matches!(reply.ok(), Ok(ReplyBody::Armed { .. })),
        "{:?}",
        reply.get()
    );
    port.request(RequestBody::Start).unwrap().ok().unwrap();
    run_traced(20);
    port.request(RequestBody::Stop).unwrap().ok().unwrap();
    let mut returned: Vec<u64> = events(&mut port)
        .into_iter()
        .map(|record| record[0])
        .collect();
    returned.sort_unstable();
    assert_eq!(
        returned,
        (0..20u64).map(|index| index * 7 + 1).collect::<Vec<_>>()
    );
}

#[test]
fn a_bad_user_pointer_is_a_counted_fault_with_a_zeroed_buffer() {
    let daemon = Daemon::start(&[]);
    let mut port = daemon.client();
    let (path, offset) = function_site("probeport_work");
    // Reads 8 bytes at user address 0x10 (never mapped), then emits the result
    // and the buffer, which the read must have zeroed.
    let handler = "
        stdw [r10-8], -1
        mov64 r1, r10
        add64 r1, -8
        mov64 r2, 8
        mov64 r3, 0x10
        call read_user
        stxdw [r10-16], r0
        mov64 r1, r10
        add64 r1, -16
        mov64 r2, 16
        call emit
        mov64 r0, 0
        exit
    ";
    let reply = arm(
        &mut port,
        Site::User {
            path: &path,
            file_offset: offset,
            is_return: false,
            ref_ctr_offset: 0,
            entry_program: &[],
        },
        &program(handler),
    );
    let Ok(ReplyBody::Armed { probe }) = reply.ok() else {
        panic!("{:?}", reply.get());
    };
    port.request(RequestBody::Start).unwrap().ok().unwrap();
    run_traced(3);
    port.request(RequestBody::Stop).unwrap().ok().unwrap();
    let records = events(&mut port);
    assert_eq!(records, vec![vec![(-14i64) as u64, 0]; 3]);
    let reply = port.request(RequestBody::ProbeStats { probe }).unwrap();
    let Ok(ReplyBody::ProbeStats(stats)) = reply.ok() else {
        panic!("{:?}", reply.get());
    };
    assert_eq!(
        (stats.hits, stats.faults, stats.last_fault_address),
        (3, 3, 0x10)
    );
}
