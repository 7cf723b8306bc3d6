//! The bridge from the language to DWARF: real scripts compiled against the demo
//! kernel and Debian's GNU Mach debug image through `DwarfResolver`, every probe
//! site's address checked against the debuginfo and its expected bytes against
//! `objdump -d` of the same image.

mod common;

use lang::compiled::{CompiledScript, SiteSpec};
use lang::diagnostic::{Diagnostic, render};
use lang::resolver::{Marker, MarkerArg, Resolver, SiteRefusal};
use lang::source::Sources;
use lang::{CompileOptions, compile};
use probe_port_protocol::message::ArgType;
use userland_client::debuginfo::Kernel;
use userland_client::resolve::DwarfResolver;

fn compile_with(
    kernel: &Kernel,
    markers: Vec<Marker>,
    script: &str,
) -> (Option<CompiledScript>, Vec<Diagnostic>, String) {
    let resolver = DwarfResolver::new(kernel, markers);
    let mut sources = Sources::new();
    sources.add_script("test.probe", script);
    let (compiled, diagnostics) = compile(&sources, &resolver, &CompileOptions::default());
    let text = render(&sources, &diagnostics);
    (compiled, diagnostics, text)
}

fn compile_ok(kernel: &Kernel, script: &str) -> CompiledScript {
    let (compiled, diagnostics, text) = compile_with(kernel, Vec::new(), script);
    assert!(
        !diagnostics.iter().any(Diagnostic::is_error),
        "{script}\n{text}"
    );
    compiled.expect("no errors means a compiled script")
}

fn compile_err(kernel: &Kernel, script: &str) -> String {
    let (compiled, diagnostics, text) = compile_with(kernel, Vec::new(), script);
    assert!(compiled.is_none() && diagnostics.iter().any(Diagnostic::is_error));
    text
}

/// Every dynamic or return site: its address is an objdump instruction with the same bytes.
fn check_sites_against_objdump(script: &CompiledScript, image: &std::path::Path) -> usize {
    let mut checked = 0;
    for attachment in script.attachments() {
        let (SiteSpec::Dynamic { address, expected } | SiteSpec::Return { address, expected }) =
            &attachment.site
        else {
            continue;
        };
        assert_eq!(
            *expected,
            common::objdump_instruction(image, *address),
            "{} at {address:#x}",
            attachment.description
        );
        checked += 1;
    }
    checked
}

fn entry_of(kernel: &Kernel, name: &str) -> u64 {
    kernel.function(name).and_then(|f| f.entry()).unwrap()
}

#[test]
fn demo_fault_probe_counts_pages() {
    let kernel = common::demo_kernel();
    let script = compile_ok(
        kernel,
        r#"probe kernel.function("demo_kernel::vm::fault") { @faults[$address >> 12] = count(); }"#,
    );
    let sites: Vec<&SiteSpec> = script.attachments().map(|a| &a.site).collect();
    assert_eq!(sites.len(), 1);
    let SiteSpec::Dynamic { address, .. } = sites[0] else {
        panic!("{sites:?}");
    };
    assert_eq!(*address, entry_of(kernel, "demo_kernel::vm::fault"));
    assert_eq!(
        check_sites_against_objdump(&script, common::demo_kernel_path()),
        1
    );
    assert_eq!(script.maps.len(), 1);
    assert_eq!(script.maps[0].name, "@faults");
}

#[test]
fn demo_wildcards_returns_and_members() {
    let kernel = common::demo_kernel();
    let script = compile_ok(
        kernel,
        r#"
        probe kernel.function("demo_kernel::vm::*") { @calls[probefunc] = count(); }
        probe kernel.function("demo_kernel::vm::age").return {
            @aged = hist($return);
            printf("owner %u aged %u\n", $map->owner, $return);
        }
        probe kernel.function("port_send") /$message->size > 16/ {
            printf("%u bytes\n", $message->size);
        }
        "#,
    );
    // The wildcard finds the out-of-line functions of the module, each at its entry.
    let wildcard = &script.probes[0];
    let mut entries: Vec<u64> = wildcard
        .attachments
        .iter()
        .map(|a| match a.site {
            SiteSpec::Dynamic { address, .. } => address,
            ref other => panic!("{other:?}"),
        })
        .collect();
    entries.sort();
    let mut expected: Vec<u64> = ["access", "age", "fault"]
        .iter()
        .map(|name| entry_of(kernel, &format!("demo_kernel::vm::{name}")))
        .collect();
    expected.sort();
    for entry in &expected {
        assert!(entries.contains(entry), "{entries:x?} lacks {entry:#x}");
    }
    assert!(matches!(
        script.probes[1].attachments[0].site,
        SiteSpec::Return { address, .. } if address == entry_of(kernel, "demo_kernel::vm::age")
    ));
    assert!(matches!(
        script.probes[2].attachments[0].site,
        SiteSpec::Dynamic { address, .. }
            if address == entry_of(kernel, "demo_kernel::ipc::ports::port_send")
    ));
    let checked = check_sites_against_objdump(&script, common::demo_kernel_path());
    assert_eq!(checked, wildcard.attachments.len() + 2);
}

/// `name+offset` at every instruction of the function's first bytes gets objdump's
/// bytes; an offset inside an instruction is refused.
#[test]
fn demo_offsets_are_instruction_boundaries() {
    let kernel = common::demo_kernel();
    let resolver = DwarfResolver::new(kernel, Vec::new());
    let entry = entry_of(kernel, "demo_kernel::vm::fault");
    let listing = common::objdump(common::demo_kernel_path(), entry, entry + 48);
    assert!(listing.len() > 5);
    for (address, bytes) in &listing[..listing.len() - 1] {
        assert_eq!(
            resolver.instruction(*address).as_ref(),
            Ok(bytes),
            "{address:#x}"
        );
        for inside in 1..bytes.len() as u64 {
            assert_eq!(
                resolver.instruction(address + inside),
                Err(SiteRefusal::NotInstructionBoundary)
            );
        }
    }
    assert_eq!(resolver.instruction(0x10), Err(SiteRefusal::NoCode));
    // The trap path and the stub (the linker script's forbidden range) are refused
    // here, before the stub is asked; a wildcard skips them with a warning.
    let forbidden = kernel
        .forbidden_text()
        .expect("the demo kernel marks its forbidden text");
    let trap = entry_of(kernel, "demo_kernel::probe_platform::breakpoint_trap");
    assert!(forbidden.contains(&trap));
    assert!(matches!(
        resolver.instruction(trap),
        Err(SiteRefusal::Forbidden(_))
    ));
    let (compiled, diagnostics, text) = compile_with(
        kernel,
        Vec::new(),
        r#"probe kernel.function("demo_kernel::probe_platform::*") { @hits = count(); }"#,
    );
    assert!(compiled.is_some(), "{text}");
    assert!(diagnostics.iter().any(|d| d.code.0 == "W0401"), "{text}");
    for attachment in compiled.unwrap().attachments() {
        let SiteSpec::Dynamic { address, .. } = attachment.site else {
            panic!()
        };
        assert!(!forbidden.contains(&address), "{}", attachment.description);
    }

    let (multi_byte, bytes) = listing.iter().find(|(_, bytes)| bytes.len() > 1).unwrap();
    let script = compile_ok(
        kernel,
        &format!(
            r#"probe kernel.function("demo_kernel::vm::fault+{}") {{ @hits = count(); }}"#,
            multi_byte - entry
        ),
    );
    assert!(matches!(
        &script.probes[0].attachments[0].site,
        SiteSpec::Dynamic { address, expected } if address == multi_byte && expected == bytes
    ));
    let text = compile_err(
        kernel,
        &format!(
            r#"probe kernel.function("demo_kernel::vm::fault+{}") {{ @hits = count(); }}"#,
            multi_byte - entry + 1
        ),
    );
    assert!(text.contains("error[E0403]"), "{text}");
}

#[test]
fn demo_statements_resolve_through_the_line_table() {
    let kernel = common::demo_kernel();
    // A line with code: the one of an instruction a little into `fault`.
    let entry = entry_of(kernel, "demo_kernel::vm::fault");
    let location = kernel.line_for_address(entry + 0x30).unwrap();
    assert!(location.file.ends_with("vm.rs"), "{location:?}");
    let line = location.line;
    let script = compile_ok(
        kernel,
        &format!(r#"probe kernel.statement("vm.rs:{line}") {{ @hits = count(); }}"#),
    );
    let sites = script.probes[0].attachments.len();
    assert!(sites >= 1);
    assert_eq!(
        check_sites_against_objdump(&script, common::demo_kernel_path()),
        sites
    );
}

#[test]
fn demo_unknown_names_get_hints() {
    let kernel = common::demo_kernel();
    let text = compile_err(
        kernel,
        r#"probe kernel.function("demo_kernel::vm::fault") { @f[$adress] = count(); }"#,
    );
    assert!(text.contains("error[E0201]"), "{text}");
    assert!(text.contains("did you mean `$address`?"), "{text}");

    let text = compile_err(
        kernel,
        r#"probe kernel.function("demo_kernel::vm::faul") { exit(); }"#,
    );
    assert!(text.contains("error[E0402]"), "{text}");
    assert!(text.contains("demo_kernel::vm::fault"), "{text}");
}

#[test]
fn markers_come_from_the_stub_table() {
    let kernel = common::demo_kernel();
    let markers = vec![Marker {
        index: 3,
        name: "ipc:send".into(),
        args: vec![
            MarkerArg {
                name: "port".into(),
                ty: ArgType::U32,
            },
            MarkerArg {
                name: "size".into(),
                ty: ArgType::U64,
            },
        ],
    }];
    let (compiled, diagnostics, text) = compile_with(
        kernel,
        markers,
        r#"probe kernel.marker("ipc:*") { @bytes[$port] = sum($size); }"#,
    );
    assert!(!diagnostics.iter().any(Diagnostic::is_error), "{text}");
    let compiled = compiled.unwrap();
    assert_eq!(
        compiled.probes[0].attachments[0].site,
        SiteSpec::Marker { index: 3 }
    );
    // Without a connected kernel there are no markers.
    let text = compile_err(kernel, r#"probe kernel.marker("ipc:send") { exit(); }"#);
    assert!(text.contains("error[E0402]"), "{text}");
}

#[test]
fn gnumach_ipc_kmsg_get() {
    let kernel = common::gnumach();
    let script = compile_ok(
        kernel,
        r#"probe kernel.function("ipc_kmsg_get") { printf("%d\n", $size); }"#,
    );
    assert_eq!(script.attachments().count(), 1);
    let SiteSpec::Dynamic { address, .. } = script.probes[0].attachments[0].site else {
        panic!()
    };
    // gdb: `info address ipc_kmsg_get` is 0x41021a10.
    assert_eq!(address, 0x4102_1a10);
    assert_eq!(
        check_sites_against_objdump(&script, common::gnumach_elf()),
        1
    );
}

#[test]
fn gnumach_members_casts_and_wildcards() {
    let kernel = common::gnumach();
    let script = compile_ok(
        kernel,
        r#"
        probe kernel.function("ipc_kmsg_get") {
            printf("%u %x\n", $msg->msgh_size, $msg->msgh_id);
        }
        probe kernel.function("ipc_kmsg_get").return {
            @result[$return] = count();
        }
        probe kernel.function("ipc_kmsg_*") {
            @calls[probefunc] = count();
        }
        probe kernel.function("ipc_kmsg_put") {
            printf("%p\n", (struct ipc_kmsg *)$kmsg);
        }
        "#,
    );
    let wildcard = script.probes[2].attachments.len();
    assert!(wildcard >= 10, "{wildcard} ipc_kmsg_* sites");
    let checked = check_sites_against_objdump(&script, common::gnumach_elf());
    assert_eq!(checked, script.attachments().count());

    let text = compile_err(
        kernel,
        r#"probe kernel.function("ipc_kmsg_get") { printf("%u\n", $msg->msgh_sise); }"#,
    );
    assert!(text.contains("error[E0209]"), "{text}");
    assert!(text.contains("msgh_size"), "{text}");
    let text = compile_err(
        kernel,
        r#"probe kernel.function("ipc_kmsg_get") { printf("%p\n", (struct ipc_kmgs *)$msg); }"#,
    );
    assert!(text.contains("error[E0208]"), "{text}");
    assert!(text.contains("ipc_kmsg"), "{text}");
}
