//! A minimal x86-64 instruction encoder: exactly the forms the JIT emits.
//!
//! # Design
//!
//! [`Encoder`] appends instructions to a byte buffer. It runs in two modes: a
//! measuring pass that only counts bytes (to learn every slot's offset before any
//! jump is written) and a writing pass. Writes past the end of the buffer are
//! dropped and remembered as an overflow, never performed, so the encoder cannot
//! write out of bounds whatever it is asked to emit.
//!
//! Encodings follow the Intel SDM, volume 2: an optional operand-size prefix
//! (`0x66`), a REX prefix (`0100WRXB`), the opcode, a ModRM byte and, for memory
//! operands, a SIB byte when the base is `rsp`/`r12` and an 8- or 32-bit
//! displacement. Memory operands always carry a displacement (ModRM mode 01 or
//! 10), which sidesteps the `rbp`/`r13` special case of mode 00.

/// A general-purpose register by its hardware number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reg {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

impl Reg {
    /// The low three bits, as ModRM and opcode-embedded register fields take them.
    const fn low(self) -> u8 {
        self as u8 & 7
    }
}

/// Operand width of an instruction: 32-bit forms zero-extend into the full register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Width {
    W32,
    W64,
}

/// Condition codes, as the low nibble of `Jcc`/`CMOVcc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Cond {
    /// Below (unsigned less).
    B = 0x2,
    /// Above or equal (unsigned).
    Ae = 0x3,
    /// Equal / zero.
    E = 0x4,
    /// Not equal / not zero.
    Ne = 0x5,
    /// Below or equal (unsigned).
    Be = 0x6,
    /// Above (unsigned greater).
    A = 0x7,
    /// Less (signed).
    L = 0xc,
    /// Greater or equal (signed).
    Ge = 0xd,
    /// Less or equal (signed).
    Le = 0xe,
    /// Greater (signed).
    G = 0xf,
}

/// Two-operand ALU opcodes in their `r/m, reg` form, with the `/digit` of their
/// `r/m, imm` form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alu {
    Add,
    Or,
    And,
    Sub,
    Xor,
    Cmp,
}

impl Alu {
    /// The opcode of `op r/m, reg`.
    const fn opcode(self) -> u8 {
        match self {
            Alu::Add => 0x01,
            Alu::Or => 0x09,
            Alu::And => 0x21,
            Alu::Sub => 0x29,
            Alu::Xor => 0x31,
            Alu::Cmp => 0x39,
        }
    }

    /// The ModRM `reg` digit of `op r/m, imm` (opcodes 0x81 and 0x83).
    const fn digit(self) -> u8 {
        match self {
            Alu::Add => 0,
            Alu::Or => 1,
            Alu::And => 4,
            Alu::Sub => 5,
            Alu::Xor => 6,
            Alu::Cmp => 7,
        }
    }
}

/// Shift operations, by their ModRM digit in opcodes 0xC1 and 0xD3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shift {
    Shl = 4,
    Shr = 5,
    Sar = 7,
}

/// One-operand group-3 operations (opcode 0xF7), by their ModRM digit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unary {
    Neg = 3,
    Div = 6,
    Idiv = 7,
}

/// Sizes of memory accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Size {
    B1,
    B2,
    B4,
    B8,
}

/// A forward 8-bit jump waiting for its target.
#[derive(Clone, Copy, Debug)]
#[must_use]
pub(crate) struct Label8 {
    /// Offset of the displacement byte.
    at: usize,
}

/// Appends encoded instructions to a buffer (or only counts them).
pub(crate) struct Encoder<'o> {
    out: &'o mut [u8],
    /// Bytes emitted so far: the offset of the next instruction.
    position: usize,
    /// Whether bytes are stored (`false` in the measuring pass).
    writing: bool,
    /// Whether a byte fell past the end of `out` (and was dropped).
    overflow: bool,
}

/// Words [`Encoder::zero_below`] zeroes with single stores (their displacements
/// all fit a byte).
pub(crate) const ZERO_STORES: u32 = 16;
/// The most bytes [`Encoder::zero_below`] emits: `xor` and the stores.
pub(crate) const ZERO_BYTES: usize = 3 + 4 * ZERO_STORES as usize;

fn fits_i8(value: i32) -> bool {
    i8::try_from(value).is_ok()
}

impl<'o> Encoder<'o> {
    /// An encoder that only counts bytes.
    pub(crate) fn measuring() -> Encoder<'static> {
        Encoder {
            out: &mut [],
            position: 0,
            writing: false,
            overflow: false,
        }
    }

    /// An encoder that writes into `out`.
    pub(crate) fn writing(out: &'o mut [u8]) -> Self {
        Encoder {
            out,
            position: 0,
            writing: true,
            overflow: false,
        }
    }

    /// The offset of the next byte.
    pub(crate) fn position(&self) -> usize {
        self.position
    }

    /// Whether a byte was dropped for lack of room.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow
    }

    fn byte(&mut self, value: u8) {
        if self.writing {
            match self.out.get_mut(self.position) {
                Some(slot) => *slot = value,
                None => self.overflow = true,
            }
        }
        self.position += 1;
    }

    fn bytes(&mut self, values: &[u8]) {
        for value in values {
            self.byte(*value);
        }
    }

    fn imm32(&mut self, value: i32) {
        self.bytes(&value.to_le_bytes());
    }

    /// A REX prefix for `reg` (ModRM.reg) and `rm` (ModRM.rm or opcode register),
    /// emitted only when it has a bit set or `force` asks for it (byte registers
    /// `spl`, `bpl`, `sil`, `dil` exist only with a REX prefix).
    fn rex(&mut self, width: Width, reg: u8, rm: u8, force: bool) {
        let w = u8::from(width == Width::W64);
        let value = 0x40 | (w << 3) | (((reg >> 3) & 1) << 2) | ((rm >> 3) & 1);
        if value != 0x40 || force {
            self.byte(value);
        }
    }

    /// ModRM for a register-direct operand.
    fn modrm_direct(&mut self, reg: u8, rm: Reg) {
        self.byte(0xc0 | ((reg & 7) << 3) | rm.low());
    }

    /// ModRM (and SIB, displacement) for the memory operand `[base + disp]`.
    fn modrm_memory(&mut self, reg: u8, base: Reg, disp: i32) {
        let mode = if fits_i8(disp) { 0x40 } else { 0x80 };
        self.byte(mode | ((reg & 7) << 3) | base.low());
        if base.low() == Reg::Rsp.low() {
            // SIB: no index, base in ModRM.rm's place.
            self.byte(0x24);
        }
        if fits_i8(disp) {
            self.byte(disp as u8);
        } else {
            self.imm32(disp);
        }
    }

    /// `op dst, src` for the two-operand ALU group (also `cmp`).
    pub(crate) fn alu_rr(&mut self, op: Alu, width: Width, dst: Reg, src: Reg) {
        self.rex(width, src as u8, dst as u8, false);
        self.byte(op.opcode());
        self.modrm_direct(src as u8, dst);
    }

    /// `op dst, imm` with the immediate sign-extended to the operand width.
    pub(crate) fn alu_ri(&mut self, op: Alu, width: Width, dst: Reg, imm: i32) {
        self.rex(width, 0, dst as u8, false);
        if fits_i8(imm) {
            self.byte(0x83);
            self.modrm_direct(op.digit(), dst);
            self.byte(imm as u8);
        } else {
            self.byte(0x81);
            self.modrm_direct(op.digit(), dst);
            self.imm32(imm);
        }
    }

    /// `test dst, src`.
    pub(crate) fn test_rr(&mut self, width: Width, dst: Reg, src: Reg) {
        self.rex(width, src as u8, dst as u8, false);
        self.byte(0x85);
        self.modrm_direct(src as u8, dst);
    }

    /// `test dst, imm` (the immediate sign-extended to the operand width).
    pub(crate) fn test_ri(&mut self, width: Width, dst: Reg, imm: i32) {
        self.rex(width, 0, dst as u8, false);
        self.byte(0xf7);
        self.modrm_direct(0, dst);
        self.imm32(imm);
    }

    /// `mov dst, src`. The 32-bit form zero-extends into the full register.
    pub(crate) fn mov_rr(&mut self, width: Width, dst: Reg, src: Reg) {
        self.rex(width, src as u8, dst as u8, false);
        self.byte(0x89);
        self.modrm_direct(src as u8, dst);
    }

    /// Loads the 64-bit constant `value` into `dst` with the shortest form.
    pub(crate) fn mov_imm64(&mut self, dst: Reg, value: u64) {
        if value == 0 {
            // xor r32, r32: zero, and zero-extended.
            self.alu_rr(Alu::Xor, Width::W32, dst, dst);
        } else if let Ok(value) = u32::try_from(value) {
            // mov r32, imm32 (B8+r) zero-extends.
            self.rex(Width::W32, 0, dst as u8, false);
            self.byte(0xb8 + dst.low());
            self.bytes(&value.to_le_bytes());
        } else if let Ok(value) = i32::try_from(value as i64) {
            // mov r/m64, imm32 (C7 /0) sign-extends.
            self.rex(Width::W64, 0, dst as u8, false);
            self.byte(0xc7);
            self.modrm_direct(0, dst);
            self.imm32(value);
        } else {
            // mov r64, imm64 (REX.W B8+r).
            self.rex(Width::W64, 0, dst as u8, false);
            self.byte(0xb8 + dst.low());
            self.bytes(&value.to_le_bytes());
        }
    }

    /// `imul dst, src` (the low half of the product, signed or not).
    pub(crate) fn imul_rr(&mut self, width: Width, dst: Reg, src: Reg) {
        self.rex(width, dst as u8, src as u8, false);
        self.bytes(&[0x0f, 0xaf]);
        self.modrm_direct(dst as u8, src);
    }

    /// `imul dst, dst, imm` (the immediate sign-extended to the operand width).
    pub(crate) fn imul_ri(&mut self, width: Width, dst: Reg, imm: i32) {
        self.rex(width, dst as u8, dst as u8, false);
        if fits_i8(imm) {
            self.byte(0x6b);
            self.modrm_direct(dst as u8, dst);
            self.byte(imm as u8);
        } else {
            self.byte(0x69);
            self.modrm_direct(dst as u8, dst);
            self.imm32(imm);
        }
    }

    /// `neg`, `div` or `idiv` of a register.
    pub(crate) fn unary(&mut self, op: Unary, width: Width, dst: Reg) {
        self.rex(width, 0, dst as u8, false);
        self.byte(0xf7);
        self.modrm_direct(op as u8, dst);
    }

    /// `shl`/`shr`/`sar dst, count` with a non-zero immediate count.
    pub(crate) fn shift_ri(&mut self, op: Shift, width: Width, dst: Reg, count: u8) {
        self.rex(width, 0, dst as u8, false);
        self.byte(0xc1);
        self.modrm_direct(op as u8, dst);
        self.byte(count);
    }

    /// `shl`/`shr`/`sar dst, cl`.
    pub(crate) fn shift_cl(&mut self, op: Shift, width: Width, dst: Reg) {
        self.rex(width, 0, dst as u8, false);
        self.byte(0xd3);
        self.modrm_direct(op as u8, dst);
    }

    /// `cqo` (64-bit) or `cdq` (32-bit): sign-extend `rax` into `rdx`.
    pub(crate) fn sign_extend_rax(&mut self, width: Width) {
        self.rex(width, 0, 0, false);
        self.byte(0x99);
    }

    /// `bswap dst` (32-bit form zero-extends).
    pub(crate) fn bswap(&mut self, width: Width, dst: Reg) {
        self.rex(width, 0, dst as u8, false);
        self.bytes(&[0x0f, 0xc8 + dst.low()]);
    }

    /// `ror dst16, 8`: swaps the two low bytes, leaving the rest as it was.
    pub(crate) fn swap_low_bytes(&mut self, dst: Reg) {
        self.byte(0x66);
        self.rex(Width::W32, 0, dst as u8, false);
        self.byte(0xc1);
        self.modrm_direct(1, dst);
        self.byte(8);
    }

    /// `movzx dst32, src16`.
    pub(crate) fn movzx16_rr(&mut self, dst: Reg, src: Reg) {
        self.rex(Width::W32, dst as u8, src as u8, false);
        self.bytes(&[0x0f, 0xb7]);
        self.modrm_direct(dst as u8, src);
    }

    /// Sign-extends the low `from` bytes (1, 2 or 4) of `src` into `dst` at
    /// `width` (`movsx`/`movsxd`); the 32-bit forms zero-extend above.
    pub(crate) fn movsx_rr(&mut self, width: Width, from: Size, dst: Reg, src: Reg) {
        match from {
            Size::B1 => {
                self.rex(width, dst as u8, src as u8, true);
                self.bytes(&[0x0f, 0xbe]);
            }
            Size::B2 => {
                self.rex(width, dst as u8, src as u8, false);
                self.bytes(&[0x0f, 0xbf]);
            }
            Size::B4 | Size::B8 => {
                self.rex(Width::W64, dst as u8, src as u8, false);
                self.byte(0x63);
            }
        }
        self.modrm_direct(dst as u8, src);
    }

    /// Loads `size` bytes at `[base + disp]` into `dst`, zero-extended
    /// (`signed`: sign-extended to 64 bits).
    pub(crate) fn load(&mut self, size: Size, signed: bool, dst: Reg, base: Reg, disp: i32) {
        let (reg, rm) = (dst as u8, base as u8);
        match (size, signed) {
            (Size::B1, false) => {
                self.rex(Width::W32, reg, rm, false);
                self.bytes(&[0x0f, 0xb6]);
            }
            (Size::B2, false) => {
                self.rex(Width::W32, reg, rm, false);
                self.bytes(&[0x0f, 0xb7]);
            }
            (Size::B4, false) => {
                self.rex(Width::W32, reg, rm, false);
                self.byte(0x8b);
            }
            (Size::B8, _) => {
                self.rex(Width::W64, reg, rm, false);
                self.byte(0x8b);
            }
            (Size::B1, true) => {
                self.rex(Width::W64, reg, rm, false);
                self.bytes(&[0x0f, 0xbe]);
            }
            (Size::B2, true) => {
                self.rex(Width::W64, reg, rm, false);
                self.bytes(&[0x0f, 0xbf]);
            }
            (Size::B4, true) => {
                self.rex(Width::W64, reg, rm, false);
                self.byte(0x63);
            }
        }
        self.modrm_memory(reg, base, disp);
    }

    /// Stores the low `size` bytes of `src` at `[base + disp]`.
    pub(crate) fn store_reg(&mut self, size: Size, base: Reg, disp: i32, src: Reg) {
        let (reg, rm) = (src as u8, base as u8);
        match size {
            Size::B1 => {
                self.rex(Width::W32, reg, rm, true);
                self.byte(0x88);
            }
            Size::B2 => {
                self.byte(0x66);
                self.rex(Width::W32, reg, rm, false);
                self.byte(0x89);
            }
            Size::B4 => {
                self.rex(Width::W32, reg, rm, false);
                self.byte(0x89);
            }
            Size::B8 => {
                self.rex(Width::W64, reg, rm, false);
                self.byte(0x89);
            }
        }
        self.modrm_memory(reg, base, disp);
    }

    /// Stores the immediate at `[base + disp]`: its low byte, low half, all of it,
    /// or (8 bytes) sign-extended to 64 bits.
    pub(crate) fn store_imm(&mut self, size: Size, base: Reg, disp: i32, imm: i32) {
        let rm = base as u8;
        match size {
            Size::B1 => {
                self.rex(Width::W32, 0, rm, false);
                self.byte(0xc6);
                self.modrm_memory(0, base, disp);
                self.byte(imm as u8);
            }
            Size::B2 => {
                self.byte(0x66);
                self.rex(Width::W32, 0, rm, false);
                self.byte(0xc7);
                self.modrm_memory(0, base, disp);
                self.bytes(&(imm as u16).to_le_bytes());
            }
            Size::B4 | Size::B8 => {
                let width = if size == Size::B8 {
                    Width::W64
                } else {
                    Width::W32
                };
                self.rex(width, 0, rm, false);
                self.byte(0xc7);
                self.modrm_memory(0, base, disp);
                self.imm32(imm);
            }
        }
    }

    /// `mov dst, [base + disp]` (64-bit).
    pub(crate) fn load64(&mut self, dst: Reg, base: Reg, disp: i32) {
        self.load(Size::B8, false, dst, base, disp);
    }

    /// `call [base + disp]`.
    pub(crate) fn call_indirect(&mut self, base: Reg, disp: i32) {
        self.rex(Width::W32, 0, base as u8, false);
        self.byte(0xff);
        self.modrm_memory(2, base, disp);
    }

    /// The 32-bit displacement from the end of a jump at the current position,
    /// `length` bytes long, to `target`.
    fn rel32(&self, length: usize, target: usize) -> i32 {
        // Both offsets are below the buffer length, far below i32::MAX.
        (target as i64 - (self.position + length) as i64) as i32
    }

    /// `jcc rel32` to the code offset `target`.
    pub(crate) fn jcc(&mut self, cond: Cond, target: usize) {
        let rel = self.rel32(6, target);
        self.bytes(&[0x0f, 0x80 + cond as u8]);
        self.imm32(rel);
    }

    /// `jmp rel32` to the code offset `target`.
    pub(crate) fn jmp(&mut self, target: usize) {
        let rel = self.rel32(5, target);
        self.byte(0xe9);
        self.imm32(rel);
    }

    /// `jcc rel8` (or `jmp rel8` without a condition) to a label bound later,
    /// at most 127 bytes ahead.
    pub(crate) fn jump8(&mut self, cond: Option<Cond>) -> Label8 {
        match cond {
            Some(cond) => self.byte(0x70 + cond as u8),
            None => self.byte(0xeb),
        }
        let at = self.position;
        self.byte(0);
        Label8 { at }
    }

    /// Binds `label` to the current position. A label too far for 8 bits marks
    /// the encoding as failed (like an overflow), so such code is never used.
    pub(crate) fn bind(&mut self, label: Label8) {
        let distance = self.position - (label.at + 1);
        if distance > 127 {
            self.overflow = true;
        } else if self.writing
            && let Some(slot) = self.out.get_mut(label.at)
        {
            *slot = distance as u8;
        }
    }

    pub(crate) fn push(&mut self, reg: Reg) {
        self.rex(Width::W32, 0, reg as u8, false);
        self.byte(0x50 + reg.low());
    }

    pub(crate) fn pop(&mut self, reg: Reg) {
        self.rex(Width::W32, 0, reg as u8, false);
        self.byte(0x58 + reg.low());
    }

    pub(crate) fn ret(&mut self) {
        self.byte(0xc3);
    }

    /// Zeroes the `qwords` 8-byte words below `[base]`: stores of a zeroed `r11`
    /// for a few words, `rep stosq` (which takes `rdi`, `rcx` and `rax`) for more.
    /// At most [`ZERO_BYTES`] bytes of code.
    pub(crate) fn zero_below(&mut self, base: Reg, qwords: u32) {
        if qwords == 0 {
            return;
        }
        if qwords <= ZERO_STORES {
            self.alu_rr(Alu::Xor, Width::W32, Reg::R11, Reg::R11);
            for word in 1..=qwords as i32 {
                self.store_reg(Size::B8, base, -8 * word, Reg::R11);
            }
        } else {
            // lea rdi, [base - 8 * qwords]
            self.rex(Width::W64, Reg::Rdi as u8, base as u8, false);
            self.byte(0x8d);
            self.modrm_memory(Reg::Rdi as u8, base, -8 * qwords as i32);
            // mov ecx, qwords
            self.byte(0xb8 + Reg::Rcx.low());
            self.imm32(qwords as i32);
            self.alu_rr(Alu::Xor, Width::W32, Reg::Rax, Reg::Rax);
            self.bytes(&[0xf3, 0x48, 0xab]); // rep stosq
        }
    }

    /// `endbr64`: a landing pad for indirect branch tracking (a no-op elsewhere).
    pub(crate) fn endbr64(&mut self) {
        self.bytes(&[0xf3, 0x0f, 0x1e, 0xfa]);
    }
}
