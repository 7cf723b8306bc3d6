//! A platform that runs handlers only compiled (`Platform::INTERPRETER` is
//! false, as in the demo kernel): arming places every probe's code in the
//! compiled-code area, and refuses a probe whose code finds no room there
//! instead of interpreting it. The code is only written here (to the area's
//! bookkeeping), never run: the JIT's own tests run compiled code against the
//! interpreter, and the demo kernel's QEMU tests run it in a kernel.

mod common;

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use kernel_stub::interpreter::Fault;
use kernel_stub::{Platform, Stub, TextError};
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::message::{Arch, ErrorDetail, ProbeId, RequestBody, Site, TimerScope};

/// Where the compiled-code area starts.
const CODE_BASE: u64 = 0xffff_ffff_8200_0000;

/// One CPU, no kernel text to probe (timers need none), and a compiled-code area
/// of a size the test sets.
struct CompiledOnly {
    area_size: AtomicU64,
    /// Every write into the area: its address and length.
    writes: Mutex<Vec<(u64, usize)>>,
}

impl Platform for CompiledOnly {
    const INTERPRETER: bool = false;

    fn arch(&self) -> Arch {
        Arch::X86_64
    }
    fn kernel_name(&self) -> &str {
        "compiled-only"
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
    fn write_text(&self, address: u64, bytes: &[u8]) -> Result<(), TextError> {
        let area = self.compiled_code_area();
        if !area.contains(&address) || address + bytes.len() as u64 > area.end {
            return Err(TextError::NotText);
        }
        self.writes.lock().unwrap().push((address, bytes.len()));
        Ok(())
    }
    fn write_kernel(&self, address: u64, _bytes: &[u8]) -> Result<(), Fault> {
        Err(Fault { address })
    }
    fn out_of_line_area(&self) -> Range<u64> {
        0..0
    }
    fn compiled_code_area(&self) -> Range<u64> {
        CODE_BASE..CODE_BASE + self.area_size.load(Ordering::SeqCst)
    }
    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

static STUB: Stub<CompiledOnly> = Stub::new(CompiledOnly {
    area_size: AtomicU64::new(0),
    writes: Mutex::new(Vec::new()),
});

fn timer() -> Site<'static> {
    Site::Timer {
        period_ns: 1_000_000,
        scope: TimerScope::OneCpu,
    }
}

#[test]
fn every_probe_is_compiled_into_the_area_or_refused() {
    let platform = STUB.platform();
    let mut client = Client::new(&STUB);
    client.open();
    let handler = emit_slots(&[16, 5]);

    // No area: nothing can be compiled, and nothing is interpreted.
    client
        .arm(timer(), &handler)
        .assert_err(ErrorCode::UNSUPPORTED, ErrorDetail::Text("compiled code"));

    // An area too small for the handler's code.
    platform.area_size.store(16, Ordering::SeqCst);
    client
        .arm(timer(), &handler)
        .assert_err(ErrorCode::NO_SPACE, ErrorDetail::Text("compiled code area"));
    assert!(platform.writes.lock().unwrap().is_empty());

    // Room for one probe's code, not for two.
    platform.area_size.store(4096, Ordering::SeqCst);
    let first = client.arm(timer(), &handler).probe();
    let writes = platform.writes.lock().unwrap().clone();
    assert_eq!(writes.len(), 1, "{writes:x?}");
    let (address, len) = writes[0];
    assert_eq!(address, CODE_BASE);
    platform.area_size.store(len as u64 + 8, Ordering::SeqCst);
    client
        .arm(timer(), &handler)
        .assert_err(ErrorCode::NO_SPACE, ErrorDetail::Text("compiled code area"));

    // Once the first probe is gone, its bytes are free again.
    client.done(RequestBody::Disarm {
        probe: ProbeId(first),
    });
    client.arm(timer(), &handler).probe();
    let writes = platform.writes.lock().unwrap().clone();
    assert_eq!(writes, [(CODE_BASE, len), (CODE_BASE, len)]);
}
