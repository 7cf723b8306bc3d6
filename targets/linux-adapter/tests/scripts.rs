//! Probe scripts through the daemon: `process(...)` points compiled by the real
//! compiler (with the client's user-space resolver, which reads the traced file's
//! symbols and USDT notes), armed through the port, and their output printed with
//! the client's formatting. Needs root; never skips.

mod common;

use std::time::Duration;

use common::*;
use lang::compiled::CompiledScript;
use lang::format::{format_map, format_record, split_map_page};
use lang::source::Sources;
use lang::{CompileOptions, compile};
use probe_port_protocol::message::{ReplyBody, RequestBody};
use userland_client::port::Unsolicited;
use userland_client::uprobe::UserResolver;

fn compile_script(text: &str) -> CompiledScript {
    let mut sources = Sources::new();
    sources.add_script("linux.probe", text);
    lang::tapset::add_builtin(&mut sources);
    let (script, diagnostics) = compile(&sources, &UserResolver, &CompileOptions::default());
    script.unwrap_or_else(|| panic!("does not compile: {diagnostics:#?}"))
}

/// Runs `script` around `run`: defines its maps, arms every attachment, starts,
/// runs, stops; returns the printed events (sorted) and the printed maps.
fn trace(script: &CompiledScript, run: impl FnOnce()) -> (Vec<String>, String) {
    let daemon = Daemon::start(&[]);
    let mut port = daemon.client();
    let cpus = linux_adapter::sys::possible_cpus().unwrap();
    for info in &script.maps {
        define(&mut port, info.spec);
    }
    for attachment in script.attachments() {
        let program = attachment.program_bytes();
        let entry = attachment.entry_program_bytes();
        let reply = arm(&mut port, attachment.site.to_wire(&entry), &program);
        assert!(
            matches!(reply.ok(), Ok(ReplyBody::Armed { .. })),
            "{}: {:?}",
            attachment.description,
            reply.get()
        );
    }
    port.request(RequestBody::Start).unwrap().ok().unwrap();
    run();
    port.request(RequestBody::Stop).unwrap().ok().unwrap();
    port.poll(Duration::from_millis(100)).unwrap();
    let no_symbols = |_: u64| None;
    let mut lines = Vec::new();
    for message in port.take_unsolicited() {
        match message {
            Unsolicited::Event(event) => {
                let record = script.record_of(&event.data).expect("a known record");
                lines.push(format_record(record, &event.data, &no_symbols));
            }
            Unsolicited::Lost(report) => panic!("lost events: {report:?}"),
        }
    }
    lines.sort();
    let mut maps = String::new();
    for info in &script.maps {
        let mut entries = Vec::new();
        let mut cursor = 0;
        loop {
            let reply = port
                .request(RequestBody::ReadMap {
                    map: info.spec.map,
                    cursor,
                })
                .unwrap();
            let Ok(ReplyBody::MapPage(page)) = reply.ok() else {
                panic!("{:?}", reply.get());
            };
            entries.extend(split_map_page(info, page.entries, cpus));
            match page.next_cursor {
                Some(next) => cursor = next,
                None => break,
            }
        }
        maps.push_str(&format!("{}:\n", info.name));
        maps.push_str(&format_map(info, &entries, &no_symbols));
    }
    port.request(RequestBody::Goodbye).unwrap().ok().unwrap();
    (lines, maps)
}

#[test]
fn function_entry_and_return_probes_from_a_script() {
    let path = traced().display().to_string();
    let script = compile_script(&format!(
        r#"
        probe process("{path}").function("probeport_work") {{
            @calls[reg("rsi")] = count();
            @index = stats(reg("rdi"));
            @first = min(reg("rdi"));
            @last = max(reg("rdi"));
            printf("work(%d, %d)\n", reg("rdi"), reg("rsi"));
        }}
        probe process("{path}").function("probeport_work").return {{
            @returned = sum($return);
            @low[$return < 50] = count();
        }}
        "#
    ));
    let (lines, maps) = trace(&script, || {
        assert!(run_traced(10).starts_with("total=325 "));
    });
    let expected: Vec<String> = {
        let mut lines: Vec<String> = (0..10).map(|index| format!("work({index}, 7)\n")).collect();
        lines.sort();
        lines
    };
    assert_eq!(lines, expected);
    // The return values index * 7 + 1 for index 0..10: 1, 8, ..., 43 below 50.
    assert_eq!(
        maps,
        "@calls:\n@calls[7]: 10\n\n\
         @index:\n@index: count 10, average 4, total 45\n\n\
         @first:\n@first: 0\n\n\
         @last:\n@last: 9\n\n\
         @returned:\n@returned: 325\n\n\
         @low:\n@low[false]: 3\n@low[true]: 7\n\n",
        "{maps}"
    );
}

#[test]
fn a_usdt_marker_from_a_script() {
    let path = traced().display().to_string();
    let script = compile_script(&format!(
        r#"
        probe process("{path}").mark("probeport:tick") {{
            @parity[$arg1 % 2] = count();
            printf("tick %d %d\n", $arg1, $arg2);
        }}
        "#
    ));
    let (lines, maps) = trace(&script, || {
        assert!(run_traced(4).ends_with("marks=4"));
    });
    // Running totals of index * 7 + 1: 1, 9, 24, 46.
    assert_eq!(
        lines,
        ["tick 0 1\n", "tick 1 9\n", "tick 2 24\n", "tick 3 46\n"]
    );
    assert_eq!(maps, "@parity:\n@parity[0]: 2\n@parity[1]: 2\n\n", "{maps}");
}

/// The client's own session (`probeport run --port unix:SOCKET`, no `--kernel`):
/// compile, arm, trace for a while, stop, print the `end` output and the summary.
#[test]
fn the_client_session_runs_a_user_space_script() {
    use std::sync::atomic::AtomicBool;
    use userland_client::session::{Output, OutputFormat, SessionOptions, run_user_space};

    let daemon = Daemon::start(&[]);
    let path = traced().display().to_string();
    let mut sources = Sources::new();
    sources.add_script(
        "linux.probe",
        format!(
            r#"probe process("{path}").function("probeport_work") {{ @calls[reg("rdi") % 3] = count(); }}"#
        ),
    );
    lang::tapset::add_builtin(&mut sources);
    let stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let mut port = userland_client::port::Port::new(stream);
    let options = SessionOptions {
        duration: Some(Duration::from_secs(3)),
        ..SessionOptions::default()
    };
    // The traced program runs once the probe is armed and started.
    let runner = {
        let traced = traced();
        let pid = daemon.pid();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.display().to_string().contains("perf_event"))
                })
            {
                assert!(std::time::Instant::now() < deadline, "never armed");
                std::thread::sleep(Duration::from_millis(10));
            }
            std::thread::sleep(Duration::from_millis(300));
            let output = std::process::Command::new(&traced)
                .arg("9")
                .output()
                .unwrap();
            assert!(output.status.success());
        })
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut output = Output {
        out: &mut out,
        err: &mut err,
        format: OutputFormat::Text,
    };
    let summary = run_user_space(
        &mut port,
        &sources,
        &options,
        &mut output,
        &AtomicBool::new(false),
    )
    .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&err)));
    runner.join().unwrap();
    assert!(summary.is_consistent());
    assert_eq!(
        String::from_utf8_lossy(&out),
        "@calls[0]: 3\n@calls[1]: 3\n@calls[2]: 3\n\n"
    );
}

#[test]
fn entry_values_reach_the_return_probe() {
    let path = traced().display().to_string();
    let script = compile_script(&format!(
        r#"
        probe process("{path}").function("probeport_work").return {{
            @by_index[@entry(reg("rdi"))] = sum($return);
            printf("%d -> %d (step %d)\n", @entry(reg("rdi")), $return, @entry(reg("rsi")));
        }}
        "#
    ));
    let attachment = script.attachments().next().unwrap();
    assert!(!attachment.entry_program.is_empty());
    let (lines, maps) = trace(&script, || {
        assert!(run_traced(4).starts_with("total=46 "));
    });
    assert_eq!(
        lines,
        [
            "0 -> 1 (step 7)\n",
            "1 -> 8 (step 7)\n",
            "2 -> 15 (step 7)\n",
            "3 -> 22 (step 7)\n"
        ]
    );
    assert_eq!(
        maps,
        "@by_index:\n@by_index[0]: 1\n@by_index[1]: 8\n@by_index[2]: 15\n@by_index[3]: 22\n\n",
        "{maps}"
    );
}

/// On a kernel without kprobes (the build machines') the daemon does not announce
/// `KERNEL_SYMBOL`, so the client's session compiles without kernel functions and
/// a script naming one fails to compile, with nothing armed; on a kernel with them
/// the script runs (the QEMU guest tests check what it counts).
#[test]
fn kernel_functions_compile_only_for_a_daemon_with_kprobes() {
    use std::sync::atomic::AtomicBool;
    use userland_client::session::{
        Output, OutputFormat, SessionError, SessionOptions, run_user_space,
    };
    let has_kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    let daemon = Daemon::start(&[]);
    let stream = std::os::unix::net::UnixStream::connect(&daemon.socket).expect("connect");
    let mut port = userland_client::port::Port::new(stream);
    port.set_timeout(Duration::from_secs(20));
    let mut sources = Sources::new();
    sources.add_script(
        "kernel.probe",
        r#"probe kernel.function("__x64_sys_getpid") { @n = count(); }"#,
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut output = Output {
        out: &mut out,
        err: &mut err,
        format: OutputFormat::Text,
    };
    let result = run_user_space(
        &mut port,
        &sources,
        &SessionOptions {
            duration: Some(Duration::from_millis(200)),
            ..SessionOptions::default()
        },
        &mut output,
        &AtomicBool::new(false),
    );
    match result {
        Err(SessionError::Compile { rendered }) if !has_kprobes => {
            assert!(rendered.contains("no function matches"), "{rendered}");
        }
        Ok(_) if has_kprobes => {}
        other => panic!("kprobes: {has_kprobes}, {other:?}"),
    }
    assert!(
        daemon
            .kernel_object_fds()
            .iter()
            .all(|fd| !fd.contains("perf_event"))
    );
}
