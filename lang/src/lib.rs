//! The probe-script language.
//!
//! Scripts compile to verified handler programs of `probe_port_protocol::isa`.
//! The language itself is the subject of issue 4; until then this crate is empty
//! on purpose, so that the workspace has its fixed layout from the start.
