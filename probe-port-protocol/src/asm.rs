//! Placeholder: being written.
use alloc::{string::String, vec::Vec};

use crate::isa::Insn;

/// An assembly error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsmError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Assembles program text.
pub fn assemble(_text: &str) -> Result<Vec<Insn>, AsmError> {
    unimplemented!("being written")
}

/// Disassembles a program.
pub fn disassemble(_insns: &[Insn]) -> String {
    unimplemented!("being written")
}
