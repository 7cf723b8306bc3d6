//! Kernel debuginfo: every name in a probe script resolved against the kernel's ELF/DWARF.
//!
//! # Design
//!
//! [`Kernel::open`] reads the whole image once (a `.gz` image is inflated in memory),
//! copies the DWARF sections into shared buffers, parses every compilation unit and
//! builds three indexes in one pass over the DIE tree: functions (by their abstract
//! declaration, with out-of-line and inlined instances), named types, and the line
//! table as sorted address ranges. Everything else is computed on demand from the DIEs:
//! parameter and local locations are evaluated at the exact address asked for
//! ([`Kernel::variables_at`]), with the frame base resolved through the call-frame
//! information (`.debug_frame`, then `.eh_frame`) at that address.
//!
//! Results speak the compiler's language: [`Location`] names DWARF registers (the
//! probe context's slot order), memory at register + offset, constants and entry
//! values; [`Type`] is a small C-like model with sizes and member offsets.
//!
//! # Invariants
//!
//! - Nothing here trusts the image: malformed DWARF gives an error or an
//!   [`Location::Unavailable`], never a panic.
//! - Addresses are link-time addresses of the image (no relocation is applied).

mod format;
mod frames;
mod functions;
mod index;
mod lines;
mod location;
mod pattern;
mod types;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gimli::Reader as _;
use object::{Object, ObjectSection, ObjectSymbol};

pub use format::{ListOptions, format_function, format_list};
pub use functions::{Function, Instance, InstanceKind, Parameter, Variable, VariableKind};
pub use lines::LineLocation;
pub use location::{BinaryOp, ComputedOp, Location, MemoryBase, register_name};
pub use pattern::matches_pattern;
pub use types::{Bitfield, Enumerator, Member, Type, TypeId, TypeKind};

/// The reader every DWARF section is parsed through: shared, owned bytes.
pub(crate) type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// An error opening or reading a kernel image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read (or inflated).
    #[error("cannot read kernel image {path}: {source}")]
    Io {
        /// The image path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not an ELF image `object` understands.
    #[error("{path} is not a readable ELF image: {source}")]
    Object {
        /// The image path.
        path: PathBuf,
        /// The underlying error.
        source: object::Error,
    },
    /// The image has no DWARF debug information.
    #[error("{0} has no DWARF debug information (.debug_info); use the debug image")]
    NoDebugInfo(PathBuf),
    /// The DWARF is malformed.
    #[error("malformed DWARF: {0}")]
    Dwarf(#[from] gimli::Error),
}

/// The kernel the port reported is not the one whose debuginfo was loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct BuildIdMismatch {
    /// The build-id of the debuginfo image, if it has one.
    pub expected: Option<Vec<u8>>,
    /// The build-id the running kernel reported in its handshake.
    pub running: Vec<u8>,
    /// The debuginfo image path.
    pub path: PathBuf,
}

impl fmt::Display for BuildIdMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expected {
            Some(expected) => write!(
                f,
                "build-id mismatch: the running kernel is {} but the debuginfo {} is {}; \
                 names would resolve to wrong addresses, so nothing was sent \
                 (pass the image the kernel was booted from)",
                hex(&self.running),
                self.path.display(),
                hex(expected)
            ),
            None => write!(
                f,
                "build-id mismatch: the running kernel is {} but the debuginfo {} has no \
                 build-id note (.note.gnu.build-id), so it cannot be checked; nothing was sent",
                hex(&self.running),
                self.path.display()
            ),
        }
    }
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The instruction set of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Architecture {
    /// x86_64 (DWARF registers: rax=0, rdx=1, rcx=2, rbx=3, rsi=4, rdi=5, rbp=6, rsp=7, r8..r15=8..15).
    X86_64,
    /// 32-bit x86.
    I386,
    /// 64-bit Arm.
    Aarch64,
    /// 64-bit RISC-V.
    Riscv64,
    /// Anything else `object` reports.
    Other,
}

/// An ELF function symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// The name, demangled for Rust (without the hash).
    pub name: String,
    /// The name as in the symbol table.
    pub raw_name: String,
    /// Start address.
    pub address: u64,
    /// Size in bytes (0 when the symbol table does not say).
    pub size: u64,
}

/// An address resolved to a function and an offset, for stack traces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbolized {
    /// The function (ELF symbol) containing the address.
    pub function: String,
    /// The offset of the address from the function's start.
    pub offset: u64,
    /// Functions inlined at the address, outermost first (from DWARF).
    pub inlined: Vec<String>,
    /// The source line of the address, if the line table has one.
    pub line: Option<LineLocation>,
}

impl fmt::Display for Symbolized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{:#x}", self.function, self.offset)?;
        for inlined in &self.inlined {
            write!(f, " [inlined {inlined}]")?;
        }
        if let Some(line) = &self.line {
            write!(f, " at {}:{}", line.file, line.line)?;
        }
        Ok(())
    }
}

/// An allocated, non-executable section's contents.
#[derive(Debug)]
struct LoadedSection {
    name: String,
    address: u64,
    bytes: Vec<u8>,
}

/// One parsed compilation unit.
#[derive(Debug)]
pub(crate) struct UnitData {
    pub(crate) unit: gimli::Unit<Reader>,
    pub(crate) offset: gimli::DebugInfoOffset,
    pub(crate) is_rust: bool,
}

/// A DIE anywhere in `.debug_info`: unit index and offset within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DieRef {
    pub(crate) unit: usize,
    pub(crate) offset: gimli::UnitOffset,
}

/// The symbols bounding the text a stub refuses to patch (see [`Kernel::forbidden_text`]).
const FORBIDDEN_START: &str = "__probeport_forbidden_start";
const FORBIDDEN_END: &str = "__probeport_forbidden_end";

/// A kernel image with its symbols and DWARF, indexed.
pub struct Kernel {
    path: PathBuf,
    architecture: Architecture,
    build_id: Option<Vec<u8>>,
    symbols: Vec<Symbol>,
    dwarf: gimli::Dwarf<Reader>,
    units: Vec<UnitData>,
    frames: frames::FrameTable,
    index: index::Index,
    lines: lines::LineTable,
    /// Executable sections' contents: (load address, bytes).
    text: Vec<(u64, Vec<u8>)>,
    /// Every other allocated section with contents in the file (`.rodata`,
    /// `.data`, `probeport_markers`, ...): what the image holds before it runs.
    data: Vec<LoadedSection>,
    /// The byte order of the image.
    endian: gimli::RunTimeEndian,
    /// `__probeport_forbidden_start..__probeport_forbidden_end`, if the image has them.
    forbidden: Option<std::ops::Range<u64>>,
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("path", &self.path)
            .field("architecture", &self.architecture)
            .field("build_id", &self.build_id.as_deref().map(hex))
            .field("symbols", &self.symbols.len())
            .field("units", &self.units.len())
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// Opens an ELF kernel image (gzip-compressed images are inflated transparently)
    /// and indexes its symbols, functions, types and line table.
    pub fn open(path: impl AsRef<Path>) -> Result<Kernel, Error> {
        let path = path.as_ref().to_path_buf();
        let io_error = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let raw = std::fs::read(&path).map_err(io_error)?;
        let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut inflated = Vec::new();
            flate2::read::GzDecoder::new(raw.as_slice())
                .read_to_end(&mut inflated)
                .map_err(io_error)?;
            inflated
        } else {
            raw
        };
        Kernel::from_bytes(path, &bytes)
    }

    /// Indexes an ELF image already in memory; `path` is only used in messages.
    pub fn from_bytes(path: PathBuf, bytes: &[u8]) -> Result<Kernel, Error> {
        let file = object::File::parse(bytes).map_err(|source| Error::Object {
            path: path.clone(),
            source,
        })?;
        if file.section_by_name(".debug_info").is_none() {
            return Err(Error::NoDebugInfo(path));
        }
        let architecture = match file.architecture() {
            object::Architecture::X86_64 => Architecture::X86_64,
            object::Architecture::I386 => Architecture::I386,
            object::Architecture::Aarch64 => Architecture::Aarch64,
            object::Architecture::Riscv64 => Architecture::Riscv64,
            _ => Architecture::Other,
        };
        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        let endian = if file.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let section = |name: &str| -> Reader {
            let data = file
                .section_by_name(name)
                .and_then(|section| section.uncompressed_data().ok())
                .unwrap_or_default();
            gimli::EndianArcSlice::new(Arc::from(&*data), endian)
        };
        let dwarf =
            gimli::Dwarf::load(|id| -> Result<Reader, gimli::Error> { Ok(section(id.name())) })?;

        let eh_frame = file.section_by_name(".eh_frame").map(|eh| {
            let mut bases = gimli::BaseAddresses::default().set_eh_frame(eh.address());
            if let Some(text) = file.section_by_name(".text") {
                bases = bases.set_text(text.address());
            }
            if let Some(hdr) = file.section_by_name(".eh_frame_hdr") {
                bases = bases.set_eh_frame_hdr(hdr.address());
            }
            let mut frame = gimli::EhFrame::from(section(".eh_frame"));
            frame.set_address_size(if file.is_64() { 8 } else { 4 });
            (frame, bases)
        });
        let debug_frame = file.section_by_name(".debug_frame").map(|_| {
            let mut frame = gimli::DebugFrame::from(section(".debug_frame"));
            frame.set_address_size(if file.is_64() { 8 } else { 4 });
            frame
        });

        let mut symbols: Vec<Symbol> = file
            .symbols()
            .filter(|symbol| symbol.kind() == object::SymbolKind::Text && symbol.address() != 0)
            .filter_map(|symbol| {
                let raw_name = symbol.name().ok()?.to_owned();
                Some(Symbol {
                    name: demangle(&raw_name),
                    raw_name,
                    address: symbol.address(),
                    size: symbol.size(),
                })
            })
            .collect();
        symbols.sort_by(|a, b| a.address.cmp(&b.address).then(b.size.cmp(&a.size)));

        let mut units = Vec::new();
        let mut headers = dwarf.units();
        while let Some(header) = headers.next()? {
            let Some(offset) = header.offset().as_debug_info_offset() else {
                continue;
            };
            let unit = dwarf.unit(header)?;
            let is_rust = {
                let mut entries = unit.entries();
                entries.next_dfs()?;
                matches!(
                    entries
                        .current()
                        .and_then(|root| root.attr_value(gimli::DW_AT_language).ok().flatten()),
                    Some(gimli::AttributeValue::Language(gimli::DW_LANG_Rust))
                )
            };
            units.push(UnitData {
                unit,
                offset,
                is_rust,
            });
        }

        let text = file
            .sections()
            .filter(|section| section.kind() == object::SectionKind::Text)
            .filter_map(|section| Some((section.address(), section.data().ok()?.to_vec())))
            .collect();

        let data = file
            .sections()
            .filter(|section| {
                section.kind() != object::SectionKind::Text
                    && !section.kind().is_bss()
                    && matches!(
                        section.flags(),
                        object::SectionFlags::Elf { sh_flags }
                            if sh_flags & u64::from(object::elf::SHF_ALLOC) != 0
                    )
            })
            .filter_map(|section| {
                Some(LoadedSection {
                    name: section.name().ok()?.to_owned(),
                    address: section.address(),
                    bytes: section.data().ok()?.to_vec(),
                })
            })
            .filter(|section| !section.bytes.is_empty())
            .collect();

        let symbol_address = |wanted: &str| {
            file.symbols()
                .find(|symbol| symbol.name() == Ok(wanted))
                .map(|symbol| symbol.address())
        };
        let forbidden = match (
            symbol_address(FORBIDDEN_START),
            symbol_address(FORBIDDEN_END),
        ) {
            (Some(start), Some(end)) if start < end => Some(start..end),
            _ => None,
        };

        let mut kernel = Kernel {
            text,
            data,
            endian,
            forbidden,
            path,
            architecture,
            build_id,
            symbols,
            dwarf,
            units,
            frames: frames::FrameTable::build(debug_frame, eh_frame),
            index: index::Index::default(),
            lines: lines::LineTable::default(),
        };
        kernel.index = index::Index::build(&kernel)?;
        kernel.lines = lines::LineTable::build(&kernel)?;
        Ok(kernel)
    }

    /// The bytes of the image's executable sections at `address`: up to `len` bytes,
    /// fewer at the end of a section; `None` outside every executable section.
    pub fn code_bytes(&self, address: u64, len: usize) -> Option<&[u8]> {
        self.text.iter().find_map(|(start, bytes)| {
            let offset = usize::try_from(address.checked_sub(*start)?).ok()?;
            (offset < bytes.len()).then(|| &bytes[offset..bytes.len().min(offset + len)])
        })
    }

    /// The contents of the allocated section `name` and its load address, as the
    /// image holds them before the kernel runs; `None` when the image has no such
    /// section with contents (or it is executable: see [`Kernel::code_bytes`]).
    pub fn section_data(&self, name: &str) -> Option<(u64, &[u8])> {
        self.data
            .iter()
            .find(|section| section.name == name)
            .map(|section| (section.address, section.bytes.as_slice()))
    }

    /// `len` bytes of the image at link-time `address`, from any allocated section
    /// with contents (code or data); `None` unless all of them lie in one section.
    pub fn read_image(&self, address: u64, len: usize) -> Option<&[u8]> {
        let within = |start: u64, bytes: &'_ [u8]| {
            let offset = usize::try_from(address.checked_sub(start)?).ok()?;
            let end = offset.checked_add(len)?;
            (end <= bytes.len()).then_some((offset, end))
        };
        self.data
            .iter()
            .map(|section| (section.address, section.bytes.as_slice()))
            .chain(
                self.text
                    .iter()
                    .map(|(start, bytes)| (*start, bytes.as_slice())),
            )
            .find_map(|(start, bytes)| {
                let (offset, end) = within(start, bytes)?;
                Some(&bytes[offset..end])
            })
    }

    /// Whether the image's multi-byte values are little-endian.
    pub fn is_little_endian(&self) -> bool {
        self.endian == gimli::RunTimeEndian::Little
    }

    /// The text the kernel's stub refuses to patch, when the image marks it with the
    /// symbols `__probeport_forbidden_start` and `__probeport_forbidden_end` (the
    /// convention of the demo kernel's linker script: the trap path, the stub and
    /// the routines they call).
    pub fn forbidden_text(&self) -> Option<std::ops::Range<u64>> {
        self.forbidden.clone()
    }

    /// The contiguous code range of the out-of-line function copy containing
    /// `address`, with the function's name: where instruction decoding must start
    /// to find `address`'s instruction boundary.
    pub fn code_range_at(&self, address: u64) -> Option<(String, std::ops::Range<u64>)> {
        let (function, instance) = self.index.code_at(address)?;
        let record = &self.index.functions[function];
        let range = record.instances[instance]
            .ranges
            .iter()
            .find(|range| range.contains(&address))?
            .clone();
        Some((record.name.clone(), range))
    }

    /// Every code range of the out-of-line function copy containing `address`
    /// (more than one when the compiler split the function).
    pub fn code_ranges_at(&self, address: u64) -> Option<Vec<std::ops::Range<u64>>> {
        let (function, instance) = self.index.code_at(address)?;
        Some(
            self.index.functions[function].instances[instance]
                .ranges
                .clone(),
        )
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The instruction set.
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// The GNU build-id (`.note.gnu.build-id`), if the image has one.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// Refuses a running kernel whose build-id (from the port handshake) differs from
    /// this image's. An image without a build-id never matches: it cannot be checked.
    pub fn check_build_id(&self, running: &[u8]) -> Result<(), BuildIdMismatch> {
        match &self.build_id {
            Some(expected) if expected.as_slice() == running => Ok(()),
            expected => Err(BuildIdMismatch {
                expected: expected.clone(),
                running: running.to_vec(),
                path: self.path.clone(),
            }),
        }
    }

    /// The DWARF versions of the image's compilation units (4, 5, ...).
    pub fn dwarf_versions(&self) -> std::collections::BTreeSet<u16> {
        self.units
            .iter()
            .map(|unit| unit.unit.header.version())
            .collect()
    }

    /// The ELF function symbols, sorted by address.
    pub fn symbols(&self) -> &[Symbol] {
        &self.symbols
    }

    /// Resolves an address to function + offset (ELF symbols, so it works for code
    /// without DWARF too), with the inlined functions and source line from DWARF.
    /// A symbol without a size (an assembly entry point) covers the addresses up to
    /// the next symbol.
    pub fn symbolize(&self, address: u64) -> Option<Symbolized> {
        let after = self
            .symbols
            .partition_point(|symbol| symbol.address <= address);
        let symbol = self.symbols[..after]
            .iter()
            .rev()
            .take(16)
            .find(|symbol| symbol.size == 0 || address < symbol.address + symbol.size)?;
        Some(Symbolized {
            function: symbol.name.clone(),
            offset: address - symbol.address,
            inlined: self.index.inlined_chain_at(address),
            line: self.line_for_address(address),
        })
    }

    /// The unit index holding a `.debug_info` offset.
    pub(crate) fn unit_for_offset(&self, offset: gimli::DebugInfoOffset) -> Option<usize> {
        let after = self.units.partition_point(|unit| unit.offset <= offset);
        after.checked_sub(1)
    }

    /// Converts a DIE reference attribute to a [`DieRef`].
    pub(crate) fn resolve_reference(
        &self,
        unit: usize,
        value: &gimli::AttributeValue<Reader>,
    ) -> Option<DieRef> {
        match *value {
            gimli::AttributeValue::UnitRef(offset) => Some(DieRef { unit, offset }),
            gimli::AttributeValue::DebugInfoRef(offset) => {
                let unit = self.unit_for_offset(offset)?;
                let offset = offset.to_unit_offset(&self.units[unit].unit.header)?;
                Some(DieRef { unit, offset })
            }
            _ => None,
        }
    }

    /// The DIE a [`DieRef`] names.
    pub(crate) fn entry(
        &self,
        die: DieRef,
    ) -> Option<gimli::DebuggingInformationEntry<'_, '_, Reader>> {
        self.units.get(die.unit)?.unit.entry(die.offset).ok()
    }

    /// An attribute of a DIE, following `DW_AT_abstract_origin` and
    /// `DW_AT_specification` (a concrete or inlined instance keeps its name and type
    /// on the abstract DIE).
    pub(crate) fn attribute(
        &self,
        die: DieRef,
        name: gimli::DwAt,
    ) -> Option<(DieRef, gimli::AttributeValue<Reader>)> {
        let mut current = die;
        for _ in 0..8 {
            let entry = self.entry(current)?;
            if let Ok(Some(value)) = entry.attr_value(name) {
                return Some((current, value));
            }
            let origin = entry
                .attr_value(gimli::DW_AT_abstract_origin)
                .ok()
                .flatten()
                .or_else(|| entry.attr_value(gimli::DW_AT_specification).ok().flatten())?;
            current = self.resolve_reference(current.unit, &origin)?;
        }
        None
    }

    /// A string attribute (following origins), e.g. `DW_AT_name`.
    pub(crate) fn string_attribute(&self, die: DieRef, name: gimli::DwAt) -> Option<String> {
        let (holder, value) = self.attribute(die, name)?;
        let unit = &self.units[holder.unit].unit;
        let string = self.dwarf.attr_string(unit, value).ok()?;
        Some(string.to_string_lossy().ok()?.into_owned())
    }

    /// The `DW_AT_type` of a DIE (following origins) as a [`TypeId`].
    pub(crate) fn type_attribute(&self, die: DieRef) -> Option<TypeId> {
        let (holder, value) = self.attribute(die, gimli::DW_AT_type)?;
        self.resolve_reference(holder.unit, &value).map(TypeId)
    }

    /// The file name of a `DW_AT_decl_file`/`DW_AT_call_file` index in a unit.
    pub(crate) fn file_name(&self, unit: usize, index: u64) -> Option<String> {
        let unit = &self.units.get(unit)?.unit;
        let program = unit.line_program.as_ref()?;
        let header = program.header();
        let file = header.file(index)?;
        let mut path = String::new();
        if let Some(directory) = file.directory(header)
            && let Ok(directory) = self.dwarf.attr_string(unit, directory)
        {
            path.push_str(&directory.to_string_lossy().ok()?);
        }
        let name = self.dwarf.attr_string(unit, file.path_name()).ok()?;
        let name = name.to_string_lossy().ok()?;
        if name.starts_with('/') || path.is_empty() {
            return Some(name.into_owned());
        }
        if !path.ends_with('/') {
            path.push('/');
        }
        path.push_str(&name);
        Some(path)
    }
}

/// A Rust symbol demangled without its hash; other names unchanged.
pub(crate) fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(demangled) => format!("{demangled:#}"),
        Err(_) => name.to_owned(),
    }
}
