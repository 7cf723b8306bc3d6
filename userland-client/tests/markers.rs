//! The marker table read offline from the demo kernel's image (`probeport_markers`
//! decoded through DWARF) against the table the kernel announces, as
//! `targets/demo-kernel/README.md` lists it; and an image without the section.
//!
//! The live table itself is compared in `tests/demo.rs`: `probeport run --demo`
//! refuses to arm when the running kernel's `DescribeMarker` table differs from the
//! image's, so that test passes only when they are equal.

mod common;

use lang::resolver::{Marker, MarkerArg};
use probe_port_protocol::message::ArgType;
use userland_client::debuginfo::Kernel;
use userland_client::markers;

fn demo() -> Kernel {
    Kernel::open(common::demo_kernel_path()).unwrap()
}

fn arg_type(name: &str) -> ArgType {
    match name {
        "U8" => ArgType::U8,
        "U16" => ArgType::U16,
        "U32" => ArgType::U32,
        "U64" => ArgType::U64,
        "I8" => ArgType::I8,
        "I16" => ArgType::I16,
        "I32" => ArgType::I32,
        "I64" => ArgType::I64,
        "Bool" => ArgType::Bool,
        "Pointer" => ArgType::Pointer,
        "String" => ArgType::String,
        other => panic!("unknown argument type {other} in the README"),
    }
}

/// The rows of the README's marker table: name and arguments, in the README's order.
fn readme_markers() -> Vec<(String, Vec<MarkerArg>)> {
    let readme =
        std::fs::read_to_string(common::workspace().join("targets/demo-kernel/README.md")).unwrap();
    let table = readme.split("## Markers").nth(1).unwrap();
    table
        .lines()
        .skip_while(|line| !line.starts_with("| marker"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_string();
            let args = cells[3]
                .split('`')
                .nth(1)
                .unwrap()
                .split(", ")
                .map(|arg| {
                    let (name, ty) = arg.split_once(": ").unwrap();
                    MarkerArg {
                        name: name.to_string(),
                        ty: arg_type(ty),
                    }
                })
                .collect();
            (name, args)
        })
        .collect()
}

#[test]
fn demo_kernel_markers_match_the_readme() {
    let kernel = demo();
    let table = markers::read(&kernel).unwrap();
    let mut expected = readme_markers();
    assert_eq!(expected.len(), 6, "the README lists six markers");
    assert_eq!(table.len(), expected.len());
    // The table is in link order; the README's rows are in any order.
    let mut found: Vec<(String, Vec<MarkerArg>)> = table
        .iter()
        .map(|site| (site.marker.name.clone(), site.marker.args.clone()))
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(found, expected);
}

#[test]
fn demo_kernel_markers_are_the_section_in_order() {
    let kernel = demo();
    let table = markers::read(&kernel).unwrap();
    let (start, bytes) = kernel.section_data(markers::SECTION).unwrap();
    let site_size = bytes.len() as u64 / table.len() as u64;
    for (position, site) in table.iter().enumerate() {
        assert_eq!(site.marker.index, position as u32);
        assert_eq!(site.address, start + position as u64 * site_size);
    }
    let as_compiled: Vec<Marker> = markers::read_markers(&kernel).unwrap().unwrap();
    assert_eq!(
        as_compiled,
        table
            .into_iter()
            .map(|site| site.marker)
            .collect::<Vec<_>>()
    );
}

#[test]
fn an_image_without_the_section_has_no_table() {
    let kernel = common::gnumach();
    assert!(kernel.section_data(markers::SECTION).is_none());
    assert!(markers::read(kernel).unwrap().is_empty());
    assert_eq!(markers::read_markers(kernel).unwrap(), None);
}
