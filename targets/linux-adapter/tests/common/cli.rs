//! The `probeport` command as a user runs it against the daemon: the binary
//! built by Cargo (once per test binary), its map output parsed, and a relay that
//! gives a guest's COM2 a socket path for `--port unix:PATH`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// The workspace's `examples/` directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The `probeport` binary of `userland-client`, built with Cargo into this test's
/// target directory and profile (a dependency's binaries are not built for
/// another package's tests).
pub fn probeport() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        // This test runs as TARGET/PROFILE/deps/NAME-HASH.
        let executable = std::env::current_exe().expect("the test's path");
        let profile_directory = executable
            .parent()
            .and_then(Path::parent)
            .expect("the test binary is in TARGET/PROFILE/deps");
        let target = profile_directory.parent().expect("the target directory");
        let profile = profile_directory
            .file_name()
            .and_then(|name| name.to_str())
            .expect("a profile directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
            .env("CARGO_TARGET_DIR", target)
            .args(["build", "-q", "-p", "userland-client", "--bin", "probeport"])
            .stdin(Stdio::null());
        match profile {
            "debug" => {}
            "release" => {
                command.arg("--release");
            }
            other => {
                command.args(["--profile", other]);
            }
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "building the probeport binary failed");
        let binary = profile_directory.join("probeport");
        assert!(binary.is_file(), "{} was not built", binary.display());
        binary
    })
}

/// A running `probeport run` with its output lines arriving on a channel.
pub struct Run {
    pub child: Child,
    pub lines: Receiver<String>,
    pub stderr: std::thread::JoinHandle<String>,
    pub started: Instant,
}

impl Run {
    /// `probeport run --port PORT SCRIPT`.
    pub fn start(port: &str, script: &Path) -> Run {
        Run::with_args(&[
            "run".as_ref(),
            "--port".as_ref(),
            port.as_ref(),
            script.as_os_str(),
        ])
    }

    /// `probeport ARGS...`.
    pub fn with_args(args: &[&std::ffi::OsStr]) -> Run {
        let mut child = Command::new(probeport())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("probeport starts");
        let (send, lines) = channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        Run {
            child,
            lines,
            stderr,
            started: Instant::now(),
        }
    }

    /// Waits for an output line containing `text`; returns the lines so far.
    pub fn wait_line(&mut self, text: &str, within: Duration, seen: &mut Vec<String>) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "probeport printed no {text:?} line; it printed:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    }

    /// Stops the run as Ctrl-C does (it still prints its maps).
    pub fn interrupt(&self) {
        // SAFETY: signalling our own child, which has not been waited for.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
    }

    /// Waits for the run to end by itself (killing it after `within`): its exit
    /// status, every output line, stderr, and how long it ran.
    pub fn finish(mut self, within: Duration, mut seen: Vec<String>) -> Finished {
        let deadline = self.started + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "probeport did not end within {within:?}:\n{}",
                    seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            seen.push(line);
        }
        let stderr = self.stderr.join().unwrap_or_default();
        assert!(
            status.success(),
            "probeport failed ({status}):\n{stderr}\n{}",
            seen.join("\n")
        );
        Finished {
            output: seen,
            stderr,
            elapsed,
        }
    }
}

/// What a finished run printed.
pub struct Finished {
    pub output: Vec<String>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// The entries `@NAME[KEY]: VALUE` of map `name`, by key text.
    pub fn map(&self, name: &str) -> BTreeMap<String, u64> {
        let prefix = format!("@{name}[");
        let mut entries = BTreeMap::new();
        for line in &self.output {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((key, value)) = rest.rsplit_once("]: ") else {
                continue;
            };
            let value: u64 = value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("not a count: {line}"));
            entries.insert(key.to_string(), value);
        }
        entries
    }

    /// Everything it printed, for failure messages.
    pub fn text(&self) -> String {
        format!("{}\n--- stderr:\n{}", self.output.join("\n"), self.stderr)
    }
}

/// A copy of `binary` named `name` in `directory` (a process's `comm` is its
/// file name, at most 15 bytes).
pub fn named_copy(binary: &Path, directory: &Path, name: &str) -> PathBuf {
    let path = directory.join(name);
    std::fs::copy(binary, &path).expect("copy of the workload");
    path
}

/// Serves `stream` (a guest's COM2) on a Unix socket at `path`, to one client
/// after another: bytes from the guest go to the client connected at the time
/// (and are dropped between clients), bytes from a client go to the guest. The
/// serial daemon starts a fresh session at each client's `Hello`.
pub fn relay(stream: UnixStream, path: &Path) {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("relay socket");
    let current: std::sync::Arc<std::sync::Mutex<Option<UnixStream>>> = Default::default();
    let mut from_guest = stream.try_clone().expect("clone of the port");
    let sink = std::sync::Arc::clone(&current);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        loop {
            match from_guest.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    let mut client = sink
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(stream) = client.as_mut()
                        && stream.write_all(&buffer[..read]).is_err()
                    {
                        *client = None;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else {
                break;
            };
            *current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(client.try_clone().expect("clone of the client"));
            let mut to_guest = stream.try_clone().expect("clone of the port");
            let mut buffer = [0u8; 4096];
            loop {
                match client.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => {
                        if to_guest.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                }
            }
            *current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
    });
}
