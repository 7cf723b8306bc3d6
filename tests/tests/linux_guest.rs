//! Debian's own Linux kernel under QEMU (TCG, multi-threaded), booted by the
//! harness with a busybox initramfs: the guest the Linux adapter's kprobe tests run
//! in, since the build machines' kernel has no kprobes.
//!
//! The kernel and busybox come from Debian's packages, fetched and unpacked into
//! `target/linux-guest` by the harness on first use (nothing is installed on the
//! host); the test fails with the reason if they cannot be had.

mod common;

use common::{assert_no_qemu_left, one_boot_at_a_time};
use qemu::linux::{DebianKernel, INIT_PROLOGUE, PASS_AND_EXIT};

/// Calls of `cat /proc/version` the guest makes while a kprobe counts `openat`s.
const OPENS: u32 = 40;

#[test]
fn debians_kernel_boots_with_kprobes_bpf_btf_and_a_second_serial_port() {
    let _guard = one_boot_at_a_time();
    let kernel = DebianKernel::get().unwrap_or_else(|error| panic!("{error}"));
    let init = format!(
        "{INIT_PROLOGUE}
fail() {{ echo \"VERDICT: FAIL $*\"; poweroff -f; }}
echo \"guest: kernel $(uname -r), $(nproc) CPUs\"
echo \"guest: kprobe PMU type $(cat /sys/bus/event_source/devices/kprobe/type)\" || fail no kprobe PMU
echo \"guest: uprobe PMU type $(cat /sys/bus/event_source/devices/uprobe/type)\" || fail no uprobe PMU
[ -s /sys/kernel/btf/vmlinux ] || fail no BTF
echo \"guest: BTF $(wc -c < /sys/kernel/btf/vmlinux) bytes\"
[ -c /dev/ttyS1 ] || fail no /dev/ttyS1
echo 'p:probeport/opens do_sys_openat2' > /sys/kernel/tracing/kprobe_events || fail kprobe_events
echo 1 > /sys/kernel/tracing/events/probeport/opens/enable || fail enable
for i in $(seq {OPENS}); do cat /proc/version > /dev/null; done
echo 0 > /sys/kernel/tracing/events/probeport/opens/enable
echo \"guest: kprobe_profile: $(grep opens /sys/kernel/tracing/kprobe_profile)\"
echo > /sys/kernel/tracing/kprobe_events
{PASS_AND_EXIT}
"
    );
    let run_directory = tempdir();
    let initrd = run_directory.join("initrd.cpio");
    kernel
        .initramfs(&init)
        .and_then(|archive| archive.write(&initrd))
        .unwrap_or_else(|error| panic!("{error}"));
    let config = kernel.config(&initrd, "").probe_port(false);
    let qemu = qemu::Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
    let (pid, qemu_directory) = (qemu.pid(), qemu.run_directory().to_path_buf());
    let outcome = qemu.wait().unwrap_or_else(|error| panic!("{error}"));
    let console = &outcome.console;
    // SeaBIOS leaves escape sequences in front of the first line.
    for line in console
        .lines()
        .filter_map(|line| line.find("guest:").map(|at| &line[at..]))
    {
        eprintln!("{line}");
    }
    assert!(console.contains("guest: kernel 6."), "{console}");
    assert!(console.contains(", 2 CPUs"), "{console}");
    assert!(console.contains("guest: kprobe PMU type "), "{console}");
    // The profile line: event name, hits, misses. Every `cat` opens at least
    // /proc/version; the shell's own opens add to it.
    let hits: u32 = console
        .lines()
        .find_map(|line| line.strip_prefix("guest: kprobe_profile: "))
        .and_then(|profile| profile.split_whitespace().nth(1))
        .and_then(|hits| hits.parse().ok())
        .unwrap_or_else(|| panic!("no kprobe_profile line:\n{console}"));
    assert!(
        hits >= OPENS,
        "{hits} opens counted, {OPENS} made:\n{console}"
    );
    assert_no_qemu_left(pid, &qemu_directory);
    let _ = std::fs::remove_dir_all(&run_directory);
}

/// A fresh private directory for the initramfs.
fn tempdir() -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!(
        "probeport-linux-guest-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).expect("creating the initramfs directory");
    directory
}
