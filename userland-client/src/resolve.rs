//! The bridge from the language to the kernel: `lang::Resolver` over the kernel's
//! ELF and DWARF ([`Kernel`]) and the marker table the running stub announced.
//!
//! # Design
//!
//! The compiler asks in its own plain terms (functions, instruction bytes,
//! variables, types, markers); [`DwarfResolver`] answers from [`Kernel`] and maps
//! one model onto the other, one to one:
//!
//! - functions: every out-of-line copy with an entry address, matched with
//!   [`lang::resolver::glob_match`] (so `"port_send"` finds
//!   `demo_kernel::ipc::ports::port_send`);
//! - instruction bytes: read from the image's executable sections and measured by
//!   decoding (iced-x86) from the start of the containing function's code range, so
//!   an address inside an instruction is refused — the stub compares these bytes
//!   with the running kernel's, so they must be exact;
//! - locations: `Value` → `Constant`, `Memory { Absolute }` → `Address`,
//!   `Memory { Register }` → `Memory`, `Computed`/`ComputedMemory` →
//!   `Computed { in_memory }`, and anything naming a register the probe context
//!   does not hold (DWARF numbers 16 and up) → `Unavailable` with the reason;
//! - types: a [`debuginfo::TypeId`] packed in 64 bits;
//!   `void` (a pointer's or typedef's missing target) has its own id, [`VOID`];
//! - forbidden text: an address between the image's `__probeport_forbidden_start`
//!   and `__probeport_forbidden_end` symbols is refused before the stub is asked;
//! - markers: the list given at construction (from `DescribeMarker` when connected;
//!   read from the image's `probeport_markers` section by [`crate::markers`] when
//!   only compiling).

use std::sync::OnceLock;

use lang::resolver::{
    self as r, BaseEncoding, Composite, Function, LocationBinary, LocationOp, Marker, NameKind,
    ResolveError, Resolver, SiteRefusal, StatementSite, TypeId, TypeInfo, TypeKind, Variable,
    glob_match,
};

use crate::debuginfo::{self, BinaryOp, ComputedOp, Kernel, Location, MemoryBase};

/// The id of `void` (no DWARF DIE has it: unit indices stay far below 2^24).
pub const VOID: TypeId = TypeId(u64::MAX);

/// Registers a handler can read from its probe context (DWARF 0..=15).
const CONTEXT_REGISTERS: u16 = 16;

/// `lang::Resolver` over a kernel's debuginfo and its stub's marker table.
pub struct DwarfResolver<'k> {
    kernel: &'k Kernel,
    markers: Vec<Marker>,
    functions: OnceLock<Vec<Function>>,
}

impl std::fmt::Debug for DwarfResolver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DwarfResolver")
            .field("kernel", &self.kernel.path())
            .field("markers", &self.markers.len())
            .finish_non_exhaustive()
    }
}

impl<'k> DwarfResolver<'k> {
    /// A resolver over `kernel` with the markers a running kernel announced (or, when
    /// not connected, the table read from the image).
    pub fn new(kernel: &'k Kernel, markers: Vec<Marker>) -> Self {
        Self {
            kernel,
            markers,
            functions: OnceLock::new(),
        }
    }

    /// Every out-of-line function copy, by entry address.
    fn all_functions(&self) -> &[Function] {
        self.functions.get_or_init(|| {
            let mut all: Vec<Function> = self
                .kernel
                .functions("*")
                .into_iter()
                .flat_map(|function| {
                    let return_type = function.return_type.map(|id| TypeId(id.to_raw()));
                    function
                        .out_of_line()
                        .map(|instance| Function {
                            name: function.name.clone(),
                            entry: instance.entry_pc,
                            size: instance.size(),
                            return_type,
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            all.sort_by(|a, b| a.entry.cmp(&b.entry).then(a.name.cmp(&b.name)));
            all.dedup_by(|a, b| a.entry == b.entry && a.name == b.name);
            all
        })
    }

    /// The function copy whose code contains `address`.
    fn function_at(&self, address: u64) -> Option<Function> {
        let (name, _) = self.kernel.code_range_at(address)?;
        let functions = self.all_functions();
        let after = functions.partition_point(|function| function.entry <= address);
        functions[..after]
            .iter()
            .rev()
            .find(|function| function.name == name)
            .cloned()
    }

    fn dwarf_type(&self, id: TypeId) -> Option<debuginfo::TypeId> {
        debuginfo::TypeId::from_raw(self.kernel, id.0)
    }
}

fn lang_type(id: Option<debuginfo::TypeId>) -> TypeId {
    id.map_or(VOID, |id| TypeId(id.to_raw()))
}

fn register(register: u16) -> Result<u8, String> {
    if register < CONTEXT_REGISTERS {
        Ok(register as u8)
    } else {
        Err(format!(
            "its value is in register {}, which a probe handler cannot read",
            debuginfo::register_name(register)
        ))
    }
}

fn binary(op: BinaryOp) -> LocationBinary {
    match op {
        BinaryOp::Add => LocationBinary::Add,
        BinaryOp::Sub => LocationBinary::Sub,
        BinaryOp::Mul => LocationBinary::Mul,
        BinaryOp::And => LocationBinary::And,
        BinaryOp::Or => LocationBinary::Or,
        BinaryOp::Xor => LocationBinary::Xor,
        BinaryOp::Shl => LocationBinary::Shl,
        BinaryOp::Shr => LocationBinary::Shr,
        BinaryOp::Shra => LocationBinary::Shra,
        BinaryOp::Eq => LocationBinary::Eq,
        BinaryOp::Ne => LocationBinary::Ne,
        BinaryOp::Lt => LocationBinary::Lt,
        BinaryOp::Le => LocationBinary::Le,
        BinaryOp::Gt => LocationBinary::Gt,
        BinaryOp::Ge => LocationBinary::Ge,
        BinaryOp::Div => LocationBinary::Div,
        BinaryOp::Mod => LocationBinary::Mod,
    }
}

fn computed(ops: &[ComputedOp]) -> Result<Vec<LocationOp>, String> {
    ops.iter()
        .map(|op| {
            Ok(match *op {
                ComputedOp::Register(number) => LocationOp::Register(register(number)?),
                ComputedOp::EntryValue(number) => LocationOp::EntryValue(register(number)?),
                ComputedOp::Constant(value) => LocationOp::Constant(value),
                ComputedOp::PlusConstant(value) => LocationOp::PlusConstant(value),
                ComputedOp::Deref(size) => LocationOp::Deref(size),
                ComputedOp::Binary(op) => LocationOp::Binary(binary(op)),
                ComputedOp::Neg => LocationOp::Neg,
                ComputedOp::Not => LocationOp::Not,
                ComputedOp::Abs => LocationOp::Abs,
                ComputedOp::Pick(depth) => LocationOp::Pick(depth),
                ComputedOp::Swap => LocationOp::Swap,
                ComputedOp::Rot => LocationOp::Rot,
                ComputedOp::Drop => LocationOp::Drop,
            })
        })
        .collect()
}

/// The language's form of a debuginfo location (module docs: the mapping).
pub fn lang_location(location: &Location) -> r::Location {
    let mapped = match location {
        Location::Register(number) => register(*number).map(r::Location::Register),
        Location::Memory {
            base: MemoryBase::Register(number),
            offset,
        } => register(*number).map(|register| r::Location::Memory {
            register,
            offset: *offset,
        }),
        Location::Memory {
            base: MemoryBase::Absolute,
            offset,
        } => Ok(r::Location::Address(*offset as u64)),
        Location::Value(value) => Ok(r::Location::Constant(*value)),
        Location::EntryValue(number) => register(*number).map(r::Location::EntryValue),
        Location::Computed(ops) => computed(ops).map(|ops| r::Location::Computed {
            ops,
            in_memory: false,
        }),
        Location::ComputedMemory(ops) => computed(ops).map(|ops| r::Location::Computed {
            ops,
            in_memory: true,
        }),
        Location::Unavailable(reason) => Err(reason.clone()),
    };
    mapped.unwrap_or_else(r::Location::Unavailable)
}

/// The window a `Jump` request may claim at `address`: how many bytes from it no
/// branch of its function lands inside (a branch to `address` itself is fine),
/// at most 255 and never past the end of the function's range. 0 — no jump — when
/// the function cannot be decoded or has an indirect jump (a jump table may land
/// anywhere in it). Branches from other functions into this one are not seen;
/// compilers emit none but to a function's entry (a split function's parts are
/// all decoded, as its ranges).
pub fn jump_window(kernel: &Kernel, address: u64) -> u8 {
    let Some(ranges) = kernel.code_ranges_at(address) else {
        return 0;
    };
    let bitness = match kernel.architecture() {
        debuginfo::Architecture::X86_64 => 64,
        _ => return 0,
    };
    let Some(own) = ranges.iter().find(|range| range.contains(&address)) else {
        return 0;
    };
    let mut window = (own.end - address).min(255);
    for range in &ranges {
        let Ok(length) = usize::try_from(range.end - range.start) else {
            return 0;
        };
        let Some(code) = kernel.code_bytes(range.start, length) else {
            return 0;
        };
        let mut decoder =
            iced_x86::Decoder::with_ip(bitness, code, range.start, iced_x86::DecoderOptions::NONE);
        while decoder.can_decode() {
            let instruction = decoder.decode();
            if instruction.is_invalid() {
                return 0;
            }
            match instruction.op0_kind() {
                iced_x86::OpKind::NearBranch16
                | iced_x86::OpKind::NearBranch32
                | iced_x86::OpKind::NearBranch64 => {
                    let target = instruction.near_branch_target();
                    if target > address && target - address < window {
                        window = target - address;
                    }
                }
                iced_x86::OpKind::Register | iced_x86::OpKind::Memory
                    if instruction.mnemonic() == iced_x86::Mnemonic::Jmp =>
                {
                    return 0;
                }
                _ => {}
            }
        }
    }
    window as u8
}

fn strip_keyword<'n>(name: &'n str, keyword: &str) -> &'n str {
    name.strip_prefix(keyword)
        .and_then(|rest| rest.strip_prefix(' '))
        .unwrap_or(name)
}

impl Resolver for DwarfResolver<'_> {
    fn functions(&self, pattern: &str) -> Vec<Function> {
        self.all_functions()
            .iter()
            .filter(|function| glob_match(pattern, &function.name))
            .cloned()
            .collect()
    }

    fn instruction(&self, address: u64) -> Result<Vec<u8>, SiteRefusal> {
        if let Some(forbidden) = self.kernel.forbidden_text()
            && forbidden.contains(&address)
        {
            return Err(SiteRefusal::Forbidden(format!(
                "trap path and probe stub, {:#x}..{:#x}",
                forbidden.start, forbidden.end
            )));
        }
        let Some((_, range)) = self.kernel.code_range_at(address) else {
            return Err(SiteRefusal::NoCode);
        };
        let length = usize::try_from(range.end - range.start).map_err(|_| SiteRefusal::NoCode)?;
        let code = self
            .kernel
            .code_bytes(range.start, length)
            .ok_or(SiteRefusal::NoCode)?;
        let bitness = match self.kernel.architecture() {
            debuginfo::Architecture::X86_64 => 64,
            debuginfo::Architecture::I386 => 32,
            other => {
                return Err(SiteRefusal::Forbidden(format!(
                    "instructions of {other:?} cannot be decoded yet"
                )));
            }
        };
        let mut decoder =
            iced_x86::Decoder::with_ip(bitness, code, range.start, iced_x86::DecoderOptions::NONE);
        while decoder.can_decode() {
            let start = decoder.ip();
            let instruction = decoder.decode();
            if instruction.is_invalid() {
                return Err(SiteRefusal::Forbidden(format!(
                    "the bytes at {start:#x}, on the way from {:#x}, decode to no instruction",
                    range.start
                )));
            }
            if start == address {
                let offset = (start - range.start) as usize;
                return Ok(code[offset..offset + instruction.len()].to_vec());
            }
            if start > address {
                break;
            }
        }
        Err(SiteRefusal::NotInstructionBoundary)
    }

    fn statements(&self, file: &str, line: u32) -> Result<Vec<StatementSite>, ResolveError> {
        Ok(self
            .kernel
            .addresses_for_line(file, u64::from(line))
            .into_iter()
            .filter_map(|address| {
                Some(StatementSite {
                    address,
                    function: self.function_at(address)?,
                })
            })
            .collect())
    }

    fn variables(&self, function: &Function, address: u64) -> Result<Vec<Variable>, ResolveError> {
        if address < function.entry
            || function.size != 0 && address >= function.entry + function.size
        {
            return Err(ResolveError {
                message: format!("{address:#x} is outside {}", function.name),
            });
        }
        let mut variables: Vec<Variable> = self
            .kernel
            .variables_at(address)
            .into_iter()
            .map(|variable| Variable {
                name: variable.name,
                kind: match variable.kind {
                    debuginfo::VariableKind::Parameter => r::VariableKind::Parameter,
                    debuginfo::VariableKind::Local => r::VariableKind::Local,
                },
                ty: lang_type(variable.type_id),
                location: lang_location(&variable.location),
            })
            .collect();
        // Parameters first (a stable sort keeps each kind's order).
        variables.sort_by_key(|variable| variable.kind == r::VariableKind::Local);
        Ok(variables)
    }

    fn markers(&self, pattern: &str) -> Vec<Marker> {
        self.markers
            .iter()
            .filter(|marker| glob_match(pattern, &marker.name))
            .cloned()
            .collect()
    }

    fn find_type(&self, kind: TypeKind, name: &str) -> Option<TypeId> {
        let wanted = |ty: &debuginfo::Type| match kind {
            TypeKind::Struct => matches!(ty.kind, debuginfo::TypeKind::Struct { .. }),
            TypeKind::Union => matches!(ty.kind, debuginfo::TypeKind::Union { .. }),
            TypeKind::Enum => matches!(ty.kind, debuginfo::TypeKind::Enum { .. }),
            TypeKind::Named => true,
        };
        let keyword = match kind {
            TypeKind::Struct => Some("struct"),
            TypeKind::Union => Some("union"),
            TypeKind::Enum => Some("enum"),
            TypeKind::Named => None,
        };
        // C names carry the keyword; Rust types are named by path alone.
        keyword
            .and_then(|keyword| self.kernel.type_by_name(&format!("{keyword} {name}")))
            .filter(wanted)
            .or_else(|| self.kernel.type_by_name(name).filter(wanted))
            .map(|ty| TypeId(ty.id.to_raw()))
    }

    fn type_info(&self, id: TypeId) -> Option<TypeInfo> {
        if id == VOID {
            return Some(TypeInfo::Void);
        }
        let ty = self.kernel.type_info(self.dwarf_type(id)?)?;
        let size = ty.size.unwrap_or(0);
        let members = |members: &[debuginfo::Member]| -> Vec<r::Member> {
            members
                .iter()
                .map(|member| r::Member {
                    name: member.name.clone().unwrap_or_default(),
                    offset: member.offset,
                    ty: lang_type(member.type_id),
                    bitfield: member.bitfield.map(|bits| {
                        let from_member = bits.bit_offset.saturating_sub(member.offset * 8);
                        (from_member as u8, bits.bit_size as u8)
                    }),
                })
                .collect()
        };
        let base = |encoding| TypeInfo::Base {
            name: ty.name.clone(),
            size,
            encoding,
        };
        Some(match &ty.kind {
            debuginfo::TypeKind::Void => TypeInfo::Void,
            debuginfo::TypeKind::Int { signed: true } => base(BaseEncoding::Signed),
            debuginfo::TypeKind::Int { signed: false } => base(BaseEncoding::Unsigned),
            debuginfo::TypeKind::Bool => base(BaseEncoding::Boolean),
            debuginfo::TypeKind::Char { signed: true } => base(BaseEncoding::SignedChar),
            debuginfo::TypeKind::Char { signed: false } => base(BaseEncoding::UnsignedChar),
            debuginfo::TypeKind::Float => base(BaseEncoding::Float),
            debuginfo::TypeKind::Pointer { target } => TypeInfo::Pointer {
                target: lang_type(*target),
            },
            debuginfo::TypeKind::Struct { members: list } => TypeInfo::Struct(Composite {
                name: strip_keyword(&ty.name, "struct").to_string(),
                size,
                members: members(list),
            }),
            debuginfo::TypeKind::Union { members: list } => TypeInfo::Union(Composite {
                name: strip_keyword(&ty.name, "union").to_string(),
                size,
                members: members(list),
            }),
            debuginfo::TypeKind::Array { element, count } => TypeInfo::Array {
                element: TypeId(element.to_raw()),
                count: *count,
            },
            debuginfo::TypeKind::Enum { enumerators } => TypeInfo::Enum {
                name: strip_keyword(&ty.name, "enum").to_string(),
                size,
                signed: enumerators.iter().any(|e| (e.value as i64) < 0),
                enumerators: enumerators
                    .iter()
                    .map(|e| (e.name.clone(), e.value as i64))
                    .collect(),
            },
            debuginfo::TypeKind::Typedef { target } => TypeInfo::Typedef {
                name: ty.name.clone(),
                target: lang_type(*target),
            },
            debuginfo::TypeKind::Qualified { target, .. } => TypeInfo::Qualified {
                target: lang_type(*target),
            },
            debuginfo::TypeKind::Function { .. } => TypeInfo::Function,
            debuginfo::TypeKind::Other(tag) => TypeInfo::Unsupported {
                name: ty.name.clone(),
                reason: format!("a {tag} cannot be read by a probe handler"),
            },
        })
    }

    fn user_site(
        &self,
        path: &str,
        target: &lang::resolver::UserTarget,
    ) -> Result<lang::resolver::UserSite, ResolveError> {
        crate::uprobe::user_site(path, target)
    }

    fn candidates(&self, kind: NameKind) -> Vec<String> {
        match kind {
            NameKind::Function => {
                let mut names: Vec<String> = self
                    .all_functions()
                    .iter()
                    .map(|function| function.name.clone())
                    .collect();
                names.dedup();
                names
            }
            NameKind::Marker => self.markers.iter().map(|m| m.name.clone()).collect(),
            NameKind::Type(kind) => {
                let keyword = match kind {
                    TypeKind::Struct => "struct ",
                    TypeKind::Union => "union ",
                    TypeKind::Enum => "enum ",
                    TypeKind::Named => "",
                };
                let mut names: Vec<String> = self
                    .kernel
                    .type_names()
                    .filter_map(|name| {
                        if keyword.is_empty() {
                            (!name.starts_with("struct ")
                                && !name.starts_with("union ")
                                && !name.starts_with("enum "))
                            .then(|| name.to_string())
                        } else {
                            name.strip_prefix(keyword).map(str::to_string)
                        }
                    })
                    .collect();
                names.sort();
                names
            }
        }
    }
}
