//! Debian's kernel under QEMU with the daemon in its initramfs, serving the port on
//! the guest's COM2 (`/dev/ttyS1`), which the harness connects to the test.
//!
//! The daemon is the binary Cargo built for this host (dynamically linked against
//! glibc): it goes into the initramfs with the shared libraries `ldd` names, each
//! at the path `ldd` gives, the dynamic loader included. That is the very binary
//! the host tests run, with no second build of the workspace for another target
//! (a `+crt-static` build would need its own target directory and toolchain flags
//! inside `cargo test`); glibc's loader and libc run on any kernel newer than the
//! one glibc was built for, which Debian's 6.1 is. The workload is a C program
//! built with `gcc -static`.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use qemu::linux::DebianKernel;

/// The shared objects `binary` loads, as `ldd` lists them: absolute paths.
pub fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd").arg(binary).output().expect("ldd runs");
    assert!(output.status.success(), "ldd {}", binary.display());
    let text = String::from_utf8_lossy(&output.stdout);
    let mut found = Vec::new();
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x…)`; `linux-vdso.so.1 (0x…)` has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|path| path.starts_with('/')) {
            found.push(PathBuf::from(path));
        }
    }
    found
}

/// `tests/fixtures/getppid_loop.c` built with `gcc -static` (installed when
/// missing), once per test binary.
pub fn workload() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/getppid_loop.c");
        let output = std::env::temp_dir().join(format!("getppid_loop-{}", std::process::id()));
        crate::common::ensure_gcc();
        let status = Command::new("gcc")
            .args(["-O1", "-static", "-o"])
            .arg(&output)
            .arg(&source)
            .status()
            .expect("gcc runs");
        assert!(
            status.success(),
            "gcc -static failed on {}",
            source.display()
        );
        output
    })
}

/// Writes an initramfs with busybox, `init`, the daemon at `/bin/probeport-linuxd`
/// with its libraries, and the workload at `/bin/getppid_loop`; returns its path.
pub fn initramfs(kernel: &DebianKernel, init: &str, directory: &Path) -> PathBuf {
    initramfs_with(kernel, init, directory, &[])
}

/// [`initramfs`] with more executables: each `(path in the guest, host file)`.
pub fn initramfs_with(
    kernel: &DebianKernel,
    init: &str,
    directory: &Path,
    extra: &[(&str, &Path)],
) -> PathBuf {
    let daemon = Path::new(env!("CARGO_BIN_EXE_probeport-linuxd"));
    let mut archive = kernel
        .initramfs(init)
        .unwrap_or_else(|error| panic!("{error}"));
    let read = |path: &Path| {
        std::fs::read(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    };
    archive.file("bin/probeport-linuxd", &read(daemon), 0o755);
    archive.file("bin/getppid_loop", &read(workload()), 0o755);
    for (path, file) in extra {
        archive.file(path, &read(file), 0o755);
    }
    let mut directories: Vec<String> = Vec::new();
    for library in shared_libraries(daemon) {
        let relative = library
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string();
        // Parents first, each once (`bin` exists already).
        let mut parent = String::new();
        let components: Vec<&str> = relative.split('/').collect();
        for component in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            if parent != "bin" && !directories.contains(&parent) {
                archive.directory(&parent);
                directories.push(parent.clone());
            }
        }
        archive.file(&relative, &read(&library), 0o755);
    }
    let path = directory.join("initrd.cpio");
    archive
        .write(&path)
        .unwrap_or_else(|error| panic!("{error}"));
    path
}

/// `tests/fixtures/NAME.c` built with `gcc -static` (installed when missing) into
/// `directory`; returns the executable's path.
pub fn static_c_program(name: &str, directory: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.c"));
    let output = directory.join(name);
    crate::common::ensure_gcc();
    let status = Command::new("gcc")
        .args(["-O1", "-static", "-o"])
        .arg(&output)
        .arg(&source)
        .status()
        .expect("gcc runs");
    assert!(
        status.success(),
        "gcc -static failed on {}",
        source.display()
    );
    output
}

/// A fresh private directory.
pub fn tempdir(name: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(format!("probeport-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).expect("creating a scratch directory");
    directory
}

/// Waits until the guest's console has a line containing `text`; returns that line.
pub fn wait_console(qemu: &qemu::Qemu, text: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let console = qemu.console();
        if let Some(line) = console.lines().find(|line| line.contains(text)) {
            return line.to_string();
        }
        if console.contains("VERDICT: FAIL") || Instant::now() > deadline {
            panic!("no {text:?} on the guest's console:\n{console}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The console's `guest:` lines (SeaBIOS leaves escape sequences in front of the
/// first line).
pub fn guest_lines(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter_map(|line| line.find("guest:").map(|at| &line[at..]))
        .collect()
}

/// One guest at a time: two TCG guests on the build machines' two cores would
/// only slow each other down past the tests' timeouts.
pub fn one_guest_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Shell functions for guest scripts: `probes` counts the kprobes on `getppid` in
/// the kprobe list, `live` those enabled; `wait_until FUNCTION VALUE TENTHS` waits
/// for a value (tenths of a second at most) or fails the run.
/// Shell functions for a guest's `init`: `daemon ARGS` starts the daemon in the
/// background with its messages both on the console and in a log, and `ended`
/// counts the sessions it has ended. A guest waits for `ended` before it powers
/// off: the kprobes leave at `Stop`, while the client may still be reading maps
/// and saying goodbye over the port.
pub const DAEMON_HELPERS: &str = "touch /tmp/daemon.log
daemon() { probeport-linuxd \"$@\" 2>&1 | tee -a /tmp/daemon.log & }
ended() { grep -c 'session ended' /tmp/daemon.log; }
";

pub const SHELL_HELPERS: &str = "fail() { echo \"VERDICT: FAIL $*\"; poweroff -f; }
list=/sys/kernel/debug/kprobes/list
probes() { grep -c sys_getppid $list; }
live() { grep sys_getppid $list | grep -vc DISABLED; }
wait_until() { n=0; until [ \"$($1)\" = \"$2\" ]; do usleep 100000; n=$((n+1)); [ $n -lt $3 ] || { cat $list; fail \"$1 is $($1), not $2\"; }; done; }
";

/// Runs the script `text` (named `name`) through the client library on `port`,
/// as a user would with no kernel image, and ends it as Ctrl-C would once the
/// guest's console says `guest: workload` or gives a verdict (or after `within`).
/// Returns the session's summary and what it printed on its output and error
/// streams; panics with the console if the session failed.
pub fn run_script_until_workload(
    qemu: &qemu::Qemu,
    port: &mut userland_client::port::Port<std::os::unix::net::UnixStream>,
    (name, text): (&str, &str),
    options: &userland_client::session::SessionOptions,
    within: Duration,
) -> (userland_client::session::Summary, String, String) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use userland_client::session::{Output, OutputFormat, run_user_space};

    let stop = Arc::new(AtomicBool::new(false));
    let console_path = qemu.console_path().to_path_buf();
    let watcher = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let deadline = Instant::now() + within;
            while Instant::now() < deadline {
                let console = std::fs::read_to_string(&console_path).unwrap_or_default();
                if console.contains("guest: workload") || console.contains("VERDICT") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let mut sources = lang::source::Sources::new();
    sources.add_script(name, text);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut output = Output {
        out: &mut out,
        err: &mut err,
        format: OutputFormat::Text,
    };
    let summary = run_user_space(port, &sources, options, &mut output, &stop);
    watcher.join().expect("the watcher");
    let (out, err) = (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    );
    let summary = summary.unwrap_or_else(|error| {
        panic!(
            "session: {error}\nout:\n{out}\nerr:\n{err}\nconsole:\n{}",
            qemu.console()
        )
    });
    (summary, out, err)
}
