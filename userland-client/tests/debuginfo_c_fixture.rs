//! Debuginfo against a small C program compiled at test time with the host gcc
//! (`tests/fixtures/debuginfo_fixture.c`, `-g -O2`, once with `-gdwarf-4` and once
//! with `-gdwarf-5`), covering location lists, inlining, entry values, bitfields,
//! anonymous unions and function pointers.
//!
//! Expected values come from `gdb -batch -ex 'info scope process' -ex 'info scope
//! dispatch' -ex 'ptype /o struct request'`, `gdb 'info line'` and `addr2line -f -i`
//! on the binaries built by gcc 12.2.0 (Debian 12.2.0-14+deb12u1); both DWARF versions
//! produce the same code, so one table of addresses serves both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use userland_client::debuginfo::{
    InstanceKind, Kernel, ListOptions, Location, MemoryBase, TypeKind, VariableKind,
    format_function,
};

const SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/debuginfo_fixture.c"
);

/// Compiles the fixture with `-gdwarf-VERSION` into a fresh temporary directory.
fn compile(version: u8) -> (Kernel, PathBuf) {
    // Tests run in parallel: each compilation gets its own directory.
    static COMPILATIONS: AtomicUsize = AtomicUsize::new(0);
    let directory = std::env::temp_dir().join(format!(
        "probeport-debuginfo-{}-{}-dwarf{version}",
        std::process::id(),
        COMPILATIONS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&directory).unwrap();
    let output = directory.join("fixture");
    let result = Command::new("gcc")
        .args(["-g", "-O2", &format!("-gdwarf-{version}")])
        .args([
            "-nostdlib",
            "-static",
            "-no-pie",
            "-fno-pic",
            "-Wl,--build-id",
        ])
        .arg("-o")
        .arg(&output)
        .arg(SOURCE)
        .output()
        .expect("cannot run gcc: the C fixture tests need the host gcc");
    assert!(
        result.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let kernel = Kernel::open(&output).unwrap();
    (kernel, directory)
}

fn with_both_versions(check: impl Fn(&Kernel, u8)) {
    for version in [4, 5] {
        let (kernel, directory) = compile(version);
        assert_eq!(
            kernel.dwarf_versions().into_iter().collect::<Vec<_>>(),
            [u16::from(version)]
        );
        check(&kernel, version);
        let _ = std::fs::remove_dir_all(&directory);
    }
}

fn location_of(kernel: &Kernel, address: u64, name: &str) -> Location {
    kernel
        .variables_at(address)
        .into_iter()
        .find(|variable| variable.name == name)
        .unwrap_or_else(|| panic!("{name} not in scope at {address:#x}"))
        .location
}

#[test]
fn functions_and_prototypes() {
    with_both_versions(|kernel, _| {
        let names: Vec<String> = kernel
            .functions("*")
            .into_iter()
            .map(|function| function.name)
            .collect();
        assert_eq!(
            names,
            [
                "_start", "dispatch", "handle", "process", "scale", "sink", "source"
            ]
        );
        // gdb ptype: long (request_t *, long, int) and
        // void (handler_fn, request_t *, unsigned int); DWARF spells long "long int".
        let process = kernel.function("process").unwrap();
        assert_eq!(
            format_function(&process, ListOptions::default()),
            "process(request_t *req, long int count, int flags)"
        );
        assert_eq!(process.entry(), Some(0x401030));
        assert_eq!(process.decl_line, Some(28));
        let dispatch = kernel.function("dispatch").unwrap();
        assert_eq!(
            format_function(&dispatch, ListOptions::default()),
            "dispatch(handler_fn handler, request_t *req, unsigned int times)"
        );
        let handler = kernel.type_by_name("handler_fn").unwrap();
        let TypeKind::Typedef {
            target: Some(target),
        } = handler.kind
        else {
            panic!("{handler:?}")
        };
        assert_eq!(kernel.type_name(target), "void (*)(request_t *, int)");
        assert_eq!(handler.size, Some(8));
        assert_eq!(kernel.functions("s*").len(), 3);
        assert!(kernel.functions("nothing*").is_empty());
    });
}

/// `scale` is always inlined: no out-of-line copy, two inlined instances
/// (llvm-dwarfdump / readelf: DW_AT_entry_pc 0x401058 from line 32 and 0x4010df
/// from line 43).
#[test]
fn inlined_instances() {
    with_both_versions(|kernel, _| {
        let scale = kernel.function("scale").unwrap();
        assert_eq!(scale.entry(), None);
        let inlined: Vec<(u64, u64)> = scale
            .inlined()
            .map(|instance| match &instance.kind {
                InstanceKind::Inlined {
                    call_file,
                    call_line,
                } => {
                    assert!(
                        call_file
                            .as_deref()
                            .unwrap()
                            .ends_with("debuginfo_fixture.c")
                    );
                    (instance.entry_pc, *call_line)
                }
                InstanceKind::OutOfLine => unreachable!(),
            })
            .collect();
        assert_eq!(inlined, [(0x401058, 32), (0x4010df, 43)]);
        // addr2line -f -i 0x401060: scale at :24 inlined in process at :32.
        let symbolized = kernel.symbolize(0x401060).unwrap();
        assert_eq!(symbolized.function, "process");
        assert_eq!(symbolized.offset, 0x30);
        assert_eq!(symbolized.inlined, ["scale"]);
        assert_eq!(symbolized.line.unwrap().line, 24);
    });
}

/// `info scope process` / `info scope dispatch`, evaluated at addresses of each range.
#[test]
fn location_lists_and_entry_values() {
    with_both_versions(|kernel, version| {
        let process = kernel.function("process").unwrap();
        let at_entry: Vec<Location> = process
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
            ],
            "DWARF {version}"
        );
        // total: "the constant 0" at 0x401030-0x401051, then $r12.
        assert_eq!(location_of(kernel, 0x401030, "total"), Location::Value(0));
        // 0x401051-...: req in $r13, count in $r14, flags in $r15, total in $r12.
        assert_eq!(location_of(kernel, 0x401060, "req"), Location::Register(13));
        assert_eq!(
            location_of(kernel, 0x401060, "count"),
            Location::Register(14)
        );
        assert_eq!(
            location_of(kernel, 0x401060, "flags"),
            Location::Register(15)
        );
        assert_eq!(
            location_of(kernel, 0x401060, "total"),
            Location::Register(12)
        );
        // 0x401097: req and count are DW_OP_entry_value(reg5 / reg4); flags still r15.
        assert_eq!(
            location_of(kernel, 0x401097, "req"),
            Location::EntryValue(5)
        );
        assert_eq!(
            location_of(kernel, 0x401097, "count"),
            Location::EntryValue(4)
        );
        assert_eq!(
            location_of(kernel, 0x401097, "flags"),
            Location::Register(15)
        );
        // 0x40109b-0x40109c: flags is DW_OP_entry_value(reg1); total has no entry.
        assert_eq!(
            location_of(kernel, 0x40109b, "flags"),
            Location::EntryValue(1)
        );
        assert!(!location_of(kernel, 0x40109b, "total").is_available());
        // dispatch: times in $rbp from 0x4010c8, entry_value($rdx) from 0x4010f6.
        assert_eq!(
            location_of(kernel, 0x4010d0, "times"),
            Location::Register(6)
        );
        assert_eq!(
            location_of(kernel, 0x4010f8, "times"),
            Location::EntryValue(1)
        );
        assert_eq!(
            location_of(kernel, 0x4010f8, "handler"),
            Location::EntryValue(5)
        );
    });
}

/// Inside the inlined `scale` in `process`'s loop, the loop's block local `i` and the
/// inlined function's parameters and local are in scope.
#[test]
fn variables_of_blocks_and_inlined_instances() {
    with_both_versions(|kernel, _| {
        let variables = kernel.variables_at(0x401060);
        let seen: Vec<(&str, VariableKind, bool, &str)> = variables
            .iter()
            .map(|variable| {
                (
                    variable.name.as_str(),
                    variable.kind,
                    variable.inlined,
                    variable.function.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("req", VariableKind::Parameter, false, "process"),
                ("count", VariableKind::Parameter, false, "process"),
                ("flags", VariableKind::Parameter, false, "process"),
                ("total", VariableKind::Local, false, "process"),
                ("i", VariableKind::Local, false, "process"),
                ("k", VariableKind::Parameter, true, "scale"),
                ("x", VariableKind::Parameter, true, "scale"),
                ("product", VariableKind::Local, true, "scale"),
            ]
        );
        // x is req->cookie: DW_OP_breg13 8, the value stored at r13 + 8.
        assert_eq!(
            location_of(kernel, 0x401060, "x"),
            Location::Memory {
                base: MemoryBase::Register(13),
                offset: 8
            }
        );
        assert_eq!(location_of(kernel, 0x401060, "i"), Location::Register(3));
        assert_eq!(
            location_of(kernel, 0x401060, "product"),
            Location::Register(6)
        );
        // Outside the loop, `i` is not in scope.
        assert!(
            kernel
                .variables_at(0x401030)
                .iter()
                .all(|variable| variable.name != "i")
        );
        assert!(kernel.variables_at(0x10).is_empty());
    });
}

/// `ptype /o struct request`.
#[test]
fn struct_layout_with_bitfields_and_anonymous_union() {
    with_both_versions(|kernel, version| {
        let request = kernel.type_by_name("struct request").unwrap();
        assert_eq!(request.size, Some(32));
        let typedef = kernel.type_by_name("request_t").unwrap();
        assert_eq!(kernel.strip_typedefs(typedef.id), Some(request.id));
        let expected = [
            ("id", 0, None),
            ("urgent", 4, Some((32, 1))),
            ("priority", 4, Some((33, 3))),
            ("cookie", 8, None),
            ("owner", 8, None),
            ("next", 16, None),
            ("tag", 24, None),
        ];
        for (name, offset, bits) in expected {
            let member = kernel
                .member(typedef.id, name)
                .unwrap_or_else(|| panic!("{name}"));
            assert_eq!(member.offset, offset, "{name} (DWARF {version})");
            assert_eq!(
                member
                    .bitfield
                    .map(|bitfield| (bitfield.bit_offset, bitfield.bit_size)),
                bits,
                "{name} (DWARF {version})"
            );
        }
        let tag = kernel.member(request.id, "tag").unwrap();
        let tag_type = kernel.type_info(tag.type_id.unwrap()).unwrap();
        assert_eq!(tag_type.name, "char [8]");
        assert_eq!(tag_type.size, Some(8));
        assert!(matches!(
            tag_type.kind,
            TypeKind::Array { count: Some(8), .. }
        ));
        let next = kernel.member(request.id, "next").unwrap();
        assert_eq!(kernel.type_name(next.type_id.unwrap()), "struct request *");
        assert!(kernel.member(request.id, "missing").is_none());
    });
}

/// `gdb -batch -ex 'break fixture.c:LINE' -ex 'info breakpoints'`: line 29 "is at
/// address 0x401030 but contains no code" (an empty row of a location view) and is
/// still a probe point; lines 32 and 43 are calls of the inlined `scale`, whose
/// entries are the locations; line 24 is inside `scale`, once per inlined copy.
#[test]
fn line_table() {
    with_both_versions(|kernel, version| {
        let gdb_breakpoints: [(u64, &[u64]); 5] = [
            (24, &[0x401060, 0x4010e4]),
            (29, &[0x401030]),
            (32, &[0x401058]),
            (36, &[0x401086]),
            (43, &[0x4010df]),
        ];
        for (line, expected) in gdb_breakpoints {
            assert_eq!(
                kernel.addresses_for_line("debuginfo_fixture.c", line),
                expected,
                "line {line}, DWARF {version}"
            );
        }
        assert_eq!(
            kernel.addresses_for_line("fixtures/debuginfo_fixture.c", 29),
            [0x401030]
        );
        assert!(kernel.addresses_for_line("fixture.c", 29).is_empty());
        let line = kernel.line_for_address(0x401086).unwrap();
        assert!(line.file.ends_with("debuginfo_fixture.c"));
        assert_eq!(line.line, 36);
    });
}

#[test]
fn build_id_mismatch_is_refused_with_both_ids() {
    let (kernel, directory) = compile(5);
    let ours = kernel.build_id().expect("gcc --build-id").to_vec();
    assert_eq!(ours.len(), 20);
    kernel.check_build_id(&ours).unwrap();
    let running = [0x12, 0x34, 0x56, 0x78];
    let error = kernel.check_build_id(&running).unwrap_err();
    assert_eq!(error.expected.as_deref(), Some(ours.as_slice()));
    let message = error.to_string();
    let ours_hex: String = ours.iter().map(|byte| format!("{byte:02x}")).collect();
    assert!(message.starts_with("build-id mismatch: the running kernel is 12345678"));
    assert!(message.contains(&ours_hex), "{message}");
    assert!(message.contains(&kernel.path().display().to_string()));
    let _ = std::fs::remove_dir_all(&directory);
    assert!(Path::new(SOURCE).exists());
}

#[test]
fn kernel_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Kernel>();
}

/// Images that cannot be used are refused with an error naming the file and why.
#[test]
fn unusable_images_are_refused_clearly() {
    let directory =
        std::env::temp_dir().join(format!("probeport-debuginfo-{}-errors", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let missing = directory.join("missing");
    let error = Kernel::open(&missing).unwrap_err().to_string();
    assert!(error.starts_with("cannot read kernel image"), "{error}");
    assert!(error.contains("missing"), "{error}");

    let text = directory.join("text");
    std::fs::write(&text, "not an ELF image").unwrap();
    let error = Kernel::open(&text).unwrap_err().to_string();
    assert!(error.contains("is not a readable ELF image"), "{error}");

    // Compiled without -g: symbols but no DWARF.
    let stripped = directory.join("stripped");
    let status = Command::new("gcc")
        .args(["-O2", "-nostdlib", "-static", "-no-pie", "-fno-pic", "-o"])
        .arg(&stripped)
        .arg(SOURCE)
        .status()
        .expect("cannot run gcc");
    assert!(status.success());
    let error = Kernel::open(&stripped).unwrap_err().to_string();
    assert!(error.contains("has no DWARF debug information"), "{error}");

    // A gzip-compressed image opens like the plain one.
    let (kernel, compiled) = compile(5);
    let plain = std::fs::read(kernel.path()).unwrap();
    let gz = directory.join("fixture.gz");
    let mut encoder =
        flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), Default::default());
    std::io::Write::write_all(&mut encoder, &plain).unwrap();
    encoder.finish().unwrap();
    let inflated = Kernel::open(&gz).unwrap();
    assert_eq!(inflated.build_id(), kernel.build_id());
    assert_eq!(inflated.functions("*"), kernel.functions("*"));
    let _ = std::fs::remove_dir_all(&directory);
    let _ = std::fs::remove_dir_all(&compiled);
}
