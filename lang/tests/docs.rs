//! `LANGUAGE.md` stays true: its examples compile against the fake demo kernel, and
//! its table of diagnostic codes is the compiler's.

use std::path::Path;

use lang::diagnostic::{CODES, render};
use lang::fake::DemoKernel;
use lang::source::Sources;
use lang::{CompileOptions, compile};

fn language_md() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("LANGUAGE.md")).unwrap()
}

/// The fenced code blocks of the document that are whole scripts (they contain a
/// `probe` item).
fn script_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None if line == "```" => current = Some(String::new()),
                None => current = None,
            }
            continue;
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks
        .into_iter()
        .filter(|block| block.lines().any(|line| line.starts_with("probe ")))
        .collect()
}

#[test]
fn examples_compile() {
    let blocks = script_blocks(&language_md());
    assert!(blocks.len() >= 6, "found {} example scripts", blocks.len());
    for block in blocks {
        let mut sources = Sources::new();
        sources.add_script("LANGUAGE.md", block.as_str());
        lang::tapset::add_builtin(&mut sources);
        let (result, diagnostics) =
            compile(&sources, &DemoKernel::new(), &CompileOptions::default());
        assert!(
            result.is_some(),
            "example does not compile:\n{block}\n{}",
            render(&sources, &diagnostics)
        );
    }
}

#[test]
fn the_code_table_is_complete() {
    let text = language_md();
    for (code, meaning) in CODES {
        assert!(
            text.contains(&format!("| {} |", code.0)),
            "{} ({meaning}) is missing from LANGUAGE.md",
            code.0
        );
    }
}

#[test]
fn tapsets_are_found_on_the_search_path() {
    let directory = std::env::temp_dir().join(format!("lang-tapsets-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    std::fs::write(
        directory.join("b_mine.probe"),
        "function double(x) { return 2 * x; }\nprobe alias my.send = ipc.send\n",
    )
    .unwrap();
    std::fs::write(directory.join("a_ignored.txt"), "not a tapset").unwrap();
    let mut sources = Sources::new();
    sources.add_script(
        "script.probe",
        "probe my.send { @sizes = sum(double($size)); }",
    );
    lang::tapset::add_builtin(&mut sources);
    let added = lang::tapset::add_search_path(
        &mut sources,
        &[directory.join("missing"), directory.clone()],
    )
    .unwrap();
    assert_eq!(added.len(), 1);
    let (result, diagnostics) = compile(&sources, &DemoKernel::new(), &CompileOptions::default());
    assert!(result.is_some(), "{}", render(&sources, &diagnostics));
    std::fs::remove_dir_all(&directory).unwrap();
}
