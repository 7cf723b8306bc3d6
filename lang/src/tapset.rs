//! Tapsets: library files of script functions and probe aliases.
//!
//! A tapset is a `.probe` file holding only `function` and `probe alias`
//! definitions. The compiler reads every tapset on the search path (in directory
//! order, files sorted by name) and the script may use any of their definitions;
//! a definition the script does not use costs nothing, because functions are
//! inlined and aliases expanded only where used.
//!
//! [`BUILTIN`] holds the tapsets shipped with the crate for the demo kernel (and
//! the kernels that share its conventions), [`LINUX`] those for Linux through the
//! adapter, so a client finds them without an installed search path. Both define
//! `syscall.enter` and `syscall_name`, each for its kernel, so a compilation takes
//! the tapsets of one target: [`Builtin::for_kernel`] chooses by the kernel name
//! the handshake gives.

use std::io;
use std::path::{Path, PathBuf};

use crate::source::{FileId, Sources};

/// Tapsets built into the crate: file name and text.
pub const BUILTIN: &[(&str, &str)] = &[(
    "<builtin>/demo_kernel.probe",
    include_str!("../tapsets/demo_kernel.probe"),
)];

/// Tapsets built into the crate for Linux (the adapter's tracepoint markers).
pub const LINUX: &[(&str, &str)] = &[(
    "<builtin>/linux.probe",
    include_str!("../tapsets/linux.probe"),
)];

/// Which built-in tapsets a compilation takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    /// [`BUILTIN`]: the demo kernel's (also what GNU Mach is compiled with).
    DemoKernel,
    /// [`LINUX`].
    Linux,
}

impl Builtin {
    /// The tapsets for a kernel named `name` in the handshake (`KernelIdentity`):
    /// Linux's for `Linux …` (the adapter says `Linux <release>`), else the demo
    /// kernel's.
    pub fn for_kernel(name: &str) -> Builtin {
        if name == "Linux" || name.starts_with("Linux ") {
            Builtin::Linux
        } else {
            Builtin::DemoKernel
        }
    }

    /// Its files: name and text.
    pub fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Builtin::DemoKernel => BUILTIN,
            Builtin::Linux => LINUX,
        }
    }
}

/// Adds the built-in tapsets of the demo kernel to `sources`.
pub fn add_builtin(sources: &mut Sources) -> Vec<FileId> {
    add_builtin_for(sources, Builtin::DemoKernel)
}

/// Adds the built-in tapsets of `target` to `sources`.
pub fn add_builtin_for(sources: &mut Sources, target: Builtin) -> Vec<FileId> {
    target
        .files()
        .iter()
        .map(|(name, text)| sources.add_tapset(*name, *text))
        .collect()
}

/// Adds every `*.probe` file of each directory of `search_path` to `sources`,
/// directories in order and files sorted by name. A directory that does not exist
/// is skipped; one that cannot be read is an error.
pub fn add_search_path(sources: &mut Sources, search_path: &[PathBuf]) -> io::Result<Vec<FileId>> {
    let mut added = Vec::new();
    for directory in search_path {
        if !directory.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(directory)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "probe")
            })
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            added.push(sources.add_tapset(display(&file), text));
        }
    }
    Ok(added)
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
