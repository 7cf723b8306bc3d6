//! The x86-64 backend: verified programs to position-independent machine code.
//!
//! # Design
//!
//! [`compile`] translates one slot at a time, in two passes over the program: the
//! first only measures each slot's code (every jump between slots has a 32-bit
//! displacement, so sizes do not depend on where targets land) and records the
//! offsets in the [`JitScratch`]; the second writes the code with every forward
//! jump resolved. No relocation remains: the code can be copied to any address.
//!
//! The compiled function follows the System V ABI (`extern "sysv64"`) and takes
//! one argument, a pointer to a [`JitEnv`]. Registers map one to one:
//!
//! | BPF | x86-64 | why |
//! |---|---|---|
//! | `r0` | `rax` | the helper's return value lands there |
//! | `r1`–`r5` | `rdi rsi rdx rcx r8` | the first five argument registers: a helper call needs no moves |
//! | `r6`–`r9` | `rbx r13 r14 r15` | callee-saved, so they survive helper calls |
//! | `r10` | `rbp` | callee-saved; the stack top from the environment |
//!
//! `r12` holds the environment pointer for the whole run; `r9`, `r10` and `r11`
//! are scratch. The prologue saves the callee-saved registers, loads `r1` (the
//! context address) and `r10` (the stack top) from the environment, and keeps the
//! machine stack 16-byte aligned for calls.
//!
//! A helper call stores `helper | slot << 16` into [`JitEnv::call_site`], puts the
//! environment in `r9` (the sixth argument) and calls [`JitEnv::dispatch`] through
//! the environment (`aggregate`, the commonest call, goes straight to
//! [`JitEnv::aggregate`]: the same checks and work without the dispatch). The
//! dispatch function (Rust, see [`JitProgram`]) runs the interpreter's
//! `call_other_helper` (`aggregate`: the interpreter's `aggregate`) and returns
//! the value for `r0` in `rax` and a trap flag in `rdx`; on a trap the code leaves at once through the epilogue, and the
//! trap is in [`JitEnv::trap`]. The verifier treats `r1`–`r5` as clobbered by a
//! call, so nothing needs saving around it.
//!
//! Instructions whose x86 counterpart differs from the ISA get extra code:
//! division and modulo test for a zero divisor (and, signed, for `-1`, where
//! `idiv` would fault on `INT_MIN / -1`) and produce the interpreter's results;
//! shifts by a register go through `cl` (`r4`'s home, saved in `r11`); 32-bit
//! shifts by a register zero-extend explicitly, whatever the count.
//!
//! # Invariants
//!
//! - The code reads memory only at `[r10 + k]` and `[ctx + k]` addresses the
//!   verifier proved inside the stack depth and the context, writes memory only
//!   on the stack, and touches the environment only at the fields named above.
//! - Every slot's code is at most [`MAX_SLOT_BYTES`] bytes; [`max_code_size`]
//!   bounds a whole program's.

mod encoder;
mod runtime;

use probe_port_protocol::isa::{Helper, Insn, MAX_INSNS, op};
use probe_port_protocol::verifier::VerifiedProgram;

use self::encoder::{Alu, Cond, Encoder, Reg, Shift, Size, Unary, Width};
use super::{JitError, JitScratch};

pub use self::runtime::{DispatchFn, HelperReturn, JitEnv, JitProgram};

/// Most bytes of code one instruction slot can take. The largest, a signed
/// 64-bit division by a register, takes 50 (`tests/jit.rs` measures every form).
pub const MAX_SLOT_BYTES: usize = 64;

/// Bytes of the prologue and epilogue together, the stack zeroing included.
const FRAME_BYTES: usize = 48 + encoder::ZERO_BYTES;

/// An upper bound on the code size of any verified program of `slots` slots: a
/// buffer this large always suffices.
pub const fn max_code_size(slots: usize) -> usize {
    FRAME_BYTES + slots * MAX_SLOT_BYTES
}

/// Where each BPF register lives.
const REGISTERS: [Reg; 11] = [
    Reg::Rax,
    Reg::Rdi,
    Reg::Rsi,
    Reg::Rdx,
    Reg::Rcx,
    Reg::R8,
    Reg::Rbx,
    Reg::R13,
    Reg::R14,
    Reg::R15,
    Reg::Rbp,
];

/// The register holding the environment pointer.
const ENV: Reg = Reg::R12;
/// Scratch registers, caller-saved and never a BPF register's home.
const SCRATCH_A: Reg = Reg::R9;
const SCRATCH_B: Reg = Reg::R10;
const SCRATCH_C: Reg = Reg::R11;

/// Callee-saved registers the code uses, in push order.
const SAVED: [Reg; 6] = [Reg::Rbp, Reg::Rbx, Reg::R12, Reg::R13, Reg::R14, Reg::R15];

/// Compiles `program` into `out` and returns the number of bytes written.
///
/// The code is position-independent: copy the first `len` bytes anywhere
/// executable and call it through [`JitProgram`]. `scratch` is working memory,
/// reused between compilations. Fails with [`JitError::TooLarge`] (nothing of use
/// written) when `out` is too small; [`max_code_size`] always suffices.
pub fn compile(
    program: &VerifiedProgram<'_>,
    out: &mut [u8],
    scratch: &mut JitScratch,
) -> Result<usize, JitError> {
    let insns = program.insns();
    if insns.len() > MAX_INSNS {
        return Err(JitError::TooManySlots { slots: insns.len() });
    }
    let offsets = &mut scratch.offsets[..=insns.len()];

    let mut measure = Encoder::measuring();
    let stack_words = program.stack_depth().div_ceil(8) as u32;
    emit_program(insns, stack_words, &mut measure, offsets, true)?;
    let needed = measure.position();
    if measure.overflowed() || needed > out.len() {
        return Err(JitError::TooLarge {
            needed,
            available: out.len(),
        });
    }

    let mut writer = Encoder::writing(out);
    emit_program(insns, stack_words, &mut writer, offsets, false)?;
    if writer.overflowed() || writer.position() != needed {
        // Unreachable: both passes emit the same bytes. Refuse rather than hand
        // out code whose jumps were computed for another layout.
        return Err(JitError::TooLarge {
            needed: writer.position(),
            available: out.len(),
        });
    }
    Ok(needed)
}

/// Emits the whole function; `record` stores each slot's offset into `offsets`
/// (the measuring pass), otherwise jumps read them.
fn emit_program(
    insns: &[Insn],
    stack_words: u32,
    encoder: &mut Encoder<'_>,
    offsets: &mut [u32],
    record: bool,
) -> Result<(), JitError> {
    emit_prologue(encoder, stack_words);
    let mut index = 0;
    while index < insns.len() {
        if record {
            offsets[index] = encoder.position() as u32;
        }
        let insn = insns[index];
        if insn.is_wide() {
            let Some(tail) = insns.get(index + 1) else {
                return Err(unsupported(index, insn));
            };
            if record {
                offsets[index + 1] = encoder.position() as u32;
            }
            let value = u64::from(insn.imm as u32) | (u64::from(tail.imm as u32) << 32);
            encoder.mov_imm64(register(insn.dst(), index, insn)?, value);
            index += 2;
        } else {
            let start = encoder.position();
            emit_slot(encoder, insn, index, offsets)?;
            debug_assert!(encoder.position() - start <= MAX_SLOT_BYTES, "{insn:?}");
            index += 1;
        }
    }
    if record {
        offsets[insns.len()] = encoder.position() as u32;
    }
    emit_epilogue(encoder);
    Ok(())
}

/// Saves what the code uses, zeroes the `stack_words` words of handler stack the
/// program may touch (its verified depth, rounded up to words: `STACK_SIZE` is a
/// whole number of words), and loads `r1` and `r10`.
fn emit_prologue(encoder: &mut Encoder<'_>, stack_words: u32) {
    encoder.endbr64();
    for reg in SAVED {
        encoder.push(reg);
    }
    // Six pushes after the return address leave rsp 8 off a 16-byte boundary.
    encoder.alu_ri(Alu::Sub, Width::W64, Reg::Rsp, 8);
    encoder.mov_rr(Width::W64, ENV, Reg::Rdi);
    encoder.load64(REGISTERS[10], ENV, runtime::STACK_TOP_OFFSET);
    // Before `r1` is loaded: the zeroing may use `rep stosq`, which takes rdi (r1),
    // rcx (r4) and rax (r0), none of them holding anything yet; DF is clear, as
    // the ABI has it on every call.
    encoder.zero_below(REGISTERS[10], stack_words);
    encoder.load64(REGISTERS[1], ENV, runtime::CONTEXT_OFFSET);
}

fn emit_epilogue(encoder: &mut Encoder<'_>) {
    encoder.alu_ri(Alu::Add, Width::W64, Reg::Rsp, 8);
    for reg in SAVED.iter().rev() {
        encoder.pop(*reg);
    }
    encoder.ret();
}

#[cold]
fn unsupported(index: usize, insn: Insn) -> JitError {
    JitError::Unsupported {
        index: index as u32,
        code: insn.code,
    }
}

/// The x86 home of BPF register `number`.
fn register(number: u8, index: usize, insn: Insn) -> Result<Reg, JitError> {
    REGISTERS
        .get(usize::from(number))
        .copied()
        .ok_or_else(|| unsupported(index, insn))
}

/// The second operand of an arithmetic or jump instruction.
#[derive(Clone, Copy)]
enum Operand {
    Imm(i32),
    Reg(Reg),
}

fn emit_slot(
    encoder: &mut Encoder<'_>,
    insn: Insn,
    index: usize,
    offsets: &[u32],
) -> Result<(), JitError> {
    let bad = || unsupported(index, insn);
    let dst = register(insn.dst(), index, insn)?;
    let src = register(insn.src(), index, insn)?;
    let operand = if insn.code & op::SRC_MASK == op::SRC_X {
        Operand::Reg(src)
    } else {
        Operand::Imm(insn.imm)
    };
    match insn.class() {
        op::CLASS_ALU | op::CLASS_ALU64 => {
            let width = if insn.class() == op::CLASS_ALU64 {
                Width::W64
            } else {
                Width::W32
            };
            if insn.dst() == 10 {
                return Err(bad());
            }
            emit_alu(encoder, insn, width, dst, operand).ok_or_else(bad)
        }
        op::CLASS_LDX => {
            let size = size_of(insn.code);
            let signed = match insn.code & op::MODE_MASK {
                op::MODE_MEM => false,
                op::MODE_MEMSX if size != Size::B8 => true,
                _ => return Err(bad()),
            };
            if insn.dst() == 10 {
                return Err(bad());
            }
            encoder.load(size, signed, dst, src, i32::from(insn.off));
            Ok(())
        }
        op::CLASS_ST | op::CLASS_STX => {
            if insn.code & op::MODE_MASK != op::MODE_MEM {
                return Err(bad());
            }
            let size = size_of(insn.code);
            let disp = i32::from(insn.off);
            if insn.class() == op::CLASS_STX {
                encoder.store_reg(size, dst, disp, src);
            } else {
                encoder.store_imm(size, dst, disp, insn.imm);
            }
            Ok(())
        }
        op::CLASS_JMP | op::CLASS_JMP32 => emit_jump(encoder, insn, index, offsets, dst, operand),
        _ => Err(bad()),
    }
}

fn size_of(code: u8) -> Size {
    match code & op::SIZE_MASK {
        op::SIZE_B => Size::B1,
        op::SIZE_H => Size::B2,
        op::SIZE_W => Size::B4,
        _ => Size::B8,
    }
}

/// Emits an `ALU`/`ALU64` instruction; `None` for a form the ISA does not define.
fn emit_alu(
    encoder: &mut Encoder<'_>,
    insn: Insn,
    width: Width,
    dst: Reg,
    operand: Operand,
) -> Option<()> {
    let operation = insn.code & op::OP_MASK;
    let simple = |op: Alu, encoder: &mut Encoder<'_>| match operand {
        Operand::Imm(imm) => encoder.alu_ri(op, width, dst, imm),
        Operand::Reg(src) => encoder.alu_rr(op, width, dst, src),
    };
    match operation {
        op::ADD => simple(Alu::Add, encoder),
        op::SUB => simple(Alu::Sub, encoder),
        op::OR => simple(Alu::Or, encoder),
        op::AND => simple(Alu::And, encoder),
        op::XOR => simple(Alu::Xor, encoder),
        op::MUL => match operand {
            Operand::Imm(imm) => encoder.imul_ri(width, dst, imm),
            Operand::Reg(src) => encoder.imul_rr(width, dst, src),
        },
        op::NEG => {
            if matches!(operand, Operand::Reg(_)) {
                return None;
            }
            encoder.unary(Unary::Neg, width, dst);
        }
        op::MOV => emit_mov(encoder, insn, width, dst, operand)?,
        op::LSH => emit_shift(encoder, Shift::Shl, width, dst, operand),
        op::RSH => emit_shift(encoder, Shift::Shr, width, dst, operand),
        op::ARSH => emit_shift(encoder, Shift::Sar, width, dst, operand),
        op::DIV | op::MOD => {
            let signed = match insn.off {
                0 => false,
                1 => true,
                _ => return None,
            };
            emit_division(encoder, width, signed, operation == op::MOD, dst, operand);
        }
        op::END => emit_byte_swap(encoder, insn, dst)?,
        _ => return None,
    }
    Some(())
}

fn emit_mov(
    encoder: &mut Encoder<'_>,
    insn: Insn,
    width: Width,
    dst: Reg,
    operand: Operand,
) -> Option<()> {
    match (operand, insn.off) {
        (Operand::Imm(imm), _) => {
            let value = match width {
                Width::W64 => imm as i64 as u64,
                Width::W32 => u64::from(imm as u32),
            };
            encoder.mov_imm64(dst, value);
        }
        (Operand::Reg(src), 0) => {
            // A 32-bit move always runs: it clears the upper half.
            if width == Width::W32 || src != dst {
                encoder.mov_rr(width, dst, src);
            }
        }
        (Operand::Reg(src), 8) => encoder.movsx_rr(width, Size::B1, dst, src),
        (Operand::Reg(src), 16) => encoder.movsx_rr(width, Size::B2, dst, src),
        (Operand::Reg(src), 32) if width == Width::W64 => {
            encoder.movsx_rr(width, Size::B4, dst, src);
        }
        _ => return None,
    }
    Some(())
}

fn emit_shift(encoder: &mut Encoder<'_>, shift: Shift, width: Width, dst: Reg, operand: Operand) {
    let mask = match width {
        Width::W64 => 63,
        Width::W32 => 31,
    };
    match operand {
        Operand::Imm(imm) => {
            let count = (imm & mask) as u8;
            if count != 0 {
                encoder.shift_ri(shift, width, dst, count);
            } else if width == Width::W32 {
                encoder.mov_rr(Width::W32, dst, dst);
            }
        }
        Operand::Reg(src) => {
            // The count must be in cl; rcx is r4's home. The hardware masks the
            // count as the ISA does (& 31 or & 63).
            if src == Reg::Rcx && dst != Reg::Rcx {
                encoder.shift_cl(shift, width, dst);
            } else if dst == Reg::Rcx {
                // r4 shifted by anything: shift a copy, the count in cl.
                encoder.mov_rr(Width::W64, SCRATCH_C, Reg::Rcx);
                if src != Reg::Rcx {
                    encoder.mov_rr(Width::W64, Reg::Rcx, src);
                }
                encoder.shift_cl(shift, width, SCRATCH_C);
                encoder.mov_rr(Width::W64, Reg::Rcx, SCRATCH_C);
            } else {
                encoder.mov_rr(Width::W64, SCRATCH_C, Reg::Rcx);
                encoder.mov_rr(Width::W64, Reg::Rcx, src);
                encoder.shift_cl(shift, width, dst);
                encoder.mov_rr(Width::W64, Reg::Rcx, SCRATCH_C);
            }
            // A 32-bit shift by a masked count of 0 may leave the upper half
            // alone; the ISA clears it whatever the count.
            if width == Width::W32 {
                encoder.mov_rr(Width::W32, dst, dst);
            }
        }
    }
}

/// Division and modulo with the ISA's rules: a zero divisor gives 0 (`div`) or
/// leaves the dividend (`mod`, truncated to 32 bits in `ALU`); a signed divisor
/// of -1 gives the wrapped negation (`div`) or 0 (`mod`) without `idiv`, which
/// would fault on `INT_MIN / -1`.
fn emit_division(
    encoder: &mut Encoder<'_>,
    width: Width,
    signed: bool,
    modulo: bool,
    dst: Reg,
    operand: Operand,
) {
    let zero_divisor = |encoder: &mut Encoder<'_>| {
        if !modulo {
            encoder.alu_rr(Alu::Xor, Width::W32, dst, dst);
        } else if width == Width::W32 {
            encoder.mov_rr(Width::W32, dst, dst);
        }
    };
    let minus_one_divisor = |encoder: &mut Encoder<'_>| {
        if modulo {
            encoder.alu_rr(Alu::Xor, Width::W32, dst, dst);
        } else {
            encoder.unary(Unary::Neg, width, dst);
        }
    };
    match operand {
        Operand::Imm(imm) => {
            // The divisor is known: only the general case needs the hardware.
            if imm == 0 {
                zero_divisor(encoder);
            } else if signed && imm == -1 {
                minus_one_divisor(encoder);
            } else {
                let divisor = match width {
                    Width::W64 => imm as i64 as u64,
                    Width::W32 => u64::from(imm as u32),
                };
                encoder.mov_imm64(SCRATCH_C, divisor);
                emit_hardware_division(encoder, width, signed, modulo, dst);
            }
        }
        Operand::Reg(src) => {
            encoder.mov_rr(width, SCRATCH_C, src);
            encoder.test_rr(width, SCRATCH_C, SCRATCH_C);
            let to_zero = encoder.jump8(Some(Cond::E));
            let to_minus_one = if signed {
                encoder.alu_ri(Alu::Cmp, width, SCRATCH_C, -1);
                Some(encoder.jump8(Some(Cond::E)))
            } else {
                None
            };
            emit_hardware_division(encoder, width, signed, modulo, dst);
            let done_general = encoder.jump8(None);
            encoder.bind(to_zero);
            zero_divisor(encoder);
            if let Some(to_minus_one) = to_minus_one {
                let done_zero = encoder.jump8(None);
                encoder.bind(to_minus_one);
                minus_one_divisor(encoder);
                encoder.bind(done_zero);
            }
            encoder.bind(done_general);
        }
    }
}

/// `dst = dst / r11` or `dst % r11` with `div`/`idiv`, the divisor known to be
/// neither 0 nor (signed) -1. `rax` and `rdx` (`r0` and `r3`) are kept in the
/// other scratch registers around the instruction.
fn emit_hardware_division(
    encoder: &mut Encoder<'_>,
    width: Width,
    signed: bool,
    modulo: bool,
    dst: Reg,
) {
    encoder.mov_rr(Width::W64, SCRATCH_B, Reg::Rax);
    encoder.mov_rr(Width::W64, SCRATCH_A, Reg::Rdx);
    encoder.mov_rr(width, Reg::Rax, dst);
    if signed {
        encoder.sign_extend_rax(width);
        encoder.unary(Unary::Idiv, width, SCRATCH_C);
    } else {
        encoder.alu_rr(Alu::Xor, Width::W32, Reg::Rdx, Reg::Rdx);
        encoder.unary(Unary::Div, width, SCRATCH_C);
    }
    // 32-bit `div` writes eax and edx, zero-extended: the result is ready.
    let result = if modulo { Reg::Rdx } else { Reg::Rax };
    encoder.mov_rr(Width::W64, SCRATCH_C, result);
    encoder.mov_rr(Width::W64, Reg::Rax, SCRATCH_B);
    encoder.mov_rr(Width::W64, Reg::Rdx, SCRATCH_A);
    encoder.mov_rr(Width::W64, dst, SCRATCH_C);
}

fn emit_byte_swap(encoder: &mut Encoder<'_>, insn: Insn, dst: Reg) -> Option<()> {
    // ALU64 `end` (0xd7) swaps unconditionally, ALU `to_be` (0xdc) swaps on this
    // little-endian machine, ALU `to_le` (0xd4) only truncates.
    let swap = match insn.code {
        0xd4 => false,
        0xdc | 0xd7 => true,
        _ => return None,
    };
    match (insn.imm, swap) {
        (16, true) => {
            encoder.swap_low_bytes(dst);
            encoder.movzx16_rr(dst, dst);
        }
        (16, false) => encoder.movzx16_rr(dst, dst),
        (32, true) => encoder.bswap(Width::W32, dst),
        (32, false) => encoder.mov_rr(Width::W32, dst, dst),
        (64, true) => encoder.bswap(Width::W64, dst),
        (64, false) => {}
        _ => return None,
    }
    Some(())
}

fn emit_jump(
    encoder: &mut Encoder<'_>,
    insn: Insn,
    index: usize,
    offsets: &[u32],
    dst: Reg,
    operand: Operand,
) -> Result<(), JitError> {
    let bad = || unsupported(index, insn);
    let jmp32 = insn.class() == op::CLASS_JMP32;
    let width = if jmp32 { Width::W32 } else { Width::W64 };
    let operation = insn.code & op::OP_MASK;
    // The code offset of the slot `distance` slots past the next one.
    let target = |distance: i64| -> Result<usize, JitError> {
        let slot = usize::try_from(index as i64 + 1 + distance).map_err(|_| bad())?;
        if slot >= offsets.len() - 1 {
            return Err(bad());
        }
        Ok(offsets[slot] as usize)
    };
    let exit_offset = offsets[offsets.len() - 1] as usize;
    let cond = match operation {
        op::JA => {
            let distance = if jmp32 { insn.imm } else { i32::from(insn.off) };
            encoder.jmp(target(i64::from(distance))?);
            return Ok(());
        }
        op::CALL if !jmp32 && insn.src() == 0 => {
            emit_call(encoder, insn, index, exit_offset).ok_or_else(bad)?;
            return Ok(());
        }
        op::EXIT if !jmp32 => {
            encoder.jmp(exit_offset);
            return Ok(());
        }
        op::JEQ => Cond::E,
        op::JNE => Cond::Ne,
        op::JGT => Cond::A,
        op::JGE => Cond::Ae,
        op::JLT => Cond::B,
        op::JLE => Cond::Be,
        op::JSGT => Cond::G,
        op::JSGE => Cond::Ge,
        op::JSLT => Cond::L,
        op::JSLE => Cond::Le,
        op::JSET => Cond::Ne,
        _ => return Err(bad()),
    };
    let target = target(i64::from(insn.off))?;
    match (operation == op::JSET, operand) {
        (false, Operand::Imm(imm)) => encoder.alu_ri(Alu::Cmp, width, dst, imm),
        (false, Operand::Reg(src)) => encoder.alu_rr(Alu::Cmp, width, dst, src),
        (true, Operand::Imm(imm)) => encoder.test_ri(width, dst, imm),
        (true, Operand::Reg(src)) => encoder.test_rr(width, dst, src),
    }
    encoder.jcc(cond, target);
    Ok(())
}

/// A helper call through the environment's dispatch function.
fn emit_call(
    encoder: &mut Encoder<'_>,
    insn: Insn,
    index: usize,
    exit_offset: usize,
) -> Option<()> {
    let helper = u16::try_from(insn.imm).ok()?;
    let slot = u16::try_from(index).ok()?;
    let site = runtime::call_site(helper, slot);
    encoder.store_imm(Size::B8, ENV, runtime::CALL_SITE_OFFSET, site);
    encoder.mov_rr(Width::W64, Reg::R9, ENV);
    let function = if u32::from(helper) == Helper::Aggregate as u32 {
        runtime::AGGREGATE_OFFSET
    } else {
        runtime::DISPATCH_OFFSET
    };
    encoder.call_indirect(ENV, function);
    // The dispatch function's trap flag comes back in rdx.
    encoder.test_rr(Width::W64, Reg::Rdx, Reg::Rdx);
    encoder.jcc(Cond::Ne, exit_offset);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_fits_its_bound() {
        for words in 0..=(probe_port_protocol::isa::STACK_SIZE / 8) as u32 {
            let mut encoder = Encoder::measuring();
            emit_prologue(&mut encoder, words);
            emit_epilogue(&mut encoder);
            assert!(
                encoder.position() <= FRAME_BYTES,
                "{words}: {}",
                encoder.position()
            );
        }
    }
}
