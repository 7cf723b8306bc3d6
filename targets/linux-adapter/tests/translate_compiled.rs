//! The translator on the programs the real compiler produces: every script of
//! `lang/test_data/compile/ok/` compiled against the language's fake kernel, each
//! handler translated, and (as root) loaded into the running kernel, whose verifier
//! must accept it. Programs the translator cannot express are refused with a
//! reason, and the test names which ones and why.

use std::collections::BTreeMap;
use std::path::Path;

use lang::compiled::SiteSpec;
use lang::fake::DemoKernel;
use lang::source::Sources;
use lang::{CompileOptions, compile};
use linux_adapter::sys::{BpfMap, BpfProgram, RingBuffer, map_type};
use linux_adapter::translate::{
    ENTRY_RECORD, Environment, LinuxMap, Role, counter, stat, translate,
};
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::maps::{MapId, MapKind};
use probe_port_protocol::verifier::{ProgramKind, VerifierConfig, verify_alloc};

fn scripts() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lang/test_data/compile/ok");
    let mut scripts: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("the compiler's test scripts")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "probe"))
        .map(|path| {
            (
                path.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&path).unwrap(),
            )
        })
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 10, "too few scripts in {}", dir.display());
    scripts
}

#[test]
fn compiled_programs_translate_and_the_kernel_accepts_them() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "loading programs into the kernel needs root");
    let ring = RingBuffer::create(1 << 16).unwrap();
    let counters = BpfMap::create(
        map_type::PERCPU_ARRAY,
        4,
        (counter::WORDS * 8) as u32,
        1,
        "t_seq",
    )
    .unwrap();
    let entries = BpfMap::create(map_type::HASH, 16, ENTRY_RECORD as u32, 64, "t_entry").unwrap();
    let entry_zero = BpfMap::create(map_type::ARRAY, 4, ENTRY_RECORD as u32, 1, "t_ezero").unwrap();
    let stats = BpfMap::create(
        map_type::PERCPU_ARRAY,
        4,
        (stat::WORDS * 8) as u32,
        257,
        "t_stats",
    )
    .unwrap();
    let mut loaded = 0;
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    for (name, text) in scripts() {
        let mut sources = Sources::new();
        sources.add_script(format!("{name}.probe"), text);
        lang::tapset::add_builtin(&mut sources);
        let (script, diagnostics) =
            compile(&sources, &DemoKernel::new(), &CompileOptions::default());
        let script = script.unwrap_or_else(|| panic!("{name} does not compile: {diagnostics:?}"));
        let specs = script.map_specs();
        let mut maps = BTreeMap::new();
        for spec in &specs {
            let (kind, zero) = match spec.kind {
                MapKind::Hash => (map_type::HASH, None),
                MapKind::Aggregate(_) => (
                    map_type::PERCPU_HASH,
                    Some(
                        BpfMap::create(map_type::ARRAY, 4, spec.value_size.into(), 1, "t_zero")
                            .unwrap(),
                    ),
                ),
            };
            let map = BpfMap::create(
                kind,
                spec.key_size.into(),
                spec.value_size.into(),
                spec.max_entries,
                "t_map",
            )
            .unwrap_or_else(|error| panic!("{name}: map {spec:?}: {error}"));
            maps.insert(spec.map.0, (*spec, map, zero));
        }
        let lookup = |map: MapId| {
            maps.get(&map.0).map(|(spec, map, zero)| LinuxMap {
                spec: *spec,
                fd: map.raw_fd(),
                zero_fd: zero.as_ref().map_or(-1, BpfMap::raw_fd),
            })
        };
        for (number, attachment) in script.attachments().enumerate() {
            let is_return = matches!(
                attachment.site,
                SiteSpec::Return { .. }
                    | SiteSpec::User {
                        is_return: true,
                        ..
                    }
            );
            let with_entry = is_return && !attachment.entry_program.is_empty();
            let mut programs = vec![(
                &attachment.program,
                ProgramKind::Probe,
                if with_entry {
                    Role::Return
                } else {
                    Role::Probe {
                        at_return: is_return,
                    }
                },
            )];
            if with_entry {
                programs.push((&attachment.entry_program, ProgramKind::Entry, Role::Entry));
            }
            for (program, kind, role) in programs {
                let environment = Environment {
                    layout: linux_adapter::translate::Layout::Registers,
                    probe: number as u32 + 1,
                    maps: &lookup,
                    ring_fd: ring.raw_fd(),
                    counters_fd: counters.raw_fd(),
                    stats_fd: stats.raw_fd(),
                    role,
                    entries_fd: entries.raw_fd(),
                    entry_zero_fd: entry_zero.raw_fd(),
                };
                let verified = verify_alloc(program, &VerifierConfig::new(kind, &specs.as_slice()))
                    .expect("the compiler's programs verify");
                let what = format!("{name}: {} ({role:?})", attachment.description);
                match translate(program, verified.stack_depth(), &environment) {
                    Ok(linux) => {
                        if let Err(error) = BpfProgram::load(&linux, "t_prog") {
                            panic!(
                                "{what}: the kernel refused the translation ({}):\n{}\n{}",
                                error.error,
                                error.log,
                                probe_port_protocol::asm::disassemble(&linux)
                            );
                        }
                        loaded += 1;
                    }
                    Err(error) => {
                        assert_eq!(error.code, ErrorCode::UNSUPPORTED, "{what}: {error}");
                        refused.insert(what, error.reason);
                    }
                }
            }
        }
    }
    println!("{loaded} programs loaded; refused: {refused:#?}");
    assert!(loaded >= 24, "only {loaded} programs loaded");
    // Only the kernel stack is beyond this adapter, for now.
    for (what, reason) in &refused {
        assert!(
            reason.contains("stack_trace"),
            "{what}: unexpected refusal: {reason}"
        );
    }
}
