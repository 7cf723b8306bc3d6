//! BTF, the kernel's compact type format: a reader, where a kernel's BTF comes
//! from, and a [`lang::resolver::Resolver`] for kernel functions named by symbol
//! that answers parameters and types from it.
//!
//! # Design
//!
//! BTF (the kernel's `Documentation/bpf/btf.rst`) is a header, a type section and a
//! string section. Types are numbered from 1 in the order they appear (0 is `void`);
//! each is a 12-byte common part (name offset, an `info` word holding the kind, the
//! item count `vlen` and `kind_flag`, and a size or a referenced type) followed by
//! kind-specific data whose length follows from the kind and `vlen`. [`Btf::parse`]
//! walks the type section once, checking every length against the data, and keeps
//! each type as a small decoded [`BtfType`]; names stay offsets into the string
//! section until asked for. A malformed file is an [`BtfError`], never a panic.
//!
//! Only little-endian BTF is read: the client resolves for x86-64 kernels.
//!
//! - [`source`]: where the BTF comes from — the running kernel's
//!   `/sys/kernel/btf/vmlinux`, a raw BTF file, the `.BTF` section of a vmlinux ELF
//!   or of the ELF inside a compressed `vmlinuz` (bzImage) — and its build-id.
//! - [`resolver`]: [`resolver::BtfResolver`], the compiler's questions answered from
//!   BTF for `kernel.function("name")` sites that the stub resolves by symbol.

pub mod resolver;
pub mod source;

use std::collections::HashMap;

/// The magic number at the start of BTF, as it reads in little-endian.
const MAGIC: u16 = 0xeb9f;
/// The only BTF version there is.
const VERSION: u8 = 1;
/// The shortest header (up to and including `str_len`).
const MIN_HEADER: usize = 24;

/// What can be wrong with BTF bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    /// The data does not start with the BTF magic number.
    #[error("not BTF: the magic number is {0:#06x}, not 0xeb9f")]
    Magic(u16),
    /// Big-endian BTF (the magic number byte-swapped).
    #[error("big-endian BTF is not supported")]
    BigEndian,
    /// An unknown version.
    #[error("BTF version {0} is not supported (only 1)")]
    Version(u8),
    /// A length or offset points outside the data.
    #[error("truncated BTF: {0}")]
    Truncated(String),
    /// A kind number this reader does not know.
    #[error("BTF type {id} has unknown kind {kind}")]
    UnknownKind {
        /// The type's number.
        id: u32,
        /// Its kind number.
        kind: u8,
    },
}

/// An integer's encoding bits (`BTF_INT_SIGNED`, `BTF_INT_CHAR`, `BTF_INT_BOOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntEncoding {
    /// Signed.
    pub signed: bool,
    /// A character type.
    pub char: bool,
    /// A boolean.
    pub boolean: bool,
}

/// One member of a struct or union.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtfMember {
    /// Its name's offset in the string section (0: anonymous).
    pub name: u32,
    /// Its type.
    pub ty: u32,
    /// Offset from the start of the parent, in bits.
    pub bit_offset: u32,
    /// Bitfield size in bits (from `kind_flag`); 0 for an ordinary member or when
    /// the parent does not set `kind_flag` (the size is then the member's INT's).
    pub bitfield_size: u8,
}

/// One parameter of a function prototype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtfParam {
    /// Its name's offset (0 for unnamed, and for the `...` of a variadic function).
    pub name: u32,
    /// Its type (0 with name 0: the `...` of a variadic function).
    pub ty: u32,
}

/// One enumerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtfEnumerator {
    /// Its name's offset.
    pub name: u32,
    /// Its value (for ENUM, the 32-bit value sign- or zero-extended by the enum's
    /// signedness).
    pub value: i64,
}

/// One variable of a data section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BtfSectionVar {
    /// The VAR type.
    pub ty: u32,
    /// Its offset in the section.
    pub offset: u32,
    /// Its size.
    pub size: u32,
}

/// The kind-specific part of a type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BtfKind {
    /// `BTF_KIND_INT` (1).
    Int {
        /// Size in bytes.
        size: u32,
        /// Signed, char, bool.
        encoding: IntEncoding,
        /// Bit offset of the value (old-style bitfields).
        bit_offset: u8,
        /// Number of value bits.
        bits: u8,
    },
    /// `BTF_KIND_PTR` (2).
    Pointer {
        /// The pointee.
        target: u32,
    },
    /// `BTF_KIND_ARRAY` (3).
    Array {
        /// The element type.
        element: u32,
        /// The index type.
        index: u32,
        /// The element count (0: a flexible array).
        count: u32,
    },
    /// `BTF_KIND_STRUCT` (4).
    Struct {
        /// Size in bytes.
        size: u32,
        /// Members in declaration order.
        members: Vec<BtfMember>,
    },
    /// `BTF_KIND_UNION` (5).
    Union {
        /// Size in bytes.
        size: u32,
        /// Members in declaration order.
        members: Vec<BtfMember>,
    },
    /// `BTF_KIND_ENUM` (6) and `BTF_KIND_ENUM64` (19).
    Enum {
        /// Size in bytes.
        size: u32,
        /// Whether the values are signed (`kind_flag`).
        signed: bool,
        /// Enumerators.
        enumerators: Vec<BtfEnumerator>,
        /// Whether it is an ENUM64.
        is_64: bool,
    },
    /// `BTF_KIND_FWD` (7): a declared struct or union.
    Forward {
        /// A union (`kind_flag`) rather than a struct.
        is_union: bool,
    },
    /// `BTF_KIND_TYPEDEF` (8).
    Typedef {
        /// The named type.
        target: u32,
    },
    /// `BTF_KIND_VOLATILE` (9).
    Volatile {
        /// The qualified type.
        target: u32,
    },
    /// `BTF_KIND_CONST` (10).
    Const {
        /// The qualified type.
        target: u32,
    },
    /// `BTF_KIND_RESTRICT` (11).
    Restrict {
        /// The qualified type.
        target: u32,
    },
    /// `BTF_KIND_FUNC` (12): a function's name, linkage and prototype.
    Function {
        /// The FUNC_PROTO.
        prototype: u32,
        /// Linkage: 0 static, 1 global, 2 extern.
        linkage: u16,
    },
    /// `BTF_KIND_FUNC_PROTO` (13).
    Prototype {
        /// The return type (0: `void`).
        return_type: u32,
        /// Parameters in order.
        params: Vec<BtfParam>,
    },
    /// `BTF_KIND_VAR` (14).
    Variable {
        /// Its type.
        ty: u32,
        /// Linkage.
        linkage: u32,
    },
    /// `BTF_KIND_DATASEC` (15).
    DataSection {
        /// Size in bytes.
        size: u32,
        /// Its variables.
        vars: Vec<BtfSectionVar>,
    },
    /// `BTF_KIND_FLOAT` (16).
    Float {
        /// Size in bytes.
        size: u32,
    },
    /// `BTF_KIND_DECL_TAG` (17): an attribute of a declaration.
    DeclTag {
        /// The tagged struct, union, function, variable or typedef.
        target: u32,
        /// The member or parameter index, -1 for the whole.
        component: i32,
    },
    /// `BTF_KIND_TYPE_TAG` (18): an attribute of a type, such as `user` for
    /// `__user` (kernels built with clang and a recent pahole).
    TypeTag {
        /// The tagged type.
        target: u32,
    },
}

/// One type: its name and its kind-specific part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtfType {
    /// Its name's offset in the string section (0: anonymous).
    pub name: u32,
    /// What it is.
    pub kind: BtfKind,
}

/// A parsed BTF blob: every type, the strings, and name indexes.
#[derive(Clone, Debug)]
pub struct Btf {
    /// Types by number minus one (number 0 is `void`).
    types: Vec<BtfType>,
    strings: Vec<u8>,
    /// Type numbers by name, for the kinds looked up by name.
    by_name: HashMap<String, Vec<u32>>,
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    /// Parses BTF bytes (the whole of `/sys/kernel/btf/vmlinux`, or a `.BTF`
    /// section).
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let truncated = |what: &str| BtfError::Truncated(what.to_string());
        let magic = u16_at(data, 0).ok_or_else(|| truncated("no header"))?;
        if magic == MAGIC.swap_bytes() {
            return Err(BtfError::BigEndian);
        }
        if magic != MAGIC {
            return Err(BtfError::Magic(magic));
        }
        let version = *data.get(2).ok_or_else(|| truncated("header"))?;
        if version != VERSION {
            return Err(BtfError::Version(version));
        }
        let header_len = u32_at(data, 4).ok_or_else(|| truncated("header"))? as usize;
        if header_len < MIN_HEADER || header_len > data.len() {
            return Err(truncated(&format!("header length {header_len}")));
        }
        let field = |at: usize| u32_at(data, at).map(|v| v as usize);
        let (Some(type_off), Some(type_len), Some(str_off), Some(str_len)) =
            (field(8), field(12), field(16), field(20))
        else {
            return Err(truncated("header"));
        };
        let body = &data[header_len..];
        let section = |off: usize, len: usize, what: &str| {
            off.checked_add(len)
                .and_then(|end| body.get(off..end))
                .ok_or_else(|| {
                    truncated(&format!(
                        "{what} section at {off} of {len} bytes, past the data"
                    ))
                })
        };
        let type_data = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?.to_vec();
        let mut types = Vec::new();
        let mut at = 0;
        while at < type_data.len() {
            let id = types.len() as u32 + 1;
            let (ty, next) = parse_type(type_data, at, id)?;
            types.push(ty);
            at = next;
        }
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (index, ty) in btf.types.iter().enumerate() {
            if ty.name != 0 {
                by_name
                    .entry(btf.string(ty.name).to_string())
                    .or_default()
                    .push(index as u32 + 1);
            }
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    /// The number of types (the highest type number).
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether there is no type.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// The type numbered `id`; `None` for 0 (`void`) and unknown numbers.
    pub fn get(&self, id: u32) -> Option<&BtfType> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// The string at `offset` in the string section ("" when out of range).
    pub fn string(&self, offset: u32) -> &str {
        let Some(rest) = self.strings.get(offset as usize..) else {
            return "";
        };
        let end = rest
            .iter()
            .position(|byte| *byte == 0)
            .unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// A type's name ("" when anonymous).
    pub fn name(&self, id: u32) -> &str {
        self.get(id).map_or("", |ty| self.string(ty.name))
    }

    /// The types called `name`, in number order.
    pub fn named(&self, name: &str) -> &[u32] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }

    /// Every type with its number.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &BtfType)> {
        self.types
            .iter()
            .enumerate()
            .map(|(index, ty)| (index as u32 + 1, ty))
    }

    /// Follows typedefs, qualifiers and type tags to the type they stand for.
    pub fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..64 {
            match self.get(id).map(|ty| &ty.kind) {
                Some(
                    BtfKind::Typedef { target }
                    | BtfKind::Volatile { target }
                    | BtfKind::Const { target }
                    | BtfKind::Restrict { target }
                    | BtfKind::TypeTag { target },
                ) => id = *target,
                _ => return id,
            }
        }
        id
    }

    /// The size in bytes of a value of type `id`, where it has one (`None` for
    /// `void`, functions, forward declarations and unknown numbers).
    pub fn size_of(&self, id: u32) -> Option<u64> {
        let id = self.strip(id);
        match &self.get(id)?.kind {
            BtfKind::Int { size, .. }
            | BtfKind::Struct { size, .. }
            | BtfKind::Union { size, .. }
            | BtfKind::Enum { size, .. }
            | BtfKind::Float { size }
            | BtfKind::DataSection { size, .. } => Some(u64::from(*size)),
            BtfKind::Pointer { .. } => Some(8),
            BtfKind::Array { element, count, .. } => {
                Some(self.size_of(*element)? * u64::from(*count))
            }
            _ => None,
        }
    }

    /// The FUNC types called `name`.
    pub fn functions(&self, name: &str) -> impl Iterator<Item = u32> + '_ {
        self.named(name).iter().copied().filter(|id| {
            matches!(
                self.get(*id).map(|ty| &ty.kind),
                Some(BtfKind::Function { .. })
            )
        })
    }
}

/// Decodes the type at `at`: the type and where the next one starts.
fn parse_type(data: &[u8], at: usize, id: u32) -> Result<(BtfType, usize), BtfError> {
    let truncated = || BtfError::Truncated(format!("type {id} at byte {at} of the type section"));
    let word = |offset: usize| u32_at(data, at + offset).ok_or_else(truncated);
    let name = word(0)?;
    let info = word(4)?;
    let size_or_type = word(8)?;
    let vlen = (info & 0xffff) as usize;
    let kind = ((info >> 24) & 0x1f) as u8;
    let kind_flag = info >> 31 == 1;
    let extra = at + 12;
    // The kind-specific data: `count` items of `item` bytes each.
    let items = |item: usize| -> Result<Vec<&[u8]>, BtfError> {
        let end = extra
            .checked_add(vlen * item)
            .filter(|end| *end <= data.len())
            .ok_or_else(truncated)?;
        Ok(data[extra..end].chunks_exact(item).collect())
    };
    let item_word = |item: &[u8], offset: usize| {
        u32::from_le_bytes(item[offset..offset + 4].try_into().unwrap_or([0; 4]))
    };
    let (kind, length) = match kind {
        1 => {
            let encoding = word(12)?;
            (
                BtfKind::Int {
                    size: size_or_type,
                    encoding: IntEncoding {
                        signed: encoding >> 24 & 1 != 0,
                        char: encoding >> 24 & 2 != 0,
                        boolean: encoding >> 24 & 4 != 0,
                    },
                    bit_offset: (encoding >> 16) as u8,
                    bits: encoding as u8,
                },
                4,
            )
        }
        2 => (
            BtfKind::Pointer {
                target: size_or_type,
            },
            0,
        ),
        3 => (
            BtfKind::Array {
                element: word(12)?,
                index: word(16)?,
                count: word(20)?,
            },
            12,
        ),
        4 | 5 => {
            let members = items(12)?
                .into_iter()
                .map(|item| {
                    let offset = item_word(item, 8);
                    let (bit_offset, bitfield_size) = if kind_flag {
                        (offset & 0xff_ffff, (offset >> 24) as u8)
                    } else {
                        (offset, 0)
                    };
                    BtfMember {
                        name: item_word(item, 0),
                        ty: item_word(item, 4),
                        bit_offset,
                        bitfield_size,
                    }
                })
                .collect();
            let kind = if kind == 4 {
                BtfKind::Struct {
                    size: size_or_type,
                    members,
                }
            } else {
                BtfKind::Union {
                    size: size_or_type,
                    members,
                }
            };
            (kind, vlen * 12)
        }
        6 => {
            let enumerators = items(8)?
                .into_iter()
                .map(|item| {
                    let raw = item_word(item, 4);
                    BtfEnumerator {
                        name: item_word(item, 0),
                        value: if kind_flag {
                            i64::from(raw as i32)
                        } else {
                            i64::from(raw)
                        },
                    }
                })
                .collect();
            (
                BtfKind::Enum {
                    size: size_or_type,
                    signed: kind_flag,
                    enumerators,
                    is_64: false,
                },
                vlen * 8,
            )
        }
        19 => {
            let enumerators = items(12)?
                .into_iter()
                .map(|item| BtfEnumerator {
                    name: item_word(item, 0),
                    value: (u64::from(item_word(item, 8)) << 32 | u64::from(item_word(item, 4)))
                        as i64,
                })
                .collect();
            (
                BtfKind::Enum {
                    size: size_or_type,
                    signed: kind_flag,
                    enumerators,
                    is_64: true,
                },
                vlen * 12,
            )
        }
        7 => (
            BtfKind::Forward {
                is_union: kind_flag,
            },
            0,
        ),
        8 => (
            BtfKind::Typedef {
                target: size_or_type,
            },
            0,
        ),
        9 => (
            BtfKind::Volatile {
                target: size_or_type,
            },
            0,
        ),
        10 => (
            BtfKind::Const {
                target: size_or_type,
            },
            0,
        ),
        11 => (
            BtfKind::Restrict {
                target: size_or_type,
            },
            0,
        ),
        12 => (
            BtfKind::Function {
                prototype: size_or_type,
                linkage: vlen as u16,
            },
            0,
        ),
        13 => {
            let params = items(8)?
                .into_iter()
                .map(|item| BtfParam {
                    name: item_word(item, 0),
                    ty: item_word(item, 4),
                })
                .collect();
            (
                BtfKind::Prototype {
                    return_type: size_or_type,
                    params,
                },
                vlen * 8,
            )
        }
        14 => (
            BtfKind::Variable {
                ty: size_or_type,
                linkage: word(12)?,
            },
            4,
        ),
        15 => {
            let vars = items(12)?
                .into_iter()
                .map(|item| BtfSectionVar {
                    ty: item_word(item, 0),
                    offset: item_word(item, 4),
                    size: item_word(item, 8),
                })
                .collect();
            (
                BtfKind::DataSection {
                    size: size_or_type,
                    vars,
                },
                vlen * 12,
            )
        }
        16 => (BtfKind::Float { size: size_or_type }, 0),
        17 => (
            BtfKind::DeclTag {
                target: size_or_type,
                component: word(12)? as i32,
            },
            4,
        ),
        18 => (
            BtfKind::TypeTag {
                target: size_or_type,
            },
            0,
        ),
        kind => return Err(BtfError::UnknownKind { id, kind }),
    };
    let next = extra + length;
    if next > data.len() {
        return Err(truncated());
    }
    Ok((BtfType { name, kind }, next))
}

#[cfg(test)]
mod tests;
