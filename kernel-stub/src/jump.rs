//! Jump probes: a dynamic probe entered by a `jmp` to a detour instead of `int3`.
//!
//! # Design
//!
//! A breakpoint costs a trap and a return from it on every hit. A jump probe
//! overwrites the first instructions at the probe's address (whole instructions,
//! at least [`JUMP_LEN`] bytes: the *window*) with `jmp rel32` to a *detour* the
//! stub writes into its out-of-line area once per address and boot:
//!
//! ```text
//! pushfq                        ; the flags, before anything changes them
//! cli                           ; probe context runs with interrupts off
//! cld                           ; the ABI's direction flag for the Rust code
//! lea rsp, [rsp - S]            ; S = size_of::<ProbeContext>()
//! mov [rsp + 8*n], reg          ; every register but rsp, in slot n (DWARF number)
//! lea rax, [rsp + S + 8]        ; the probed code's rsp
//! mov [rsp + 8*7], rax
//! mov rax, [rsp + S]            ; the flags pushfq saved
//! mov [rsp + 8*FLAGS], rax
//! mov rax, ADDRESS              ; the probe's address
//! mov [rsp + 8*PC], rax
//! xor eax, eax
//! mov [rsp + 8*n], rax          ; every slot from PROBE on: zero
//! mov rdi, rsp                  ; &mut ProbeContext
//! mov rsi, COOKIE               ; the stub
//! mov rbx, rsp                  ; rbx is callee-saved: it keeps the frame
//! and rsp, -16                  ; the ABI's alignment at the call
//! mov rax, ENTRY
//! call rax                      ; ENTRY(context, cookie): the handler
//! mov rsp, rbx
//! <the saved flags back>        ; `restore_flags`: one by one, or popfq
//! mov reg, [rsp + 8*n]          ; every register but rsp, back
//! lea rsp, [rsp + S + 8]        ; the frame and the flags pushfq saved
//! <the window's instructions>   ; copies, RIP-relative operands fixed up
//! jmp ADDRESS + window          ; rel32, or jmp [rip+0] and the address
//! ```
//!
//! The flags usually come back without `popfq`, which is slow under QEMU's TCG;
//! see `restore_flags`. Jump probes take RFLAGS.IF as the kernel's interrupt
//! mask, as `cli` and `sti` do (see `Platform::write_text_stopped`).
//!
//! The frame *is* the handler's probe context (PROTOCOL.md §6.2): the registers
//! by DWARF number, `PC`, `FLAGS`, and zero in every later slot until the stub
//! writes `PROBE`. A hit builds nothing and copies nothing.
//!
//! The window's instructions must be able to run anywhere ([`arch::prepare`] runs
//! them out of line) and must not transfer control: no branch, call or return,
//! direct or indirect, and nothing [`arch::prepare`] emulates. Their copies run
//! with every register, flag and stack byte as the original would have had them.
//!
//! # Invariants
//!
//! - The detour changes no register, no flag and nothing above the probed code's
//!   stack pointer before it runs the copies (kernels have no red zone, so the
//!   bytes below the stack pointer are free).
//! - Building never panics and never writes past [`MAX_DETOUR`] bytes.

use core::mem::offset_of;

use probe_port_protocol::context::{CONTEXT_SLOTS, ProbeContext, slot};

use crate::arch::{self, MAX_INSN_LEN, SLOT_SIZE};

/// Bytes of the jump written at the probe's address (`jmp rel32`).
pub(crate) const JUMP_LEN: usize = 5;
/// Out-of-line slots one detour takes.
pub(crate) const DETOUR_SLOTS: usize = 14;
/// The longest detour.
pub(crate) const MAX_DETOUR: usize = DETOUR_SLOTS * SLOT_SIZE;
/// The longest window: the instructions that cover [`JUMP_LEN`] bytes.
pub(crate) const MAX_WINDOW: usize = JUMP_LEN - 1 + MAX_INSN_LEN;

/// The detour's frame: a [`ProbeContext`].
const FRAME: usize = size_of::<ProbeContext>();
const REGS: usize = offset_of!(ProbeContext, slots) + 8 * slot::REGISTER_BASE;
const PC: usize = offset_of!(ProbeContext, slots) + 8 * slot::PC;
const FLAGS: usize = offset_of!(ProbeContext, slots) + 8 * slot::FLAGS;
/// The first slot the detour zeroes: everything after the registers, `PC` and
/// `FLAGS`.
const ZEROED: usize = slot::PROBE;
const _: () = assert!(FRAME < 1024 && FRAME == 8 * CONTEXT_SLOTS);
const _: () = assert!(slot::PC == slot::REGISTER_SLOTS && slot::FLAGS == slot::PC + 1);
const _: () = assert!(ZEROED == slot::FLAGS + 1);
const _: () = assert!(8 * (CONTEXT_SLOTS - ZEROED) <= 0x80);

/// The x86 register number of each DWARF register number 0..16.
const X86_NUMBER: [u8; 16] = [0, 2, 1, 3, 6, 7, 5, 4, 8, 9, 10, 11, 12, 13, 14, 15];
/// DWARF number of rsp, which the detour computes instead of storing.
const RSP: usize = 7;

/// Why a window cannot take a jump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DetourError {
    /// The whole instructions covering [`JUMP_LEN`] bytes are longer than the
    /// window the client vouched for (or the bytes given).
    WindowTooShort,
    /// The instruction at this address cannot run from the detour.
    Unrelocatable(u64),
    /// The detour would not fit [`MAX_DETOUR`] bytes.
    TooLarge,
}

/// A detour's code, ready to be written at the address it was built for.
pub(crate) struct Detour {
    bytes: [u8; MAX_DETOUR],
    len: usize,
    /// Bytes of original code the jump covers (the window actually used).
    pub(crate) covered: usize,
}

impl Detour {
    /// The code.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A byte buffer that refuses to overflow.
struct Emitter {
    bytes: [u8; MAX_DETOUR],
    len: usize,
    overflowed: bool,
}

impl Emitter {
    fn new() -> Self {
        Emitter {
            bytes: [0xcc; MAX_DETOUR],
            len: 0,
            overflowed: false,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, bytes: &[u8]) {
        match self.bytes.get_mut(self.len..self.len + bytes.len()) {
            Some(room) => {
                room.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => self.overflowed = true,
        }
    }

    /// `mov [rsp + displacement], reg` (store) or `mov reg, [rsp + displacement]`.
    fn rsp_relative(&mut self, store: bool, register: u8, displacement: usize) {
        let rex = 0x48 | if register >= 8 { 0x04 } else { 0 };
        let opcode = if store { 0x89 } else { 0x8b };
        let reg = (register & 7) << 3;
        match u8::try_from(displacement) {
            Ok(short) if short < 0x80 => {
                self.push(&[rex, opcode, 0x44 | reg, 0x24, short]);
            }
            _ => {
                self.push(&[rex, opcode, 0x84 | reg, 0x24]);
                self.push(&(displacement as u32).to_le_bytes());
            }
        }
    }

    /// `lea reg, [rsp + displacement]` (reg 0..8 only).
    fn lea_rsp(&mut self, register: u8, displacement: i32) {
        self.push(&[0x48, 0x8d, 0x84 | ((register & 7) << 3), 0x24]);
        self.push(&displacement.to_le_bytes());
    }

    /// `mov reg, imm64` (reg 0..8 only).
    fn mov_imm64(&mut self, register: u8, value: u64) {
        self.push(&[0x48, 0xb8 | (register & 7)]);
        self.push(&value.to_le_bytes());
    }

    fn address(&self, base: u64) -> u64 {
        base.wrapping_add(self.len as u64)
    }
}

/// Builds the detour for a jump at `address`, placed at `detour_address`.
/// `code` holds the original bytes from `address` (up to [`MAX_WINDOW`] are
/// decoded); `window` is how many of them the client vouches no branch enters.
/// The detour calls `entry(context: &mut ProbeContext, cookie)`.
pub(crate) fn build(
    address: u64,
    code: &[u8],
    window: usize,
    detour_address: u64,
    entry: u64,
    cookie: u64,
) -> Result<Detour, DetourError> {
    let code = code.get(..MAX_WINDOW).unwrap_or(code);
    let mut out = Emitter::new();
    // pushfq; cli; cld (`restore_flags` puts IF and DF back)
    out.push(&[0x9c, 0xfa, 0xfc]);
    out.lea_rsp(4, -(FRAME as i32)); // lea rsp, [rsp - FRAME]
    for (dwarf, &register) in X86_NUMBER.iter().enumerate() {
        if dwarf != RSP {
            out.rsp_relative(true, register, REGS + 8 * dwarf);
        }
    }
    out.lea_rsp(0, FRAME as i32 + 8); // lea rax, [rsp + FRAME + 8]
    out.rsp_relative(true, 0, REGS + 8 * RSP);
    out.rsp_relative(false, 0, FRAME); // mov rax, [rsp + FRAME]: the flags
    out.rsp_relative(true, 0, FLAGS);
    out.mov_imm64(0, address);
    out.rsp_relative(true, 0, PC);
    // xor eax, eax; lea rdi, [rsp + 8 * ZEROED]; mov [rdi + 8 * n], rax for every
    // later slot: one-byte displacements (rdi is set again below).
    const ZERO_RAX_POINT_RDI: [u8; 10] = join(&[
        &[0x31, 0xc0, 0x48, 0x8d, 0xbc, 0x24],
        &((8 * ZEROED) as u32).to_le_bytes(),
    ]);
    out.push(&ZERO_RAX_POINT_RDI);
    for zeroed in 0..CONTEXT_SLOTS - ZEROED {
        out.push(&[0x48, 0x89, 0x47, (8 * zeroed) as u8]);
    }
    out.push(&[0x48, 0x89, 0xe7]); // mov rdi, rsp
    out.mov_imm64(6, cookie); // mov rsi, cookie
    out.push(&[0x48, 0x89, 0xe3, 0x48, 0x83, 0xe4, 0xf0]); // mov rbx, rsp; and rsp, -16
    out.mov_imm64(0, entry);
    out.push(&[0xff, 0xd0, 0x48, 0x89, 0xdc]); // call rax; mov rsp, rbx
    restore_flags(&mut out, arch::has_lahf_sahf(), 0, &[0xfb]);
    for (dwarf, &register) in X86_NUMBER.iter().enumerate() {
        if dwarf != RSP {
            out.rsp_relative(false, register, REGS + 8 * dwarf);
        }
    }
    out.lea_rsp(4, FRAME as i32 + 8); // lea rsp, [rsp + FRAME + 8]: the frame and the flags

    let mut covered = 0;
    while covered < JUMP_LEN {
        let at = address.wrapping_add(covered as u64);
        let rest = code.get(covered..).unwrap_or(&[]);
        if rest.is_empty() || covered >= window {
            return Err(DetourError::WindowTooShort);
        }
        let (displaced, slot) = arch::prepare(at, rest, out.address(detour_address))
            .map_err(|_| DetourError::Unrelocatable(at))?;
        let len = displaced.len();
        if displaced.is_emulated() || transfers_control(displaced.original()) {
            return Err(DetourError::Unrelocatable(at));
        }
        if covered + len > window {
            return Err(DetourError::WindowTooShort);
        }
        out.push(
            slot.bytes()
                .get(..len)
                .ok_or(DetourError::Unrelocatable(at))?,
        );
        covered += len;
    }

    let back = address.wrapping_add(covered as u64);
    let after = out.address(detour_address).wrapping_add(JUMP_LEN as u64);
    match i32::try_from(back.wrapping_sub(after) as i64) {
        Ok(relative) => {
            out.push(&[0xe9]);
            out.push(&relative.to_le_bytes());
        }
        Err(_) => {
            out.push(&[0xff, 0x25, 0, 0, 0, 0]);
            out.push(&back.to_le_bytes());
        }
    }
    if out.overflowed {
        return Err(DetourError::TooLarge);
    }
    Ok(Detour {
        bytes: out.bytes,
        len: out.len,
        covered,
    })
}

/// Flags the detour clears itself: IF (`cli`) and DF (`cld`).
const CLEARED: u32 = 0x200 | 0x400;
/// The arithmetic flags: CF, PF, AF, ZF, SF and OF.
const ARITHMETIC: u32 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x800;

/// Puts back the flags of the frame's `FLAGS` slot. Clobbers `rax` and `rcx`
/// (restored after).
///
/// `popfq` does it exactly, but under QEMU's TCG a `popf` ends the translation
/// block (in the demo kernel ten `pushfq; popfq` pairs cost about 47 TSC cycles
/// each, a plain `mov` under one). So when the flags differ from the saved ones
/// only where the detour itself changed them (the arithmetic flags, and IF and DF
/// cleared), and the CPU has `lahf`/`sahf` in 64-bit mode (CPUID 8000_0001h
/// ECX[0]; without it `sahf` is undefined), it puts them back one by one: DF and
/// IF with `std` and `enable_interrupts` (`sti`) when they were set; OF by an
/// addition that overflows exactly when it was set; SF, ZF, AF, PF and CF with
/// `sahf`. Any other difference (a platform method that changed AC, TF or IF,
/// say) takes `popfq`. `check_ignores` are flags the check does not compare (0;
/// the native tests, which run with IF set, ignore IF).
fn restore_flags(out: &mut Emitter, lahf_sahf: bool, check_ignores: u32, enable_interrupts: &[u8]) {
    // The constant runs of code are spelled out at compile time, one push each.
    const FLAGS_32: [u8; 4] = (FLAGS as u32).to_le_bytes();
    const FLAGS_BYTE_1: [u8; 4] = (FLAGS as u32 + 1).to_le_bytes();
    // push qword [rsp + FLAGS]; popfq
    const EXACT: [u8; 8] = join(&[&[0xff, 0xb4, 0x24], &FLAGS_32, &[0x9d]]);
    const TEST_DF_THEN_IF: [u8; 19] = join(&[
        // test byte [rsp + FLAGS + 1], 0x04 (DF: bit 10); jz +1; std
        &[0xf6, 0x84, 0x24],
        &FLAGS_BYTE_1,
        &[0x04, 0x74, 0x01, 0xfd],
        // test byte [rsp + FLAGS + 1], 0x02 (IF: bit 9)
        &[0xf6, 0x84, 0x24],
        &FLAGS_BYTE_1,
        &[0x02],
    ]);
    const OVERFLOW_THEN_SAHF: [u8; 22] = join(&[
        // mov al, [rsp + FLAGS + 1]
        &[0x8a, 0x84, 0x24],
        &FLAGS_BYTE_1,
        // and al, 8 (OF: bit 11); shl al, 4; add al, 0x80: -128 + -128
        // overflows, 0 + -128 does not.
        &[0x24, 0x08, 0xc0, 0xe0, 0x04, 0x04, 0x80],
        // mov ah, [rsp + FLAGS]; sahf: SF, ZF, AF, PF, CF
        &[0x8a, 0xa4, 0x24],
        &FLAGS_32,
        &[0x9e],
    ]);
    const COMPARE: [u8; 22] = join(&[
        // pushfq; pop rax: the flags now
        &[0x9c, 0x58],
        // mov rcx, [rsp + FLAGS]: the flags saved
        &[0x48, 0x8b, 0x8c, 0x24],
        &FLAGS_32,
        // and rcx, !CLEARED: as the detour left them
        &[0x48, 0x81, 0xe1],
        &(!CLEARED).to_le_bytes(),
        // xor rax, rcx; test rax, (the immediate follows)
        &[0x48, 0x31, 0xc8, 0x48, 0xa9],
    ]);
    if !lahf_sahf {
        out.push(&EXACT);
        return;
    }

    let mut fast = Emitter::new();
    fast.push(&TEST_DF_THEN_IF);
    fast.push(&[0x74, enable_interrupts.len() as u8]); // jz past
    fast.push(enable_interrupts);
    fast.push(&OVERFLOW_THEN_SAHF);
    fast.push(&[0xeb, EXACT.len() as u8]); // jmp past the exact restore

    out.push(&COMPARE);
    out.push(&(!(ARITHMETIC | check_ignores)).to_le_bytes()); // test rax, !(ARITHMETIC | check_ignores)
    out.push(&[0x75, fast.len as u8]); // jnz to the exact restore
    out.push(fast.bytes());
    out.push(&EXACT);
}

/// The concatenation of `parts`, which must be `N` bytes in all (at compile time).
const fn join<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut out = [0; N];
    let mut at = 0;
    let mut part = 0;
    while part < parts.len() {
        let mut index = 0;
        while index < parts[part].len() {
            out[at] = parts[part][index];
            at += 1;
            index += 1;
        }
        part += 1;
    }
    assert!(at == N, "the parts are not N bytes");
    out
}

/// Whether `bytes` (one instruction) is an indirect `call` or `jmp` (`FF /2../5`),
/// which [`arch::prepare`] may run out of line but which never reaches the
/// detour's jump back. Undecodable bytes count as one (prepare refused them first).
fn transfers_control(bytes: &[u8]) -> bool {
    arch::decode::decode(bytes).is_none_or(|instruction| {
        instruction.map() == arch::decode::OpcodeMap::Primary
            && instruction.opcode() == 0xff
            && instruction.reg().is_some_and(|reg| (2..=5).contains(&reg))
    })
}

/// The jump written at `address` to `target`: `jmp rel32`, if it reaches.
pub(crate) fn jump(address: u64, target: u64) -> Option<[u8; JUMP_LEN]> {
    let relative =
        i32::try_from(target.wrapping_sub(address.wrapping_add(JUMP_LEN as u64)) as i64).ok()?;
    let mut bytes = [0xe9, 0, 0, 0, 0];
    bytes[1..].copy_from_slice(&relative.to_le_bytes());
    Some(bytes)
}

#[cfg(all(test, target_arch = "x86_64", unix))]
mod tests {
    use super::*;

    /// The flags `restore_flags` puts back: the arithmetic flags and DF.
    const RESTORED: u64 = (ARITHMETIC | 0x400) as u64;
    /// AC, which user mode may set and clear with `popfq`.
    const AC: u64 = 1 << 18;
    /// `inc r10`: stands in for `sti` (user mode may not), counting its runs.
    const MARK: [u8; 3] = [0x49, 0xff, 0xc2];

    /// Runs `restore_flags`'s code natively with a frame whose `FLAGS` slot is
    /// `saved`, after setting the flags to `before`; returns the flags it leaves
    /// and how often the interrupt-enabling instruction ran. The check ignores IF
    /// (always set in user mode).
    fn run_restore(lahf_sahf: bool, saved: u64, before: u64) -> (u64, u64) {
        let mut out = Emitter::new();
        out.push(&[0x49, 0x89, 0xe3]); // mov r11, rsp
        out.push(&[0x48, 0x89, 0xfc]); // mov rsp, rdi: the frame
        out.push(&[0x4d, 0x31, 0xd2]); // xor r10, r10
        out.push(&[0x56, 0x9d]); // push rsi; popfq: the flags before
        restore_flags(&mut out, lahf_sahf, 0x200, &MARK);
        out.push(&[0x9c, 0x58]); // pushfq; pop rax
        out.push(&[0x4c, 0x89, 0xd2]); // mov rdx, r10
        // push 0x202; popfq: AC and DF clear again for the caller
        out.push(&[0x68, 0x02, 0x02, 0x00, 0x00, 0x9d]);
        out.push(&[0x4c, 0x89, 0xdc, 0xc3]); // mov rsp, r11; ret
        assert!(!out.overflowed);

        // The frame, with room below it for the pushes.
        let mut stack = [0u64; 2 * CONTEXT_SLOTS];
        stack[CONTEXT_SLOTS + slot::FLAGS] = saved;
        let frame = stack[CONTEXT_SLOTS..].as_mut_ptr();

        // SAFETY: an anonymous private mapping, checked, unmapped below.
        let page = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED);
        // SAFETY: the page is writable and larger than the code, then made
        // executable; the code is a function `(frame, flags) -> (flags, marks)`
        // that uses only the frame's memory and clears DF and AC and puts rsp back
        // before returning.
        let result = unsafe {
            core::ptr::copy_nonoverlapping(out.bytes.as_ptr(), page.cast::<u8>(), out.len);
            assert_eq!(
                libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC),
                0
            );
            let code: extern "sysv64" fn(*mut u64, u64) -> u128 = core::mem::transmute(page);
            let result = code(frame, before);
            libc::munmap(page, 4096);
            result
        };
        (result as u64, (result >> 64) as u64)
    }

    /// Every combination of the 7 bits given, over `0x2` (bit 1 is always set).
    fn combinations(bits: &[u64]) -> impl Iterator<Item = u64> + '_ {
        (0u64..1 << bits.len()).map(move |pick| {
            bits.iter()
                .enumerate()
                .filter(|(index, _)| pick & (1 << index) != 0)
                .fold(0x2, |flags, (_, bit)| flags | bit)
        })
    }

    #[test]
    fn the_flags_come_back_one_by_one_when_only_the_detours_changes_differ() {
        let bits = [0x1, 0x4, 0x10, 0x40, 0x80, 0x400, 0x800, 0x200];
        for saved in combinations(&bits) {
            // As the detour leaves them: IF and DF clear, the arithmetic flags
            // anything (IF is set in user mode whatever the code does).
            for before in [0x202, 0x202 | (RESTORED & !0x400)] {
                let (after, marks) = run_restore(true, saved, before);
                assert_eq!(after & RESTORED, saved & RESTORED, "saved {saved:#x}");
                // Nothing else changed, AC included.
                assert_eq!(after & !RESTORED, before & !RESTORED, "saved {saved:#x}");
                let enabled = u64::from(saved & 0x200 != 0);
                assert_eq!(marks, enabled, "interrupts enabled iff IF was saved set");
            }
        }
    }

    #[test]
    fn any_other_difference_takes_popfq() {
        // The handler left AC set: popfq puts back the saved flags exactly.
        for saved in combinations(&[0x1, 0x40, 0x400, 0x800]) {
            let (after, marks) = run_restore(true, saved, 0x202 | AC);
            assert_eq!(after & (RESTORED | AC), saved & (RESTORED | AC));
            assert_eq!(marks, 0);
        }
        // Without lahf/sahf, always popfq.
        for saved in combinations(&[0x1, 0x40, 0x400, 0x800, AC]) {
            let (after, marks) = run_restore(false, saved | 0x200, 0x202);
            assert_eq!(after & (RESTORED | AC), saved & (RESTORED | AC));
            assert_eq!(marks, 0);
        }
    }

    #[test]
    fn the_longest_detour_fits() {
        // The longest window: a 4-byte instruction, then one of 15 bytes (eight DS
        // prefixes on `mov qword [rax], 0x12345678`), with a jump back too far for
        // rel32; and the flags' longer restore (this CPU has lahf/sahf).
        assert!(arch::has_lahf_sahf());
        let mut code = [0u8; MAX_WINDOW];
        code[..4].copy_from_slice(&[0x48, 0x8b, 0x47, 0x08]); // mov rax, [rdi+8]
        code[4..12].fill(0x3e);
        code[12..].copy_from_slice(&[0x48, 0xc7, 0x00, 0x78, 0x56, 0x34, 0x12]);
        let detour = build(
            0x1000,
            &code,
            MAX_WINDOW,
            0x7fff_0000_0000,
            u64::MAX,
            u64::MAX,
        )
        .unwrap_or_else(|error| panic!("{error:?}"));
        assert_eq!(detour.covered, MAX_WINDOW);
        assert!(detour.bytes().len() <= MAX_DETOUR);
        eprintln!(
            "the longest detour: {} of {MAX_DETOUR} bytes",
            detour.bytes().len()
        );
    }
}
