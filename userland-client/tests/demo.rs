//! `probeport run --demo`: the client boots the demo kernel under QEMU (TCG,
//! `-accel tcg,thread=single`, two CPUs, through the `qemu` harness), compiles a
//! script against the image's DWARF and the kernel's marker table, arms, traces for
//! two seconds and prints the maps.

mod common;

use std::process::{Command, Stdio};

#[test]
fn demo_kernel_faults_per_page() {
    let output = Command::new(env!("CARGO_BIN_EXE_probeport"))
        .args([
            "run",
            "--demo",
            "--kernel",
            common::demo_kernel_path().to_str().unwrap(),
            "-d",
            "2",
            "-e",
            r#"probe begin { printf("tracing\n"); }
               probe kernel.function("demo_kernel::vm::fault") { @faults[$address >> 12] = count(); }
               probe kernel.marker("*") { @markers = count(); }"#,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("tracing"));
    let faults: Vec<(u64, u64)> = stdout
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("@faults[")?;
            let (page, count) = rest.split_once("]: ")?;
            Some((page.parse().unwrap(), count.parse().unwrap()))
        })
        .collect();
    assert!(!faults.is_empty(), "{stdout}");
    assert!(faults.iter().all(|(_, count)| *count > 0));
    let markers = stdout
        .lines()
        .find_map(|line| line.strip_prefix("@markers: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(markers.parse::<u64>().unwrap() > 0);
    // Nothing lost, no fault, no warning.
    assert_eq!(stderr, "", "{stdout}");
}
