//! Finding QEMU, and installing it when it is missing.
//!
//! # Design
//!
//! The harness must never skip a test because QEMU is absent: on Debian, as root, it
//! installs `qemu-system-x86` with apt-get (running `apt-get update` first if the
//! install fails, since a fresh machine may have no package lists); otherwise it fails
//! with a message that says what to install. The answer is computed once per process,
//! so parallel tests do not race apt-get.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::Error;

/// The QEMU binary the harness runs.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// The Debian package that provides it.
const QEMU_PACKAGE: &str = "qemu-system-x86";

/// The path of `qemu-system-x86_64`, installing QEMU first if it is missing and the
/// process runs as root.
pub fn ensure_qemu() -> Result<PathBuf, Error> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(find_or_install)
        .clone()
        .map_err(|detail| Error::QemuMissing { detail })
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Some(path) = find_in_path(QEMU_BINARY) {
        return Ok(path);
    }
    if !running_as_root() {
        return Err(format!(
            "{QEMU_BINARY} is not on PATH and the harness is not root, so it cannot install it: \
             run `apt-get install {QEMU_PACKAGE}` as root"
        ));
    }
    eprintln!("qemu harness: {QEMU_BINARY} is missing; installing {QEMU_PACKAGE} with apt-get");
    let mut transcript = String::new();
    if !apt_get(
        &["install", "-y", "--no-install-recommends", QEMU_PACKAGE],
        &mut transcript,
    ) {
        eprintln!("qemu harness: apt-get install failed; running apt-get update and retrying");
        apt_get(&["update"], &mut transcript);
        if !apt_get(
            &["install", "-y", "--no-install-recommends", QEMU_PACKAGE],
            &mut transcript,
        ) {
            return Err(format!(
                "apt-get could not install {QEMU_PACKAGE}:\n{transcript}"
            ));
        }
    }
    find_in_path(QEMU_BINARY).ok_or_else(|| {
        format!("apt-get installed {QEMU_PACKAGE} but {QEMU_BINARY} is still not on PATH")
    })
}

/// Runs apt-get non-interactively; appends its output to `transcript`.
pub(crate) fn apt_get(arguments: &[&str], transcript: &mut String) -> bool {
    let result = Command::new("apt-get")
        .args(arguments)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output();
    match result {
        Ok(output) => {
            transcript.push_str(&format!("$ apt-get {}\n", arguments.join(" ")));
            transcript.push_str(&String::from_utf8_lossy(&output.stdout));
            transcript.push_str(&String::from_utf8_lossy(&output.stderr));
            output.status.success()
        }
        Err(error) => {
            transcript.push_str(&format!(
                "$ apt-get {}: cannot run: {error}\n",
                arguments.join(" ")
            ));
            false
        }
    }
}

/// The first executable file called `name` in `PATH`.
pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|directory| directory.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether the effective user is root (from `/proc/self/status`, else `id -u`).
pub(crate) fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|line| line.starts_with("Uid:"))
    {
        // Fields: real, effective, saved, filesystem.
        return line.split_whitespace().nth(2) == Some("0");
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}
