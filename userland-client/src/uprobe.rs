//! User-space probe sites: from an ELF file's names to the file offsets that
//! `Site::User` carries (PROTOCOL.md §8.8).
//!
//! # Design
//!
//! Linux places a uprobe at an offset **in the file**, not at a virtual address:
//! an address is mapped through the `PT_LOAD` program header that contains it
//! (`offset = address - p_vaddr + p_offset`). The same holds for a USDT
//! semaphore, whose file offset becomes the site's `ref_ctr_offset`. USDT markers
//! are read from the `.note.stapsdt` notes that systemtap's `sdt.h` (or an
//! equivalent hand-written note) leaves in the file; a note's addresses are
//! link-time addresses, corrected by the difference between the
//! `.stapsdt.base` section's address and the base the note recorded (prelinking).

use std::path::Path;

use lang::resolver::{
    Function, Marker, ResolveError, Resolver, SiteRefusal, StatementSite, TypeId, TypeInfo,
    TypeKind, UserArg, UserSite, UserTarget, Variable,
};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

/// What can go wrong finding a user-space site.
#[derive(Debug, thiserror::Error)]
pub enum UprobeError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not an ELF object `object` can parse.
    #[error("{path} is not an ELF file: {message}")]
    NotElf {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// No symbol or marker of that name.
    #[error("{path} has no {what} named {name:?}")]
    NotFound {
        /// The file.
        path: String,
        /// "function" or "marker".
        what: &'static str,
        /// The name looked up.
        name: String,
    },
    /// The address is in no file-backed part of a `PT_LOAD` segment.
    #[error("address {address:#x} of {path} is in no loaded part of the file")]
    NotLoaded {
        /// The file.
        path: String,
        /// The address.
        address: u64,
    },
}

/// The file offset of virtual address `address`: through the `PT_LOAD` segment
/// whose file-backed bytes contain it.
pub fn file_offset(file: &object::File<'_>, address: u64) -> Option<u64> {
    file.segments().find_map(|segment| {
        let (offset, file_size) = segment.file_range();
        let start = segment.address();
        (address >= start && address - start < file_size).then(|| address - start + offset)
    })
}

fn read(path: &Path) -> Result<Vec<u8>, UprobeError> {
    std::fs::read(path).map_err(|source| UprobeError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn parse<'d>(path: &Path, data: &'d [u8]) -> Result<object::File<'d>, UprobeError> {
    object::File::parse(data).map_err(|error| UprobeError::NotElf {
        path: path.display().to_string(),
        message: error.to_string(),
    })
}

/// The file offset of the function `name` (from the symbol table, or the dynamic
/// symbol table of a stripped library).
pub fn function_offset(path: &Path, name: &str) -> Result<u64, UprobeError> {
    let data = read(path)?;
    let file = parse(path, &data)?;
    let address = file
        .symbols()
        .chain(file.dynamic_symbols())
        .find(|symbol| {
            symbol.kind() == object::SymbolKind::Text
                && symbol.is_definition()
                && symbol.name() == Ok(name)
        })
        .map(|symbol| symbol.address())
        .ok_or_else(|| UprobeError::NotFound {
            path: path.display().to_string(),
            what: "function",
            name: name.to_string(),
        })?;
    file_offset(&file, address).ok_or_else(|| UprobeError::NotLoaded {
        path: path.display().to_string(),
        address,
    })
}

/// One USDT marker of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdtMarker {
    /// The provider (`probeport` in `probeport:tick`).
    pub provider: String,
    /// The marker's name.
    pub name: String,
    /// The marker instruction's virtual address.
    pub address: u64,
    /// Its file offset (the site's `file_offset`).
    pub file_offset: u64,
    /// The semaphore's file offset (the site's `ref_ctr_offset`), 0 for none.
    pub semaphore_offset: u64,
    /// The argument description, e.g. `-4@%edi 8@%rax`.
    pub arguments: String,
}

/// `NT_STAPSDT`.
const NOTE_STAPSDT: u32 = 3;

/// Every USDT marker of the file, in note order.
pub fn usdt_markers(path: &Path) -> Result<Vec<UsdtMarker>, UprobeError> {
    let data = read(path)?;
    let file = parse(path, &data)?;
    let not_loaded = |address| UprobeError::NotLoaded {
        path: path.display().to_string(),
        address,
    };
    let base_section = file
        .section_by_name(".stapsdt.base")
        .map(|section| section.address());
    let Some(notes) = file.section_by_name(".note.stapsdt") else {
        return Ok(Vec::new());
    };
    let bytes = notes.data().unwrap_or(&[]);
    let mut markers = Vec::new();
    let mut rest = bytes;
    let word = |bytes: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let address = |bytes: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    while let (Some(name_size), Some(desc_size), Some(kind)) =
        (word(rest, 0), word(rest, 4), word(rest, 8))
    {
        let (name_size, desc_size) = (name_size as usize, desc_size as usize);
        let desc_start = 12 + name_size.next_multiple_of(4);
        let next = desc_start + desc_size.next_multiple_of(4);
        let (Some(owner), Some(desc)) = (
            rest.get(12..12 + name_size),
            rest.get(desc_start..desc_start + desc_size),
        ) else {
            break;
        };
        if kind == NOTE_STAPSDT
            && owner.starts_with(b"stapsdt")
            && let (Some(pc), Some(base), Some(semaphore)) =
                (address(desc, 0), address(desc, 8), address(desc, 16))
        {
            let mut strings = desc
                .get(24..)
                .unwrap_or(&[])
                .split(|byte| *byte == 0)
                .map(|text| String::from_utf8_lossy(text).into_owned());
            let (provider, name, arguments) = (
                strings.next().unwrap_or_default(),
                strings.next().unwrap_or_default(),
                strings.next().unwrap_or_default(),
            );
            // Prelinking moves the file but not the note: correct by the base.
            let bias = base_section.map_or(0, |actual| actual.wrapping_sub(base));
            let pc = pc.wrapping_add(bias);
            let semaphore = if semaphore == 0 {
                0
            } else {
                semaphore.wrapping_add(bias)
            };
            markers.push(UsdtMarker {
                provider,
                name,
                address: pc,
                file_offset: file_offset(&file, pc).ok_or_else(|| not_loaded(pc))?,
                semaphore_offset: if semaphore == 0 {
                    0
                } else {
                    file_offset(&file, semaphore).ok_or_else(|| not_loaded(semaphore))?
                },
                arguments,
            });
        }
        match rest.get(next..) {
            Some(tail) if next > 0 => rest = tail,
            _ => break,
        }
    }
    Ok(markers)
}

/// The marker `provider:name` of the file.
pub fn usdt_marker(path: &Path, provider: &str, name: &str) -> Result<UsdtMarker, UprobeError> {
    usdt_markers(path)?
        .into_iter()
        .find(|marker| marker.provider == provider && marker.name == name)
        .ok_or_else(|| UprobeError::NotFound {
            path: path.display().to_string(),
            what: "marker",
            name: format!("{provider}:{name}"),
        })
}

/// One argument of a USDT argument description (`-4@%edi`): its size in bytes
/// (negative: signed) and the DWARF register holding it, for register arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsdtArgument {
    /// Size in bytes, negative for signed values.
    pub size: i8,
    /// The context slot (DWARF register number) of the register.
    pub slot: usize,
}

/// Parses the register arguments of a description; `None` if one is not a plain
/// register (memory operands and constants are not handled yet).
pub fn usdt_register_arguments(arguments: &str) -> Option<Vec<UsdtArgument>> {
    arguments
        .split_whitespace()
        .map(|argument| {
            let (size, operand) = argument.split_once('@')?;
            let register = operand.strip_prefix('%')?;
            Some(UsdtArgument {
                size: size.parse().ok()?,
                slot: x86_64_register_slot(register)?,
            })
        })
        .collect()
}

/// The DWARF number of an x86-64 register by any of its AT&T names.
fn x86_64_register_slot(name: &str) -> Option<usize> {
    const FAMILIES: [[&str; 4]; 16] = [
        ["rax", "eax", "ax", "al"],
        ["rdx", "edx", "dx", "dl"],
        ["rcx", "ecx", "cx", "cl"],
        ["rbx", "ebx", "bx", "bl"],
        ["rsi", "esi", "si", "sil"],
        ["rdi", "edi", "di", "dil"],
        ["rbp", "ebp", "bp", "bpl"],
        ["rsp", "esp", "sp", "spl"],
        ["r8", "r8d", "r8w", "r8b"],
        ["r9", "r9d", "r9w", "r9b"],
        ["r10", "r10d", "r10w", "r10b"],
        ["r11", "r11d", "r11w", "r11b"],
        ["r12", "r12d", "r12w", "r12b"],
        ["r13", "r13d", "r13w", "r13b"],
        ["r14", "r14d", "r14w", "r14b"],
        ["r15", "r15d", "r15w", "r15b"],
    ];
    FAMILIES.iter().position(|family| family.contains(&name))
}

/// The answer to [`lang::resolver::Resolver::user_site`] from the file itself.
pub fn user_site(path: &str, target: &UserTarget) -> Result<UserSite, ResolveError> {
    let file = Path::new(path);
    let failed = |error: UprobeError| ResolveError {
        message: error.to_string(),
    };
    match target {
        UserTarget::Function(name) => Ok(UserSite {
            file_offset: function_offset(file, name).map_err(failed)?,
            ref_ctr_offset: 0,
            args: Vec::new(),
        }),
        UserTarget::Mark { provider, name } => {
            let marker = usdt_marker(file, provider, name).map_err(failed)?;
            let arguments =
                usdt_register_arguments(&marker.arguments).ok_or_else(|| ResolveError {
                    message: format!(
                        "marker {provider}:{name} has arguments other than registers ({}), \
                         which cannot be read yet",
                        marker.arguments
                    ),
                })?;
            Ok(UserSite {
                file_offset: marker.file_offset,
                ref_ctr_offset: marker.semaphore_offset,
                args: arguments
                    .iter()
                    .enumerate()
                    .map(|(index, argument)| UserArg {
                        name: format!("arg{}", index + 1),
                        slot: argument.slot,
                        size: argument.size,
                    })
                    .collect(),
            })
        }
    }
}

/// A resolver for scripts that probe user space only: it knows no kernel (no
/// functions, lines, markers or types) and answers user-space points from the
/// files themselves. For the Linux adapter, where the kernel's debuginfo is not
/// at hand.
#[derive(Clone, Copy, Debug, Default)]
pub struct UserResolver;

impl Resolver for UserResolver {
    fn functions(&self, _pattern: &str) -> Vec<Function> {
        Vec::new()
    }

    fn instruction(&self, _address: u64) -> Result<Vec<u8>, SiteRefusal> {
        Err(SiteRefusal::NoCode)
    }

    fn statements(&self, _file: &str, _line: u32) -> Result<Vec<StatementSite>, ResolveError> {
        Err(ResolveError {
            message: "no kernel debuginfo: only user-space probe points".to_string(),
        })
    }

    fn variables(
        &self,
        _function: &Function,
        _address: u64,
    ) -> Result<Vec<Variable>, ResolveError> {
        Ok(Vec::new())
    }

    fn markers(&self, _pattern: &str) -> Vec<Marker> {
        Vec::new()
    }

    fn find_type(&self, _kind: TypeKind, _name: &str) -> Option<TypeId> {
        None
    }

    fn type_info(&self, _id: TypeId) -> Option<TypeInfo> {
        None
    }

    fn user_site(&self, path: &str, target: &UserTarget) -> Result<UserSite, ResolveError> {
        user_site(path, target)
    }
}

/// [`UserResolver`] for a stub that resolves kernel symbols itself (capability
/// `KERNEL_SYMBOL`, PROTOCOL.md §8.10: the Linux adapter in a kernel with
/// kprobes): `kernel.function("name")[.return]` compiles to a site naming the
/// function, which the running kernel looks up when the probe is armed. Exact
/// names only; registers (`reg("rdi")`) and `$return` but no typed variables.
///
/// The simplest correct design: the names are the running kernel's own (its
/// kallsyms), so nothing on the client can disagree with them, and no symbol table
/// crosses the port. A name the kernel does not know is refused by `Arm`.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelSymbolResolver;

impl Resolver for KernelSymbolResolver {
    fn functions(&self, pattern: &str) -> Vec<Function> {
        UserResolver.functions(pattern)
    }

    fn instruction(&self, address: u64) -> Result<Vec<u8>, SiteRefusal> {
        UserResolver.instruction(address)
    }

    fn statements(&self, file: &str, line: u32) -> Result<Vec<StatementSite>, ResolveError> {
        UserResolver.statements(file, line)
    }

    fn variables(&self, function: &Function, address: u64) -> Result<Vec<Variable>, ResolveError> {
        UserResolver.variables(function, address)
    }

    fn markers(&self, pattern: &str) -> Vec<Marker> {
        UserResolver.markers(pattern)
    }

    fn find_type(&self, kind: TypeKind, name: &str) -> Option<TypeId> {
        UserResolver.find_type(kind, name)
    }

    fn type_info(&self, id: TypeId) -> Option<TypeInfo> {
        UserResolver.type_info(id)
    }

    fn kernel_symbols(&self) -> bool {
        true
    }

    fn user_site(&self, path: &str, target: &UserTarget) -> Result<UserSite, ResolveError> {
        user_site(path, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lang::compiled::SiteSpec;
    use lang::source::Sources;
    use lang::{CompileOptions, compile};

    fn compiled(
        text: &str,
        resolver: &dyn Resolver,
    ) -> (Option<lang::compiled::CompiledScript>, String) {
        let mut sources = Sources::new();
        sources.add_script("t.probe", text);
        let (script, diagnostics) = compile(&sources, resolver, &CompileOptions::default());
        (script, lang::diagnostic::render(&sources, &diagnostics))
    }

    #[test]
    fn kernel_functions_compile_to_symbol_sites_when_the_stub_resolves_them() {
        let (script, rendered) = compiled(
            r#"probe kernel.function("__x64_sys_getppid") { @n[reg("rdi")] = count(); }
               probe kernel.function("__x64_sys_getppid").return { @r = max($return); }
               probe kernel.function("do_sys_openat2+0x4") { @o = count(); }"#,
            &KernelSymbolResolver,
        );
        let script = script.unwrap_or_else(|| panic!("{rendered}"));
        let sites: Vec<&SiteSpec> = script
            .probes
            .iter()
            .flat_map(|probe| &probe.attachments)
            .map(|attachment| &attachment.site)
            .collect();
        let symbol = |symbol: &str, offset, is_return| SiteSpec::KernelSymbol {
            symbol: symbol.to_string(),
            offset,
            is_return,
        };
        assert_eq!(
            sites,
            [
                &symbol("__x64_sys_getppid", 0, false),
                &symbol("__x64_sys_getppid", 0, true),
                &symbol("do_sys_openat2", 4, false),
            ]
        );
        // Without the stub's resolution, kernel functions are unknown.
        let (script, rendered) = compiled(
            r#"probe kernel.function("__x64_sys_getppid") { @n = count(); }"#,
            &UserResolver,
        );
        assert!(
            script.is_none() && rendered.contains("no function matches"),
            "{rendered}"
        );
    }

    #[test]
    fn symbol_sites_take_exact_names_and_have_no_variables() {
        for (text, expected) in [
            (
                r#"probe kernel.function("sys_*") { @n = count(); }"#,
                "is a pattern",
            ),
            (
                r#"probe kernel.function("__x64_sys_getppid") { @n = max($regs); }"#,
                "unknown variable `$regs`",
            ),
            (
                r#"probe kernel.function("__x64_sys_getppid") { @n = max($return); }"#,
                "only known in `.return` probes",
            ),
            (
                r#"probe kernel.function("__x64_sys_getppid+4").return { @n = count(); }"#,
                "a `.return` probe cannot have an offset",
            ),
        ] {
            let (script, rendered) = compiled(text, &KernelSymbolResolver);
            assert!(script.is_none(), "{text}");
            assert!(rendered.contains(expected), "{text}:\n{rendered}");
        }
    }

    #[test]
    fn usdt_arguments_name_dwarf_registers() {
        assert_eq!(
            usdt_register_arguments("-4@%edi 8@%rax 2@%r9w"),
            Some(vec![
                UsdtArgument { size: -4, slot: 5 },
                UsdtArgument { size: 8, slot: 0 },
                UsdtArgument { size: 2, slot: 9 },
            ])
        );
        assert_eq!(usdt_register_arguments("8@-8(%rbp)"), None);
        assert_eq!(usdt_register_arguments(""), Some(vec![]));
    }
}
