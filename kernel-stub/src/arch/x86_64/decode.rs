//! A compact x86-64 instruction decoder: lengths, operand positions, opcodes.
//!
//! # Design
//!
//! The stub needs little from a decoder: an instruction's length, where its
//! ModRM displacement and immediate sit (to rewrite a RIP-relative displacement),
//! its opcode map and byte (to recognise branches, calls, returns, nops and what
//! must be refused), and the fields of its ModRM and SIB bytes (to emulate
//! `call reg` / `call [mem]`). [`decode`] gives exactly that, from small tables
//! written from the Intel SDM volume 2 (opcode maps in appendix A, instruction
//! formats in chapter 2) and AMD's APM volume 3, for 64-bit mode only:
//!
//! - legacy prefixes (operand size, address size, segment, `lock`, `rep`/`repne`),
//!   REX (which only counts when it comes last, right before the opcode);
//! - the one-byte map, `0F`, `0F 38` and `0F 3A` (with the mandatory prefixes of
//!   SSE instructions), x87; VEX (`C4`/`C5`) for a list of common AVX, AVX2, FMA,
//!   FMA4, BMI and opmask instructions, and EVEX (`62`) for a list of common
//!   AVX-512 ones (moves, compares into opmasks, integer arithmetic and logic),
//!   each with its constraints on VEX.L/W/vvvv and EVEX.z/aaa/b;
//! - ModRM, SIB, displacements (RIP-relative with `mod = 00, rm = 101`, which the
//!   address-size prefix turns EIP-relative) and immediates (the operand-size
//!   prefix and REX.W effects, `mov r64, imm64`, `moffs` forms, `enter`, group 3
//!   immediates, near branches whose operand-size prefix Intel ignores).
//!
//! # Invariants
//!
//! - Conservative: an encoding is accepted only when the tables describe it
//!   exactly; what the tables do not know is `None`, and so is anything invalid
//!   in 64-bit mode (`push es`, `daa`, `pusha`, `bound`, far `call`/`jmp`
//!   immediates, `into`, `aam`, `aad`, `salc`, `les`/`lds`), `lock` where it
//!   would raise #UD, VEX and EVEX instructions not in the lists (and any EVEX
//!   broadcast or embedded rounding), XOP (`8F` with a map select) and 3DNow!
//!   (`0F 0F`). Several competing mandatory prefixes (`66` with `F3`, say) are
//!   left out too. The differential tests hold every accepted instruction to
//!   iced-x86's length and field offsets for it.
//! - Never panics and never allocates, on any input: every byte is read with
//!   `get`, and nothing is read past [`MAX_LEN`] bytes.

/// The longest x86 instruction.
pub const MAX_LEN: usize = 15;

/// The map an opcode byte belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpcodeMap {
    /// The one-byte map.
    Primary,
    /// `0F xx`.
    Secondary,
    /// `0F 38 xx`.
    Escape38,
    /// `0F 3A xx`.
    Escape3A,
    /// VEX-encoded, with its map select: 1 (`0F`), 2 (`0F 38`) or 3 (`0F 3A`).
    Vex(u8),
    /// EVEX-encoded, with its map select: 1 (`0F`), 2 (`0F 38`) or 3 (`0F 3A`).
    Evex(u8),
}

/// Where a field sits in the instruction, in bytes from its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Offset of the field's first byte.
    pub offset: u8,
    /// Size of the field in bytes.
    pub size: u8,
}

/// The fields of a ModRM byte, as encoded (without REX extensions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModRm {
    /// `mod`: 3 is a register operand, 0 to 2 a memory operand.
    pub mode: u8,
    /// `reg`: a register or an opcode extension (`/digit`).
    pub reg: u8,
    /// `rm`: a register, or the memory operand's base (4: a SIB byte follows).
    pub rm: u8,
}

impl ModRm {
    fn new(byte: u8) -> Self {
        Self {
            mode: byte >> 6,
            reg: (byte >> 3) & 7,
            rm: byte & 7,
        }
    }

    /// Whether the operand is in memory.
    pub fn is_memory(&self) -> bool {
        self.mode != 3
    }
}

/// Legacy prefixes seen in front of the opcode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefixes {
    bits: u8,
    segment: u8,
}

const OPERAND_SIZE: u8 = 1 << 0;
const ADDRESS_SIZE: u8 = 1 << 1;
const LOCK: u8 = 1 << 2;
const REPEAT: u8 = 1 << 3;
const REPEAT_NOT_EQUAL: u8 = 1 << 4;
const FS_OR_GS: u8 = 1 << 5;
const REPEAT_LAST: u8 = 1 << 6;

impl Prefixes {
    /// `66`.
    pub fn operand_size(&self) -> bool {
        self.bits & OPERAND_SIZE != 0
    }

    /// `67`: 32-bit addressing.
    pub fn address_size(&self) -> bool {
        self.bits & ADDRESS_SIZE != 0
    }

    /// `F0`.
    pub fn lock(&self) -> bool {
        self.bits & LOCK != 0
    }

    /// `F3`.
    pub fn repeat(&self) -> bool {
        self.bits & REPEAT != 0
    }

    /// Whether `F3` is present and no `F2` follows it (so that `F3` selects the
    /// instruction where both could).
    pub fn repeat_last(&self) -> bool {
        self.bits & REPEAT_LAST != 0
    }

    /// `F2`.
    pub fn repeat_not_equal(&self) -> bool {
        self.bits & REPEAT_NOT_EQUAL != 0
    }

    /// The last segment override (`26`, `2E`, `36`, `3E`, `64` or `65`), if any.
    pub fn segment(&self) -> Option<u8> {
        (self.segment != 0).then_some(self.segment)
    }

    /// Whether an `FS` or `GS` override is present (anywhere among the prefixes:
    /// in 64-bit mode the others do not cancel it).
    pub fn fs_or_gs(&self) -> bool {
        self.bits & FS_OR_GS != 0
    }
}

/// One decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Instruction {
    len: u8,
    prefixes: Prefixes,
    rex: u8,
    map: OpcodeMap,
    opcode: u8,
    modrm: Option<u8>,
    sib: Option<u8>,
    displacement: Option<Field>,
    immediate: Option<Field>,
}

impl Instruction {
    /// Length in bytes (1 to [`MAX_LEN`]).
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Always false: an instruction has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The legacy prefixes.
    pub fn prefixes(&self) -> Prefixes {
        self.prefixes
    }

    /// The REX byte (`40` to `4F`), or 0.
    pub fn rex(&self) -> u8 {
        self.rex
    }

    /// REX.W.
    pub fn rex_w(&self) -> bool {
        self.rex & 8 != 0
    }

    /// The opcode's map.
    pub fn map(&self) -> OpcodeMap {
        self.map
    }

    /// The opcode byte within its map.
    pub fn opcode(&self) -> u8 {
        self.opcode
    }

    /// The ModRM byte, if the instruction has one (for `mov` to and from control
    /// and debug registers, which ignore `mod`, with `mod` set to 3).
    pub fn modrm_byte(&self) -> Option<u8> {
        self.modrm
    }

    /// The ModRM fields, if the instruction has one.
    pub fn modrm(&self) -> Option<ModRm> {
        self.modrm.map(ModRm::new)
    }

    /// The ModRM `reg` field if the instruction has one (its `/digit`).
    pub fn reg(&self) -> Option<u8> {
        self.modrm().map(|modrm| modrm.reg)
    }

    /// Where the memory operand's displacement sits.
    pub fn displacement(&self) -> Option<Field> {
        self.displacement
    }

    /// Where the immediate sits (`enter`: both immediates, 3 bytes; a relative
    /// branch: its offset).
    pub fn immediate(&self) -> Option<Field> {
        self.immediate
    }

    /// Whether the memory operand is relative to the instruction pointer (RIP, or
    /// EIP with the address-size prefix).
    pub fn is_ip_relative(&self) -> bool {
        matches!(self.modrm(), Some(ModRm { mode: 0, rm: 5, .. }))
    }

    /// The memory operand's base register (hardware number 0 to 15, REX.B
    /// included), `None` for no base (RIP-relative, or SIB with no base).
    pub fn memory_base(&self) -> Option<u8> {
        let modrm = self.modrm().filter(ModRm::is_memory)?;
        let rex_b = (self.rex & 1) << 3;
        if modrm.rm != 4 {
            return (modrm.mode != 0 || modrm.rm != 5).then_some(modrm.rm | rex_b);
        }
        let base = self.sib? & 7;
        (modrm.mode != 0 || base != 5).then_some(base | rex_b)
    }

    /// The memory operand's index register (0 to 15, REX.X included), if it has
    /// one.
    pub fn memory_index(&self) -> Option<u8> {
        let sib = self.sib?;
        let index = ((sib >> 3) & 7) | ((self.rex & 2) << 2);
        (index != 4).then_some(index)
    }

    /// The scale of the SIB byte (1, 2, 4 or 8; 1 without a SIB byte). It is
    /// encoded, and reported, even when there is no index to scale.
    pub fn memory_scale(&self) -> u8 {
        self.sib.map_or(1, |sib| 1 << (sib >> 6))
    }

    /// The displacement as encoded, sign-extended (0 without one; an EVEX `disp8`
    /// is not scaled).
    pub fn displacement_value(&self, code: &[u8]) -> u64 {
        self.displacement
            .and_then(|field| read_signed(code, field))
            .unwrap_or(0)
    }

    /// The immediate, zero-extended (0 without one; `enter`: its first 16 bits).
    pub fn immediate_value(&self, code: &[u8]) -> u64 {
        self.immediate
            .and_then(|field| {
                let size = field.size.min(8);
                read_unsigned(code, field.offset, size)
            })
            .unwrap_or(0)
    }

    /// The target of a RIP-relative memory operand when the instruction sits at
    /// `address` (None for other operands, and for EIP-relative ones).
    pub fn rip_relative_target(&self, address: u64, code: &[u8]) -> Option<u64> {
        if !self.is_ip_relative() || self.prefixes.address_size() {
            return None;
        }
        let next = address.wrapping_add(u64::from(self.len));
        Some(next.wrapping_add(self.displacement_value(code)))
    }

    /// The target of a relative branch (`jcc`, `jmp`, `call`, `loop`, `jrcxz`)
    /// when the instruction sits at `address`: its immediate is the offset.
    pub fn relative_target(&self, address: u64, code: &[u8]) -> Option<u64> {
        let offset = read_signed(code, self.immediate?)?;
        Some(
            address
                .wrapping_add(u64::from(self.len))
                .wrapping_add(offset),
        )
    }
}

/// Little-endian, up to 8 bytes.
fn read_unsigned(code: &[u8], offset: u8, size: u8) -> Option<u64> {
    let start = usize::from(offset);
    let bytes = code.get(start..start + usize::from(size))?;
    Some(
        bytes
            .iter()
            .rev()
            .fold(0, |value, &byte| (value << 8) | u64::from(byte)),
    )
}

/// A 1-, 2-, 4- or 8-byte field, sign-extended.
fn read_signed(code: &[u8], field: Field) -> Option<u64> {
    let value = read_unsigned(code, field.offset, field.size)?;
    Some(match field.size {
        1 => value as u8 as i8 as u64,
        2 => value as u16 as i16 as u64,
        4 => value as u32 as i32 as u64,
        _ => value,
    })
}

// ---------------------------------------------------------------------------
// Tables.

/// How big the immediate is (the low 3 bits of a table entry).
const IMM_NONE: u8 = 0;
/// One byte (also `rel8`).
const IMM_BYTE: u8 = 1;
/// Two bytes.
const IMM_WORD: u8 = 2;
/// `iz`: two bytes with the operand-size prefix (unless REX.W), else four.
const IMM_OPERAND: u8 = 3;
/// `rel32` of a near branch: four bytes (Intel ignores the operand-size prefix).
const IMM_REL32: u8 = 4;
/// `iv` of `mov reg, imm`: eight bytes with REX.W, two with `66`, else four.
const IMM_FULL: u8 = 5;
/// `moffs`: eight bytes, four with the address-size prefix.
const IMM_OFFSET: u8 = 6;
/// `enter`: `iw` then `ib`.
const IMM_ENTER: u8 = 7;
const IMM_MASK: u8 = 7;

/// Has a ModRM byte.
const MODRM: u8 = 1 << 3;
/// `lock` is allowed (with a memory operand; groups check their `/digit`).
const LOCKABLE: u8 = 1 << 4;
/// Not an instruction in 64-bit mode (or not one the tables accept).
const INVALID: u8 = 1 << 5;
/// An SSE-style instruction: its `66`/`F3`/`F2` prefix selects the instruction
/// (see [`sse_prefixes`]).
const MANDATORY_PREFIX: u8 = 1 << 6;
/// Needs a check in [`check_group`] (opcode extensions, operand forms).
const SPECIAL: u8 = 1 << 7;

/// The one-byte map, 64-bit mode. Prefixes, REX and the escapes (`0F`, VEX,
/// EVEX) are dealt with before the table is consulted.
const fn primary(opcode: u8) -> u8 {
    match opcode {
        0x00..=0x3f => match opcode & 7 {
            0 | 1 if opcode < 0x38 => MODRM | LOCKABLE,
            0..=3 => MODRM,
            4 => IMM_BYTE,
            5 => IMM_OPERAND,
            _ => INVALID,
        },
        0x50..=0x5f | 0x6c..=0x6f | 0x90..=0x99 | 0x9b..=0x9f => IMM_NONE,
        0xa4..=0xa7 | 0xaa..=0xaf | 0xc3 | 0xc9 | 0xcb | 0xcc | 0xcf | 0xd7 => IMM_NONE,
        0xec..=0xef | 0xf1 | 0xf4 | 0xf5 | 0xf8..=0xfd => IMM_NONE,
        0x63 | 0x84 | 0x85 | 0x88..=0x8b => MODRM,
        0x8c..=0x8f => MODRM | SPECIAL,
        0x68 | 0xa9 => IMM_OPERAND,
        0x69 => MODRM | IMM_OPERAND,
        0x6a | 0x70..=0x7f | 0xa8 | 0xb0..=0xb7 | 0xcd | 0xe0..=0xe7 | 0xeb => IMM_BYTE,
        0x6b => MODRM | IMM_BYTE,
        0x80 | 0x83 => MODRM | LOCKABLE | SPECIAL | IMM_BYTE,
        0x81 => MODRM | LOCKABLE | SPECIAL | IMM_OPERAND,
        0x86 | 0x87 => MODRM | LOCKABLE,
        0xa0..=0xa3 => IMM_OFFSET,
        0xb8..=0xbf => IMM_FULL,
        0xc0 | 0xc1 => MODRM | SPECIAL | IMM_BYTE,
        0xc2 | 0xca => IMM_WORD,
        0xc6 => MODRM | SPECIAL | IMM_BYTE,
        0xc7 => MODRM | SPECIAL | IMM_OPERAND,
        0xc8 => IMM_ENTER,
        0xd0..=0xd3 | 0xd8..=0xdf | 0xf6 | 0xf7 => MODRM | SPECIAL,
        0xe8 | 0xe9 => IMM_REL32,
        0xfe | 0xff => MODRM | LOCKABLE | SPECIAL,
        _ => INVALID,
    }
}

/// The `0F xx` map.
const fn secondary(opcode: u8) -> u8 {
    match opcode {
        0x00 | 0x01 | 0x0d | 0x1e | 0x20..=0x23 => MODRM | SPECIAL,
        0x78 | 0x79 | 0xae | 0xb2 | 0xb4 | 0xb5 | 0xb8 => MODRM | SPECIAL,
        0xc7 => MODRM | SPECIAL | LOCKABLE,
        0xba => MODRM | SPECIAL | LOCKABLE | IMM_BYTE,
        0x02
        | 0x03
        | 0x18..=0x1d
        | 0x1f
        | 0x40..=0x4f
        | 0x90..=0x9f
        | 0xa3
        | 0xa5
        | 0xad
        | 0xaf
        | 0xb6
        | 0xb7 => MODRM,
        0xb9 | 0xbc..=0xbf | 0xff => MODRM,
        0xa4 | 0xac => MODRM | IMM_BYTE,
        0xab | 0xb0 | 0xb1 | 0xb3 | 0xbb | 0xc0 | 0xc1 => MODRM | LOCKABLE,
        0x05..=0x09 | 0x0b | 0x0e | 0x30..=0x35 | 0xa0..=0xa2 | 0xa8..=0xaa => IMM_NONE,
        0xc8..=0xcf => IMM_NONE,
        0x77 => MANDATORY_PREFIX,
        0x80..=0x8f => IMM_REL32,
        0x70..=0x73 | 0xc2 | 0xc4..=0xc6 => MODRM | MANDATORY_PREFIX | IMM_BYTE,
        0x10..=0x17 | 0x28..=0x2f | 0x50..=0x6f | 0x74..=0x76 | 0x7c..=0x7f => {
            MODRM | MANDATORY_PREFIX
        }
        0xc3 | 0xd0..=0xfe => MODRM | MANDATORY_PREFIX,
        _ => INVALID,
    }
}

/// Mandatory prefixes: bit 0 none, bit 1 `66`, bit 2 `F3`, bit 3 `F2`.
const NP: u8 = 1;
const P66: u8 = 2;
const PF3: u8 = 4;
const PF2: u8 = 8;
const ALL: u8 = NP | P66 | PF3 | PF2;

/// Which mandatory prefixes make an SSE/MMX instruction of the `0F` map.
const fn sse_prefixes(opcode: u8) -> u8 {
    match opcode {
        0x10..=0x12 | 0x2a | 0x2c | 0x2d | 0x51 | 0x58..=0x5a | 0x5c..=0x5f => ALL,
        0x70 | 0xc2 => ALL,
        0x52 | 0x53 => NP | PF3,
        0x16 | 0x5b | 0x6f | 0x7e | 0x7f => NP | P66 | PF3,
        0x6c | 0x6d => P66,
        0x7c | 0x7d | 0xd0 => P66 | PF2,
        0xd6 | 0xe6 => P66 | PF3 | PF2,
        0xf0 => PF2,
        0x77 | 0xc3 => NP,
        _ => NP | P66,
    }
}

/// A record of the `0F 38`, `0F 3A` or VEX tables.
#[derive(Clone, Copy)]
struct Entry {
    map: u8,
    first: u8,
    last: u8,
    prefixes: u8,
    flags: u16,
}

/// Only with a memory operand.
const MEMORY: u16 = 1 << 0;
/// Only with a register operand.
const REGISTER: u16 = 1 << 1;
/// An 8-bit immediate follows.
const IMMEDIATE: u16 = 1 << 2;
/// VEX.L must be 0.
const L0: u16 = 1 << 3;
/// VEX.L must be 1.
const L1: u16 = 1 << 4;
/// VEX.W must be 0.
const W0: u16 = 1 << 5;
/// VEX.W must be 1.
const W1: u16 = 1 << 6;
/// VEX.vvvv unused: must be 1111.
const NO_VVVV: u16 = 1 << 7;
/// VEX.vvvv unused with a memory operand.
const NO_VVVV_MEMORY: u16 = 1 << 8;
/// No ModRM byte.
const NO_MODRM: u16 = 1 << 9;
/// ModRM.reg selects the instruction (checked in [`vex`]).
const GROUP: u16 = 1 << 10;
/// ModRM.reg names an opmask register (k0 to k7: VEX.R must be clear).
const K_REG: u16 = 1 << 11;
/// ModRM.rm, when a register, names an opmask register (VEX.B must be clear).
const K_RM: u16 = 1 << 12;
/// VEX.vvvv names an opmask register (k0 to k7).
const K_VVVV: u16 = 1 << 13;
const K_ALL: u16 = K_REG | K_RM | K_VVVV;
/// EVEX: no zeroing-masking with a memory operand (a store).
const NO_ZEROING_MEMORY: u16 = 1 << 14;
/// EVEX: no masking at all.
const NO_MASK: u16 = 1 << 15;

const fn entry(map: u8, first: u8, last: u8, prefixes: u8, flags: u16) -> Entry {
    Entry {
        map,
        first,
        last,
        prefixes,
        flags,
    }
}

/// `0F 38` (map 2) and `0F 3A` (map 3, all with an 8-bit immediate).
const ESCAPES: &[Entry] = &[
    entry(2, 0x00, 0x0b, NP | P66, 0),
    entry(2, 0x10, 0x10, P66, 0),
    entry(2, 0x14, 0x15, P66, 0),
    entry(2, 0x17, 0x17, P66, 0),
    entry(2, 0x1c, 0x1e, NP | P66, 0),
    entry(2, 0x20, 0x25, P66, 0),
    entry(2, 0x28, 0x29, P66, 0),
    entry(2, 0x2a, 0x2a, P66, MEMORY),
    entry(2, 0x2b, 0x2b, P66, 0),
    entry(2, 0x30, 0x35, P66, 0),
    entry(2, 0x37, 0x41, P66, 0),
    entry(2, 0x80, 0x82, P66, MEMORY),
    entry(2, 0xc8, 0xcd, NP, 0),
    entry(2, 0xcf, 0xcf, P66, 0),
    entry(2, 0xdb, 0xdf, P66, 0),
    entry(2, 0xf0, 0xf1, NP | P66, MEMORY),
    entry(2, 0xf0, 0xf1, PF2, 0),
    entry(2, 0xf6, 0xf6, P66 | PF3, 0),
    entry(3, 0x08, 0x0e, P66, IMMEDIATE),
    entry(3, 0x0f, 0x0f, NP | P66, IMMEDIATE),
    entry(3, 0x14, 0x17, P66, IMMEDIATE),
    entry(3, 0x20, 0x22, P66, IMMEDIATE),
    entry(3, 0x40, 0x42, P66, IMMEDIATE),
    entry(3, 0x44, 0x44, P66, IMMEDIATE),
    entry(3, 0x60, 0x63, P66, IMMEDIATE),
    entry(3, 0xcc, 0xcc, NP, IMMEDIATE),
    entry(3, 0xce, 0xcf, P66, IMMEDIATE),
    entry(3, 0xdf, 0xdf, P66, IMMEDIATE),
];

const PNP: u8 = NP | P66;
const SCALAR: u8 = PF3 | PF2;

/// VEX-encoded instructions accepted: maps 1 (`0F`), 2 (`0F 38`), 3 (`0F 3A`).
const VEX: &[Entry] = &[
    entry(1, 0x10, 0x11, PNP, NO_VVVV),
    entry(1, 0x10, 0x11, SCALAR, L0 | NO_VVVV_MEMORY),
    entry(1, 0x14, 0x15, PNP, 0),
    entry(1, 0x28, 0x29, PNP, NO_VVVV),
    entry(1, 0x2a, 0x2a, SCALAR, L0),
    entry(1, 0x2b, 0x2b, PNP, NO_VVVV | MEMORY),
    entry(1, 0x2c, 0x2d, SCALAR, L0 | NO_VVVV),
    entry(1, 0x2e, 0x2f, PNP, L0 | NO_VVVV),
    // Opmask instructions (AVX-512 state, VEX-encoded): kand, kandn, kor, kxnor,
    // kxor, kadd, knot, kunpck*, kmov, kortest, ktest.
    entry(1, 0x41, 0x42, PNP, L1 | REGISTER | K_ALL),
    entry(1, 0x44, 0x44, PNP, L0 | NO_VVVV | REGISTER | K_REG | K_RM),
    entry(1, 0x45, 0x47, PNP, L1 | REGISTER | K_ALL),
    entry(1, 0x4a, 0x4a, PNP, L1 | REGISTER | K_ALL),
    entry(1, 0x4b, 0x4b, P66, L1 | W0 | REGISTER | K_ALL),
    entry(1, 0x4b, 0x4b, NP, L1 | REGISTER | K_ALL),
    entry(1, 0x50, 0x50, PNP, NO_VVVV | REGISTER),
    entry(1, 0x90, 0x90, PNP, L0 | NO_VVVV | K_REG | K_RM),
    entry(1, 0x91, 0x91, PNP, L0 | NO_VVVV | MEMORY | K_REG),
    entry(1, 0x92, 0x92, PNP, L0 | W0 | NO_VVVV | REGISTER | K_REG),
    entry(1, 0x92, 0x92, PF2, L0 | NO_VVVV | REGISTER | K_REG),
    entry(1, 0x93, 0x93, PNP, L0 | W0 | NO_VVVV | REGISTER | K_RM),
    entry(1, 0x93, 0x93, PF2, L0 | NO_VVVV | REGISTER | K_RM),
    entry(1, 0x98, 0x99, PNP, L0 | NO_VVVV | REGISTER | K_REG | K_RM),
    // vcvtps2pd, vcvtpd2ps; vcvtss2sd, vcvtsd2ss.
    entry(1, 0x5a, 0x5a, PNP, NO_VVVV),
    entry(1, 0x5a, 0x5a, SCALAR, L0),
    // vmovsldup, vmovddup, vmovshdup.
    entry(1, 0x12, 0x12, SCALAR, NO_VVVV),
    entry(1, 0x16, 0x16, PF3, NO_VVVV),
    // vldmxcsr, vstmxcsr.
    entry(1, 0xae, 0xae, NP, L0 | NO_VVVV | MEMORY | GROUP),
    entry(1, 0x51, 0x51, PNP, NO_VVVV),
    entry(1, 0x51, 0x51, SCALAR, L0),
    entry(1, 0x54, 0x57, PNP, 0),
    entry(1, 0x58, 0x59, PNP, 0),
    entry(1, 0x58, 0x59, SCALAR, L0),
    entry(1, 0x5c, 0x5f, PNP, 0),
    entry(1, 0x5c, 0x5f, SCALAR, L0),
    entry(1, 0x60, 0x6d, P66, 0),
    entry(1, 0x6e, 0x6e, P66, L0 | NO_VVVV),
    entry(1, 0x6f, 0x6f, P66 | PF3, NO_VVVV),
    entry(1, 0x70, 0x70, P66 | SCALAR, NO_VVVV | IMMEDIATE),
    entry(1, 0x71, 0x73, P66, REGISTER | IMMEDIATE | GROUP),
    entry(1, 0x74, 0x76, P66, 0),
    entry(1, 0x77, 0x77, NP, NO_VVVV | NO_MODRM),
    entry(1, 0x7c, 0x7d, P66 | PF2, 0),
    entry(1, 0x7e, 0x7e, P66 | PF3, L0 | NO_VVVV),
    entry(1, 0x7f, 0x7f, P66 | PF3, NO_VVVV),
    entry(1, 0xc2, 0xc2, PNP, IMMEDIATE),
    entry(1, 0xc2, 0xc2, SCALAR, L0 | IMMEDIATE),
    entry(1, 0xc4, 0xc4, P66, L0 | IMMEDIATE),
    entry(1, 0xc5, 0xc5, P66, L0 | NO_VVVV | REGISTER | IMMEDIATE),
    entry(1, 0xc6, 0xc6, PNP, IMMEDIATE),
    entry(1, 0xd0, 0xd0, P66 | PF2, 0),
    entry(1, 0xd1, 0xd5, P66, 0),
    entry(1, 0xd6, 0xd6, P66, L0 | NO_VVVV),
    entry(1, 0xd7, 0xd7, P66, NO_VVVV | REGISTER),
    entry(1, 0xd8, 0xe5, P66, 0),
    entry(1, 0xe7, 0xe7, P66, NO_VVVV | MEMORY),
    entry(1, 0xe8, 0xef, P66, 0),
    entry(1, 0xf0, 0xf0, PF2, NO_VVVV | MEMORY),
    entry(1, 0xf1, 0xf6, P66, 0),
    entry(1, 0xf8, 0xfe, P66, 0),
    entry(2, 0x00, 0x0b, P66, 0),
    entry(2, 0x0c, 0x0d, P66, W0),
    entry(2, 0x0e, 0x0f, P66, W0 | NO_VVVV),
    entry(2, 0x16, 0x16, P66, L1 | W0),
    entry(2, 0x17, 0x17, P66, NO_VVVV),
    entry(2, 0x18, 0x18, P66, W0 | NO_VVVV),
    entry(2, 0x19, 0x19, P66, L1 | W0 | NO_VVVV),
    entry(2, 0x1a, 0x1a, P66, L1 | W0 | NO_VVVV | MEMORY),
    entry(2, 0x1c, 0x1e, P66, NO_VVVV),
    entry(2, 0x20, 0x25, P66, NO_VVVV),
    entry(2, 0x28, 0x29, P66, 0),
    entry(2, 0x2a, 0x2a, P66, NO_VVVV | MEMORY),
    entry(2, 0x2b, 0x2b, P66, 0),
    entry(2, 0x30, 0x35, P66, NO_VVVV),
    entry(2, 0x36, 0x36, P66, L1 | W0),
    entry(2, 0x37, 0x40, P66, 0),
    entry(2, 0x41, 0x41, P66, L0 | NO_VVVV),
    entry(2, 0x45, 0x45, P66, 0),
    entry(2, 0x46, 0x46, P66, W0),
    entry(2, 0x47, 0x47, P66, 0),
    entry(2, 0x58, 0x59, P66, W0 | NO_VVVV),
    entry(2, 0x5a, 0x5a, P66, L1 | W0 | NO_VVVV | MEMORY),
    entry(2, 0x78, 0x79, P66, W0 | NO_VVVV),
    entry(2, 0x8c, 0x8c, P66, MEMORY),
    entry(2, 0x8e, 0x8e, P66, MEMORY),
    // FMA: x6 to x8, xA, xC, xE are packed; x9, xB, xD, xF scalar (see `vex_fma`).
    entry(2, 0x96, 0x9f, P66, 0),
    entry(2, 0xa6, 0xaf, P66, 0),
    entry(2, 0xb6, 0xbf, P66, 0),
    entry(2, 0xdb, 0xdb, P66, L0 | NO_VVVV),
    entry(2, 0xdc, 0xdf, P66, 0),
    entry(2, 0xf2, 0xf2, NP, L0),
    entry(2, 0xf3, 0xf3, NP, L0 | GROUP),
    entry(2, 0xf5, 0xf5, NP | SCALAR, L0),
    entry(2, 0xf6, 0xf6, PF2, L0),
    entry(2, 0xf7, 0xf7, ALL, L0),
    entry(3, 0x00, 0x01, P66, L1 | W1 | NO_VVVV | IMMEDIATE),
    entry(3, 0x02, 0x02, P66, W0 | IMMEDIATE),
    entry(3, 0x04, 0x05, P66, W0 | NO_VVVV | IMMEDIATE),
    entry(3, 0x06, 0x06, P66, L1 | W0 | IMMEDIATE),
    entry(3, 0x08, 0x09, P66, NO_VVVV | IMMEDIATE),
    entry(3, 0x0a, 0x0b, P66, L0 | IMMEDIATE),
    entry(3, 0x0c, 0x0f, P66, IMMEDIATE),
    entry(3, 0x14, 0x17, P66, L0 | NO_VVVV | IMMEDIATE),
    entry(3, 0x18, 0x18, P66, L1 | W0 | IMMEDIATE),
    entry(3, 0x19, 0x19, P66, L1 | W0 | NO_VVVV | IMMEDIATE),
    entry(3, 0x1d, 0x1d, P66, W0 | NO_VVVV | IMMEDIATE),
    entry(3, 0x20, 0x22, P66, L0 | IMMEDIATE),
    entry(3, 0x38, 0x38, P66, L1 | W0 | IMMEDIATE),
    entry(3, 0x39, 0x39, P66, L1 | W0 | NO_VVVV | IMMEDIATE),
    entry(3, 0x40, 0x40, P66, IMMEDIATE),
    entry(3, 0x41, 0x41, P66, L0 | IMMEDIATE),
    entry(3, 0x42, 0x42, P66, IMMEDIATE),
    entry(3, 0x44, 0x44, P66, IMMEDIATE),
    entry(3, 0x46, 0x46, P66, L1 | W0 | IMMEDIATE),
    entry(3, 0x4a, 0x4c, P66, W0 | IMMEDIATE),
    // FMA4 (AMD): packed forms at x8, x9, xC, xD and 5C to 5F; scalar at xA, xB,
    // xE, xF. The last byte names the fourth register (is4).
    entry(3, 0x5c, 0x5f, P66, IMMEDIATE),
    entry(3, 0x68, 0x69, P66, IMMEDIATE),
    entry(3, 0x6a, 0x6b, P66, L0 | IMMEDIATE),
    entry(3, 0x6c, 0x6d, P66, IMMEDIATE),
    entry(3, 0x6e, 0x6f, P66, L0 | IMMEDIATE),
    entry(3, 0x78, 0x79, P66, IMMEDIATE),
    entry(3, 0x7a, 0x7b, P66, L0 | IMMEDIATE),
    entry(3, 0x7c, 0x7d, P66, IMMEDIATE),
    entry(3, 0x7e, 0x7f, P66, L0 | IMMEDIATE),
    entry(3, 0x60, 0x63, P66, L0 | NO_VVVV | IMMEDIATE),
    entry(3, 0xdf, 0xdf, P66, L0 | NO_VVVV | IMMEDIATE),
    entry(3, 0xf0, 0xf0, PF2, L0 | NO_VVVV | IMMEDIATE),
];

const ANY: u8 = P66 | PF3 | PF2;

/// EVEX-encoded (AVX-512) instructions accepted, all without broadcast or
/// embedded rounding (EVEX.b clear): maps 1 (`0F`), 2 (`0F 38`), 3 (`0F 3A`).
/// [`K_REG`] marks an opmask destination (compares and tests).
const EVEX: &[Entry] = &[
    // vmovups, vmovaps (W0); vmovupd, vmovapd (W1).
    entry(1, 0x10, 0x10, NP, W0 | NO_VVVV),
    entry(1, 0x10, 0x10, P66, W1 | NO_VVVV),
    entry(1, 0x11, 0x11, NP, W0 | NO_VVVV | NO_ZEROING_MEMORY),
    entry(1, 0x11, 0x11, P66, W1 | NO_VVVV | NO_ZEROING_MEMORY),
    entry(1, 0x28, 0x28, NP, W0 | NO_VVVV),
    entry(1, 0x28, 0x28, P66, W1 | NO_VVVV),
    entry(1, 0x29, 0x29, NP, W0 | NO_VVVV | NO_ZEROING_MEMORY),
    entry(1, 0x29, 0x29, P66, W1 | NO_VVVV | NO_ZEROING_MEMORY),
    // vpcmpgtb, vpcmpgtw, vpcmpgtd; vpcmpeqb, vpcmpeqw, vpcmpeqd.
    entry(1, 0x64, 0x65, P66, K_REG),
    entry(1, 0x66, 0x66, P66, W0 | K_REG),
    entry(1, 0x74, 0x75, P66, K_REG),
    entry(1, 0x76, 0x76, P66, W0 | K_REG),
    // vmovdqa32/64, vmovdqu32/64, vmovdqu8/16.
    entry(1, 0x6f, 0x6f, ANY, NO_VVVV),
    entry(1, 0x7f, 0x7f, ANY, NO_VVVV | NO_ZEROING_MEMORY),
    // vpshufd.
    entry(1, 0x70, 0x70, P66, W0 | NO_VVVV | IMMEDIATE),
    // vpaddq, vpmuludq, vpsubq (W1); vpsubd, vpaddd (W0).
    entry(1, 0xd4, 0xd4, P66, W1),
    entry(1, 0xf4, 0xf4, P66, W1),
    entry(1, 0xfb, 0xfb, P66, W1),
    entry(1, 0xfa, 0xfa, P66, W0),
    entry(1, 0xfe, 0xfe, P66, W0),
    // Byte and word arithmetic, minimum and maximum; vpand, vpandn, vpor, vpxor
    // (d with W0, q with W1).
    entry(1, 0xd8, 0xdf, P66, 0),
    entry(1, 0xe0, 0xe0, P66, 0),
    entry(1, 0xe3, 0xe3, P66, 0),
    entry(1, 0xe8, 0xef, P66, 0),
    entry(1, 0xf8, 0xf9, P66, 0),
    entry(1, 0xfc, 0xfd, P66, 0),
    // vmovntdq.
    entry(1, 0xe7, 0xe7, P66, W0 | NO_VVVV | MEMORY | NO_MASK),
    // vpshufb.
    entry(2, 0x00, 0x00, P66, 0),
    // vptestmb/w/d/q (66), vptestnmb/w/d/q (F3).
    entry(2, 0x26, 0x27, P66 | PF3, K_REG),
    // vpminsb, vpminsd/q, vpminuw, vpminud/q, vpmaxsb, vpmaxsd/q, vpmaxuw, vpmaxud/q.
    entry(2, 0x38, 0x3f, P66, 0),
    // vpbroadcastd, vpbroadcastb, vpbroadcastw.
    entry(2, 0x58, 0x58, P66, W0 | NO_VVVV),
    entry(2, 0x78, 0x79, P66, W0 | NO_VVVV),
    // vpbroadcastb/w/d/q from a general purpose register.
    entry(2, 0x7a, 0x7b, P66, W0 | NO_VVVV | REGISTER),
    entry(2, 0x7c, 0x7c, P66, NO_VVVV | REGISTER),
    // vpblendmd/q, vpblendmb/w.
    entry(2, 0x64, 0x64, P66, 0),
    entry(2, 0x66, 0x66, P66, 0),
    // vpermb, vpermw.
    entry(2, 0x8d, 0x8d, P66, 0),
    // vpmadd52luq, vpmadd52huq.
    entry(2, 0xb4, 0xb5, P66, W1),
    // valignd/q, vpalignr, vpcmpud/uq, vpcmpd/q, vpternlogd/q, vpcmpub/uw, vpcmpb/w.
    entry(3, 0x03, 0x03, P66, IMMEDIATE),
    entry(3, 0x0f, 0x0f, P66, IMMEDIATE),
    entry(3, 0x1e, 0x1f, P66, K_REG | IMMEDIATE),
    entry(3, 0x25, 0x25, P66, IMMEDIATE),
    entry(3, 0x3e, 0x3f, P66, K_REG | IMMEDIATE),
];

/// A 256-entry table from one of the `const fn`s above, built at compile time.
macro_rules! byte_table {
    ($describe:ident) => {{
        let mut table = [0u8; 256];
        let mut opcode = 0;
        while opcode < 256 {
            table[opcode] = $describe(opcode as u8);
            opcode += 1;
        }
        table
    }};
}

static PRIMARY: [u8; 256] = byte_table!(primary);
static SECONDARY: [u8; 256] = byte_table!(secondary);
static SSE_PREFIXES: [u8; 256] = byte_table!(sse_prefixes);

/// Looks `opcode` up in a 256-entry table.
fn lookup(table: &[u8; 256], opcode: u8) -> u8 {
    table.get(usize::from(opcode)).copied().unwrap_or(INVALID)
}

fn find(table: &[Entry], map: u8, opcode: u8, prefix: u8) -> Option<Entry> {
    table.iter().copied().find(|entry| {
        entry.map == map
            && (entry.first..=entry.last).contains(&opcode)
            && entry.prefixes & prefix != 0
    })
}

// ---------------------------------------------------------------------------
// The decoder.

/// What the prefix scan found.
struct Scan {
    prefixes: Prefixes,
    rex: u8,
    /// The last of `F2`/`F3`, or 0.
    last_repeat: u8,
    /// The position of the first byte after the prefixes and REX.
    position: usize,
}

fn scan_prefixes(code: &[u8]) -> Option<Scan> {
    let mut scan = Scan {
        prefixes: Prefixes::default(),
        rex: 0,
        last_repeat: 0,
        position: 0,
    };
    loop {
        let byte = *code.get(scan.position)?;
        let bits = &mut scan.prefixes.bits;
        match byte {
            0x66 => *bits |= OPERAND_SIZE,
            0x67 => *bits |= ADDRESS_SIZE,
            0xf0 => *bits |= LOCK,
            0xf2 => {
                *bits = (*bits | REPEAT_NOT_EQUAL) & !REPEAT_LAST;
                scan.last_repeat = byte;
            }
            0xf3 => {
                *bits |= REPEAT | REPEAT_LAST;
                scan.last_repeat = byte;
            }
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {
                if byte >= 0x64 {
                    *bits |= FS_OR_GS;
                }
                scan.prefixes.segment = byte;
            }
            0x40..=0x4f => {
                scan.rex = byte;
                scan.position += 1;
                continue;
            }
            _ => return Some(scan),
        }
        // A legacy prefix after REX cancels it.
        scan.rex = 0;
        scan.position += 1;
        if scan.position >= MAX_LEN {
            return None;
        }
    }
}

/// Decodes the 64-bit instruction at the start of `code` (at most [`MAX_LEN`]
/// bytes are looked at). `None` when the bytes are cut short, are not a valid
/// instruction, or are one the tables do not describe.
pub fn decode(code: &[u8]) -> Option<Instruction> {
    let code = code.get(..MAX_LEN).unwrap_or(code);
    let scan = scan_prefixes(code)?;
    let mut position = scan.position;
    let first = *code.get(position)?;
    position += 1;
    let mut instruction = Instruction {
        len: 0,
        prefixes: scan.prefixes,
        rex: scan.rex,
        map: OpcodeMap::Primary,
        opcode: first,
        modrm: None,
        sib: None,
        displacement: None,
        immediate: None,
    };
    let immediate_size = match first {
        0x0f => {
            let second = *code.get(position)?;
            position += 1;
            match second {
                0x38 | 0x3a => {
                    instruction.opcode = *code.get(position)?;
                    position += 1;
                    instruction.map = if second == 0x38 {
                        OpcodeMap::Escape38
                    } else {
                        OpcodeMap::Escape3A
                    };
                    escape(&scan, &mut instruction, code, &mut position)?
                }
                _ => {
                    instruction.opcode = second;
                    instruction.map = OpcodeMap::Secondary;
                    let spec = lookup(&SECONDARY, second);
                    table(&scan, &mut instruction, spec, code, &mut position)?
                }
            }
        }
        0xc4 | 0xc5 => vex(&scan, &mut instruction, code, &mut position)?,
        0x62 => evex(&scan, &mut instruction, code, &mut position)?,
        // XOP (`8F` whose would-be ModRM.reg is not 0).
        0x8f if code.get(position).is_some_and(|byte| byte & 0x38 != 0) => return None,
        _ => table(
            &scan,
            &mut instruction,
            lookup(&PRIMARY, first),
            code,
            &mut position,
        )?,
    };
    if immediate_size > 0 {
        instruction.immediate = Some(Field {
            offset: position as u8,
            size: immediate_size,
        });
        position += usize::from(immediate_size);
    }
    if position > code.len() || position > MAX_LEN {
        return None;
    }
    instruction.len = position as u8;
    Some(instruction)
}

/// Reads ModRM, SIB and displacement at `position`.
fn modrm_operand(
    instruction: &mut Instruction,
    code: &[u8],
    position: &mut usize,
) -> Option<ModRm> {
    let byte = *code.get(*position)?;
    *position += 1;
    instruction.modrm = Some(byte);
    let modrm = ModRm::new(byte);
    if !modrm.is_memory() {
        return Some(modrm);
    }
    let mut base = modrm.rm;
    if modrm.rm == 4 {
        let sib = *code.get(*position)?;
        *position += 1;
        instruction.sib = Some(sib);
        base = sib & 7;
    }
    let size = match modrm.mode {
        0 if base == 5 => 4,
        0 => 0,
        1 => 1,
        _ => 4,
    };
    if size > 0 {
        instruction.displacement = Some(Field {
            offset: *position as u8,
            size,
        });
        *position += usize::from(size);
    }
    Some(modrm)
}

/// The mandatory prefix of an SSE-style instruction, as a `NP`/`P66`/`PF3`/`PF2`
/// bit; `None` when several compete (valid, but left to a fuller decoder).
fn mandatory_prefix(scan: &Scan) -> Option<u8> {
    let prefixes = scan.prefixes;
    let count = u8::from(prefixes.operand_size())
        + u8::from(prefixes.repeat())
        + u8::from(prefixes.repeat_not_equal());
    match (count, scan.last_repeat) {
        (0, _) => Some(NP),
        (1, 0xf3) => Some(PF3),
        (1, 0xf2) => Some(PF2),
        (1, _) => Some(P66),
        _ => None,
    }
}

/// Decodes the rest of a one-byte or `0F` instruction from its table entry;
/// returns the size of the immediate.
fn table(
    scan: &Scan,
    instruction: &mut Instruction,
    spec: u8,
    code: &[u8],
    position: &mut usize,
) -> Option<u8> {
    if spec & INVALID != 0 {
        return None;
    }
    let control_move =
        instruction.map == OpcodeMap::Secondary && matches!(instruction.opcode, 0x20..=0x23);
    let modrm = if control_move {
        // `mov` to and from control and debug registers ignores `mod`: both
        // operands are registers, and no SIB or displacement follows.
        let byte = *code.get(*position)?;
        *position += 1;
        instruction.modrm = Some(byte | 0xc0);
        Some(ModRm::new(byte | 0xc0))
    } else if spec & MODRM != 0 {
        Some(modrm_operand(instruction, code, position)?)
    } else {
        None
    };
    let prefixes = scan.prefixes;
    if prefixes.lock() {
        let memory = modrm.is_some_and(|modrm| modrm.is_memory());
        if spec & LOCKABLE == 0 || !memory || !lockable_group(instruction) {
            return None;
        }
    }
    if spec & MANDATORY_PREFIX != 0 {
        let prefix = mandatory_prefix(scan)?;
        if lookup(&SSE_PREFIXES, instruction.opcode) & prefix == 0
            || !sse_operand_allowed(instruction.opcode, prefix, modrm)
        {
            return None;
        }
    }
    if spec & SPECIAL != 0 && !check_group(scan, instruction, modrm?)? {
        return None;
    }
    let rex_w = scan.rex & 8 != 0;
    Some(match spec & IMM_MASK {
        IMM_NONE => match (instruction.map, instruction.opcode, modrm) {
            // Group 3: `test` has an immediate.
            (OpcodeMap::Primary, 0xf6, Some(ModRm { reg: 0 | 1, .. })) => 1,
            (OpcodeMap::Primary, 0xf7, Some(ModRm { reg: 0 | 1, .. })) => {
                operand_immediate(prefixes, rex_w)
            }
            _ => 0,
        },
        IMM_BYTE => 1,
        IMM_WORD => 2,
        IMM_OPERAND => match (instruction.opcode, modrm) {
            // `xbegin rel16/rel32`.
            (0xc7, Some(ModRm { reg: 7, .. })) if prefixes.operand_size() => 2,
            _ => operand_immediate(prefixes, rex_w),
        },
        IMM_REL32 => 4,
        IMM_FULL if rex_w => 8,
        IMM_FULL => operand_immediate(prefixes, false),
        IMM_OFFSET if prefixes.address_size() => 4,
        IMM_OFFSET => 8,
        _ => 3,
    })
}

fn operand_immediate(prefixes: Prefixes, rex_w: bool) -> u8 {
    if prefixes.operand_size() && !rex_w {
        2
    } else {
        4
    }
}

/// `lock` with a memory operand: the groups allow it for some `/digit` only.
fn lockable_group(instruction: &Instruction) -> bool {
    let reg = instruction.reg().unwrap_or(0);
    match (instruction.map, instruction.opcode) {
        (OpcodeMap::Primary, 0x80 | 0x81 | 0x83) => reg != 7,
        (OpcodeMap::Primary, 0xf6 | 0xf7) => matches!(reg, 2 | 3),
        (OpcodeMap::Primary, 0xfe | 0xff) => reg <= 1,
        (OpcodeMap::Secondary, 0xba) => reg >= 5,
        (OpcodeMap::Secondary, 0xc7) => reg == 1,
        _ => true,
    }
}

/// SSE forms that exist only with a memory, or only with a register, operand.
fn sse_operand_allowed(opcode: u8, prefix: u8, modrm: Option<ModRm>) -> bool {
    let Some(modrm) = modrm else {
        return true;
    };
    let memory = modrm.is_memory();
    match (opcode, prefix) {
        (0x12 | 0x16, P66) | (0x13 | 0x17 | 0x2b | 0xc3 | 0xe7 | 0xf0, _) => memory,
        (0x50 | 0xc5 | 0xd7 | 0xf7, _) | (0xd6, PF3 | PF2) => !memory,
        (0x71 | 0x72, _) => !memory && matches!(modrm.reg, 2 | 4 | 6),
        (0x73, NP) => !memory && matches!(modrm.reg, 2 | 6),
        (0x73, _) => !memory && matches!(modrm.reg, 2 | 3 | 6 | 7),
        _ => true,
    }
}

/// Opcode extensions and operand-form restrictions of the table entries marked
/// [`SPECIAL`]. `None` or `false`: not accepted.
fn check_group(scan: &Scan, instruction: &Instruction, modrm: ModRm) -> Option<bool> {
    let prefixes = scan.prefixes;
    let memory = modrm.is_memory();
    let reg = modrm.reg;
    let byte = instruction.modrm?;
    let plain = !prefixes.operand_size() && !prefixes.repeat() && !prefixes.repeat_not_equal();
    let only_repeat = !prefixes.operand_size() && !prefixes.repeat_not_equal();
    Some(match (instruction.map, instruction.opcode) {
        (OpcodeMap::Primary, opcode) => match opcode {
            0x80 | 0x81 | 0x83 => true,
            0x8c => reg <= 5,
            0x8d => memory,
            0x8e => reg != 1 && reg <= 5,
            0x8f => reg == 0,
            0xc0 | 0xc1 | 0xd0..=0xd3 => reg != 6,
            0xc6 | 0xc7 => reg == 0 || byte == 0xf8,
            0xd8..=0xdf => x87(opcode, byte),
            0xf6 | 0xf7 => reg != 1,
            0xfe => reg <= 1,
            0xff => match reg {
                3 | 5 => memory,
                7 => false,
                _ => true,
            },
            _ => false,
        },
        (OpcodeMap::Secondary, opcode) => match opcode {
            // sldt, str, lldt, ltr, verr, verw.
            0x00 => !prefixes.repeat() && !prefixes.repeat_not_equal() && reg <= 5,
            0x01 => plain && group7(byte),
            // prefetchw.
            0x0d => plain && memory && reg == 1,
            // endbr64, endbr32.
            0x1e => {
                scan.last_repeat == 0xf3
                    && !prefixes.operand_size()
                    && !prefixes.repeat_not_equal()
                    && matches!(byte, 0xfa | 0xfb)
            }
            // mov from/to control registers 0, 2, 3, 4, 8; debug registers 0 to 7.
            0x20 | 0x22 => {
                let register = reg | ((scan.rex & 4) << 1);
                plain && matches!(register, 0 | 2 | 3 | 4 | 8)
            }
            0x21 | 0x23 => plain && scan.rex & 4 == 0,
            // vmread, vmwrite.
            0x78 | 0x79 => plain,
            0xae => group15(scan, modrm),
            // lss, lfs, lgs.
            0xb2 | 0xb4 | 0xb5 => memory,
            // popcnt.
            0xb8 => prefixes.repeat() && !prefixes.repeat_not_equal(),
            // bt, bts, btr, btc with an immediate.
            0xba => reg >= 4,
            0xc7 => match (reg, memory) {
                // cmpxchg8b/16b.
                (1, true) => !prefixes.operand_size(),
                // xrstors, xsavec, xsaves, vmptrld, vmptrst.
                (3..=7, true) => plain,
                // rdrand, rdseed.
                (6 | 7, false) if plain => true,
                // rdpid.
                (7, false) => only_repeat && scan.last_repeat == 0xf3,
                _ => false,
            },
            _ => false,
        },
        _ => false,
    })
}

/// Group 7 (`0F 01`) without prefixes: the memory forms but `/5`, and the register
/// forms in the list (the rest of that space is left out).
fn group7(byte: u8) -> bool {
    let modrm = ModRm::new(byte);
    if modrm.is_memory() {
        return modrm.reg != 5;
    }
    matches!(
        byte,
        // enclv, vmcall, vmlaunch, vmresume.
        0xc0..=0xc3
            // monitor, mwait, clac, stac, encls.
            | 0xc8..=0xcb | 0xcf
            // xgetbv, xsetbv, vmfunc, xend, xtest, enclu, vmrun, vmmcall.
            | 0xd0 | 0xd1 | 0xd4..=0xd9
            // serialize, rdpkru, wrpkru.
            | 0xe8 | 0xee | 0xef
            // swapgs, rdtscp, mwaitx.
            | 0xf8 | 0xf9 | 0xfb
    ) || modrm.reg == 4
        || modrm.reg == 6
}

/// Group 15 (`0F AE`).
fn group15(scan: &Scan, modrm: ModRm) -> bool {
    let Some(prefix) = mandatory_prefix(scan) else {
        return false;
    };
    match (prefix, modrm.is_memory(), modrm.reg) {
        // fxsave, fxrstor, ldmxcsr, stmxcsr, xsave, xrstor, xsaveopt, clflush.
        (NP, true, _) => true,
        // clwb, clflushopt.
        (P66, true, 6 | 7) => true,
        // lfence, mfence, sfence.
        (NP, false, 5..=7) => true,
        // rdfsbase, rdgsbase, wrfsbase, wrgsbase.
        (PF3, false, 0..=3) => true,
        // tpause, umwait.
        (P66 | PF2, false, 6) => true,
        _ => false,
    }
}

/// The x87 escapes `D8` to `DF`: which ModRM bytes are instructions (the
/// undocumented register aliases are left out, but for `ffreep`).
fn x87(opcode: u8, byte: u8) -> bool {
    let modrm = ModRm::new(byte);
    let (reg, rm) = (modrm.reg, modrm.rm);
    if modrm.is_memory() {
        return !matches!((opcode, reg), (0xd9, 1) | (0xdb, 4) | (0xdb, 6) | (0xdd, 5));
    }
    match opcode {
        0xd8 => true,
        0xd9 => match reg {
            0 | 1 | 6 | 7 => true,
            2 => rm == 0,
            4 => matches!(rm, 0 | 1 | 4 | 5),
            5 => rm != 7,
            _ => false,
        },
        0xda => reg <= 3 || byte == 0xe9,
        0xdb => reg <= 3 || reg == 5 || reg == 6 || byte == 0xe2 || byte == 0xe3,
        0xdc => reg != 2 && reg != 3,
        0xdd => matches!(reg, 0 | 2..=5),
        0xde => reg != 2 && (reg != 3 || byte == 0xd9),
        0xdf => matches!(reg, 0 | 5 | 6) || byte == 0xe0,
        _ => false,
    }
}

/// `0F 38` and `0F 3A`.
fn escape(
    scan: &Scan,
    instruction: &mut Instruction,
    code: &[u8],
    position: &mut usize,
) -> Option<u8> {
    let map = if instruction.map == OpcodeMap::Escape38 {
        2
    } else {
        3
    };
    let prefix = mandatory_prefix(scan)?;
    let entry = find(ESCAPES, map, instruction.opcode, prefix)?;
    let modrm = modrm_operand(instruction, code, position)?;
    if scan.prefixes.lock() || !operand_form(entry.flags, modrm) {
        return None;
    }
    Some(u8::from(entry.flags & IMMEDIATE != 0))
}

fn operand_form(flags: u16, modrm: ModRm) -> bool {
    !(flags & MEMORY != 0 && !modrm.is_memory() || flags & REGISTER != 0 && modrm.is_memory())
}

/// VEX (`C5` two-byte and `C4` three-byte forms).
fn vex(
    scan: &Scan,
    instruction: &mut Instruction,
    code: &[u8],
    position: &mut usize,
) -> Option<u8> {
    let prefixes = scan.prefixes;
    if scan.rex != 0
        || prefixes.lock()
        || prefixes.operand_size()
        || prefixes.repeat()
        || prefixes.repeat_not_equal()
    {
        return None;
    }
    let first = *code.get(*position)?;
    *position += 1;
    // R and B extend ModRM.reg and ModRM.rm (stored inverted; `C5` has no B).
    let r = first & 0x80 == 0;
    let (map, last, b) = if instruction.opcode == 0xc5 {
        (1, first, false)
    } else {
        let second = *code.get(*position)?;
        *position += 1;
        (first & 0x1f, second, first & 0x20 == 0)
    };
    let w = instruction.opcode == 0xc4 && last & 0x80 != 0;
    let vvvv = (!last >> 3) & 0xf;
    let l = last & 4 != 0;
    let prefix = 1 << (last & 3);
    instruction.opcode = *code.get(*position)?;
    *position += 1;
    instruction.map = OpcodeMap::Vex(map);
    let entry = find(VEX, map, instruction.opcode, prefix)?;
    let flags = entry.flags;
    let modrm = if flags & NO_MODRM == 0 {
        let modrm = modrm_operand(instruction, code, position)?;
        if !operand_form(flags, modrm)
            || (flags & NO_VVVV_MEMORY != 0 && modrm.is_memory() && vvvv != 0)
        {
            return None;
        }
        Some(modrm)
    } else {
        None
    };
    let scalar_fma = map == 2 && (0x96..=0xbf).contains(&instruction.opcode) && {
        let low = instruction.opcode & 0xf;
        if low < 6 {
            return None;
        }
        low >= 9 && low & 1 == 1
    };
    if (flags & L0 != 0 || scalar_fma) && l
        || flags & L1 != 0 && !l
        || flags & W0 != 0 && w
        || flags & W1 != 0 && !w
        || flags & NO_VVVV != 0 && vvvv != 0
        || flags & K_REG != 0 && r
        || flags & K_RM != 0 && b && modrm.is_some_and(|modrm| !modrm.is_memory())
        || flags & K_VVVV != 0 && vvvv >= 8
    {
        return None;
    }
    if flags & GROUP != 0 {
        let reg = modrm?.reg;
        let valid = match (map, instruction.opcode) {
            (1, 0x71 | 0x72) => matches!(reg, 2 | 4 | 6),
            (1, 0xae) => matches!(reg, 2 | 3),
            (1, _) => matches!(reg, 2 | 3 | 6 | 7),
            // blsr, blsmsk, blsi.
            _ => matches!(reg, 1..=3),
        };
        if !valid {
            return None;
        }
    }
    Some(u8::from(flags & IMMEDIATE != 0))
}

/// EVEX (`62`, four bytes of prefix), for the instructions in [`EVEX`].
fn evex(
    scan: &Scan,
    instruction: &mut Instruction,
    code: &[u8],
    position: &mut usize,
) -> Option<u8> {
    let prefixes = scan.prefixes;
    if scan.rex != 0
        || prefixes.lock()
        || prefixes.operand_size()
        || prefixes.repeat()
        || prefixes.repeat_not_equal()
    {
        return None;
    }
    let payload = code.get(*position..*position + 3)?;
    let (first, second, third) = (*payload.first()?, *payload.get(1)?, *payload.get(2)?);
    *position += 3;
    // P0: R X B R' 0 m m m (R, X, B, R' inverted); P1: W vvvv 1 pp (vvvv
    // inverted); P2: z L'L b V' aaa (V' inverted).
    let map = first & 7;
    let r = first & 0x80 == 0;
    let r_high = first & 0x10 == 0;
    let w = second & 0x80 != 0;
    let vvvv = (!second >> 3) & 0xf;
    let prefix = 1 << (second & 3);
    let zeroing = third & 0x80 != 0;
    let length = (third >> 5) & 3;
    let broadcast = third & 0x10 != 0;
    let v_high = third & 0x08 == 0;
    let mask = third & 7;
    if first & 0x08 != 0 || second & 0x04 == 0 || broadcast || length == 3 {
        return None;
    }
    instruction.opcode = *code.get(*position)?;
    *position += 1;
    instruction.map = OpcodeMap::Evex(map);
    let entry = find(EVEX, map, instruction.opcode, prefix)?;
    let flags = entry.flags;
    let modrm = modrm_operand(instruction, code, position)?;
    let memory = modrm.is_memory();
    if !operand_form(flags, modrm)
        || flags & W0 != 0 && w
        || flags & W1 != 0 && !w
        || flags & NO_VVVV != 0 && (vvvv != 0 || v_high)
        || zeroing && mask == 0
        || flags & K_REG != 0 && (r || r_high || zeroing)
        || flags & NO_ZEROING_MEMORY != 0 && memory && zeroing
        || flags & NO_MASK != 0 && (mask != 0 || zeroing)
    {
        return None;
    }
    Some(u8::from(flags & IMMEDIATE != 0))
}
