//! The language's types, and their construction from the resolver's.
//!
//! Kernel types come one level at a time from the [`Resolver`]; [`from_kernel`]
//! turns them into [`Type`]s, following typedefs and qualifiers and stopping at
//! structs and unions, which stay handles ([`Type::Record`]) whose members are
//! fetched when a member is named. Recursive kernel types therefore never recurse
//! here.

use std::fmt;

use crate::compiled::ValueType;
use crate::resolver::{BaseEncoding, Resolver, TypeId, TypeInfo};

/// A value's type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Type {
    /// An integer (also C enums and characters) of 1, 2, 4 or 8 bytes.
    Int {
        /// Size in bytes.
        bytes: u8,
        /// Signedness.
        signed: bool,
    },
    /// A truth value.
    Bool,
    /// A kernel pointer to a value of the given type.
    Pointer(Box<Type>),
    /// `void`, behind pointers.
    Void,
    /// A struct or union of the kernel.
    Record {
        /// Its handle.
        id: TypeId,
        /// Its name, with `struct `/`union `.
        name: String,
        /// Size in bytes.
        size: u64,
    },
    /// An array of the kernel.
    Array {
        /// The element type.
        element: Box<Type>,
        /// Element count (0 when unknown).
        count: u64,
    },
    /// A string of at most this many bytes (a NUL-padded buffer).
    Str(u16),
    /// A code address printed as a symbol.
    Symbol,
    /// An x86-64 Linux system call number, printed as the call's name.
    Syscall,
    /// A kernel stack of this many frames.
    Stack(u16),
    /// A function (behind function pointers).
    Function,
    /// A kernel type the language cannot read.
    Unsupported {
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Unsigned 64-bit.
pub const U64: Type = Type::Int {
    bytes: 8,
    signed: false,
};
/// Signed 64-bit.
pub const I64: Type = Type::Int {
    bytes: 8,
    signed: true,
};

impl Type {
    /// Size in bytes, where it has one.
    pub fn size(&self) -> u64 {
        match self {
            Type::Int { bytes, .. } => u64::from(*bytes),
            Type::Bool => 1,
            Type::Pointer(_) | Type::Symbol | Type::Syscall => 8,
            Type::Void | Type::Function | Type::Unsupported { .. } => 0,
            Type::Record { size, .. } => *size,
            Type::Array { element, count } => element.size() * count,
            Type::Str(size) => u64::from(*size),
            Type::Stack(depth) => u64::from(*depth) * 8,
        }
    }

    /// Whether it fits a register: integers, booleans, pointers, symbols.
    pub fn is_scalar(&self) -> bool {
        matches!(
            self,
            Type::Int { .. } | Type::Bool | Type::Pointer(_) | Type::Symbol | Type::Syscall
        )
    }

    /// Whether arithmetic on it is signed.
    pub fn is_signed(&self) -> bool {
        matches!(self, Type::Int { signed: true, .. })
    }

    /// Whether it is an array of bytes (a C `char[N]`, a Rust `[u8; N]`).
    pub fn is_byte_array(&self) -> bool {
        matches!(self, Type::Array { element, count } if matches!(**element, Type::Int { bytes: 1, .. }) && *count > 0)
    }

    /// How the value is carried in records and map keys.
    pub fn value_type(&self) -> Option<ValueType> {
        Some(match self {
            Type::Int { signed: true, .. } => ValueType::Signed,
            Type::Int { signed: false, .. } => ValueType::Unsigned,
            Type::Bool => ValueType::Bool,
            Type::Pointer(_) => ValueType::Pointer,
            Type::Symbol => ValueType::Symbol,
            Type::Syscall => ValueType::Syscall,
            Type::Str(size) => ValueType::Str { size: *size },
            Type::Stack(depth) => ValueType::Stack { depth: *depth },
            _ => return None,
        })
    }

    /// The type a value of `value_type` reads back as.
    pub fn from_value_type(value_type: ValueType) -> Type {
        match value_type {
            ValueType::Signed => I64,
            ValueType::Unsigned => U64,
            ValueType::Bool => Type::Bool,
            ValueType::Pointer => Type::Pointer(Box::new(Type::Void)),
            ValueType::Symbol => Type::Symbol,
            ValueType::Syscall => Type::Syscall,
            ValueType::Str { size } => Type::Str(size),
            ValueType::Stack { depth } => Type::Stack(depth),
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Int { bytes, signed } => {
                write!(
                    f,
                    "{}{}",
                    if *signed { "i" } else { "u" },
                    u32::from(*bytes) * 8
                )
            }
            Type::Bool => f.write_str("bool"),
            Type::Pointer(target) => write!(f, "{target} *"),
            Type::Void => f.write_str("void"),
            Type::Record { name, .. } => f.write_str(name),
            Type::Array { element, count } => write!(f, "{element}[{count}]"),
            Type::Str(size) => write!(f, "string[{size}]"),
            Type::Symbol => f.write_str("symbol"),
            Type::Syscall => f.write_str("syscall"),
            Type::Stack(depth) => write!(f, "kstack[{depth}]"),
            Type::Function => f.write_str("function"),
            Type::Unsupported { name, .. } => f.write_str(name),
        }
    }
}

/// How deep typedef and pointer chains may go before the type is refused (only
/// malformed debuginfo gets there).
const MAX_TYPE_DEPTH: usize = 32;

/// The language type of a kernel type.
pub fn from_kernel(resolver: &dyn Resolver, id: TypeId) -> Type {
    from_kernel_at(resolver, id, 0)
}

fn from_kernel_at(resolver: &dyn Resolver, id: TypeId, depth: usize) -> Type {
    if depth > MAX_TYPE_DEPTH {
        return Type::Unsupported {
            name: format!("type #{}", id.0),
            reason: "its typedef or pointer chain is too deep".to_string(),
        };
    }
    let Some(info) = resolver.type_info(id) else {
        return Type::Unsupported {
            name: format!("type #{}", id.0),
            reason: "the debuginfo does not describe it".to_string(),
        };
    };
    match info {
        TypeInfo::Void => Type::Void,
        TypeInfo::Base {
            name,
            size,
            encoding,
        } => match encoding {
            BaseEncoding::Boolean if size == 1 => Type::Bool,
            BaseEncoding::Float => Type::Unsupported {
                name,
                reason: "floating-point values cannot be read".to_string(),
            },
            _ if matches!(size, 1 | 2 | 4 | 8) => Type::Int {
                bytes: size as u8,
                signed: matches!(encoding, BaseEncoding::Signed | BaseEncoding::SignedChar),
            },
            _ => Type::Unsupported {
                name,
                reason: format!("integers of {size} bytes cannot be read"),
            },
        },
        TypeInfo::Pointer { target } => {
            Type::Pointer(Box::new(from_kernel_at(resolver, target, depth + 1)))
        }
        TypeInfo::Struct(composite) => Type::Record {
            id,
            name: if composite.name.is_empty() {
                "struct <anonymous>".to_string()
            } else {
                format!("struct {}", composite.name)
            },
            size: composite.size,
        },
        TypeInfo::Union(composite) => Type::Record {
            id,
            name: if composite.name.is_empty() {
                "union <anonymous>".to_string()
            } else {
                format!("union {}", composite.name)
            },
            size: composite.size,
        },
        TypeInfo::Enum {
            name, size, signed, ..
        } => {
            if matches!(size, 1 | 2 | 4 | 8) {
                Type::Int {
                    bytes: size as u8,
                    signed,
                }
            } else {
                Type::Unsupported {
                    name,
                    reason: format!("enums of {size} bytes cannot be read"),
                }
            }
        }
        TypeInfo::Typedef { target, .. } | TypeInfo::Qualified { target } => {
            from_kernel_at(resolver, target, depth + 1)
        }
        TypeInfo::Array { element, count } => Type::Array {
            element: Box::new(from_kernel_at(resolver, element, depth + 1)),
            count: count.unwrap_or(0),
        },
        TypeInfo::Function => Type::Function,
        TypeInfo::Unsupported { name, reason } => Type::Unsupported { name, reason },
    }
}

/// A member found in a struct or union.
#[derive(Clone, Debug)]
pub struct FoundMember {
    /// Byte offset from the start of the record.
    pub offset: u64,
    /// Its type.
    pub ty: Type,
    /// Bitfield position, if it is one.
    pub bitfield: Option<(u8, u8)>,
}

/// Looks `name` up in the record `id`, through anonymous members. `Err` lists the
/// member names there are, for hints.
pub fn find_member(
    resolver: &dyn Resolver,
    id: TypeId,
    name: &str,
) -> Result<FoundMember, Vec<String>> {
    let mut names = Vec::new();
    match find_member_in(resolver, id, name, 0, &mut names, 0) {
        Some(found) => Ok(found),
        None => Err(names),
    }
}

fn find_member_in(
    resolver: &dyn Resolver,
    id: TypeId,
    name: &str,
    base: u64,
    names: &mut Vec<String>,
    depth: usize,
) -> Option<FoundMember> {
    if depth > MAX_TYPE_DEPTH {
        return None;
    }
    let composite = match resolver.type_info(id)? {
        TypeInfo::Struct(composite) | TypeInfo::Union(composite) => composite,
        TypeInfo::Typedef { target, .. } | TypeInfo::Qualified { target } => {
            return find_member_in(resolver, target, name, base, names, depth + 1);
        }
        _ => return None,
    };
    for member in &composite.members {
        if member.name == name {
            return Some(FoundMember {
                offset: base + member.offset,
                ty: from_kernel(resolver, member.ty),
                bitfield: member.bitfield,
            });
        }
        if member.name.is_empty() {
            if let Some(found) = find_member_in(
                resolver,
                member.ty,
                name,
                base + member.offset,
                names,
                depth + 1,
            ) {
                return Some(found);
            }
        } else {
            names.push(member.name.clone());
        }
    }
    None
}
