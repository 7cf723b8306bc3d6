//! A kernel keeps its stub in a `static`: `Stub::new` is `const`, and with a
//! zero-sized platform every byte of the stub starts zero, so its megabytes of
//! tables cost nothing in the kernel image (`.bss`). Checked on this very test
//! binary.

use std::ops::Range;

use kernel_stub::arch::TrapRegisters;
use kernel_stub::interpreter::Fault;
use kernel_stub::{Platform, Stub, TextError};
use object::{Object, ObjectSection, ObjectSymbol};
use probe_port_protocol::message::Arch;

/// A platform that is a unit struct, as a kernel's usually is (its methods reach
/// the kernel's own globals).
struct Unit;

impl Platform for Unit {
    fn arch(&self) -> Arch {
        Arch::X86_64
    }
    fn kernel_name(&self) -> &str {
        "unit"
    }
    fn build_id(&self) -> &[u8] {
        &[]
    }
    fn cpu_count(&self) -> usize {
        1
    }
    fn cpu_id(&self) -> usize {
        0
    }
    fn task_id(&self) -> u64 {
        0
    }
    fn now_ns(&self) -> u64 {
        0
    }
    fn read_kernel(&self, _dst: &mut [u8], src: u64) -> Result<(), Fault> {
        Err(Fault { address: src })
    }
    fn write_text(&self, _address: u64, _bytes: &[u8]) -> Result<(), TextError> {
        Err(TextError::Unsupported)
    }
    fn write_kernel(&self, address: u64, _bytes: &[u8]) -> Result<(), Fault> {
        Err(Fault { address })
    }
    fn out_of_line_area(&self) -> Range<u64> {
        0..0
    }
    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

#[unsafe(no_mangle)]
static PROBEPORT_TEST_STATIC_STUB: Stub<Unit> = Stub::new(Unit);

#[test]
fn a_stub_with_a_zero_sized_platform_lands_in_bss() {
    // Use it, so that nothing about it is optimised differently.
    let mut regs = TrapRegisters::default();
    assert_eq!(
        PROBEPORT_TEST_STATIC_STUB.on_breakpoint(&mut regs),
        kernel_stub::TrapOutcome::NotMine
    );
    let image = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let file = object::File::parse(&*image).unwrap();
    let symbol = file
        .symbols()
        .find(|symbol| symbol.name() == Ok("PROBEPORT_TEST_STATIC_STUB"))
        .expect("the stub's symbol");
    let section = file
        .section_by_index(symbol.section_index().unwrap())
        .unwrap();
    assert!(
        symbol.size() >= 3 << 20,
        "the stub holds its tables: {} bytes",
        symbol.size()
    );
    assert_eq!(section.name(), Ok(".bss"), "{} bytes", symbol.size());
}
