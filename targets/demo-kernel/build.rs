//! Link settings for the bare-metal build of the demo kernel.
//!
//! # Design
//!
//! Cargo only reads `.cargo/config.toml` from the directory it is started in and its
//! parents, so a per-crate config file would be ignored when the kernel is built from
//! the workspace root. Everything the link needs is therefore passed from here, and
//! only when the target is bare metal (`target_os = "none"`): on the host the crate is
//! a stub and links normally.
//!
//! - `-T kernel.ld`: the linker script (load address 1 MiB, PVH note, segments).
//! - `--no-pie`: `x86_64-unknown-none` links static position-independent executables
//!   by default; QEMU's PVH loader wants a plain `ET_EXEC` loaded at its link address,
//!   and the 32-bit boot code uses absolute addresses. The Rust code is compiled
//!   with `-C relocation-model=static` (the workspace's `.cargo/config.toml`, with
//!   `-C force-frame-pointers=yes` for the probe stub's stack traces): direct calls
//!   instead of calls through the GOT, which matter on the probe hit path.
//! - `--build-id=sha1`: a GNU build-id note, so the client can match debuginfo to the
//!   running kernel (the linker script keeps it in memory too).

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let linker_script = manifest_dir.join("kernel.ld");
    println!("cargo:rerun-if-changed={}", linker_script.display());
    println!("cargo:rerun-if-changed=build.rs");

    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-T{}", linker_script.display());
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=--build-id=sha1");
}
