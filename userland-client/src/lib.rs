//! The probeport client library: sessions on a probe port.
//!
//! The command line (`probeport`), debuginfo resolution and the probe-script
//! front end come with issue 4; what exists now is [`port::Port`], a session on
//! a probe port over any byte stream, used by the end-to-end tests.

pub mod port;
