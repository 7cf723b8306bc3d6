//! The text assembler and disassembler of handler programs.
//!
//! Tests, `probeport check --dump` and anyone driving the port by hand write and read
//! programs in this syntax; clients use [`format_insn`] to show the instruction a
//! verifier error names.
//!
//! # Syntax
//!
//! - One instruction per line. Comments start with `;` or `#` and run to the end of
//!   the line; blank lines are fine.
//! - `name:` defines a label for the next instruction and may share a line with it.
//!   Labels match `[A-Za-z_.][A-Za-z0-9_.]*`.
//! - Mnemonics and register names are lowercase only.
//! - Registers are `r0` to `r15`: the encoding has four bits per register, so the
//!   assembler accepts all of them (the verifier refuses `r11` to `r15`), which lets
//!   tests write invalid programs readably.
//! - Immediates are decimal or `0x` hexadecimal, either optionally negated with `-`.
//!   A 32-bit field takes any value that fits `i32` or `u32` (values above `i32::MAX`
//!   keep their bits); `lddw` takes any value that fits `i64` or `u64`.
//! - Arithmetic: `add`, `sub`, `mul`, `div`, `sdiv`, `or`, `and`, `lsh`, `rsh`, `mod`,
//!   `smod`, `xor`, `mov` and `arsh`, each with a `64` suffix (64-bit class) or a `32`
//!   suffix (32-bit class), as `add64 dst, src` or `add64 dst, imm`. `neg64 dst` and
//!   `neg32 dst` take one operand. The sign-extending moves `mov64sx8`, `mov64sx16`,
//!   `mov64sx32`, `mov32sx8` and `mov32sx16` take two registers.
//! - Byte swaps take one register: `le16`, `le32`, `le64` and `be16`, `be32`, `be64`
//!   convert to that byte order; `bswap16`, `bswap32`, `bswap64` always swap.
//! - Loads `ldxb`, `ldxh`, `ldxw`, `ldxdw` and sign-extending loads `ldxsb`, `ldxsh`,
//!   `ldxsw` as `ldxdw dst, [src+off]`; stores `stxb`, `stxh`, `stxw`, `stxdw` as
//!   `stxdw [dst+off], src` and immediate stores `stb`, `sth`, `stw`, `stdw` as
//!   `stw [dst+off], imm`. A memory operand is `[r1]`, `[r1+16]` or `[r10-0x8]`; the
//!   offset fits `i16`.
//! - `lddw dst, imm64` loads a 64-bit immediate and takes two slots.
//! - Jumps: `ja target` (16-bit offset), `ja32 target` (32-bit offset in the
//!   immediate), and `jeq`, `jgt`, `jge`, `jset`, `jne`, `jsgt`, `jsge`, `jlt`, `jle`,
//!   `jslt`, `jsle` as `jeq dst, src, target` or `jeq dst, imm, target`, comparing 64
//!   bits, or 32 bits with a `32` suffix (`jeq32`). A target is a label or a signed
//!   offset `+N` / `-N` counted in slots from the next instruction, exactly as the
//!   encoding stores it: `ja +0` does nothing and `ja -1` loops on itself (which the
//!   assembler allows and the verifier refuses).
//! - `call name` calls a helper by its [`Helper::name`], `call N` by number; `exit`
//!   returns `r0`.
//! - `.raw 0x0123456789abcdef` emits one slot whose 8 wire bytes are the 16 hex digits
//!   read in order (here code `0x01`, registers `0x23`, offset bytes `45 67`, immediate
//!   bytes `89 ab cd ef`). It writes anything the rest of the syntax cannot.
//!
//! # Example
//!
//! ```
//! use probe_port_protocol::asm::{assemble, disassemble_labelled};
//!
//! let program = assemble(
//!     "
//!     ; Count calls of a function by its first argument, skipping zero.
//!         ldxdw r6, [r1+40]   ; rdi is DWARF register 5, so context slot 5
//!         jeq r6, 0, done
//!         stxdw [r10-8], r6   ; the key is the argument, on the stack
//!         mov64 r1, 0         ; map 0
//!         mov64 r2, r10
//!         add64 r2, -8
//!         mov64 r3, 1
//!         call aggregate
//!     done:
//!         mov64 r0, 0
//!         exit
//!     ",
//! )
//! .unwrap();
//! assert_eq!(program.len(), 10);
//! assert!(disassemble_labelled(&program).contains("    jeq r6, 0, L8\n"));
//! ```
//!
//! # Design
//!
//! One table of mnemonics drives both directions. Each mnemonic has a shape (which
//! operands it takes and where they go in the slot) and the fixed parts of its
//! encoding. The disassembler decodes a slot against the table, encodes the result
//! again with the assembler's own encoder, and writes the readable form only when that
//! gives back the slot bit for bit; every other slot becomes `.raw`. So there is no
//! second description of the encoding that could drift from the first.
//!
//! # Invariants
//!
//! - The assembler writes zero into every field the syntax does not name.
//! - `assemble(&disassemble(program))` and `assemble(&disassemble_labelled(program))`
//!   give back `program` for every sequence of slots, valid or not.

use alloc::{
    collections::{BTreeMap, BTreeSet},
    format,
    string::String,
    vec,
    vec::Vec,
};
use core::fmt::{self, Write};

use crate::isa::{Helper, Insn, op};

/// Why program text does not assemble, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsmError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters, of the offending token.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for AsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl core::error::Error for AsmError {}

/// Assembles program text into instruction slots.
///
/// Returns the first error found, with its line and column.
pub fn assemble(text: &str) -> Result<Vec<Insn>, AsmError> {
    // First pass: parse every line and give each label its slot.
    let mut labels: BTreeMap<&str, LabelDefinition> = BTreeMap::new();
    let mut statements = Vec::new();
    let mut slots = 0;
    for (line_index, line_text) in text.lines().enumerate() {
        let line = LineParser {
            text: line_text,
            number: line_index + 1,
        };
        let parsed = line.parse()?;
        for (name, at) in parsed.labels {
            if let Some(first) = labels.get(name) {
                return Err(line.error(
                    at,
                    format!(
                        "duplicate label \"{name}\" (first defined on line {})",
                        first.line
                    ),
                ));
            }
            labels.insert(
                name,
                LabelDefinition {
                    slot: slots,
                    line: line.number,
                },
            );
        }
        if let Some(statement) = parsed.statement {
            slots += statement.mnemonic.shape.slots();
            statements.push(statement);
        }
    }

    // Second pass: resolve jump targets and encode.
    let mut program = Vec::with_capacity(slots);
    for statement in &statements {
        let operands = statement
            .operands
            .iter()
            .map(|operand| statement.resolve(operand, &labels, program.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let (first, second) = encode(statement.mnemonic, &operands);
        program.push(first);
        program.extend(second);
    }
    Ok(program)
}

/// Disassembles a program, one instruction per line, jump targets as `+N` / `-N`.
///
/// The text assembles back to exactly `insns`, whatever they hold: slots that are not
/// the canonical encoding of a readable instruction are written as `.raw`.
pub fn disassemble(insns: &[Insn]) -> String {
    let mut text = String::new();
    for (index, unit) in decode_all(insns) {
        unit.write(&mut text, index, None);
        text.push('\n');
    }
    text
}

/// Disassembles a program like [`disassemble`], but with labels: every jump target
/// inside the program that starts an instruction gets a line `L<index>:` of its own,
/// and jumps name it. Instructions are indented by four spaces. Targets outside the
/// program, or in the second slot of an `lddw`, stay numeric.
pub fn disassemble_labelled(insns: &[Insn]) -> String {
    let units = decode_all(insns);
    let starts: BTreeSet<usize> = units.iter().map(|(index, _)| *index).collect();
    let labels: BTreeSet<usize> = units
        .iter()
        .filter_map(|(index, unit)| unit.target(*index))
        .filter(|target| starts.contains(target))
        .collect();
    let mut text = String::new();
    for (index, unit) in units {
        if labels.contains(&index) {
            // Writing into a `String` cannot fail.
            let _ = writeln!(text, "L{index}:");
        }
        text.push_str("    ");
        unit.write(&mut text, index, Some(&labels));
        text.push('\n');
    }
    text
}

/// The instruction at `index`, for messages such as the verifier's: the readable form
/// (with both slots of an `lddw` when they are canonical) or `.raw`, with numeric jump
/// targets. An index past the end gives `(end of program)`.
pub fn format_insn(insns: &[Insn], index: usize) -> String {
    if index >= insns.len() {
        return String::from("(end of program)");
    }
    let mut text = String::new();
    decode_unit(insns, index).write(&mut text, index, None);
    text
}

/// Every mnemonic the assembler knows, `.raw` included, in table order.
pub fn mnemonics() -> impl Iterator<Item = &'static str> {
    MNEMONICS
        .iter()
        .chain(core::iter::once(&RAW))
        .map(|mnemonic| mnemonic.name)
}

/// How an instruction's operands are written, and where they go in the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `op dst, src` or `op dst, imm`: arithmetic.
    Binary,
    /// `op dst`: negation and byte swaps (the immediate is fixed by the mnemonic).
    Unary,
    /// `op dst, src`: sign-extending moves (register form only).
    MoveExtend,
    /// `op dst, [src+off]`.
    Load,
    /// `op [dst+off], src`.
    StoreRegister,
    /// `op [dst+off], imm`.
    StoreImmediate,
    /// `lddw dst, imm64`, two slots.
    Wide,
    /// `ja target`, the offset in the 16-bit offset field.
    Jump,
    /// `ja32 target`, the offset in the 32-bit immediate.
    Jump32,
    /// `op dst, src, target` or `op dst, imm, target`.
    Branch,
    /// `call helper`.
    Call,
    /// `exit`.
    Exit,
    /// `.raw 0x<16 hex digits>`.
    Raw,
}

impl Shape {
    /// The operands, in the order they are written.
    fn operands(self) -> &'static [Kind] {
        use Kind::*;
        match self {
            Shape::Binary => &[Register, RegisterOrImmediate],
            Shape::Unary => &[Register],
            Shape::MoveExtend => &[Register, Register],
            Shape::Load => &[Register, Memory],
            Shape::StoreRegister => &[Memory, Register],
            Shape::StoreImmediate => &[Memory, Immediate],
            Shape::Wide => &[Register, WideImmediate],
            Shape::Jump | Shape::Jump32 => &[Target],
            Shape::Branch => &[Register, RegisterOrImmediate, Target],
            Shape::Call => &[Helper],
            Shape::Exit => &[],
            Shape::Raw => &[RawSlot],
        }
    }

    /// The operands as the error messages spell them.
    fn synopsis(self) -> &'static str {
        match self {
            Shape::Binary => "dst, src|imm",
            Shape::Unary => "dst",
            Shape::MoveExtend => "dst, src",
            Shape::Load => "dst, [src+off]",
            Shape::StoreRegister => "[dst+off], src",
            Shape::StoreImmediate => "[dst+off], imm",
            Shape::Wide => "dst, imm64",
            Shape::Jump | Shape::Jump32 => "target",
            Shape::Branch => "dst, src|imm, target",
            Shape::Call => "helper",
            Shape::Exit => "",
            Shape::Raw => "0x<16 hex digits>",
        }
    }

    /// Instruction slots taken.
    fn slots(self) -> usize {
        if self == Shape::Wide { 2 } else { 1 }
    }

    /// The range a jump offset must fit.
    fn offset_range(self) -> (i64, i64) {
        if self == Shape::Jump32 {
            (i32::MIN.into(), i32::MAX.into())
        } else {
            (i16::MIN.into(), i16::MAX.into())
        }
    }
}

/// What one written operand must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Register,
    RegisterOrImmediate,
    /// A value for a 32-bit immediate field.
    Immediate,
    /// A value for the 64-bit immediate of `lddw`.
    WideImmediate,
    Memory,
    Target,
    Helper,
    RawSlot,
}

/// One mnemonic: its shape and the parts of the encoding it fixes. For `Binary` and
/// `Branch` the code is the immediate form; the register form adds `SRC_X`.
#[derive(Debug)]
struct Mnemonic {
    name: &'static str,
    shape: Shape,
    code: u8,
    off: i16,
    imm: i32,
}

impl Mnemonic {
    const fn new(name: &'static str, shape: Shape, code: u8, off: i16, imm: i32) -> Self {
        Self {
            name,
            shape,
            code,
            off,
            imm,
        }
    }

    const fn binary(name: &'static str, code: u8, off: i16) -> Self {
        Self::new(name, Shape::Binary, code, off, 0)
    }

    const fn unary(name: &'static str, code: u8, imm: i32) -> Self {
        Self::new(name, Shape::Unary, code, 0, imm)
    }

    const fn move_extend(name: &'static str, class: u8, bits: i16) -> Self {
        Self::new(
            name,
            Shape::MoveExtend,
            class | op::MOV | op::SRC_X,
            bits,
            0,
        )
    }

    const fn memory(name: &'static str, shape: Shape, code: u8) -> Self {
        Self::new(name, shape, code, 0, 0)
    }

    const fn branch(name: &'static str, code: u8) -> Self {
        Self::new(name, Shape::Branch, code, 0, 0)
    }

    fn lookup(name: &str) -> Option<&'static Mnemonic> {
        MNEMONICS
            .iter()
            .chain(core::iter::once(&RAW))
            .find(|mnemonic| mnemonic.name == name)
    }
}

const ALU: u8 = op::CLASS_ALU;
const ALU64: u8 = op::CLASS_ALU64;
const JMP: u8 = op::CLASS_JMP;
const JMP32: u8 = op::CLASS_JMP32;
const LDX_MEM: u8 = op::CLASS_LDX | op::MODE_MEM;
const LDX_MEMSX: u8 = op::CLASS_LDX | op::MODE_MEMSX;
const ST_MEM: u8 = op::CLASS_ST | op::MODE_MEM;
const STX_MEM: u8 = op::CLASS_STX | op::MODE_MEM;

/// The escape for slots that have no readable form.
static RAW: Mnemonic = Mnemonic::new(".raw", Shape::Raw, 0, 0, 0);

/// Every readable mnemonic. The disassembler takes the first one that reproduces a
/// slot, so the order only matters for ties, of which there are none.
static MNEMONICS: [Mnemonic; 86] = [
    Mnemonic::binary("add64", ALU64 | op::ADD, 0),
    Mnemonic::binary("sub64", ALU64 | op::SUB, 0),
    Mnemonic::binary("mul64", ALU64 | op::MUL, 0),
    Mnemonic::binary("div64", ALU64 | op::DIV, 0),
    Mnemonic::binary("sdiv64", ALU64 | op::DIV, 1),
    Mnemonic::binary("or64", ALU64 | op::OR, 0),
    Mnemonic::binary("and64", ALU64 | op::AND, 0),
    Mnemonic::binary("lsh64", ALU64 | op::LSH, 0),
    Mnemonic::binary("rsh64", ALU64 | op::RSH, 0),
    Mnemonic::binary("mod64", ALU64 | op::MOD, 0),
    Mnemonic::binary("smod64", ALU64 | op::MOD, 1),
    Mnemonic::binary("xor64", ALU64 | op::XOR, 0),
    Mnemonic::binary("mov64", ALU64 | op::MOV, 0),
    Mnemonic::binary("arsh64", ALU64 | op::ARSH, 0),
    Mnemonic::binary("add32", ALU | op::ADD, 0),
    Mnemonic::binary("sub32", ALU | op::SUB, 0),
    Mnemonic::binary("mul32", ALU | op::MUL, 0),
    Mnemonic::binary("div32", ALU | op::DIV, 0),
    Mnemonic::binary("sdiv32", ALU | op::DIV, 1),
    Mnemonic::binary("or32", ALU | op::OR, 0),
    Mnemonic::binary("and32", ALU | op::AND, 0),
    Mnemonic::binary("lsh32", ALU | op::LSH, 0),
    Mnemonic::binary("rsh32", ALU | op::RSH, 0),
    Mnemonic::binary("mod32", ALU | op::MOD, 0),
    Mnemonic::binary("smod32", ALU | op::MOD, 1),
    Mnemonic::binary("xor32", ALU | op::XOR, 0),
    Mnemonic::binary("mov32", ALU | op::MOV, 0),
    Mnemonic::binary("arsh32", ALU | op::ARSH, 0),
    Mnemonic::unary("neg64", ALU64 | op::NEG, 0),
    Mnemonic::unary("neg32", ALU | op::NEG, 0),
    Mnemonic::move_extend("mov64sx8", ALU64, 8),
    Mnemonic::move_extend("mov64sx16", ALU64, 16),
    Mnemonic::move_extend("mov64sx32", ALU64, 32),
    Mnemonic::move_extend("mov32sx8", ALU, 8),
    Mnemonic::move_extend("mov32sx16", ALU, 16),
    Mnemonic::unary("le16", ALU | op::END | op::TO_LE, 16),
    Mnemonic::unary("le32", ALU | op::END | op::TO_LE, 32),
    Mnemonic::unary("le64", ALU | op::END | op::TO_LE, 64),
    Mnemonic::unary("be16", ALU | op::END | op::TO_BE, 16),
    Mnemonic::unary("be32", ALU | op::END | op::TO_BE, 32),
    Mnemonic::unary("be64", ALU | op::END | op::TO_BE, 64),
    // In the 64-bit class the source bit must be clear: the swap is unconditional.
    Mnemonic::unary("bswap16", ALU64 | op::END, 16),
    Mnemonic::unary("bswap32", ALU64 | op::END, 32),
    Mnemonic::unary("bswap64", ALU64 | op::END, 64),
    Mnemonic::memory("ldxb", Shape::Load, LDX_MEM | op::SIZE_B),
    Mnemonic::memory("ldxh", Shape::Load, LDX_MEM | op::SIZE_H),
    Mnemonic::memory("ldxw", Shape::Load, LDX_MEM | op::SIZE_W),
    Mnemonic::memory("ldxdw", Shape::Load, LDX_MEM | op::SIZE_DW),
    Mnemonic::memory("ldxsb", Shape::Load, LDX_MEMSX | op::SIZE_B),
    Mnemonic::memory("ldxsh", Shape::Load, LDX_MEMSX | op::SIZE_H),
    Mnemonic::memory("ldxsw", Shape::Load, LDX_MEMSX | op::SIZE_W),
    Mnemonic::memory("stxb", Shape::StoreRegister, STX_MEM | op::SIZE_B),
    Mnemonic::memory("stxh", Shape::StoreRegister, STX_MEM | op::SIZE_H),
    Mnemonic::memory("stxw", Shape::StoreRegister, STX_MEM | op::SIZE_W),
    Mnemonic::memory("stxdw", Shape::StoreRegister, STX_MEM | op::SIZE_DW),
    Mnemonic::memory("stb", Shape::StoreImmediate, ST_MEM | op::SIZE_B),
    Mnemonic::memory("sth", Shape::StoreImmediate, ST_MEM | op::SIZE_H),
    Mnemonic::memory("stw", Shape::StoreImmediate, ST_MEM | op::SIZE_W),
    Mnemonic::memory("stdw", Shape::StoreImmediate, ST_MEM | op::SIZE_DW),
    Mnemonic::new("lddw", Shape::Wide, op::LDDW, 0, 0),
    Mnemonic::new("ja", Shape::Jump, JMP | op::JA, 0, 0),
    Mnemonic::new("ja32", Shape::Jump32, JMP32 | op::JA, 0, 0),
    Mnemonic::branch("jeq", JMP | op::JEQ),
    Mnemonic::branch("jgt", JMP | op::JGT),
    Mnemonic::branch("jge", JMP | op::JGE),
    Mnemonic::branch("jset", JMP | op::JSET),
    Mnemonic::branch("jne", JMP | op::JNE),
    Mnemonic::branch("jsgt", JMP | op::JSGT),
    Mnemonic::branch("jsge", JMP | op::JSGE),
    Mnemonic::branch("jlt", JMP | op::JLT),
    Mnemonic::branch("jle", JMP | op::JLE),
    Mnemonic::branch("jslt", JMP | op::JSLT),
    Mnemonic::branch("jsle", JMP | op::JSLE),
    Mnemonic::branch("jeq32", JMP32 | op::JEQ),
    Mnemonic::branch("jgt32", JMP32 | op::JGT),
    Mnemonic::branch("jge32", JMP32 | op::JGE),
    Mnemonic::branch("jset32", JMP32 | op::JSET),
    Mnemonic::branch("jne32", JMP32 | op::JNE),
    Mnemonic::branch("jsgt32", JMP32 | op::JSGT),
    Mnemonic::branch("jsge32", JMP32 | op::JSGE),
    Mnemonic::branch("jlt32", JMP32 | op::JLT),
    Mnemonic::branch("jle32", JMP32 | op::JLE),
    Mnemonic::branch("jslt32", JMP32 | op::JSLT),
    Mnemonic::branch("jsle32", JMP32 | op::JSLE),
    Mnemonic::new("call", Shape::Call, JMP | op::CALL, 0, 0),
    Mnemonic::new("exit", Shape::Exit, JMP | op::EXIT, 0, 0),
];

/// An operand with its value known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operand {
    Register(u8),
    /// The value of a 32-bit immediate field.
    Immediate(i32),
    /// The 64-bit immediate of `lddw`.
    Wide(i64),
    Memory {
        base: u8,
        offset: i16,
    },
    /// A jump offset in slots from the next instruction (range checked by the shape).
    Target(i64),
    /// A helper number.
    Helper(i32),
    /// One slot's wire bytes, read as a big-endian number.
    Raw(u64),
}

/// Encodes one instruction into its slot, and its second slot for `lddw`.
///
/// The operands must match the mnemonic's shape, which both the parser and the
/// decoder guarantee; jump offsets must already be range checked.
fn encode(mnemonic: &Mnemonic, operands: &[Operand]) -> (Insn, Option<Insn>) {
    use Operand::*;
    let code = mnemonic.code;
    let off = mnemonic.off;
    let imm = mnemonic.imm;
    let slot = match (mnemonic.shape, operands) {
        (Shape::Binary, &[Register(dst), Register(src)]) => {
            Insn::new(code | op::SRC_X, dst, src, off, 0)
        }
        (Shape::Binary, &[Register(dst), Immediate(value)]) => Insn::new(code, dst, 0, off, value),
        (Shape::Unary, &[Register(dst)]) => Insn::new(code, dst, 0, off, imm),
        (Shape::MoveExtend, &[Register(dst), Register(src)]) => Insn::new(code, dst, src, off, 0),
        (Shape::Load, &[Register(dst), Memory { base, offset }]) => {
            Insn::new(code, dst, base, offset, 0)
        }
        (Shape::StoreRegister, &[Memory { base, offset }, Register(src)]) => {
            Insn::new(code, base, src, offset, 0)
        }
        (Shape::StoreImmediate, &[Memory { base, offset }, Immediate(value)]) => {
            Insn::new(code, base, 0, offset, value)
        }
        (Shape::Wide, &[Register(dst), Wide(value)]) => {
            let low = Insn::new(code, dst, 0, 0, value as i32);
            let high = Insn::new(0, 0, 0, 0, (value >> 32) as i32);
            return (low, Some(high));
        }
        (Shape::Jump, &[Target(offset)]) => Insn::new(code, 0, 0, offset as i16, 0),
        (Shape::Jump32, &[Target(offset)]) => Insn::new(code, 0, 0, 0, offset as i32),
        (Shape::Branch, &[Register(dst), Register(src), Target(offset)]) => {
            Insn::new(code | op::SRC_X, dst, src, offset as i16, 0)
        }
        (Shape::Branch, &[Register(dst), Immediate(value), Target(offset)]) => {
            Insn::new(code, dst, 0, offset as i16, value)
        }
        (Shape::Call, &[Helper(id)]) => Insn::new(code, 0, 0, 0, id),
        (Shape::Exit, &[]) => Insn::new(code, 0, 0, 0, 0),
        (Shape::Raw, &[Raw(bytes)]) => Insn::from_bytes(bytes.to_be_bytes()),
        (shape, operands) => unreachable!("operands {operands:?} do not fit shape {shape:?}"),
    };
    (slot, None)
}

/// Reads the operands of `mnemonic` out of a slot, without checking that the fields
/// the mnemonic fixes hold what it wants: the caller encodes the result again and
/// compares. `None` if the opcode is not the mnemonic's.
fn decode(mnemonic: &Mnemonic, insn: Insn, next: Option<Insn>) -> Option<Vec<Operand>> {
    use Operand::*;
    let register_form = insn.code == mnemonic.code | op::SRC_X
        && matches!(mnemonic.shape, Shape::Binary | Shape::Branch);
    if insn.code != mnemonic.code && !register_form {
        return None;
    }
    let source = if register_form {
        Register(insn.src())
    } else {
        Immediate(insn.imm)
    };
    let (dst, src, off, imm) = (insn.dst(), insn.src(), insn.off, insn.imm);
    let operands = match mnemonic.shape {
        Shape::Binary => vec![Register(dst), source],
        Shape::Unary => vec![Register(dst)],
        Shape::MoveExtend => vec![Register(dst), Register(src)],
        Shape::Load => vec![
            Register(dst),
            Memory {
                base: src,
                offset: off,
            },
        ],
        Shape::StoreRegister => vec![
            Memory {
                base: dst,
                offset: off,
            },
            Register(src),
        ],
        Shape::StoreImmediate => vec![
            Memory {
                base: dst,
                offset: off,
            },
            Immediate(imm),
        ],
        Shape::Wide => {
            let high = next?.imm as u32 as u64;
            vec![
                Register(dst),
                Wide(((high << 32) | imm as u32 as u64) as i64),
            ]
        }
        Shape::Jump => vec![Target(off.into())],
        Shape::Jump32 => vec![Target(imm.into())],
        Shape::Branch => vec![Register(dst), source, Target(off.into())],
        Shape::Call => vec![Helper(imm)],
        Shape::Exit => vec![],
        Shape::Raw => vec![Raw(u64::from_be_bytes(insn.to_bytes()))],
    };
    Some(operands)
}

/// One disassembled instruction: a mnemonic and its operands.
#[derive(Debug)]
struct Unit {
    mnemonic: &'static Mnemonic,
    operands: Vec<Operand>,
}

impl Unit {
    /// The slot a jump at `index` lands on, if it is a jump and the slot exists in
    /// principle (it may still be past the end of the program).
    fn target(&self, index: usize) -> Option<usize> {
        self.operands.iter().find_map(|operand| match operand {
            Operand::Target(offset) => {
                usize::try_from(i64::try_from(index).ok()? + 1 + offset).ok()
            }
            _ => None,
        })
    }

    /// Writes the instruction at slot `index`; jumps to a slot in `labels` name it.
    fn write(&self, text: &mut String, index: usize, labels: Option<&BTreeSet<usize>>) {
        text.push_str(self.mnemonic.name);
        let label = labels
            .zip(self.target(index))
            .and_then(|(labels, target)| labels.contains(&target).then_some(target));
        for (position, operand) in self.operands.iter().enumerate() {
            text.push_str(if position == 0 { " " } else { ", " });
            // Writing into a `String` cannot fail.
            let _ = match (*operand, label) {
                (Operand::Register(register), _) => write!(text, "r{register}"),
                (Operand::Immediate(value), _) => write_number(text, value.into(), u32::MAX.into()),
                (Operand::Wide(value), _) => write_number(text, value, u64::MAX),
                (Operand::Memory { base, offset: 0 }, _) => write!(text, "[r{base}]"),
                (Operand::Memory { base, offset }, _) => write!(text, "[r{base}{offset:+}]"),
                (Operand::Target(_), Some(target)) => write!(text, "L{target}"),
                (Operand::Target(offset), None) => write!(text, "{offset:+}"),
                (Operand::Helper(id), _) => match Helper::from_id(id as u32) {
                    Some(helper) => text.write_str(helper.name()),
                    None => write!(text, "{id}"),
                },
                (Operand::Raw(bytes), _) => write!(text, "0x{bytes:016x}"),
            };
        }
    }
}

/// Writes an immediate: small values in decimal, others as the field's unsigned bits
/// in hex, which is how masks and kernel addresses are read.
fn write_number(text: &mut String, value: i64, field_mask: u64) -> fmt::Result {
    if value.unsigned_abs() < 0x1_0000 {
        write!(text, "{value}")
    } else {
        write!(text, "{:#x}", value as u64 & field_mask)
    }
}

/// Decodes the instruction starting at `index` (which must exist).
fn decode_unit(insns: &[Insn], index: usize) -> Unit {
    let insn = insns[index];
    let next = insns.get(index + 1).copied();
    for mnemonic in &MNEMONICS {
        let Some(operands) = decode(mnemonic, insn, next) else {
            continue;
        };
        let (first, second) = encode(mnemonic, &operands);
        if first == insn && (second.is_none() || second == next) {
            return Unit { mnemonic, operands };
        }
    }
    Unit {
        mnemonic: &RAW,
        operands: vec![Operand::Raw(u64::from_be_bytes(insn.to_bytes()))],
    }
}

/// Decodes a whole program into instructions with their first slot.
fn decode_all(insns: &[Insn]) -> Vec<(usize, Unit)> {
    let mut units = Vec::new();
    let mut index = 0;
    while index < insns.len() {
        let unit = decode_unit(insns, index);
        let slots = unit.mnemonic.shape.slots();
        units.push((index, unit));
        index += slots;
    }
    units
}

/// Where a label points.
#[derive(Debug)]
struct LabelDefinition {
    slot: usize,
    line: usize,
}

/// An operand as written, before labels are known.
#[derive(Debug)]
enum Written<'a> {
    Ready(Operand),
    /// A jump to a label, with the byte position of the operand in its line.
    Label {
        name: &'a str,
        at: usize,
    },
    /// A `+N` / `-N` jump, not yet range checked.
    Offset {
        value: i128,
        at: usize,
    },
}

/// One instruction as written.
#[derive(Debug)]
struct Statement<'a> {
    mnemonic: &'static Mnemonic,
    operands: Vec<Written<'a>>,
    line: LineParser<'a>,
}

impl Statement<'_> {
    /// Resolves one operand of the statement at slot `slot`.
    fn resolve(
        &self,
        operand: &Written<'_>,
        labels: &BTreeMap<&str, LabelDefinition>,
        slot: usize,
    ) -> Result<Operand, AsmError> {
        let (minimum, maximum) = self.mnemonic.shape.offset_range();
        match *operand {
            Written::Ready(operand) => Ok(operand),
            Written::Offset { value, at } => {
                if value < minimum.into() || value > maximum.into() {
                    return Err(self.line.error(
                        at,
                        format!("jump offset {value:+} out of range ({minimum} to {maximum})"),
                    ));
                }
                Ok(Operand::Target(value as i64))
            }
            Written::Label { name, at } => {
                let Some(label) = labels.get(name) else {
                    return Err(self.line.error(at, format!("undefined label \"{name}\"")));
                };
                // Both are slot indices of a program in memory, so they fit i64.
                let offset = label.slot as i64 - (slot as i64 + 1);
                if offset < minimum || offset > maximum {
                    return Err(self.line.error(
                        at,
                        format!(
                            "jump to \"{name}\" is {offset:+} slots, out of range \
                             ({minimum} to {maximum})"
                        ),
                    ));
                }
                Ok(Operand::Target(offset))
            }
        }
    }
}

/// What one line holds.
#[derive(Debug)]
struct ParsedLine<'a> {
    /// Labels defined on the line, with their byte positions.
    labels: Vec<(&'a str, usize)>,
    statement: Option<Statement<'a>>,
}

/// Parses one line. Positions are byte offsets into the line; errors turn them into
/// character columns.
#[derive(Clone, Copy, Debug)]
struct LineParser<'a> {
    text: &'a str,
    /// 1-based line number.
    number: usize,
}

impl<'a> LineParser<'a> {
    fn error(&self, at: usize, message: String) -> AsmError {
        let column = self.text[..at].chars().count() + 1;
        AsmError {
            line: self.number,
            column,
            message,
        }
    }

    /// The first position at or after `at` that is not whitespace, or `end`.
    fn skip_space(&self, at: usize, end: usize) -> usize {
        let text = &self.text[at..end];
        at + (text.len() - text.trim_start().len())
    }

    /// The end of the word of label characters starting at `at`.
    fn word_end(&self, at: usize, end: usize) -> usize {
        at + self.text[at..end]
            .find(|character: char| !is_word_character(character))
            .unwrap_or(end - at)
    }

    fn parse(&self) -> Result<ParsedLine<'a>, AsmError> {
        let end = self.text.find([';', '#']).unwrap_or(self.text.len());
        let mut labels = Vec::new();
        let mut at = self.skip_space(0, end);
        loop {
            if at == end {
                return Ok(ParsedLine {
                    labels,
                    statement: None,
                });
            }
            let word_end = self.word_end(at, end);
            let word = &self.text[at..word_end];
            let after = self.skip_space(word_end, end);
            if !word.is_empty() && self.text[after..end].starts_with(':') {
                if !is_label(word) {
                    return Err(self.error(at, format!("invalid label name \"{word}\"")));
                }
                labels.push((word, at));
                at = self.skip_space(after + 1, end);
                continue;
            }
            if word.is_empty() {
                let found = self.text[at..end]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default();
                return Err(self.error(
                    at,
                    format!("expected an instruction or a label, found \"{found}\""),
                ));
            }
            let Some(mnemonic) = Mnemonic::lookup(word) else {
                return Err(self.error(at, format!("unknown mnemonic \"{word}\"")));
            };
            if word_end < end && after == word_end {
                let found = self.text[word_end..].chars().next().unwrap_or_default();
                return Err(self.error(
                    word_end,
                    format!("unexpected \"{found}\" after mnemonic \"{word}\""),
                ));
            }
            let operands = self.operands(mnemonic, at, word_end, end)?;
            let statement = Statement {
                mnemonic,
                operands,
                line: *self,
            };
            return Ok(ParsedLine {
                labels,
                statement: Some(statement),
            });
        }
    }

    /// Parses the operands between `start` and `end` for `mnemonic`, which starts at
    /// `mnemonic_at`.
    fn operands(
        &self,
        mnemonic: &Mnemonic,
        mnemonic_at: usize,
        start: usize,
        end: usize,
    ) -> Result<Vec<Written<'a>>, AsmError> {
        let mut parts = Vec::new();
        if !self.text[start..end].trim().is_empty() {
            let mut part_start = start;
            for (position, _) in self.text[start..end].match_indices(',') {
                parts.push((part_start, start + position));
                part_start = start + position + 1;
            }
            parts.push((part_start, end));
        }
        let kinds = mnemonic.shape.operands();
        if parts.len() != kinds.len() {
            let expected = match kinds.len() {
                0 => String::from("no operands"),
                1 => format!("1 operand ({})", mnemonic.shape.synopsis()),
                count => format!("{count} operands ({})", mnemonic.shape.synopsis()),
            };
            return Err(self.error(
                mnemonic_at,
                format!(
                    "\"{}\" takes {expected}, found {}",
                    mnemonic.name,
                    parts.len()
                ),
            ));
        }
        kinds
            .iter()
            .zip(parts)
            .map(|(kind, (part_start, part_end))| {
                let start = self.skip_space(part_start, part_end);
                let end = start + self.text[start..part_end].trim_end().len();
                if start == end {
                    return Err(self.error(start, String::from("missing operand")));
                }
                self.operand(*kind, start, end)
            })
            .collect()
    }

    /// Parses one operand, which spans exactly `start..end` (trimmed, not empty).
    fn operand(&self, kind: Kind, start: usize, end: usize) -> Result<Written<'a>, AsmError> {
        let text = &self.text[start..end];
        let operand = match kind {
            Kind::Register => Operand::Register(self.register(start, end, "a register")?),
            Kind::RegisterOrImmediate => {
                if text.starts_with('r') {
                    Operand::Register(self.register(start, end, "a register or an immediate")?)
                } else {
                    Operand::Immediate(self.immediate(start, end)?)
                }
            }
            Kind::Immediate => Operand::Immediate(self.immediate(start, end)?),
            Kind::WideImmediate => {
                let value = self.number(start, end, "an immediate")?;
                if value < i64::MIN.into() || value > u64::MAX.into() {
                    return Err(self.error(
                        start,
                        format!("immediate \"{text}\" out of range for a 64-bit immediate"),
                    ));
                }
                Operand::Wide(value as i64)
            }
            Kind::Memory => self.memory(start, end)?,
            Kind::Target => return self.target(start, end),
            Kind::Helper => {
                if text
                    .starts_with(|character: char| character.is_ascii_digit() || character == '-')
                {
                    Operand::Helper(self.immediate(start, end)?)
                } else {
                    match Helper::from_name(text) {
                        Some(helper) => Operand::Helper(helper.id() as i32),
                        None => {
                            return Err(self.error(start, format!("unknown helper \"{text}\"")));
                        }
                    }
                }
            }
            Kind::RawSlot => {
                let digits = text.strip_prefix("0x").unwrap_or_default();
                if digits.len() != 16 || !digits.chars().all(|digit| digit.is_ascii_hexdigit()) {
                    return Err(self.error(
                        start,
                        format!(
                            "expected 0x and exactly 16 hex digits (the 8 wire bytes in \
                             order), found \"{text}\""
                        ),
                    ));
                }
                // Sixteen hex digits always fit a u64.
                Operand::Raw(u64::from_str_radix(digits, 16).unwrap_or_default())
            }
        };
        Ok(Written::Ready(operand))
    }

    /// Parses a register spanning `start..end`; `expected` names what was wanted.
    fn register(&self, start: usize, end: usize, expected: &str) -> Result<u8, AsmError> {
        let text = &self.text[start..end];
        let digits = text.strip_prefix('r').unwrap_or_default();
        if digits.is_empty() || !digits.chars().all(|digit| digit.is_ascii_digit()) {
            return Err(self.error(start, format!("expected {expected}, found \"{text}\"")));
        }
        match digits.parse::<u8>() {
            Ok(number) if number <= 15 => Ok(number),
            _ => Err(self.error(
                start,
                format!("register \"{text}\" out of range (r0 to r15)"),
            )),
        }
    }

    /// Parses a value for a 32-bit immediate field.
    fn immediate(&self, start: usize, end: usize) -> Result<i32, AsmError> {
        let value = self.number(start, end, "an immediate")?;
        if value < i32::MIN.into() || value > u32::MAX.into() {
            let text = &self.text[start..end];
            return Err(self.error(
                start,
                format!("immediate \"{text}\" out of range for a 32-bit field"),
            ));
        }
        // Values above i32::MAX keep their bits.
        Ok(value as i32)
    }

    /// Parses a number spanning `start..end`, optionally negative.
    fn number(&self, start: usize, end: usize, expected: &str) -> Result<i128, AsmError> {
        let text = &self.text[start..end];
        let value = match text.strip_prefix('-') {
            Some(magnitude) => parse_magnitude(magnitude).map(|value| -value),
            None => parse_magnitude(text),
        };
        value.ok_or_else(|| self.error(start, format!("expected {expected}, found \"{text}\"")))
    }

    /// Parses a sign (`+` or `-`) at `start` followed by a number, up to `end`.
    fn signed_offset(&self, start: usize, end: usize, expected: &str) -> Result<i128, AsmError> {
        let text = &self.text[start..end];
        let negative = match text.chars().next() {
            Some('+') => false,
            Some('-') => true,
            _ => {
                return Err(self.error(start, format!("expected \"+\" or \"-\", found \"{text}\"")));
            }
        };
        let number_start = self.skip_space(start + 1, end);
        let magnitude = parse_magnitude(&self.text[number_start..end])
            .ok_or_else(|| self.error(start, format!("expected {expected}, found \"{text}\"")))?;
        Ok(if negative { -magnitude } else { magnitude })
    }

    /// Parses `[reg]`, `[reg+off]` or `[reg-off]`.
    fn memory(&self, start: usize, end: usize) -> Result<Operand, AsmError> {
        let text = &self.text[start..end];
        if !text.starts_with('[') {
            return Err(self.error(
                start,
                format!("expected a memory operand like [r1+8], found \"{text}\""),
            ));
        }
        if !text.ends_with(']') {
            return Err(self.error(end, String::from("expected \"]\"")));
        }
        let inner_end = end - 1;
        let base_start = self.skip_space(start + 1, inner_end);
        let base_end = self.word_end(base_start, inner_end);
        let base = self.register(base_start, base_end, "a base register")?;
        let sign_at = self.skip_space(base_end, inner_end);
        if sign_at == inner_end {
            return Ok(Operand::Memory { base, offset: 0 });
        }
        let sign_end = sign_at + self.text[sign_at..inner_end].trim_end().len();
        let offset = self.signed_offset(sign_at, sign_end, "a memory offset")?;
        match i16::try_from(offset) {
            Ok(offset) => Ok(Operand::Memory { base, offset }),
            Err(_) => {
                let written = &self.text[sign_at..sign_end];
                Err(self.error(
                    sign_at,
                    format!("memory offset \"{written}\" out of range (-32768 to 32767)"),
                ))
            }
        }
    }

    /// Parses a label or a `+N` / `-N` offset.
    fn target(&self, start: usize, end: usize) -> Result<Written<'a>, AsmError> {
        let text = &self.text[start..end];
        if text.starts_with(['+', '-']) {
            let value = self.signed_offset(start, end, "a jump offset")?;
            Ok(Written::Offset { value, at: start })
        } else if is_label(text) {
            Ok(Written::Label {
                name: text,
                at: start,
            })
        } else {
            Err(self.error(
                start,
                format!("expected a label or a +N/-N offset, found \"{text}\""),
            ))
        }
    }
}

fn is_word_character(character: char) -> bool {
    character.is_ascii_alphanumeric() || character == '_' || character == '.'
}

/// Whether `name` is a valid label: `[A-Za-z_.][A-Za-z0-9_.]*`.
fn is_label(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|first| !first.is_ascii_digit())
        && name.chars().all(is_word_character)
}

/// Parses an unsigned decimal or `0x` hex number. Values too large for any field
/// saturate, so the caller's range check reports them. `None` if malformed.
fn parse_magnitude(text: &str) -> Option<i128> {
    let (radix, digits) = match text.strip_prefix("0x") {
        Some(digits) => (16, digits),
        None => (10, text),
    };
    if digits.is_empty() {
        return None;
    }
    digits.chars().try_fold(0i128, |value, digit| {
        let digit = digit.to_digit(radix)?;
        Some(
            value
                .saturating_mul(radix.into())
                .saturating_add(digit.into()),
        )
    })
}
