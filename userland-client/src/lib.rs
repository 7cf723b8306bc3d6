//! The probeport client library: sessions on a probe port.
//!
//! The command line (`probeport`) and the probe-script front end come with issue 4;
//! what exists now is [`port::Port`], a session on a probe port over any byte
//! stream, used by the end-to-end tests, and [`debuginfo::Kernel`], the kernel's
//! ELF/DWARF indexed for resolving names, types, locations and lines.

pub mod debuginfo;
pub mod port;
