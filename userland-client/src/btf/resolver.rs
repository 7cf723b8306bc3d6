//! The compiler's questions about a kernel answered from its BTF, for kernel
//! functions the stub resolves by symbol (PROTOCOL.md §8.10).
//!
//! # Design
//!
//! Sites stay symbol sites: [`BtfResolver::kernel_symbols`] is true, so
//! `kernel.function("name")` still names the function for the kernel to find. What
//! BTF adds is the function's prototype (its FUNC entry of the same exact name) and
//! every type, so parameters, members, casts and `@entry(...)` work as with DWARF.
//!
//! BTF has no locations. At a function's entry the System V x86-64 calling
//! convention places the first six integer-class arguments of at most 8 bytes in
//! `rdi`, `rsi`, `rdx`, `rcx`, `r8`, `r9`, in order — which is where the parameters
//! are at `kernel.function("name")` (offset 0) and, through `@entry`, at `.return`.
//! Anything the client does not model exactly is reported unavailable with the
//! reason instead of guessed: a parameter past the sixth (on the stack), a struct,
//! union or floating-point parameter (its registers depend on its members'
//! classes), and every parameter after one of those (its register would shift).
//! Variables past the entry (`name+offset`) are not known: the registers may have
//! been reused.
//!
//! Type numbers are BTF's own, as [`TypeId`]s (0 is `void`).

use lang::resolver::{
    BaseEncoding, Composite, Function, Location, Marker, Member, NameKind, ResolveError, Resolver,
    SiteRefusal, StatementSite, TypeId, TypeInfo, TypeKind, UserSite, UserTarget, Variable,
    VariableKind, glob_match, is_glob,
};

use super::{Btf, BtfKind, BtfMember, BtfParam};

/// The DWARF numbers (context slots) of the argument registers, in order: `rdi`,
/// `rsi`, `rdx`, `rcx`, `r8`, `r9`.
const ARGUMENT_REGISTERS: [u8; 6] = [5, 4, 1, 2, 8, 9];
const REGISTER_NAMES: [&str; 6] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];

/// A resolver answering from BTF (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct BtfResolver<'b> {
    btf: &'b Btf,
}

impl<'b> BtfResolver<'b> {
    /// A resolver over `btf`.
    pub fn new(btf: &'b Btf) -> Self {
        BtfResolver { btf }
    }

    /// The prototype's parameters of the FUNC entries called `name`; an error when
    /// there are several with different parameters (static functions of different
    /// files share a name; the kernel probes whichever its symbol table finds).
    fn parameters(&self, name: &str) -> Result<Option<Vec<BtfParam>>, String> {
        let mut found: Option<Vec<BtfParam>> = None;
        let mut count = 0;
        for id in self.btf.functions(name) {
            count += 1;
            let Some(BtfKind::Function { prototype, .. }) = self.btf.get(id).map(|ty| &ty.kind)
            else {
                continue;
            };
            let Some(BtfKind::Prototype { params, .. }) =
                self.btf.get(*prototype).map(|ty| &ty.kind)
            else {
                continue;
            };
            match &found {
                None => found = Some(params.clone()),
                Some(previous) if !self.same_parameters(previous, params) => {
                    return Err(format!(
                        "the kernel's BTF has {count} or more functions called `{name}` with \
                         different parameters (static functions of different files); the \
                         kernel probes the one its symbol table finds first, which BTF \
                         cannot tell"
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(found)
    }

    fn same_parameters(&self, a: &[BtfParam], b: &[BtfParam]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(a, b)| {
                self.btf.string(a.name) == self.btf.string(b.name)
                    && self.type_name(a.ty) == self.type_name(b.ty)
            })
    }

    /// A type as C spells it, for comparisons and messages.
    pub fn type_name(&self, id: u32) -> String {
        self.type_name_at(id, 0)
    }

    fn type_name_at(&self, id: u32, depth: usize) -> String {
        if depth > 16 {
            return "...".to_string();
        }
        let Some(ty) = self.btf.get(id) else {
            return "void".to_string();
        };
        let name = self.btf.string(ty.name);
        match &ty.kind {
            BtfKind::Int { .. } | BtfKind::Float { .. } | BtfKind::Typedef { .. } => {
                name.to_string()
            }
            BtfKind::Struct { .. } => format!("struct {name}"),
            BtfKind::Union { .. } => format!("union {name}"),
            BtfKind::Enum { .. } => format!("enum {name}"),
            BtfKind::Forward { is_union } => {
                format!("{} {name}", if *is_union { "union" } else { "struct" })
            }
            BtfKind::Pointer { target } => format!("{} *", self.type_name_at(*target, depth + 1)),
            BtfKind::Array { element, count, .. } => {
                format!("{}[{count}]", self.type_name_at(*element, depth + 1))
            }
            BtfKind::Const { target } => format!("const {}", self.type_name_at(*target, depth + 1)),
            BtfKind::Volatile { target } => {
                format!("volatile {}", self.type_name_at(*target, depth + 1))
            }
            BtfKind::Restrict { target } => self.type_name_at(*target, depth + 1),
            BtfKind::TypeTag { target } => {
                format!("{} __{name}", self.type_name_at(*target, depth + 1))
            }
            BtfKind::Prototype { .. } | BtfKind::Function { .. } => "function".to_string(),
            _ => name.to_string(),
        }
    }

    fn member(&self, member: &BtfMember) -> Member {
        let mut bitfield = (member.bitfield_size != 0)
            .then_some(((member.bit_offset % 8) as u8, member.bitfield_size));
        // Without `kind_flag`, a bitfield's width is its INT's.
        if bitfield.is_none()
            && let Some(BtfKind::Int { size, bits, .. }) =
                self.btf.get(member.ty).map(|ty| &ty.kind)
            && (u32::from(*bits) < size * 8 || !member.bit_offset.is_multiple_of(8))
        {
            bitfield = Some(((member.bit_offset % 8) as u8, *bits));
        }
        Member {
            name: self.btf.string(member.name).to_string(),
            offset: u64::from(member.bit_offset / 8),
            ty: TypeId(u64::from(member.ty)),
            bitfield,
        }
    }

    /// How a parameter of type `ty` is passed: `Ok(())` in one integer register,
    /// or why the client does not model it.
    fn register_class(&self, ty: u32) -> Result<(), String> {
        let stripped = self.btf.strip(ty);
        match self.btf.get(stripped).map(|ty| &ty.kind) {
            Some(BtfKind::Int { size, .. } | BtfKind::Enum { size, .. }) if *size <= 8 => Ok(()),
            Some(BtfKind::Pointer { .. }) => Ok(()),
            Some(BtfKind::Int { size, .. }) => Err(format!(
                "it is a {size}-byte integer, passed in two registers, which cannot be read yet"
            )),
            Some(BtfKind::Float { .. }) => {
                Err("it is a floating-point value, passed in an SSE register".to_string())
            }
            Some(BtfKind::Struct { size, .. } | BtfKind::Union { size, .. }) => Err(format!(
                "it is a {size}-byte `{}` passed by value, whose registers depend on its \
                 members' classes",
                self.type_name(ty)
            )),
            _ => Err(format!(
                "its type `{}` is not passed in a register",
                self.type_name(ty)
            )),
        }
    }

    fn type_names(&self, kind: TypeKind) -> Vec<String> {
        let mut names: Vec<String> = self
            .btf
            .iter()
            .filter(|(_, ty)| ty.name != 0 && matches_kind(&ty.kind, kind))
            .map(|(_, ty)| self.btf.string(ty.name).to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

fn matches_kind(kind: &BtfKind, wanted: TypeKind) -> bool {
    match wanted {
        TypeKind::Struct => matches!(
            kind,
            BtfKind::Struct { .. } | BtfKind::Forward { is_union: false }
        ),
        TypeKind::Union => matches!(
            kind,
            BtfKind::Union { .. } | BtfKind::Forward { is_union: true }
        ),
        TypeKind::Enum => matches!(kind, BtfKind::Enum { .. }),
        TypeKind::Named => matches!(
            kind,
            BtfKind::Typedef { .. } | BtfKind::Int { .. } | BtfKind::Float { .. }
        ),
    }
}

impl Resolver for BtfResolver<'_> {
    fn functions(&self, pattern: &str) -> Vec<Function> {
        let function = |id: u32| -> Option<Function> {
            let ty = self.btf.get(id)?;
            let BtfKind::Function { prototype, .. } = &ty.kind else {
                return None;
            };
            let return_type = match self.btf.get(*prototype).map(|ty| &ty.kind) {
                Some(BtfKind::Prototype { return_type, .. }) if *return_type != 0 => {
                    Some(TypeId(u64::from(*return_type)))
                }
                _ => None,
            };
            Some(Function {
                name: self.btf.string(ty.name).to_string(),
                // BTF has no addresses: the kernel resolves the name.
                entry: 0,
                size: 0,
                return_type,
            })
        };
        if is_glob(pattern) {
            let mut functions: Vec<Function> = self
                .btf
                .iter()
                .filter(|(_, ty)| {
                    matches!(ty.kind, BtfKind::Function { .. })
                        && glob_match(pattern, self.btf.string(ty.name))
                })
                .filter_map(|(id, _)| function(id))
                .collect();
            functions.sort_by(|a, b| a.name.cmp(&b.name));
            functions.dedup_by(|a, b| a.name == b.name);
            functions
        } else {
            self.btf
                .functions(pattern)
                .take(1)
                .filter_map(function)
                .collect()
        }
    }

    fn instruction(&self, _address: u64) -> Result<Vec<u8>, SiteRefusal> {
        Err(SiteRefusal::NoCode)
    }

    fn statements(&self, _file: &str, _line: u32) -> Result<Vec<StatementSite>, ResolveError> {
        Err(ResolveError {
            message: "BTF has no line tables: probe functions by name".to_string(),
        })
    }

    fn variables(&self, function: &Function, address: u64) -> Result<Vec<Variable>, ResolveError> {
        let params = match self.parameters(&function.name) {
            Ok(Some(params)) => params,
            Ok(None) => return Ok(Vec::new()),
            Err(message) => return Err(ResolveError { message }),
        };
        let mut variables = Vec::new();
        // Set once a parameter's passing is not modelled: later ones would shift.
        let mut shifted: Option<String> = None;
        let mut register = 0;
        for (index, param) in params.iter().enumerate() {
            if param.ty == 0 {
                // The `...` of a variadic function.
                break;
            }
            let name = match self.btf.string(param.name) {
                "" => format!("arg{}", index + 1),
                name => name.to_string(),
            };
            let location = if address != function.entry {
                Location::Unavailable(
                    "BTF has no locations: parameters are known at the function's entry \
                     only (offset 0, or `@entry(...)` in `.return` probes)"
                        .to_string(),
                )
            } else if let Some(earlier) = &shifted {
                Location::Unavailable(format!(
                    "it follows parameter `{earlier}`, whose passing the client does not \
                     model, so its register is not known"
                ))
            } else {
                match self.register_class(param.ty) {
                    Ok(()) if register < ARGUMENT_REGISTERS.len() => {
                        register += 1;
                        Location::Register(ARGUMENT_REGISTERS[register - 1])
                    }
                    Ok(()) => Location::Unavailable(format!(
                        "it is parameter {} and only the first {} integer parameters are in \
                         registers ({}); the rest are on the stack, which is not read yet",
                        index + 1,
                        ARGUMENT_REGISTERS.len(),
                        REGISTER_NAMES.join(", ")
                    )),
                    Err(reason) => {
                        shifted = Some(name.clone());
                        Location::Unavailable(reason)
                    }
                }
            };
            variables.push(Variable {
                name,
                kind: VariableKind::Parameter,
                ty: TypeId(u64::from(param.ty)),
                location,
            });
        }
        Ok(variables)
    }

    fn markers(&self, _pattern: &str) -> Vec<Marker> {
        Vec::new()
    }

    fn find_type(&self, kind: TypeKind, name: &str) -> Option<TypeId> {
        let candidates = self.btf.named(name);
        // A definition over a forward declaration.
        let defined = candidates.iter().find(|id| {
            self.btf.get(**id).is_some_and(|ty| {
                matches_kind(&ty.kind, kind) && !matches!(ty.kind, BtfKind::Forward { .. })
            })
        });
        let declared = candidates.iter().find(|id| {
            self.btf
                .get(**id)
                .is_some_and(|ty| matches_kind(&ty.kind, kind))
        });
        defined
            .or(declared)
            .map(|id| TypeId(u64::from(*id)))
            .or_else(|| (kind == TypeKind::Named && name == "void").then_some(TypeId(0)))
    }

    fn type_info(&self, id: TypeId) -> Option<TypeInfo> {
        let number = u32::try_from(id.0).ok()?;
        if number == 0 {
            return Some(TypeInfo::Void);
        }
        let ty = self.btf.get(number)?;
        let name = self.btf.string(ty.name).to_string();
        Some(match &ty.kind {
            BtfKind::Int { size, encoding, .. } => TypeInfo::Base {
                name,
                size: u64::from(*size),
                encoding: match (encoding.boolean, encoding.char, encoding.signed) {
                    (true, _, _) => BaseEncoding::Boolean,
                    (_, true, true) => BaseEncoding::SignedChar,
                    (_, true, false) => BaseEncoding::UnsignedChar,
                    (_, _, true) => BaseEncoding::Signed,
                    _ => BaseEncoding::Unsigned,
                },
            },
            BtfKind::Float { size } => TypeInfo::Base {
                name,
                size: u64::from(*size),
                encoding: BaseEncoding::Float,
            },
            BtfKind::Pointer { target } => TypeInfo::Pointer {
                target: TypeId(u64::from(*target)),
            },
            BtfKind::Array { element, count, .. } => TypeInfo::Array {
                element: TypeId(u64::from(*element)),
                count: (*count != 0).then_some(u64::from(*count)),
            },
            BtfKind::Struct { size, members } => TypeInfo::Struct(Composite {
                name,
                size: u64::from(*size),
                members: members.iter().map(|member| self.member(member)).collect(),
            }),
            BtfKind::Union { size, members } => TypeInfo::Union(Composite {
                name,
                size: u64::from(*size),
                members: members.iter().map(|member| self.member(member)).collect(),
            }),
            BtfKind::Enum {
                size,
                signed,
                enumerators,
                ..
            } => TypeInfo::Enum {
                name,
                size: u64::from(*size),
                signed: *signed,
                enumerators: enumerators
                    .iter()
                    .map(|e| (self.btf.string(e.name).to_string(), e.value))
                    .collect(),
            },
            BtfKind::Forward { is_union } => TypeInfo::Unsupported {
                name: format!("{} {name}", if *is_union { "union" } else { "struct" }),
                reason: "the kernel's BTF declares it without defining it".to_string(),
            },
            BtfKind::Typedef { target } => TypeInfo::Typedef {
                name,
                target: TypeId(u64::from(*target)),
            },
            BtfKind::Volatile { target }
            | BtfKind::Const { target }
            | BtfKind::Restrict { target }
            | BtfKind::TypeTag { target } => TypeInfo::Qualified {
                target: TypeId(u64::from(*target)),
            },
            BtfKind::Prototype { .. } | BtfKind::Function { .. } => TypeInfo::Function,
            BtfKind::Variable { .. } | BtfKind::DataSection { .. } | BtfKind::DeclTag { .. } => {
                TypeInfo::Unsupported {
                    name,
                    reason: "not the type of a value".to_string(),
                }
            }
        })
    }

    fn candidates(&self, kind: NameKind) -> Vec<String> {
        match kind {
            NameKind::Function => {
                let mut names: Vec<String> = self
                    .btf
                    .iter()
                    .filter(|(_, ty)| matches!(ty.kind, BtfKind::Function { .. }))
                    .map(|(_, ty)| self.btf.string(ty.name).to_string())
                    .collect();
                names.sort();
                names.dedup();
                names
            }
            NameKind::Marker => Vec::new(),
            NameKind::Type(kind) => self.type_names(kind),
        }
    }

    fn kernel_symbols(&self) -> bool {
        true
    }

    fn user_site(&self, path: &str, target: &UserTarget) -> Result<UserSite, ResolveError> {
        crate::uprobe::user_site(path, target)
    }
}
