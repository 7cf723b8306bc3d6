//! The probe stub embedded in the demo kernel, end to end: the tests boot the kernel
//! under QEMU on two CPUs, drive its probe port (COM2, through the harness's socket)
//! with `userland_client::port::Port`, arm probes whose handlers are written in the
//! assembler text form, and check what comes back against the workload's ground
//! truth (`workload: done …`, and independent formulas in `common`). Addresses and
//! expected bytes come from the kernel's ELF, read on the host as a client would.
//!
//! TCG modes. QEMU 7.2's multi-threaded TCG does not reliably notice code that one
//! vCPU modifies while another runs it (`../shared/DESIGN.md` §7), so every test
//! that patches kernel text while the other CPU runs (dynamic and return probes)
//! uses `-accel tcg,thread=single`, where the vCPUs still interleave. Tests that
//! patch nothing a CPU executes (markers, timers, handler faults through markers,
//! the unprivileged submit) run with the default multi-threaded TCG. Each test says
//! which.
//!
//! Every run ends with the client's `Goodbye` and the kernel's `VERDICT: PASS`,
//! which the kernel gives only after checking the workload's totals itself.
//!
//! Where arguments are: the tests read parameters from the registers the way this
//! compiler lays out Rust's calling convention (a client reads it from DWARF). A
//! function that returns a `Result` or a struct by value gets the address of its
//! return place as a hidden first argument, in rdi, so its own parameters start at
//! rsi (context slot 4; slots are DWARF register numbers: rdx 1, rcx 2, rsi 4, rdi
//! 5, r8 8).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::message::{ArgType, ProbeId, ReplyBody, RequestBody, Site, TimerScope};
use qemu::TcgThreading;

/// Harness deadline of one boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a test waits for the workload.
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// `EFAULT` as a handler sees it in `r0`.
const EFAULT: u64 = -14i64 as u64;

fn boot(rounds: u64, extra: &str, threading: TcgThreading) -> DemoRun {
    DemoRun::boot(
        &format!("demo.wait_start demo.rounds={rounds} {extra}"),
        threading,
        BOOT_TIMEOUT,
    )
}

fn count_values<T: Ord>(values: impl IntoIterator<Item = T>) -> BTreeMap<T, u64> {
    let mut counts = BTreeMap::new();
    for value in values {
        *counts.entry(value).or_insert(0) += 1;
    }
    counts
}

/// The events of `probe` on `client_round(client, round)` emitting (client,
/// round): every client ran every one of `rounds` rounds exactly once.
fn assert_every_client_round(
    events: &[userland_client::port::OwnedEvent],
    probe: u32,
    rounds: u64,
) {
    let mut pairs: Vec<(u64, u64)> = events
        .iter()
        .filter(|event| event.probe == probe)
        .map(|event| {
            let words = words(event);
            (words[0] & 0xffff_ffff, words[1] & 0xffff_ffff)
        })
        .collect();
    pairs.sort_unstable();
    let expected: Vec<(u64, u64)> = (0..CLIENTS)
        .flat_map(|client| (0..rounds).map(move |round| (client, round)))
        .collect();
    assert_eq!(pairs, expected);
}

#[test]
fn entry_probes_see_the_workload_arguments_on_both_cpus() {
    // Single-threaded TCG: dynamic probes patch text the other vCPU runs.
    const ROUNDS: u64 = 40;
    let mut run = boot(ROUNDS, "", TcgThreading::Single);
    let hello = run.hello();
    assert_eq!(hello.cpu_count, 2);
    assert!(hello.name.starts_with("demo-kernel "), "{hello:?}");
    // client_round(client: u32, round: u32) -> Result<(), WorkloadError>: the
    // Result comes back through a return place whose address is in rdi, so client
    // and round are in esi and edx, context slots 4 and 1 (DWARF numbering).
    let rounds_probe = run.arm_entry("demo_kernel::workload::client_round", &emit_slots(&[4, 1]));
    // dispatch(number: u32, arg0: u64, arg1: u64, arg2: u64) -> Result<u64, SysError>:
    // return place in rdi, then esi, rdx, rcx, r8 (slots 4, 1, 2, 8).
    let dispatch_probe = run.arm_entry("demo_kernel::sys::dispatch", &emit_slots(&[4, 1, 2, 8]));
    // At the entry of vm::fault, the stack trace (the platform walks the RBP chain)
    // starts in its caller's caller: vm::access → sys::dispatch → client_round → …
    let trace_probe = run.arm_entry(
        "demo_kernel::vm::fault",
        "mov64 r1, r10
         add64 r1, -128
         mov64 r2, 128
         call stack_trace
         stxdw [r10-136], r0
         mov64 r1, r10
         add64 r1, -136
         mov64 r2, 136
         call emit
         mov64 r0, 0
         exit",
    );
    run.start_workload();
    run.wait_workload(ROUNDS, WORKLOAD_TIMEOUT);
    run.done(RequestBody::Stop);
    let (events, losses) = split_unsolicited(run.take_unsolicited());
    assert!(losses.is_empty(), "{losses:?}");

    // Every client ran every round exactly once, with those arguments.
    assert_every_client_round(&events, rounds_probe, ROUNDS);

    // The syscall-like calls, by number and argument, as the workload makes them.
    let calls: Vec<Vec<u64>> = events
        .iter()
        .filter(|event| event.probe == dispatch_probe)
        .map(words)
        .collect();
    let by_number = count_values(calls.iter().map(|call| call[0] & 0xffff_ffff));
    let n = ROUNDS;
    assert_eq!(
        by_number,
        BTreeMap::from([
            (1, CLIENTS * (n / YIELD_EVERY)),
            (2, 2 * CLIENTS * n),
            (3, 2 * CLIENTS * n),
            (4, CLIENTS * n)
        ])
    );
    // Sends: clients through right 0 (the request port), the server through 1 + c.
    let send_rights = count_values(
        calls
            .iter()
            .filter(|call| call[0] as u32 == 2)
            .map(|call| call[1]),
    );
    assert_eq!(
        send_rights,
        BTreeMap::from([(0, CLIENTS * n), (1, n), (2, n), (3, n), (4, n)])
    );
    // Touches store (client << 32) | round.
    let mut stored: Vec<u64> = calls
        .iter()
        .filter(|call| call[0] as u32 == 4)
        .map(|call| call[3])
        .collect();
    stored.sort_unstable();
    let mut expected: Vec<u64> = (0..CLIENTS)
        .flat_map(|client| (0..n).map(move |round| (client << 32) | round))
        .collect();
    expected.sort_unstable();
    assert_eq!(stored, expected);

    // Every stack trace names the functions that led to the fault, innermost first.
    let image = kernel_image();
    let function_at = |address: u64| -> &str {
        image
            .functions
            .iter()
            .find(|function| {
                (function.address..function.address + function.size).contains(&address)
            })
            .map_or("?", |function| function.name.as_str())
    };
    let traces: Vec<Vec<u64>> = events
        .iter()
        .filter(|event| event.probe == trace_probe)
        .map(words)
        .collect();
    assert_eq!(traces.len() as u64, expected_totals(ROUNDS)["faults"]);
    for trace in &traces {
        let count = trace[0] as usize;
        let frames: Vec<&str> = trace[1..=count]
            .iter()
            .map(|&address| function_at(address))
            .collect();
        assert!(count >= 3, "{frames:?}");
        assert_eq!(frames[0], "demo_kernel::sys::dispatch", "{frames:?}");
        assert!(
            frames.contains(&"demo_kernel::workload::client_round"),
            "{frames:?}"
        );
        // The outermost frame returns into `demo_thread_entry` (assembly: `call
        // thread_start; ud2`), whose stack the scheduler prepared with rbp = 0.
        assert_eq!(
            frames[count - 2],
            "demo_kernel::sched::thread_start",
            "{frames:?}"
        );
        assert_eq!(
            trace[count],
            image.symbol("demo_thread_entry") + 5,
            "{frames:?}"
        );
    }

    // Both CPUs hit the probes, and the counters agree with the events.
    let syscalls = expected_totals(n)["syscalls"];
    let dispatch = run.probe_stats(dispatch_probe);
    let rounds = run.probe_stats(rounds_probe);
    assert_eq!(
        (dispatch.hits, dispatch.misses, dispatch.faults),
        (syscalls, 0, 0)
    );
    assert_eq!(rounds.hits, CLIENTS * n);
    let cpus: Vec<_> = (0..2).map(|cpu| run.cpu_stats(cpu)).collect();
    assert!(cpus.iter().all(|cpu| cpu.hits > 0), "{cpus:?}");
    let traced = run.probe_stats(trace_probe);
    assert_eq!(
        cpus[0].hits + cpus[1].hits,
        dispatch.hits + rounds.hits + traced.hits
    );
    let event_cpus = count_values(events.iter().map(|event| event.cpu));
    assert_eq!(event_cpus.len(), 2, "events from both CPUs: {event_cpus:?}");
    for cpu in &cpus {
        assert_eq!(event_cpus[&cpu.cpu], cpu.emitted);
        assert_eq!((cpu.emitted, cpu.lost), (cpu.next_seq, 0));
    }
    run.goodbye_and_pass();
}

#[test]
fn jump_probes_see_the_same_calls_as_breakpoints_and_leave_the_text_as_it_was() {
    // Single-threaded TCG: the stub writes text the other vCPU runs.
    const ROUNDS: u64 = 40;
    let image = kernel_image();
    let debuginfo = userland_client::debuginfo::Kernel::open(demo_kernel())
        .unwrap_or_else(|error| panic!("{error}"));
    let mut run = boot(ROUNDS, "", TcgThreading::Single);
    run.hello();
    // Functions without jump tables (`sys::dispatch` has one: no jump there).
    let functions = [
        "demo_kernel::workload::client_round",
        "demo_kernel::ipc::ports::port_send",
    ];
    let entries: Vec<u64> = functions
        .iter()
        .map(|name| image.function(name).address)
        .collect();
    let before: Vec<Vec<u8>> = entries
        .iter()
        .map(|&entry| run.read_memory(entry, 32))
        .collect();
    // client_round(client, round) as in the entry-probe test (esi, edx: slots 4
    // and 1); port_send(right, message): the right in edi (slot 5).
    let rounds_probe = run.arm_entry(functions[0], &emit_slots(&[4, 1]));
    let send_probe = run.arm_entry(functions[1], &emit_slots(&[5]));
    for (probe, &entry) in [rounds_probe, send_probe].into_iter().zip(&entries) {
        let window = userland_client::resolve::jump_window(&debuginfo, entry);
        assert!(window >= 5, "window {window} at {entry:#x}");
        run.done(RequestBody::Jump {
            probe: ProbeId(probe),
            window,
        });
    }
    // Staged until Start; then, with the workload parked outside these functions
    // (Start opens its gate after the text is written), the jumps are written.
    assert_eq!(run.read_memory(entries[0], 32), before[0]);
    run.start_workload();
    for &entry in &entries {
        assert_eq!(run.read_memory(entry, 1), [0xe9], "a jump at {entry:#x}");
    }
    run.wait_workload(ROUNDS, WORKLOAD_TIMEOUT);
    run.done(RequestBody::Stop);
    for (entry, before) in entries.iter().zip(&before) {
        assert_eq!(&run.read_memory(*entry, 32), before, "text at {entry:#x}");
    }
    let (events, losses) = split_unsolicited(run.take_unsolicited());
    assert!(losses.is_empty(), "{losses:?}");
    assert_every_client_round(&events, rounds_probe, ROUNDS);
    // Clients send through right 0 (the request port), the server through 1 + c.
    let by_right = count_values(
        events
            .iter()
            .filter(|event| event.probe == send_probe)
            .map(|event| words(event)[0] & 0xffff_ffff),
    );
    let n = ROUNDS;
    assert_eq!(
        by_right,
        BTreeMap::from([(0, CLIENTS * n), (1, n), (2, n), (3, n), (4, n)])
    );
    let sends = run.probe_stats(send_probe);
    assert_eq!(
        (sends.hits, sends.misses, sends.faults),
        (expected_totals(n)["sends"], 0, 0)
    );
    let event_cpus = count_values(events.iter().map(|event| event.cpu));
    assert_eq!(event_cpus.len(), 2, "events from both CPUs: {event_cpus:?}");
    run.goodbye_and_pass();
}

#[test]
fn return_probes_pair_entry_values_with_the_returned_message() {
    // Single-threaded TCG: return probes patch text the other vCPU runs.
    //
    // serve_request(request: &Message, server_tid: u32) -> Message returns its
    // 40-byte Message through a return place whose address the caller passes in
    // rdi (rsi is the request, edx the server's tid). The entry program saves the
    // return place, the tid and the request's id; the return program reads the
    // Message returned there and emits it beside the saved values.
    const ROUNDS: u64 = 30;
    let mut run = boot(ROUNDS, "", TcgThreading::Single);
    run.hello();
    let entry = program(
        "ldxdw r6, [r1+40]      ; rdi: the return place
         ldxdw r7, [r1+32]      ; rsi: the request
         ldxdw r8, [r1+8]       ; rdx: the server's tid
         mov64 r1, 0
         mov64 r2, r6
         call entry_save
         mov64 r1, 1
         mov64 r2, r8
         call entry_save
         mov64 r1, r10
         add64 r1, -8
         mov64 r2, 8
         mov64 r3, r7
         call read_kernel       ; the request's id and size
         ldxw r2, [r10-8]
         mov64 r1, 2
         call entry_save
         mov64 r0, 0
         exit",
    );
    let function = kernel_image()
        .function("demo_kernel::workload::serve_request")
        .clone();
    let expected = kernel_image().bytes(function.address, 1);
    let probe = run
        .try_arm(
            Site::Return {
                address: function.address,
                expected: &expected,
                entry_program: &entry,
            },
            &program(
                "ldxdw r6, [r1+192]     ; entry value 0: the return place
                 ldxdw r7, [r1+200]     ; entry value 1: the server's tid
                 ldxdw r8, [r1+208]     ; entry value 2: the request's id
                 stxdw [r10-64], r8
                 stxdw [r10-56], r7
                 mov64 r1, r10
                 add64 r1, -48
                 mov64 r2, 40
                 mov64 r3, r6
                 call read_kernel       ; the Message returned
                 mov64 r1, r10
                 add64 r1, -64
                 mov64 r2, 56
                 call emit
                 mov64 r0, 0
                 exit",
            ),
        )
        .unwrap_or_else(|refused| panic!("{refused:?}"));
    run.start_workload();
    run.wait_workload(ROUNDS, WORKLOAD_TIMEOUT);
    run.done(RequestBody::Stop);
    let (events, losses) = split_unsolicited(run.take_unsolicited());
    assert!(losses.is_empty(), "{losses:?}");
    assert_eq!(events.len() as u64, CLIENTS * ROUNDS);
    let mut ids = BTreeSet::new();
    let mut server_tids = BTreeSet::new();
    for event in &events {
        assert_eq!(event.probe, probe);
        let words = words(event);
        let (request_id, tid) = (words[0], words[1]);
        let reply_id = words[2] & 0xffff_ffff;
        let reply_size = words[2] >> 32;
        let (reply_digest, reply_tid) = (words[3], words[4]);
        assert_eq!(
            reply_id, request_id,
            "the reply answers the request saved at entry"
        );
        assert_eq!(reply_size, REPLY_SIZE);
        assert_eq!(
            reply_digest,
            digest(request_id),
            "digest of request {request_id}"
        );
        assert_eq!(reply_tid, tid, "the tid saved at entry is in the reply");
        server_tids.insert(tid);
        assert!(
            ids.insert(request_id),
            "request {request_id} answered twice"
        );
    }
    let all: BTreeSet<u64> = (0..ROUNDS)
        .flat_map(|round| (0..CLIENTS).map(move |client| request_id(round, client)))
        .collect();
    assert_eq!(ids, all);
    assert_eq!(server_tids.len(), 1, "one server: {server_tids:?}");
    let stats = run.probe_stats(probe);
    assert_eq!(
        (stats.hits, stats.misses, stats.faults),
        (CLIENTS * ROUNDS, 0, 0)
    );
    run.goodbye_and_pass();
}

#[test]
fn markers_are_described_and_count_the_ground_truth_in_maps() {
    // Multi-threaded TCG: markers patch no text (the stub flips their enable flag).
    const ROUNDS: u64 = 40;
    let mut run = boot(ROUNDS, "", TcgThreading::Multi);
    run.hello();
    let first = run.request(RequestBody::DescribeMarker { index: 0 });
    let total = match first.get() {
        Ok(ReplyBody::Marker(marker)) => marker.total,
        other => panic!("{other:?}"),
    };
    let mut markers = BTreeMap::new();
    for index in 0..total {
        let reply = run.request(RequestBody::DescribeMarker { index });
        let Ok(ReplyBody::Marker(marker)) = reply.get() else {
            panic!("marker {index}: {:?}", reply.get())
        };
        assert_eq!((marker.index, marker.total), (index, total));
        let args: Vec<(String, ArgType)> = marker
            .args
            .iter()
            .map(|arg| (arg.name.to_owned(), arg.ty))
            .collect();
        markers.insert(marker.name.to_owned(), (index, args));
    }
    let reply = run.request(RequestBody::DescribeMarker { index: total });
    assert_eq!(reply.get().unwrap_err().code, ErrorCode::UNKNOWN_MARKER);
    let args = |list: &[(&str, ArgType)]| -> Vec<(String, ArgType)> {
        list.iter()
            .map(|(name, ty)| ((*name).to_owned(), *ty))
            .collect()
    };
    let ipc = args(&[
        ("port", ArgType::U32),
        ("id", ArgType::U32),
        ("size", ArgType::U32),
        ("tid", ArgType::U32),
    ]);
    let expected: BTreeMap<String, Vec<(String, ArgType)>> = BTreeMap::from([
        ("ipc:send".to_owned(), ipc.clone()),
        ("ipc:receive".to_owned(), ipc),
        (
            "vm:fault".to_owned(),
            args(&[
                ("address", ArgType::U64),
                ("write", ArgType::Bool),
                ("major", ArgType::Bool),
            ]),
        ),
        (
            "sched:switch".to_owned(),
            args(&[
                ("prev", ArgType::U32),
                ("next", ArgType::U32),
                ("cpu", ArgType::U32),
            ]),
        ),
        (
            "sys:enter".to_owned(),
            args(&[
                ("number", ArgType::U32),
                ("arg0", ArgType::U64),
                ("arg1", ArgType::U64),
                ("tid", ArgType::U32),
            ]),
        ),
        ("bench:call".to_owned(), args(&[("value", ArgType::U64)])),
    ]);
    let described: BTreeMap<String, Vec<(String, ArgType)>> = markers
        .iter()
        .map(|(name, (_, args))| (name.clone(), args.clone()))
        .collect();
    assert_eq!(described, expected);

    // ipc:send counted per message id (argument 1); vm:fault per `major` (argument
    // 2); sys:enter per call number (argument 0).
    let n = ROUNDS;
    run.done(RequestBody::DefineMap(count_map(1, (CLIENTS * n) as u32)));
    run.done(RequestBody::DefineMap(count_map(2, 2)));
    run.done(RequestBody::DefineMap(count_map(3, 8)));
    let sends = run.arm(
        Site::Marker {
            index: markers["ipc:send"].0,
        },
        &count_by_slot(1, 1),
    );
    let faults = run.arm(
        Site::Marker {
            index: markers["vm:fault"].0,
        },
        &count_by_slot(2, 2),
    );
    run.arm(
        Site::Marker {
            index: markers["sys:enter"].0,
        },
        &count_by_slot(3, 0),
    );
    run.start_workload();
    run.wait_workload(n, WORKLOAD_TIMEOUT);
    run.done(RequestBody::Stop);

    // Each request id is sent twice: the request, and the reply that carries it.
    let per_id = run.read_sum_map(1, 1, 2);
    let expected: BTreeMap<u64, Vec<u64>> = (0..CLIENTS * n).map(|id| (id, vec![2])).collect();
    assert_eq!(per_id, expected);
    let totals = expected_totals(n);
    let per_kind = run.read_sum_map(2, 1, 2);
    assert_eq!(
        per_kind,
        BTreeMap::from([(0, vec![totals["minor"]]), (1, vec![totals["major"]])])
    );
    let per_number = run.read_sum_map(3, 1, 2);
    assert_eq!(
        per_number,
        BTreeMap::from([
            (1, vec![CLIENTS * (n / YIELD_EVERY)]),
            (2, vec![2 * CLIENTS * n]),
            (3, vec![2 * CLIENTS * n]),
            (4, vec![CLIENTS * n]),
        ])
    );
    assert_eq!(run.probe_stats(sends).hits, totals["sends"]);
    assert_eq!(run.probe_stats(faults).hits, totals["faults"]);
    run.goodbye_and_pass();
}

#[test]
fn timers_fire_on_each_cpu_and_on_one() {
    // Multi-threaded TCG: timer probes patch no text.
    const PERIOD_NS: u64 = 10_000_000;
    let mut run = DemoRun::boot("demo.rounds=20", TcgThreading::Multi, BOOT_TIMEOUT);
    run.hello();
    let each = run.arm(
        Site::Timer {
            period_ns: PERIOD_NS,
            scope: TimerScope::EachCpu,
        },
        "call cpu
         stxdw [r10-16], r0
         call time_ns
         stxdw [r10-8], r0
         mov64 r1, r10
         add64 r1, -16
         mov64 r2, 16
         call emit
         mov64 r0, 0
         exit",
    );
    let one = run.arm(
        Site::Timer {
            period_ns: 2 * PERIOD_NS,
            scope: TimerScope::OneCpu,
        },
        &emit_slots(&[16]),
    );
    run.done(RequestBody::Start);
    run.pump(Duration::from_millis(1500));
    run.done(RequestBody::Stop);
    let (events, losses) = split_unsolicited(run.take_unsolicited());
    assert!(losses.is_empty(), "{losses:?}");
    let mut last_time = [0u64; 2];
    let mut per_cpu = [0u64; 2];
    for event in events.iter().filter(|event| event.probe == each) {
        let words = words(event);
        assert_eq!(
            words[0],
            u64::from(event.cpu),
            "the cpu helper agrees with the event"
        );
        let cpu = event.cpu as usize;
        assert!(
            words[1] > last_time[cpu],
            "cpu {cpu}: time {} after {}",
            words[1],
            last_time[cpu]
        );
        last_time[cpu] = words[1];
        per_cpu[cpu] += 1;
    }
    assert!(
        per_cpu.iter().all(|&count| count >= 10),
        "EachCpu timer events per CPU: {per_cpu:?}"
    );
    let one_cpu: Vec<_> = events.iter().filter(|event| event.probe == one).collect();
    assert!(one_cpu.len() >= 5, "{} OneCpu timer events", one_cpu.len());
    assert!(one_cpu.iter().all(|event| event.cpu == 0));
    let each_stats = run.probe_stats(each);
    assert_eq!(each_stats.hits, per_cpu[0] + per_cpu[1]);
    eprintln!(
        "timer events in 1.5 s: EachCpu {per_cpu:?}, OneCpu {}",
        one_cpu.len()
    );
    run.wait_workload(20, WORKLOAD_TIMEOUT);
    run.goodbye_and_pass();
}

#[test]
fn handler_reads_of_null_and_wild_pointers_are_counted_faults() {
    // Multi-threaded TCG: the probes are markers, which patch no text.
    const ROUNDS: u64 = 20;
    let mut run = boot(ROUNDS, "", TcgThreading::Multi);
    run.hello();
    let marker_index = |run: &mut DemoRun, name: &str| -> u32 {
        (0..8)
            .find(|&index| {
                let reply = run.request(RequestBody::DescribeMarker { index });
                matches!(reply.get(), Ok(ReplyBody::Marker(marker)) if marker.name == name)
            })
            .unwrap_or_else(|| panic!("no marker {name}"))
    };
    // Reads 8 bytes at `address`, then emits the helper's result and the bytes.
    let reader = |address: u64| {
        format!(
            "mov64 r1, r10
             add64 r1, -8
             mov64 r2, 8
             lddw r3, {address:#x}
             call read_kernel
             stxdw [r10-16], r0
             mov64 r1, r10
             add64 r1, -16
             mov64 r2, 16
             call emit
             mov64 r0, 0
             exit"
        )
    };
    let cases = [
        ("ipc:send", 0u64, "NULL"),
        (
            "ipc:receive",
            0xdead_beef_0000,
            "unmapped (above the 4 GiB identity map)",
        ),
        ("vm:fault", 0x8000_0000_0000_0000, "non-canonical (#GP)"),
        (
            "sys:enter",
            0xfee0_0000,
            "device memory (refused without a read)",
        ),
    ];
    let mut probes = Vec::new();
    for (marker, address, what) in cases {
        let index = marker_index(&mut run, marker);
        probes.push((
            run.arm(Site::Marker { index }, &reader(address)),
            address,
            what,
        ));
    }
    run.start_workload();
    let console = run.wait_workload(ROUNDS, WORKLOAD_TIMEOUT);
    assert!(!console.contains("FATAL"), "{console}");
    run.done(RequestBody::Stop);
    let (events, losses) = split_unsolicited(run.take_unsolicited());
    assert!(losses.is_empty(), "{losses:?}");
    let mut total_faults = 0;
    for (probe, address, what) in probes {
        let stats = run.probe_stats(probe);
        assert!(stats.hits > 0, "{what}: {stats:?}");
        assert_eq!(
            stats.faults, stats.hits,
            "{what}: one fault per run: {stats:?}"
        );
        assert_eq!(stats.last_fault_address, address, "{what}: {stats:?}");
        let results: Vec<Vec<u64>> = events
            .iter()
            .filter(|event| event.probe == probe)
            .map(words)
            .collect();
        assert_eq!(
            results.len() as u64,
            stats.hits,
            "{what}: the handler went on after the fault"
        );
        assert!(
            results.iter().all(|words| words[..] == [EFAULT, 0]),
            "{what}: read_kernel returns EFAULT and zeroes its buffer"
        );
        total_faults += stats.faults;
    }
    let cpu_faults: u64 = (0..2).map(|cpu| run.cpu_stats(cpu).faults).sum();
    assert_eq!(cpu_faults, total_faults);
    run.goodbye_and_pass();
}

#[test]
fn every_function_armed_at_once_refused_precisely_and_counted_exactly() {
    // Single-threaded TCG: about a thousand sites of text are patched while both
    // CPUs run through them.
    const ROUNDS: u64 = 16;
    let mut run = boot(ROUNDS, "", TcgThreading::Single);
    let hello = run.hello();
    let image = kernel_image();
    let forbidden = image.forbidden();
    let area = image.out_of_line_area();
    // One site per address (identical-code folding gives some functions one body).
    let mut functions: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for function in &image.functions {
        functions
            .entry(function.address)
            .or_default()
            .push(function.name.clone());
    }
    assert!(
        functions.len() as u32 <= hello.max_probes,
        "{} functions, {} probes",
        functions.len(),
        hello.max_probes
    );
    let mut armed = BTreeMap::new();
    let mut refused: BTreeMap<ErrorCode, Vec<String>> = BTreeMap::new();
    // A handler that calls a helper through the JIT's general dispatch, so the
    // interpreter's `call_other_helper` (ordinary, probe-able kernel text) runs inside
    // every handler: its own probe is hit re-entered.
    let handler = program("call cpu\nmov64 r0, 0\nexit");
    for (&address, names) in &functions {
        let size = image
            .functions
            .iter()
            .find(|f| f.address == address)
            .unwrap()
            .size;
        let expected = image.bytes(address, size.min(8) as usize);
        // What the stub must answer, decided here from the image alone.
        let predicted = if forbidden.contains(&address) {
            Some(ErrorCode::FORBIDDEN_ADDRESS)
        } else {
            let code = image.bytes(address, size.min(15) as usize);
            kernel_stub::arch::prepare(address, &code, area.start + 64)
                .err()
                .map(|_| ErrorCode::UNRELOCATABLE)
        };
        match run.try_arm(
            Site::Dynamic {
                address,
                expected: &expected,
            },
            &handler,
        ) {
            Ok(probe) => {
                assert_eq!(predicted, None, "{names:?} at {address:#x} was armed");
                armed.insert(address, probe);
            }
            Err(refusal) => {
                assert_eq!(
                    Some(refusal.code),
                    predicted,
                    "{names:?} at {address:#x}: {refusal:?}"
                );
                assert_eq!(refusal.detail, format!("address {address:#x}"));
                refused
                    .entry(refusal.code)
                    .or_default()
                    .push(names[0].clone());
            }
        }
    }
    let forbidden_count = refused
        .get(&ErrorCode::FORBIDDEN_ADDRESS)
        .map_or(0, Vec::len);
    let unrelocatable = refused
        .get(&ErrorCode::UNRELOCATABLE)
        .cloned()
        .unwrap_or_default();
    eprintln!(
        "{} functions: {} armed, {forbidden_count} FORBIDDEN_ADDRESS, {} UNRELOCATABLE {unrelocatable:?}",
        functions.len(),
        armed.len(),
        unrelocatable.len()
    );
    assert!(
        forbidden_count > 20,
        "the trap path and the stub's entry points are refused"
    );
    assert!(
        armed.len() * 10 > functions.len() * 8,
        "{} of {} functions armed",
        armed.len(),
        functions.len()
    );

    run.start_workload();
    run.wait_workload(ROUNDS, Duration::from_secs(150));
    run.done(RequestBody::Stop);
    // By address: several functions share a demangled name (generic instances).
    let mut stats = BTreeMap::new();
    for (&address, &probe) in &armed {
        stats.insert(address, run.probe_stats(probe));
    }
    let cpus: Vec<_> = (0..2).map(|cpu| run.cpu_stats(cpu)).collect();
    let hits: u64 = stats.values().map(|stats| stats.hits).sum();
    let misses: u64 = stats.values().map(|stats| stats.misses).sum();
    let reentered: u64 = cpus.iter().map(|cpu| cpu.reentered).sum();
    assert_eq!(hits, cpus.iter().map(|cpu| cpu.hits).sum::<u64>());
    // A probe in code that runs in probe context after the stub's re-entry guard
    // (`call_helper` under every handler here) is hit re-entered: counted on the
    // CPU and as the probe's miss. Between `Stop` staging every probe and restoring
    // the last breakpoint byte, such sites may still trap, and those re-entered
    // hits count on the CPU alone.
    assert!(
        misses > 0 && misses <= reentered,
        "misses {misses}, reentered {reentered}"
    );
    assert!(stats.values().all(|stats| stats.faults == 0));
    let totals = expected_totals(ROUNDS);
    for (function, expected) in [
        ("demo_kernel::ipc::ports::port_send", totals["sends"]),
        ("demo_kernel::ipc::ports::port_receive", totals["receives"]),
        ("demo_kernel::sys::dispatch", totals["syscalls"]),
        ("demo_kernel::vm::fault", totals["faults"]),
        ("demo_kernel::workload::client_round", CLIENTS * ROUNDS),
        ("demo_kernel::workload::serve_request", CLIENTS * ROUNDS),
    ] {
        let stats = &stats[&image.function(function).address];
        assert_eq!(
            (stats.hits, stats.misses),
            (expected, 0),
            "{function}: {stats:?}"
        );
    }
    eprintln!(
        "{hits} hits on {} probes, {misses} re-entered misses ({reentered} re-entered traps)",
        stats.values().filter(|stats| stats.hits > 0).count()
    );
    run.goodbye_and_pass();
}

#[test]
fn the_port_holder_vanishing_mid_trace_restores_the_kernel_text() {
    // Single-threaded TCG: dynamic and return probes patch text.
    const ROUNDS: u64 = 500;
    let mut run = boot(ROUNDS, "", TcgThreading::Single);
    let hello = run.hello();
    assert!(hello.lease_ms > 0, "the demo kernel's port has a lease");
    let image = kernel_image();
    let ranges = image.checked_text();
    let text_of = |run: &mut DemoRun| -> Vec<Vec<u8>> {
        ranges
            .iter()
            .map(|range| run.read_memory(range.start, (range.end - range.start) as usize))
            .collect()
    };
    let before = text_of(&mut run);
    for (range, bytes) in ranges.iter().zip(&before) {
        assert!(
            image.bytes(range.start, bytes.len()) == *bytes,
            "kernel text at {:#x} differs from the image before anything is armed",
            range.start
        );
    }
    for function in [
        "demo_kernel::sys::dispatch",
        "demo_kernel::ipc::ports::port_send",
        "demo_kernel::sched::on_tick",
    ] {
        run.arm_entry(function, &emit_slots(&[5, 16]));
    }
    let switch = image.function("demo_kernel::sched::switch_to").clone();
    let expected = image.bytes(switch.address, 1);
    run.try_arm(
        Site::Return {
            address: switch.address,
            expected: &expected,
            entry_program: &[],
        },
        &program(&emit_slots(&[0, 19])),
    )
    .unwrap_or_else(|refused| panic!("{refused:?}"));
    run.arm(
        Site::Timer {
            period_ns: 10_000_000,
            scope: TimerScope::EachCpu,
        },
        &emit_slots(&[16]),
    );
    run.start_workload();
    run.pump(Duration::from_millis(500));
    let (events, _) = split_unsolicited(run.take_unsolicited());
    assert!(!events.is_empty(), "the probes fire");

    // The holder goes quiet: it reads what arrives (a vanished peer's socket would
    // drop it) but sends nothing, so the lease runs out.
    let quiet = run.last_request();
    loop {
        if run.qemu.console().contains("probe-port: lease expired") {
            break;
        }
        assert!(
            quiet.elapsed() < Duration::from_millis(u64::from(hello.lease_ms) + 20_000),
            "no lease expiry:\n{}",
            run.qemu.console()
        );
        if let Err(error) = run.port.poll(Duration::from_millis(100)) {
            panic!("{error}");
        }
    }
    assert!(
        quiet.elapsed() >= Duration::from_millis(u64::from(hello.lease_ms)),
        "the lease ended before {} ms without a request",
        hello.lease_ms
    );
    // A new session: the text is what it was, byte for byte.
    run.hello();
    let after = text_of(&mut run);
    for ((range, before), after) in ranges.iter().zip(&before).zip(&after) {
        if before != after {
            let at = before.iter().zip(after).position(|(a, b)| a != b).unwrap();
            panic!(
                "kernel text differs at {:#x}: {:#04x} before, {:#04x} after",
                range.start + at as u64,
                before[at],
                after[at]
            );
        }
    }
    let cpu = run.cpu_stats(0);
    assert_eq!(
        (cpu.hits, cpu.next_seq),
        (0, 0),
        "a new session starts from zero"
    );
    run.wait_workload(ROUNDS, Duration::from_secs(150));
    run.goodbye_and_pass();
}

#[test]
fn an_unprivileged_arm_is_refused_and_the_kernel_carries_on() {
    // Multi-threaded TCG: nothing is armed.
    const ROUNDS: u64 = 30;
    let mut run = boot(ROUNDS, "demo.intruder", TcgThreading::Multi);
    let console = run.wait_console(
        "attempts refused; the kernel carries on",
        Duration::from_secs(60),
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
    for seq in [7, 8] {
        let line = format!(
            "intruder: thread {intruder} (intruder): the probe port answered request {seq} with NOT_PRIVILEGED (code 4)"
        );
        assert!(console.contains(&line), "no {line:?}:\n{console}");
    }
    // The holder of the right is served; nothing was armed: sys::dispatch is intact.
    run.hello();
    let dispatch = kernel_image()
        .function("demo_kernel::sys::dispatch")
        .clone();
    let bytes = run.read_memory(dispatch.address, dispatch.size as usize);
    assert_eq!(
        bytes,
        kernel_image().bytes(dispatch.address, dispatch.size as usize)
    );
    run.start_workload();
    run.wait_workload(ROUNDS, WORKLOAD_TIMEOUT);
    run.goodbye_and_pass();
}

#[test]
fn a_flood_is_delivered_or_counted_lost_exactly() {
    // Single-threaded TCG: a dynamic probe on the hottest function, on both CPUs.
    //
    // Every call of sys::dispatch emits 1 KiB: the 64 KiB rings of the CPUs hold
    // about sixty such records, and the serial line drains far fewer per tick than
    // the workload makes, so records are lost; each must be accounted for.
    const ROUNDS: u64 = 200;
    let mut run = boot(ROUNDS, "", TcgThreading::Single);
    run.hello();
    let probe = run.arm_entry(
        "demo_kernel::sys::dispatch",
        "ldxdw r6, [r1+32]      ; esi: the call's number
         stxdw [r10-512], r6
         mov64 r1, r10
         add64 r1, -512
         mov64 r2, 512
         call emit
         mov64 r1, r10
         add64 r1, -512
         mov64 r2, 512
         call emit
         mov64 r0, 0
         exit",
    );
    run.start_workload();
    run.wait_workload(ROUNDS, Duration::from_secs(150));
    run.done(RequestBody::Stop);
    let (events, losses) = split_unsolicited(run.take_unsolicited());
    let stats = run.probe_stats(probe);
    let syscalls = expected_totals(ROUNDS)["syscalls"];
    assert_eq!(stats.hits, syscalls);
    let mut fired = 0;
    let mut lost_total = 0;
    for cpu in 0..2u16 {
        let cpu_stats = run.cpu_stats(cpu);
        // Sequence numbers of events and lost ranges partition 0..next_seq.
        let mut covered: Vec<(u64, u64)> = events
            .iter()
            .filter(|event| event.cpu == cpu)
            .map(|event| (event.seq, 1))
            .chain(
                losses
                    .iter()
                    .filter(|lost| lost.cpu == cpu)
                    .map(|lost| (lost.first_seq, lost.count)),
            )
            .collect();
        covered.sort_unstable();
        let mut next = 0;
        for (first, count) in &covered {
            assert_eq!(*first, next, "cpu {cpu}: sequence numbers do not partition");
            next = first + count;
        }
        assert_eq!(next, cpu_stats.next_seq, "cpu {cpu}");
        let delivered = events.iter().filter(|event| event.cpu == cpu).count() as u64;
        let lost: u64 = losses
            .iter()
            .filter(|lost| lost.cpu == cpu)
            .map(|lost| lost.count)
            .sum();
        assert_eq!(
            (delivered, lost),
            (cpu_stats.emitted, cpu_stats.lost),
            "cpu {cpu}"
        );
        assert_eq!(delivered + lost, cpu_stats.next_seq);
        fired += cpu_stats.next_seq;
        lost_total += lost;
        eprintln!(
            "cpu {cpu}: {delivered} delivered + {lost} lost = {} emitted",
            cpu_stats.next_seq
        );
    }
    assert_eq!(fired, 2 * stats.hits, "two records per hit");
    assert_eq!(stats.drops, lost_total);
    assert!(lost_total > 0, "the flood overflowed the rings");
    // Each delivered record carries the call's number.
    assert!(
        events
            .iter()
            .all(|event| event.data.len() == 512 && (1..=4).contains(&(event.data[0])))
    );
    run.goodbye_and_pass();
}

#[test]
fn a_probe_hit_inside_a_handler_is_counted_as_reentered_and_survived() {
    // Single-threaded TCG: dynamic probes patch text.
    //
    // The handler on sys::dispatch calls the task_name helper, which the platform
    // serves from sched::copy_current_name, a kernel function outside the forbidden
    // text. A second probe there is hit inside the first one's handler: a nested
    // #BP on the #BP stack, which the entry path moved down, caught by the stub's
    // re-entry guard.
    const ROUNDS: u64 = 20;
    let mut run = boot(ROUNDS, "", TcgThreading::Single);
    run.hello();
    let outer = run.arm_entry(
        "demo_kernel::sys::dispatch",
        "mov64 r1, r10
         add64 r1, -16
         mov64 r2, 16
         call task_name
         mov64 r1, r10
         add64 r1, -16
         mov64 r2, 16
         call emit
         mov64 r0, 0
         exit",
    );
    let inner = run.arm_entry("demo_kernel::sched::copy_current_name", EMPTY_HANDLER);
    run.start_workload();
    run.wait_workload(ROUNDS, WORKLOAD_TIMEOUT);
    run.done(RequestBody::Stop);
    let (events, losses) = split_unsolicited(run.take_unsolicited());
    assert!(losses.is_empty());
    let syscalls = expected_totals(ROUNDS)["syscalls"];
    let outer_stats = run.probe_stats(outer);
    let inner_stats = run.probe_stats(inner);
    assert_eq!(outer_stats.hits, syscalls);
    assert_eq!((inner_stats.hits, inner_stats.misses), (0, syscalls));
    let reentered: u64 = (0..2).map(|cpu| run.cpu_stats(cpu).reentered).sum();
    assert_eq!(reentered, syscalls);
    let names = count_values(events.iter().map(|event| {
        let end = event
            .data
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(event.data.len());
        String::from_utf8_lossy(&event.data[..end]).into_owned()
    }));
    let expected: BTreeSet<String> = ["server", "client/0", "client/1", "client/2", "client/3"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(names.keys().cloned().collect::<BTreeSet<_>>(), expected);
    run.goodbye_and_pass();
}

#[test]
fn the_benchmark_boot_prints_its_table_and_passes() {
    benchmark_boot("demo.bench", false, "TSC cycles per call");
}

#[test]
fn the_benchmark_counts_guest_instructions_under_icount() {
    benchmark_boot(
        "demo.bench=instructions",
        true,
        "guest instructions per call (QEMU -icount shift=0)",
    );
}

/// One benchmark boot (`demo.bench` or `demo.bench=instructions`, with QEMU's
/// `-icount shift=0` when `icount`): its table has every row, the ratios the goals
/// are about, the unit it was told, and the count maps agree with the calls made.
fn benchmark_boot(word: &str, icount: bool, unit: &str) {
    // Single-threaded TCG: the benchmark patches its own text (and -icount needs it).
    let _guard = one_boot_at_a_time();
    let mut config = qemu::Config::new(demo_kernel())
        .cpus(2)
        .tcg_threading(TcgThreading::Single)
        .probe_port(false)
        .append(format!("{word} demo.com2=off"))
        .timeout(BOOT_TIMEOUT);
    if icount {
        config
            .extra_arguments
            .extend(["-icount".to_owned(), "shift=0,sleep=off".to_owned()]);
    }
    let qemu = qemu::Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
    let (pid, run_directory) = (qemu.pid(), qemu.run_directory().to_path_buf());
    let outcome = qemu.wait().unwrap_or_else(|error| panic!("{error}"));
    for row in [
        unit,
        "| un-probed call ",
        "| bare int3 round trip ",
        "| probed call, empty handler ",
        "| probed call, count() handler ",
        "| disabled marker (call with marker) ",
        "| enabled marker, count() handler ",
        "| work call (320-word checksum) ",
        "| work call with a disabled marker ",
        "bench: probed count() / bare int3 = ",
        "bench: disabled marker adds ",
        "bench: in a call doing real work ",
        "bench: count maps agree with the 30000 calls",
    ] {
        assert!(
            outcome.console.contains(row),
            "no {row:?}:\n{}",
            outcome.console
        );
    }
    for line in outcome
        .console
        .lines()
        .filter(|line| line.starts_with("bench:"))
    {
        eprintln!("{line}");
    }
    assert_no_qemu_left(pid, &run_directory);
}
