//! Arbitrary text through the whole compiler against the fake demo kernel: never a
//! panic, and never an internal compiler error (`E0901`, a program the verifier
//! refuses).
#![no_main]

use lang::fake::DemoKernel;
use lang::source::Sources;
use lang::{CompileOptions, compile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut sources = Sources::new();
    sources.add_script("fuzz.probe", text);
    lang::tapset::add_builtin(&mut sources);
    let (_, diagnostics) = compile(&sources, &DemoKernel::new(), &CompileOptions::default());
    assert!(
        diagnostics.iter().all(|d| d.code != lang::diagnostic::INTERNAL),
        "{}",
        lang::diagnostic::render(&sources, &diagnostics)
    );
});
