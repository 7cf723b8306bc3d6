//! The probeport demo kernel: a small x86_64 kernel that QEMU boots directly (PVH),
//! runs kernel threads on every CPU with a realistic workload, and will host the probe
//! stub.
//!
//! # Design
//!
//! `kernel_main` runs on the bootstrap processor after `boot.rs` has entered long mode
//! with the first 4 GiB identity-mapped. It brings the machine up in a fixed order and
//! prints one line per step on COM1, so a failing boot says where it stopped:
//!
//! 1. per-CPU block and console; PVH start info (command line, RSDP); the heap;
//! 2. GDT/TSS (IST stacks for #DF, #BP, #DB), IDT; legacy PICs remapped and masked;
//! 3. trap round trips (int3, single step) through the hooks the probe stub will use;
//! 4. local APIC, timer calibrated against the PIT, interrupts on;
//! 5. ACPI MADT → every other CPU started with INIT-SIPI-SIPI;
//! 6. every CPU shows timer ticks; COM2's interrupt routed through the I/O APIC;
//! 7. the scheduler: idle threads, the init thread (`supervisor.rs`), then the BSP
//!    becomes CPU 0's idle thread and the APs theirs.
//!
//! From there on everything runs in threads (`sched.rs`): the init thread starts the
//! relay (`relay.rs`, COM2 ↔ probe port) and the workload (`workload.rs`: ports
//! (`ipc.rs`), simulated page faults (`vm.rs`), syscall-like calls (`sys.rs`)), and
//! gives the verdict. Anything unexpected (a fatal trap, a panic, a step that fails)
//! ends in `VERDICT: FAIL <reason>` instead. The command line (`cmdline.rs`) selects
//! the workload's size and start, the intruder, and deliberate panics or hangs.
//!
//! On the host the crate builds as a stub binary: only the hardware-independent
//! modules (`acpi`, `cmdline`, `heap`'s free list, `ipc`'s queue and rights,
//! `marker`, `vm`, `workload_plan`) are compiled, for their unit tests.
//!
//! # Invariants
//!
//! - Exactly one verdict line per boot (`verdict.rs`).
//! - Probe context (#BP/#DB hooks) never prints, allocates, takes a lock or schedules.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(
    not(target_os = "none"),
    allow(
        dead_code,
        reason = "the host build compiles only the hardware-independent modules, for their tests"
    )
)]

extern crate alloc;

mod acpi;
mod cmdline;
mod heap;
mod ipc;
mod marker;
mod vm;
mod workload_plan;

#[cfg(target_os = "none")]
mod apic;
#[cfg(target_os = "none")]
mod bench;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod com2;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod cpu;
#[cfg(target_os = "none")]
mod gdt;
#[cfg(target_os = "none")]
mod ioapic;
#[cfg(target_os = "none")]
mod percpu;
#[cfg(target_os = "none")]
mod pic;
#[cfg(target_os = "none")]
mod pit;
#[cfg(target_os = "none")]
mod probe_platform;
#[cfg(target_os = "none")]
mod probe_port;
#[cfg(target_os = "none")]
mod relay;
#[cfg(target_os = "none")]
mod sched;
#[cfg(target_os = "none")]
mod selftest;
#[cfg(target_os = "none")]
mod serial;
#[cfg(target_os = "none")]
mod smp;
#[cfg(target_os = "none")]
mod start_info;
#[cfg(target_os = "none")]
mod supervisor;
#[cfg(target_os = "none")]
mod sync;
#[cfg(target_os = "none")]
mod sys;
#[cfg(target_os = "none")]
mod time;
#[cfg(target_os = "none")]
mod traps;
#[cfg(target_os = "none")]
mod verdict;
#[cfg(target_os = "none")]
mod workload;

#[cfg(target_os = "none")]
pub(crate) use kernel::kernel_main;

#[cfg(target_os = "none")]
mod kernel {
    use core::sync::atomic::Ordering;

    use crate::acpi::{self, Madt, PhysicalMemory};
    use crate::cmdline::Options;
    use crate::console::{self, println};
    use crate::percpu::{self, MAX_CPUS};
    use crate::serial::COM2_BASE;
    use crate::traps::COM2_VECTOR;
    use crate::{
        apic, boot, cpu, gdt, heap, ioapic, pic, probe_platform, relay, sched, selftest, smp,
        start_info, supervisor, time, traps, verdict,
    };

    /// COM2's ISA interrupt line.
    const COM2_IRQ: u8 = 3;

    /// Timer ticks every CPU must show before the verdict.
    const REQUIRED_TICKS: u64 = 10;
    /// How long the BSP waits for them.
    const TICKS_TIMEOUT_MILLIS: u64 = 5_000;

    /// Entry point of the BSP in 64-bit mode, on the boot stack (called from `boot.rs`).
    pub(crate) extern "C" fn kernel_main(start_info_address: u32) -> ! {
        let bsp = percpu::install(0, 0);
        console::init();
        // The firmware leaves its last console line unterminated: start a fresh one.
        println!();
        println!(
            "probeport demo-kernel {}: booting via PVH",
            env!("CARGO_PKG_VERSION")
        );

        let boot_info = start_info::read(start_info_address)
            .unwrap_or_else(|reason| verdict::fail(format_args!("{reason}")));
        boot::unmap_page_zero();
        println!("boot: command line {:?}", boot_info.cmdline());
        let options = Options::parse(boot_info.cmdline(), |word| {
            println!("boot: ignoring unknown command-line word {word:?}");
        });
        let heap = heap::stats();
        println!(
            "heap: {} KiB arena, first-fit free list (probe context never allocates)",
            heap.capacity / 1024
        );

        gdt::load(bsp, percpu::trap_stacks(0));
        traps::init();
        traps::load();
        traps::describe();
        pic::remap_and_mask();

        match selftest::int3_round_trip() {
            Ok(report) => println!(
                "selftest: int3 round trip survived (int3 at {:#x}, registers and rip rewritten by the hook, \
                 frame at {:#x} on the #BP IST stack, interrupted stack written below rsp)",
                report.address, report.frame
            ),
            Err(reason) => verdict::fail(format_args!("int3 round trip: {reason}")),
        }
        match selftest::single_step_round_trip() {
            Ok(dr6) => println!("selftest: single-step #DB round trip survived (dr6 {dr6:#x})"),
            Err(reason) => verdict::fail(format_args!("single-step round trip: {reason}")),
        }

        probe_platform::init();
        let forbidden = probe_platform::forbidden_range();
        let text = probe_platform::text_range();
        println!(
            "probe-stub: embedded; #BP hook installed, text {:#x}..{:#x}, forbidden {:#x}..{:#x} ({} bytes), {} out-of-line slots, {} markers",
            text.start,
            text.end,
            forbidden.start,
            forbidden.end,
            forbidden.end - forbidden.start,
            probe_platform::probe_slots::SIZE / kernel_stub::arch::SLOT_SIZE - 1,
            kernel_stub::Platform::markers(probe_platform::STUB.platform()).len(),
        );

        let apic_base = apic::init_bsp();
        let bsp_apic_id = apic::id();
        bsp.apic_id.store(bsp_apic_id, Ordering::Relaxed);
        let (counts_per_tick, calibrated) = apic::calibrate_timer();
        println!(
            "apic: base {apic_base:#x}, version {:#x}, timer {counts_per_tick} counts per tick at divide 16, {} Hz ({})",
            apic::version(),
            apic::TICKS_PER_SECOND,
            if calibrated {
                "calibrated against the PIT"
            } else {
                "PIT did not answer: fixed QEMU value"
            },
        );
        let (tsc_hz, tsc_calibrated) = time::calibrate_clock();
        println!(
            "time: TSC at {} MHz ({}), the probe stub's nanosecond clock",
            tsc_hz / 1_000_000,
            if tsc_calibrated {
                "calibrated against the PIT"
            } else {
                "PIT did not answer: assumed"
            }
        );
        apic::start_timer();
        cpu::enable_interrupts();
        println!("cpu 0 (apic {bsp_apic_id}): up");
        bsp.online.store(true, Ordering::Release);

        let memory = IdentityMappedMemory;
        let madt = read_madt(&memory, boot_info.rsdp_address);
        let online = start_other_cpus(&madt, bsp_apic_id);

        if options.panic {
            panic!("demo.panic on the kernel command line: panicking on purpose");
        }

        check_timer_ticks(online);

        sched::init(online);
        if options.com2_relay {
            route_com2_interrupt(&madt, relay::cpu(online));
        }
        println!(
            "sched: {online} idle thread(s), {} thread slots with {} KiB stacks, round robin at {} Hz",
            sched::MAX_THREADS,
            sched::THREAD_STACK_SIZE / 1024,
            apic::TICKS_PER_SECOND
        );
        supervisor::spawn(options)
            .unwrap_or_else(|error| verdict::fail(format_args!("init thread: {error}")));
        sched::start();
        sched::enter(0)
    }

    /// Finds the MADT (RSDP from the loader, or found by scanning).
    fn read_madt(memory: &IdentityMappedMemory, rsdp_from_loader: u64) -> Madt<'_> {
        let rsdp = if rsdp_from_loader != 0 {
            rsdp_from_loader
        } else {
            acpi::find_rsdp(memory)
                .unwrap_or_else(|error| verdict::fail(format_args!("acpi: {error}")))
        };
        let madt = acpi::find_madt(memory, rsdp)
            .unwrap_or_else(|error| verdict::fail(format_args!("acpi: {error}")));
        println!(
            "acpi: rsdp {rsdp:#x}{}, MADT lists {} enabled CPU(s), local APIC at {:#x}",
            if rsdp_from_loader != 0 {
                " (from the start info)"
            } else {
                " (found by scanning)"
            },
            madt.local_apics().filter(|entry| entry.enabled).count(),
            madt.local_apic_address
        );
        madt
    }

    /// Routes COM2's interrupt to `cpu`, where the relay runs. Without a route the
    /// relay polls (slower, still correct), so a failure is reported, not fatal.
    fn route_com2_interrupt(madt: &Madt<'_>, cpu: usize) {
        let apic_id = percpu::slot(cpu).apic_id.load(Ordering::Relaxed);
        match ioapic::route_isa_interrupt(madt, COM2_IRQ, COM2_VECTOR, apic_id) {
            Ok(route) => println!(
                "ioapic: COM2 ({COM2_BASE:#x}, ISA IRQ {COM2_IRQ}) -> global interrupt {} of the I/O APIC at {:#x}, {} {}, vector {COM2_VECTOR:#x} on cpu {cpu} (apic {apic_id})",
                route.global_interrupt,
                route.address,
                if route.level_triggered {
                    "level"
                } else {
                    "edge"
                },
                if route.active_low {
                    "active low"
                } else {
                    "active high"
                },
            ),
            Err(error) => println!("ioapic: COM2 not routed ({error}); the relay polls instead"),
        }
    }

    /// Starts the CPUs the MADT lists; returns how many run.
    fn start_other_cpus(madt: &Madt<'_>, bsp_apic_id: u32) -> usize {
        let listed = madt.local_apics().filter(|entry| entry.enabled).count();
        match smp::start_application_processors(madt, bsp_apic_id) {
            Ok(online) => {
                println!("smp: {online} of {listed} CPU(s) online");
                online
            }
            Err(error) => verdict::fail(format_args!(
                "smp: cpu {} (apic {}) did not come online within a second",
                error.index, error.apic_id
            )),
        }
    }

    /// Waits until every online CPU took [`REQUIRED_TICKS`] timer interrupts, then
    /// prints the counts.
    fn check_timer_ticks(online: usize) {
        let all_ticking = time::wait_until(TICKS_TIMEOUT_MILLIS, || {
            (0..online).all(|index| {
                percpu::slot(index).timer_ticks.load(Ordering::Relaxed) >= REQUIRED_TICKS
            })
        });
        for index in 0..online.min(MAX_CPUS) {
            let block = percpu::slot(index);
            println!(
                "cpu {index} (apic {}): {} timer ticks",
                block.apic_id.load(Ordering::Relaxed),
                block.timer_ticks.load(Ordering::Relaxed)
            );
        }
        if !all_ticking {
            verdict::fail(format_args!(
                "timer: not every CPU took {REQUIRED_TICKS} ticks within {TICKS_TIMEOUT_MILLIS} ms"
            ));
        }
    }

    /// Physical memory through the boot identity map (the first 4 GiB).
    struct IdentityMappedMemory;

    impl PhysicalMemory for IdentityMappedMemory {
        fn read(&self, address: u64, length: usize) -> Option<&[u8]> {
            let end = address.checked_add(length as u64)?;
            // Page 0 is not mapped (`boot.rs`): the EBDA pointer at 0x40e is out
            // of reach, and the RSDP scan falls back to the BIOS area.
            if address < 0x1000 || end > 1 << 32 {
                return None;
            }
            // SAFETY: the range is inside the identity map and non-null; the callers
            // (the ACPI parser) read firmware tables in RAM, which nothing writes.
            Some(unsafe { core::slice::from_raw_parts(address as *const u8, length) })
        }
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        let cpu = percpu::current_index_if_installed().map_or(-1, |index| index as i64);
        let (file, line) = info
            .location()
            .map_or(("?", 0), |location| (location.file(), location.line()));
        console::emergency_write(format_args!(
            "PANIC on cpu {cpu} at {file}:{line}: {}\n",
            info.message()
        ));
        verdict::fail(format_args!(
            "panic on cpu {cpu} at {file}:{line}: {}",
            info.message()
        ))
    }
}

/// On the host there is no kernel to run: say how to build and boot it.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "demo-kernel is a bare-metal kernel: build it with \
         `cargo build -p demo-kernel --target x86_64-unknown-none` and boot it with \
         `cargo run -p qemu --bin qemu-run`"
    );
    std::process::exit(2);
}
