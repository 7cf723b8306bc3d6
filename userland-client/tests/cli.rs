//! The `probeport` binary: `check` output and diagnostics, usage errors, and `run`
//! on a Unix-socket port served by the fake stub, recorded and replayed, in text and
//! JSON, stopped by `-d` and by Ctrl-C. Output that does not depend on the demo
//! kernel's build is compared with snapshots in `tests/cli/` (regenerate them with
//! `PROBEPORT_BLESS=1`).

mod common;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use common::fake_stub::{self, Emit, Model, Seen};
use probe_port_protocol::message::ArgType;

const FAULTS: &str = r#"probe kernel.function("demo_kernel::vm::fault") { @faults[$address >> 12] = count(); printf("fault at %x on cpu %u\n", $address, cpu); } probe end { printf("bye\n"); }"#;

fn probeport(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_probeport"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Compares `actual` with the snapshot `tests/cli/NAME`, or writes it with
/// `PROBEPORT_BLESS=1`.
fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cli")
        .join(name);
    if std::env::var_os("PROBEPORT_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("no snapshot {}: run with PROBEPORT_BLESS=1", path.display()));
    assert_eq!(actual, expected, "snapshot {name} differs");
}

fn demo() -> &'static str {
    common::demo_kernel_path().to_str().unwrap()
}

#[test]
fn check_prints_a_summary() {
    let output = probeport(&["check", "--kernel", demo(), "-e", FAULTS]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "probe kernel.function(\"demo_kernel::vm::fault\"): 1 site\n\
         ok: 1 probes, 1 sites, 1 maps, 1 records\n"
    );
    assert_eq!(text(&output.stderr), "");
}

#[test]
fn check_shows_diagnostics_as_rustc() {
    let output = probeport(&[
        "check",
        "--kernel",
        demo(),
        "-e",
        r#"probe kernel.function("demo_kernel::vm::fault") { @f[$adress] = count(); printf("%s\n", $map); }"#,
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stdout), "");
    snapshot("check_errors.stderr", &text(&output.stderr));
}

#[test]
fn check_dump_on_gnumach() {
    common::gnumach();
    let output = probeport(&[
        "check",
        "--kernel",
        "gnumach-dbg",
        "--dump",
        "-e",
        r#"probe kernel.function("ipc_kmsg_get") { printf("%d\n", $size); }
           probe kernel.function("ipc_kmsg_get").return { @results[$return] = count(); }"#,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    snapshot("check_dump_gnumach.stdout", &text(&output.stdout));
}

/// Every example compiles offline against the demo kernel's image: its marker table
/// is read from the image (section `probeport_markers`), no kernel runs.
#[test]
fn check_compiles_every_example_against_the_demo_image() {
    let examples = common::workspace().join("examples");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "probe")
        })
        .collect();
    scripts.sort();
    assert_eq!(scripts.len(), 6, "{scripts:?}");
    for script in &scripts {
        let output = probeport(&["check", "--kernel", demo(), script.to_str().unwrap()]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}: {}",
            script.display(),
            text(&output.stderr)
        );
        assert!(
            text(&output.stdout).contains("ok: "),
            "{}: {}",
            script.display(),
            text(&output.stdout)
        );
    }
    // Markers and their typed arguments are checked, not only found.
    let output = probeport(&[
        "check",
        "--kernel",
        demo(),
        "-e",
        r#"probe kernel.marker("ipc:send") { @bytes[$port] = sum($size); }"#,
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let output = probeport(&[
        "check",
        "--kernel",
        demo(),
        "-e",
        r#"probe kernel.marker("ipc:send") { @bytes[$nonsense] = count(); }"#,
    ]);
    assert_eq!(output.status.code(), Some(1));
}

/// An image without a `probeport_markers` section (GNU Mach) has no markers offline.
#[test]
fn check_without_a_marker_section_finds_no_marker() {
    common::gnumach();
    let output = probeport(&[
        "check",
        "--kernel",
        "gnumach-dbg",
        "-e",
        r#"probe kernel.marker("ipc:send") { @c = count(); }"#,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("error[E0402]: no marker matches `ipc:send`"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["check", "--kernel", "x"][..],
        &["run", "-e", "probe begin { exit(); }", "--kernel", "x"],
        &[
            "run",
            "-e",
            "probe begin { exit(); }",
            "--kernel",
            demo(),
            "--port",
            "tcp:1",
        ],
        &[
            "run",
            "-e",
            "probe begin { exit(); }",
            "--kernel",
            demo(),
            "--replay",
            "x",
            "-d",
            "0",
        ],
        &["frobnicate"],
    ] {
        let output = probeport(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
    let output = probeport(&[
        "run",
        "-e",
        "x",
        "--kernel",
        demo(),
        "--port",
        "unix:/nonexistent",
    ]);
    assert_eq!(output.status.code(), Some(1));
    // Without --kernel only user-space points and exact kernel function names
    // (for a stub that resolves them) compile: a kernel pattern is an error that
    // says so, before anything connects; an exact kernel function name and a
    // user-space script get as far as the port.
    for (script, failure) in [
        (
            "probe kernel.function(\"port_*\") { exit(); }",
            "only user-space process(...) points",
        ),
        (
            "probe kernel.function(\"port_send\") { exit(); }",
            "cannot open the probe port",
        ),
        ("probe begin { exit(); }", "cannot open the probe port"),
    ] {
        let output = probeport(&["run", "-e", script, "--port", "unix:/nonexistent"]);
        assert_eq!(output.status.code(), Some(1), "{script}");
        assert!(
            text(&output.stderr).contains(failure),
            "{script}: {}",
            text(&output.stderr)
        );
    }
    let output = probeport(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(text(&output.stdout).contains("Exit status: 0 success; 1 an error"));
}

/// `run` compiles before it connects (a script with errors never reaches the port)
/// and refuses a kernel whose marker table is not its image's.
#[test]
fn run_compiles_first_and_checks_the_marker_table() {
    let output = probeport(&[
        "run",
        "--kernel",
        demo(),
        "--port",
        "unix:/nonexistent",
        "-e",
        r#"probe kernel.marker("ipc:sendd") { @c = count(); }"#,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("error[E0402]"), "{stderr}");
    assert!(!stderr.contains("nonexistent"), "{stderr}");

    let mut model = faults_model();
    model.markers.swap(0, 1);
    let (socket, _directory, stub) = listen(model);
    let output = probeport(&[
        "run",
        "--kernel",
        demo(),
        "--port",
        &format!("unix:{}", socket.display()),
        "-e",
        FAULTS,
        "-d",
        "0.5",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("marker table differs from the one in the image: marker 0 is"),
        "{stderr}"
    );
    let seen = stub.join().unwrap();
    assert!(seen.armed.is_empty(), "{:?}", seen.armed);
}

/// A fake stub listening on a socket in a fresh directory; serves one session.
fn listen(model: Model) -> (PathBuf, tempfile::TempDir, thread::JoinHandle<Seen>) {
    let directory = tempfile::tempdir().unwrap();
    let socket = directory.path().join("probe.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        fake_stub::serve(stream, model)
    });
    (socket, directory, handle)
}

/// The demo image's marker table, as the fake stub announces it (`run` refuses a
/// kernel whose table differs from its image's).
fn image_markers() -> Vec<(String, Vec<(String, ArgType)>)> {
    userland_client::markers::read_markers(common::demo_kernel())
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|marker| {
            let args = marker
                .args
                .into_iter()
                .map(|arg| (arg.name, arg.ty))
                .collect();
            (marker.name, args)
        })
        .collect()
}

fn faults_model() -> Model {
    let kernel = common::demo_kernel();
    let mut model = Model {
        build_id: kernel.build_id().unwrap().to_vec(),
        cpu_count: 2,
        markers: image_markers(),
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
    model
        .pages
        .insert(0, vec![(fake_stub::words(&[5, 2, 1, 6, 0, 1]), 2)]);
    model
}

const FAULTS_OUTPUT: &str =
    "fault at 5123 on cpu 0\nfault at 6000 on cpu 1\nbye\n@faults[6]: 1\n@faults[5]: 3\n\n";

#[test]
fn run_on_a_unix_socket_then_replay_the_recording() {
    let (socket, directory, stub) = listen(faults_model());
    let recording = directory.path().join("session.rec");
    let port = format!("unix:{}", socket.display());
    let output = probeport(&[
        "run",
        "--kernel",
        demo(),
        "--port",
        &port,
        "-e",
        FAULTS,
        "-d",
        "0.5",
        "--record",
        recording.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), FAULTS_OUTPUT);
    assert_eq!(text(&output.stderr), "");
    stub.join().unwrap();

    let replay = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--kernel",
            demo(),
            "--replay",
            recording.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        probeport(&args)
    };
    let output = replay(&["-e", FAULTS]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), FAULTS_OUTPUT);

    // JSON lines into a file.
    let json_file = directory.path().join("out.jsonl");
    let output = replay(&[
        "-e",
        FAULTS,
        "--format",
        "json",
        "-o",
        json_file.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&json_file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let kinds: Vec<&str> = lines
        .iter()
        .map(|line| line["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["printf", "printf", "printf", "map", "summary"]);

    // Another script does not match the recording.
    let output = replay(&[
        "-e",
        r#"probe kernel.function("demo_kernel::vm::age") { @a = count(); }"#,
    ]);
    assert_eq!(output.status.code(), Some(1));
    // Hello, one DescribeMarker per marker, then the first DefineMap.
    let first_map = 2 + image_markers().len();
    assert!(
        text(&output.stderr).contains(&format!(
            "differs from the recording at request {first_map}: recorded DefineMap"
        )),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn build_id_mismatch_names_both_ids() {
    let mut model = faults_model();
    model.build_id = vec![0xde, 0xad, 0xbe, 0xef];
    let (socket, _directory, stub) = listen(model);
    let port = format!("unix:{}", socket.display());
    let output = probeport(&["run", "--kernel", demo(), "--port", &port, "-e", FAULTS]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let ours = userland_client::debuginfo::hex(common::demo_kernel().build_id().unwrap());
    assert!(
        stderr.contains("running kernel is deadbeef") && stderr.contains(&ours),
        "{stderr}"
    );
    assert_eq!(stub.join().unwrap().requests, ["Hello", "Goodbye"]);
}

#[test]
fn ctrl_c_stops_cleanly_and_prints_the_end() {
    let model = faults_model();
    let started = model.started.clone();
    let (socket, _directory, stub) = listen(model);
    let port = format!("unix:{}", socket.display());
    let child = Command::new(env!("CARGO_BIN_EXE_probeport"))
        .args(["run", "--kernel", demo(), "--port", &port, "-e", FAULTS])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the session has started (the fake answered `Start`), then
    // interrupt.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !started.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the session never started"
        );
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(100));
    // SAFETY: sending a signal to our own child, which is still running.
    let sent = unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(sent, 0);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), FAULTS_OUTPUT);
    let seen = stub.join().unwrap();
    assert!(seen.requests.contains(&"Stop".to_string()));
    assert_eq!(seen.requests.last().unwrap(), "Goodbye");
}

/// A pseudo-terminal pair: the fake stub on the master side, the client on the
/// slave device as `--port serial:/dev/pts/N` (which it must set to raw mode, or
/// the terminal's line discipline would echo and rewrite the frames).
#[test]
fn run_on_a_serial_device() {
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on a descriptor we own; `ptsname` is read at once.
    let (master, slave) = unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0);
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(master))
            .to_string_lossy()
            .into_owned();
        (std::fs::File::from_raw_fd(master), name)
    };
    let stub = thread::spawn(move || fake_stub::serve(master, faults_model()));
    let port = format!("serial:{slave}");
    let output = probeport(&[
        "run",
        "--kernel",
        demo(),
        "--port",
        &port,
        "-e",
        FAULTS,
        "-d",
        "0.5",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), FAULTS_OUTPUT);
    assert_eq!(stub.join().unwrap().requests.last().unwrap(), "Goodbye");
}

#[test]
fn list_shows_markers_with_their_typed_arguments() {
    let kernel = common::demo_kernel_path().to_str().unwrap().to_string();
    let output = probeport(&["list", "--kernel", &kernel, "ipc:*"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "kernel.marker(\"ipc:receive\")(uint32_t port, uint32_t id, uint32_t size, uint32_t tid)\n\
         kernel.marker(\"ipc:send\")(uint32_t port, uint32_t id, uint32_t size, uint32_t tid)\n"
    );
}
