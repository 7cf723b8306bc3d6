//! Instruction emission: a builder with forward labels, a stack-slot allocator and
//! one function per instruction shape the compiler uses.
//!
//! # Design
//!
//! Registers have fixed roles. `r9` keeps the context pointer for the whole
//! program (the verifier tracks it only in a register, never through the stack).
//! `r6`–`r8` hold expression temporaries by depth: the value of a subexpression at
//! depth `d` lives in `r6 + d`; a right operand that would need a fourth register
//! is computed after spilling the left one to a stack slot (see
//! `Lowerer::with_rhs`). `r0`–`r5` are scratch for helper calls, which clobber
//! them; nothing lives in them across a call.
//!
//! The 512-byte stack is 64 words. Locals, key and record buffers and spills get
//! word-aligned slots from a first-fit allocator; slots of one statement are freed
//! when it ends, slots of locals when their block ends.
//!
//! Every jump goes forward: `if`, `&&`, `||`, `?:` and early exits all jump to
//! labels bound later, and [`Builder::finish`] patches the offsets.

use probe_port_protocol::isa::{Helper, Insn, op};

/// The context pointer's register for the whole program.
pub(crate) const CTX: u8 = 9;
/// The frame pointer.
pub(crate) const FP: u8 = 10;
/// Temporaries by depth.
pub(crate) const TEMPS: [u8; 3] = [6, 7, 8];
/// Words of handler stack.
const STACK_WORDS: usize = 64;

/// A forward jump target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Label(usize);

/// A stack slot: `words` words starting at `r10 + offset` (offset negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) offset: i16,
    pub(crate) words: u8,
}

impl Slot {
    /// The offset of byte `at` of the slot from `r10`.
    pub(crate) fn at(self, at: u16) -> i16 {
        self.offset + at as i16
    }

    pub(crate) fn bytes(self) -> u16 {
        u16::from(self.words) * 8
    }
}

/// Conditional jump kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cond {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    SignedGt,
    SignedGe,
    SignedLt,
    SignedLe,
}

impl Cond {
    /// The condition that holds exactly when this one does not.
    pub(crate) fn inverse(self) -> Cond {
        match self {
            Cond::Eq => Cond::Ne,
            Cond::Ne => Cond::Eq,
            Cond::Gt => Cond::Le,
            Cond::Ge => Cond::Lt,
            Cond::Lt => Cond::Ge,
            Cond::Le => Cond::Gt,
            Cond::SignedGt => Cond::SignedLe,
            Cond::SignedGe => Cond::SignedLt,
            Cond::SignedLt => Cond::SignedGe,
            Cond::SignedLe => Cond::SignedGt,
        }
    }

    fn code(self) -> u8 {
        match self {
            Cond::Eq => op::JEQ,
            Cond::Ne => op::JNE,
            Cond::Gt => op::JGT,
            Cond::Ge => op::JGE,
            Cond::Lt => op::JLT,
            Cond::Le => op::JLE,
            Cond::SignedGt => op::JSGT,
            Cond::SignedGe => op::JSGE,
            Cond::SignedLt => op::JSLT,
            Cond::SignedLe => op::JSLE,
        }
    }
}

/// One program under construction.
#[derive(Debug)]
pub(crate) struct Builder {
    code: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
    used: [bool; STACK_WORDS],
    /// Slots to free at the end of each open statement, innermost last.
    frames: Vec<Vec<Slot>>,
}

impl Builder {
    pub(crate) fn new() -> Self {
        let mut builder = Builder {
            code: Vec::new(),
            labels: Vec::new(),
            fixups: Vec::new(),
            used: [false; STACK_WORDS],
            frames: Vec::new(),
        };
        builder.mov_reg(CTX, 1);
        builder
    }

    // ----- labels -----

    pub(crate) fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    pub(crate) fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.code.len());
    }

    /// Ends the program with `r0 = 0; exit` at `exit` and patches every jump.
    ///
    /// A label left unbound (lowering stopped at an error in the middle of an
    /// expression) jumps to the exit; such a program is never used.
    pub(crate) fn finish(mut self, exit: Label) -> Vec<Insn> {
        self.bind(exit);
        let exit_index = self.code.len();
        self.mov_imm(0, 0);
        self.push(Insn::new(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0));
        for (index, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[label.0].unwrap_or(exit_index);
            let distance = target as i64 - index as i64 - 1;
            self.code[index].off = distance as i16;
        }
        self.code
    }

    fn push(&mut self, insn: Insn) {
        self.code.push(insn);
    }

    // ----- stack -----

    /// A slot of at least `bytes` bytes, or `None` when the stack is full.
    pub(crate) fn alloc(&mut self, bytes: u16) -> Option<Slot> {
        let words = (bytes.max(1) as usize).div_ceil(8);
        if words > STACK_WORDS {
            return None;
        }
        let start = (0..=STACK_WORDS - words)
            .find(|start| self.used[*start..*start + words].iter().all(|used| !used))?;
        self.used[start..start + words].fill(true);
        Some(Slot {
            offset: -(((start + words) * 8) as i16),
            words: words as u8,
        })
    }

    pub(crate) fn free(&mut self, slot: Slot) {
        let end = (-slot.offset) as usize / 8;
        let start = end - slot.words as usize;
        self.used[start..end].fill(false);
    }

    /// A slot freed when the current statement ends.
    pub(crate) fn alloc_temp(&mut self, bytes: u16) -> Option<Slot> {
        let slot = self.alloc(bytes)?;
        match self.frames.last_mut() {
            Some(frame) => frame.push(slot),
            None => self.frames.push(vec![slot]),
        }
        Some(slot)
    }

    /// A slot freed when the statement `depth` frames out ends.
    pub(crate) fn alloc_in_frame(&mut self, frame: usize, bytes: u16) -> Option<Slot> {
        let slot = self.alloc(bytes)?;
        self.frames[frame].push(slot);
        Some(slot)
    }

    /// Takes a temporary slot out of its statement's list: the caller frees it.
    pub(crate) fn keep(&mut self, slot: Slot) {
        for frame in self.frames.iter_mut().rev() {
            if let Some(position) = frame.iter().position(|candidate| *candidate == slot) {
                frame.remove(position);
                return;
            }
        }
    }

    pub(crate) fn open_frame(&mut self) -> usize {
        self.frames.push(Vec::new());
        self.frames.len() - 1
    }

    pub(crate) fn close_frame(&mut self) {
        if let Some(frame) = self.frames.pop() {
            for slot in frame {
                self.free(slot);
            }
        }
    }

    pub(crate) fn frame_depth(&self) -> usize {
        self.frames.len()
    }

    // ----- instructions -----

    pub(crate) fn mov_reg(&mut self, dst: u8, src: u8) {
        self.push(Insn::new(
            op::CLASS_ALU64 | op::MOV | op::SRC_X,
            dst,
            src,
            0,
            0,
        ));
    }

    /// `dst = value`, in one slot when it fits 32 signed bits, else `lddw`.
    pub(crate) fn mov_imm(&mut self, dst: u8, value: i64) {
        if let Ok(imm) = i32::try_from(value) {
            self.push(Insn::new(op::CLASS_ALU64 | op::MOV, dst, 0, 0, imm));
        } else {
            let bits = value as u64;
            self.push(Insn::new(op::LDDW, dst, 0, 0, bits as u32 as i32));
            self.push(Insn::new(0, 0, 0, 0, (bits >> 32) as u32 as i32));
        }
    }

    /// `dst op= imm` (64-bit).
    pub(crate) fn alu_imm(&mut self, operation: u8, dst: u8, imm: i32) {
        self.push(Insn::new(op::CLASS_ALU64 | operation, dst, 0, 0, imm));
    }

    /// `dst op= src` (64-bit); `signed` selects signed division and modulo.
    pub(crate) fn alu_reg(&mut self, operation: u8, dst: u8, src: u8, signed: bool) {
        let off = i16::from(signed && (operation == op::DIV || operation == op::MOD));
        self.push(Insn::new(
            op::CLASS_ALU64 | operation | op::SRC_X,
            dst,
            src,
            off,
            0,
        ));
    }

    pub(crate) fn neg(&mut self, dst: u8) {
        self.push(Insn::new(op::CLASS_ALU64 | op::NEG, dst, 0, 0, 0));
    }

    /// Keeps the low `bytes` bytes of `reg`, zero- or sign-extended to 64 bits.
    pub(crate) fn narrow(&mut self, reg: u8, bytes: u8, signed: bool) {
        match (bytes, signed) {
            (4, false) => self.push(Insn::new(
                op::CLASS_ALU | op::MOV | op::SRC_X,
                reg,
                reg,
                0,
                0,
            )),
            (2, false) => self.alu_imm(op::AND, reg, 0xffff),
            (1, false) => self.alu_imm(op::AND, reg, 0xff),
            (width @ (1 | 2 | 4), true) => self.push(Insn::new(
                op::CLASS_ALU64 | op::MOV | op::SRC_X,
                reg,
                reg,
                i16::from(width) * 8,
                0,
            )),
            _ => {}
        }
    }

    fn size_bits(bytes: u8) -> u8 {
        match bytes {
            1 => op::SIZE_B,
            2 => op::SIZE_H,
            4 => op::SIZE_W,
            _ => op::SIZE_DW,
        }
    }

    /// `dst = *(size *)(src + off)`, sign-extending when `signed` and narrower than 8.
    pub(crate) fn load(&mut self, bytes: u8, signed: bool, dst: u8, src: u8, off: i16) {
        let mode = if signed && bytes < 8 {
            op::MODE_MEMSX
        } else {
            op::MODE_MEM
        };
        self.push(Insn::new(
            op::CLASS_LDX | mode | Self::size_bits(bytes),
            dst,
            src,
            off,
            0,
        ));
    }

    /// `*(size *)(dst + off) = src`.
    pub(crate) fn store(&mut self, bytes: u8, dst: u8, off: i16, src: u8) {
        self.push(Insn::new(
            op::CLASS_STX | op::MODE_MEM | Self::size_bits(bytes),
            dst,
            src,
            off,
            0,
        ));
    }

    /// `*(u64 *)(r10 + off) = imm`.
    pub(crate) fn store_imm(&mut self, off: i16, imm: i32) {
        self.push(Insn::new(
            op::CLASS_ST | op::MODE_MEM | op::SIZE_DW,
            FP,
            0,
            off,
            imm,
        ));
    }

    /// `*(u32 *)(r10 + off) = imm`.
    pub(crate) fn store_imm_word(&mut self, off: i16, imm: i32) {
        self.push(Insn::new(
            op::CLASS_ST | op::MODE_MEM | op::SIZE_W,
            FP,
            0,
            off,
            imm,
        ));
    }

    /// `dst = r10 + off` (a stack pointer the verifier tracks).
    pub(crate) fn stack_pointer(&mut self, dst: u8, off: i16) {
        self.mov_reg(dst, FP);
        self.alu_imm(op::ADD, dst, i32::from(off));
    }

    pub(crate) fn call(&mut self, helper: Helper) {
        self.push(Insn::new(
            op::CLASS_JMP | op::CALL,
            0,
            0,
            0,
            helper.id() as i32,
        ));
    }

    pub(crate) fn jump(&mut self, label: Label) {
        self.fixups.push((self.code.len(), label));
        self.push(Insn::new(op::CLASS_JMP | op::JA, 0, 0, 0, 0));
    }

    pub(crate) fn jump_if_imm(&mut self, cond: Cond, reg: u8, imm: i32, label: Label) {
        self.fixups.push((self.code.len(), label));
        self.push(Insn::new(op::CLASS_JMP | cond.code(), reg, 0, 0, imm));
    }

    pub(crate) fn jump_if_reg(&mut self, cond: Cond, lhs: u8, rhs: u8, label: Label) {
        self.fixups.push((self.code.len(), label));
        self.push(Insn::new(
            op::CLASS_JMP | cond.code() | op::SRC_X,
            lhs,
            rhs,
            0,
            0,
        ));
    }

    /// Zeroes `words` words at `r10 + off`.
    pub(crate) fn zero(&mut self, off: i16, words: u16) {
        for word in 0..words {
            self.store_imm(off + (word * 8) as i16, 0);
        }
    }

    /// Copies `words` words from `r10 + src` to `r10 + dst` through `r0`, in the
    /// order that is right when the ranges overlap.
    pub(crate) fn copy(&mut self, dst: i16, src: i16, words: u16) {
        if dst == src {
            return;
        }
        let order: Vec<u16> = if dst > src {
            (0..words).rev().collect()
        } else {
            (0..words).collect()
        };
        for word in order {
            let at = (word * 8) as i16;
            self.load(8, false, 0, FP, src + at);
            self.store(8, FP, dst + at, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_first_fit_and_reused() {
        let mut builder = Builder::new();
        let a = builder.alloc(8).unwrap();
        let b = builder.alloc(20).unwrap();
        assert_eq!(a.offset, -8);
        assert_eq!(
            b,
            Slot {
                offset: -32,
                words: 3
            }
        );
        builder.free(a);
        assert_eq!(builder.alloc(8).unwrap().offset, -8);
        assert!(builder.alloc(512).is_none());
        builder.free(b);
        assert_eq!(builder.alloc(24).unwrap().offset, -32);
    }
}
