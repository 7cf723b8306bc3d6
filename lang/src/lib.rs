//! The probe-script language: from script text to verified handler programs.
//!
//! # Design
//!
//! ```text
//! text ──lexer──▶ tokens ──parser──▶ ast::Script ──compile (names, types, code)──▶ CompiledScript
//!                                                      ▲
//!                                          Resolver (the kernel's debuginfo)
//! ```
//!
//! The language is described in `LANGUAGE.md`. Every name of the kernel (function,
//! parameter, type, member, line, marker) is answered by a [`resolver::Resolver`]
//! that the client implements over the kernel's DWARF; this crate reads no DWARF.
//! Every pass reports problems as [`diagnostic::Diagnostic`]s and goes on, and the
//! entry points return `(result, diagnostics)`.
//!
//! # Code map
//!
//! - [`source`]: files and spans; [`diagnostic`]: numbered diagnostics rendered as
//!   rustc does (`codespan-reporting`).
//! - [`lexer`] (logos) and [`parser`] (recursive descent, precedence climbing, error
//!   recovery) produce an [`ast::Script`]; [`ast::dump`] is the golden tree format.
//! - [`resolver`]: the `Resolver` trait the client implements over DWARF, and the
//!   location language; [`fake::DemoKernel`] implements it in memory for tests.
//! - [`compile`](mod@compile): the driver (definitions, aliases, probe points, sites, maps,
//!   records, `begin`/`end`, verification); `lower` checks and emits one site's
//!   programs; `codegen` is the instruction builder and stack allocator; [`types`]
//!   turns the resolver's types into the language's.
//! - [`compiled`]: what the client gets; [`format`](mod@format): `printf` formats, record and
//!   map printing for the client; [`tapset`]: the tapset search path.
//!
//! # Invariants
//!
//! - Every program in a [`compiled::CompiledScript`] passed
//!   `probe_port_protocol::verifier::verify` against the script's own map
//!   definitions; a program the verifier refuses is an internal compiler error
//!   (`E0901`), never something sent to a stub.
//! - Format strings never leave the client: records carry a record number and raw
//!   values, and [`compiled::RecordFormat`] says how to print them.

pub mod ast;
pub mod compile;
pub mod compiled;
pub mod diagnostic;
pub mod fake;
pub mod format;
pub mod lexer;
pub mod parser;
pub mod resolver;
pub mod source;
pub mod syscalls;
pub mod tapset;
pub mod types;

mod codegen;
mod lower;

pub use compile::{CompileOptions, compile};
