//! Static markers placed with `marker!` (collected from the `probeport_markers`
//! section of this very test binary, as a kernel's linker script would), and timer
//! probes on one CPU and on every CPU.

#[macro_use]
mod common;

use common::*;
use kernel_stub::{ArgType, MarkerSite, Stub};
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::message::{
    ErrorDetail, ProbeId, ReplyBody, RequestBody, Site, TimerScope,
};

/// The one stub of this binary: markers reach it through the global sink.
static STUB: Stub<Sim> = Stub::new(Sim::new());

fn ipc_send(port: u64, len: u32) {
    kernel_stub::marker!("ipc:send", port: U64 = port, size: U32 = len);
}

fn sched_switch(from: i32) {
    kernel_stub::marker!("sched:switch", from: I32 = from);
}

// Declared as bytes: only their addresses matter.
unsafe extern "C" {
    static __start_probeport_markers: u8;
    static __stop_probeport_markers: u8;
}

/// The marker table, as a kernel's platform builds it from its linker script.
fn marker_table() -> &'static [MarkerSite] {
    let start = (&raw const __start_probeport_markers).cast::<MarkerSite>();
    let stop = (&raw const __stop_probeport_markers).cast::<MarkerSite>();
    let count = (stop as usize - start as usize) / size_of::<MarkerSite>();
    // SAFETY: the linker laid the section out as `count` consecutive `MarkerSite`
    // statics (each the same size and alignment), and they live for the program.
    unsafe { std::slice::from_raw_parts(start, count) }
}

#[test]
fn markers_fire_only_while_armed_and_live_with_their_arguments() {
    let sim = STUB.platform();
    let table = marker_table();
    assert_eq!(table.len(), 2);
    sim.set_markers(table);
    assert!(kernel_stub::set_marker_sink(&STUB));
    assert!(!kernel_stub::set_marker_sink(&STUB), "set once");
    // No session: a marker is one load and nothing else.
    ipc_send(1, 2);

    let mut client = Client::new(&STUB);
    client.open();
    let mut described = Vec::new();
    for index in 0..2 {
        let reply = client.send(RequestBody::DescribeMarker { index });
        let ReplyBody::Marker(marker) = reply.ok() else {
            panic!()
        };
        assert_eq!(marker.total, 2);
        let args: Vec<(String, ArgType)> = marker
            .args
            .iter()
            .map(|arg| (arg.name.to_string(), arg.ty))
            .collect();
        described.push((marker.name.to_string(), marker.address, args));
    }
    described.sort_by(|a, b| a.0.cmp(&b.0));
    let (ipc_index, ipc) = table
        .iter()
        .enumerate()
        .find(|(_, site)| site.name == "ipc:send")
        .unwrap();
    let (sched_index, sched) = table
        .iter()
        .enumerate()
        .find(|(_, site)| site.name == "sched:switch")
        .unwrap();
    let ipc_address = ipc as *const MarkerSite as u64;
    let sched_address = sched as *const MarkerSite as u64;
    assert_eq!(
        described,
        [
            (
                "ipc:send".to_string(),
                ipc_address,
                vec![
                    ("port".to_string(), ArgType::U64),
                    ("size".to_string(), ArgType::U32)
                ]
            ),
            (
                "sched:switch".to_string(),
                sched_address,
                vec![("from".to_string(), ArgType::I32)]
            ),
        ]
    );

    // Arguments, the site's address and the probe number.
    let probe = client
        .arm(
            Site::Marker {
                index: ipc_index as u32,
            },
            &emit_slots(&[0, 1, 2, 16, 18]),
        )
        .probe();
    client
        .arm(
            Site::Marker {
                index: ipc_index as u32,
            },
            &noop(),
        )
        .assert_err(
            ErrorCode::ALREADY_PROBED,
            ErrorDetail::Value(u64::from(probe)),
        );
    assert!(
        !ipc.enabled.load(std::sync::atomic::Ordering::SeqCst),
        "staged"
    );
    client.done(RequestBody::Start);
    assert!(ipc.enabled.load(std::sync::atomic::Ordering::SeqCst));
    assert!(
        !sched.enabled.load(std::sync::atomic::Ordering::SeqCst),
        "not armed"
    );
    sim.set_cpu(1);
    ipc_send(7, 100);
    sched_switch(5);
    client.drain();
    assert_eq!(client.events.len(), 1);
    assert_eq!(client.events[0].cpu, 1);
    assert_eq!(
        client.events[0].words(),
        [7, 100, 0, ipc_address, u64::from(probe)]
    );

    // Armed after Start: enabled at once; signed arguments sign-extend.
    let switch = client
        .arm(
            Site::Marker {
                index: sched_index as u32,
            },
            &emit_slots(&[0]),
        )
        .probe();
    assert!(sched.enabled.load(std::sync::atomic::Ordering::SeqCst));
    sched_switch(-3);
    client.drain();
    assert_eq!(client.events[1].words(), [(-3i64) as u64]);

    // Stop disables every marker, Start enables them again, Disarm disables one.
    client.done(RequestBody::Stop);
    assert!(!ipc.enabled.load(std::sync::atomic::Ordering::SeqCst));
    assert!(!sched.enabled.load(std::sync::atomic::Ordering::SeqCst));
    ipc_send(8, 8);
    client.done(RequestBody::Start);
    assert!(ipc.enabled.load(std::sync::atomic::Ordering::SeqCst));
    client.done(RequestBody::Disarm {
        probe: ProbeId(probe),
    });
    assert!(!ipc.enabled.load(std::sync::atomic::Ordering::SeqCst));
    assert!(sched.enabled.load(std::sync::atomic::Ordering::SeqCst));
    ipc_send(9, 9);
    sched_switch(4);
    client.drain();
    assert_eq!(client.events.len(), 3);
    assert_eq!(client.events[2].probe, switch);
    client.done(RequestBody::Goodbye);
    assert!(!sched.enabled.load(std::sync::atomic::Ordering::SeqCst));
}

#[test]
fn timers_fire_on_one_cpu_or_on_every_cpu_when_due() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    const MS: u64 = 1_000_000;
    let each = client
        .arm(
            Site::Timer {
                period_ns: MS,
                scope: TimerScope::EachCpu,
            },
            &emit_slots(&[16, 5, 18]),
        )
        .probe();
    let one = client
        .arm(
            Site::Timer {
                period_ns: 2 * MS,
                scope: TimerScope::OneCpu,
            },
            &emit_slots(&[16, 5, 18]),
        )
        .probe();
    client.done(RequestBody::Start);
    let interrupted = TEXT_BASE + 0xabc;
    let tick = |now: u64| {
        sim.set_now(now);
        for cpu in 0..2 {
            sim.set_cpu(cpu);
            stub.on_timer(&call_registers(
                interrupted,
                STACK_BASE + 0x8000,
                &[cpu as u64 + 10],
            ));
        }
    };
    let mut fired = Vec::new();
    let collect = |client: &mut Client, fired: &mut Vec<(u64, u16, u32)>, now: u64| {
        client.events.clear();
        client.drain();
        for event in &client.events {
            let words = event.words();
            assert_eq!(words[0], interrupted, "PC: the interrupted instruction");
            assert_eq!(
                words[1],
                u64::from(event.cpu) + 10,
                "the interrupted registers"
            );
            assert_eq!(words[2], u64::from(event.probe));
            fired.push((now, event.cpu, event.probe));
        }
    };
    for now in [MS / 2, MS, 2 * MS, 2 * MS + MS / 2, 10 * MS] {
        tick(now);
        collect(&mut client, &mut fired, now);
    }
    fired.sort();
    assert_eq!(
        fired,
        [
            (MS, 0, each),
            (MS, 1, each),
            (2 * MS, 0, each),
            (2 * MS, 0, one),
            (2 * MS, 1, each),
            // Late ticks fire once, not once per missed period.
            (10 * MS, 0, each),
            (10 * MS, 0, one),
            (10 * MS, 1, each),
        ]
    );
    client.done(RequestBody::Stop);
    tick(20 * MS);
    client.drain();
    assert_eq!(client.probe_stats(each).hits, 6);
    assert_eq!(client.probe_stats(one).hits, 2);
}
