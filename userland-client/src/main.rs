//! The `probeport` command line.
fn main() {}
