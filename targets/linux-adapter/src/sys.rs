//! Thin wrappers of the kernel interfaces the adapter uses: `bpf()`,
//! `perf_event_open()` on the uprobe and kprobe PMUs, and the BPF ring buffer's
//! shared pages.
//!
//! # Design
//!
//! Every object the kernel hands out is a file descriptor, kept as an [`OwnedFd`]
//! (or a type owning one), so dropping the owner releases the object: a BPF map or
//! program goes away with its last descriptor, a perf event detaches its program
//! when closed. The attribute structures are built as zeroed byte buffers with the
//! UAPI's field offsets, written out here with the offsets as named constants.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use probe_port_protocol::isa::Insn;

/// `bpf()` commands (`enum bpf_cmd`).
mod cmd {
    pub(super) const MAP_CREATE: i32 = 0;
    pub(super) const MAP_LOOKUP_ELEM: i32 = 1;
    pub(super) const MAP_UPDATE_ELEM: i32 = 2;
    pub(super) const MAP_DELETE_ELEM: i32 = 3;
    pub(super) const MAP_GET_NEXT_KEY: i32 = 4;
    pub(super) const PROG_LOAD: i32 = 5;
    pub(super) const PROG_GET_NEXT_ID: i32 = 11;
    pub(super) const MAP_GET_NEXT_ID: i32 = 12;
}

/// BPF map types (`enum bpf_map_type`).
pub mod map_type {
    /// A hash map shared by all CPUs.
    pub const HASH: u32 = 1;
    /// An array shared by all CPUs.
    pub const ARRAY: u32 = 2;
    /// A hash map with one value per possible CPU.
    pub const PERCPU_HASH: u32 = 5;
    /// An array with one value per possible CPU.
    pub const PERCPU_ARRAY: u32 = 6;
    /// A multi-producer, single-consumer ring buffer.
    pub const RINGBUF: u32 = 27;
}

/// `BPF_PROG_TYPE_KPROBE`: the program type of kprobe and uprobe handlers.
pub const PROG_TYPE_KPROBE: u32 = 2;
/// `BPF_PROG_TYPE_TRACEPOINT`: handlers of tracepoints (the context is the
/// event's record, laid out as its tracefs `format` file says).
pub const PROG_TYPE_TRACEPOINT: u32 = 5;
/// `BPF_PROG_TYPE_PERF_EVENT`: handlers of perf events such as `cpu-clock` (the
/// context is `struct bpf_perf_event_data`, whose first member is the
/// interrupted context's `pt_regs`).
pub const PROG_TYPE_PERF_EVENT: u32 = 7;

/// Size of the `bpf_attr` buffer passed; the kernel wants the unused tail zero.
const ATTR_SIZE: usize = 128;

fn bpf(command: i32, attr: &mut [u8; ATTR_SIZE]) -> io::Result<i64> {
    // SAFETY: `attr` is a live, writable buffer of `ATTR_SIZE` bytes, every
    // pointer inside it points to memory the caller keeps alive for the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.as_mut_ptr(),
            ATTR_SIZE as libc::c_uint,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn put_u32(attr: &mut [u8], offset: usize, value: u32) {
    attr[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], offset: usize, value: u64) {
    attr[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us and nothing else
    // owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn put_name(attr: &mut [u8], offset: usize, name: &str) {
    // Object names: at most 15 bytes of [A-Za-z0-9_.], NUL-terminated.
    for (index, byte) in name
        .bytes()
        .filter(|byte| byte.is_ascii_alphanumeric() || *byte == b'_' || *byte == b'.')
        .take(15)
        .enumerate()
    {
        attr[offset + index] = byte;
    }
}

/// A BPF map, owned.
#[derive(Debug)]
pub struct BpfMap {
    fd: OwnedFd,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (per CPU for per-CPU maps).
    pub value_size: u32,
    /// Whether values come one per possible CPU.
    pub per_cpu: bool,
}

impl BpfMap {
    /// `BPF_MAP_CREATE`.
    pub fn create(
        kind: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        name: &str,
    ) -> io::Result<BpfMap> {
        let mut attr = [0u8; ATTR_SIZE];
        put_u32(&mut attr, 0, kind);
        put_u32(&mut attr, 4, key_size);
        put_u32(&mut attr, 8, value_size);
        put_u32(&mut attr, 12, max_entries);
        put_name(&mut attr, 28, name);
        let fd = bpf(cmd::MAP_CREATE, &mut attr)?;
        Ok(BpfMap {
            fd: owned(fd),
            key_size,
            value_size,
            per_cpu: matches!(kind, map_type::PERCPU_HASH | map_type::PERCPU_ARRAY),
        })
    }

    /// The descriptor, for `lddw` map references.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Bytes of one lookup result: the value, or one 8-byte-aligned value per
    /// possible CPU.
    pub fn lookup_size(&self, possible_cpus: usize) -> usize {
        if self.per_cpu {
            (self.value_size as usize).next_multiple_of(8) * possible_cpus
        } else {
            self.value_size as usize
        }
    }

    fn element(&self, command: i32, key: *const u8, value: u64, flags: u64) -> io::Result<i64> {
        let mut attr = [0u8; ATTR_SIZE];
        put_u32(&mut attr, 0, self.fd.as_raw_fd() as u32);
        put_u64(&mut attr, 8, key as u64);
        put_u64(&mut attr, 16, value);
        put_u64(&mut attr, 24, flags);
        bpf(command, &mut attr)
    }

    /// `BPF_MAP_LOOKUP_ELEM` into `value` ([`BpfMap::lookup_size`] bytes);
    /// `Ok(false)` when the key is absent.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
        assert_eq!(key.len(), self.key_size as usize);
        match self.element(
            cmd::MAP_LOOKUP_ELEM,
            key.as_ptr(),
            value.as_mut_ptr() as u64,
            0,
        ) {
            Ok(_) => Ok(true),
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// `BPF_MAP_UPDATE_ELEM` with `BPF_ANY`.
    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        assert_eq!(key.len(), self.key_size as usize);
        self.element(cmd::MAP_UPDATE_ELEM, key.as_ptr(), value.as_ptr() as u64, 0)
            .map(drop)
    }

    /// `BPF_MAP_DELETE_ELEM`; `Ok(false)` when the key was absent.
    pub fn delete(&self, key: &[u8]) -> io::Result<bool> {
        match self.element(cmd::MAP_DELETE_ELEM, key.as_ptr(), 0, 0) {
            Ok(_) => Ok(true),
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Every key, in the map's iteration order.
    pub fn keys(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut next = vec![0u8; self.key_size as usize];
            let previous = keys.last().map_or(std::ptr::null(), |key| key.as_ptr());
            match self.element(cmd::MAP_GET_NEXT_KEY, previous, next.as_mut_ptr() as u64, 0) {
                Ok(_) => keys.push(next),
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
                Err(error) => return Err(error),
            }
            if keys.len() > 1 << 24 {
                return Err(io::Error::other("map iteration does not end"));
            }
        }
    }
}

/// A loaded BPF program, owned.
#[derive(Debug)]
pub struct BpfProgram {
    fd: OwnedFd,
}

/// Why `BPF_PROG_LOAD` failed: the errno and the verifier's log.
#[derive(Debug)]
pub struct LoadError {
    /// The error `bpf()` returned.
    pub error: io::Error,
    /// The verifier's log (empty if it wrote none).
    pub log: String,
}

impl BpfProgram {
    /// `BPF_PROG_LOAD` of a kprobe-type program; on failure, loads again with the
    /// verifier's log enabled and returns it.
    pub fn load(insns: &[Insn], name: &str) -> Result<BpfProgram, LoadError> {
        Self::load_typed(insns, name, PROG_TYPE_KPROBE)
    }

    /// [`BpfProgram::load`] of a program of type `program_type`
    /// ([`PROG_TYPE_KPROBE`], [`PROG_TYPE_TRACEPOINT`], [`PROG_TYPE_PERF_EVENT`]).
    pub fn load_typed(
        insns: &[Insn],
        name: &str,
        program_type: u32,
    ) -> Result<BpfProgram, LoadError> {
        match Self::load_with_log(insns, name, 0, program_type) {
            Ok(program) => Ok(program),
            Err(first) => match Self::load_with_log(insns, name, 1, program_type) {
                Ok(program) => Ok(program),
                Err(with_log) if !with_log.log.is_empty() => Err(with_log),
                Err(_) => Err(first),
            },
        }
    }

    fn load_with_log(
        insns: &[Insn],
        name: &str,
        log_level: u32,
        program_type: u32,
    ) -> Result<BpfProgram, LoadError> {
        let bytes: Vec<u8> = insns.iter().flat_map(|insn| insn.to_bytes()).collect();
        let license = c"Dual MIT/GPL";
        let mut log = vec![0u8; if log_level > 0 { 1 << 20 } else { 0 }];
        let mut attr = [0u8; ATTR_SIZE];
        put_u32(&mut attr, 0, program_type);
        put_u32(&mut attr, 4, insns.len() as u32);
        put_u64(&mut attr, 8, bytes.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        put_u32(&mut attr, 24, log_level);
        put_u32(&mut attr, 28, log.len() as u32);
        put_u64(
            &mut attr,
            32,
            if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
        );
        put_name(&mut attr, 48, name);
        match bpf(cmd::PROG_LOAD, &mut attr) {
            Ok(fd) => Ok(BpfProgram { fd: owned(fd) }),
            Err(error) => {
                let end = log.iter().position(|byte| *byte == 0).unwrap_or(log.len());
                Err(LoadError {
                    error,
                    log: String::from_utf8_lossy(&log[..end]).into_owned(),
                })
            }
        }
    }

    /// The descriptor.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// How many times Linux skipped the program because its CPU was already
    /// running a BPF program or was inside a `bpf()` map operation (the
    /// `recursion_misses` line of the descriptor's `fdinfo`; 0 on kernels that do
    /// not report it).
    pub fn recursion_misses(&self) -> io::Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.raw_fd()))?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix("recursion_misses:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0))
    }
}

fn next_id(command: i32, start: u32) -> io::Result<Option<u32>> {
    let mut attr = [0u8; ATTR_SIZE];
    put_u32(&mut attr, 0, start);
    match bpf(command, &mut attr) {
        Ok(_) => Ok(Some(u32::from_ne_bytes(
            attr[4..8].try_into().unwrap_or([0; 4]),
        ))),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(error) => Err(error),
    }
}

fn all_ids(command: i32) -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut start = 0;
    while let Some(id) = next_id(command, start)? {
        ids.push(id);
        start = id;
    }
    Ok(ids)
}

/// The ids of every BPF program loaded in the system (`BPF_PROG_GET_NEXT_ID`).
pub fn program_ids() -> io::Result<Vec<u32>> {
    all_ids(cmd::PROG_GET_NEXT_ID)
}

/// The ids of every BPF map in the system (`BPF_MAP_GET_NEXT_ID`).
pub fn map_ids() -> io::Result<Vec<u32>> {
    all_ids(cmd::MAP_GET_NEXT_ID)
}

/// The uprobe PMU as sysfs describes it.
#[derive(Clone, Copy, Debug)]
pub struct UprobePmu {
    /// `perf_event_attr.type` for uprobes.
    pub kind: u32,
    /// Bit of `config` that makes a return probe (`format/retprobe`).
    pub retprobe_bit: u32,
    /// Shift of the reference-counter offset in `config` (`format/ref_ctr_offset`).
    pub ref_ctr_shift: Option<u32>,
}

const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe";

/// The first bit of a `config:N` or `config:N-M` format description.
fn format_bit(text: &str) -> Option<u32> {
    let field = text.trim().strip_prefix("config:")?;
    field.split('-').next()?.parse().ok()
}

impl UprobePmu {
    /// Reads the PMU's type and format bits from sysfs.
    pub fn discover() -> io::Result<UprobePmu> {
        let read = |name: &str| std::fs::read_to_string(format!("{UPROBE_PMU}/{name}"));
        let kind = read("type")?
            .trim()
            .parse()
            .map_err(|_| io::Error::other("unreadable uprobe PMU type"))?;
        let retprobe_bit = format_bit(&read("format/retprobe")?)
            .ok_or_else(|| io::Error::other("unreadable uprobe PMU retprobe format"))?;
        let ref_ctr_shift = read("format/ref_ctr_offset")
            .ok()
            .and_then(|text| format_bit(&text));
        Ok(UprobePmu {
            kind,
            retprobe_bit,
            ref_ctr_shift,
        })
    }
}

/// The kprobe PMU as sysfs describes it (absent on kernels without kprobes, such
/// as the build machines').
#[derive(Clone, Copy, Debug)]
pub struct KprobePmu {
    /// `perf_event_attr.type` for kprobes.
    pub kind: u32,
    /// Bit of `config` that makes a return probe (`format/retprobe`).
    pub retprobe_bit: u32,
}

const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

impl KprobePmu {
    /// Reads the PMU's type and format bits from sysfs.
    pub fn discover() -> io::Result<KprobePmu> {
        let read = |name: &str| std::fs::read_to_string(format!("{KPROBE_PMU}/{name}"));
        let kind = read("type")?
            .trim()
            .parse()
            .map_err(|_| io::Error::other("unreadable kprobe PMU type"))?;
        let retprobe_bit = format_bit(&read("format/retprobe")?)
            .ok_or_else(|| io::Error::other("unreadable kprobe PMU retprobe format"))?;
        Ok(KprobePmu { kind, retprobe_bit })
    }
}

/// `PERF_EVENT_IOC_ENABLE`.
const IOC_ENABLE: libc::c_ulong = 0x2400;
/// `PERF_EVENT_IOC_DISABLE`.
const IOC_DISABLE: libc::c_ulong = 0x2401;
/// `PERF_EVENT_IOC_SET_BPF` (`_IOW('$', 8, __u32)`).
const IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
/// `PERF_FLAG_FD_CLOEXEC` of `perf_event_open`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// Size of the `perf_event_attr` passed (`PERF_ATTR_SIZE_VER5` is 112).
const PERF_ATTR_SIZE: usize = 128;

/// A uprobe or kprobe perf event, owned; closing it detaches the program and
/// removes the probe.
#[derive(Debug)]
pub struct ProbeEvent {
    fd: OwnedFd,
}

/// Opens a disabled system-wide probe event (pid -1, CPU 0) of PMU type `kind`.
fn open_probe_event(kind: u32, config: u64, config1: u64, config2: u64) -> io::Result<OwnedFd> {
    open_event(kind, config, config1, config2, 1, 0)
}

/// `perf_event_attr.type` of the fixed PMUs (`enum perf_type_id`).
mod perf_type {
    pub(super) const SOFTWARE: u32 = 1;
    pub(super) const TRACEPOINT: u32 = 2;
}

/// `PERF_COUNT_SW_CPU_CLOCK`: the software event driven by a per-CPU hrtimer.
const SW_CPU_CLOCK: u64 = 0;

/// Opens a disabled event of every process (pid -1) on `cpu`, of PMU type `kind`,
/// sampling every `sample_period` counts.
fn open_event(
    kind: u32,
    config: u64,
    config1: u64,
    config2: u64,
    sample_period: u64,
    cpu: i32,
) -> io::Result<OwnedFd> {
    let mut attr = [0u8; PERF_ATTR_SIZE];
    put_u32(&mut attr, 0, kind);
    put_u32(&mut attr, 4, PERF_ATTR_SIZE as u32);
    put_u64(&mut attr, 8, config);
    put_u64(&mut attr, 16, sample_period);
    put_u64(&mut attr, 40, 1); // flags: disabled
    put_u64(&mut attr, 56, config1);
    put_u64(&mut attr, 64, config2);
    // SAFETY: `attr` is a zeroed perf_event_attr of the size it announces; a
    // pointer in `config1` is the caller's, valid during the call (the kernel
    // copies the string).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned(fd))
}

impl ProbeEvent {
    /// Opens a disabled tracepoint event of every process (pid -1, CPU 0) for the
    /// tracepoint whose tracefs `id` is `id`. An attached program runs wherever
    /// the tracepoint fires, on every CPU, as for kprobes.
    pub fn open_tracepoint(id: u64) -> io::Result<ProbeEvent> {
        let fd = open_event(perf_type::TRACEPOINT, id, 0, 0, 1, 0)?;
        Ok(ProbeEvent { fd })
    }

    /// Opens a disabled `cpu-clock` software event on `cpu` for every process,
    /// overflowing every `period_ns` nanoseconds of that CPU's clock (an hrtimer
    /// that fires whether the CPU is busy or idle); an attached perf-event
    /// program runs at each overflow with the interrupted registers.
    pub fn open_cpu_clock(cpu: usize, period_ns: u64) -> io::Result<ProbeEvent> {
        let cpu = i32::try_from(cpu).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let fd = open_event(
            perf_type::SOFTWARE,
            SW_CPU_CLOCK,
            0,
            0,
            period_ns.max(1),
            cpu,
        )?;
        Ok(ProbeEvent { fd })
    }

    /// Opens a disabled system-wide kprobe (kretprobe with `is_return`) at
    /// `symbol + offset`: `config1` points to the symbol (`kprobe_func`),
    /// `config2` is the offset (`probe_offset`); the kernel resolves the name.
    pub fn open_kprobe(
        pmu: &KprobePmu,
        symbol: &str,
        offset: u64,
        is_return: bool,
    ) -> io::Result<ProbeEvent> {
        let symbol =
            CString::new(symbol).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let config = if is_return { 1 << pmu.retprobe_bit } else { 0 };
        let fd = open_probe_event(pmu.kind, config, symbol.as_ptr() as u64, offset)?;
        Ok(ProbeEvent { fd })
    }

    /// Opens a disabled system-wide uprobe (pid -1, CPU 0) on `path` at
    /// `file_offset`.
    pub fn open(
        pmu: &UprobePmu,
        path: &Path,
        file_offset: u64,
        is_return: bool,
        ref_ctr_offset: u64,
    ) -> io::Result<ProbeEvent> {
        let path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut config = 0u64;
        if is_return {
            config |= 1 << pmu.retprobe_bit;
        }
        if ref_ctr_offset != 0 {
            let shift = pmu
                .ref_ctr_shift
                .ok_or_else(|| io::Error::from(io::ErrorKind::Unsupported))?;
            config |= ref_ctr_offset << shift;
        }
        // config1: uprobe_path, config2: probe_offset.
        let fd = open_probe_event(pmu.kind, config, path.as_ptr() as u64, file_offset)?;
        Ok(ProbeEvent { fd })
    }

    fn ioctl(&self, request: libc::c_ulong, argument: libc::c_ulong) -> io::Result<()> {
        // SAFETY: a perf event descriptor we own and a request that takes an
        // integer argument.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), request, argument) } < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Attaches `program` (`PERF_EVENT_IOC_SET_BPF`).
    pub fn attach(&self, program: &BpfProgram) -> io::Result<()> {
        self.ioctl(IOC_SET_BPF, program.raw_fd() as libc::c_ulong)
    }

    /// Starts or stops the probe firing.
    pub fn set_enabled(&self, enabled: bool) -> io::Result<()> {
        self.ioctl(if enabled { IOC_ENABLE } else { IOC_DISABLE }, 0)
    }
}

/// The consumer side of a BPF ring buffer: its pages mapped into the daemon.
#[derive(Debug)]
pub struct RingBuffer {
    map: BpfMap,
    consumer: *mut u8,
    producer: *mut u8,
    page: usize,
    size: usize,
}

// SAFETY: the mappings are owned by the RingBuffer and only touched through it.
unsafe impl Send for RingBuffer {}

/// Record header bits of the BPF ring buffer.
const RING_BUSY: u32 = 1 << 31;
const RING_DISCARD: u32 = 1 << 30;
const RING_HEADER: usize = 8;

impl RingBuffer {
    /// Creates a ring buffer map of `size` bytes (a power of two, a multiple of the
    /// page size) and maps its pages.
    pub fn create(size: usize) -> io::Result<RingBuffer> {
        let map = BpfMap::create(map_type::RINGBUF, 0, 0, size as u32, "probeport_ring")?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: mapping the ring's consumer page, read-write, as the kernel allows.
        let consumer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.raw_fd(),
                0,
            )
        };
        if consumer == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the producer page and the data pages (mapped twice by the kernel
        // so that a record never wraps), read-only.
        let producer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page + 2 * size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.raw_fd(),
                page as libc::off_t,
            )
        };
        if producer == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            // SAFETY: unmapping what was mapped just above.
            unsafe { libc::munmap(consumer, page) };
            return Err(error);
        }
        Ok(RingBuffer {
            map,
            consumer: consumer.cast(),
            producer: producer.cast(),
            page,
            size,
        })
    }

    /// The map's descriptor, for the programs.
    pub fn raw_fd(&self) -> RawFd {
        self.map.raw_fd()
    }

    /// Hands every committed record to `each`, in ring order, and frees them.
    pub fn drain(&mut self, mut each: impl FnMut(&[u8])) {
        // SAFETY: both positions are u64 words at the start of pages mapped for
        // the lifetime of `self`, written by the kernel (producer) and by us
        // (consumer); atomics give the ordering the protocol needs.
        let (consumer_pos, producer_pos) = unsafe {
            (
                &*(self.consumer as *const AtomicU64),
                &*(self.producer as *const AtomicU64),
            )
        };
        let mask = (self.size - 1) as u64;
        let mut consumed = consumer_pos.load(Ordering::Acquire);
        loop {
            let produced = producer_pos.load(Ordering::Acquire);
            if consumed >= produced {
                break;
            }
            let at = (consumed & mask) as usize;
            // SAFETY: `at` is inside the data area; the header is a u32 written
            // atomically by the kernel.
            let header = unsafe {
                (*(self.producer.add(self.page + at) as *const std::sync::atomic::AtomicU32))
                    .load(Ordering::Acquire)
            };
            if header & RING_BUSY != 0 {
                break;
            }
            let len = (header & !(RING_BUSY | RING_DISCARD)) as usize;
            if header & RING_DISCARD == 0 && len <= self.size {
                // SAFETY: the record's bytes follow its header; the data area is
                // mapped twice in a row, so they are contiguous even across the end.
                let record = unsafe {
                    std::slice::from_raw_parts(self.producer.add(self.page + at + RING_HEADER), len)
                };
                each(record);
            }
            consumed += (len + RING_HEADER).next_multiple_of(8) as u64;
            consumer_pos.store(consumed, Ordering::Release);
        }
    }
}

impl Drop for RingBuffer {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the two mappings made in `create`.
        unsafe {
            libc::munmap(self.consumer.cast(), self.page);
            libc::munmap(self.producer.cast(), self.page + 2 * self.size);
        }
    }
}

/// The online CPUs (`/sys/devices/system/cpu/online`), where per-CPU events can
/// be opened.
pub fn online_cpus() -> io::Result<Vec<usize>> {
    cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/online")?)
}

/// The CPUs of a sysfs CPU list (`0-3,5`).
fn cpu_list(text: &str) -> io::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for range in text.trim().split(',').filter(|range| !range.is_empty()) {
        let mut bounds = range.split('-');
        let first: usize = bounds
            .next()
            .and_then(|first| first.parse().ok())
            .ok_or_else(|| io::Error::other("bad cpu list"))?;
        let last: usize = match bounds.next() {
            Some(last) => last.parse().map_err(|_| io::Error::other("bad cpu list"))?,
            None => first,
        };
        cpus.extend(first..=last);
    }
    Ok(cpus)
}

/// Number of possible CPUs (`/sys/devices/system/cpu/possible`), the number of
/// values per-CPU maps hold.
pub fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut count = 0;
    for range in text.trim().split(',') {
        let mut bounds = range.split('-');
        let first: usize = bounds
            .next()
            .and_then(|first| first.parse().ok())
            .ok_or_else(|| io::Error::other("bad cpu list"))?;
        let last: usize = match bounds.next() {
            Some(last) => last.parse().map_err(|_| io::Error::other("bad cpu list"))?,
            None => first,
        };
        count += last + 1 - first;
    }
    Ok(count)
}

/// The kernel's GNU build-id, from the notes in `/sys/kernel/notes`.
pub fn kernel_build_id() -> Vec<u8> {
    let Ok(notes) = std::fs::read("/sys/kernel/notes") else {
        return Vec::new();
    };
    let mut rest = &notes[..];
    while rest.len() >= 12 {
        let word = |at: usize| u32::from_ne_bytes(rest[at..at + 4].try_into().unwrap_or([0; 4]));
        let (name_size, desc_size, kind) = (word(0) as usize, word(4) as usize, word(8));
        let name_end = 12 + name_size.next_multiple_of(4);
        let desc_end = name_end + desc_size.next_multiple_of(4);
        if desc_end > rest.len() {
            break;
        }
        // NT_GNU_BUILD_ID = 3, name "GNU\0".
        if kind == 3 && rest[12..12 + name_size].starts_with(b"GNU") {
            return rest[name_end..name_end + desc_size].to_vec();
        }
        rest = &rest[desc_end..];
    }
    Vec::new()
}
