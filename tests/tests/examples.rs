//! Every shipped example script (`examples/*.probe`) run against the demo kernel
//! under QEMU, its output checked: exactly where the workload's ground truth fixes
//! it (call counts, message sizes, fault pages), by shape where timing decides
//! (latency histograms, context switches, samples per CPU).
//!
//! # Design
//!
//! A run goes through the same library path as `probeport run --demo SCRIPT`: the
//! script and the built-in tapsets loaded by `script::load`, the demo kernel built
//! and booted by `target::DemoKernel` (two CPUs, single-threaded TCG, the workload
//! waiting for the session's `Start`, its default 1000 rounds), and
//! `session::run` printing text into buffers. Only the argument parsing of
//! `main.rs` is left out; in exchange the test reads the kernel's console, so the
//! exact counts are compared with the kernel's own `workload: done` line as well as
//! with the independent formulas of `common::expected_totals`.
//!
//! One boot at a time (`common::one_boot_at_a_time`); each example ends itself
//! with `exit()` from a timer, so a run takes about three seconds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::*;
use userland_client::debuginfo::Kernel;
use userland_client::port::Port;
use userland_client::script;
use userland_client::session::{self, Output, OutputFormat, SessionOptions};
use userland_client::target::{DemoKernel, Target};

/// The examples this file checks; `every_example_has_a_check` keeps it complete.
const CHECKED: &[&str] = &[
    "syscalls.probe",
    "ipc_sizes.probe",
    "page_faults.probe",
    "serve_request.probe",
    "sched_switch.probe",
    "profile.probe",
];

/// The rounds the client's demo kernel runs (the kernel's default).
const ROUNDS: u64 = 1000;

/// How long QEMU may run for one example.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn examples_directory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .join("examples")
}

/// What one example printed, and what the kernel said on its console.
struct Traced {
    stdout: String,
    stderr: String,
    console: String,
}

impl Traced {
    fn context(&self) -> String {
        format!(
            "--- stdout\n{}--- stderr\n{}--- console\n{}",
            self.stdout, self.stderr, self.console
        )
    }
}

/// Runs `examples/NAME` against a freshly booted demo kernel, as
/// `probeport run --demo examples/NAME` does, and checks what every run must
/// satisfy: a clean summary, the kernel's verdict and its exact totals.
fn trace(name: &str) -> Traced {
    let _guard = one_boot_at_a_time();
    let image = demo_kernel();
    let kernel = Kernel::open(&image).expect("the demo kernel's debuginfo");
    let sources = script::load(Some(&examples_directory().join(name)), None, &[])
        .unwrap_or_else(|error| panic!("cannot read examples/{name}: {error}"));
    let mut target = DemoKernel::new(image, RUN_TIMEOUT);
    let link = target
        .connect()
        .unwrap_or_else(|error| panic!("{}: {error}", target.describe()));
    let mut port = Port::new(link);
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let options = SessionOptions::default();
    let mut output = Output {
        out: &mut stdout,
        err: &mut stderr,
        format: OutputFormat::Text,
    };
    let result = session::run(
        &mut port,
        &kernel,
        &sources,
        &options,
        &mut output,
        &AtomicBool::new(false),
    );
    // After the client's goodbye the kernel checks its workload and gives its
    // verdict; wait for the whole verdict line (the console file may end in the
    // middle of it) so that the done line is on the console.
    let verdict_written = |console: &str| {
        console
            .find("VERDICT:")
            .is_some_and(|at| console[at..].contains('\n'))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut console = target.console().unwrap_or_default();
    while !verdict_written(&console) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        console = target.console().unwrap_or_default();
    }
    let traced = Traced {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        console,
    };
    match result {
        Ok(summary) => assert!(
            summary.is_clean(),
            "examples/{name}: {}\n{}",
            summary.text(),
            traced.context()
        ),
        Err(error) => panic!("examples/{name}: {error}\n{}", traced.context()),
    }
    assert!(
        traced.console.contains("VERDICT: PASS"),
        "examples/{name}: no VERDICT: PASS\n{}",
        traced.context()
    );
    assert_exact_totals(&traced.console, ROUNDS);
    traced
}

// ----------------------------------------------------------------------------
// Reading the text output back.

/// A map printed as `@name[key]: value` (or `@name: value`) lines.
fn values(output: &str, map: &str) -> BTreeMap<String, u64> {
    let mut entries = BTreeMap::new();
    for line in output.lines() {
        let Some((head, value)) = line.rsplit_once(": ") else {
            continue;
        };
        let Ok(value) = value.trim().parse() else {
            continue;
        };
        let key = if head == map {
            String::new()
        } else if let Some(key) = head
            .strip_prefix(map)
            .and_then(|rest| rest.strip_prefix('['))
            .and_then(|rest| rest.strip_suffix(']'))
        {
            key.to_owned()
        } else {
            continue;
        };
        assert!(
            entries.insert(key, value).is_none(),
            "{map} printed twice:\n{output}"
        );
    }
    entries
}

/// The histograms of map `map`: per key, its bucket lines as (bucket, count),
/// checking each line's layout (`[lo, hi)   count |@@@   |`, bars 52 wide).
fn histograms(output: &str, map: &str) -> BTreeMap<String, Vec<(String, u64)>> {
    let mut histograms = BTreeMap::new();
    let mut lines = output.lines();
    while let Some(line) = lines.next() {
        let Some(key) = line
            .strip_prefix(map)
            .and_then(|rest| rest.strip_prefix('['))
            .and_then(|rest| rest.strip_suffix("]:"))
        else {
            continue;
        };
        let mut buckets = Vec::new();
        for bucket_line in lines.by_ref() {
            if bucket_line.is_empty() {
                break;
            }
            let (bucket, rest) = bucket_line
                .split_once(')')
                .unwrap_or_else(|| panic!("not a bucket line: {bucket_line:?}\n{output}"));
            assert!(
                bucket.starts_with('[') || bucket.starts_with('('),
                "bucket {bucket_line:?}"
            );
            let (count, bar) = rest
                .trim_start()
                .split_once(' ')
                .unwrap_or_else(|| panic!("not a bucket line: {bucket_line:?}"));
            let bar = bar.trim_start();
            assert!(
                bar.starts_with('|') && bar.ends_with('|') && bar.len() == 54,
                "bar of {bucket_line:?}"
            );
            let count = count
                .parse()
                .unwrap_or_else(|_| panic!("count of {bucket_line:?}"));
            buckets.push((format!("{bucket})"), count));
        }
        assert!(!buckets.is_empty(), "{map}[{key}] has no bucket\n{output}");
        histograms.insert(key.to_owned(), buckets);
    }
    histograms
}

fn total(buckets: &[(String, u64)]) -> u64 {
    buckets.iter().map(|(_, count)| count).sum()
}

fn entries(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), *value))
        .collect()
}

fn buckets(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs
        .iter()
        .map(|(bucket, count)| ((*bucket).to_owned(), *count))
        .collect()
}

// ----------------------------------------------------------------------------
// The examples.

#[test]
fn every_example_has_a_check() {
    let shipped: BTreeSet<String> = std::fs::read_dir(examples_directory())
        .expect("examples/")
        .map(|entry| entry.expect("examples/ entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".probe"))
        .collect();
    let checked: BTreeSet<String> = CHECKED.iter().map(|name| (*name).to_owned()).collect();
    assert_eq!(
        shipped, checked,
        "every examples/*.probe needs a test in tests/tests/examples.rs (and CHECKED)"
    );
}

#[test]
fn syscalls() {
    let traced = trace("syscalls.probe");
    let out = &traced.stdout;
    let done = done_line(&traced.console);
    assert_eq!(
        out.lines().next(),
        Some("Counting system calls for 2 s..."),
        "{}",
        traced.context()
    );
    // Each round each client touches, sends and receives, and yields every 8th
    // round; the server receives and sends once per request.
    let yields = 4 * (ROUNDS / 8);
    assert_eq!(
        values(out, "@calls"),
        entries(&[
            ("yield", yields),
            ("touch", 4 * ROUNDS),
            ("send", done["sends"]),
            ("receive", done["receives"]),
        ]),
        "{}",
        traced.context()
    );
    assert_eq!(
        values(out, "@calls").values().sum::<u64>(),
        done["syscalls"]
    );
    let per_client = 3 * ROUNDS + ROUNDS / 8;
    assert_eq!(
        values(out, "@by_thread"),
        entries(&[
            ("client/0", per_client),
            ("client/1", per_client),
            ("client/2", per_client),
            ("client/3", per_client),
            ("server", 8 * ROUNDS),
        ]),
        "{}",
        traced.context()
    );
}

#[test]
fn ipc_sizes() {
    let traced = trace("ipc_sizes.probe");
    let out = &traced.stdout;
    let done = done_line(&traced.console);
    // Port 1 is the server's: requests of 8, 16, 24 and 32 bytes in turn. Ports 2
    // to 5 are the clients' reply ports: 16-byte replies.
    let mut expected = BTreeMap::from([(
        "1".to_owned(),
        buckets(&[
            ("[8, 16)", ROUNDS),
            ("[16, 32)", 2 * ROUNDS),
            ("[32, 64)", ROUNDS),
        ]),
    )]);
    for port in 2..=5 {
        expected.insert(port.to_string(), buckets(&[("[16, 32)", ROUNDS)]));
    }
    assert_eq!(histograms(out, "@bytes"), expected, "{}", traced.context());
    assert_eq!(
        values(out, "@total_bytes"),
        entries(&[("", done["bytes"])]),
        "{}",
        traced.context()
    );
}

#[test]
fn page_faults() {
    let traced = trace("page_faults.probe");
    let out = &traced.stdout;
    let done = done_line(&traced.console);
    // Each client faults on page p once per full 32-round window (the page-out
    // scan ages its 16 pages every 32 rounds), and once more in the last, partial
    // window when that window reached page p.
    let faults_on = |page: u64| ROUNDS / 32 + u64::from(page < ROUNDS % 32);
    let bucket = |first: u64| (first..first + 4).map(faults_on).sum::<u64>();
    let per_client = buckets(&[
        ("[0, 4)", bucket(0)),
        ("[4, 8)", bucket(4)),
        ("[8, 12)", bucket(8)),
        ("[12, 16)", bucket(12)),
    ]);
    // The clients are threads 7 to 10.
    let expected: BTreeMap<String, Vec<(String, u64)>> = (7..=10)
        .map(|owner: u32| (owner.to_string(), per_client.clone()))
        .collect();
    let printed = histograms(out, "@page_index");
    assert_eq!(printed, expected, "{}", traced.context());
    assert_eq!(
        printed.values().map(|buckets| total(buckets)).sum::<u64>(),
        done["faults"]
    );
    assert_eq!(
        values(out, "@major"),
        entries(&[("true", done["major"]), ("false", done["minor"])]),
        "{}",
        traced.context()
    );
}

#[test]
fn serve_request() {
    let traced = trace("serve_request.probe");
    let out = &traced.stdout;
    // The first four requests (round 0 of each client, in whatever order the
    // server took them), each paired with its reply: same id, 16 bytes, and the
    // digest the server computes.
    let printed: BTreeSet<&str> = out
        .lines()
        .filter(|line| line.starts_with("request "))
        .collect();
    let expected: Vec<String> = (0..4u64)
        .map(|id| {
            format!(
                "request {id} ({} bytes) -> reply {id} (16 bytes), digest {:#x}",
                8 * (id + 1),
                digest(id)
            )
        })
        .collect();
    assert_eq!(
        printed,
        expected.iter().map(String::as_str).collect(),
        "{}",
        traced.context()
    );
    // Latencies depend on timing: one histogram per request size, each holding
    // every request of that size, in power-of-two buckets.
    let latencies = histograms(out, "@service_ns");
    assert_eq!(
        latencies.keys().collect::<Vec<_>>(),
        ["16", "24", "32", "8"],
        "{}",
        traced.context()
    );
    for (size, buckets) in &latencies {
        assert_eq!(total(buckets), ROUNDS, "@service_ns[{size}]");
        for (bucket, _) in buckets {
            let (low, high) = bucket
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|rest| rest.split_once(", "))
                .unwrap_or_else(|| panic!("bucket {bucket}"));
            assert_ne!(low, high, "bucket {bucket}");
        }
    }
}

#[test]
fn sched_switch() {
    let traced = trace("sched_switch.probe");
    let out = &traced.stdout;
    // How many switches depends on timing; both CPUs switch, and every workload
    // thread is switched to on its own CPU (server 6 and clients 7, 9 on CPU 0;
    // clients 8, 10 on CPU 1).
    let switches = values(out, "@switches");
    assert_eq!(
        switches.keys().collect::<Vec<_>>(),
        ["0", "1"],
        "{}",
        traced.context()
    );
    assert!(switches.values().all(|count| *count > 0), "{out}");
    let next = values(out, "@next_thread");
    for (cpu, thread) in [(0, 6), (0, 7), (1, 8), (0, 9), (1, 10)] {
        assert!(
            next.get(&format!("{cpu}, {thread}"))
                .is_some_and(|count| *count >= ROUNDS),
            "thread {thread} on cpu {cpu}:\n{}",
            traced.context()
        );
    }
    for (cpu, count) in &switches {
        let per_cpu: u64 = next
            .iter()
            .filter(|(key, _)| key.split(", ").next() == Some(cpu.as_str()))
            .map(|(_, count)| count)
            .sum();
        assert_eq!(per_cpu, *count, "cpu {cpu}:\n{out}");
    }
}

#[test]
fn profile() {
    let traced = trace("profile.probe");
    let out = &traced.stdout;
    // 50 samples a second on each CPU for about a second: both CPUs sampled,
    // each about 50 times (the clock ticks at 100 Hz), every sample in a function.
    let samples = values(out, "@samples");
    let mut per_cpu = BTreeMap::new();
    for (key, count) in &samples {
        let (cpu, thread) = key.split_once(", ").unwrap_or_else(|| panic!("key {key}"));
        assert!(!thread.is_empty(), "{out}");
        *per_cpu.entry(cpu.to_owned()).or_insert(0) += count;
    }
    assert_eq!(
        per_cpu.keys().collect::<Vec<_>>(),
        ["0", "1"],
        "{}",
        traced.context()
    );
    for (cpu, count) in &per_cpu {
        assert!(
            (25..=100).contains(count),
            "cpu {cpu}: {count} samples\n{out}"
        );
    }
    let places = values(out, "@where");
    assert_eq!(
        places.values().sum::<u64>(),
        per_cpu.values().sum::<u64>(),
        "{out}"
    );
    assert!(places.keys().all(|place| place.contains("+0x")), "{out}");
}
