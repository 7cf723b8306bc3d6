//! Where a variable lives at one address, in a form the compiler turns into code.
//!
//! # Design
//!
//! DWARF describes a variable's location with a stack-machine expression, and an
//! optimised kernel gives most variables a *location list*: a different expression per
//! address range. The client evaluates the list at the probe address and then reduces
//! the expression to a [`Location`], which names only things a handler can read from
//! its probe context: DWARF registers, memory at a register plus an offset, constants,
//! and values saved at function entry. The canonical frame address is resolved through
//! the call-frame information at the same address, so no [`Location`] ever mentions it.
//!
//! Anything the reduction cannot express (pieces of several registers, implicit
//! pointers, typed stack operations) is [`Location::Unavailable`] with a reason a user
//! can read.

use std::fmt;

/// The location of a variable at one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// The value is in a register (DWARF register number, e.g. 5 is `rdi` on x86_64).
    Register(u16),
    /// The value is stored in memory at `base + offset`.
    Memory {
        /// What the offset is relative to.
        base: MemoryBase,
        /// Byte offset added to the base.
        offset: i64,
    },
    /// The value is this constant (`DW_OP_lit*`/`DW_OP_const*` + `DW_OP_stack_value`, or
    /// `DW_AT_const_value`, or a short `DW_OP_implicit_value`).
    Value(u64),
    /// The value is what the register held at function entry (`DW_OP_entry_value`).
    /// The compiler captures that register with an entry probe.
    EntryValue(u16),
    /// The value is computed by a small stack program (see [`ComputedOp`]); the result is
    /// the value itself, not an address.
    Computed(Vec<ComputedOp>),
    /// The value is stored in memory at the address a small stack program computes
    /// (the variable's type gives the size to read).
    ComputedMemory(Vec<ComputedOp>),
    /// The location cannot be used at this address, and why.
    Unavailable(String),
}

/// The base of a [`Location::Memory`] address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryBase {
    /// The contents of a DWARF register.
    Register(u16),
    /// Address zero: the offset is an absolute address (`DW_OP_addr`).
    Absolute,
}

/// One operation of a [`Location::Computed`] program, evaluated on a stack of u64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputedOp {
    /// Push the contents of a DWARF register.
    Register(u16),
    /// Push the value a DWARF register had at function entry.
    EntryValue(u16),
    /// Push a constant.
    Constant(u64),
    /// Add a constant to the top of the stack.
    PlusConstant(u64),
    /// Pop an address and push the `size`-byte value stored there.
    Deref(u8),
    /// Pop two values and push the result of the binary operation.
    Binary(BinaryOp),
    /// Negate the top of the stack (two's complement).
    Neg,
    /// Bitwise-complement the top of the stack.
    Not,
    /// Absolute value of the top of the stack (signed).
    Abs,
    /// Push a copy of the entry `index` deep (0 is the top: `DW_OP_dup`, 1 `DW_OP_over`).
    Pick(u8),
    /// Exchange the two top entries.
    Swap,
    /// Rotate the three top entries: the top moves to third place.
    Rot,
    /// Discard the top entry.
    Drop,
}

/// Binary operators of [`ComputedOp::Binary`]; the left operand is the deeper one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a & b`.
    And,
    /// `a | b`.
    Or,
    /// `a ^ b`.
    Xor,
    /// `a << b`.
    Shl,
    /// `a >> b`, logical.
    Shr,
    /// `a >> b`, arithmetic.
    Shra,
    /// `a == b` (1 or 0).
    Eq,
    /// `a != b` (1 or 0).
    Ne,
    /// `a < b`, signed (1 or 0).
    Lt,
    /// `a <= b`, signed (1 or 0).
    Le,
    /// `a > b`, signed (1 or 0).
    Gt,
    /// `a >= b`, signed (1 or 0).
    Ge,
    /// `a / b`, signed (`DW_OP_div`); the handler must guard against `b == 0`.
    Div,
    /// `a % b`, unsigned (`DW_OP_mod`); the handler must guard against `b == 0`.
    Mod,
}

impl Location {
    /// Whether a handler can read the value at this address.
    pub fn is_available(&self) -> bool {
        !matches!(self, Location::Unavailable(_))
    }
}

/// Names of the x86_64 DWARF registers 0..=16 (System V psABI, figure 3.36).
const X86_64_REGISTER_NAMES: [&str; 17] = [
    "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip",
];

/// The x86_64 name of a DWARF register, or `dwarfN` for the others.
pub fn register_name(register: u16) -> String {
    X86_64_REGISTER_NAMES
        .get(usize::from(register))
        .map_or_else(|| format!("dwarf{register}"), |name| (*name).to_owned())
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Register(register) => write!(f, "%{}", register_name(*register)),
            Location::Memory {
                base: MemoryBase::Register(register),
                offset,
            } => write!(f, "[%{}{offset:+}]", register_name(*register)),
            Location::Memory {
                base: MemoryBase::Absolute,
                offset,
            } => write!(f, "[{:#x}]", *offset as u64),
            Location::Value(value) => write!(f, "={value:#x}"),
            Location::EntryValue(register) => {
                write!(f, "entry(%{})", register_name(*register))
            }
            Location::Computed(ops) | Location::ComputedMemory(ops) => {
                if matches!(self, Location::Computed(_)) {
                    write!(f, "computed(")?;
                } else {
                    write!(f, "[computed(")?;
                }
                for (index, op) in ops.iter().enumerate() {
                    if index > 0 {
                        write!(f, " ")?;
                    }
                    match op {
                        ComputedOp::Register(register) => {
                            write!(f, "%{}", register_name(*register))?
                        }
                        ComputedOp::EntryValue(register) => {
                            write!(f, "entry(%{})", register_name(*register))?
                        }
                        ComputedOp::Constant(value) => write!(f, "{value:#x}")?,
                        ComputedOp::PlusConstant(value) => write!(f, "+{value:#x}")?,
                        ComputedOp::Deref(size) => write!(f, "deref{size}")?,
                        ComputedOp::Binary(op) => write!(f, "{op:?}")?,
                        ComputedOp::Neg => write!(f, "neg")?,
                        ComputedOp::Not => write!(f, "not")?,
                        ComputedOp::Abs => write!(f, "abs")?,
                        ComputedOp::Pick(index) => write!(f, "pick{index}")?,
                        ComputedOp::Swap => write!(f, "swap")?,
                        ComputedOp::Rot => write!(f, "rot")?,
                        ComputedOp::Drop => write!(f, "drop")?,
                    }
                }
                if matches!(self, Location::Computed(_)) {
                    write!(f, ")")
                } else {
                    write!(f, ")]")
                }
            }
            Location::Unavailable(reason) => write!(f, "<{reason}>"),
        }
    }
}

/// The frame base of a function at one address, already reduced to a register + offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FrameBase {
    /// The frame base is `register + offset`.
    RegisterOffset(u16, i64),
    /// The frame base cannot be computed here, and why.
    Unknown(String),
}

/// Reduces one DWARF expression to a [`Location`].
///
/// `frame_base` is called lazily for `DW_OP_fbreg`, `cfa` for `DW_OP_call_frame_cfa`,
/// and `address_index` for `DW_OP_addrx`/`DW_OP_constx`.
pub(crate) fn reduce_expression<R: gimli::Reader>(
    expression: gimli::Expression<R>,
    encoding: gimli::Encoding,
    frame_base: &mut dyn FnMut() -> FrameBase,
    cfa: &mut dyn FnMut() -> FrameBase,
    address_index: &mut dyn FnMut(gimli::DebugAddrIndex<R::Offset>) -> Option<u64>,
) -> Location {
    let mut operations = Vec::new();
    let mut reader = expression.0;
    while !reader.is_empty() {
        match gimli::Operation::parse(&mut reader, encoding) {
            Ok(operation) => operations.push(operation),
            Err(gimli::Error::InvalidExpression(opcode)) => {
                return Location::Unavailable(format!(
                    "unsupported DWARF expression opcode {:#x}",
                    opcode.0
                ));
            }
            Err(error) => return Location::Unavailable(format!("malformed expression: {error}")),
        }
    }
    if operations.is_empty() {
        return Location::Unavailable("optimised out".into());
    }
    use gimli::Operation as Op;
    // The common shapes first: they give the compiler the simplest code.
    match operations.as_slice() {
        [Op::Register { register }] => return Location::Register(register.0),
        [
            Op::RegisterOffset {
                register, offset, ..
            },
        ] => {
            return Location::Memory {
                base: MemoryBase::Register(register.0),
                offset: *offset,
            };
        }
        [Op::FrameOffset { offset }] => {
            return match frame_base() {
                FrameBase::RegisterOffset(register, base_offset) => Location::Memory {
                    base: MemoryBase::Register(register),
                    offset: base_offset + offset,
                },
                FrameBase::Unknown(reason) => Location::Unavailable(reason),
            };
        }
        [Op::CallFrameCFA] => {
            // The value is the CFA itself (a frame base, not a variable): computed.
            return match cfa() {
                FrameBase::RegisterOffset(register, offset) => Location::Computed(vec![
                    ComputedOp::Register(register),
                    ComputedOp::PlusConstant(offset as u64),
                ]),
                FrameBase::Unknown(reason) => Location::Unavailable(reason),
            };
        }
        [Op::Address { address }] => {
            return Location::Memory {
                base: MemoryBase::Absolute,
                offset: *address as i64,
            };
        }
        [Op::AddressIndex { index }] => {
            return match address_index(*index) {
                Some(address) => Location::Memory {
                    base: MemoryBase::Absolute,
                    offset: address as i64,
                },
                None => Location::Unavailable("bad DW_OP_addrx index".into()),
            };
        }
        [Op::UnsignedConstant { value }, Op::StackValue] => return Location::Value(*value),
        [Op::SignedConstant { value }, Op::StackValue] => return Location::Value(*value as u64),
        [Op::ImplicitValue { data }] => {
            let bytes = match data.to_slice() {
                Ok(bytes) => bytes,
                Err(error) => return Location::Unavailable(format!("bad implicit value: {error}")),
            };
            if bytes.len() > 8 {
                return Location::Unavailable(format!(
                    "implicit value of {} bytes is not supported",
                    bytes.len()
                ));
            }
            let mut value = [0u8; 8];
            value[..bytes.len()].copy_from_slice(&bytes);
            return Location::Value(u64::from_le_bytes(value));
        }
        [Op::EntryValue { expression }, Op::StackValue] => {
            if let Some(register) = entry_value_register(expression.clone(), encoding) {
                return Location::EntryValue(register);
            }
        }
        _ => {}
    }
    // A memory location at a register, the frame base or an address, plus a constant.
    if let [base, Op::PlusConstant { value }] = operations.as_slice() {
        let base = match base {
            Op::RegisterOffset {
                register, offset, ..
            } => Some((MemoryBase::Register(register.0), *offset)),
            Op::FrameOffset { offset } => match frame_base() {
                FrameBase::RegisterOffset(register, base_offset) => {
                    Some((MemoryBase::Register(register), base_offset + offset))
                }
                FrameBase::Unknown(reason) => return Location::Unavailable(reason),
            },
            Op::Address { address } => Some((MemoryBase::Absolute, *address as i64)),
            _ => None,
        };
        if let Some((base, offset)) = base {
            return Location::Memory {
                base,
                offset: offset.wrapping_add(*value as i64),
            };
        }
    }
    // Everything else is a computation: of the value itself when it ends in
    // DW_OP_stack_value, of the value's address otherwise.
    let (body, is_value) = match operations.split_last() {
        Some((Op::StackValue, body)) => (body, true),
        _ => (operations.as_slice(), false),
    };
    let mut ops = Vec::new();
    for operation in body {
        let op = match operation {
            Op::RegisterOffset {
                register, offset, ..
            } => {
                ops.push(ComputedOp::Register(register.0));
                ComputedOp::PlusConstant(*offset as u64)
            }
            Op::FrameOffset { offset } => match frame_base() {
                FrameBase::RegisterOffset(register, base_offset) => {
                    ops.push(ComputedOp::Register(register));
                    ComputedOp::PlusConstant((base_offset + offset) as u64)
                }
                FrameBase::Unknown(reason) => return Location::Unavailable(reason),
            },
            Op::CallFrameCFA => match cfa() {
                FrameBase::RegisterOffset(register, offset) => {
                    ops.push(ComputedOp::Register(register));
                    ComputedOp::PlusConstant(offset as u64)
                }
                FrameBase::Unknown(reason) => return Location::Unavailable(reason),
            },
            Op::EntryValue { expression } => {
                match entry_value_register(expression.clone(), encoding) {
                    Some(register) => ComputedOp::EntryValue(register),
                    None => return Location::Unavailable(unsupported_reason(&operations)),
                }
            }
            Op::UnsignedConstant { value } => ComputedOp::Constant(*value),
            Op::SignedConstant { value } => ComputedOp::Constant(*value as u64),
            Op::Address { address } => ComputedOp::Constant(*address),
            Op::AddressIndex { index } | Op::ConstantIndex { index } => {
                match address_index(*index) {
                    Some(address) => ComputedOp::Constant(address),
                    None => return Location::Unavailable("bad DW_OP_addrx index".into()),
                }
            }
            Op::PlusConstant { value } => ComputedOp::PlusConstant(*value),
            Op::Deref {
                size, space: false, ..
            } => ComputedOp::Deref(*size),
            Op::Plus => ComputedOp::Binary(BinaryOp::Add),
            Op::Minus => ComputedOp::Binary(BinaryOp::Sub),
            Op::Mul => ComputedOp::Binary(BinaryOp::Mul),
            Op::Div => ComputedOp::Binary(BinaryOp::Div),
            Op::Mod => ComputedOp::Binary(BinaryOp::Mod),
            Op::And => ComputedOp::Binary(BinaryOp::And),
            Op::Or => ComputedOp::Binary(BinaryOp::Or),
            Op::Xor => ComputedOp::Binary(BinaryOp::Xor),
            Op::Shl => ComputedOp::Binary(BinaryOp::Shl),
            Op::Shr => ComputedOp::Binary(BinaryOp::Shr),
            Op::Shra => ComputedOp::Binary(BinaryOp::Shra),
            Op::Eq => ComputedOp::Binary(BinaryOp::Eq),
            Op::Ne => ComputedOp::Binary(BinaryOp::Ne),
            Op::Lt => ComputedOp::Binary(BinaryOp::Lt),
            Op::Le => ComputedOp::Binary(BinaryOp::Le),
            Op::Gt => ComputedOp::Binary(BinaryOp::Gt),
            Op::Ge => ComputedOp::Binary(BinaryOp::Ge),
            Op::Neg => ComputedOp::Neg,
            Op::Not => ComputedOp::Not,
            Op::Abs => ComputedOp::Abs,
            Op::Pick { index } => ComputedOp::Pick(*index),
            Op::Swap => ComputedOp::Swap,
            Op::Rot => ComputedOp::Rot,
            Op::Drop => ComputedOp::Drop,
            Op::Nop => continue,
            // DW_OP_regN names a location; it cannot be part of a computation.
            _ => return Location::Unavailable(unsupported_reason(&operations)),
        };
        ops.push(op);
    }
    if is_value {
        Location::Computed(ops)
    } else {
        Location::ComputedMemory(ops)
    }
}

/// The register of `DW_OP_entry_value(DW_OP_regN)`, the only form compilers emit for
/// parameters passed in registers.
fn entry_value_register<R: gimli::Reader>(
    mut expression: R,
    encoding: gimli::Encoding,
) -> Option<u16> {
    match gimli::Operation::parse(&mut expression, encoding) {
        Ok(gimli::Operation::Register { register }) if expression.is_empty() => Some(register.0),
        _ => None,
    }
}

/// A user-readable reason for an expression the reduction does not handle.
fn unsupported_reason<R: gimli::Reader>(operations: &[gimli::Operation<R>]) -> String {
    use gimli::Operation as Op;
    if operations.iter().any(|op| matches!(op, Op::Piece { .. })) {
        return "composite location (DW_OP_piece: the value is split across several \
                registers or memory pieces) is not supported"
            .into();
    }
    if operations
        .iter()
        .any(|op| matches!(op, Op::ImplicitPointer { .. }))
    {
        return "implicit pointer (the pointed-to object was optimised away) is not supported"
            .into();
    }
    if operations
        .iter()
        .any(|op| matches!(op, Op::ParameterRef { .. }))
    {
        return "value of a parameter this copy of the function does not receive \
                (DW_OP_GNU_parameter_ref: known only at the call site)"
            .into();
    }
    if operations
        .iter()
        .any(|op| matches!(op, Op::EntryValue { .. }))
    {
        return "entry value of something other than a register is not supported".into();
    }
    let names: Vec<String> = operations
        .iter()
        .map(|op| {
            let text = format!("{op:?}");
            text.split([' ', '{', '(']).next().unwrap_or("").to_owned()
        })
        .collect();
    format!("unsupported DWARF expression: {}", names.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENCODING: gimli::Encoding = gimli::Encoding {
        format: gimli::Format::Dwarf32,
        version: 5,
        address_size: 8,
    };

    /// Reduces raw expression bytes with a frame base of rbp+16 and a CFA of rsp+8.
    fn reduce(bytes: &[u8]) -> Location {
        let expression = gimli::Expression(gimli::EndianSlice::new(bytes, gimli::LittleEndian));
        reduce_expression(
            expression,
            ENCODING,
            &mut || FrameBase::RegisterOffset(6, 16),
            &mut || FrameBase::RegisterOffset(7, 8),
            &mut |index| Some(0x1000 + index.0 as u64),
        )
    }

    #[test]
    fn registers_memory_and_constants() {
        // DW_OP_reg5
        assert_eq!(reduce(&[0x55]), Location::Register(5));
        // DW_OP_regx 17
        assert_eq!(reduce(&[0x90, 17]), Location::Register(17));
        // DW_OP_breg7 -8
        assert_eq!(
            reduce(&[0x77, 0x78]),
            Location::Memory {
                base: MemoryBase::Register(7),
                offset: -8
            }
        );
        // DW_OP_fbreg -68 with frame base rbp+16.
        assert_eq!(
            reduce(&[0x91, 0xbc, 0x7f]),
            Location::Memory {
                base: MemoryBase::Register(6),
                offset: -52
            }
        );
        // DW_OP_addr 0x41073b90
        assert_eq!(
            reduce(&[0x03, 0x90, 0x3b, 0x07, 0x41, 0, 0, 0, 0]),
            Location::Memory {
                base: MemoryBase::Absolute,
                offset: 0x4107_3b90
            }
        );
        // DW_OP_addrx 2
        assert_eq!(
            reduce(&[0xa1, 2]),
            Location::Memory {
                base: MemoryBase::Absolute,
                offset: 0x1002
            }
        );
        // DW_OP_lit3 DW_OP_stack_value; DW_OP_const1s -1 DW_OP_stack_value
        assert_eq!(reduce(&[0x33, 0x9f]), Location::Value(3));
        assert_eq!(reduce(&[0x09, 0xff, 0x9f]), Location::Value(u64::MAX));
        // DW_OP_implicit_value 2 bytes 0x34 0x12
        assert_eq!(reduce(&[0x9e, 2, 0x34, 0x12]), Location::Value(0x1234));
        // Empty expression: optimised out.
        assert!(!reduce(&[]).is_available());
    }

    #[test]
    fn entry_values() {
        // DW_OP_entry_value(DW_OP_reg5) DW_OP_stack_value
        assert_eq!(reduce(&[0xa3, 1, 0x55, 0x9f]), Location::EntryValue(5));
        // DW_OP_GNU_entry_value(DW_OP_reg1) DW_OP_stack_value
        assert_eq!(reduce(&[0xf3, 1, 0x51, 0x9f]), Location::EntryValue(1));
        // DW_OP_entry_value(DW_OP_reg4) DW_OP_plus_uconst 8 DW_OP_stack_value
        assert_eq!(
            reduce(&[0xa3, 1, 0x54, 0x23, 8, 0x9f]),
            Location::Computed(vec![ComputedOp::EntryValue(4), ComputedOp::PlusConstant(8)])
        );
        // An entry value of a memory expression is refused with a reason.
        let Location::Unavailable(reason) = reduce(&[0xa3, 2, 0x75, 0, 0x9f]) else {
            panic!()
        };
        assert!(reason.contains("entry value"), "{reason}");
    }

    #[test]
    fn computed_values() {
        // DW_OP_breg2 0, DW_OP_constu 0xff, DW_OP_and, DW_OP_stack_value
        assert_eq!(
            reduce(&[0x72, 0, 0x10, 0xff, 0x01, 0x1a, 0x9f]),
            Location::Computed(vec![
                ComputedOp::Register(2),
                ComputedOp::PlusConstant(0),
                ComputedOp::Constant(0xff),
                ComputedOp::Binary(BinaryOp::And),
            ])
        );
        // DW_OP_breg7 0, DW_OP_deref_size 4, DW_OP_stack_value
        assert_eq!(
            reduce(&[0x77, 0, 0x94, 4, 0x9f]),
            Location::Computed(vec![
                ComputedOp::Register(7),
                ComputedOp::PlusConstant(0),
                ComputedOp::Deref(4),
            ])
        );
        // DW_OP_fbreg -8 DW_OP_plus_uconst 4: memory at rbp + 16 - 8 + 4.
        assert_eq!(
            reduce(&[0x91, 0x78, 0x23, 4]),
            Location::Memory {
                base: MemoryBase::Register(6),
                offset: 12
            }
        );
        // DW_OP_breg3 0 DW_OP_deref DW_OP_plus_uconst 16: memory at *rbx + 16.
        assert_eq!(
            reduce(&[0x73, 0, 0x06, 0x23, 16]),
            Location::ComputedMemory(vec![
                ComputedOp::Register(3),
                ComputedOp::PlusConstant(0),
                ComputedOp::Deref(8),
                ComputedOp::PlusConstant(16),
            ])
        );
        // DW_OP_breg0 0 DW_OP_lit4 DW_OP_div DW_OP_dup DW_OP_stack_value
        assert_eq!(
            reduce(&[0x70, 0, 0x34, 0x1b, 0x12, 0x9f]),
            Location::Computed(vec![
                ComputedOp::Register(0),
                ComputedOp::PlusConstant(0),
                ComputedOp::Constant(4),
                ComputedOp::Binary(BinaryOp::Div),
                ComputedOp::Pick(0),
            ])
        );
        // DW_OP_call_frame_cfa alone: the CFA's value (rsp + 8).
        assert_eq!(
            reduce(&[0x9c]),
            Location::Computed(vec![ComputedOp::Register(7), ComputedOp::PlusConstant(8)])
        );
    }

    #[test]
    fn unsupported_expressions_say_why() {
        // DW_OP_reg0 DW_OP_piece 8 DW_OP_reg1 DW_OP_piece 8
        let Location::Unavailable(reason) = reduce(&[0x50, 0x93, 8, 0x51, 0x93, 8]) else {
            panic!()
        };
        assert!(
            reason.contains("composite location (DW_OP_piece"),
            "{reason}"
        );
        // DW_OP_GNU_parameter_ref <die> DW_OP_stack_value
        let Location::Unavailable(reason) = reduce(&[0xfa, 0x10, 0, 0, 0, 0x9f]) else {
            panic!()
        };
        assert!(reason.contains("DW_OP_GNU_parameter_ref"), "{reason}");
        // DW_OP_bra is not a location a handler can compute.
        let Location::Unavailable(reason) = reduce(&[0x30, 0x28, 0, 0, 0x9f]) else {
            panic!()
        };
        assert!(
            reason.starts_with("unsupported DWARF expression: "),
            "{reason}"
        );
        assert_eq!(register_name(5), "rdi");
        assert_eq!(register_name(40), "dwarf40");
    }
}
