//! The probeport client library: from a script and a kernel's debuginfo to a
//! tracing session on its probe port.
//!
//! # Code map
//!
//! - [`btf`]: the kernel's BTF read (from `/sys/kernel/btf/vmlinux`, a vmlinux or
//!   a compressed `vmlinuz`) and a resolver for kernel functions named by symbol
//!   that answers their parameters and every type from it.
//! - [`debuginfo`]: the kernel's ELF/DWARF indexed (functions, variables and their
//!   locations at an address, types, lines, symbols, the build-id check).
//! - [`markers`]: the stub's static marker table read from the image (section
//!   `probeport_markers`, decoded through DWARF), for compiling without a kernel.
//! - [`resolve`]: `lang::Resolver` over [`debuginfo::Kernel`] and the stub's marker
//!   table: the bridge the compiler asks every kernel name through.
//! - [`script`]: a script and its tapsets as the command line gives them, compiled
//!   for `probeport check`.
//! - [`port`]: a session on a probe port over any byte stream (sequence numbers,
//!   one reply per request, events kept in order).
//! - [`target`]: where the port is (`Target`): a Unix socket, a serial device, a
//!   recorded session, the demo kernel under QEMU.
//! - [`uprobe`]: user-space sites for the Linux adapter: ELF file offsets of
//!   functions (through the `PT_LOAD` headers) and USDT markers with semaphores.
//! - [`record`]: recording a session's messages and playing them back.
//! - [`session`]: the session itself (handshake, build-id, markers, compile, maps,
//!   arming, events, `end`, the loss and fault summary) and its text/JSON output.
//! - [`stub_markers`]: the running stub's marker table for scripts compiled
//!   without the kernel's image (the Linux adapter's tracepoints);
//!   [`stub_symbols`]: kernel addresses the stub names for them (`Symbolize`).

pub mod btf;
pub mod debuginfo;
pub mod markers;
pub mod port;
pub mod record;
pub mod resolve;
pub mod script;
pub mod session;
pub mod stub_markers;
pub mod stub_symbols;
pub mod target;
pub mod uprobe;
