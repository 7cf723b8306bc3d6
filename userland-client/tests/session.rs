//! Whole sessions against the fake stub (`common/fake_stub.rs`): the printed output,
//! JSON lines, the lost-event and fault summary, refusals, the build-id check, and
//! recording then replaying a session.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use common::fake_stub::{self, Emit, ErrorDetailOwned, Model, Seen};
use lang::source::Sources;
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::message::ArgType;
use userland_client::port::{Port, TimedRead};
use userland_client::record::{Recorder, Replay};
use userland_client::session::{self, Output, OutputFormat, SessionError, SessionOptions, Summary};

const FAULTS: &str = r#"
probe kernel.function("demo_kernel::vm::fault") {
    @faults[$address >> 12] = count();
    printf("fault at %x on cpu %u\n", $address, cpu);
}
probe end { printf("bye\n"); }
"#;

fn sources(script: &str) -> Sources {
    let mut sources = Sources::new();
    sources.add_script("test.probe", script);
    lang::tapset::add_builtin(&mut sources);
    sources
}

struct Ran {
    result: Result<Summary, SessionError>,
    out: String,
    err: String,
}

fn run_on<S: TimedRead>(port: &mut Port<S>, script: &str, format: OutputFormat) -> Ran {
    run_with_image_markers(port, script, format, None)
}

/// [`run_on`] with the marker table the image is said to hold.
fn run_with_image_markers<S: TimedRead>(
    port: &mut Port<S>,
    script: &str,
    format: OutputFormat,
    image_markers: Option<Vec<lang::resolver::Marker>>,
) -> Ran {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut output = Output {
        out: &mut out,
        err: &mut err,
        format,
    };
    let options = SessionOptions {
        format,
        duration: Some(std::time::Duration::from_secs(1)),
        image_markers,
        ..SessionOptions::default()
    };
    let stop = AtomicBool::new(false);
    let result = session::run(
        port,
        common::demo_kernel(),
        &sources(script),
        &options,
        &mut output,
        &stop,
    );
    Ran {
        result,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

fn run_live(
    model: Model,
    script: &str,
    format: OutputFormat,
    record: Option<&Path>,
) -> (Ran, Seen) {
    let (client, stub) = fake_stub::spawn(model);
    let ran = match record {
        Some(path) => run_on(
            &mut Port::new(Recorder::create(client, path).unwrap()),
            script,
            format,
        ),
        None => run_on(&mut Port::new(client), script, format),
    };
    (ran, stub.join().unwrap())
}

/// The demo kernel, two CPUs, two faults (pages 5 and 6) and the map they leave.
fn faults_model() -> Model {
    let kernel = common::demo_kernel();
    let mut model = Model {
        build_id: kernel.build_id().unwrap().to_vec(),
        cpu_count: 2,
        lease_ms: 1000,
        ..Model::default()
    };
    model.emit = vec![
        Emit::Event {
            cpu: 0,
            seq: 0,
            probe: 1,
            data: fake_stub::record(0, &[0x5123, 0]),
        },
        Emit::Event {
            cpu: 1,
            seq: 0,
            probe: 1,
            data: fake_stub::record(0, &[0x6000, 1]),
        },
    ];
    model.next_seq = [(0, 1), (1, 1)].into();
    // Key ‖ count on CPU 0 ‖ count on CPU 1; one entry per page.
    model.pages.insert(
        0,
        vec![
            (fake_stub::words(&[5, 2, 1]), 1),
            (fake_stub::words(&[6, 0, 1]), 1),
        ],
    );
    model
}

#[test]
fn records_and_maps_print_as_bpftrace() {
    let (ran, seen) = run_live(faults_model(), FAULTS, OutputFormat::Text, None);
    let summary = ran.result.unwrap();
    assert_eq!(
        ran.out,
        "fault at 5123 on cpu 0\nfault at 6000 on cpu 1\nbye\n@faults[6]: 1\n@faults[5]: 3\n\n"
    );
    assert_eq!(ran.err, "");
    assert!(summary.is_clean() && summary.events == 2);
    // The lease is 1 s and the session lasts 1 s: keep-alives every third of it.
    let keep_alives = seen
        .requests
        .iter()
        .filter(|kind| *kind == "KeepAlive")
        .count();
    assert!(keep_alives >= 1, "{:?}", seen.requests);
    let requests: Vec<&String> = seen
        .requests
        .iter()
        .filter(|kind| *kind != "KeepAlive")
        .collect();
    assert_eq!(
        requests,
        [
            "Hello",
            "DescribeMarker",
            "DefineMap",
            "Arm",
            "Start",
            "Stop",
            "CpuStats",
            "CpuStats",
            "ReadMap",
            "ReadMap",
            "ProbeStats",
            "Goodbye"
        ]
    );
}

#[test]
fn json_lines() {
    let (ran, _) = run_live(faults_model(), FAULTS, OutputFormat::Json, None);
    ran.result.unwrap();
    let lines: Vec<serde_json::Value> = ran
        .out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{}", ran.out);
    assert_eq!(
        lines[0],
        serde_json::json!({"type": "printf", "cpu": 0, "time_ns": 0, "probe": 1,
                           "text": "fault at 5123 on cpu 0\n"})
    );
    assert_eq!(
        lines[2],
        serde_json::json!({"type": "printf", "text": "bye\n"})
    );
    assert_eq!(
        lines[3],
        serde_json::json!({"type": "map", "name": "@faults", "entries": [
            {"key": [5], "value": 3}, {"key": [6], "value": 1}]})
    );
    assert_eq!(lines[4]["type"], "summary");
    assert_eq!(lines[4]["events"], 2);
    assert_eq!(lines[4]["lost"], serde_json::json!([]));
}

#[test]
fn lost_events_faults_and_gaps_are_summarised() {
    let mut model = faults_model();
    // CPU 1: event 0, events 1..4 lost, event 4. CPU 0: event 0, then nothing for 1..3.
    model.emit = vec![
        Emit::Event {
            cpu: 0,
            seq: 0,
            probe: 1,
            data: fake_stub::record(0, &[0x5000, 0]),
        },
        Emit::Event {
            cpu: 1,
            seq: 0,
            probe: 1,
            data: fake_stub::record(0, &[0x6000, 1]),
        },
        Emit::Lost {
            cpu: 1,
            first_seq: 1,
            count: 3,
        },
        Emit::Event {
            cpu: 1,
            seq: 4,
            probe: 1,
            data: fake_stub::record(0, &[0x7000, 1]),
        },
    ];
    model.next_seq = [(0, 3), (1, 5)].into();
    model.probe_stats.insert(1, (2, 0xdead_0000, 1, 4));
    let (ran, _) = run_live(model, FAULTS, OutputFormat::Text, None);
    let summary = ran.result.unwrap();
    assert!(!summary.is_consistent());
    assert_eq!(
        ran.err,
        "lost 3 events on CPU 1 (event ring full)\n\
         CPU 0: events 1..3 were neither delivered nor reported lost\n\
         probe 1 (kernel.function(\"demo_kernel::vm::fault\") at demo_kernel::vm::fault): \
         2 faults (last at 0xdead0000), 1 misses, 4 drops\n"
    );
}

#[test]
fn refusals_name_the_probe_and_the_reason() {
    let kernel = common::demo_kernel();
    let fault = kernel
        .function("demo_kernel::vm::fault")
        .unwrap()
        .entry()
        .unwrap();
    let mut model = faults_model();
    model.refuse = vec![(
        fault,
        ErrorCode::BYTES_MISMATCH,
        ErrorDetailOwned::Bytes(vec![0xcc]),
    )];
    let (ran, seen) = run_live(model, FAULTS, OutputFormat::Text, None);
    let error = ran.result.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "the kernel refused 1 probe site(s):\n  kernel.function(\"demo_kernel::vm::fault\") \
             at demo_kernel::vm::fault: {}: found cc",
            ErrorCode::BYTES_MISMATCH
        )
    );
    assert!(!seen.requests.contains(&"Start".to_string()));
    assert_eq!(seen.requests.last().unwrap(), "Goodbye");
    assert_eq!(ran.out, "");
}

#[test]
fn build_id_mismatch_is_refused_before_anything_is_sent() {
    let mut model = faults_model();
    model.build_id = vec![0xde, 0xad, 0xbe, 0xef];
    let (ran, seen) = run_live(model, FAULTS, OutputFormat::Text, None);
    let message = ran.result.unwrap_err().to_string();
    let ours = userland_client::debuginfo::hex(common::demo_kernel().build_id().unwrap());
    assert!(
        message.contains("deadbeef") && message.contains(&ours),
        "{message}"
    );
    assert_eq!(seen.requests, ["Hello", "Goodbye"]);
}

/// The running kernel's table must be the image's: a different one (here the demo
/// image's six markers against a kernel announcing one) is refused before arming.
#[test]
fn a_marker_table_unlike_the_images_is_refused() {
    let image_markers = userland_client::markers::read_markers(common::demo_kernel())
        .unwrap()
        .unwrap();
    let mut model = faults_model();
    model.markers = vec![(
        "ipc:send".to_string(),
        vec![("port".to_string(), ArgType::U32)],
    )];
    let (client, stub) = fake_stub::spawn(model);
    let ran = run_with_image_markers(
        &mut Port::new(client),
        FAULTS,
        OutputFormat::Text,
        Some(image_markers.clone()),
    );
    let seen = stub.join().unwrap();
    let message = ran.result.unwrap_err().to_string();
    assert!(
        message.contains("marker table differs") && message.contains("marker 0 is"),
        "{message}"
    );
    assert!(seen.armed.is_empty(), "{:?}", seen.armed);
    assert_eq!(seen.requests.last().map(String::as_str), Some("Goodbye"));

    // The same table as the image's is accepted.
    let mut model = faults_model();
    model.markers = image_markers
        .iter()
        .map(|marker| {
            (
                marker.name.clone(),
                marker
                    .args
                    .iter()
                    .map(|arg| (arg.name.clone(), arg.ty))
                    .collect(),
            )
        })
        .collect();
    let (client, stub) = fake_stub::spawn(model);
    let ran = run_with_image_markers(
        &mut Port::new(client),
        FAULTS,
        OutputFormat::Text,
        Some(image_markers),
    );
    stub.join().unwrap();
    assert!(ran.result.is_ok(), "{:?}", ran.result.err());
}

#[test]
fn markers_exit_and_map_actions_in_probes() {
    let mut model = faults_model();
    model.markers = vec![(
        "ipc:send".to_string(),
        vec![
            ("port".to_string(), ArgType::U32),
            ("size".to_string(), ArgType::U64),
        ],
    )];
    let script = r#"
        probe kernel.marker("ipc:send") { @bytes[$port] = sum($size); }
        probe kernel.marker("ipc:send") /$size > 100/ { print(@bytes); exit(); }
    "#;
    // Record 0 is print(@bytes), record 1 exit(); map 0 is @bytes.
    model.emit = vec![
        Emit::Event {
            cpu: 0,
            seq: 0,
            probe: 2,
            data: fake_stub::record(0, &[]),
        },
        Emit::Event {
            cpu: 0,
            seq: 1,
            probe: 2,
            data: fake_stub::record(1, &[]),
        },
    ];
    model.next_seq = [(0, 2), (1, 0)].into();
    model
        .pages
        .insert(0, vec![(fake_stub::words(&[7, 100, 28]), 1)]);
    let (ran, seen) = run_live(model, script, OutputFormat::Text, None);
    let summary = ran.result.unwrap();
    assert!(summary.is_clean(), "{summary:?}");
    // Printed once by print(), once more at the end.
    assert_eq!(ran.out, "@bytes[7]: 128\n\n@bytes[7]: 128\n\n");
    assert!(
        seen.armed.iter().all(|site| site.starts_with("Marker")),
        "{:?}",
        seen.armed
    );
}

#[test]
fn a_recorded_session_replays_identically() {
    let directory = tempfile::tempdir().unwrap();
    let recording = directory.path().join("faults.rec");
    let (live, _) = run_live(faults_model(), FAULTS, OutputFormat::Text, Some(&recording));
    live.result.unwrap();

    let mut port = Port::new(Replay::open(&recording).unwrap());
    let replayed = run_on(&mut port, FAULTS, OutputFormat::Text);
    replayed.result.unwrap();
    assert_eq!(replayed.out, live.out);
    assert_eq!(replayed.err, live.err);

    // Another script diverges at its first different request, and says so.
    let mut port = Port::new(Replay::open(&recording).unwrap());
    let other = run_on(
        &mut port,
        r#"probe kernel.function("demo_kernel::vm::age") { @a = count(); }"#,
        OutputFormat::Text,
    );
    let message = format!("{:#}", anyhow::Error::new(other.result.unwrap_err()));
    assert!(
        message.contains("differs from the recording at request"),
        "{message}"
    );
}

#[test]
fn probefunc_at_a_marker_prints_the_marker() {
    let mut model = faults_model();
    model.markers = vec![(
        "ipc:send".to_string(),
        vec![("port".to_string(), ArgType::U32)],
    )];
    // The fake announces marker 0 at 0x1000; probefunc at a marker is its site.
    model.emit = vec![
        Emit::Event {
            cpu: 0,
            seq: 0,
            probe: 1,
            data: fake_stub::record(0, &[0x1000, 3]),
        },
        Emit::Event {
            cpu: 0,
            seq: 1,
            probe: 1,
            data: fake_stub::record(0, &[0x1234, 4]),
        },
    ];
    model.next_seq = [(0, 2), (1, 0)].into();
    let (ran, _) = run_live(
        model,
        r#"probe kernel.marker("ipc:send") { printf("%s port %u\n", probefunc, $port); }"#,
        OutputFormat::Text,
        None,
    );
    ran.result.unwrap();
    assert_eq!(ran.out, "marker ipc:send port 3\n0x1234 port 4\n");
}

#[test]
fn maps_too_big_for_the_kernel_are_shrunk_with_a_warning() {
    let mut model = faults_model();
    model.emit.clear();
    model.next_seq = [(0, 0), (1, 0)].into();
    let (ran, seen) = run_live(
        model,
        r#"probe kernel.function("demo_kernel::vm::fault") { @pages[$map] = hist($address); @faults = count(); }"#,
        OutputFormat::Text,
        None,
    );
    ran.result.unwrap();
    // A map without keys reserves one entry and is left alone; 4096 entries of 65
    // counters on 2 CPUs do not fit the fake's 1 MiB.
    assert_eq!(
        ran.err,
        "warning: map @pages holds at most 704 entries instead of 4096 \
         (the kernel has 1024 KiB for maps)\n"
    );
    assert!(seen.requests.contains(&"DefineMap".to_string()));
}
