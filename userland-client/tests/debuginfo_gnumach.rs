//! Debuginfo against a real optimised kernel: Debian's GNU Mach debug image
//! (package `gnumach-image-1.8-486-dbg`, x86_64 despite the name, DWARF 5, GCC 12 -O2).
//!
//! Every expected value below was read by hand from `gdb -batch` (`info functions`,
//! `info scope`, `ptype /o`, `info line`), `addr2line`, `readelf --debug-dump=frames-interp`
//! or `llvm-dwarfdump` on the decompressed image; each check says which.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use userland_client::debuginfo::{
    InstanceKind, Kernel, ListOptions, Location, MemoryBase, TypeKind, VariableKind,
    format_function,
};

const IMAGE: &str = "/boot/gnumach-1.8-486-dbg.gz";
const PACKAGE: &str = "gnumach-image-1.8-486-dbg";

/// The image, installing the Debian package first if it is missing.
fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        if !Path::new(IMAGE).exists() {
            install_package();
        }
        Kernel::open(IMAGE).unwrap_or_else(|error| panic!("cannot open {IMAGE}: {error}"))
    })
}

fn install_package() {
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", PACKAGE])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let installed = match install() {
        Ok(status) if status.success() => true,
        _ => {
            let _ = Command::new("apt-get").arg("update").status();
            matches!(install(), Ok(status) if status.success())
        }
    };
    assert!(
        installed && Path::new(IMAGE).exists(),
        "{IMAGE} is missing and `apt-get install -y {PACKAGE}` failed; install the Debian \
         package {PACKAGE} (as root) to run the GNU Mach debuginfo tests"
    );
}

#[test]
fn image_is_x86_64_dwarf5_without_build_id() {
    let kernel = kernel();
    assert_eq!(
        kernel.architecture(),
        userland_client::debuginfo::Architecture::X86_64
    );
    assert_eq!(kernel.dwarf_versions().into_iter().collect::<Vec<_>>(), [5]);
    // readelf -n: the image has no .note.gnu.build-id.
    assert_eq!(kernel.build_id(), None);
    let error = kernel.check_build_id(&[0xab; 20]).unwrap_err().to_string();
    assert!(error.contains(&"ab".repeat(20)), "{error}");
    assert!(error.contains("no build-id note"), "{error}");
}

/// `gdb -batch -ex 'info functions ^ipc_kmsg_'` lists exactly these.
#[test]
fn ipc_kmsg_functions_match_gdb() {
    let names: Vec<String> = kernel()
        .functions("ipc_kmsg_*")
        .into_iter()
        .map(|function| function.name)
        .collect();
    let expected = [
        "ipc_kmsg_clean",
        "ipc_kmsg_clean_body",
        "ipc_kmsg_clean_partial",
        "ipc_kmsg_copyin",
        "ipc_kmsg_copyin_body",
        "ipc_kmsg_copyin_from_kernel",
        "ipc_kmsg_copyin_header",
        "ipc_kmsg_copyout",
        "ipc_kmsg_copyout_body",
        "ipc_kmsg_copyout_dest",
        "ipc_kmsg_copyout_header",
        "ipc_kmsg_copyout_object",
        "ipc_kmsg_copyout_pseudo",
        "ipc_kmsg_dequeue",
        "ipc_kmsg_destroy",
        "ipc_kmsg_enqueue",
        "ipc_kmsg_free",
        "ipc_kmsg_get",
        "ipc_kmsg_get_from_kernel",
        "ipc_kmsg_print",
        "ipc_kmsg_put",
        "ipc_kmsg_put_to_kernel",
        "ipc_kmsg_queue_next",
        "ipc_kmsg_rmqueue",
    ];
    assert_eq!(names, expected);
}

/// Prototypes from `info functions` (types), parameter names from `info scope` and
/// `readelf --debug-dump=info`, declaration lines from `info functions`.
#[test]
fn prototypes_match_gdb() {
    let kernel = kernel();
    let cases = [
        (
            "ipc_kmsg_get",
            "ipc_kmsg_get(mach_msg_header_t *msg, mach_msg_size_t size, ipc_kmsg_t *kmsgp)",
            501,
        ),
        (
            "ipc_kmsg_copyin",
            "ipc_kmsg_copyin(ipc_kmsg_t kmsg, ipc_space_t space, vm_map_t map, \
             mach_port_name_t notify)",
            1519,
        ),
        (
            "ipc_kmsg_copyout_object",
            "ipc_kmsg_copyout_object(ipc_space_t space, ipc_object_t object, \
             mach_msg_type_name_t msgt_name, mach_port_name_t *namep)",
            2242,
        ),
        (
            "ipc_kmsg_enqueue",
            "ipc_kmsg_enqueue(ipc_kmsg_queue_t queue, ipc_kmsg_t kmsg)",
            87,
        ),
        (
            "ipc_kmsg_clean_body",
            "ipc_kmsg_clean_body(vm_offset_t saddr, vm_offset_t eaddr)",
            221,
        ),
    ];
    for (name, prototype, line) in cases {
        let function = kernel.function(name).unwrap_or_else(|| panic!("{name}"));
        assert_eq!(
            format_function(&function, ListOptions::default()),
            prototype
        );
        assert_eq!(function.decl_line, Some(line), "{name}");
        assert!(
            function
                .decl_file
                .as_deref()
                .is_some_and(|file| file.ends_with("ipc/ipc_kmsg.c")),
            "{name}: {:?}",
            function.decl_file
        );
    }
    // `ptype ipc_kmsg_get`: int (mach_msg_header_t *, mach_msg_size_t, ipc_kmsg_t *);
    // the typedefs resolve down to what gdb prints.
    let get = kernel.function("ipc_kmsg_get").unwrap();
    assert_eq!(get.return_type_name, "mach_msg_return_t");
    let return_type = kernel.strip_typedefs(get.return_type.unwrap()).unwrap();
    assert_eq!(kernel.type_name(return_type), "int");
    let msg = &get.parameters[0];
    let pointer = kernel.type_info(msg.type_id.unwrap()).unwrap();
    let TypeKind::Pointer {
        target: Some(target),
    } = pointer.kind
    else {
        panic!("{pointer:?}")
    };
    assert_eq!(kernel.type_name(target), "mach_msg_header_t");
    let header = kernel.strip_typedefs(target).unwrap();
    assert_eq!(kernel.type_name(header), "struct mach_msg_header");
    let size = kernel
        .type_info(
            kernel
                .strip_typedefs(get.parameters[1].type_id.unwrap())
                .unwrap(),
        )
        .unwrap();
    assert_eq!(size.name, "unsigned int");
    assert_eq!(size.size, Some(4));
    assert_eq!(size.kind, TypeKind::Int { signed: false });
}

/// `ptype /o struct ipc_kmsg` and `ptype /o mach_msg_header_t`.
#[test]
fn member_offsets_match_gdb() {
    let kernel = kernel();
    let kmsg = kernel.type_by_name("struct ipc_kmsg").unwrap();
    assert_eq!(kmsg.size, Some(64));
    let TypeKind::Struct { members } = &kmsg.kind else {
        panic!("{kmsg:?}")
    };
    let layout: Vec<(String, u64, String)> = members
        .iter()
        .map(|member| {
            (
                member.name.clone().unwrap(),
                member.offset,
                kernel.type_name(member.type_id.unwrap()),
            )
        })
        .collect();
    let expected = [
        ("ikm_next", 0, "struct ipc_kmsg *"),
        ("ikm_prev", 8, "struct ipc_kmsg *"),
        ("ikm_size", 16, "vm_size_t"),
        ("ikm_marequest", 24, "ipc_marequest_t"),
        ("ikm_header", 32, "mach_msg_header_t"),
    ];
    let expected: Vec<(String, u64, String)> = expected
        .iter()
        .map(|(name, offset, type_name)| (name.to_string(), *offset, type_name.to_string()))
        .collect();
    assert_eq!(layout, expected);

    let header = kernel.type_by_name("mach_msg_header_t").unwrap();
    assert_eq!(header.size, Some(32));
    assert!(matches!(header.kind, TypeKind::Typedef { .. }));
    for (name, offset) in [
        ("msgh_bits", 0),
        ("msgh_size", 4),
        ("msgh_remote_port", 8),
        // Members of the anonymous union at offset 16.
        ("msgh_local_port", 16),
        ("msgh_protected_payload", 16),
        ("msgh_seqno", 24),
        ("msgh_id", 28),
    ] {
        let member = kernel
            .member(header.id, name)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(member.offset, offset, "{name}");
        assert_eq!(member.bitfield, None);
    }
    // Through a pointer's target and a nested member: ikm_header.msgh_id = 32 + 28.
    let ikm_header = kernel.member(kmsg.id, "ikm_header").unwrap();
    let msgh_id = kernel
        .member(ikm_header.type_id.unwrap(), "msgh_id")
        .unwrap();
    assert_eq!(ikm_header.offset + msgh_id.offset, 60);
    assert!(kernel.type_by_name("struct no_such_type").is_none());
}

fn location_of(kernel: &Kernel, address: u64, name: &str) -> Location {
    kernel
        .variables_at(address)
        .into_iter()
        .find(|variable| variable.name == name)
        .unwrap_or_else(|| panic!("{name} not in scope at {address:#x}"))
        .location
}

/// `gdb -batch -ex 'info scope ipc_kmsg_get'` (location lists of msg, size, kmsgp,
/// kmsg), evaluated at several addresses.
#[test]
fn location_lists_match_gdb_info_scope() {
    let kernel = kernel();
    let get = kernel.function("ipc_kmsg_get").unwrap();
    assert_eq!(get.entry(), Some(0x4102_1a10));
    assert_eq!(get.size(), 0x17f);
    let at_entry: Vec<Location> = get
        .parameters
        .iter()
        .map(|parameter| parameter.location_at_entry.clone())
        .collect();
    assert_eq!(
        at_entry,
        [
            Location::Register(5),
            Location::Register(4),
            Location::Register(1)
        ]
    );

    // 0x41021a78-0x41021a9d: msg in $r14; size entry_value($rsi); kmsgp in $r13;
    // kmsg (0x41021a49-0x41021a99) in $r12.
    assert_eq!(
        location_of(kernel, 0x4102_1a80, "msg"),
        Location::Register(14)
    );
    assert_eq!(
        location_of(kernel, 0x4102_1a80, "size"),
        Location::EntryValue(4)
    );
    assert_eq!(
        location_of(kernel, 0x4102_1a80, "kmsgp"),
        Location::Register(13)
    );
    assert_eq!(
        location_of(kernel, 0x4102_1a80, "kmsg"),
        Location::Register(12)
    );

    // 0x41021a9d-0x41021aa1: msg is DW_OP_entry_value(DW_OP_reg5), kmsgp (from
    // 0x41021a9b) DW_OP_entry_value(DW_OP_reg1); kmsg has no entry there.
    assert_eq!(
        location_of(kernel, 0x4102_1a9d, "msg"),
        Location::EntryValue(5)
    );
    assert_eq!(
        location_of(kernel, 0x4102_1a9d, "kmsgp"),
        Location::EntryValue(1)
    );
    assert!(!location_of(kernel, 0x4102_1a9d, "kmsg").is_available());

    // 0x41021b1c-0x41021b3d: size is DW_OP_fbreg -68 with DW_AT_frame_base
    // DW_OP_call_frame_cfa; readelf --debug-dump=frames-interp gives CFA = rbp+16 there,
    // so size is stored at rbp+16-68 = rbp-52.
    assert_eq!(
        location_of(kernel, 0x4102_1b20, "size"),
        Location::Memory {
            base: MemoryBase::Register(6),
            offset: -52
        }
    );
    // The static local __FUNCTION__ is at an absolute address (DW_OP_addr).
    assert!(matches!(
        location_of(kernel, 0x4102_1b20, "__FUNCTION__"),
        Location::Memory {
            base: MemoryBase::Absolute,
            ..
        }
    ));
    let variables = kernel.variables_at(0x4102_1b20);
    let kinds: Vec<(&str, VariableKind)> = variables
        .iter()
        .map(|variable| (variable.name.as_str(), variable.kind))
        .collect();
    assert_eq!(
        kinds[..4],
        [
            ("msg", VariableKind::Parameter),
            ("size", VariableKind::Parameter),
            ("kmsgp", VariableKind::Parameter),
            ("kmsg", VariableKind::Local),
        ]
    );
}

/// Inlined instances from `llvm-dwarfdump` (DW_AT_entry_pc of each
/// DW_TAG_inlined_subroutine of ipc_kmsg_free) and the variables of an inlined
/// instance at its entry.
#[test]
fn inlined_instances_match_dwarfdump() {
    let kernel = kernel();
    let free = kernel.function("ipc_kmsg_free").unwrap();
    assert_eq!(free.entry(), Some(0x4102_19f0));
    let inlined: Vec<(u64, u64)> = free
        .inlined()
        .map(|instance| match &instance.kind {
            InstanceKind::Inlined { call_line, .. } => (instance.entry_pc, *call_line),
            InstanceKind::OutOfLine => unreachable!(),
        })
        .collect();
    assert_eq!(
        inlined,
        [
            (0x4102_17e0, 203),
            (0x4102_1b60, 530),
            (0x4102_1c93, 607),
            (0x4102_1d40, 634)
        ]
    );
    let instance = free.inlined().next().unwrap();
    assert_eq!(
        instance.ranges,
        [0x4102_17b0..0x4102_17b5, 0x4102_17e0..0x4102_17ed]
    );
    let variables = kernel.variables_at(0x4102_17e0);
    assert!(
        variables
            .iter()
            .any(|variable| variable.inlined && variable.function == "ipc_kmsg_free"),
        "{variables:#?}"
    );
    let symbolized = kernel.symbolize(0x4102_17e0).unwrap();
    assert_eq!(symbolized.function, "ipc_kmsg_destroy");
    assert_eq!(symbolized.offset, 0xa0);
    assert_eq!(symbolized.inlined, ["ipc_kmsg_free"]);
}

/// `addr2line -f` and `gdb 'info line'`.
#[test]
fn line_table_matches_addr2line_and_gdb() {
    let kernel = kernel();
    // addr2line: 0x41021a80 → ipc_kmsg_get at ipc_kmsg.c:529; 0x41021b20 → :518;
    // 0x41021797 → ipc_kmsg_destroy at :200.
    for (address, line) in [(0x4102_1a80, 529), (0x4102_1b20, 518), (0x4102_1797, 200)] {
        let location = kernel.line_for_address(address).unwrap();
        assert!(location.file.ends_with("ipc/ipc_kmsg.c"), "{location:?}");
        assert_eq!(location.line, line, "{address:#x}");
    }
    // gdb -batch -ex 'break ipc_kmsg.c:LINE' -ex 'info breakpoints': every location,
    // including the entries of ipc_kmsg_free inlined from calls on lines 203, 530
    // and 607 (and only the first address of line 607 in ipc_kmsg_put).
    let gdb_breakpoints: [(u64, &[u64]); 6] = [
        (195, &[0x4102_175c]),
        (203, &[0x4102_17d5, 0x4102_17e0]),
        (508, &[0x4102_1a10]),
        (529, &[0x4102_1a7a]),
        (530, &[0x4102_1af0, 0x4102_1b60]),
        (607, &[0x4102_1c8f, 0x4102_1c93]),
    ];
    for (line, expected) in gdb_breakpoints {
        let addresses = kernel.addresses_for_line("ipc_kmsg.c", line);
        assert_eq!(addresses, expected, "ipc_kmsg.c:{line}");
        assert_eq!(kernel.addresses_for_line("ipc/ipc_kmsg.c", line), addresses);
    }
    assert!(kernel.addresses_for_line("kmsg.c", 529).is_empty());
    let symbolized = kernel.symbolize(0x4102_1a80).unwrap();
    assert_eq!(
        symbolized.to_string(),
        "ipc_kmsg_get+0x70 at ../ipc/ipc_kmsg.c:529"
    );
}

/// An entry value somewhere real: every ipc_kmsg_* function's parameters, at
/// every address of the function, are either a plain location or an entry value;
/// entry values exist, and all of them name argument registers.
#[test]
fn entry_values_are_found_and_name_argument_registers() {
    let kernel = kernel();
    let mut entry_values = 0;
    for function in kernel.functions("ipc_kmsg_*") {
        let Some(entry) = function.entry() else {
            continue;
        };
        for address in (entry..entry + function.size()).step_by(3) {
            for variable in kernel.variables_at(address) {
                if variable.kind == VariableKind::Parameter
                    && !variable.inlined
                    && let Location::EntryValue(register) = variable.location
                {
                    assert!([5, 4, 1, 2, 8, 9].contains(&register), "{variable:?}");
                    entry_values += 1;
                }
            }
        }
    }
    assert!(entry_values > 100, "{entry_values}");
}

#[test]
fn verbose_listing_shows_locations_and_inlined_instances() {
    let kernel = kernel();
    let text = userland_client::debuginfo::format_list(
        kernel,
        "ipc_kmsg_free",
        ListOptions { verbose: true },
    );
    let expected = "\
ipc_kmsg_free(ipc_kmsg_t kmsg)
    entry 0x410219f0 size 31 returns void
    declared at ../ipc/ipc_kmsg.c:468
    ipc_kmsg_t kmsg: %rdi
    inlined at 0x410217e0 from ../ipc/ipc_kmsg.c:203
    inlined at 0x41021b60 from ../ipc/ipc_kmsg.c:530
    inlined at 0x41021c93 from ../ipc/ipc_kmsg.c:607
    inlined at 0x41021d40 from ../ipc/ipc_kmsg.c:634
";
    assert_eq!(text, expected);
}

/// Every function of the image against gdb's own listing,
/// `tests/fixtures/gnumach-gdb-info-functions.txt` (the prototype lines of
/// `gdb -batch -ex 'info functions' gnumach.elf`). gdb spells base types the C way
/// (`unsigned long`) where DWARF names them `long unsigned int`; both are normalised.
/// Parameters are listed in declaration order; gdb lists the order of the out-of-line
/// copy, which GCC's IPA-SRA changed for exactly five functions.
#[test]
fn every_prototype_matches_gdb_info_functions() {
    fn normalise(text: &str) -> String {
        let mut text = text.trim().to_owned();
        for (dwarf, c) in [
            ("long long unsigned int", "unsigned long long"),
            ("long long int", "long long"),
            ("long unsigned int", "unsigned long"),
            ("short unsigned int", "unsigned short"),
            ("long int", "long"),
            ("short int", "short"),
        ] {
            text = text.replace(dwarf, c);
        }
        text.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace(" *", "*")
            .replace("* ", "*")
    }
    fn split_parameters(text: &str) -> Vec<String> {
        let mut parameters = Vec::new();
        let (mut depth, mut current) = (0, String::new());
        for c in text.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if c == ',' && depth == 0 {
                parameters.push(normalise(&current));
                current.clear();
            } else {
                current.push(c);
            }
        }
        if !current.trim().is_empty() && current.trim() != "void" {
            parameters.push(normalise(&current));
        }
        parameters
    }
    let golden = include_str!("fixtures/gnumach-gdb-info-functions.txt");
    let mut gdb: std::collections::HashMap<String, Vec<(String, Vec<String>)>> = Default::default();
    for line in golden.lines() {
        // "508:\tmach_msg_return_t ipc_kmsg_get(mach_msg_header_t *, ...);"
        let declaration = line.split_once(":\t").unwrap().1;
        let declaration = declaration.strip_prefix("static ").unwrap_or(declaration);
        let declaration = declaration.strip_suffix(");").unwrap();
        let open = declaration.find('(').unwrap();
        let head = &declaration[..open];
        let split = head
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |index| index + 1);
        gdb.entry(head[split..].to_owned()).or_default().push((
            normalise(&head[..split]),
            split_parameters(&declaration[open + 1..]),
        ));
    }
    let mut compared = 0;
    let mut reordered = Vec::new();
    let mut different = Vec::new();
    for function in kernel().functions("*") {
        if function.entry().is_none() {
            continue;
        }
        let Some(candidates) = gdb.get(&function.name) else {
            continue;
        };
        let mut parameters: Vec<String> = function
            .parameters
            .iter()
            .map(|parameter| normalise(&parameter.type_name))
            .collect();
        if function.variadic {
            parameters.push("...".into());
        }
        let ours = (normalise(&function.return_type_name), parameters);
        compared += 1;
        if candidates.contains(&ours) {
            continue;
        }
        let mut sorted = ours.1.clone();
        sorted.sort();
        if candidates.iter().any(|(return_type, parameters)| {
            let mut theirs = parameters.clone();
            theirs.sort();
            *return_type == ours.0 && theirs == sorted
        }) {
            reordered.push(function.name);
        } else {
            different.push(format!("{}: {ours:?} vs gdb {candidates:?}", function.name));
        }
    }
    assert!(compared > 1700, "{compared}");
    assert!(different.is_empty(), "{different:#?}");
    reordered.sort();
    assert_eq!(
        reordered,
        [
            "db_cmp_variable_name",
            "kmem_buf_fill",
            "looks_like_command",
            "rdxtree_walk_next",
            "vm_allocate_contiguous"
        ]
    );
}

/// The command a Hurd developer types, end to end through the binary.
#[test]
fn probeport_list_on_the_gnu_mach_image() {
    kernel(); // Installs the package if it is missing.
    let output = Command::new(env!("CARGO_BIN_EXE_probeport"))
        .args(["list", "--kernel", "gnumach-dbg", "-v", "ipc_kmsg_get"])
        .output()
        .expect("probeport runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Prototype and locations as `gdb -batch -ex 'info scope ipc_kmsg_get'` shows them
    // at the entry (0x41021a10): msg in rdi, size in rsi, kmsgp in rdx.
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "ipc_kmsg_get(mach_msg_header_t *msg, mach_msg_size_t size, ipc_kmsg_t *kmsgp)\n    \
         entry 0x41021a10 size 383 returns mach_msg_return_t\n    \
         declared at ../ipc/ipc_kmsg.c:501\n    \
         mach_msg_header_t *msg: %rdi\n    \
         mach_msg_size_t size: %rsi\n    \
         ipc_kmsg_t *kmsgp: %rdx\n"
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_probeport"))
        .args(["list", "--kernel", "gnumach-dbg", "no_such_function_*"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(missing.stderr).unwrap(),
        "probeport: no function or marker matches `no_such_function_*`\n"
    );
}
