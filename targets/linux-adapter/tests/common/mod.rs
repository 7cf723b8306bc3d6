//! What the adapter's host tests share: the traced C program built with gcc, the
//! daemon started on a temporary socket, and a client on it.
#![allow(dead_code, unreachable_pub)]

pub mod cli;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use probe_port_protocol::asm::assemble;
use probe_port_protocol::isa::encode;
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};
use probe_port_protocol::message::{ReplyBody, RequestBody, Site};
use userland_client::port::{Port, Reply};

/// Fails the test (never skips) unless it runs as root, which uprobes and BPF need.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the Linux adapter's tests load BPF programs and uprobes: run them as root"
    );
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("probeport-linux-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    dir
}

/// This test's own copy of the traced program. Uprobes belong to a file (an
/// inode) and fire in every process running it, so tests running in parallel each
/// trace their own copy.
pub fn traced() -> PathBuf {
    thread_local! {
        static COPY: std::cell::OnceCell<PathBuf> = const { std::cell::OnceCell::new() };
    }
    COPY.with(|copy| {
        copy.get_or_init(|| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("main").replace("::", "-");
            let path = scratch_dir().join(format!("traced-{name}"));
            std::fs::copy(traced_build(), &path).expect("copy of the traced program");
            path
        })
        .clone()
    })
}

/// Installs gcc (and the C library's headers and static archive) with apt-get when
/// it is missing; panics with the reason when that fails.
pub fn ensure_gcc() {
    if Command::new("gcc").arg("--version").output().is_err() {
        let status = Command::new("apt-get")
            .args(["install", "-y", "gcc", "libc6-dev"])
            .status()
            .expect("gcc is missing and apt-get cannot run");
        assert!(
            status.success(),
            "gcc is missing and apt-get could not install it"
        );
    }
}

/// The traced program (`tests/fixtures/traced.c`), built once per test binary
/// with gcc (installed with apt-get when missing).
fn traced_build() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        ensure_gcc();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/traced.c");
        let output = scratch_dir().join("traced");
        let status = Command::new("gcc")
            .args(["-O1", "-g", "-o"])
            .arg(&output)
            .arg(&source)
            .status()
            .expect("gcc runs");
        assert!(status.success(), "gcc failed on {}", source.display());
        output
    })
}

/// Runs the traced program with `calls` calls; returns its output line.
pub fn run_traced(calls: u64) -> String {
    let output = Command::new(traced())
        .arg(calls.to_string())
        .output()
        .expect("the traced program runs");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The daemon on a temporary socket; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        require_root();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let number = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = scratch_dir().join(format!("port-{number}.sock"));
        let child = Command::new(env!("CARGO_BIN_EXE_probeport-linuxd"))
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("the daemon starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        // That probe connection is one session already; let the daemon see it end.
        std::thread::sleep(Duration::from_millis(100));
        Daemon { child, socket }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client with the handshake done.
    pub fn client(&self) -> Port<UnixStream> {
        let stream = UnixStream::connect(&self.socket).expect("connect");
        let mut port = Port::new(stream);
        port.set_timeout(Duration::from_secs(20));
        let reply = port.hello("linux-adapter tests").expect("hello");
        assert!(
            matches!(reply.ok(), Ok(ReplyBody::Hello(_))),
            "{:?}",
            reply.get()
        );
        port
    }

    /// The daemon's descriptors that are BPF programs, BPF maps or perf events.
    pub fn kernel_object_fds(&self) -> Vec<String> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return found;
        };
        for entry in entries.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path()) {
                let target = target.display().to_string();
                if target.contains("bpf-prog")
                    || target.contains("bpf-map")
                    || target.contains("perf_event")
                {
                    found.push(target);
                }
            }
        }
        found
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Assembles a program to wire bytes.
pub fn program(text: &str) -> Vec<u8> {
    encode(&assemble(text).unwrap_or_else(|error| panic!("bad test program: {error}")))
}

pub fn aggregate_map(map: u16, kind: AggregateKind, key_size: u16) -> MapSpec {
    MapSpec {
        map: MapId(map),
        kind: MapKind::Aggregate(kind),
        key_size,
        value_size: kind.value_size().expect("valid"),
        max_entries: 64,
    }
}

pub fn define(port: &mut Port<UnixStream>, spec: MapSpec) {
    let reply = port.request(RequestBody::DefineMap(spec)).expect("define");
    reply.ok().expect("map defined");
}

/// The path of this test's traced program and the file offset of its function `name`.
pub fn function_site(name: &str) -> (String, u64) {
    let path = traced().display().to_string();
    let offset = userland_client::uprobe::function_offset(&traced(), name).expect("symbol");
    (path, offset)
}

pub fn arm(port: &mut Port<UnixStream>, site: Site<'_>, program: &[u8]) -> Reply {
    port.request(RequestBody::Arm(probe_port_protocol::message::ArmRequest {
        site,
        program,
    }))
    .expect("arm request answered")
}

/// Every entry of a map: key bytes and the per-CPU values as u64 words.
pub fn read_map(
    port: &mut Port<UnixStream>,
    spec: &MapSpec,
    cpus: usize,
) -> Vec<(Vec<u8>, Vec<Vec<u64>>)> {
    let mut entries = Vec::new();
    let mut cursor = 0;
    loop {
        let reply = port
            .request(RequestBody::ReadMap {
                map: spec.map,
                cursor,
            })
            .expect("read map");
        let Ok(ReplyBody::MapPage(page)) = reply.ok() else {
            panic!("not a map page: {:?}", reply.get());
        };
        let key_size = usize::from(spec.key_size);
        let value_size = usize::from(spec.value_size);
        let copies = if spec.is_aggregate() { cpus } else { 1 };
        let entry_size = key_size + copies * value_size;
        assert_eq!(page.entries.len(), page.count as usize * entry_size);
        for entry in page.entries.chunks_exact(entry_size) {
            let key = entry[..key_size].to_vec();
            let values = entry[key_size..]
                .chunks_exact(value_size)
                .map(|value| {
                    value
                        .chunks_exact(8)
                        .map(|word| u64::from_le_bytes(word.try_into().unwrap()))
                        .collect()
                })
                .collect();
            entries.push((key, values));
        }
        match page.next_cursor {
            Some(next) => cursor = next,
            None => return entries,
        }
    }
}
