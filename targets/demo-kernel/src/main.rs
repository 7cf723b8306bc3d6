//! The probeport demo kernel: a small x86_64 kernel that QEMU boots directly (PVH)
//! and that will host the probe stub.
//!
//! # Design
//!
//! `kernel_main` runs on the bootstrap processor after `boot.rs` has entered long mode
//! with the first 4 GiB identity-mapped. It brings the machine up in a fixed order and
//! prints one line per step on COM1, so a failing boot says where it stopped:
//!
//! 1. per-CPU block and console; PVH start info (command line, RSDP);
//! 2. GDT/TSS, IDT; legacy PICs remapped and masked;
//! 3. trap round trips (int3, single step) through the hooks the probe stub will use;
//! 4. local APIC, timer calibrated against the PIT, interrupts on;
//! 5. ACPI MADT → every other CPU started with INIT-SIPI-SIPI;
//! 6. every CPU shows timer ticks; COM2 hello/echo with the host;
//! 7. `VERDICT: PASS` and exit through `isa-debug-exit` (see `verdict.rs`).
//!
//! Anything unexpected (a fatal trap, a panic, a step that fails) ends in
//! `VERDICT: FAIL <reason>` instead. The command line can ask for a deliberate panic
//! or hang (`cmdline.rs`), which the harness tests use.
//!
//! On the host the crate builds as a stub binary: only the hardware-independent
//! modules (`acpi`, `cmdline`) are compiled, for their unit tests.
//!
//! # Invariants
//!
//! - Exactly one verdict line per boot (`verdict.rs`).
//! - Probe context (#BP/#DB hooks) never prints, allocates or takes a lock.

#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(
    not(target_os = "none"),
    allow(
        dead_code,
        reason = "the host build compiles only the hardware-independent modules, for their tests"
    )
)]

mod acpi;
mod cmdline;

#[cfg(target_os = "none")]
mod apic;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod cpu;
#[cfg(target_os = "none")]
mod gdt;
#[cfg(target_os = "none")]
mod percpu;
#[cfg(target_os = "none")]
mod pic;
#[cfg(target_os = "none")]
mod pit;
#[cfg(target_os = "none")]
mod probe_port;
#[cfg(target_os = "none")]
mod selftest;
#[cfg(target_os = "none")]
mod serial;
#[cfg(target_os = "none")]
mod smp;
#[cfg(target_os = "none")]
mod start_info;
#[cfg(target_os = "none")]
mod sync;
#[cfg(target_os = "none")]
mod time;
#[cfg(target_os = "none")]
mod traps;
#[cfg(target_os = "none")]
mod verdict;

#[cfg(target_os = "none")]
pub(crate) use kernel::kernel_main;

#[cfg(target_os = "none")]
mod kernel {
    use core::sync::atomic::Ordering;

    use crate::acpi::{self, PhysicalMemory};
    use crate::cmdline::Options;
    use crate::console::{self, println};
    use crate::percpu::{self, MAX_CPUS};
    use crate::{apic, cpu, gdt, pic, probe_port, selftest, smp, start_info, time, traps, verdict};

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
        println!("boot: command line {:?}", boot_info.cmdline());
        let options = Options::parse(boot_info.cmdline(), |word| {
            println!("boot: ignoring unknown command-line word {word:?}");
        });

        gdt::load(bsp, percpu::double_fault_stack_top(0));
        traps::init();
        traps::load();
        traps::describe();
        pic::remap_and_mask();

        match selftest::int3_round_trip() {
            Ok(report) => println!(
                "selftest: int3 round trip survived (int3 at {:#x}, registers and rip rewritten by the hook)",
                report.address
            ),
            Err(reason) => verdict::fail(format_args!("int3 round trip: {reason}")),
        }
        match selftest::single_step_round_trip() {
            Ok(dr6) => println!("selftest: single-step #DB round trip survived (dr6 {dr6:#x})"),
            Err(reason) => verdict::fail(format_args!("single-step round trip: {reason}")),
        }

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
        apic::start_timer();
        cpu::enable_interrupts();
        println!("cpu 0 (apic {bsp_apic_id}): up");
        bsp.online.store(true, Ordering::Release);

        let online = start_other_cpus(boot_info.rsdp_address, bsp_apic_id);

        if options.panic {
            panic!("demo.panic on the kernel command line: panicking on purpose");
        }

        check_timer_ticks(online);

        if options.com2_check {
            let Some(mut port) = probe_port::ProbePort::open() else {
                verdict::fail(format_args!("COM2 already in use"));
            };
            println!("com2: hello sent, waiting for a line from the host");
            match probe_port::self_check(&mut port) {
                Ok(length) => println!("com2: echoed a {length}-byte line back to the host"),
                Err(error) => verdict::fail(format_args!("COM2 echo: {error}")),
            }
        } else {
            println!("com2: self-check skipped (demo.com2=off)");
        }

        if options.hang {
            println!("demo.hang on the kernel command line: idling without a verdict");
            loop {
                cpu::enable_interrupts_and_halt();
            }
        }
        verdict::pass()
    }

    /// Finds the CPUs in the MADT and starts them; returns how many run.
    fn start_other_cpus(rsdp_from_loader: u64, bsp_apic_id: u32) -> usize {
        let memory = IdentityMappedMemory;
        let rsdp = if rsdp_from_loader != 0 {
            rsdp_from_loader
        } else {
            acpi::find_rsdp(&memory)
                .unwrap_or_else(|error| verdict::fail(format_args!("acpi: {error}")))
        };
        let madt = acpi::find_madt(&memory, rsdp)
            .unwrap_or_else(|error| verdict::fail(format_args!("acpi: {error}")));
        let listed = madt.local_apics().filter(|entry| entry.enabled).count();
        println!(
            "acpi: rsdp {rsdp:#x}{}, MADT lists {listed} enabled CPU(s), local APIC at {:#x}",
            if rsdp_from_loader != 0 {
                " (from the start info)"
            } else {
                " (found by scanning)"
            },
            madt.local_apic_address
        );
        match smp::start_application_processors(&madt, bsp_apic_id) {
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
            if address == 0 || end > 1 << 32 {
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
