//! The in-kernel probe stub.
//!
//! # Design
//!
//! This crate is what a kernel embeds to expose the probe port. So far it holds the
//! handler interpreter ([`interpreter`]), which runs verified programs on a probe
//! context with helpers supplied by the executor through the [`interpreter::Helpers`]
//! trait. The probe table, arming, maps and event rings come next (issue 3).
//!
//! # Invariants
//!
//! - `no_std`, and nothing here allocates: everything runs in probe context.
#![cfg_attr(not(test), no_std)]

pub mod arch;
pub mod interpreter;
