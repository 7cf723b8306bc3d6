//! The questions the compiler asks about the kernel, and the answers' shapes.
//!
//! # Design
//!
//! The compiler reads no debuginfo. Everything it needs to know about the traced
//! kernel goes through [`Resolver`], which the client implements over the kernel's
//! ELF and DWARF (gimli and object, on optimised real kernels) and the marker table
//! the stub announces, and which tests implement in memory
//! ([`crate::fake::DemoKernel`]).
//!
//! The trait is small and answers in owned, plain data:
//!
//! - **Code**: functions matching a glob, the statements of a source line, and the
//!   instruction bytes at an address (the stub refuses to patch an address whose bytes
//!   differ, so the client sends what its copy of the kernel image holds there).
//! - **Variables** visible at an address, each with a [`TypeId`] and a [`Location`]:
//!   a small location language, evaluated by the resolver from DWARF location
//!   expressions and lists *at that address*, that the compiler turns into handler
//!   code. Whatever does not fit the language (pieces of several registers, a
//!   location list with no entry for the address) is [`Location::Unavailable`] with
//!   the reason, and the compiler reports it when the script uses the variable.
//! - **Types** by name and by [`TypeId`], one level at a time ([`TypeInfo`]), so
//!   that recursive types (a list node pointing to its own type) need no cycle
//!   handling on either side.
//! - **Markers**: the kernel's static markers with typed arguments.
//!
//! Types are named by opaque [`TypeId`]s the resolver chooses (a DWARF unit and
//! offset packed in 64 bits is the obvious choice); the compiler only compares them
//! and passes them back.
//!
//! # Names
//!
//! Function patterns are globs (`*` any run of characters, `?` one character) over
//! the function's qualified name (`ipc_kmsg_send` in C; in Rust
//! `demo_kernel::ipc::ports::port_send`); a pattern without `::` also matches the
//! last path segment of a qualified name, so `"port_send"` and `"port_*"` find the
//! Rust function above. [`glob_match`] implements exactly this, for resolvers to use.

use probe_port_protocol::message::ArgType;

/// An opaque handle on a type of the kernel's debuginfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeId(pub u64);

/// A function of the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// The qualified name (C: the plain name; Rust: `crate::module::name`).
    pub name: String,
    /// The address of its first instruction.
    pub entry: u64,
    /// Its length in bytes (0 when unknown); `name+offset` must stay inside.
    pub size: u64,
    /// What it returns; `None` for `void` or `()`.
    pub return_type: Option<TypeId>,
}

/// One address a source line compiled to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementSite {
    /// The address (an instruction boundary marked `is_stmt` in the line table).
    pub address: u64,
    /// The function (or, for inlined code, the function it was inlined into) holding
    /// the address: its variables are the ones visible there.
    pub function: Function,
}

/// Why an address cannot be probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteRefusal {
    /// The address is not the start of an instruction.
    NotInstructionBoundary,
    /// The address is in no text the resolver knows.
    NoCode,
    /// The kernel forbids probing there (the stub itself, the trap path,
    /// a blacklist); the text says why.
    Forbidden(String),
}

/// A static marker the kernel announced (`DescribeMarker`, PROTOCOL.md §8.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The index in the kernel's marker table.
    pub index: u32,
    /// The name, such as `ipc:send`.
    pub name: String,
    /// Arguments in order: at the marker, context slot `i` holds argument `i`.
    pub args: Vec<MarkerArg>,
}

/// One argument of a marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkerArg {
    /// Its name (`$name` in scripts).
    pub name: String,
    /// Its type.
    pub ty: ArgType,
}

/// Is a variable a parameter or a local?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariableKind {
    /// A formal parameter (`$$parms` prints these, in order).
    Parameter,
    /// A local variable in a scope that contains the address.
    Local,
}

/// A variable visible at a probe address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    /// Its source name.
    pub name: String,
    /// Parameter or local.
    pub kind: VariableKind,
    /// Its type.
    pub ty: TypeId,
    /// Where its value is at the address.
    pub location: Location,
}

/// Where a variable's value is at one address: the subset of DWARF location
/// descriptions the compiler turns into handler code.
///
/// Registers are DWARF register numbers, which are also probe-context slots
/// (x86_64: 0 rax, 1 rdx, 2 rcx, 3 rbx, 4 rsi, 5 rdi, 6 rbp, 7 rsp, 8–15 r8–r15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// The value is in a register (`DW_OP_regN`).
    Register(u8),
    /// The value is in memory at register + offset (`DW_OP_bregN`, and `DW_OP_fbreg`
    /// with the frame base resolved to a register + offset at the address).
    Memory {
        /// The base register.
        register: u8,
        /// Added to it.
        offset: i64,
    },
    /// The value is register + offset itself (`DW_OP_bregN off; DW_OP_stack_value`).
    RegisterValue {
        /// The register.
        register: u8,
        /// Added to it.
        offset: i64,
    },
    /// The value is in memory at a fixed address (`DW_OP_addr`: statics).
    Address(u64),
    /// The value is this constant (`DW_OP_constu/consts; DW_OP_stack_value`,
    /// `DW_OP_implicit_value` of at most 8 bytes, `DW_AT_const_value`).
    Constant(u64),
    /// The value is what the register held when the function was entered
    /// (`DW_OP_entry_value(DW_OP_regN); DW_OP_stack_value`). Readable at the
    /// function's entry, and in `.return` probes through `@entry`.
    EntryValue(u8),
    /// The value is computed by a small stack program: DWARF's location
    /// expressions, as the resolver simplified them at the address. With
    /// `in_memory`, the program computes the value's address instead.
    Computed {
        /// The operations, run on a stack of u64 that starts empty; the result is
        /// the top of the stack.
        ops: Vec<LocationOp>,
        /// Whether the result is the address of the value rather than the value.
        in_memory: bool,
    },
    /// No value at this address; the text says why ("optimized out", "pieces of
    /// several registers", "no location list entry covers the address").
    Unavailable(String),
}

/// One operation of a [`Location::Computed`] program, on a stack of u64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocationOp {
    /// Push the contents of a register (DWARF number, a context slot below 16).
    Register(u8),
    /// Push the value the register had when the function was entered.
    EntryValue(u8),
    /// Push a constant.
    Constant(u64),
    /// Add a constant to the top.
    PlusConstant(u64),
    /// Pop an address, push the `size`-byte (1, 2, 4 or 8) value read there.
    Deref(u8),
    /// Pop `b`, pop `a`, push `a op b`.
    Binary(LocationBinary),
    /// Negate the top (two's complement).
    Neg,
    /// Complement the top's bits.
    Not,
    /// Replace the top by its absolute value (signed).
    Abs,
    /// Push a copy of the entry `n` deep (0: the top, `DW_OP_dup`; 1: `DW_OP_over`).
    Pick(u8),
    /// Exchange the two top entries.
    Swap,
    /// Rotate the three top entries: the top moves to third place.
    Rot,
    /// Discard the top.
    Drop,
}

/// The binary operators of [`LocationOp::Binary`], with DWARF's semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocationBinary {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a & b`
    And,
    /// `a | b`
    Or,
    /// `a ^ b`
    Xor,
    /// `a << b`
    Shl,
    /// `a >> b`, logical
    Shr,
    /// `a >> b`, arithmetic
    Shra,
    /// `a == b` as 1 or 0
    Eq,
    /// `a != b` as 1 or 0
    Ne,
    /// `a < b`, signed, as 1 or 0
    Lt,
    /// `a <= b`, signed, as 1 or 0
    Le,
    /// `a > b`, signed, as 1 or 0
    Gt,
    /// `a >= b`, signed, as 1 or 0
    Ge,
    /// `a / b`, signed (0 when `b` is 0)
    Div,
    /// `a % b`, unsigned (`a` when `b` is 0)
    Mod,
}

/// A type, one level deep: members and targets are other [`TypeId`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeInfo {
    /// `void`, `()`.
    Void,
    /// An integer, boolean, character or float.
    Base {
        /// As the debuginfo names it (`unsigned int`, `u32`).
        name: String,
        /// Size in bytes.
        size: u64,
        /// How the bits are read.
        encoding: BaseEncoding,
    },
    /// A pointer or reference.
    Pointer {
        /// What it points to (a [`TypeInfo::Void`] type for `void *`).
        target: TypeId,
    },
    /// A `struct` (also a Rust struct or tuple).
    Struct(Composite),
    /// A `union`.
    Union(Composite),
    /// A C-like enumeration.
    Enum {
        /// Its name.
        name: String,
        /// Size in bytes.
        size: u64,
        /// Whether the underlying integer is signed.
        signed: bool,
        /// Enumerator names and values.
        enumerators: Vec<(String, i64)>,
    },
    /// A `typedef`.
    Typedef {
        /// Its name.
        name: String,
        /// The type it names.
        target: TypeId,
    },
    /// `const`, `volatile`, `restrict`, `_Atomic` of another type.
    Qualified {
        /// The qualified type.
        target: TypeId,
    },
    /// An array.
    Array {
        /// The element type.
        element: TypeId,
        /// The element count, if known.
        count: Option<u64>,
    },
    /// A function type (reached through function pointers).
    Function,
    /// Anything else (a Rust enum with data, a vector type ...); the text names it.
    Unsupported {
        /// The type's name.
        name: String,
        /// Why the language cannot read it.
        reason: String,
    },
}

/// How the bits of a base type are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseEncoding {
    /// Two's complement.
    Signed,
    /// Unsigned.
    Unsigned,
    /// A boolean.
    Boolean,
    /// A signed character.
    SignedChar,
    /// An unsigned character.
    UnsignedChar,
    /// A floating-point number (refused by the language).
    Float,
}

/// The members of a struct or union.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Composite {
    /// Its name (empty for an anonymous one).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Members in declaration order.
    pub members: Vec<Member>,
}

/// One member of a struct or union.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its name (empty for an anonymous struct or union member, whose members are
    /// reachable as if they were the parent's).
    pub name: String,
    /// Byte offset from the start of the parent.
    pub offset: u64,
    /// Its type.
    pub ty: TypeId,
    /// For a bitfield: `(bit offset from `offset`, bit size)`; the language
    /// refuses bitfields with a clear error for now.
    pub bitfield: Option<(u8, u8)>,
}

/// Which namespace a type name is looked up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeKind {
    /// `struct NAME`
    Struct,
    /// `union NAME`
    Union,
    /// `enum NAME`
    Enum,
    /// A typedef or base type name.
    Named,
}

/// Which names [`Resolver::candidates`] lists, for "did you mean" hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// Function names.
    Function,
    /// Marker names.
    Marker,
    /// Type names of one namespace.
    Type(TypeKind),
}

/// The resolver could not answer (no debuginfo, a malformed DWARF unit ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolveError {
    /// What went wrong, as one sentence.
    pub message: String,
}

/// What a user-space probe point names in its ELF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserTarget {
    /// `process("path").function("name")`: a function by its symbol.
    Function(String),
    /// `process("path").mark("provider:name")`: a USDT marker (`.note.stapsdt`).
    Mark {
        /// The provider.
        provider: String,
        /// The marker's name.
        name: String,
    },
}

/// One argument of a USDT marker, held in a register at the marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserArg {
    /// Its name in scripts (`arg1`, `arg2`, …).
    pub name: String,
    /// The context slot (DWARF register number) holding it.
    pub slot: usize,
    /// Its size in bytes, negative when signed.
    pub size: i8,
}

/// Where a user-space probe point fires, as `Site::User` needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSite {
    /// The instruction's offset in the file.
    pub file_offset: u64,
    /// The file offset of the marker's semaphore, 0 for none.
    pub ref_ctr_offset: u64,
    /// The marker's arguments (none for functions).
    pub args: Vec<UserArg>,
}

/// What the compiler asks about the traced kernel.
///
/// Every method is a question with an owned answer; none has side effects.
/// Implementations should be fast enough to call once per probe site (the compiler
/// asks about variables once per probed address).
pub trait Resolver {
    /// Functions whose name matches `pattern` (see the module docs for matching), in
    /// address order. An empty list means no match.
    fn functions(&self, pattern: &str) -> Vec<Function>;

    /// The bytes of the instruction that starts at `address` (1 to 15 bytes), for
    /// the stub's expected-bytes check; or why the address cannot be probed.
    fn instruction(&self, address: u64) -> Result<Vec<u8>, SiteRefusal>;

    /// The addresses that `file:line` compiled to (`file` may be a path suffix).
    /// An empty list means the line has no code.
    fn statements(&self, file: &str, line: u32) -> Result<Vec<StatementSite>, ResolveError>;

    /// The variables of `function` visible at `address` (inside it), parameters
    /// first in declaration order, then locals of every scope containing the
    /// address (innermost last), each with its location evaluated at `address`.
    fn variables(&self, function: &Function, address: u64) -> Result<Vec<Variable>, ResolveError>;

    /// The static markers whose name matches the glob `pattern`, in index order.
    fn markers(&self, pattern: &str) -> Vec<Marker>;

    /// The type called `name` in the namespace `kind`, if there is one.
    fn find_type(&self, kind: TypeKind, name: &str) -> Option<TypeId>;

    /// One level of the type `id`. `None` only for an id this resolver never gave out.
    fn type_info(&self, id: TypeId) -> Option<TypeInfo>;

    /// Names of one kind, for "did you mean" hints on unknown names. The default
    /// offers none; a resolver with a symbol table should list them.
    fn candidates(&self, kind: NameKind) -> Vec<String> {
        let _ = kind;
        Vec::new()
    }

    /// Whether kernel functions are named by symbol for the stub to resolve
    /// (PROTOCOL.md §8.10) instead of being looked up here: a resolver without the
    /// kernel's image says so, and `kernel.function("name")` then compiles to a
    /// symbol site (exact names only, no variables but registers and `$return`).
    fn kernel_symbols(&self) -> bool {
        false
    }

    /// Where `target` is in the user-space ELF file at `path` (PROTOCOL.md §8.8).
    /// The default, for resolvers without access to user files, refuses.
    fn user_site(&self, path: &str, target: &UserTarget) -> Result<UserSite, ResolveError> {
        let _ = (path, target);
        Err(ResolveError {
            message: "this client cannot resolve user-space probe points".to_string(),
        })
    }
}

/// Whether `name` matches the glob `pattern` as [`Resolver::functions`] specifies:
/// `*` matches any run of characters, `?` one character; a pattern without `::`
/// is also tried against the last `::` segment of `name`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if glob(pattern.as_bytes(), name.as_bytes()) {
        return true;
    }
    if !pattern.contains("::")
        && let Some((_, last)) = name.rsplit_once("::")
    {
        return glob(pattern.as_bytes(), last.as_bytes());
    }
    false
}

/// Iterative glob matching with backtracking to the last `*`: linear in practice,
/// never exponential.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

/// Whether a pattern has glob characters.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("vm_*", "vm_fault"));
        assert!(glob_match("vm_*", "vm_"));
        assert!(!glob_match("vm_*", "avm_fault"));
        assert!(glob_match("*fault", "demo_kernel::vm::fault"));
        assert!(glob_match(
            "port_send",
            "demo_kernel::ipc::ports::port_send"
        ));
        assert!(glob_match("port_*", "demo_kernel::ipc::ports::port_send"));
        assert!(glob_match("demo_kernel::vm::*", "demo_kernel::vm::fault"));
        assert!(!glob_match(
            "demo_kernel::vm::*",
            "demo_kernel::ipc::ports::port_send"
        ));
        assert!(glob_match("ipc:*", "ipc:send"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
    }
}
