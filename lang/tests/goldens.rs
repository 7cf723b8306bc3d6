//! Golden-file tests: `test_data/{parse,check,compile}/{ok,err}/NAME.probe`, each
//! beside its expected output. `UPDATE_GOLDENS=1 cargo test -p lang --test goldens`
//! rewrites the expected files from what the compiler does now.
//!
//! - `parse/ok`: the syntax tree (`NAME.ast`); `parse/err`: the diagnostics (`NAME.diag`).
//! - `check/ok`: maps, records and sites (`NAME.check`); `check/err`: diagnostics.
//! - `compile/ok`: the same with every program disassembled (`NAME.asm`);
//!   `compile/err`: diagnostics.
//!
//! Every script compiles against the fake demo kernel (`lang::fake::DemoKernel`) with
//! the built-in tapsets. A script may start with header comments:
//! `// options: max_insns=40 string_size=16` and `// tapset: tapsets/NAME.probe`
//! (relative to `test_data`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lang::compiled::describe;
use lang::diagnostic::{CODES, render};
use lang::fake::DemoKernel;
use lang::source::Sources;
use lang::{CompileOptions, compile};

fn test_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data")
}

fn scripts(stage: &str, outcome: &str) -> Vec<PathBuf> {
    let directory = test_data().join(stage).join(outcome);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
        .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "probe")
        })
        .collect();
    files.sort();
    files
}

struct Header {
    options: CompileOptions,
    tapsets: Vec<PathBuf>,
}

fn header(text: &str) -> Header {
    let mut header = Header {
        options: CompileOptions::default(),
        tapsets: Vec::new(),
    };
    for line in text.lines().take_while(|line| line.starts_with("//")) {
        if let Some(options) = line.strip_prefix("// options:") {
            for option in options.split_whitespace() {
                let (key, value) = option.split_once('=').expect("key=value");
                let value: u64 = value.parse().expect("a number");
                match key {
                    "max_insns" => header.options.max_insns = value as usize,
                    "string_size" => header.options.string_size = value as u16,
                    "stack_depth" => header.options.stack_depth = value as u16,
                    "max_entries" => header.options.max_entries = value as u32,
                    other => panic!("unknown option {other}"),
                }
            }
        }
        if let Some(tapset) = line.strip_prefix("// tapset:") {
            header.tapsets.push(test_data().join(tapset.trim()));
        }
    }
    header
}

/// Sources for a test script: the script, named relative to `test_data`, the
/// built-in tapsets and those its header names.
fn sources(path: &Path, text: &str, header: &Header) -> Sources {
    let mut sources = Sources::new();
    let name = path
        .strip_prefix(test_data())
        .unwrap()
        .display()
        .to_string();
    sources.add_script(name, text);
    lang::tapset::add_builtin(&mut sources);
    for tapset in &header.tapsets {
        let tapset_text = std::fs::read_to_string(tapset).unwrap();
        let tapset_name = tapset
            .strip_prefix(test_data())
            .unwrap()
            .display()
            .to_string();
        sources.add_tapset(tapset_name, tapset_text);
    }
    sources
}

/// What the stage produces for a script, and whether it had errors.
fn run(stage: &str, path: &Path) -> (String, bool) {
    let text = std::fs::read_to_string(path).unwrap();
    let header = header(&text);
    let sources = sources(path, &text, &header);
    if stage == "parse" {
        let file = sources.ids().next().unwrap();
        let (script, diagnostics) = lang::parser::parse(file, sources.text(file));
        let failed = diagnostics.iter().any(|d| d.is_error());
        return if failed {
            (render(&sources, &diagnostics), true)
        } else {
            (lang::ast::dump(&script), false)
        };
    }
    let (result, diagnostics) = compile(&sources, &DemoKernel::new(), &header.options);
    let mut output = render(&sources, &diagnostics);
    match result {
        Some(script) => {
            verify_independently(&script);
            output.push_str(&describe(&script, stage == "compile"));
            (output, false)
        }
        None => (output, true),
    }
}

/// Every program of a compiled script passes the verifier, checked here again
/// rather than trusted from the compiler.
fn verify_independently(script: &lang::compiled::CompiledScript) {
    use probe_port_protocol::verifier::{ProgramKind, VerifierConfig, verify_alloc};
    let specs = script.map_specs();
    let specs = specs.as_slice();
    for spec in specs {
        spec.validate().expect("valid map definitions");
    }
    for attachment in script.attachments() {
        let config = VerifierConfig::new(ProgramKind::Probe, &specs);
        verify_alloc(&attachment.program, &config)
            .unwrap_or_else(|error| panic!("{}: {error}", attachment.description));
        if !attachment.entry_program.is_empty() {
            let config = VerifierConfig::new(ProgramKind::Entry, &specs);
            verify_alloc(&attachment.entry_program, &config)
                .unwrap_or_else(|error| panic!("{} entry: {error}", attachment.description));
        }
    }
}

fn check_stage(stage: &str) {
    let update = std::env::var_os("UPDATE_GOLDENS").is_some();
    let mut failures = Vec::new();
    let mut count = 0;
    for outcome in ["ok", "err"] {
        for path in scripts(stage, outcome) {
            count += 1;
            let (output, failed) = run(stage, &path);
            let extension = match (stage, outcome) {
                (_, "err") => "diag",
                ("parse", _) => "ast",
                ("check", _) => "check",
                _ => "asm",
            };
            let expected_path = path.with_extension(extension);
            if failed != (outcome == "err") {
                failures.push(format!(
                    "{}: expected {}, got:\n{output}",
                    path.display(),
                    if outcome == "err" {
                        "errors"
                    } else {
                        "no error"
                    }
                ));
                continue;
            }
            if update {
                std::fs::write(&expected_path, &output).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
            if expected != output {
                failures.push(format!(
                    "{}: output differs from {}\n--- expected\n{expected}\n--- actual\n{output}",
                    path.display(),
                    expected_path.display()
                ));
            }
        }
    }
    assert!(count > 0, "no scripts for {stage}");
    assert!(
        failures.is_empty(),
        "{} of {count} {stage} goldens failed (UPDATE_GOLDENS=1 rewrites them):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn parse_goldens() {
    check_stage("parse");
}

#[test]
fn check_goldens() {
    check_stage("check");
}

#[test]
fn compile_goldens() {
    check_stage("compile");
}

/// Every diagnostic code has at least one golden that shows it.
#[test]
fn every_diagnostic_code_has_a_golden() {
    if std::env::var_os("UPDATE_GOLDENS").is_some() {
        // The other tests are rewriting the files this one reads.
        return;
    }
    // E0901 cannot be produced by a script (it is a compiler bug); the unit test
    // `compile::tests::verifier_refusal_is_an_internal_error` covers it.
    let exempt = ["E0901"];
    let mut seen = BTreeSet::new();
    for stage in ["parse", "check", "compile"] {
        for outcome in ["ok", "err"] {
            let directory = test_data().join(stage).join(outcome);
            for entry in std::fs::read_dir(directory).unwrap() {
                let path = entry.unwrap().path();
                if !path
                    .extension()
                    .is_some_and(|e| e == "diag" || e == "check" || e == "asm")
                {
                    continue;
                }
                let text = std::fs::read_to_string(path).unwrap();
                for (code, _) in CODES {
                    if text.contains(&format!("[{}]", code.0)) {
                        seen.insert(code.0);
                    }
                }
            }
        }
    }
    let missing: Vec<&str> = CODES
        .iter()
        .map(|(code, _)| code.0)
        .filter(|code| !seen.contains(code) && !exempt.contains(code))
        .collect();
    assert!(missing.is_empty(), "codes without a golden: {missing:?}");
}
