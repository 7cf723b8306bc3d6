//! Typed kernel probes from BTF in Debian's kernel under QEMU (TCG): the host
//! client reads the kernel's types from the guest's own compressed image
//! (`vmlinuz`, its `.BTF` section, build-id checked against the daemon's `Hello`),
//! compiles a script with parameters, members through struct pointers, a cast, user
//! strings and `@entry(...)`, and checks every value against a workload whose
//! arguments are known: `openat_loop` opens one path N times with
//! `openat(AT_FDCWD, PATH, O_RDONLY | O_CREAT, 0640)`.

mod common;
mod guest;

use std::sync::Arc;
use std::time::{Duration, Instant};

use guest::{
    DAEMON_HELPERS, guest_lines, initramfs_with, one_guest_at_a_time, run_script_until_workload,
    static_c_program, tempdir, wait_console,
};
use qemu::linux::{DebianKernel, INIT_PROLOGUE, PASS_AND_EXIT};
use userland_client::btf::source::{KernelBtf, KernelTypes};
use userland_client::port::Port;
use userland_client::session::SessionOptions;

/// Opens the workload makes while the probes are live.
const OPENS: u32 = 200;
/// The path it opens (user memory: the workload's argument).
const PATH: &str = "/tmp/probeport-btf";
/// `AT_FDCWD`.
const AT_FDCWD: i32 = -100;
/// `O_RDONLY | O_CREAT`, as the workload passes them.
const FLAGS: u64 = 0o100;
/// The flags `do_sys_openat2` sees in `struct open_how`: the system call adds
/// `O_LARGEFILE` (0o100000) on 64-bit kernels (`force_o_largefile()` in
/// `fs/open.c`) before building the `open_how`.
const HOW_FLAGS: u64 = 0o100 | 0o100000;
/// The mode the workload passes (kept in `open_how.mode` because of `O_CREAT`).
const MODE: u64 = 0o640;

/// The guest: the daemon, the workload once the host's four kprobes are live
/// (`__x64_sys_openat`, `do_sys_openat2`, and for the return probe a kretprobe
/// plus the kprobe that runs its entry program), then the session's end seen in
/// the kprobe list.
fn init() -> String {
    format!(
        "{INIT_PROLOGUE}
fail() {{ echo \"VERDICT: FAIL $*\"; poweroff -f; }}
list=/sys/kernel/debug/kprobes/list
probes() {{ grep -c openat $list; }}
live() {{ grep openat $list | grep -vc DISABLED; }}
wait_until() {{ n=0; until [ \"$($1)\" = \"$2\" ]; do usleep 100000; n=$((n+1)); [ $n -lt $3 ] || {{ cat $list; fail \"$1 is $($1), not $2\"; }}; done; }}
echo \"guest: kernel $(uname -r); $(grep -cw -e __x64_sys_openat -e do_sys_openat2 /proc/kallsyms) of the probed functions in kallsyms\"
{DAEMON_HELPERS}daemon --serial /dev/ttyS1
wait_until live 4 1200
echo \"guest: live: $(grep openat $list | tr -s ' ' | tr '\\n' ';')\"
openat_loop {OPENS} {PATH}
wait_until probes 0 1200
wait_until ended 1 1200
echo \"guest: session over, kprobes on openat: $(probes)\"
{PASS_AND_EXIT}
"
    )
}

/// What a user would write, with the kernel's types: `struct pt_regs *regs` of
/// the system call's wrapper (members, a user string through a member, a cast),
/// `do_sys_openat2`'s parameters (an `int`, a user string, members of
/// `struct open_how` through a pointer), and at its return `@entry` of a member
/// and of a parameter beside the typed `$return`.
const SCRIPT: &str = r#"
probe kernel.function("__x64_sys_openat") {
    @syscall[str($regs->si), (int)$regs->di, $regs->dx, $regs->r10] = count();
    @cast[str(((struct pt_regs *)reg("rdi"))->si)] = count();
}
probe kernel.function("do_sys_openat2") {
    @paths[str($filename), $dfd, $how->flags, $how->mode] = count();
}
probe kernel.function("do_sys_openat2").return {
    @returns[@entry($how->mode), @entry($dfd), $return] = count();
}
"#;

#[test]
fn typed_kernel_probes_from_the_guests_own_btf_in_debians_kernel() {
    let _guard = one_guest_at_a_time();
    let started = Instant::now();
    let kernel = DebianKernel::get().unwrap_or_else(|error| panic!("{error}"));
    let directory = tempdir("guest-btf");
    let workload = static_c_program("openat_loop", &directory);
    let initrd = initramfs_with(
        &kernel,
        &init(),
        &directory,
        &[("bin/openat_loop", &workload)],
    );

    // The types, from the image the guest boots (xz-compressed bzImage).
    let read = Instant::now();
    let btf = KernelBtf::open(&kernel.vmlinuz).unwrap_or_else(|error| panic!("{error}"));
    let read = read.elapsed();
    assert_eq!(
        btf.build_id.as_ref().map(Vec::len),
        Some(20),
        "the vmlinuz's ELF carries a GNU build-id"
    );
    assert!(btf.btf.len() > 50_000, "{} types", btf.btf.len());

    let config = kernel.config(&initrd, "").probe_port(true);
    let mut qemu = qemu::Qemu::start(&config).unwrap_or_else(|error| panic!("{error}"));
    let mut port = Port::new(qemu.take_port().expect("COM2 is wired"));
    port.set_timeout(Duration::from_secs(30));
    wait_console(&qemu, "probeport-linuxd: serving", Duration::from_secs(90));
    let booted = started.elapsed();

    // The session ends when the guest's workload is done (Ctrl-C, as it were).
    let options = SessionOptions {
        kernel_types: Some(KernelTypes::File(Arc::new(btf))),
        ..SessionOptions::default()
    };
    let (summary, out, err) = run_script_until_workload(
        &qemu,
        &mut port,
        ("openat.probe", SCRIPT),
        &options,
        Duration::from_secs(180),
    );
    drop(port);
    let outcome = qemu.wait().unwrap_or_else(|error| panic!("{error}"));
    let console = &outcome.console;
    for line in guest_lines(console) {
        eprintln!("{line}");
    }
    eprintln!("client output:\n{out}{err}");
    eprintln!(
        "BTF read from the vmlinuz in {read:?}; booted in {booted:?}; whole run {:?}",
        started.elapsed()
    );
    assert!(summary.unaccounted.is_empty(), "{summary:?}");
    assert!(err.is_empty(), "no warning:\n{err}");
    let workload = guest_lines(console)
        .into_iter()
        .find(|line| line.starts_with("guest: workload"))
        .unwrap_or_else(|| panic!("no workload line:\n{console}"));
    let fd: i64 = workload
        .rsplit(' ')
        .next()
        .and_then(|fd| fd.parse().ok())
        .unwrap_or_else(|| panic!("no descriptor in {workload:?}"));
    assert_eq!(
        workload,
        format!("guest: workload {OPENS} opens of {PATH}, last fd {fd}")
    );
    let expected = [
        format!("@syscall[{PATH}, {AT_FDCWD}, {FLAGS}, {MODE}]: {OPENS}"),
        format!("@cast[{PATH}]: {OPENS}"),
        format!("@paths[{PATH}, {AT_FDCWD}, {HOW_FLAGS}, {MODE}]: {OPENS}"),
        format!("@returns[{MODE}, {AT_FDCWD}, {fd}]: {OPENS}"),
    ];
    for line in expected {
        assert!(
            out.lines().any(|printed| printed == line),
            "{line:?} missing from:\n{out}"
        );
    }
    assert!(
        console.contains("guest: session over, kprobes on openat: 0"),
        "{console}"
    );
    assert!(console.contains("VERDICT: PASS"), "{console}");
    let _ = std::fs::remove_dir_all(&directory);
}
