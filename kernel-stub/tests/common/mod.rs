//! A simulated kernel for the stub's host tests: fake text with real x86-64
//! instructions, fake stack and data memory, N CPUs as plain indices, a clock the
//! test sets, and a client that speaks the port protocol to a `Stub`.
//!
//! Nothing executes: a "CPU fetching at X" looks at the byte there and, if it is a
//! breakpoint, calls `Stub::on_breakpoint` as the trap would; the test then checks
//! where the stub redirected the CPU (an out-of-line slot whose bytes it can read,
//! or an emulated target).
#![allow(
    dead_code,
    unused_macros,
    reason = "each test binary uses a different part of the harness"
)]

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use kernel_stub::arch::{SLOT_SIZE, TrapRegisters};
use kernel_stub::interpreter::Fault;
use kernel_stub::{MarkerSite, Platform, Stub, TextError, TrapOutcome};
use probe_port_protocol::asm::assemble;
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::isa;
use probe_port_protocol::message::{
    Arch, ArmRequest, ErrorDetail, ErrorReply, Hello, LostEvents, ProbeId, ReplyBody, Request,
    RequestBody, Site, StubMessage, decode_stub_message, encode,
};

/// Where the fake kernel text starts.
pub(crate) const TEXT_BASE: u64 = 0xffff_ffff_8100_0000;
/// Size of the fake kernel text.
pub(crate) const TEXT_SIZE: usize = 0x4000;
/// The out-of-line area (slot 0 is the return trampoline).
pub(crate) const AREA_BASE: u64 = 0xffff_ffff_8180_0000;
/// Size of the out-of-line area: the trampoline and 512 probe slots.
pub(crate) const AREA_SIZE: usize = 513 * SLOT_SIZE;
/// Text the platform forbids (say, its trap entry path).
pub(crate) const FORBIDDEN: Range<u64> = TEXT_BASE + 0x800..TEXT_BASE + 0x900;
/// Fake kernel stacks.
pub(crate) const STACK_BASE: u64 = 0xffff_8880_0010_0000;
/// Size of the stack memory.
pub(crate) const STACK_SIZE: usize = 0x1_0000;
/// Fake kernel data (strings, structures).
pub(crate) const DATA_BASE: u64 = 0xffff_8880_0020_0000;
/// Size of the data memory.
pub(crate) const DATA_SIZE: usize = 0x1_0000;

/// The function `f` at `TEXT_BASE + 0x100`, instruction by instruction.
pub(crate) const F: u64 = TEXT_BASE + 0x100;
/// `push rbp`
pub(crate) const F_PUSH: u64 = F;
/// `mov rbp, rsp`
pub(crate) const F_MOV_RBP: u64 = F + 1;
/// `mov rax, [rdi+8]`
pub(crate) const F_LOAD: u64 = F + 4;
/// `lea rax, [rip+0x1000]` (RIP-relative)
pub(crate) const F_LEA: u64 = F + 8;
/// `call g` (rel32)
pub(crate) const F_CALL: u64 = F + 15;
/// `pop rbp`
pub(crate) const F_POP: u64 = F + 20;
/// `ret`
pub(crate) const F_RET: u64 = F + 21;
/// The function `g` at `TEXT_BASE + 0x200`: `push rbp; mov rbp, rsp; mov rax, rdi; pop rbp; ret`.
pub(crate) const G: u64 = TEXT_BASE + 0x200;
/// A `ud2` (cannot run displaced).
pub(crate) const UD2: u64 = TEXT_BASE + 0x300;
/// An `int3` the kernel put there itself.
pub(crate) const KERNEL_INT3: u64 = TEXT_BASE + 0x310;
/// One-byte `nop`s up to the end of the text, for tests that need many sites.
pub(crate) const NOPS: u64 = TEXT_BASE + 0x1000;
/// Number of `nop`s at [`NOPS`] (more than `MAX_PROBES`).
pub(crate) const NOP_COUNT: usize = TEXT_SIZE - 0x1000;
const _: () = assert!(NOP_COUNT > kernel_stub::limits::MAX_PROBES);

/// The bytes of `f`.
pub(crate) fn f_bytes() -> Vec<u8> {
    let mut code = vec![0x55, 0x48, 0x89, 0xe5, 0x48, 0x8b, 0x47, 0x08];
    code.extend([0x48, 0x8d, 0x05, 0x00, 0x10, 0x00, 0x00]);
    let call_end = F_CALL + 5;
    let rel = (G as i64 - call_end as i64) as i32;
    code.push(0xe8);
    code.extend(rel.to_le_bytes());
    code.extend([0x5d, 0xc3]);
    code
}

/// The bytes of `g`.
pub(crate) fn g_bytes() -> Vec<u8> {
    vec![0x55, 0x48, 0x89, 0xe5, 0x48, 0x89, 0xf8, 0x5d, 0xc3]
}

/// The whole fake text.
pub(crate) fn text_image() -> Vec<u8> {
    let mut text = vec![0x90u8; TEXT_SIZE];
    // Filler between functions: int3 padding, as compilers do.
    for byte in &mut text[..0x1000] {
        *byte = 0xcc;
    }
    let place = |text: &mut Vec<u8>, address: u64, bytes: &[u8]| {
        let offset = (address - TEXT_BASE) as usize;
        text[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    place(&mut text, F, &f_bytes());
    place(&mut text, G, &g_bytes());
    place(&mut text, UD2, &[0x0f, 0x0b]);
    place(&mut text, KERNEL_INT3, &[0xcc]);
    place(&mut text, FORBIDDEN.start, &[0x55, 0xc3]);
    text
}

struct Memory {
    text: Vec<u8>,
    area: Vec<u8>,
    stack: Vec<u8>,
    data: Vec<u8>,
    text_writes: Vec<(u64, Vec<u8>)>,
    function_starts: Vec<(Range<u64>, u64)>,
    refuse_text_writes: bool,
    /// Where simulated suspended threads would resume (for stopped writes).
    resume_points: Vec<u64>,
    /// Whether `write_text_stopped` is supported.
    no_stopped_writes: bool,
    /// Every stopped write made: its address and bytes.
    stopped_writes: Vec<(u64, Vec<u8>)>,
}

impl Memory {
    fn ensure(&mut self) {
        if self.text.is_empty() {
            self.text = text_image();
            self.area = vec![0xcc; AREA_SIZE];
            self.stack = vec![0; STACK_SIZE];
            self.data = vec![0; DATA_SIZE];
        }
    }

    fn region(&mut self, address: u64) -> Option<(u64, &mut Vec<u8>)> {
        self.ensure();
        let regions: [(u64, &mut Vec<u8>); 4] = [
            (TEXT_BASE, &mut self.text),
            (AREA_BASE, &mut self.area),
            (STACK_BASE, &mut self.stack),
            (DATA_BASE, &mut self.data),
        ];
        regions
            .into_iter()
            .find(|(base, bytes)| address >= *base && address < *base + bytes.len() as u64)
    }

    /// The slice `[address, address + len)` of one region, or the first address
    /// outside.
    fn slice(&mut self, address: u64, len: usize) -> Result<&mut [u8], Fault> {
        let Some((base, bytes)) = self.region(address) else {
            return Err(Fault { address });
        };
        let start = (address - base) as usize;
        let end = start + len;
        if end > bytes.len() {
            return Err(Fault {
                address: base + bytes.len() as u64,
            });
        }
        Ok(&mut bytes[start..end])
    }
}

/// Called with the address of every `read_kernel`, to simulate what happens on
/// the CPU meanwhile (a nested trap).
pub(crate) type ReadHook = Box<dyn FnMut(u64) + Send>;

/// The simulated kernel.
pub(crate) struct Sim {
    memory: Mutex<Memory>,
    cpu: AtomicUsize,
    cpus: AtomicUsize,
    now: AtomicU64,
    area_size: AtomicUsize,
    wakeups: AtomicU64,
    markers: OnceLock<&'static [MarkerSite]>,
    read_hook: Mutex<Option<ReadHook>>,
}

static FORBIDDEN_RANGES: [Range<u64>; 1] = [FORBIDDEN];

thread_local! {
    /// The CPU a test thread plays, when threads play CPUs concurrently.
    static THREAD_CPU: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Makes the calling thread CPU `cpu` for good (over `Sim::set_cpu`).
pub(crate) fn pin_thread_to_cpu(cpu: usize) {
    THREAD_CPU.with(|current| current.set(Some(cpu)));
}

impl Sim {
    /// Two CPUs, the clock at 0, the standard text.
    pub(crate) const fn new() -> Self {
        Self {
            memory: Mutex::new(Memory {
                text: Vec::new(),
                area: Vec::new(),
                stack: Vec::new(),
                data: Vec::new(),
                text_writes: Vec::new(),
                function_starts: Vec::new(),
                refuse_text_writes: false,
                resume_points: Vec::new(),
                no_stopped_writes: false,
                stopped_writes: Vec::new(),
            }),
            cpu: AtomicUsize::new(0),
            cpus: AtomicUsize::new(2),
            now: AtomicU64::new(0),
            area_size: AtomicUsize::new(AREA_SIZE),
            wakeups: AtomicU64::new(0),
            markers: OnceLock::new(),
            read_hook: Mutex::new(None),
        }
    }

    /// Simulated threads suspended at these addresses (stopped writes refuse to
    /// write when one lies in their `avoid` ranges).
    pub(crate) fn set_resume_points(&self, points: &[u64]) {
        self.memory.lock().unwrap().resume_points = points.to_vec();
    }

    /// Makes `write_text_stopped` unsupported (or supported again).
    pub(crate) fn set_no_stopped_writes(&self, unsupported: bool) {
        self.memory.lock().unwrap().no_stopped_writes = unsupported;
    }

    /// The stopped writes made so far.
    pub(crate) fn stopped_writes(&self) -> Vec<(u64, Vec<u8>)> {
        self.memory.lock().unwrap().stopped_writes.clone()
    }

    pub(crate) fn set_cpu(&self, cpu: usize) {
        self.cpu.store(cpu, Ordering::SeqCst);
    }

    pub(crate) fn set_cpu_count(&self, count: usize) {
        self.cpus.store(count, Ordering::SeqCst);
    }

    pub(crate) fn set_now(&self, now_ns: u64) {
        self.now.store(now_ns, Ordering::SeqCst);
    }

    pub(crate) fn set_area_size(&self, size: usize) {
        self.area_size.store(size, Ordering::SeqCst);
    }

    pub(crate) fn set_markers(&self, markers: &'static [MarkerSite]) {
        let _ = self.markers.set(markers);
    }

    pub(crate) fn set_read_hook(&self, hook: Option<ReadHook>) {
        *self.read_hook.lock().unwrap() = hook;
    }

    pub(crate) fn refuse_text_writes(&self, refuse: bool) {
        self.memory.lock().unwrap().refuse_text_writes = refuse;
    }

    pub(crate) fn add_function(&self, range: Range<u64>) {
        let start = range.start;
        self.memory
            .lock()
            .unwrap()
            .function_starts
            .push((range, start));
    }

    pub(crate) fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::SeqCst)
    }

    /// A copy of the kernel text as it is now.
    pub(crate) fn text(&self) -> Vec<u8> {
        let mut memory = self.memory.lock().unwrap();
        memory.ensure();
        memory.text.clone()
    }

    /// Bytes of any simulated memory.
    pub(crate) fn read(&self, address: u64, len: usize) -> Vec<u8> {
        let mut memory = self.memory.lock().unwrap();
        memory.slice(address, len).unwrap().to_vec()
    }

    /// Writes any simulated memory (the test playing the kernel).
    pub(crate) fn poke(&self, address: u64, bytes: &[u8]) {
        let mut memory = self.memory.lock().unwrap();
        memory
            .slice(address, bytes.len())
            .unwrap()
            .copy_from_slice(bytes);
    }

    pub(crate) fn read_u64(&self, address: u64) -> u64 {
        u64::from_le_bytes(self.read(address, 8).try_into().unwrap())
    }

    pub(crate) fn poke_u64(&self, address: u64, value: u64) {
        self.poke(address, &value.to_le_bytes());
    }

    /// Every `write_text` so far: address and bytes.
    pub(crate) fn text_writes(&self) -> Vec<(u64, Vec<u8>)> {
        self.memory.lock().unwrap().text_writes.clone()
    }

    /// The CPU `cpu` fetches the instruction at `regs.pc`: if it is a breakpoint,
    /// the trap calls the stub (with `pc` past it, as the CPU saves it). `None`
    /// when there is no breakpoint there.
    pub(crate) fn fetch(
        &self,
        stub: &Stub<Sim>,
        cpu: usize,
        regs: &mut TrapRegisters,
    ) -> Option<TrapOutcome> {
        if self.read(regs.pc, 1)[0] != 0xcc {
            return None;
        }
        self.set_cpu(cpu);
        regs.pc += 1;
        Some(stub.on_breakpoint(regs))
    }
}

impl Platform for Sim {
    fn arch(&self) -> Arch {
        Arch::X86_64
    }

    fn kernel_name(&self) -> &str {
        "sim-kernel 1.0"
    }

    fn build_id(&self) -> &[u8] {
        &[0xab; 20]
    }

    fn cpu_count(&self) -> usize {
        self.cpus.load(Ordering::SeqCst)
    }

    fn cpu_id(&self) -> usize {
        THREAD_CPU
            .with(Cell::get)
            .unwrap_or_else(|| self.cpu.load(Ordering::SeqCst))
    }

    fn task_id(&self) -> u64 {
        100 + self.cpu_id() as u64
    }

    fn task_name(&self, dst: &mut [u8]) -> usize {
        let name = b"sim-task";
        let len = name.len().min(dst.len());
        dst[..len].copy_from_slice(&name[..len]);
        len
    }

    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn read_kernel(&self, dst: &mut [u8], src: u64) -> Result<(), Fault> {
        let hook = self.read_hook.lock().unwrap().take();
        if let Some(mut hook) = hook {
            hook(src);
            let mut slot = self.read_hook.lock().unwrap();
            if slot.is_none() {
                *slot = Some(hook);
            }
        }
        let mut memory = self.memory.lock().unwrap();
        dst.copy_from_slice(memory.slice(src, dst.len())?);
        Ok(())
    }

    fn write_text(&self, address: u64, bytes: &[u8]) -> Result<(), TextError> {
        let mut memory = self.memory.lock().unwrap();
        if memory.refuse_text_writes {
            return Err(TextError::NotText);
        }
        let in_text = address >= TEXT_BASE && address < TEXT_BASE + TEXT_SIZE as u64;
        let in_area = address >= AREA_BASE && address < AREA_BASE + AREA_SIZE as u64;
        if !in_text && !in_area {
            return Err(TextError::NotText);
        }
        // The stub's promise: over live kernel text, one byte at a time.
        assert!(
            !in_text || bytes.len() == 1,
            "multi-byte write over live text"
        );
        memory
            .slice(address, bytes.len())
            .map_err(|_| TextError::NotText)?
            .copy_from_slice(bytes);
        memory.text_writes.push((address, bytes.to_vec()));
        Ok(())
    }

    fn write_text_stopped(
        &self,
        avoid: &[Range<u64>],
        writes: &[(u64, &[u8])],
    ) -> Result<bool, TextError> {
        let mut memory = self.memory.lock().unwrap();
        if memory.no_stopped_writes || memory.refuse_text_writes {
            return Err(TextError::Unsupported);
        }
        if memory
            .resume_points
            .iter()
            .any(|point| avoid.iter().any(|range| range.contains(point)))
        {
            return Ok(false);
        }
        for (address, bytes) in writes {
            let in_text = *address >= TEXT_BASE && *address < TEXT_BASE + TEXT_SIZE as u64;
            if !in_text {
                return Err(TextError::NotText);
            }
            memory
                .slice(*address, bytes.len())
                .map_err(|_| TextError::NotText)?
                .copy_from_slice(bytes);
            memory.stopped_writes.push((*address, bytes.to_vec()));
        }
        Ok(true)
    }

    fn write_kernel(&self, address: u64, bytes: &[u8]) -> Result<(), Fault> {
        let in_data = (address >= STACK_BASE && address < STACK_BASE + STACK_SIZE as u64)
            || (address >= DATA_BASE && address < DATA_BASE + DATA_SIZE as u64);
        if !in_data {
            return Err(Fault { address });
        }
        let mut memory = self.memory.lock().unwrap();
        memory.slice(address, bytes.len())?.copy_from_slice(bytes);
        Ok(())
    }

    fn out_of_line_area(&self) -> Range<u64> {
        AREA_BASE..AREA_BASE + self.area_size.load(Ordering::SeqCst) as u64
    }

    fn without_interrupts<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }

    fn forbidden_text(&self) -> &[Range<u64>] {
        &FORBIDDEN_RANGES
    }

    fn function_start(&self, address: u64) -> Option<u64> {
        let memory = self.memory.lock().unwrap();
        memory
            .function_starts
            .iter()
            .find(|(range, _)| range.contains(&address))
            .map(|(_, start)| *start)
    }

    fn markers(&self) -> &'static [MarkerSite] {
        self.markers.get().copied().unwrap_or(&[])
    }

    /// Walks frame pointers on the simulated stack: `[fp]` is the caller's frame
    /// pointer, `[fp + 8]` the return address.
    fn stack_trace(&self, frame_pointer: u64, dst: &mut [u64]) -> usize {
        let mut memory = self.memory.lock().unwrap();
        let mut fp = frame_pointer;
        let mut count = 0;
        while count < dst.len() {
            let Ok(frame) = memory.slice(fp, 16) else {
                break;
            };
            let next = u64::from_le_bytes(frame[..8].try_into().unwrap());
            dst[count] = u64::from_le_bytes(frame[8..].try_into().unwrap());
            count += 1;
            if next <= fp {
                break;
            }
            fp = next;
        }
        count
    }

    fn wake_server(&self) {
        self.wakeups.fetch_add(1, Ordering::SeqCst);
    }
}

/// A stub of its own, in a static (it is megabytes of tables, like in a kernel).
/// Test files declare `#[macro_use] mod common;`.
macro_rules! new_stub {
    () => {{
        static STUB: kernel_stub::Stub<common::Sim> = kernel_stub::Stub::new(common::Sim::new());
        &STUB
    }};
}

/// Assembles a program into its wire bytes.
pub(crate) fn program(text: &str) -> Vec<u8> {
    isa::encode(&assemble(text).unwrap_or_else(|error| panic!("{error}\n{text}")))
}

/// `r0 = 0; exit`.
pub(crate) fn noop() -> Vec<u8> {
    program("mov64 r0, 0\nexit")
}

/// Emits the context slots `slots` as one record of 8-byte values.
pub(crate) fn emit_slots(slots: &[usize]) -> Vec<u8> {
    let mut text = String::new();
    let size = slots.len() * 8;
    for (index, slot) in slots.iter().enumerate() {
        text += &format!(
            "ldxdw r2, [r1+{}]\nstxdw [r10-{}], r2\n",
            slot * 8,
            size - index * 8
        );
    }
    text += &format!(
        "mov64 r1, r10\nadd64 r1, -{size}\nmov64 r2, {size}\ncall emit\nmov64 r0, 0\nexit"
    );
    program(&text)
}

/// One reply, kept as its encoded message.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    bytes: Vec<u8>,
}

impl Reply {
    pub(crate) fn seq(&self) -> u32 {
        match decode_stub_message(&self.bytes).unwrap() {
            StubMessage::Reply { seq, .. } => seq,
            other => panic!("not a reply: {other:?}"),
        }
    }

    pub(crate) fn result(&self) -> Result<ReplyBody<'_>, ErrorReply<'_>> {
        match decode_stub_message(&self.bytes).unwrap() {
            StubMessage::Reply { reply, .. } => reply,
            other => panic!("not a reply: {other:?}"),
        }
    }

    /// The success body; panics with the error otherwise.
    pub(crate) fn ok(&self) -> ReplyBody<'_> {
        self.result()
            .unwrap_or_else(|error| panic!("expected success, got {error}"))
    }

    /// The error; panics on success.
    pub(crate) fn err(&self) -> ErrorReply<'_> {
        match self.result() {
            Ok(body) => panic!("expected an error, got {body:?}"),
            Err(error) => error,
        }
    }

    /// Asserts the error code and detail.
    pub(crate) fn assert_err(&self, code: ErrorCode, detail: ErrorDetail<'_>) {
        let error = self.err();
        assert_eq!((error.code, error.detail), (code, detail), "{error}");
    }

    pub(crate) fn probe(&self) -> u32 {
        match self.ok() {
            ReplyBody::Armed { probe } => probe.0,
            other => panic!("not armed: {other:?}"),
        }
    }
}

/// An event, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OwnedEvent {
    pub(crate) cpu: u16,
    pub(crate) seq: u64,
    pub(crate) probe: u32,
    pub(crate) time_ns: u64,
    pub(crate) data: Vec<u8>,
}

impl OwnedEvent {
    /// The record as little-endian u64 words.
    pub(crate) fn words(&self) -> Vec<u64> {
        self.data
            .chunks(8)
            .map(|chunk| {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                u64::from_le_bytes(word)
            })
            .collect()
    }
}

/// A client talking to a stub through `Stub::handle` (of the simulated
/// platform, or of another test's).
pub(crate) struct Client<P: Platform + 'static = Sim> {
    pub(crate) stub: &'static Stub<P>,
    next_seq: u32,
    pub(crate) events: Vec<OwnedEvent>,
    pub(crate) losses: Vec<LostEvents>,
}

impl Client<Sim> {
    pub(crate) fn sim(&self) -> &'static Sim {
        self.stub.platform()
    }

    /// Arms a dynamic probe with the right expected bytes; returns its number.
    pub(crate) fn arm_dynamic(&mut self, address: u64, program: &[u8]) -> u32 {
        let expected = self.sim().read(address, 1);
        self.arm(
            Site::Dynamic {
                address,
                expected: &expected,
            },
            program,
        )
        .probe()
    }
}

impl<P: Platform> Client<P> {
    pub(crate) fn new(stub: &'static Stub<P>) -> Self {
        Self {
            stub,
            next_seq: 1,
            events: Vec::new(),
            losses: Vec::new(),
        }
    }

    /// Collects a message; returns it if it is a reply.
    fn take(&mut self, message: &StubMessage<'_>) -> Option<Reply> {
        match message {
            StubMessage::Reply { .. } => Some(Reply {
                bytes: encode(message).unwrap(),
            }),
            StubMessage::Event(event) => {
                self.events.push(OwnedEvent {
                    cpu: event.cpu,
                    seq: event.seq,
                    probe: event.probe.0,
                    time_ns: event.time_ns,
                    data: event.data.to_vec(),
                });
                None
            }
            StubMessage::Lost(lost) => {
                self.losses.push(*lost);
                None
            }
        }
    }

    /// Sends one payload; returns the replies it got (exactly one, normally).
    pub(crate) fn send_payload(&mut self, payload: &[u8]) -> Vec<Reply> {
        let mut replies = Vec::new();
        let stub = self.stub;
        stub.handle(payload, &mut |message| {
            if let Some(reply) = self.take(message) {
                replies.push(reply);
            }
        });
        replies
    }

    /// Sends a request; asserts exactly one reply with its sequence number.
    pub(crate) fn send(&mut self, body: RequestBody<'_>) -> Reply {
        let seq = self.next_seq;
        self.next_seq += 1;
        let payload = encode(&Request { seq, body }).unwrap();
        let mut replies = self.send_payload(&payload);
        assert_eq!(replies.len(), 1, "exactly one reply");
        let reply = replies.remove(0);
        assert_eq!(reply.seq(), seq);
        reply
    }

    pub(crate) fn hello(&mut self) -> Reply {
        self.send(RequestBody::Hello(Hello {
            min_version: 1,
            max_version: 1,
            client: "test",
        }))
    }

    /// The handshake, asserted successful.
    pub(crate) fn open(&mut self) {
        let reply = self.hello();
        assert!(matches!(reply.ok(), ReplyBody::Hello(_)));
    }

    pub(crate) fn done(&mut self, body: RequestBody<'_>) {
        let reply = self.send(body);
        assert_eq!(reply.ok(), ReplyBody::Done);
    }

    pub(crate) fn arm(&mut self, site: Site<'_>, program: &[u8]) -> Reply {
        self.send(RequestBody::Arm(ArmRequest { site, program }))
    }

    pub(crate) fn drain(&mut self) {
        let stub = self.stub;
        stub.drain(&mut |message| {
            assert!(self.take(message).is_none(), "a reply while draining");
        });
    }

    pub(crate) fn probe_stats(&mut self, probe: u32) -> probe_port_protocol::message::ProbeStats {
        match self
            .send(RequestBody::ProbeStats {
                probe: ProbeId(probe),
            })
            .ok()
        {
            ReplyBody::ProbeStats(stats) => stats,
            other => panic!("{other:?}"),
        }
    }

    pub(crate) fn cpu_stats(&mut self, cpu: u16) -> probe_port_protocol::message::CpuStats {
        match self.send(RequestBody::CpuStats { cpu }).ok() {
            ReplyBody::CpuStats(stats) => stats,
            other => panic!("{other:?}"),
        }
    }

    /// Every page of a map, entries concatenated.
    pub(crate) fn read_map(&mut self, map: u16) -> (u32, Vec<u8>) {
        let mut cursor = 0;
        let mut count = 0;
        let mut entries = Vec::new();
        loop {
            let reply = self.send(RequestBody::ReadMap {
                map: probe_port_protocol::maps::MapId(map),
                cursor,
            });
            match reply.ok() {
                ReplyBody::MapPage(page) => {
                    count += page.count;
                    entries.extend_from_slice(page.entries);
                    match page.next_cursor {
                        Some(next) => cursor = next,
                        None => return (count, entries),
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

/// Registers at a call of a function: `rsp` points at the return address (which
/// the test writes), `rbp` is a frame pointer, and arguments as given.
pub(crate) fn call_registers(pc: u64, rsp: u64, args: &[u64]) -> TrapRegisters {
    let mut regs = TrapRegisters {
        pc,
        flags: 0x202,
        ..TrapRegisters::default()
    };
    regs.regs[7] = rsp;
    regs.regs[6] = rsp + 0x100;
    for (slot, value) in [5usize, 4, 1, 2, 8, 9].iter().zip(args) {
        regs.regs[*slot] = *value;
    }
    regs
}

/// The target of the `jmp rel32` (opcode `e9`) at `at` in the simulated memory.
pub(crate) fn jump_target(sim: &Sim, at: u64) -> u64 {
    let bytes = sim.read(at, 5);
    assert_eq!(bytes[0], 0xe9, "a rel32 jump at {at:#x}");
    let rel = i32::from_le_bytes(bytes[1..5].try_into().unwrap());
    (at + 5).wrapping_add(rel as i64 as u64)
}

/// The slot address of the `index`th probe slot (1-based).
pub(crate) fn slot_address(index: usize) -> u64 {
    AREA_BASE + (index * SLOT_SIZE) as u64
}

/// Whether `pc` is inside the out-of-line area.
pub(crate) fn in_area(pc: u64) -> bool {
    (AREA_BASE..AREA_BASE + AREA_SIZE as u64).contains(&pc)
}
