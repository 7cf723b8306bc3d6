//! Arbitrary text through the lexer and parser: never a panic or a stack overflow,
//! the same answer twice, and every diagnostic span inside the text.
#![no_main]

use lang::parser::parse;
use lang::source::FileId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (script, diagnostics) = parse(FileId(0), text);
    let (again, diagnostics_again) = parse(FileId(0), text);
    assert_eq!(script, again);
    assert_eq!(diagnostics, diagnostics_again);
    for diagnostic in &diagnostics {
        for label in &diagnostic.labels {
            assert!(label.span.start <= label.span.end);
            assert!(label.span.end as usize <= text.len());
        }
    }
    let _ = lang::ast::dump(&script);
});
