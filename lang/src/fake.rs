//! An in-memory kernel for tests: the demo kernel's functions, types and markers.
//!
//! [`DemoKernel`] implements [`Resolver`] from tables, modelled on
//! `targets/demo-kernel` (its functions, structs and markers, with made-up
//! addresses and layouts). Arguments sit in registers as the System V ABI puts
//! them at function entry; further inside the functions the tables give every kind
//! of [`Location`], so tests cover each one. The client's own tests can use it too.
//!
//! | function | entry | parameters |
//! |---|---|---|
//! | `demo_kernel::ipc::ports::port_send` | `0xffffffff80101000` | `right: u32` (rdi), `message: &Message` (rsi) |
//! | `demo_kernel::ipc::ports::port_receive` | `0xffffffff80101100` | `right: u32` (rdi) |
//! | `demo_kernel::vm::fault` | `0xffffffff80102000` | `map: &mut VmMap` (rdi), `address: u64` (rsi), `access: Access` (rdx) |
//! | `demo_kernel::vm::access` | `0xffffffff80102200` | `map: &mut VmMap`, `address: u64`, `access: Access`, `value: u64` |
//! | `demo_kernel::vm::age` | `0xffffffff80102400` | `map: &mut VmMap` (rdi), returns `u32` |
//! | `demo_kernel::sys::dispatch` | `0xffffffff80103000` | `number: u32`, `arg0: u64`, `arg1: u64`, `arg2: u64` |
//! | `demo_kernel::sched::switch_to` | `0xffffffff80104000` | `prev: &Thread`, `next: &Thread`, `cpu: u32` |
//! | `demo_kernel::traps::breakpoint_entry` | `0xffffffff80100000` | (forbidden: the trap path) |
//!
//! Inside `port_send`: at `+0x12` `right` is on the stack (`[rsp+8]`), `message` in
//! `rbx`, and the local `limit` is the constant 32; at `+0x20` `right` is an entry
//! value of `rdi` and `message` is optimised out; `+0x30` is the line `ipc.rs:348`
//! with the local `port_id: u32` in `r12` and `queued` at `rbx + 8` as a value.
//! Computed locations (small stack programs): at `+0x12` `spilled` (memory at
//! `rsp + 16`), `masked` (`(rbx & 0xff) * 2`) and the malformed `broken`; at
//! `+0x30` `size_again` (`*(u32 *)(rbx + 4)`) and `next_right` (entry `rdi` + 1).
//! `+0x13` is inside an instruction. Lines of any file `broken.rs` make the
//! resolver fail, for the tests of that error. The static `demo_kernel::ipc::SENDS` is reached
//! through casts of its address.
//!
//! One user-space file exists, `/usr/bin/demo-app`: function `work` at file offset
//! `0x1139`, and USDT marker `app:tick` at offset `0x1274` with its semaphore at
//! offset `0x3028` and arguments `arg1` (`-4@%ebx`) and `arg2` (`8@%rbp`).

use std::collections::BTreeMap;

use probe_port_protocol::message::ArgType;

use crate::resolver::*;

/// The fake demo kernel.
#[derive(Debug, Clone)]
pub struct DemoKernel {
    types: Vec<TypeInfo>,
    named: BTreeMap<(u8, String), TypeId>,
    functions: Vec<FakeFunction>,
    markers: Vec<Marker>,
    lines: Vec<(String, u32, u64)>,
}

#[derive(Debug, Clone)]
struct FakeFunction {
    function: Function,
    /// Instruction boundaries: offset and bytes.
    instructions: Vec<(u64, Vec<u8>)>,
    /// Variables by offset range start (the entry for the greatest start <= offset).
    scopes: Vec<(u64, Vec<Variable>)>,
    forbidden: Option<String>,
}

/// Entry address of `port_send`.
pub const PORT_SEND: u64 = 0xffff_ffff_8010_1000;
/// Entry address of `port_receive`.
pub const PORT_RECEIVE: u64 = 0xffff_ffff_8010_1100;
/// Entry address of `vm::fault`.
pub const VM_FAULT: u64 = 0xffff_ffff_8010_2000;
/// Entry address of `vm::access`.
pub const VM_ACCESS: u64 = 0xffff_ffff_8010_2200;
/// Entry address of `vm::age`.
pub const VM_AGE: u64 = 0xffff_ffff_8010_2400;
/// Entry address of `sys::dispatch`.
pub const DISPATCH: u64 = 0xffff_ffff_8010_3000;
/// Entry address of `sched::switch_to`.
pub const SWITCH_TO: u64 = 0xffff_ffff_8010_4000;
/// Entry address of the forbidden trap entry.
pub const BREAKPOINT_ENTRY: u64 = 0xffff_ffff_8010_0000;
/// Address of the static `demo_kernel::ipc::SENDS` counter.
pub const SENDS: u64 = 0xffff_ffff_8020_0040;

/// Context slot of `rdi`, the first argument.
pub const RDI: u8 = 5;
/// Context slot of `rsi`, the second argument.
pub const RSI: u8 = 4;
/// Context slot of `rdx`, the third argument.
pub const RDX: u8 = 1;
/// Context slot of `rcx`, the fourth argument.
pub const RCX: u8 = 2;
/// Context slot of `rbx`.
pub const RBX: u8 = 3;
/// Context slot of `rsp`.
pub const RSP: u8 = 7;
/// Context slot of `r12`.
pub const R12: u8 = 12;

struct Builder {
    types: Vec<TypeInfo>,
    named: BTreeMap<(u8, String), TypeId>,
}

impl Builder {
    fn add(&mut self, info: TypeInfo) -> TypeId {
        self.types.push(info);
        TypeId(self.types.len() as u64 - 1)
    }

    fn base(&mut self, name: &str, size: u64, encoding: BaseEncoding) -> TypeId {
        let id = self.add(TypeInfo::Base {
            name: name.to_string(),
            size,
            encoding,
        });
        self.named.insert((3, name.to_string()), id);
        id
    }

    fn pointer(&mut self, target: TypeId) -> TypeId {
        self.add(TypeInfo::Pointer { target })
    }

    fn composite(&mut self, kind: u8, name: &str, size: u64, members: Vec<Member>) -> TypeId {
        let composite = Composite {
            name: name.to_string(),
            size,
            members,
        };
        let id = self.add(if kind == 1 {
            TypeInfo::Union(composite)
        } else {
            TypeInfo::Struct(composite)
        });
        self.named.insert((kind, name.to_string()), id);
        if let Some((_, short)) = name.rsplit_once("::") {
            self.named.entry((kind, short.to_string())).or_insert(id);
        }
        id
    }
}

fn member(name: &str, offset: u64, ty: TypeId) -> Member {
    Member {
        name: name.to_string(),
        offset,
        ty,
        bitfield: None,
    }
}

fn parameter(name: &str, ty: TypeId, location: Location) -> Variable {
    Variable {
        name: name.to_string(),
        kind: VariableKind::Parameter,
        ty,
        location,
    }
}

fn local(name: &str, ty: TypeId, location: Location) -> Variable {
    Variable {
        kind: VariableKind::Local,
        ..parameter(name, ty, location)
    }
}

fn marker(index: u32, name: &str, args: &[(&str, ArgType)]) -> Marker {
    Marker {
        index,
        name: name.to_string(),
        args: args
            .iter()
            .map(|(name, ty)| MarkerArg {
                name: name.to_string(),
                ty: *ty,
            })
            .collect(),
    }
}

/// `push rbp` — the first instruction of every fake function.
const PUSH_RBP: &[u8] = &[0x55];

impl Default for DemoKernel {
    fn default() -> Self {
        Self::new()
    }
}

impl DemoKernel {
    /// The demo kernel as described in the module docs.
    pub fn new() -> Self {
        let mut b = Builder {
            types: vec![TypeInfo::Void],
            named: BTreeMap::new(),
        };
        let void = TypeId(0);
        let u8_ = b.base("u8", 1, BaseEncoding::Unsigned);
        let u16_ = b.base("u16", 2, BaseEncoding::Unsigned);
        let u32_ = b.base("u32", 4, BaseEncoding::Unsigned);
        let u64_ = b.base("u64", 8, BaseEncoding::Unsigned);
        let i32_ = b.base("i32", 4, BaseEncoding::Signed);
        let i64_ = b.base("i64", 8, BaseEncoding::Signed);
        let bool_ = b.base("bool", 1, BaseEncoding::Boolean);
        let char_ = b.base("char", 1, BaseEncoding::SignedChar);
        let f64_ = b.base("f64", 8, BaseEncoding::Float);
        let _ = (u16_, i64_);

        // A C-style typedef, for casts through typedef names.
        let size_t = b.add(TypeInfo::Typedef {
            name: "size_t".to_string(),
            target: u64_,
        });
        b.named.insert((3, "size_t".to_string()), size_t);

        let payload = b.add(TypeInfo::Array {
            element: u64_,
            count: Some(4),
        });
        let message = b.composite(
            0,
            "demo_kernel::ipc::Message",
            40,
            vec![
                member("id", 0, u32_),
                member("size", 4, u32_),
                member("payload", 8, payload),
            ],
        );
        let message_ref = b.pointer(message);

        let access = b.add(TypeInfo::Enum {
            name: "demo_kernel::vm::Access".to_string(),
            size: 1,
            signed: false,
            enumerators: vec![("Read".to_string(), 0), ("Write".to_string(), 1)],
        });
        b.named
            .insert((2, "demo_kernel::vm::Access".to_string()), access);
        b.named.insert((2, "Access".to_string()), access);

        // VmMap is forward-declared so Thread can point to it.
        let vm_map_id = TypeId(b.types.len() as u64 + 3);
        let vm_map_ref = b.pointer(vm_map_id);
        let name_array = b.add(TypeInfo::Array {
            element: u8_,
            count: Some(16),
        });
        let flags_bits = Member {
            name: "flags".to_string(),
            offset: 26,
            ty: u8_,
            bitfield: Some((0, 3)),
        };
        let thread = b.composite(
            0,
            "demo_kernel::sched::Thread",
            56,
            vec![
                member("id", 0, u32_),
                member("cpu", 4, u32_),
                member("name", 8, name_array),
                member("name_length", 24, u8_),
                member("state", 25, u8_),
                flags_bits,
                member("saved_stack_pointer", 32, u64_),
                member("vm", 40, vm_map_ref),
                member("load", 48, f64_),
            ],
        );
        let vm_map = b.composite(
            0,
            "demo_kernel::vm::VmMap",
            48,
            vec![
                member("base", 0, u64_),
                member("pages", 8, u32_),
                member("writable", 12, bool_),
                member("owner", 16, u32_),
                member("minor_faults", 24, u64_),
                member("major_faults", 32, u64_),
                member("resident_pages", 40, u32_),
            ],
        );
        assert_eq!(vm_map, vm_map_id);
        let thread_ref = b.pointer(thread);

        // A C-style union with an anonymous struct member, for the type tests.
        let anonymous = b.add(TypeInfo::Struct(Composite {
            name: String::new(),
            size: 8,
            members: vec![member("low", 0, u32_), member("high", 4, u32_)],
        }));
        let _words = b.composite(
            1,
            "words",
            8,
            vec![member("whole", 0, u64_), member("", 0, anonymous)],
        );
        let ipc_result = b.add(TypeInfo::Unsupported {
            name: "core::result::Result<(), demo_kernel::ipc::IpcError>".to_string(),
            reason: "a Rust enum with data".to_string(),
        });
        let char_ptr = b.pointer(char_);
        let _ = (void, i32_, char_ptr);

        let function = |name: &str, entry: u64, size: u64, return_type: Option<TypeId>| Function {
            name: name.to_string(),
            entry,
            size,
            return_type,
        };
        let entry_only = |function: Function, variables: Vec<Variable>| FakeFunction {
            function,
            instructions: vec![(0, PUSH_RBP.to_vec()), (1, vec![0x48, 0x89, 0xe5])],
            scopes: vec![(0, variables)],
            forbidden: None,
        };

        let port_send = FakeFunction {
            function: function(
                "demo_kernel::ipc::ports::port_send",
                PORT_SEND,
                0x80,
                Some(ipc_result),
            ),
            instructions: vec![
                (0, PUSH_RBP.to_vec()),
                (1, vec![0x48, 0x89, 0xe5]),
                (0x12, vec![0x48, 0x8b, 0x43, 0x04]),
                (0x20, vec![0x8b, 0x06]),
                (0x30, vec![0x41, 0x8b, 0x04, 0x24]),
            ],
            scopes: vec![
                (
                    0,
                    vec![
                        parameter("right", u32_, Location::Register(RDI)),
                        parameter("message", message_ref, Location::Register(RSI)),
                    ],
                ),
                (
                    0x12,
                    vec![
                        parameter(
                            "right",
                            u32_,
                            Location::Memory {
                                register: RSP,
                                offset: 8,
                            },
                        ),
                        parameter("message", message_ref, Location::Register(RBX)),
                        local("limit", u32_, Location::Constant(32)),
                        // `DW_OP_breg7 16` as a memory location: [rsp + 16].
                        local(
                            "spilled",
                            u64_,
                            Location::Computed {
                                ops: vec![LocationOp::Register(RSP), LocationOp::PlusConstant(16)],
                                in_memory: true,
                            },
                        ),
                        // `(rbx & 0xff) * 2`, a value.
                        local(
                            "masked",
                            u32_,
                            Location::Computed {
                                ops: vec![
                                    LocationOp::Register(RBX),
                                    LocationOp::Constant(0xff),
                                    LocationOp::Binary(LocationBinary::And),
                                    LocationOp::Constant(2),
                                    LocationOp::Binary(LocationBinary::Mul),
                                ],
                                in_memory: false,
                            },
                        ),
                        // A malformed program, for the error path.
                        local(
                            "broken",
                            u64_,
                            Location::Computed {
                                ops: vec![LocationOp::Binary(LocationBinary::Add)],
                                in_memory: false,
                            },
                        ),
                    ],
                ),
                (
                    0x20,
                    vec![
                        parameter("right", u32_, Location::EntryValue(RDI)),
                        parameter(
                            "message",
                            message_ref,
                            Location::Unavailable("optimized out".to_string()),
                        ),
                        local(
                            "split",
                            u64_,
                            Location::Unavailable("pieces of several registers".to_string()),
                        ),
                    ],
                ),
                (
                    0x30,
                    vec![
                        parameter("right", u32_, Location::EntryValue(RDI)),
                        parameter("message", message_ref, Location::Register(RBX)),
                        local("port_id", u32_, Location::Register(R12)),
                        // The entry value of rdi plus one, and a dereference with
                        // stack operations: *(u32 *)(rbx + 4) via dup/swap/drop.
                        local(
                            "next_right",
                            u32_,
                            Location::Computed {
                                ops: vec![LocationOp::EntryValue(RDI), LocationOp::PlusConstant(1)],
                                in_memory: false,
                            },
                        ),
                        local(
                            "size_again",
                            u32_,
                            Location::Computed {
                                ops: vec![
                                    LocationOp::Register(RBX),
                                    LocationOp::Pick(0),
                                    LocationOp::Swap,
                                    LocationOp::Drop,
                                    LocationOp::PlusConstant(4),
                                    LocationOp::Deref(4),
                                ],
                                in_memory: false,
                            },
                        ),
                        local(
                            "queued",
                            u64_,
                            Location::RegisterValue {
                                register: RBX,
                                offset: 8,
                            },
                        ),
                    ],
                ),
            ],
            forbidden: None,
        };
        let vm_params = |with_value: bool| {
            let mut params = vec![
                parameter("map", vm_map_ref, Location::Register(RDI)),
                parameter("address", u64_, Location::Register(RSI)),
                parameter("access", access, Location::Register(RDX)),
            ];
            if with_value {
                params.push(parameter("value", u64_, Location::Register(RCX)));
            }
            params
        };
        let mut functions = vec![
            FakeFunction {
                function: function(
                    "demo_kernel::traps::breakpoint_entry",
                    BREAKPOINT_ENTRY,
                    0x40,
                    None,
                ),
                instructions: vec![(0, PUSH_RBP.to_vec())],
                scopes: vec![(0, Vec::new())],
                forbidden: Some("the trap entry path".to_string()),
            },
            port_send,
            entry_only(
                function(
                    "demo_kernel::ipc::ports::port_receive",
                    PORT_RECEIVE,
                    0x80,
                    Some(ipc_result),
                ),
                vec![parameter("right", u32_, Location::Register(RDI))],
            ),
            entry_only(
                function("demo_kernel::vm::fault", VM_FAULT, 0x100, Some(ipc_result)),
                vm_params(false),
            ),
            entry_only(
                function(
                    "demo_kernel::vm::access",
                    VM_ACCESS,
                    0x100,
                    Some(ipc_result),
                ),
                vm_params(true),
            ),
            entry_only(
                function("demo_kernel::vm::age", VM_AGE, 0x80, Some(u32_)),
                vec![parameter("map", vm_map_ref, Location::Register(RDI))],
            ),
            entry_only(
                function(
                    "demo_kernel::sys::dispatch",
                    DISPATCH,
                    0x200,
                    Some(ipc_result),
                ),
                vec![
                    parameter("number", u32_, Location::Register(RDI)),
                    parameter("arg0", u64_, Location::Register(RSI)),
                    parameter("arg1", u64_, Location::Register(RDX)),
                    parameter("arg2", u64_, Location::Register(RCX)),
                ],
            ),
            entry_only(
                function("demo_kernel::sched::switch_to", SWITCH_TO, 0x100, None),
                vec![
                    parameter("prev", thread_ref, Location::Register(RDI)),
                    parameter("next", thread_ref, Location::Register(RSI)),
                    parameter("cpu", u32_, Location::Register(RDX)),
                ],
            ),
        ];
        functions.sort_by_key(|function| function.function.entry);

        let markers = vec![
            marker(
                0,
                "ipc:send",
                &[
                    ("port", ArgType::U32),
                    ("id", ArgType::U32),
                    ("size", ArgType::U32),
                    ("tid", ArgType::U32),
                ],
            ),
            marker(
                1,
                "ipc:receive",
                &[
                    ("port", ArgType::U32),
                    ("id", ArgType::U32),
                    ("size", ArgType::U32),
                    ("tid", ArgType::U32),
                ],
            ),
            marker(
                2,
                "vm:fault",
                &[
                    ("address", ArgType::U64),
                    ("write", ArgType::Bool),
                    ("major", ArgType::Bool),
                ],
            ),
            marker(
                3,
                "sched:switch",
                &[
                    ("prev", ArgType::U32),
                    ("next", ArgType::U32),
                    ("cpu", ArgType::U32),
                ],
            ),
            marker(
                4,
                "sys:enter",
                &[
                    ("number", ArgType::U32),
                    ("arg0", ArgType::U64),
                    ("arg1", ArgType::U64),
                    ("tid", ArgType::U32),
                ],
            ),
            marker(
                5,
                "test:label",
                &[("text", ArgType::String), ("delta", ArgType::I32)],
            ),
        ];

        DemoKernel {
            types: b.types,
            named: b.named,
            functions,
            markers,
            lines: vec![
                (
                    "targets/demo-kernel/src/ipc.rs".to_string(),
                    348,
                    PORT_SEND + 0x30,
                ),
                ("targets/demo-kernel/src/vm.rs".to_string(), 210, VM_FAULT),
            ],
        }
    }

    fn function_at(&self, address: u64) -> Option<&FakeFunction> {
        self.functions.iter().find(|fake| {
            address >= fake.function.entry && address < fake.function.entry + fake.function.size
        })
    }
}

impl Resolver for DemoKernel {
    fn functions(&self, pattern: &str) -> Vec<Function> {
        self.functions
            .iter()
            .filter(|fake| glob_match(pattern, &fake.function.name))
            .map(|fake| fake.function.clone())
            .collect()
    }

    fn instruction(&self, address: u64) -> Result<Vec<u8>, SiteRefusal> {
        let fake = self.function_at(address).ok_or(SiteRefusal::NoCode)?;
        if let Some(reason) = &fake.forbidden {
            return Err(SiteRefusal::Forbidden(reason.clone()));
        }
        let offset = address - fake.function.entry;
        fake.instructions
            .iter()
            .find(|(start, _)| *start == offset)
            .map(|(_, bytes)| bytes.clone())
            .ok_or(SiteRefusal::NotInstructionBoundary)
    }

    fn statements(&self, file: &str, line: u32) -> Result<Vec<StatementSite>, ResolveError> {
        if file.ends_with("broken.rs") {
            return Err(ResolveError {
                message: format!("the line table for {file} is malformed"),
            });
        }
        Ok(self
            .lines
            .iter()
            .filter(|(path, number, _)| *number == line && path.ends_with(file))
            .filter_map(|(_, _, address)| {
                self.function_at(*address).map(|fake| StatementSite {
                    address: *address,
                    function: fake.function.clone(),
                })
            })
            .collect())
    }

    fn variables(&self, function: &Function, address: u64) -> Result<Vec<Variable>, ResolveError> {
        let fake = self
            .functions
            .iter()
            .find(|fake| fake.function.entry == function.entry)
            .ok_or_else(|| ResolveError {
                message: format!("no debuginfo for {}", function.name),
            })?;
        let offset = address.wrapping_sub(function.entry);
        Ok(fake
            .scopes
            .iter()
            .rev()
            .find(|(start, _)| *start <= offset)
            .map(|(_, variables)| variables.clone())
            .unwrap_or_default())
    }

    fn markers(&self, pattern: &str) -> Vec<Marker> {
        self.markers
            .iter()
            .filter(|marker| glob_match(pattern, &marker.name))
            .cloned()
            .collect()
    }

    fn find_type(&self, kind: TypeKind, name: &str) -> Option<TypeId> {
        let namespace = match kind {
            TypeKind::Struct => 0,
            TypeKind::Union => 1,
            TypeKind::Enum => 2,
            TypeKind::Named => 3,
        };
        self.named.get(&(namespace, name.to_string())).copied()
    }

    fn type_info(&self, id: TypeId) -> Option<TypeInfo> {
        self.types.get(id.0 as usize).cloned()
    }

    fn candidates(&self, kind: NameKind) -> Vec<String> {
        match kind {
            NameKind::Function => self
                .functions
                .iter()
                .flat_map(|fake| {
                    let name = &fake.function.name;
                    let short = name.rsplit_once("::").map(|(_, last)| last.to_string());
                    std::iter::once(name.clone()).chain(short)
                })
                .collect(),
            NameKind::Marker => self
                .markers
                .iter()
                .map(|marker| marker.name.clone())
                .collect(),
            NameKind::Type(kind) => {
                let namespace = match kind {
                    TypeKind::Struct => 0,
                    TypeKind::Union => 1,
                    TypeKind::Enum => 2,
                    TypeKind::Named => 3,
                };
                self.named
                    .keys()
                    .filter(|(space, _)| *space == namespace)
                    .map(|(_, name)| name.clone())
                    .collect()
            }
        }
    }

    fn user_site(&self, path: &str, target: &UserTarget) -> Result<UserSite, ResolveError> {
        let missing = |what: String| {
            Err(ResolveError {
                message: format!("{path} has no {what}"),
            })
        };
        if path != "/usr/bin/demo-app" {
            return Err(ResolveError {
                message: format!("cannot read {path}: No such file or directory"),
            });
        }
        match target {
            UserTarget::Function(name) if name == "work" => Ok(UserSite {
                file_offset: 0x1139,
                ref_ctr_offset: 0,
                args: Vec::new(),
            }),
            UserTarget::Function(name) => missing(format!("function named {name:?}")),
            UserTarget::Mark { provider, name } if provider == "app" && name == "tick" => {
                Ok(UserSite {
                    file_offset: 0x1274,
                    ref_ctr_offset: 0x3028,
                    args: vec![
                        UserArg {
                            name: "arg1".to_string(),
                            slot: 3,
                            size: -4,
                        },
                        UserArg {
                            name: "arg2".to_string(),
                            slot: 6,
                            size: 8,
                        },
                    ],
                })
            }
            UserTarget::Mark { provider, name } => {
                missing(format!("marker named \"{provider}:{name}\""))
            }
        }
    }
}
