//! Linux guests: Debian's own kernel booted under QEMU with a small initramfs, for
//! what the build machines' kernel lacks (kprobes) and for the Linux adapter's
//! serial-port path.
//!
//! # Design
//!
//! [`DebianKernel::get`] fetches Debian's `linux-image-amd64` (the versioned package
//! it depends on) and `busybox-static` with `apt-get download` and unpacks them with
//! `dpkg-deb -x` into a cache under the Cargo target directory
//! (`target/linux-guest/`), once per machine: nothing is installed on the host. A
//! fresh machine without package lists gets `apt-get update` first. The kernel has
//! kprobes, BPF, BTF and the 8250 serial driver built in, so no module is needed.
//!
//! [`Initramfs`] writes a `newc` cpio archive (uncompressed, which the kernel
//! accepts) from files, directories and symbolic links; [`DebianKernel::initramfs`]
//! starts one with busybox and an `/init` script the caller writes. The guest's
//! COM1 is the console (`console=ttyS0`) and its COM2 (`/dev/ttyS1`, I/O port
//! 0x2f8, IRQ 3) is the probe-port socket of the harness, as for the demo kernel.
//! A script ends its run with [`PASS_AND_EXIT`] (or prints `VERDICT: FAIL ...` and
//! powers off): the verdict line, then 0x10 written to `isa-debug-exit` through
//! `/dev/port`, which makes QEMU exit with status 33.
//!
//! # Invariants
//!
//! - The cache holds only what `dpkg-deb -x` unpacked; a partial unpack (an
//!   interrupted run) is never used: each package unpacks into a temporary
//!   directory renamed into place when complete.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::install::{apt_get, running_as_root};
use crate::{Config, Error, workspace_root};

/// Debian's metapackage for the current kernel.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
/// Debian's statically linked busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The end of a guest script that passed: the verdict line, then 0x10 to
/// `isa-debug-exit` (port 0xf4 = 244) through `/dev/port`.
///
/// Between the two it waits for the console's UART to have sent the line: `echo`
/// returns once the kernel has the bytes, and QEMU exits at once on the port
/// write, so a line still in the serial driver's buffer would be lost. It waits
/// until the transmit count of `ttyS0` in `/proc/tty/driver/serial` stops
/// changing (at most a second).
pub const PASS_AND_EXIT: &str = "echo 'VERDICT: PASS'
sent=; for poll in 1 2 3 4 5 6 7 8 9 10; do now=$(grep '^0:' /proc/tty/driver/serial); \
[ \"$now\" = \"$sent\" ] && break; sent=$now; usleep 100000; done
printf '\\020' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null";

/// The first lines of every guest `/init`: busybox's applets, `/proc`, `/sys`,
/// `/dev`, tracefs and debugfs mounted.
pub const INIT_PROLOGUE: &str = "#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
";

/// Debian's kernel and busybox, unpacked in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebianKernel {
    /// The versioned kernel package (`linux-image-6.1.0-…-amd64`).
    pub package: String,
    /// Its compressed kernel image (`/boot/vmlinuz-…`).
    pub vmlinuz: PathBuf,
    /// Its `System.map` (addresses without KASLR).
    pub system_map: PathBuf,
    /// The static busybox binary.
    pub busybox: PathBuf,
}

impl DebianKernel {
    /// Fetches and unpacks the kernel and busybox (once per machine; later calls
    /// read the cache).
    pub fn get() -> Result<DebianKernel, Error> {
        static FOUND: Mutex<Option<DebianKernel>> = Mutex::new(None);
        let mut found = FOUND.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kernel) = found.as_ref() {
            return Ok(kernel.clone());
        }
        let kernel = fetch()?;
        *found = Some(kernel.clone());
        Ok(kernel)
    }

    /// An initramfs holding busybox (`/bin/busybox`), the usual mount points and
    /// `init` as `/init` (start it with [`INIT_PROLOGUE`]).
    pub fn initramfs(&self, init: &str) -> Result<Initramfs, Error> {
        let busybox = fs::read(&self.busybox)
            .map_err(|error| Error::io(format!("reading {}", self.busybox.display()), error))?;
        let mut archive = Initramfs::new();
        for directory in ["bin", "dev", "proc", "sys", "tmp", "run"] {
            archive.directory(directory);
        }
        archive.file("bin/busybox", &busybox, 0o755);
        archive.file("init", init.as_bytes(), 0o755);
        Ok(archive)
    }

    /// A configuration booting this kernel with `initrd`: 2 CPUs, 512 MiB, console on
    /// COM1, probe port on COM2, 120 s timeout; `append` goes on the command line.
    pub fn config(&self, initrd: &Path, append: &str) -> Config {
        let mut config = Config::new(&self.vmlinuz)
            .cpus(2)
            .timeout(Duration::from_secs(120))
            .append(format!("console=ttyS0 quiet panic=-1 {append}"));
        config.memory_mib = 512;
        config.initrd = Some(initrd.to_path_buf());
        config
    }
}

fn fetch() -> Result<DebianKernel, Error> {
    let cache = cache_directory();
    fs::create_dir_all(&cache)
        .map_err(|error| Error::io(format!("creating {}", cache.display()), error))?;
    let package = kernel_package()?;
    let kernel_root = unpacked(&cache, &package)?;
    let busybox_root = unpacked(&cache, BUSYBOX_PACKAGE)?;
    let boot = kernel_root.join("boot");
    let find = |prefix: &str| -> Result<PathBuf, Error> {
        let entries = fs::read_dir(&boot)
            .map_err(|error| Error::io(format!("listing {}", boot.display()), error))?;
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(prefix))
            })
            .ok_or_else(|| Error::GuestImage {
                detail: format!("{package} has no {prefix}* in {}", boot.display()),
            })
    };
    let busybox = busybox_root.join("bin/busybox");
    if !busybox.is_file() {
        return Err(Error::GuestImage {
            detail: format!("{BUSYBOX_PACKAGE} has no {}", busybox.display()),
        });
    }
    Ok(DebianKernel {
        vmlinuz: find("vmlinuz-")?,
        system_map: find("System.map-")?,
        package,
        busybox,
    })
}

/// `target/linux-guest` (or under `CARGO_TARGET_DIR`).
fn cache_directory() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
        .join("linux-guest")
}

/// The versioned kernel package the metapackage depends on, e.g.
/// `linux-image-6.1.0-56-amd64`.
fn kernel_package() -> Result<String, Error> {
    let depends = |transcript: &mut String| -> Option<String> {
        let output = Command::new("apt-cache")
            .args(["depends", KERNEL_METAPACKAGE])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        transcript.push_str(&text);
        transcript.push_str(&String::from_utf8_lossy(&output.stderr));
        text.lines()
            .filter_map(|line| line.trim().strip_prefix("Depends: "))
            .map(str::trim)
            .find(|name| name.starts_with("linux-image-") && !name.starts_with('<'))
            .map(str::to_owned)
    };
    let mut transcript = String::new();
    if let Some(package) = depends(&mut transcript) {
        return Ok(package);
    }
    update_package_lists(&mut transcript)?;
    depends(&mut transcript).ok_or_else(|| Error::GuestImage {
        detail: format!("apt-cache cannot resolve {KERNEL_METAPACKAGE}:\n{transcript}"),
    })
}

fn update_package_lists(transcript: &mut String) -> Result<(), Error> {
    if !running_as_root() {
        return Err(Error::GuestImage {
            detail: format!(
                "no package lists for {KERNEL_METAPACKAGE} and not root: run `apt-get update` \
                 as root\n{transcript}"
            ),
        });
    }
    eprintln!("qemu harness: running apt-get update to find {KERNEL_METAPACKAGE}");
    apt_get(&["update"], transcript);
    Ok(())
}

/// `package` unpacked under `cache/package`, downloading it first if needed.
fn unpacked(cache: &Path, package: &str) -> Result<PathBuf, Error> {
    let root = cache.join(package);
    if root.is_dir() {
        return Ok(root);
    }
    let work = cache.join(format!(".{package}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)
        .map_err(|error| Error::io(format!("creating {}", work.display()), error))?;
    let mut transcript = String::new();
    let download = |transcript: &mut String| {
        Command::new("apt-get")
            .args(["download", package])
            .current_dir(&work)
            .stdin(Stdio::null())
            .output()
            .map(|output| {
                transcript.push_str(&String::from_utf8_lossy(&output.stdout));
                transcript.push_str(&String::from_utf8_lossy(&output.stderr));
                output.status.success()
            })
            .unwrap_or(false)
    };
    eprintln!(
        "qemu harness: downloading {package} into {}",
        cache.display()
    );
    if !download(&mut transcript) {
        update_package_lists(&mut transcript)?;
        if !download(&mut transcript) {
            return Err(Error::GuestImage {
                detail: format!("apt-get download {package} failed:\n{transcript}"),
            });
        }
    }
    let deb = fs::read_dir(&work)
        .map_err(|error| Error::io(format!("listing {}", work.display()), error))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .ok_or_else(|| Error::GuestImage {
            detail: format!("apt-get download {package} left no .deb:\n{transcript}"),
        })?;
    let tree = work.join("tree");
    let output = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&tree)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| Error::io("running dpkg-deb", error))?;
    if !output.status.success() {
        return Err(Error::GuestImage {
            detail: format!(
                "dpkg-deb -x {} failed: {}",
                deb.display(),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    fs::rename(&tree, &root).map_err(|error| {
        Error::io(
            format!("moving {} to {}", tree.display(), root.display()),
            error,
        )
    })?;
    let _ = fs::remove_dir_all(&work);
    Ok(root)
}

/// A `newc` cpio archive for the kernel's initramfs, built in memory.
#[derive(Clone, Debug, Default)]
pub struct Initramfs {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Initramfs {
        Initramfs {
            bytes: Vec::new(),
            next_inode: 1,
        }
    }

    /// Adds a directory (parents are not implied: add them first).
    pub fn directory(&mut self, path: &str) -> &mut Initramfs {
        self.entry(path, 0o040_755, &[])
    }

    /// Adds a regular file with permission bits `mode` (e.g. `0o755`).
    pub fn file(&mut self, path: &str, contents: &[u8], mode: u32) -> &mut Initramfs {
        self.entry(path, 0o100_000 | (mode & 0o7777), contents)
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Initramfs {
        self.entry(path, 0o120_777, target.as_bytes())
    }

    /// The finished archive (with its trailer).
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }

    /// Writes the finished archive to `path`.
    pub fn write(self, path: &Path) -> Result<(), Error> {
        fs::write(path, self.finish())
            .map_err(|error| Error::io(format!("writing {}", path.display()), error))
    }

    fn entry(&mut self, path: &str, mode: u32, contents: &[u8]) -> &mut Initramfs {
        let name = path.trim_start_matches('/');
        let inode = self.next_inode;
        self.next_inode += 1;
        let links = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        // magic, then 13 fields of 8 hex digits: inode, mode, uid, gid, nlink, mtime,
        // filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check.
        let header = format!(
            "070701{inode:08x}{mode:08x}{:08x}{:08x}{links:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            0,
            contents.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(contents);
        self.pad();
        self
    }

    /// Pads to a multiple of four bytes, as `newc` wants after names and data.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_padded_and_end_with_the_trailer() {
        let mut archive = Initramfs::new();
        archive.directory("bin").file("bin/x", b"hello", 0o755);
        archive.symlink("bin/sh", "busybox");
        let bytes = archive.finish();
        assert!(bytes.starts_with(b"070701"));
        // Header 110 bytes + "bin\0" = 114, padded to 116; no data.
        assert_eq!(&bytes[116..122], b"070701");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("bin/sh\0"));
        // 110 + 11 name bytes, padded to 124: the trailer's name and 3 zero bytes.
        assert!(bytes.ends_with(b"TRAILER!!!\0\0\0\0"));
        assert_eq!(bytes.len() % 4, 0);
        // The file's mode and size fields: regular file 0755, five bytes.
        let file = text.find("bin/x\0").unwrap() - 110;
        assert_eq!(&text[file + 14..file + 22], "000081ed");
        assert_eq!(&text[file + 54..file + 62], "00000005");
    }
}
