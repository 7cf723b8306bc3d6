//! The QEMU test harness.
//!
//! Booting the demo kernel with the probe port on COM2 is the subject of issue 3;
//! until then this crate is empty on purpose, so that the workspace has its fixed
//! layout from the start.
