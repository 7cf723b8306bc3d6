//! PROTOCOL.md against the code: every error code, helper, verifier rule and
//! request kind the code has is in the document's tables, with the same number, and
//! the tables list nothing the code lacks.
//!
//! Set `PROBEPORT_PRINT_TABLES=1` to print the tables as the code has them.

use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::isa::Helper;
use probe_port_protocol::verifier::Rule;

fn document() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    std::fs::read_to_string(path).expect("PROTOCOL.md is readable")
}

/// The rows `| number | `name` | …` of the table that follows `heading_line`.
fn table_rows(document: &str, header: &str) -> Vec<(u32, String)> {
    let start = document
        .find(header)
        .unwrap_or_else(|| panic!("no table headed {header:?}"));
    document[start..]
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let number = cells[1]
                .parse()
                .unwrap_or_else(|_| panic!("bad row {line:?}"));
            (number, cells[2].trim_matches('`').to_string())
        })
        .collect()
}

#[test]
fn verifier_rules_match() {
    let expected: Vec<(u32, String)> = Rule::ALL
        .iter()
        .map(|rule| (u32::from(rule.code()), rule.name().to_string()))
        .collect();
    if std::env::var_os("PROBEPORT_PRINT_TABLES").is_some() {
        for rule in Rule::ALL {
            println!(
                "| {} | `{}` | {} |",
                rule.code(),
                rule.name(),
                rule.description()
            );
        }
    }
    assert_eq!(
        table_rows(&document(), "| rule | name | meaning |"),
        expected
    );
}

#[test]
fn error_codes_match() {
    let expected: Vec<(u32, String)> = ErrorCode::ALL
        .iter()
        .map(|code| (u32::from(code.0), code.name().unwrap().to_string()))
        .collect();
    assert_eq!(
        table_rows(&document(), "| code | name | meaning |"),
        expected
    );
}

#[test]
fn helpers_match() {
    let expected: Vec<(u32, String)> = Helper::ALL
        .iter()
        .map(|helper| (helper.id(), helper.name().to_string()))
        .collect();
    assert_eq!(
        table_rows(&document(), "| N | helper | arguments | result |"),
        expected
    );
}

#[test]
fn request_kinds_match() {
    let rows = table_rows(
        &document(),
        "| # | request | fields | success reply | typical errors |",
    );
    assert_eq!(
        rows.len() as u32,
        probe_port_protocol::message::REQUEST_KINDS
    );
    for (position, (number, _)) in rows.iter().enumerate() {
        assert_eq!(*number as usize, position);
    }
}
