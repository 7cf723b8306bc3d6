//! Starting the application processors (INIT-SIPI-SIPI) and their entry point.
//!
//! # Design
//!
//! The BSP copies the real-mode trampoline (see `boot.rs`) to the page at
//! `AP_TRAMPOLINE_ADDRESS`, writes the boot GDT pseudo-descriptor into that page, then
//! starts each enabled CPU of the MADT in turn: it publishes the CPU's slot number and
//! stack top, sends INIT, waits 10 ms, sends two start-up IPIs 200 µs apart (the
//! second is ignored by a CPU that already started), and waits up to one second for
//! the CPU to report itself online. The AP loads its own GDT/TSS and the shared IDT,
//! enables its local APIC and timer, prints that it is up and idles, counting ticks,
//! until the scheduler starts; then its boot context becomes its idle thread.
//!
//! # Invariants
//!
//! - One AP starts at a time (the boot variables in `boot.rs` are reused).
//! - An AP touches only its own per-CPU slot and stack.

use core::sync::atomic::Ordering;

use crate::acpi::Madt;
use crate::boot::{
    self, AP_BOOT_CPU_INDEX, AP_BOOT_STACK_TOP, AP_TRAMPOLINE_ADDRESS, AP_TRAMPOLINE_GDTR_OFFSET,
};
use crate::console::println;
use crate::percpu::{self, MAX_CPUS};
use crate::{apic, cpu, gdt, pit, sched, time, traps};

/// How long the BSP waits for one AP to come online.
const AP_ONLINE_TIMEOUT_MILLIS: u64 = 1000;

/// Why an AP did not start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ApDidNotStart {
    pub(crate) index: usize,
    pub(crate) apic_id: u32,
}

/// Starts every enabled CPU the MADT lists besides the BSP. Returns how many CPUs run
/// in total (the BSP included), or the first CPU that did not come up.
pub(crate) fn start_application_processors(
    madt: &Madt<'_>,
    bsp_apic_id: u32,
) -> Result<usize, ApDidNotStart> {
    install_trampoline();
    let trampoline_page = (AP_TRAMPOLINE_ADDRESS >> 12) as u8;
    let mut online = 1;
    for entry in madt.local_apics() {
        if !entry.enabled || entry.apic_id == bsp_apic_id {
            continue;
        }
        if online == MAX_CPUS {
            println!(
                "smp: apic {} not started: the kernel supports {MAX_CPUS} CPUs",
                entry.apic_id
            );
            continue;
        }
        let index = online;
        AP_BOOT_STACK_TOP.store(percpu::kernel_stack_top(index), Ordering::Release);
        AP_BOOT_CPU_INDEX.store(index as u32, Ordering::Release);
        apic::send_init(entry.apic_id);
        pit::busy_wait_micros(10_000);
        apic::send_startup(entry.apic_id, trampoline_page);
        pit::busy_wait_micros(200);
        apic::send_startup(entry.apic_id, trampoline_page);
        let block = percpu::slot(index);
        if !time::wait_until(AP_ONLINE_TIMEOUT_MILLIS, || {
            block.online.load(Ordering::Acquire)
        }) {
            return Err(ApDidNotStart {
                index,
                apic_id: entry.apic_id,
            });
        }
        online += 1;
    }
    Ok(online)
}

/// Copies the trampoline below 1 MiB and writes the GDT pseudo-descriptor it loads.
fn install_trampoline() {
    let code = boot::ap_trampoline_bytes();
    assert!(
        code.len() <= AP_TRAMPOLINE_GDTR_OFFSET,
        "AP trampoline overlaps its GDT pointer"
    );
    let page = AP_TRAMPOLINE_ADDRESS as *mut u8;
    let (gdt_base, gdt_limit) = boot::boot_gdt_address_and_limit();
    // SAFETY: the page at AP_TRAMPOLINE_ADDRESS is conventional memory below 1 MiB
    // that nothing else uses after boot (the start info was copied out earlier); it is
    // identity-mapped and the writes stay inside it.
    unsafe {
        core::ptr::copy_nonoverlapping(code.as_ptr(), page, code.len());
        core::ptr::write_unaligned(page.add(AP_TRAMPOLINE_GDTR_OFFSET).cast::<u16>(), gdt_limit);
        core::ptr::write_unaligned(
            page.add(AP_TRAMPOLINE_GDTR_OFFSET + 2).cast::<u32>(),
            gdt_base,
        );
    }
}

/// Entry point of every AP in 64-bit mode, on its own stack (called from `boot.rs`).
pub(crate) extern "C" fn ap_main(index: u32) -> ! {
    let index = index as usize;
    let block = percpu::install(index, apic::id());
    gdt::load(block, percpu::trap_stacks(index));
    traps::load();
    apic::enable_this_cpu();
    apic::start_timer();
    println!(
        "cpu {index} (apic {}): up",
        block.apic_id.load(Ordering::Relaxed)
    );
    block.online.store(true, Ordering::Release);
    // The BSP finishes bring-up first; the timer wakes this CPU to look again.
    while !sched::started() {
        cpu::enable_interrupts_and_halt();
    }
    sched::enter(index)
}
