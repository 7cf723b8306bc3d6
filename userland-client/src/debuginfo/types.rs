//! A small C-like type model built from DWARF type DIEs, with sizes and member offsets.
//!
//! # Design
//!
//! A [`Type`] is one DIE: composite types refer to their parts by [`TypeId`], which
//! [`Kernel::type_info`] resolves, so recursive types (`struct ipc_kmsg *ikm_next`)
//! need no cycle handling. Names are printed the way C declares them
//! (`struct ipc_kmsg *`, `void (*)(int)`, `char [16]`); Rust types keep the names
//! rustc gave them, with the module path for named types.

use std::fmt::Write as _;

use super::{DieRef, Kernel, Reader};

/// Identifies a type DIE in the image. Cheap to copy; resolve it with
/// [`Kernel::type_info`] or name it with [`Kernel::type_name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeId(pub(crate) DieRef);

impl TypeId {
    /// The id packed in 64 bits (unit index in the high 24 bits, offset in the unit
    /// in the low 40), for handles such as `lang::resolver::TypeId`.
    pub fn to_raw(self) -> u64 {
        ((self.0.unit as u64) << 40) | (self.0.offset.0 as u64 & ((1 << 40) - 1))
    }

    /// The id [`TypeId::to_raw`] packed; `None` for a unit the image does not have.
    pub fn from_raw(kernel: &Kernel, raw: u64) -> Option<TypeId> {
        let unit = usize::try_from(raw >> 40).ok()?;
        (unit < kernel.units.len()).then_some(TypeId(DieRef {
            unit,
            offset: gimli::UnitOffset((raw & ((1 << 40) - 1)) as usize),
        }))
    }
}

/// One type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Type {
    /// This type.
    pub id: TypeId,
    /// The C-like name, e.g. `struct ipc_kmsg *` or `mach_msg_header_t`.
    pub name: String,
    /// Size in bytes, when DWARF gives or implies one.
    pub size: Option<u64>,
    /// What kind of type it is.
    pub kind: TypeKind,
}

/// The kinds of [`Type`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TypeKind {
    /// `void` (also a pointer's missing target).
    Void,
    /// An integer of `size` bytes.
    Int {
        /// Whether it is signed.
        signed: bool,
    },
    /// A boolean.
    Bool,
    /// A character type.
    Char {
        /// Whether it is signed.
        signed: bool,
    },
    /// A floating-point type.
    Float,
    /// A pointer (or reference); `None` points to `void`.
    Pointer {
        /// The pointed-to type.
        target: Option<TypeId>,
    },
    /// A structure (or class).
    Struct {
        /// Members in declaration order.
        members: Vec<Member>,
    },
    /// A union.
    Union {
        /// Members in declaration order (all at offset 0 in C).
        members: Vec<Member>,
    },
    /// An array; `count` is `None` for flexible or unknown bounds.
    Array {
        /// The element type.
        element: TypeId,
        /// The number of elements of the first dimension.
        count: Option<u64>,
    },
    /// An enumeration.
    Enum {
        /// The named values.
        enumerators: Vec<Enumerator>,
    },
    /// A typedef of `target` (`None` for `void`).
    Typedef {
        /// The aliased type.
        target: Option<TypeId>,
    },
    /// `const`, `volatile`, `restrict` or `_Atomic` applied to `target`.
    Qualified {
        /// The qualifier's C keyword.
        qualifier: &'static str,
        /// The qualified type (`None` for `void`).
        target: Option<TypeId>,
    },
    /// A function type (the target of a function pointer).
    Function {
        /// The return type; `None` is `void`.
        return_type: Option<TypeId>,
        /// Parameter types.
        parameters: Vec<TypeId>,
        /// Whether it takes `...`.
        variadic: bool,
    },
    /// Any other DWARF tag (e.g. Rust's variant parts), by its tag name.
    Other(String),
}

/// A member of a struct or union.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The name; `None` for an anonymous struct or union member.
    pub name: Option<String>,
    /// Byte offset from the start of the enclosing type (of the containing storage
    /// unit's first byte, for a bitfield).
    pub offset: u64,
    /// The member's type.
    pub type_id: Option<TypeId>,
    /// Set for bitfields.
    pub bitfield: Option<Bitfield>,
}

/// The position of a bitfield member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bitfield {
    /// Offset in bits from the start of the enclosing type (little-endian bit order).
    pub bit_offset: u64,
    /// Width in bits.
    pub bit_size: u64,
}

/// A named value of an enumeration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enumerator {
    /// The name.
    pub name: String,
    /// The value (sign-extended values are stored as their two's complement).
    pub value: u64,
}

impl Kernel {
    /// Finds a type by its C name: `struct ipc_kmsg`, `union x`, `enum x`, a typedef
    /// (`mach_msg_header_t`) or a base type (`unsigned int`); for Rust, the full path
    /// (`demo_kernel::ipc::ports::Port`) or the bare name. A complete definition with
    /// members wins over an empty one.
    pub fn type_by_name(&self, name: &str) -> Option<Type> {
        let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
        let candidates = self.index.types_by_name.get(&name)?;
        let mut best: Option<Type> = None;
        for id in candidates {
            let Some(candidate) = self.type_info(*id) else {
                continue;
            };
            let has_members = matches!(
                &candidate.kind,
                TypeKind::Struct { members } | TypeKind::Union { members } if !members.is_empty()
            );
            if has_members || candidate.size.is_some() && best.is_none() {
                if has_members {
                    return Some(candidate);
                }
                best = Some(candidate);
            } else if best.is_none() {
                best = Some(candidate);
            }
        }
        best
    }

    /// Every name [`Kernel::type_by_name`] knows (`struct x`, typedef names, Rust
    /// paths), unsorted.
    pub fn type_names(&self) -> impl Iterator<Item = &str> {
        self.index.types_by_name.keys().map(String::as_str)
    }

    /// Resolves a [`TypeId`] to its [`Type`].
    pub fn type_info(&self, id: TypeId) -> Option<Type> {
        let entry = self.entry(id.0)?;
        let unit = &self.units[id.0.unit].unit;
        let size = entry
            .attr_value(gimli::DW_AT_byte_size)
            .ok()
            .flatten()
            .and_then(|value| value.udata_value());
        let target = self.type_attribute(id.0);
        let children = || self.children(id.0);
        let kind = match entry.tag() {
            gimli::DW_TAG_base_type => {
                let encoding = match entry.attr_value(gimli::DW_AT_encoding).ok().flatten() {
                    Some(gimli::AttributeValue::Encoding(encoding)) => encoding,
                    _ => gimli::DW_ATE_signed,
                };
                match encoding {
                    gimli::DW_ATE_boolean => TypeKind::Bool,
                    gimli::DW_ATE_signed_char => TypeKind::Char { signed: true },
                    gimli::DW_ATE_unsigned_char | gimli::DW_ATE_UTF => {
                        TypeKind::Char { signed: false }
                    }
                    gimli::DW_ATE_float => TypeKind::Float,
                    gimli::DW_ATE_unsigned => TypeKind::Int { signed: false },
                    _ => TypeKind::Int { signed: true },
                }
            }
            gimli::DW_TAG_unspecified_type => TypeKind::Void,
            gimli::DW_TAG_pointer_type
            | gimli::DW_TAG_reference_type
            | gimli::DW_TAG_rvalue_reference_type => TypeKind::Pointer { target },
            gimli::DW_TAG_structure_type | gimli::DW_TAG_class_type => TypeKind::Struct {
                members: self.members(&children()),
            },
            gimli::DW_TAG_union_type => TypeKind::Union {
                members: self.members(&children()),
            },
            gimli::DW_TAG_array_type => {
                let count = children().iter().find_map(|child| {
                    let child = self.entry(*child)?;
                    if child.tag() != gimli::DW_TAG_subrange_type {
                        return None;
                    }
                    if let Some(count) = child
                        .attr_value(gimli::DW_AT_count)
                        .ok()
                        .flatten()
                        .and_then(|value| value.udata_value())
                    {
                        return Some(count);
                    }
                    let upper = child.attr_value(gimli::DW_AT_upper_bound).ok().flatten()?;
                    let lower = child
                        .attr_value(gimli::DW_AT_lower_bound)
                        .ok()
                        .flatten()
                        .and_then(|value| value.udata_value())
                        .unwrap_or(0);
                    match upper {
                        // GCC writes `-1` (as data) for flexible arrays.
                        gimli::AttributeValue::Sdata(-1) => None,
                        gimli::AttributeValue::Data1(0xff) => None,
                        value => Some(value.udata_value()?.wrapping_sub(lower).wrapping_add(1)),
                    }
                });
                TypeKind::Array {
                    element: target?,
                    count,
                }
            }
            gimli::DW_TAG_enumeration_type => TypeKind::Enum {
                enumerators: children()
                    .iter()
                    .filter_map(|child| {
                        let entry = self.entry(*child)?;
                        if entry.tag() != gimli::DW_TAG_enumerator {
                            return None;
                        }
                        let value = match entry.attr_value(gimli::DW_AT_const_value).ok()?? {
                            gimli::AttributeValue::Sdata(value) => value as u64,
                            value => value.udata_value()?,
                        };
                        Some(Enumerator {
                            name: self.string_attribute(*child, gimli::DW_AT_name)?,
                            value,
                        })
                    })
                    .collect(),
            },
            gimli::DW_TAG_typedef => TypeKind::Typedef { target },
            gimli::DW_TAG_const_type => TypeKind::Qualified {
                qualifier: "const",
                target,
            },
            gimli::DW_TAG_volatile_type => TypeKind::Qualified {
                qualifier: "volatile",
                target,
            },
            gimli::DW_TAG_restrict_type => TypeKind::Qualified {
                qualifier: "restrict",
                target,
            },
            gimli::DW_TAG_atomic_type => TypeKind::Qualified {
                qualifier: "_Atomic",
                target,
            },
            gimli::DW_TAG_subroutine_type => {
                let mut parameters = Vec::new();
                let mut variadic = false;
                for child in children() {
                    match self.entry(child).map(|entry| entry.tag()) {
                        Some(gimli::DW_TAG_formal_parameter) => {
                            if let Some(parameter) = self.type_attribute(child) {
                                parameters.push(parameter);
                            }
                        }
                        Some(gimli::DW_TAG_unspecified_parameters) => variadic = true,
                        _ => {}
                    }
                }
                TypeKind::Function {
                    return_type: target,
                    parameters,
                    variadic,
                }
            }
            tag => TypeKind::Other(tag.static_string().unwrap_or("DW_TAG_unknown").to_owned()),
        };
        let size = size.or_else(|| match &kind {
            TypeKind::Pointer { .. } => Some(u64::from(unit.encoding().address_size)),
            TypeKind::Typedef {
                target: Some(target),
            }
            | TypeKind::Qualified {
                target: Some(target),
                ..
            } => self.type_info(*target).and_then(|target| target.size),
            TypeKind::Array {
                element,
                count: Some(count),
            } => self
                .type_info(*element)
                .and_then(|element| element.size)
                .map(|size| size * count),
            _ => None,
        });
        Some(Type {
            id,
            name: self.type_name(id),
            size,
            kind,
        })
    }

    /// The C-like name of a type (`struct ipc_kmsg *`, `unsigned int`, `void (*)(int)`).
    pub fn type_name(&self, id: TypeId) -> String {
        self.declarator(Some(id), String::new(), 0)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    pub fn strip_typedefs(&self, id: TypeId) -> Option<TypeId> {
        let mut current = id;
        for _ in 0..32 {
            match self.type_info(current)?.kind {
                TypeKind::Typedef { target } | TypeKind::Qualified { target, .. } => {
                    current = target?;
                }
                _ => return Some(current),
            }
        }
        None
    }

    /// Looks a member up by name in a struct or union, through typedefs and anonymous
    /// struct/union members. The returned member's offset is from the start of `id`.
    pub fn member(&self, id: TypeId, name: &str) -> Option<Member> {
        let underlying = self.type_info(self.strip_typedefs(id)?)?;
        let (TypeKind::Struct { members } | TypeKind::Union { members }) = underlying.kind else {
            return None;
        };
        for member in &members {
            if member.name.as_deref() == Some(name) {
                return Some(member.clone());
            }
        }
        for member in members.iter().filter(|member| member.name.is_none()) {
            if let Some(mut inner) = member.type_id.and_then(|inner| self.member(inner, name)) {
                inner.offset += member.offset;
                if let Some(bitfield) = &mut inner.bitfield {
                    bitfield.bit_offset += member.offset * 8;
                }
                return Some(inner);
            }
        }
        None
    }

    /// The children of a DIE, in order.
    pub(crate) fn children(&self, die: DieRef) -> Vec<DieRef> {
        let unit = &self.units[die.unit].unit;
        let mut result = Vec::new();
        let Ok(mut tree) = unit.entries_tree(Some(die.offset)) else {
            return result;
        };
        let Ok(root) = tree.root() else {
            return result;
        };
        let mut children = root.children();
        while let Ok(Some(child)) = children.next() {
            result.push(DieRef {
                unit: die.unit,
                offset: child.entry().offset(),
            });
        }
        result
    }

    fn members(&self, children: &[DieRef]) -> Vec<Member> {
        children
            .iter()
            .filter_map(|child| {
                let entry = self.entry(*child)?;
                if entry.tag() != gimli::DW_TAG_member {
                    return None;
                }
                let unit = &self.units[child.unit].unit;
                Some(self.member_of(*child, &entry, unit))
            })
            .collect()
    }

    fn member_of(
        &self,
        die: DieRef,
        entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>,
        unit: &gimli::Unit<Reader>,
    ) -> Member {
        let attr = |name| entry.attr_value(name).ok().flatten();
        let byte_offset = match attr(gimli::DW_AT_data_member_location) {
            Some(gimli::AttributeValue::Exprloc(expression)) => {
                // DWARF 2 style: DW_OP_plus_uconst N.
                let mut reader = expression.0;
                match gimli::Operation::parse(&mut reader, unit.encoding()) {
                    Ok(gimli::Operation::PlusConstant { value }) => Some(value),
                    Ok(gimli::Operation::UnsignedConstant { value }) => Some(value),
                    _ => None,
                }
            }
            Some(value) => value.udata_value(),
            None => None,
        };
        let bit_size = attr(gimli::DW_AT_bit_size).and_then(|value| value.udata_value());
        let data_bit_offset = attr(gimli::DW_AT_data_bit_offset).and_then(|v| v.udata_value());
        let (offset, bitfield) = match (bit_size, data_bit_offset) {
            (Some(bit_size), Some(bit_offset)) => (
                byte_offset.unwrap_or(bit_offset / 8),
                Some(Bitfield {
                    bit_offset,
                    bit_size,
                }),
            ),
            (Some(bit_size), None) => {
                // DWARF 2/3: DW_AT_bit_offset counts from the most significant bit of
                // the storage unit of DW_AT_byte_size bytes.
                let base = byte_offset.unwrap_or(0);
                let storage = attr(gimli::DW_AT_byte_size)
                    .and_then(|value| value.udata_value())
                    .unwrap_or(4);
                let bit_offset = match attr(gimli::DW_AT_bit_offset).and_then(|v| v.udata_value()) {
                    Some(from_msb) => base * 8 + (storage * 8).saturating_sub(from_msb + bit_size),
                    None => base * 8,
                };
                (
                    base,
                    Some(Bitfield {
                        bit_offset,
                        bit_size,
                    }),
                )
            }
            (None, _) => (byte_offset.unwrap_or(0), None),
        };
        Member {
            name: self.string_attribute(die, gimli::DW_AT_name),
            offset,
            type_id: self.type_attribute(die),
            bitfield,
        }
    }

    /// Builds a C declarator: the type `id` wrapped around `inner` (what is declared).
    fn declarator(&self, id: Option<TypeId>, inner: String, depth: usize) -> String {
        let with = |base: &str, inner: &str| -> String {
            if inner.is_empty() {
                base.to_owned()
            } else {
                format!("{base} {inner}")
            }
        };
        let Some(id) = id else {
            return with("void", &inner);
        };
        if depth > 24 {
            return with("...", &inner);
        }
        let Some(entry) = self.entry(id.0) else {
            return with("?", &inner);
        };
        let is_rust = self.units[id.0.unit].is_rust;
        let name = self.string_attribute(id.0, gimli::DW_AT_name);
        let target = self.type_attribute(id.0);
        match entry.tag() {
            gimli::DW_TAG_pointer_type
            | gimli::DW_TAG_reference_type
            | gimli::DW_TAG_rvalue_reference_type => {
                // rustc names its pointer types (`&mut demo_kernel::ipc::Port`).
                if let Some(name) = name {
                    return with(&name, &inner);
                }
                let star = if entry.tag() == gimli::DW_TAG_pointer_type {
                    "*"
                } else {
                    "&"
                };
                self.declarator(target, format!("{star}{inner}"), depth + 1)
            }
            gimli::DW_TAG_const_type
            | gimli::DW_TAG_volatile_type
            | gimli::DW_TAG_restrict_type
            | gimli::DW_TAG_atomic_type => {
                let qualifier = match entry.tag() {
                    gimli::DW_TAG_const_type => "const",
                    gimli::DW_TAG_volatile_type => "volatile",
                    gimli::DW_TAG_restrict_type => "restrict",
                    _ => "_Atomic",
                };
                let target_is_pointer = target
                    .and_then(|target| self.entry(target.0))
                    .is_some_and(|entry| entry.tag() == gimli::DW_TAG_pointer_type);
                if target_is_pointer {
                    self.declarator(target, with(qualifier, &inner), depth + 1)
                } else {
                    let target = self.declarator(target, inner, depth + 1);
                    // GCC qualifies both an array and its elements: say it once.
                    if target.starts_with(&format!("{qualifier} ")) {
                        target
                    } else {
                        format!("{qualifier} {target}")
                    }
                }
            }
            gimli::DW_TAG_array_type => {
                let mut suffix = String::new();
                for child in self.children(id.0) {
                    let Some(child_entry) = self.entry(child) else {
                        continue;
                    };
                    if child_entry.tag() != gimli::DW_TAG_subrange_type {
                        continue;
                    }
                    let count = child_entry
                        .attr_value(gimli::DW_AT_count)
                        .ok()
                        .flatten()
                        .and_then(|value| value.udata_value())
                        .or_else(|| {
                            match child_entry.attr_value(gimli::DW_AT_upper_bound).ok()?? {
                                gimli::AttributeValue::Sdata(-1) => None,
                                value => value.udata_value().map(|upper| upper + 1),
                            }
                        });
                    match count {
                        Some(count) => {
                            let _ = write!(suffix, "[{count}]");
                        }
                        None => suffix.push_str("[]"),
                    }
                }
                let inner = if inner.starts_with('*') || inner.starts_with('&') {
                    format!("({inner}){suffix}")
                } else {
                    format!("{inner}{suffix}")
                };
                self.declarator(target, inner, depth + 1)
            }
            gimli::DW_TAG_subroutine_type => {
                let mut parameters = Vec::new();
                for child in self.children(id.0) {
                    match self.entry(child).map(|entry| entry.tag()) {
                        Some(gimli::DW_TAG_formal_parameter) => parameters.push(self.declarator(
                            self.type_attribute(child),
                            String::new(),
                            depth + 1,
                        )),
                        Some(gimli::DW_TAG_unspecified_parameters) => parameters.push("...".into()),
                        _ => {}
                    }
                }
                let prototyped = matches!(
                    entry.attr_value(gimli::DW_AT_prototyped).ok().flatten(),
                    Some(gimli::AttributeValue::Flag(true))
                );
                if !is_rust && !prototyped {
                    // A K&R declaration `void (*)()` says nothing about its parameters.
                    parameters.clear();
                } else if parameters.is_empty() && !is_rust {
                    parameters.push("void".into());
                }
                let inner = if inner.starts_with('*') || inner.starts_with('&') {
                    format!("({inner})")
                } else {
                    inner
                };
                let inner = format!("{inner}({})", parameters.join(", "));
                self.declarator(target, inner, depth + 1)
            }
            tag => {
                let base = if is_rust {
                    self.index
                        .rust_type_paths
                        .get(&id.0)
                        .cloned()
                        .or(name)
                        .unwrap_or_else(|| "?".into())
                } else {
                    let keyword = match tag {
                        gimli::DW_TAG_structure_type | gimli::DW_TAG_class_type => "struct ",
                        gimli::DW_TAG_union_type => "union ",
                        gimli::DW_TAG_enumeration_type => "enum ",
                        _ => "",
                    };
                    match name {
                        Some(name) => format!("{keyword}{name}"),
                        None if keyword.is_empty() => "?".into(),
                        None => format!("{keyword}{{...}}"),
                    }
                };
                with(&base, &inner)
            }
        }
    }
}
