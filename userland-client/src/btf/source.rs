//! Where a kernel's BTF comes from, and the build-id that says which kernel it is.
//!
//! # Design
//!
//! - The running kernel: `/sys/kernel/btf/vmlinux`, with the build-id from the
//!   kernel's own notes (`/sys/kernel/notes`, the note the Linux adapter puts in its
//!   `Hello`). The client uses it only when the stub's build-id is that one: a
//!   Unix socket may well lead to another kernel (a QEMU guest's serial line).
//! - A file ([`KernelBtf::open`]), recognised by its first bytes: raw BTF (no
//!   build-id; nothing can be checked), a vmlinux ELF (section `.BTF`, build-id
//!   from its GNU build-id note), or a compressed `vmlinuz` (an x86 bzImage: the
//!   setup header's `payload_offset`/`payload_length` locate the compressed
//!   vmlinux, decompressed by its own magic number — xz, which Debian's kernels
//!   use, with the x86 BCJ filter the kernel's build adds, or gzip — then read as
//!   an ELF).

use std::path::{Path, PathBuf};

use super::{Btf, BtfError};

/// Where the running kernel publishes its BTF.
pub const RUNNING_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Where the running kernel publishes its notes (the build-id among them).
pub const RUNNING_NOTES: &str = "/sys/kernel/notes";

/// What can go wrong getting a kernel's BTF.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The BTF is malformed.
    #[error("{path}: {source}")]
    Btf {
        /// Where it came from.
        path: PathBuf,
        /// What is wrong.
        source: BtfError,
    },
    /// The file is none of the forms read here, or lacks the BTF.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What it is or lacks.
        message: String,
    },
    /// The BTF is another kernel's than the one the stub runs.
    #[error(
        "the BTF from {path} is for the kernel with build-id {file}, but the kernel \
         the port leads to has build-id {running}: give the image that kernel was \
         booted from"
    )]
    BuildIdMismatch {
        /// Where the BTF came from.
        path: PathBuf,
        /// The file's build-id (hex).
        file: String,
        /// The stub's build-id (hex).
        running: String,
    },
}

/// A kernel's BTF, where it came from and the build-id of its kernel when known.
#[derive(Debug)]
pub struct KernelBtf {
    /// The types.
    pub btf: Btf,
    /// The file it was read from.
    pub path: PathBuf,
    /// The kernel's GNU build-id, when the source carries one (raw BTF does not).
    pub build_id: Option<Vec<u8>>,
}

impl KernelBtf {
    /// Reads BTF from a file: raw BTF, a vmlinux ELF or a bzImage `vmlinuz`.
    pub fn open(path: impl AsRef<Path>) -> Result<KernelBtf, SourceError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| SourceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        KernelBtf::from_bytes(path, &data)
    }

    /// [`KernelBtf::open`] on bytes already read; `path` names them in messages.
    pub fn from_bytes(path: &Path, data: &[u8]) -> Result<KernelBtf, SourceError> {
        let format = |message: String| SourceError::Format {
            path: path.to_path_buf(),
            message,
        };
        if data.starts_with(&[0x9f, 0xeb]) {
            return Ok(KernelBtf {
                btf: parse(path, data)?,
                path: path.to_path_buf(),
                build_id: None,
            });
        }
        if data.starts_with(b"\x7fELF") {
            return from_elf(path, data);
        }
        if data.get(0x202..0x206) == Some(b"HdrS") {
            let elf = bzimage_payload(data).map_err(format)?;
            return from_elf(path, &elf);
        }
        Err(format(
            "neither BTF, nor an ELF vmlinux, nor a bzImage vmlinuz".to_string(),
        ))
    }

    /// The running kernel's BTF and build-id.
    pub fn running() -> Result<KernelBtf, SourceError> {
        let path = Path::new(RUNNING_BTF);
        let data = std::fs::read(path).map_err(|source| SourceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(KernelBtf {
            btf: parse(path, &data)?,
            path: path.to_path_buf(),
            build_id: running_build_id()?,
        })
    }

    /// Refuses this BTF when it carries a build-id and `running` (the stub's, from
    /// `Hello`; empty when the stub announced none) differs from it.
    pub fn check_build_id(&self, running: &[u8]) -> Result<(), SourceError> {
        match &self.build_id {
            Some(own) if !running.is_empty() && own != running => {
                Err(SourceError::BuildIdMismatch {
                    path: self.path.clone(),
                    file: crate::debuginfo::hex(own),
                    running: crate::debuginfo::hex(running),
                })
            }
            _ => Ok(()),
        }
    }
}

fn parse(path: &Path, data: &[u8]) -> Result<Btf, SourceError> {
    Btf::parse(data).map_err(|source| SourceError::Btf {
        path: path.to_path_buf(),
        source,
    })
}

/// The running kernel's build-id from `/sys/kernel/notes` (`None` if it has none).
pub fn running_build_id() -> Result<Option<Vec<u8>>, SourceError> {
    let notes = std::fs::read(RUNNING_NOTES).map_err(|source| SourceError::Read {
        path: PathBuf::from(RUNNING_NOTES),
        source,
    })?;
    Ok(gnu_build_id(&notes))
}

/// The GNU build-id (`NT_GNU_BUILD_ID`, owner `GNU`) among ELF notes.
pub fn gnu_build_id(mut notes: &[u8]) -> Option<Vec<u8>> {
    let word = |bytes: &[u8], at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    while let (Some(name_size), Some(desc_size), Some(kind)) =
        (word(notes, 0), word(notes, 4), word(notes, 8))
    {
        let desc_start = 12usize.checked_add(name_size.checked_next_multiple_of(4)?)?;
        let next = desc_start.checked_add(desc_size.checked_next_multiple_of(4)?)?;
        let name = notes.get(12..12 + name_size)?;
        let desc = notes.get(desc_start..desc_start + desc_size)?;
        if kind == 3 && name == b"GNU\0" {
            return Some(desc.to_vec());
        }
        notes = notes.get(next..)?;
    }
    None
}

fn from_elf(path: &Path, data: &[u8]) -> Result<KernelBtf, SourceError> {
    use object::{Object, ObjectSection};
    let format = |message: String| SourceError::Format {
        path: path.to_path_buf(),
        message,
    };
    let file = object::File::parse(data)
        .map_err(|error| format(format!("not an ELF file object can read: {error}")))?;
    let section = file.section_by_name(".BTF").ok_or_else(|| {
        format(
            "the ELF file has no .BTF section (a kernel built without \
             CONFIG_DEBUG_INFO_BTF)"
                .to_string(),
        )
    })?;
    let bytes = section
        .data()
        .map_err(|error| format(format!("cannot read its .BTF section: {error}")))?;
    Ok(KernelBtf {
        btf: parse(path, bytes)?,
        path: path.to_path_buf(),
        build_id: file.build_id().ok().flatten().map(<[u8]>::to_vec),
    })
}

/// The vmlinux ELF inside a bzImage: the setup header's `setup_sects` (byte
/// 0x1f1; 0 means 4) says where the protected-mode part starts (after
/// `(setup_sects + 1) * 512` bytes), and `payload_offset`/`payload_length`
/// (0x248, 0x24c; boot protocol 2.08 and later) locate the compressed kernel in it.
fn bzimage_payload(data: &[u8]) -> Result<Vec<u8>, String> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    let version = data
        .get(0x206..0x208)
        .map(|bytes| u16::from_le_bytes([bytes[0], bytes[1]]))
        .unwrap_or(0);
    if version < 0x208 {
        return Err(format!(
            "a bzImage of boot protocol {}.{:02}, before 2.08, has no payload fields",
            version >> 8,
            version & 0xff
        ));
    }
    let setup_sects = match data.get(0x1f1) {
        Some(0) | None => 4,
        Some(count) => usize::from(*count),
    };
    let (Some(offset), Some(length)) = (word(0x248), word(0x24c)) else {
        return Err("the bzImage's setup header is truncated".to_string());
    };
    let start = (setup_sects + 1) * 512 + offset as usize;
    let payload = data
        .get(start..start + length as usize)
        .ok_or_else(|| "the bzImage's payload lies past its end".to_string())?;
    decompress(payload)
}

/// Decompresses a bzImage payload by its magic number.
fn decompress(payload: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        // The kernel's build appends the uncompressed size (4 bytes) after the xz
        // stream, inside payload_length: the reader stops at the stream's end.
        let mut reader = lzma_rust2::XzReader::new(payload, false);
        reader
            .read_to_end(&mut out)
            .map_err(|error| format!("cannot decompress its xz payload: {error}"))?;
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(payload)
            .read_to_end(&mut out)
            .map_err(|error| format!("cannot decompress its gzip payload: {error}"))?;
    } else {
        let name = match payload.get(..4) {
            Some([0x28, 0xb5, 0x2f, 0xfd]) => "zstd",
            Some([0x02, 0x21, 0x4c, 0x18]) => "lz4",
            Some([b'B', b'Z', b'h', _]) => "bzip2",
            Some([0x89, b'L', b'Z', b'O']) => "lzo",
            Some([0x5d, 0, 0, _]) => "lzma",
            _ => "an unknown format",
        };
        return Err(format!(
            "its payload is compressed with {name}; only xz (Debian's kernels) and \
             gzip are read: give the uncompressed vmlinux or its BTF instead"
        ));
    }
    if !out.starts_with(b"\x7fELF") {
        return Err("its decompressed payload is not an ELF vmlinux".to_string());
    }
    Ok(out)
}

/// Which BTF a session without the kernel's DWARF types kernel functions with
/// (named by symbol, PROTOCOL.md §8.10), chosen on the command line.
#[derive(Clone, Debug)]
pub enum KernelTypes {
    /// This machine's `/sys/kernel/btf/vmlinux` (a Unix socket to an adapter on
    /// this machine), used only when the stub's build-id is this machine's kernel's
    /// (its `/sys/kernel/notes`): otherwise functions are named without types, with
    /// a warning, since the socket may lead to another kernel (a guest's port).
    Running,
    /// BTF the user gave (`--btf FILE`), refused when it carries a build-id that is
    /// not the stub's.
    File(std::sync::Arc<KernelBtf>),
}

/// What [`KernelTypes::select`] chose.
#[derive(Debug)]
pub struct Selected {
    /// The BTF to compile with, if any.
    pub btf: Option<std::sync::Arc<KernelBtf>>,
    /// Why there is none, when the user might have expected some.
    pub warning: Option<String>,
}

impl KernelTypes {
    /// The BTF for the stub whose `Hello` announced `build_id` (module docs and the
    /// variants: a mismatching file is an error; this machine's BTF for another
    /// kernel is a warning and no types).
    pub fn select(&self, build_id: &[u8]) -> Result<Selected, SourceError> {
        match self {
            KernelTypes::File(btf) => {
                btf.check_build_id(build_id)?;
                Ok(Selected {
                    btf: Some(std::sync::Arc::clone(btf)),
                    warning: None,
                })
            }
            KernelTypes::Running => {
                let without = |reason: String| Selected {
                    btf: None,
                    warning: Some(format!(
                        "{reason}: kernel functions are named by symbol without their \
                         parameters' types (give the kernel's BTF, vmlinux or vmlinuz with \
                         --btf)"
                    )),
                };
                let own = match running_build_id() {
                    Ok(Some(own)) => own,
                    Ok(None) => {
                        return Ok(without(format!(
                            "{RUNNING_NOTES} has no build-id to compare with the port's kernel"
                        )));
                    }
                    Err(error) => return Ok(without(error.to_string())),
                };
                if build_id.is_empty() {
                    return Ok(without(
                        "the port's kernel announced no build-id, so this machine's BTF \
                         cannot be checked against it"
                            .to_string(),
                    ));
                }
                if own != build_id {
                    return Ok(without(format!(
                        "the port's kernel (build-id {}) is not this machine's (build-id {})",
                        crate::debuginfo::hex(build_id),
                        crate::debuginfo::hex(&own)
                    )));
                }
                match KernelBtf::running() {
                    Ok(btf) => Ok(Selected {
                        btf: Some(std::sync::Arc::new(btf)),
                        warning: None,
                    }),
                    Err(error) => Ok(without(error.to_string())),
                }
            }
        }
    }
}
