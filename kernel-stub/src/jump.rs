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
//! std; sti                      ; each only if the saved flags had it
//! <OF, then sahf>               ; the arithmetic flags, from the saved flags
//! mov reg, [rsp + 8*n]          ; every register but rsp, back
//! lea rsp, [rsp + S + 8]        ; the frame and the flags pushfq saved
//! <the window's instructions>   ; copies, RIP-relative operands fixed up
//! jmp ADDRESS + window          ; rel32, or jmp [rip+0] and the address
//! ```
//!
//! No `popfq` at the end: see `restore_flags`.
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
    let mut out = Emitter {
        bytes: [0xcc; MAX_DETOUR],
        len: 0,
        overflowed: false,
    };
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
    out.push(&[0x31, 0xc0]); // xor eax, eax
    for zeroed in ZEROED..CONTEXT_SLOTS {
        out.rsp_relative(true, 0, 8 * zeroed);
    }
    out.push(&[0x48, 0x89, 0xe7]); // mov rdi, rsp
    out.mov_imm64(6, cookie); // mov rsi, cookie
    out.push(&[0x48, 0x89, 0xe3]); // mov rbx, rsp
    out.push(&[0x48, 0x83, 0xe4, 0xf0]); // and rsp, -16
    out.mov_imm64(0, entry);
    out.push(&[0xff, 0xd0]); // call rax
    out.push(&[0x48, 0x89, 0xdc]); // mov rsp, rbx
    restore_flags(&mut out);
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

/// Puts back the flags the detour changed, from the frame's `FLAGS` slot, without
/// `popfq` (under QEMU's TCG a `popf` ends the translation block; measured in the
/// demo kernel, ten `pushfq; popfq` pairs cost about 47 TSC cycles each, a plain
/// `mov` under one): DF and IF with `std`/`sti` when they were set (the detour
/// cleared them); OF by an addition that overflows exactly when it was set; SF,
/// ZF, AF, PF and CF with `sahf`. Clobbers `rax` (restored after); no other flag
/// changes.
fn restore_flags(out: &mut Emitter) {
    let flags_byte_1 = (FLAGS + 1) as u32;
    let test_byte_1 = |out: &mut Emitter, mask: u8| {
        out.push(&[0xf6, 0x84, 0x24]); // test byte [rsp + FLAGS + 1], mask
        out.push(&flags_byte_1.to_le_bytes());
        out.push(&[mask]);
    };
    test_byte_1(out, 0x04); // DF: bit 10
    out.push(&[0x74, 0x01, 0xfd]); // jz +1; std
    test_byte_1(out, 0x02); // IF: bit 9
    out.push(&[0x74, 0x01, 0xfb]); // jz +1; sti
    out.push(&[0x8a, 0x84, 0x24]); // mov al, [rsp + FLAGS + 1]
    out.push(&flags_byte_1.to_le_bytes());
    // and al, 8 (OF: bit 11); shl al, 4; add al, 0x80: -128 + -128 overflows,
    // 0 + -128 does not.
    out.push(&[0x24, 0x08, 0xc0, 0xe0, 0x04, 0x04, 0x80]);
    out.push(&[0x8a, 0xa4, 0x24]); // mov ah, [rsp + FLAGS]
    out.push(&(FLAGS as u32).to_le_bytes());
    out.push(&[0x9e]); // sahf: SF, ZF, AF, PF, CF
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The arithmetic flags and DF.
    const RESTORED: u64 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x400 | 0x800;

    /// Runs `restore_flags`'s code natively with a frame whose `FLAGS` slot is
    /// `saved` (IF clear: user mode may not `sti`), after setting the flags to
    /// `before`; returns the flags it leaves.
    fn run_restore(saved: u64, before: u64) -> u64 {
        let mut out = Emitter {
            bytes: [0xcc; MAX_DETOUR],
            len: 0,
            overflowed: false,
        };
        out.push(&[0x49, 0x89, 0xe3]); // mov r11, rsp
        out.push(&[0x48, 0x89, 0xfc]); // mov rsp, rdi: the frame
        out.push(&[0x56, 0x9d]); // push rsi; popfq: the flags before
        restore_flags(&mut out);
        out.push(&[0x9c, 0x58]); // pushfq; pop rax
        out.push(&[0xfc, 0x4c, 0x89, 0xdc, 0xc3]); // cld; mov rsp, r11; ret
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
        // executable; the code is a function `(frame, flags) -> flags` that uses
        // only the frame's memory and puts rsp and DF back before returning.
        unsafe {
            core::ptr::copy_nonoverlapping(out.bytes.as_ptr(), page.cast::<u8>(), out.len);
            assert_eq!(
                libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC),
                0
            );
            let code: extern "sysv64" fn(*mut u64, u64) -> u64 = core::mem::transmute(page);
            let flags = code(frame, before);
            libc::munmap(page, 4096);
            flags
        }
    }

    #[test]
    fn the_arithmetic_flags_and_df_come_back_without_popf() {
        for bits in 0u64..128 {
            // Every combination of CF, PF, AF, ZF, SF, DF and OF.
            let saved = [0x1, 0x4, 0x10, 0x40, 0x80, 0x400, 0x800]
                .iter()
                .enumerate()
                .filter(|(index, _)| bits & (1 << index) != 0)
                .fold(0x2, |flags, (_, bit)| flags | bit);
            // As in the detour: DF clear (its `cld`), the arithmetic flags anything.
            for before in [0x2, 0x2 | (RESTORED & !0x400)] {
                let after = run_restore(saved, before);
                assert_eq!(
                    after & RESTORED,
                    saved & RESTORED,
                    "saved {saved:#x}, before {before:#x}, after {after:#x}"
                );
            }
        }
    }
}
