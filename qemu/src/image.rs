//! Building the demo kernel image.
//!
//! # Design
//!
//! The demo kernel is a member of this workspace that only builds for
//! `x86_64-unknown-none`. The harness runs the same cargo that runs it (the `CARGO`
//! environment variable, else `cargo` on `PATH`) from the workspace root, so
//! `rust-toolchain.toml` applies:
//!
//! ```text
//! cargo build -p demo-kernel --target x86_64-unknown-none --profile kernel
//! ```
//!
//! Release, so the code the client resolves is optimised like a real kernel's, with
//! full DWARF (`debug = 2`) for the kernel crate so parameters and locals can be
//! resolved. The probe stub's code that never runs in probe context (the x86
//! decoder, used when arming; the protocol's messages, framing and verifier, used
//! when serving the port) is optimised for size, as a kernel embedding the stub
//! would: it keeps the stub's footprint down (about 18 KiB less) and costs nothing
//! on the probe hit path. Before building, the harness checks with rustup that the target is
//! installed and adds it if not; a build that still fails for lack of `core` is
//! reported as [`Error::TargetMissing`].
//!
//! A successful build runs once per process; later calls return the same path.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

use crate::Error;

/// The Rust target every kernel image is built for.
pub const BARE_METAL_TARGET: &str = "x86_64-unknown-none";
/// The Cargo profile kernel images are built with (`Cargo.toml`: size-optimised,
/// whole-program LTO, full DWARF for the demo kernel).
pub const KERNEL_PROFILE: &str = "kernel";
/// Package (and binary) name of the demo kernel.
pub const DEMO_KERNEL_PACKAGE: &str = "demo-kernel";

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Builds the demo kernel (profile `kernel`, full DWARF) and returns the ELF's path.
pub fn build_demo_kernel() -> Result<PathBuf, Error> {
    // Held during the build, so concurrent callers wait for one build; only success is
    // remembered.
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(path) = built.as_ref() {
        return Ok(path.clone());
    }
    let path = build(&workspace_root())?;
    *built = Some(path.clone());
    Ok(path)
}

fn cargo() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

fn build(root: &Path) -> Result<PathBuf, Error> {
    ensure_target(root)?;
    let arguments = [
        "build",
        "-p",
        DEMO_KERNEL_PACKAGE,
        "--target",
        BARE_METAL_TARGET,
        "--profile",
        KERNEL_PROFILE,
    ];
    let command_line = format!("cargo {}", arguments.join(" "));
    let output = Command::new(cargo())
        .args(arguments)
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| Error::io(format!("running `{command_line}`"), error))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        if stderr.contains("can't find crate for `core`")
            || stderr.contains("target may not be installed")
        {
            return Err(Error::TargetMissing {
                detail: format!(
                    "`{command_line}` cannot find `core` for {BARE_METAL_TARGET}; \
                     run `rustup target add {BARE_METAL_TARGET}`:\n{stderr}"
                ),
            });
        }
        return Err(Error::Build {
            command: command_line,
            stderr,
        });
    }
    let target_directory =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let image = target_directory
        .join(BARE_METAL_TARGET)
        .join(KERNEL_PROFILE)
        .join(DEMO_KERNEL_PACKAGE);
    if !image.is_file() {
        return Err(Error::Build {
            command: command_line,
            stderr: format!("the build succeeded but {} does not exist", image.display()),
        });
    }
    Ok(image)
}

/// Installs the bare-metal target with rustup when rustup manages the toolchain and
/// the target is missing. Without rustup this does nothing (the build then says).
fn ensure_target(root: &Path) -> Result<(), Error> {
    let Ok(listing) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
    else {
        return Ok(());
    };
    if !listing.status.success()
        || String::from_utf8_lossy(&listing.stdout)
            .lines()
            .any(|line| line.trim() == BARE_METAL_TARGET)
    {
        return Ok(());
    }
    eprintln!(
        "qemu harness: the Rust target {BARE_METAL_TARGET} is missing; running `rustup target add {BARE_METAL_TARGET}`"
    );
    let added = Command::new("rustup")
        .args(["target", "add", BARE_METAL_TARGET])
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| Error::io("running rustup target add", error))?;
    if added.status.success() {
        Ok(())
    } else {
        Err(Error::TargetMissing {
            detail: format!(
                "`rustup target add {BARE_METAL_TARGET}` failed:\n{}",
                String::from_utf8_lossy(&added.stderr)
            ),
        })
    }
}
