//! Debuginfo against the workspace's own demo kernel (Rust, release with `debug = 2`,
//! DWARF 4 with `.debug_loc` location lists and `DW_OP_GNU_entry_value`).
//!
//! Expected names, types and entry locations were checked by hand with
//! `llvm-dwarfdump --name=NAME -c` on the image (the System V argument registers
//! rdi, rsi, rdx, rcx, r8, r9 are DWARF 5, 4, 1, 2, 8, 9; a function returning a
//! large `Result` gets the return slot in rdi, so its first parameter is in rsi).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use userland_client::debuginfo::{
    Kernel, ListOptions, Location, TypeKind, VariableKind, format_function,
};

/// Argument registers in DWARF numbering, in System V order.
const ARGUMENT_REGISTERS: [u16; 6] = [5, 4, 1, 2, 8, 9];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The demo kernel image, built if missing. A separate target directory is used for
/// that build so that it never waits on the lock of the `cargo test` running us.
fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let relative = "x86_64-unknown-none/release/demo-kernel";
        let default = workspace().join("target").join(relative);
        let own_target = workspace().join("target/debuginfo-tests");
        let image = if default.exists() {
            default
        } else {
            let own = own_target.join(relative);
            if !own.exists() {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let status = Command::new(cargo)
                    .current_dir(workspace())
                    .env("CARGO_TARGET_DIR", &own_target)
                    .args([
                        "build",
                        "-p",
                        "demo-kernel",
                        "--target",
                        "x86_64-unknown-none",
                        "--release",
                    ])
                    .status()
                    .expect("cannot run cargo to build the demo kernel");
                assert!(status.success(), "building the demo kernel failed");
            }
            own
        };
        Kernel::open(&image).unwrap_or_else(|error| panic!("{}: {error}", image.display()))
    })
}

#[test]
fn demo_kernel_is_dwarf4_with_build_id() {
    let kernel = kernel();
    assert_eq!(kernel.dwarf_versions().into_iter().collect::<Vec<_>>(), [4]);
    let build_id = kernel
        .build_id()
        .expect("the demo kernel has a GNU build-id");
    assert!(!build_id.is_empty());
    kernel.check_build_id(build_id).unwrap();
}

/// Each probe-able function: name, parameters with types, and at the entry address
/// each parameter in the argument register of its position.
#[test]
fn probe_able_functions_have_parameters_in_argument_registers() {
    let kernel = kernel();
    // (name, prototype, DWARF registers of the parameters at entry)
    let cases: [(&str, &str, &[u16]); 4] = [
        (
            "demo_kernel::ipc::ports::port_send",
            "demo_kernel::ipc::ports::port_send(demo_kernel::ipc::RightName right, \
             &demo_kernel::ipc::Message message)",
            &[5, 4],
        ),
        (
            "demo_kernel::vm::fault",
            "demo_kernel::vm::fault(&mut demo_kernel::vm::VmMap map, u64 address, \
             demo_kernel::vm::Access access)",
            // Returns Result<PageFrame, FaultError> through a slot in rdi.
            &[4, 1, 2],
        ),
        (
            "demo_kernel::sys::dispatch",
            "demo_kernel::sys::dispatch(u32 number, u64 arg0, u64 arg1, u64 arg2)",
            // Returns Result<u64, SysError> through a slot in rdi.
            &[4, 1, 2, 8],
        ),
        (
            "demo_kernel::sched::switch_to",
            "demo_kernel::sched::switch_to(&demo_kernel::sched::Thread prev, \
             &demo_kernel::sched::Thread next, u32 cpu)",
            &[5, 4, 1],
        ),
    ];
    for (name, prototype, registers) in cases {
        let functions = kernel.functions(name);
        assert_eq!(functions.len(), 1, "{name}: {functions:#?}");
        let function = &functions[0];
        assert_eq!(format_function(function, ListOptions::default()), prototype);
        let entry = function
            .entry()
            .unwrap_or_else(|| panic!("{name} has no entry"));
        assert!(function.size() > 0);
        // The ELF symbol at the entry is the same function.
        let symbolized = kernel.symbolize(entry).unwrap();
        assert_eq!(symbolized.function, name);
        assert_eq!(symbolized.offset, 0);
        // gdb 'info line *ENTRY': port_send's first row is its declaration line; the
        // others start with code inlined from core (atomics), so only the file is
        // known to be a Rust source.
        let line = kernel.line_for_address(entry).unwrap();
        assert!(line.file.ends_with(".rs"), "{line:?}");
        if name == "demo_kernel::ipc::ports::port_send" {
            assert!(line.file.ends_with("src/ipc.rs"), "{line:?}");
            assert_eq!(Some(line.line), function.decl_line, "{name}");
        }
        let at_entry: Vec<Location> = function
            .parameters
            .iter()
            .map(|parameter| parameter.location_at_entry.clone())
            .collect();
        let expected: Vec<Location> = registers
            .iter()
            .map(|register| Location::Register(*register))
            .collect();
        if name == "demo_kernel::vm::fault" {
            // `access` (a one-byte enum) is computed from ecx: `DW_OP_breg2 0,
            // DW_OP_constu 0xffffffff, DW_OP_and, DW_OP_constu 1, DW_OP_and,
            // DW_OP_stack_value`.
            assert_eq!(at_entry[..2], expected[..2]);
            assert!(
                matches!(&at_entry[2], Location::Computed(ops)
                    if ops[0] == userland_client::debuginfo::ComputedOp::Register(2)),
                "{:?}",
                at_entry[2]
            );
        } else {
            assert_eq!(at_entry, expected, "{name}");
        }
        for register in registers {
            assert!(ARGUMENT_REGISTERS.contains(register));
        }
        // The same through variables_at(entry).
        let parameters: Vec<String> = kernel
            .variables_at(entry)
            .into_iter()
            .filter(|variable| variable.kind == VariableKind::Parameter && !variable.inlined)
            .map(|variable| variable.name)
            .collect();
        let names: Vec<String> = function
            .parameters
            .iter()
            .filter_map(|parameter| parameter.name.clone())
            .collect();
        assert_eq!(parameters, names, "{name}");
    }
}

/// Rust types resolve by full path, with members, and type names keep rustc's spelling.
#[test]
fn rust_types_resolve() {
    let kernel = kernel();
    let message = kernel
        .type_by_name("demo_kernel::ipc::Message")
        .expect("demo_kernel::ipc::Message");
    assert_eq!(message.name, "demo_kernel::ipc::Message");
    let TypeKind::Struct { members } = &message.kind else {
        panic!("{message:?}")
    };
    assert!(!members.is_empty());
    for member in members {
        assert!(member.offset < message.size.unwrap(), "{member:?}");
    }
    let send = kernel
        .function("demo_kernel::ipc::ports::port_send")
        .unwrap();
    let pointer = kernel
        .type_info(send.parameters[1].type_id.unwrap())
        .unwrap();
    assert_eq!(pointer.size, Some(8));
    // rustc emits `Message` in every codegen unit that uses it: the pointer's target
    // may be another unit's DIE than the one `type_by_name` picks, with the same
    // definition.
    let TypeKind::Pointer {
        target: Some(target),
    } = pointer.kind
    else {
        panic!("{pointer:?}")
    };
    let target = kernel.type_info(target).unwrap();
    assert_eq!(target.name, message.name);
    assert_eq!(target.size, message.size);
    let TypeKind::Struct {
        members: target_members,
    } = &target.kind
    else {
        panic!("{target:?}")
    };
    let names = |members: &[userland_client::debuginfo::Member]| -> Vec<(Option<String>, u64)> {
        members.iter().map(|m| (m.name.clone(), m.offset)).collect()
    };
    assert_eq!(names(target_members), names(members));
    let u64_type = kernel.type_by_name("u64").unwrap();
    assert_eq!(u64_type.size, Some(8));
    assert_eq!(u64_type.kind, TypeKind::Int { signed: false });
}

/// Wildcards over Rust paths, and DWARF 4 location lists evaluated past the entry.
#[test]
fn wildcards_and_dwarf4_location_lists() {
    let kernel = kernel();
    let names: Vec<String> = kernel
        .functions("demo_kernel::sched::*")
        .into_iter()
        .map(|function| function.name)
        .collect();
    assert!(
        names.contains(&"demo_kernel::sched::switch_to".to_string()),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .all(|name| name.starts_with("demo_kernel::sched::"))
    );

    // In fault, `address` leaves rdx (llvm-dwarfdump: DW_OP_reg1 then
    // DW_OP_GNU_entry_value(DW_OP_reg1)): some address of the function has it as an
    // entry value.
    let fault = kernel.function("demo_kernel::vm::fault").unwrap();
    let entry = fault.entry().unwrap();
    let entry_value = (entry..entry + fault.size()).any(|address| {
        kernel.variables_at(address).iter().any(|variable| {
            variable.name == "address" && variable.location == Location::EntryValue(1)
        })
    });
    assert!(entry_value);
}
