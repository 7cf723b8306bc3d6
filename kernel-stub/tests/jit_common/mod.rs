//! Shared harness of the JIT tests: executable memory on the host, a recording
//! [`Helpers`], and one call that runs a program on both executors and compares.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use kernel_stub::interpreter::{
    EntrySaveError, Fault, Full, Helpers, Trap, TrapKind, run_on_stack,
};
use kernel_stub::jit::JitScratch;
use kernel_stub::jit::x86_64::{JitProgram, compile, max_code_size};
use probe_port_protocol::context::{ENTRY_SLOTS, ProbeContext};
use probe_port_protocol::isa::{Insn, STACK_SIZE};
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapShapes, MapSpec};
use probe_port_protocol::verifier::{ProgramKind, VerifiedProgram, VerifierConfig, verify_alloc};

// ---------------------------------------------------------------------------
// Executable memory
// ---------------------------------------------------------------------------

/// A page-aligned mapping that holds compiled code: writable while code is
/// copied in, then read-and-execute only.
pub struct ExecBuffer {
    base: *mut u8,
    len: usize,
}

impl ExecBuffer {
    pub fn new(len: usize) -> Self {
        let len = len.next_multiple_of(4096);
        // SAFETY: an anonymous private mapping with no address hint; the result
        // is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap failed");
        Self {
            base: base.cast(),
            len,
        }
    }

    fn protect(&self, protection: libc::c_int) {
        // SAFETY: the range is exactly this buffer's own mapping.
        let result = unsafe { libc::mprotect(self.base.cast(), self.len, protection) };
        assert_eq!(result, 0, "mprotect failed");
    }

    /// Copies `code` in and returns the program it is, with `stack_depth`.
    ///
    /// The previous program of this buffer must not run any more.
    pub fn load(&mut self, code: &[u8], stack_depth: usize) -> JitProgram {
        assert!(code.len() <= self.len, "code larger than the buffer");
        self.protect(libc::PROT_READ | libc::PROT_WRITE);
        // SAFETY: the mapping is writable and at least `code.len()` bytes long.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), self.base, code.len()) };
        self.protect(libc::PROT_READ | libc::PROT_EXEC);
        // SAFETY: the bytes are `compile`'s output for a verified program of this
        // depth (every caller passes them straight from `compile`), now in
        // executable memory that stays until the next `load` or the drop.
        unsafe { JitProgram::new(self.base, stack_depth) }
    }
}

impl Drop for ExecBuffer {
    fn drop(&mut self) {
        // SAFETY: unmapping this buffer's own mapping.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Compiles and loads a verified program, with a fresh scratch.
pub struct Jit {
    scratch: Box<JitScratch>,
    code: Vec<u8>,
    buffer: ExecBuffer,
}

impl Default for Jit {
    fn default() -> Self {
        Self::new()
    }
}

impl Jit {
    pub fn new() -> Self {
        Self {
            scratch: Box::new(JitScratch::new()),
            code: vec![0; max_code_size(4096)],
            buffer: ExecBuffer::new(max_code_size(4096)),
        }
    }

    /// Compiles `program` (panicking if the JIT refuses it) and loads it.
    pub fn load(&mut self, program: &VerifiedProgram<'_>) -> JitProgram {
        let len = self.compile(program);
        self.buffer.load(&self.code[..len], program.stack_depth())
    }

    /// Compiles `program` and returns the code size.
    pub fn compile(&mut self, program: &VerifiedProgram<'_>) -> usize {
        compile(program, &mut self.code, &mut self.scratch)
            .unwrap_or_else(|error| panic!("JIT refused a verified program: {error}"))
    }

    pub fn code(&self) -> &[u8] {
        &self.code
    }
}

// ---------------------------------------------------------------------------
// Maps and helpers
// ---------------------------------------------------------------------------

/// Where the recorder's pretend kernel memory starts.
pub const KERNEL_BASE: u64 = 0xffff_8880_0000_0000;

pub fn map_specs() -> Vec<MapSpec> {
    let spec = |map, kind, key_size, value_size, max_entries| MapSpec {
        map: MapId(map),
        kind,
        key_size,
        value_size,
        max_entries,
    };
    vec![
        spec(1, MapKind::Hash, 8, 8, 4),
        spec(2, MapKind::Aggregate(AggregateKind::Count), 8, 8, 4),
        spec(3, MapKind::Hash, 4, 16, 2),
        spec(4, MapKind::Aggregate(AggregateKind::Sum), 8, 8, 3),
        spec(5, MapKind::Hash, 16, 8, 8),
    ]
}

/// The maps every test program is verified against.
pub struct TestMaps(pub Vec<MapSpec>);

impl MapShapes for TestMaps {
    fn spec(&self, map: MapId) -> Option<MapSpec> {
        self.0.spec(map)
    }
}

/// Verifies `insns` as a program of `kind` against the maps `specs`.
pub fn verify_with<'p>(
    insns: &'p [Insn],
    kind: ProgramKind,
    specs: &[MapSpec],
) -> Result<VerifiedProgram<'p>, probe_port_protocol::verifier::VerifyError> {
    let maps = TestMaps(specs.to_vec());
    verify_alloc(insns, &VerifierConfig::new(kind, &maps))
}

/// One helper call as the executor saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Read {
        user: bool,
        string: bool,
        len: usize,
        src: u64,
    },
    Cpu,
    TaskId,
    TaskName {
        len: usize,
    },
    TimeNs,
    MapLookup {
        map: u16,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    MapUpdate {
        map: u16,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    MapDelete {
        map: u16,
        key: Vec<u8>,
    },
    Aggregate {
        map: u16,
        key: Vec<u8>,
        value: i64,
    },
    Emit(Vec<u8>),
    StackTrace {
        len: usize,
    },
    EntrySave {
        slot: usize,
        value: u64,
    },
}

/// How a [`Recorder`] behaves, so runs can exercise every helper outcome.
#[derive(Clone, Copy, Debug, Default)]
pub struct Behaviour {
    /// Records `emit` accepts before the ring is full.
    pub emit_capacity: usize,
    /// `entry_save` answers: 0 accepts, 1 not an entry program, 2 full.
    pub entry_save: u8,
    /// A map `map_spec` pretends not to know (a helper trap).
    pub hidden_map: Option<u16>,
    /// `read_*_str` claims this count instead of the true one.
    pub lie_about_length: Option<usize>,
}

/// An in-memory executor logging every call with its arguments and buffers.
#[derive(Clone, Debug)]
pub struct Recorder {
    pub calls: Vec<Call>,
    pub maps: BTreeMap<(u16, Vec<u8>), Vec<u8>>,
    pub sums: BTreeMap<(u16, Vec<u8>), i64>,
    pub entry: [Option<u64>; ENTRY_SLOTS],
    specs: Vec<MapSpec>,
    kernel: Vec<u8>,
    behaviour: Behaviour,
    clock: u64,
    emitted: usize,
}

impl Recorder {
    pub fn new(behaviour: Behaviour, specs: &[MapSpec]) -> Self {
        let mut kernel = b"hello, kernel!\0".to_vec();
        kernel.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        kernel.extend_from_slice(b"a longer kernel string for the tests\0");
        kernel.extend((0..64u8).map(|byte| byte.wrapping_mul(37) | 1));
        Self {
            calls: Vec::new(),
            maps: BTreeMap::new(),
            sums: BTreeMap::new(),
            entry: [None; ENTRY_SLOTS],
            specs: specs.to_vec(),
            kernel,
            behaviour,
            clock: 1_000,
            emitted: 0,
        }
    }

    fn copy(&self, dst: &mut [u8], src: u64, user: bool) -> Result<(), Fault> {
        // User memory is the kernel bytes seen 0x1000 lower, to tell them apart.
        let base = if user {
            KERNEL_BASE - 0x1000
        } else {
            KERNEL_BASE
        };
        for (index, byte) in dst.iter_mut().enumerate() {
            let address = src.wrapping_add(index as u64);
            let offset = address.wrapping_sub(base);
            match self.kernel.get(offset as usize) {
                Some(value) if offset < self.kernel.len() as u64 => *byte = *value,
                _ => return Err(Fault { address }),
            }
        }
        Ok(())
    }

    fn read_str(&mut self, dst: &mut [u8], src: u64, user: bool) -> Result<usize, Fault> {
        self.calls.push(Call::Read {
            user,
            string: true,
            len: dst.len(),
            src,
        });
        let limit = dst.len() - 1;
        for (index, slot) in dst[..limit].iter_mut().enumerate() {
            let mut byte = [0u8];
            self.copy(&mut byte, src.wrapping_add(index as u64), user)?;
            *slot = byte[0];
            if byte[0] == 0 {
                return Ok(self.behaviour.lie_about_length.unwrap_or(index + 1));
            }
        }
        dst[limit] = 0;
        Ok(self.behaviour.lie_about_length.unwrap_or(dst.len()))
    }

    fn read(&mut self, dst: &mut [u8], src: u64, user: bool) -> Result<(), Fault> {
        self.calls.push(Call::Read {
            user,
            string: false,
            len: dst.len(),
            src,
        });
        self.copy(dst, src, user)
    }

    fn count_of(&self, map: u16) -> usize {
        self.maps.keys().filter(|(id, _)| *id == map).count()
            + self.sums.keys().filter(|(id, _)| *id == map).count()
    }

    fn room_for(&self, map: MapId, present: bool) -> bool {
        let max = self
            .map_spec(map)
            .map_or(0, |spec| spec.max_entries as usize);
        present || self.count_of(map.0) < max
    }
}

impl Helpers for Recorder {
    fn read_kernel(&mut self, dst: &mut [u8], src: u64) -> Result<(), Fault> {
        self.read(dst, src, false)
    }

    fn read_kernel_str(&mut self, dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        self.read_str(dst, src, false)
    }

    fn read_user(&mut self, dst: &mut [u8], src: u64) -> Result<(), Fault> {
        self.read(dst, src, true)
    }

    fn read_user_str(&mut self, dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        self.read_str(dst, src, true)
    }

    fn cpu(&mut self) -> u64 {
        self.calls.push(Call::Cpu);
        3
    }

    fn task_id(&mut self) -> u64 {
        self.calls.push(Call::TaskId);
        4242
    }

    fn task_name(&mut self, dst: &mut [u8]) -> usize {
        self.calls.push(Call::TaskName { len: dst.len() });
        let name = b"kworker/0:1";
        let length = name.len().min(dst.len());
        dst[..length].copy_from_slice(&name[..length]);
        length
    }

    fn time_ns(&mut self) -> u64 {
        self.calls.push(Call::TimeNs);
        self.clock += 17;
        self.clock
    }

    fn map_spec(&self, map: MapId) -> Option<MapSpec> {
        if self.behaviour.hidden_map == Some(map.0) {
            return None;
        }
        self.specs.spec(map)
    }

    fn map_lookup(&mut self, map: MapId, key: &[u8], value: &mut [u8]) -> bool {
        self.calls.push(Call::MapLookup {
            map: map.0,
            key: key.to_vec(),
            value: value.to_vec(),
        });
        match self.maps.get(&(map.0, key.to_vec())) {
            Some(stored) => {
                value.copy_from_slice(stored);
                true
            }
            None => false,
        }
    }

    fn map_update(&mut self, map: MapId, key: &[u8], value: &[u8]) -> Result<(), Full> {
        self.calls.push(Call::MapUpdate {
            map: map.0,
            key: key.to_vec(),
            value: value.to_vec(),
        });
        let entry = (map.0, key.to_vec());
        if !self.room_for(map, self.maps.contains_key(&entry)) {
            return Err(Full);
        }
        self.maps.insert(entry, value.to_vec());
        Ok(())
    }

    fn map_delete(&mut self, map: MapId, key: &[u8]) -> bool {
        self.calls.push(Call::MapDelete {
            map: map.0,
            key: key.to_vec(),
        });
        self.maps.remove(&(map.0, key.to_vec())).is_some()
    }

    fn aggregate(&mut self, map: MapId, key: &[u8], value: i64) -> Result<(), Full> {
        self.calls.push(Call::Aggregate {
            map: map.0,
            key: key.to_vec(),
            value,
        });
        let entry = (map.0, key.to_vec());
        if !self.room_for(map, self.sums.contains_key(&entry)) {
            return Err(Full);
        }
        let sum = self.sums.entry(entry).or_insert(0);
        *sum = sum.wrapping_add(value);
        Ok(())
    }

    fn emit(&mut self, record: &[u8]) -> Result<(), Full> {
        self.calls.push(Call::Emit(record.to_vec()));
        if self.emitted >= self.behaviour.emit_capacity {
            return Err(Full);
        }
        self.emitted += 1;
        Ok(())
    }

    fn stack_trace(&mut self, dst: &mut [u8]) -> usize {
        self.calls.push(Call::StackTrace { len: dst.len() });
        let frames = [0xffff_ffff_8100_1234u64, 0xffff_ffff_8100_5678, 0x42];
        let mut written = 0;
        for (chunk, frame) in dst.chunks_exact_mut(8).zip(frames) {
            chunk.copy_from_slice(&frame.to_le_bytes());
            written += 1;
        }
        written
    }

    fn entry_save(&mut self, slot: usize, value: u64) -> Result<(), EntrySaveError> {
        self.calls.push(Call::EntrySave { slot, value });
        match self.behaviour.entry_save {
            0 => {
                self.entry[slot] = Some(value);
                Ok(())
            }
            1 => Err(EntrySaveError::NotEntryProgram),
            _ => Err(EntrySaveError::Full),
        }
    }
}

// ---------------------------------------------------------------------------
// Differential runs
// ---------------------------------------------------------------------------

/// Everything observable of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result<u64, Trap>,
    pub calls: Vec<Call>,
    pub stack: Vec<u8>,
    pub maps: BTreeMap<(u16, Vec<u8>), Vec<u8>>,
    pub sums: BTreeMap<(u16, Vec<u8>), i64>,
    pub entry: [Option<u64>; ENTRY_SLOTS],
}

/// The handler stack both executors share, so `r10` is the same number in both.
#[repr(C, align(16))]
pub struct Stack(pub [u8; STACK_SIZE]);

/// Stale bytes put on the stack before each run: neither executor may show them.
const STALE: u8 = 0xa5;

/// Runs `verified` (compiled as `jit`) on both executors with the same context,
/// stack buffer and helper behaviour; returns (interpreter, JIT) outcomes.
pub fn run_both(
    verified: &VerifiedProgram<'_>,
    jit: &JitProgram,
    context: &ProbeContext,
    behaviour: Behaviour,
    specs: &[MapSpec],
    stack: &mut Stack,
) -> (Outcome, Outcome) {
    let mut outcome = |use_jit: bool| {
        stack.0.fill(STALE);
        let mut recorder = Recorder::new(behaviour, specs);
        let result = if use_jit {
            jit.run(context, &mut recorder, &mut stack.0)
        } else {
            run_on_stack(
                verified.insns(),
                context,
                &mut recorder,
                &mut stack.0,
                verified.stack_depth(),
            )
        };
        Outcome {
            result,
            calls: recorder.calls,
            stack: stack.0.to_vec(),
            maps: recorder.maps,
            sums: recorder.sums,
            entry: recorder.entry,
        }
    };
    let interpreted = outcome(false);
    let compiled = outcome(true);
    (interpreted, compiled)
}

/// Asserts that both executors agree; `what` names the case in the failure.
pub fn assert_same(interpreted: &Outcome, compiled: &Outcome, what: &dyn Fn() -> String) {
    if interpreted != compiled {
        let mut diff = String::new();
        if interpreted.result != compiled.result {
            diff += &format!(
                "r0/trap: interpreter {:x?}, JIT {:x?}\n",
                interpreted.result, compiled.result
            );
        }
        if interpreted.calls != compiled.calls {
            diff += &format!(
                "calls:\n  interpreter {:x?}\n  JIT         {:x?}\n",
                interpreted.calls, compiled.calls
            );
        }
        if interpreted.stack != compiled.stack {
            let first = interpreted
                .stack
                .iter()
                .zip(&compiled.stack)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            diff += &format!(
                "stack differs first at byte {first} (r10 - {})\n",
                STACK_SIZE - first
            );
        }
        if interpreted.maps != compiled.maps || interpreted.sums != compiled.sums {
            diff += "maps differ\n";
        }
        if interpreted.entry != compiled.entry {
            diff += "entry slots differ\n";
        }
        panic!("{}\n{diff}", what());
    }
}

/// A trap kind, for tests that want a specific one.
pub fn is_unknown_map(result: &Result<u64, Trap>) -> bool {
    matches!(
        result,
        Err(Trap {
            kind: TrapKind::UnknownMap { .. },
            ..
        })
    )
}

/// Lists a program for failure messages.
pub fn listing(insns: &[Insn]) -> String {
    insns
        .iter()
        .enumerate()
        .map(|(index, insn)| format!("{index:4}: {insn:?}\n"))
        .collect()
}
