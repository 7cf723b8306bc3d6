//! BTF against this machine's running kernel (`/sys/kernel/btf/vmlinux`; the host
//! kernel has BTF but no kprobes, so nothing is probed here): layouts the
//! user-space ABI fixes, checked against gcc's layout of the same structures from
//! the Linux UAPI headers (`tests/fixtures/btf_oracle.c`, built at test time);
//! scripts with typed parameters, members and casts compiled against it; clear
//! diagnostics for unknown names; and the build-id rules of a session (a fake stub).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use common::fake_stub::{Model, spawn};
use lang::CompileOptions;
use lang::resolver::{Resolver, TypeId, TypeInfo, TypeKind};
use lang::source::Sources;
use userland_client::btf::Btf;
use userland_client::btf::resolver::BtfResolver;
use userland_client::btf::source::{self, KernelBtf, KernelTypes, SourceError};
use userland_client::port::Port;
use userland_client::script;
use userland_client::session::{
    Output, OutputFormat, SessionError, SessionOptions, run_user_space,
};

fn running() -> KernelBtf {
    assert!(
        Path::new(source::RUNNING_BTF).exists(),
        "these tests read the running kernel's BTF, and {} is missing (a kernel built \
         without CONFIG_DEBUG_INFO_BTF)",
        source::RUNNING_BTF
    );
    KernelBtf::running().unwrap_or_else(|error| panic!("{error}"))
}

/// Installs a Debian package when `path` is missing; fails with the reason.
fn ensure(path: &str, package: &str) {
    if Path::new(path).exists() {
        return;
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", package])
        .status()
        .unwrap_or_else(|error| panic!("{path} is missing and apt-get cannot run: {error}"));
    assert!(
        status.success() && Path::new(path).exists(),
        "{path} is missing and `apt-get install -y {package}` did not provide it"
    );
}

/// The oracle's lines: what gcc says about the UAPI structures.
fn oracle() -> String {
    ensure("/usr/bin/gcc", "gcc");
    ensure("/usr/include/stdio.h", "libc6-dev");
    ensure("/usr/include/linux/openat2.h", "linux-libc-dev");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/btf_oracle.c");
    let directory = tempfile::tempdir().expect("a scratch directory");
    let binary: PathBuf = directory.path().join("btf_oracle");
    let built = Command::new("gcc")
        .args(["-O0", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .expect("gcc runs");
    assert!(
        built.status.success(),
        "gcc failed on {}: {}",
        source.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&binary).output().expect("the oracle runs");
    assert!(ran.status.success());
    String::from_utf8(ran.stdout).expect("text")
}

/// A member found: its byte offset, its type and its bitfield position.
type Found = (u64, TypeId, Option<(u8, u8)>);

/// A member by name, looked for in anonymous members too (as the language does).
fn member(resolver: &BtfResolver<'_>, record: TypeId, name: &str) -> Option<Found> {
    let members = match resolver.type_info(record)? {
        TypeInfo::Struct(composite) | TypeInfo::Union(composite) => composite.members,
        TypeInfo::Typedef { target, .. } | TypeInfo::Qualified { target } => {
            return member(resolver, target, name);
        }
        _ => return None,
    };
    for found in members {
        if found.name == name {
            return Some((found.offset, found.ty, found.bitfield));
        }
        if found.name.is_empty()
            && let Some((offset, ty, bits)) = member(resolver, found.ty, name)
        {
            return Some((found.offset + offset, ty, bits));
        }
    }
    None
}

#[test]
fn abi_layouts_in_the_running_kernels_btf_are_gccs() {
    let kernel = running();
    let btf: &Btf = &kernel.btf;
    let resolver = BtfResolver::new(btf);
    let oracle = oracle();
    let mut checked = 0;
    for line in oracle.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let record = resolver
            .find_type(TypeKind::Struct, fields[0])
            .unwrap_or_else(|| panic!("no struct {} in the running kernel's BTF", fields[0]));
        let number = |at: usize| -> u64 { fields[at].parse().expect("a number") };
        match fields[..] {
            [_, "sizeof", _] => {
                assert_eq!(
                    btf.size_of(record.0 as u32),
                    Some(number(2)),
                    "sizeof(struct {})",
                    fields[0]
                );
            }
            [_, name, "bits", _, _] => {
                let (offset, _, bits) = member(&resolver, record, name)
                    .unwrap_or_else(|| panic!("no member {name} in struct {}", fields[0]));
                let (bit, width) = bits.unwrap_or_else(|| panic!("{name} is a bitfield"));
                assert_eq!(
                    (offset * 8 + u64::from(bit), u64::from(width)),
                    (number(3), number(4)),
                    "struct {} bitfield {name}: (first bit, width)",
                    fields[0]
                );
            }
            [_, name, _, _] => {
                let (offset, ty, bits) = member(&resolver, record, name)
                    .unwrap_or_else(|| panic!("no member {name} in struct {}", fields[0]));
                assert_eq!(bits, None, "{name}");
                assert_eq!(
                    (offset, btf.size_of(ty.0 as u32)),
                    (number(2), Some(number(3))),
                    "struct {} member {name}: (offset, size)",
                    fields[0]
                );
            }
            _ => panic!("an oracle line of an unknown form: {line}"),
        }
        checked += 1;
    }
    // Every line of the oracle was compared (sizes, members, bitfields).
    assert_eq!(checked, 49, "{oracle}");
}

/// The script alone: `check_btf` adds the Linux tapsets, as for a run without an
/// image (`script::load_for_target`).
fn sources(script: &str) -> Sources {
    let mut sources = Sources::new();
    sources.add_script("btf.probe", script);
    sources
}

/// The guest test's script (`targets/linux-adapter/tests/guest_btf.rs`), which the
/// host's kernel describes too.
const TYPED: &str = r#"
probe kernel.function("__x64_sys_openat") {
    @syscall[str($regs->si), (int)$regs->di, $regs->dx, $regs->r10] = count();
    @cast[str(((struct pt_regs *)reg("rdi"))->si)] = count();
}
probe kernel.function("do_sys_openat2") {
    @paths[str($filename), $dfd, $how->flags, $how->mode] = count();
    printf("%d %s\n", $how->resolve, str($filename));
}
probe kernel.function("do_sys_openat2").return {
    @returns[@entry($how->mode), @entry($dfd), $return] = count();
}
probe kernel.function("vfs_read") {
    @reads[$file->f_inode->i_ino, $count] = count();
}
"#;

#[test]
fn typed_scripts_compile_against_the_running_kernels_btf() {
    let kernel = running();
    let checked = script::check_btf(&kernel.btf, &sources(TYPED), &CompileOptions::default());
    assert!(!checked.failed, "{}", checked.rendered);
    let compiled = checked.script.expect("compiled");
    let dump = script::dump(&compiled);
    // The parameters' registers (context slots: rdi 5 at byte 40, rsi 4 at 32, rdx
    // 1 at 8) and members at gcc's offsets: open_how.mode 8, resolve 16,
    // pt_regs.si 104 and di 112; all probes stay sites named by symbol.
    // Registers are numbered `rN` here: which one holds a value depends on the
    // expression's depth.
    let normalised: Vec<String> = dump
        .lines()
        .map(|line| {
            let mut text = line.trim().to_string();
            for register in (0..=9).rev() {
                text = text.replace(&format!("r{register}"), "rN");
            }
            text
        })
        .collect();
    for text in [
        "at __x64_sys_openat: kernel symbol __x64_sys_openat+0x0,",
        "at do_sys_openat2: kernel symbol do_sys_openat2+0x0,",
        "at do_sys_openat2.return: kernel symbol do_sys_openat2+0x0 (return),",
        "ldxdw rN, [rN+40]",
        "ldxdw rN, [rN+32]",
        "ldxdw rN, [rN+8]",
        "add64 rN, 104",
        "add64 rN, 112",
        "add64 rN, 16",
        "call read_user_str",
        "call read_kernel_str",
    ] {
        assert!(
            normalised
                .iter()
                .any(|line| line == text || (text.ends_with(',') && line.starts_with(text))),
            "{text:?} missing from:\n{dump}"
        );
    }
    let summary = script::summary(&compiled);
    assert!(
        summary.ends_with("ok: 4 probes, 4 sites, 5 maps, 1 records\n"),
        "{summary}"
    );
}

/// The rendered diagnostics of a script that must not compile.
fn refused(btf: &Btf, script: &str) -> String {
    let checked = script::check_btf(btf, &sources(script), &CompileOptions::default());
    assert!(checked.failed, "{script} compiled");
    checked.rendered
}

#[test]
fn unknown_names_and_unreadable_parameters_are_clear_errors() {
    let kernel = running();
    let btf = &kernel.btf;
    let member = refused(
        btf,
        r#"probe kernel.function("do_sys_openat2") { @x = max($how->mode_bits); }"#,
    );
    assert!(
        member.contains("`struct open_how` has no member `mode_bits`")
            && member.contains("members: flags, mode, resolve"),
        "{member}"
    );
    let ty = refused(
        btf,
        r#"probe kernel.function("do_sys_openat2") { @x = max(((struct open_hw *)$how)->flags); }"#,
    );
    assert!(
        ty.contains("unknown type `struct open_hw`")
            && ty.contains("did you mean `struct open_how`?"),
        "{ty}"
    );
    let variable = refused(
        btf,
        r#"probe kernel.function("do_sys_openat2") { @x = max($hw); }"#,
    );
    assert!(
        variable.contains("unknown variable `$hw`")
            && variable.contains("variables at do_sys_openat2: $dfd, $filename, $how"),
        "{variable}"
    );
    let past_entry = refused(
        btf,
        r#"probe kernel.function("do_sys_openat2+4") { @x = max($dfd); }"#,
    );
    assert!(
        past_entry.contains("parameters are known at the function's entry only"),
        "{past_entry}"
    );
    // A function BTF does not describe keeps its symbol site, without variables.
    let untyped = refused(
        btf,
        r#"probe kernel.function("probeport_no_such_function") { @x = max($regs); }"#,
    );
    assert!(
        untyped.contains("probeport_no_such_function has no variables"),
        "{untyped}"
    );
}

/// Runs `script` in a session on a fake stub that announces `build_id` and kernel
/// symbol sites, with `types`.
fn session(
    build_id: Vec<u8>,
    types: KernelTypes,
    script: &str,
) -> (Result<(), SessionError>, String, Vec<String>) {
    let model = Model {
        build_id,
        cpu_count: 1,
        extra_capabilities: probe_port_protocol::message::Capabilities::KERNEL_SYMBOL,
        ..Model::default()
    };
    let (stream, stub) = spawn(model);
    let mut port = Port::new(stream);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut output = Output {
        out: &mut out,
        err: &mut err,
        format: OutputFormat::Text,
    };
    let options = SessionOptions {
        kernel_types: Some(types),
        duration: Some(std::time::Duration::from_millis(50)),
        ..SessionOptions::default()
    };
    let result = run_user_space(
        &mut port,
        &sources(script),
        &options,
        &mut output,
        &AtomicBool::new(false),
    )
    .map(|_| ());
    drop(port);
    let seen = stub.join().expect("the fake stub");
    (
        result,
        String::from_utf8_lossy(&err).into_owned(),
        seen.requests,
    )
}

const ONE_PARAMETER: &str = r#"probe kernel.function("do_sys_openat2") { @dfd[$dfd] = count(); }"#;

#[test]
fn btf_of_another_kernel_is_refused_before_anything_is_armed() {
    let kernel = Arc::new(running());
    let own = kernel
        .build_id
        .clone()
        .expect("the running kernel has a build-id");
    let mut other = own.clone();
    other[0] ^= 0xff;
    let (result, _, requests) = session(other.clone(), KernelTypes::File(kernel), ONE_PARAMETER);
    match result {
        Err(SessionError::Btf(SourceError::BuildIdMismatch { file, running, .. })) => {
            assert_eq!(file, userland_client::debuginfo::hex(&own));
            assert_eq!(running, userland_client::debuginfo::hex(&other));
        }
        other => panic!("not refused: {other:?}"),
    }
    assert!(
        !requests.iter().any(|request| request == "Arm"),
        "{requests:?}"
    );
}

#[test]
fn this_machines_btf_types_only_this_machines_kernel() {
    let own = running()
        .build_id
        .expect("the running kernel has a build-id");
    // The same kernel: typed parameters compile and the probe is armed.
    let (result, err, requests) = session(own.clone(), KernelTypes::Running, ONE_PARAMETER);
    result.unwrap_or_else(|error| panic!("{error}\n{err}"));
    assert!(err.is_empty(), "{err}");
    assert!(
        requests.iter().any(|request| request == "Arm"),
        "{requests:?}"
    );
    // Another kernel behind the socket: a warning, names only, so `$dfd` is unknown.
    let mut other = own;
    other[19] ^= 1;
    let (result, err, requests) = session(other, KernelTypes::Running, ONE_PARAMETER);
    assert!(
        err.contains("is not this machine's") && err.contains("--btf"),
        "{err}"
    );
    match result {
        Err(SessionError::Compile { rendered }) => {
            assert!(rendered.contains("unknown variable `$dfd`"), "{rendered}");
        }
        other => panic!("compiled without types: {other:?}"),
    }
    assert!(
        !requests.iter().any(|request| request == "Arm"),
        "{requests:?}"
    );
}

/// Runs a command that must succeed; returns its standard output.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A gcc-built ELF with a GNU build-id and the running kernel's BTF as its `.BTF`
/// section (objcopy), as a vmlinux has it; and the same without the section.
fn elf_with_btf(directory: &Path) -> (PathBuf, PathBuf) {
    ensure("/usr/bin/gcc", "gcc");
    ensure("/usr/bin/objcopy", "binutils");
    let source = directory.join("empty.c");
    std::fs::write(&source, "int main(void) { return 0; }\n").expect("writing");
    let plain = directory.join("plain");
    let with_btf = directory.join("with-btf");
    run(Command::new("gcc")
        .arg("-Wl,--build-id")
        .arg("-o")
        .arg(&plain)
        .arg(&source));
    run(Command::new("objcopy")
        .arg(format!("--add-section=.BTF={}", source::RUNNING_BTF))
        .arg("--set-section-flags=.BTF=alloc,readonly")
        .arg(&plain)
        .arg(&with_btf));
    (plain, with_btf)
}

#[test]
fn an_elf_files_btf_section_and_build_id_are_read() {
    // readelf is the build-id's oracle.
    let directory = tempfile::tempdir().expect("a scratch directory");
    let (plain, with_btf) = elf_with_btf(directory.path());
    let notes = run(Command::new("readelf").arg("-n").arg(&with_btf));
    let build_id = notes
        .lines()
        .find_map(|line| line.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build-id in readelf's output:\n{notes}"))
        .to_string();
    let from_elf = KernelBtf::open(&with_btf).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        from_elf
            .build_id
            .as_deref()
            .map(userland_client::debuginfo::hex),
        Some(build_id)
    );
    assert_eq!(from_elf.btf.len(), running().btf.len());
    let error = KernelBtf::open(&plain).unwrap_err().to_string();
    assert!(error.contains("has no .BTF section"), "{error}");
}

#[test]
fn probeport_check_takes_btf_instead_of_an_image() {
    let check = |script: &str| {
        Command::new(env!("CARGO_BIN_EXE_probeport"))
            .args(["check", "--btf", source::RUNNING_BTF, "-e", script])
            .output()
            .expect("probeport runs")
    };
    let ok = check(r#"probe kernel.function("do_sys_openat2") { @m[$how->mode] = count(); }"#);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "probe kernel.function(\"do_sys_openat2\"): 1 site\nok: 1 probes, 1 sites, 1 maps, 0 records\n"
    );
    let bad = check(r#"probe kernel.function("do_sys_openat2") { @m[$how->nope] = count(); }"#);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("`struct open_how` has no member `nope`"),
        "{bad:?}"
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_probeport"))
        .args([
            "check",
            "--btf",
            "/nonexistent",
            "-e",
            "probe begin { exit(); }",
        ])
        .output()
        .expect("probeport runs");
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("cannot read the kernel's BTF: cannot read /nonexistent"),
        "{missing:?}"
    );
}

/// A bzImage as the x86 boot protocol lays it out (setup header at 0x1f1, `HdrS`
/// at 0x202, version 2.15, `payload_offset`/`payload_length` at 0x248), with
/// `payload` after 4 + 1 setup sectors.
fn bzimage(payload: &[u8]) -> Vec<u8> {
    let setup_sects = 4u8;
    let start = (usize::from(setup_sects) + 1) * 512;
    let offset = 0x100usize;
    let mut image = vec![0u8; start + offset];
    image[0x1f1] = setup_sects;
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x248..0x24c].copy_from_slice(&(offset as u32).to_le_bytes());
    image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    image.extend_from_slice(payload);
    image
}

#[test]
fn a_bzimages_compressed_vmlinux_is_found_and_read() {
    // gzip here (the xz with x86 BCJ of Debian's kernels is read in
    // targets/linux-adapter/tests/guest_btf.rs from the real vmlinuz).
    use std::io::Write as _;
    let directory = tempfile::tempdir().expect("a scratch directory");
    let (_, with_btf) = elf_with_btf(directory.path());
    let elf = std::fs::read(&with_btf).expect("reading the ELF");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&elf).expect("compressing");
    let mut payload = gzip.finish().expect("compressing");
    // The kernel's build appends the uncompressed size.
    payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
    let image = directory.path().join("vmlinuz");
    std::fs::write(&image, bzimage(&payload)).expect("writing");
    let from_image = KernelBtf::open(&image).unwrap_or_else(|error| panic!("{error}"));
    let from_elf = KernelBtf::open(&with_btf).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(from_image.build_id, from_elf.build_id);
    assert!(from_image.build_id.is_some());
    assert_eq!(from_image.btf.len(), from_elf.btf.len());
    // Compressors the client does not read are named.
    std::fs::write(&image, bzimage(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0])).expect("writing");
    let error = KernelBtf::open(&image).unwrap_err().to_string();
    assert!(error.contains("compressed with zstd"), "{error}");
}
