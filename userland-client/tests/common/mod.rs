//! Fixtures shared by the resolver and command-line tests: the demo kernel and the
//! GNU Mach debug image (provenance in `tests/fixtures/README.md`), and `objdump` as
//! the independent witness of instruction bytes.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a part; `pub` items are shared between test modules"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use userland_client::debuginfo::Kernel;

pub mod fake_stub;

pub const GNUMACH_IMAGE: &str = "/boot/gnumach-1.8-486-dbg.gz";
const GNUMACH_PACKAGE: &str = "gnumach-image-1.8-486-dbg";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The demo kernel image, built (into a separate target directory, so that the build
/// never waits on the running `cargo test`'s lock) when missing.
pub fn demo_kernel_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let relative = "x86_64-unknown-none/release/demo-kernel";
        let default = workspace().join("target").join(relative);
        if default.exists() {
            return default;
        }
        let own_target = workspace().join("target/debuginfo-tests");
        let own = own_target.join(relative);
        if !own.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(workspace())
                .env("CARGO_TARGET_DIR", &own_target)
                .args([
                    "build",
                    "-p",
                    "demo-kernel",
                    "--target",
                    "x86_64-unknown-none",
                    "--release",
                ])
                .status()
                .expect("cannot run cargo to build the demo kernel");
            assert!(status.success(), "building the demo kernel failed");
        }
        own
    })
}

pub fn demo_kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let path = demo_kernel_path();
        Kernel::open(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    })
}

/// The GNU Mach debug image, installing its Debian package first when missing.
pub fn gnumach() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        if !Path::new(GNUMACH_IMAGE).exists() {
            let install = || {
                Command::new("apt-get")
                    .args(["install", "-y", GNUMACH_PACKAGE])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()
            };
            if !matches!(install(), Ok(status) if status.success()) {
                let _ = Command::new("apt-get").arg("update").status();
                let _ = install();
            }
            assert!(
                Path::new(GNUMACH_IMAGE).exists(),
                "{GNUMACH_IMAGE} is missing and `apt-get install -y {GNUMACH_PACKAGE}` failed"
            );
        }
        Kernel::open(GNUMACH_IMAGE).unwrap_or_else(|error| panic!("{GNUMACH_IMAGE}: {error}"))
    })
}

/// The GNU Mach image decompressed (objdump reads no gzip).
pub fn gnumach_elf() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        gnumach();
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gnumach-dbg.elf");
        if !path.exists() {
            let raw = std::fs::read(GNUMACH_IMAGE).unwrap();
            let mut elf = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(raw.as_slice()), &mut elf)
                .unwrap();
            let partial = path.with_extension("partial");
            std::fs::write(&partial, elf).unwrap();
            std::fs::rename(&partial, &path).unwrap();
        }
        path
    })
}

/// The instructions `objdump -d` shows from `start` (inclusive) to `stop`: address and
/// bytes of each.
pub fn objdump(image: &Path, start: u64, stop: u64) -> Vec<(u64, Vec<u8>)> {
    let output = Command::new("objdump")
        .args([
            "-d",
            "--insn-width=16",
            &format!("--start-address={start:#x}"),
            &format!("--stop-address={stop:#x}"),
        ])
        .arg(image)
        .output()
        .expect("objdump (binutils) is needed to cross-check instruction bytes");
    assert!(
        output.status.success(),
        "objdump failed on {}",
        image.display()
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let address = u64::from_str_radix(fields.next()?.trim().strip_suffix(':')?, 16).ok()?;
            let bytes = fields
                .next()?
                .split_whitespace()
                .map(|byte| u8::from_str_radix(byte, 16))
                .collect::<Result<Vec<u8>, _>>()
                .ok()?;
            Some((address, bytes))
        })
        .collect()
}

/// The bytes of the one instruction at `address`, as objdump decodes it.
pub fn objdump_instruction(image: &Path, address: u64) -> Vec<u8> {
    let listing = objdump(image, address, address + 16);
    let (found, bytes) = listing.first().expect("objdump shows an instruction");
    assert_eq!(*found, address);
    bytes.clone()
}
