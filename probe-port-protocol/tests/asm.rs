//! The text assembler and disassembler: goldens, every mnemonic against its
//! hand-computed encoding, every error with its position, and round trips over
//! arbitrary slots.
#![cfg(feature = "alloc")]

use probe_port_protocol::asm::{
    AsmError, assemble, disassemble, disassemble_labelled, format_insn, mnemonics,
};
use probe_port_protocol::isa::{Insn, op};
use proptest::prelude::*;
use proptest::sample::select;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn::new(code, dst, src, off, imm)
}

const HANDLER: &str = "\
; Count calls of a function by its first argument, skipping zero.
entry:
    ldxdw r6, [r1+40]      ; rdi is DWARF register 5: context slot 5, byte 40
    jeq r6, 0, done        # nothing to count
    stxdw [r10-8], r6      ; the key is the argument, on the stack
    mov64 r1, 0            ; map 0
    mov64 r2, r10
    add64 r2, -8           ; r2 = &key
    mov64 r3, 1
    call aggregate
done: mov64 r0, 0
    exit
";

const HANDLER_INSNS: [Insn; 10] = [
    insn(0x79, 6, 1, 40, 0),
    insn(0x15, 6, 0, 6, 0),
    insn(0x7b, 10, 6, -8, 0),
    insn(0xb7, 1, 0, 0, 0),
    insn(0xbf, 2, 10, 0, 0),
    insn(0x07, 2, 0, 0, -8),
    insn(0xb7, 3, 0, 0, 1),
    insn(0x85, 0, 0, 0, 12),
    insn(0xb7, 0, 0, 0, 0),
    insn(0x95, 0, 0, 0, 0),
];

#[test]
fn golden_handler_assembles_to_the_expected_slots() {
    assert_eq!(assemble(HANDLER).unwrap(), HANDLER_INSNS);
}

#[test]
fn golden_handler_disassembles() {
    assert_eq!(
        disassemble(&HANDLER_INSNS),
        "\
ldxdw r6, [r1+40]
jeq r6, 0, +6
stxdw [r10-8], r6
mov64 r1, 0
mov64 r2, r10
add64 r2, -8
mov64 r3, 1
call aggregate
mov64 r0, 0
exit
"
    );
    assert_eq!(
        disassemble_labelled(&HANDLER_INSNS),
        "    ldxdw r6, [r1+40]
    jeq r6, 0, L8
    stxdw [r10-8], r6
    mov64 r1, 0
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, 1
    call aggregate
L8:
    mov64 r0, 0
    exit
"
    );
}

/// Every mnemonic, in the disassembler's own spelling, with its encoding worked out
/// by hand from RFC 9669 (opcode = operation | source | class, or mode | size | class).
const MNEMONIC_TABLE: &[(&str, &[Insn])] = &[
    ("add64 r1, 2", &[insn(0x07, 1, 0, 0, 2)]),
    ("add64 r1, r2", &[insn(0x0f, 1, 2, 0, 0)]),
    ("sub64 r1, 2", &[insn(0x17, 1, 0, 0, 2)]),
    ("sub64 r1, r2", &[insn(0x1f, 1, 2, 0, 0)]),
    ("mul64 r1, 2", &[insn(0x27, 1, 0, 0, 2)]),
    ("mul64 r1, r2", &[insn(0x2f, 1, 2, 0, 0)]),
    ("div64 r1, 2", &[insn(0x37, 1, 0, 0, 2)]),
    ("div64 r1, r2", &[insn(0x3f, 1, 2, 0, 0)]),
    ("sdiv64 r1, -2", &[insn(0x37, 1, 0, 1, -2)]),
    ("sdiv64 r1, r2", &[insn(0x3f, 1, 2, 1, 0)]),
    ("or64 r1, 2", &[insn(0x47, 1, 0, 0, 2)]),
    ("or64 r1, r2", &[insn(0x4f, 1, 2, 0, 0)]),
    ("and64 r1, 0xff00ff", &[insn(0x57, 1, 0, 0, 0xff00ff)]),
    ("and64 r1, r2", &[insn(0x5f, 1, 2, 0, 0)]),
    ("lsh64 r1, 3", &[insn(0x67, 1, 0, 0, 3)]),
    ("lsh64 r1, r2", &[insn(0x6f, 1, 2, 0, 0)]),
    ("rsh64 r1, 3", &[insn(0x77, 1, 0, 0, 3)]),
    ("rsh64 r1, r2", &[insn(0x7f, 1, 2, 0, 0)]),
    ("mod64 r1, 7", &[insn(0x97, 1, 0, 0, 7)]),
    ("mod64 r1, r2", &[insn(0x9f, 1, 2, 0, 0)]),
    ("smod64 r1, 7", &[insn(0x97, 1, 0, 1, 7)]),
    ("smod64 r1, r2", &[insn(0x9f, 1, 2, 1, 0)]),
    ("xor64 r1, -1", &[insn(0xa7, 1, 0, 0, -1)]),
    ("xor64 r1, r2", &[insn(0xaf, 1, 2, 0, 0)]),
    ("mov64 r1, 42", &[insn(0xb7, 1, 0, 0, 42)]),
    ("mov64 r1, r2", &[insn(0xbf, 1, 2, 0, 0)]),
    ("arsh64 r1, 63", &[insn(0xc7, 1, 0, 0, 63)]),
    ("arsh64 r1, r2", &[insn(0xcf, 1, 2, 0, 0)]),
    ("add32 r3, 2", &[insn(0x04, 3, 0, 0, 2)]),
    ("add32 r3, r4", &[insn(0x0c, 3, 4, 0, 0)]),
    ("sub32 r3, 2", &[insn(0x14, 3, 0, 0, 2)]),
    ("sub32 r3, r4", &[insn(0x1c, 3, 4, 0, 0)]),
    ("mul32 r3, 2", &[insn(0x24, 3, 0, 0, 2)]),
    ("mul32 r3, r4", &[insn(0x2c, 3, 4, 0, 0)]),
    ("div32 r3, 2", &[insn(0x34, 3, 0, 0, 2)]),
    ("div32 r3, r4", &[insn(0x3c, 3, 4, 0, 0)]),
    ("sdiv32 r3, 2", &[insn(0x34, 3, 0, 1, 2)]),
    ("sdiv32 r3, r4", &[insn(0x3c, 3, 4, 1, 0)]),
    ("or32 r3, 2", &[insn(0x44, 3, 0, 0, 2)]),
    ("or32 r3, r4", &[insn(0x4c, 3, 4, 0, 0)]),
    ("and32 r3, 2", &[insn(0x54, 3, 0, 0, 2)]),
    ("and32 r3, r4", &[insn(0x5c, 3, 4, 0, 0)]),
    ("lsh32 r3, 2", &[insn(0x64, 3, 0, 0, 2)]),
    ("lsh32 r3, r4", &[insn(0x6c, 3, 4, 0, 0)]),
    ("rsh32 r3, 2", &[insn(0x74, 3, 0, 0, 2)]),
    ("rsh32 r3, r4", &[insn(0x7c, 3, 4, 0, 0)]),
    ("mod32 r3, 2", &[insn(0x94, 3, 0, 0, 2)]),
    ("mod32 r3, r4", &[insn(0x9c, 3, 4, 0, 0)]),
    ("smod32 r3, 2", &[insn(0x94, 3, 0, 1, 2)]),
    ("smod32 r3, r4", &[insn(0x9c, 3, 4, 1, 0)]),
    ("xor32 r3, 2", &[insn(0xa4, 3, 0, 0, 2)]),
    ("xor32 r3, r4", &[insn(0xac, 3, 4, 0, 0)]),
    ("mov32 r3, 0x80000000", &[insn(0xb4, 3, 0, 0, i32::MIN)]),
    ("mov32 r3, r4", &[insn(0xbc, 3, 4, 0, 0)]),
    ("arsh32 r3, 2", &[insn(0xc4, 3, 0, 0, 2)]),
    ("arsh32 r3, r4", &[insn(0xcc, 3, 4, 0, 0)]),
    ("neg64 r5", &[insn(0x87, 5, 0, 0, 0)]),
    ("neg32 r5", &[insn(0x84, 5, 0, 0, 0)]),
    ("mov64sx8 r1, r2", &[insn(0xbf, 1, 2, 8, 0)]),
    ("mov64sx16 r1, r2", &[insn(0xbf, 1, 2, 16, 0)]),
    ("mov64sx32 r1, r2", &[insn(0xbf, 1, 2, 32, 0)]),
    ("mov32sx8 r1, r2", &[insn(0xbc, 1, 2, 8, 0)]),
    ("mov32sx16 r1, r2", &[insn(0xbc, 1, 2, 16, 0)]),
    ("le16 r7", &[insn(0xd4, 7, 0, 0, 16)]),
    ("le32 r7", &[insn(0xd4, 7, 0, 0, 32)]),
    ("le64 r7", &[insn(0xd4, 7, 0, 0, 64)]),
    ("be16 r7", &[insn(0xdc, 7, 0, 0, 16)]),
    ("be32 r7", &[insn(0xdc, 7, 0, 0, 32)]),
    ("be64 r7", &[insn(0xdc, 7, 0, 0, 64)]),
    ("bswap16 r7", &[insn(0xd7, 7, 0, 0, 16)]),
    ("bswap32 r7", &[insn(0xd7, 7, 0, 0, 32)]),
    ("bswap64 r7", &[insn(0xd7, 7, 0, 0, 64)]),
    ("ldxb r0, [r1]", &[insn(0x71, 0, 1, 0, 0)]),
    ("ldxh r0, [r1+2]", &[insn(0x69, 0, 1, 2, 0)]),
    ("ldxw r0, [r1+4]", &[insn(0x61, 0, 1, 4, 0)]),
    ("ldxdw r0, [r10-32768]", &[insn(0x79, 0, 10, i16::MIN, 0)]),
    ("ldxsb r0, [r1+32767]", &[insn(0x91, 0, 1, i16::MAX, 0)]),
    ("ldxsh r0, [r1-2]", &[insn(0x89, 0, 1, -2, 0)]),
    ("ldxsw r0, [r1+8]", &[insn(0x81, 0, 1, 8, 0)]),
    ("stxb [r10-1], r2", &[insn(0x73, 10, 2, -1, 0)]),
    ("stxh [r10-2], r2", &[insn(0x6b, 10, 2, -2, 0)]),
    ("stxw [r10-4], r2", &[insn(0x63, 10, 2, -4, 0)]),
    ("stxdw [r10-8], r2", &[insn(0x7b, 10, 2, -8, 0)]),
    ("stb [r10-1], 255", &[insn(0x72, 10, 0, -1, 255)]),
    ("sth [r10-2], -1", &[insn(0x6a, 10, 0, -2, -1)]),
    (
        "stw [r10-4], 0x12345678",
        &[insn(0x62, 10, 0, -4, 0x1234_5678)],
    ),
    ("stdw [r10-8], 0", &[insn(0x7a, 10, 0, -8, 0)]),
    (
        "lddw r1, 0xffffffff81000000",
        &[
            insn(0x18, 1, 0, 0, 0x8100_0000_u32 as i32),
            insn(0x00, 0, 0, 0, -1),
        ],
    ),
    ("ja +3", &[insn(0x05, 0, 0, 3, 0)]),
    ("ja32 -100000", &[insn(0x06, 0, 0, 0, -100_000)]),
    ("jeq r1, 2, +1", &[insn(0x15, 1, 0, 1, 2)]),
    ("jeq r1, r2, +1", &[insn(0x1d, 1, 2, 1, 0)]),
    ("jgt r1, 2, +1", &[insn(0x25, 1, 0, 1, 2)]),
    ("jgt r1, r2, +1", &[insn(0x2d, 1, 2, 1, 0)]),
    ("jge r1, 2, +1", &[insn(0x35, 1, 0, 1, 2)]),
    ("jge r1, r2, +1", &[insn(0x3d, 1, 2, 1, 0)]),
    ("jset r1, 2, +1", &[insn(0x45, 1, 0, 1, 2)]),
    ("jset r1, r2, +1", &[insn(0x4d, 1, 2, 1, 0)]),
    ("jne r1, 2, +1", &[insn(0x55, 1, 0, 1, 2)]),
    ("jne r1, r2, +1", &[insn(0x5d, 1, 2, 1, 0)]),
    ("jsgt r1, 2, +1", &[insn(0x65, 1, 0, 1, 2)]),
    ("jsgt r1, r2, +1", &[insn(0x6d, 1, 2, 1, 0)]),
    ("jsge r1, 2, +1", &[insn(0x75, 1, 0, 1, 2)]),
    ("jsge r1, r2, +1", &[insn(0x7d, 1, 2, 1, 0)]),
    ("jlt r1, 2, +1", &[insn(0xa5, 1, 0, 1, 2)]),
    ("jlt r1, r2, +1", &[insn(0xad, 1, 2, 1, 0)]),
    ("jle r1, 2, +1", &[insn(0xb5, 1, 0, 1, 2)]),
    ("jle r1, r2, +1", &[insn(0xbd, 1, 2, 1, 0)]),
    ("jslt r1, 2, +1", &[insn(0xc5, 1, 0, 1, 2)]),
    ("jslt r1, r2, +1", &[insn(0xcd, 1, 2, 1, 0)]),
    ("jsle r1, 2, +1", &[insn(0xd5, 1, 0, 1, 2)]),
    ("jsle r1, r2, +1", &[insn(0xdd, 1, 2, 1, 0)]),
    ("jeq32 r1, 2, -1", &[insn(0x16, 1, 0, -1, 2)]),
    ("jeq32 r1, r2, -1", &[insn(0x1e, 1, 2, -1, 0)]),
    ("jgt32 r1, 2, -1", &[insn(0x26, 1, 0, -1, 2)]),
    ("jgt32 r1, r2, -1", &[insn(0x2e, 1, 2, -1, 0)]),
    ("jge32 r1, 2, -1", &[insn(0x36, 1, 0, -1, 2)]),
    ("jge32 r1, r2, -1", &[insn(0x3e, 1, 2, -1, 0)]),
    ("jset32 r1, 2, -1", &[insn(0x46, 1, 0, -1, 2)]),
    ("jset32 r1, r2, -1", &[insn(0x4e, 1, 2, -1, 0)]),
    ("jne32 r1, 2, -1", &[insn(0x56, 1, 0, -1, 2)]),
    ("jne32 r1, r2, -1", &[insn(0x5e, 1, 2, -1, 0)]),
    ("jsgt32 r1, 2, -1", &[insn(0x66, 1, 0, -1, 2)]),
    ("jsgt32 r1, r2, -1", &[insn(0x6e, 1, 2, -1, 0)]),
    ("jsge32 r1, 2, -1", &[insn(0x76, 1, 0, -1, 2)]),
    ("jsge32 r1, r2, -1", &[insn(0x7e, 1, 2, -1, 0)]),
    ("jlt32 r1, 2, -1", &[insn(0xa6, 1, 0, -1, 2)]),
    ("jlt32 r1, r2, -1", &[insn(0xae, 1, 2, -1, 0)]),
    ("jle32 r1, 2, -1", &[insn(0xb6, 1, 0, -1, 2)]),
    ("jle32 r1, r2, -1", &[insn(0xbe, 1, 2, -1, 0)]),
    ("jslt32 r1, 2, -1", &[insn(0xc6, 1, 0, -1, 2)]),
    ("jslt32 r1, r2, -1", &[insn(0xce, 1, 2, -1, 0)]),
    ("jsle32 r1, 2, -1", &[insn(0xd6, 1, 0, -1, 2)]),
    ("jsle32 r1, r2, -1", &[insn(0xde, 1, 2, -1, 0)]),
    ("call read_kernel", &[insn(0x85, 0, 0, 0, 1)]),
    ("call 99", &[insn(0x85, 0, 0, 0, 99)]),
    ("exit", &[insn(0x95, 0, 0, 0, 0)]),
    // Code 0x00 alone is a bare second slot of lddw: no readable form.
    (".raw 0x0000000000000000", &[insn(0x00, 0, 0, 0, 0)]),
];

#[test]
fn every_mnemonic_assembles_to_its_hand_computed_encoding() {
    for (text, expected) in MNEMONIC_TABLE {
        assert_eq!(assemble(text).as_deref(), Ok(*expected), "{text}");
        assert_eq!(disassemble(expected), format!("{text}\n"), "{text}");
        assert_eq!(format_insn(expected, 0), *text);
    }
}

#[test]
fn the_table_covers_every_mnemonic() {
    let mut tested: Vec<&str> = MNEMONIC_TABLE
        .iter()
        .map(|(text, _)| text.split(' ').next().unwrap())
        .collect();
    tested.sort_unstable();
    tested.dedup();
    let mut known: Vec<&str> = mnemonics().collect();
    known.sort_unstable();
    assert_eq!(tested, known);
}

#[test]
fn the_opcode_constants_agree_with_the_table() {
    // Spot checks that the hand-computed bytes above are what `isa::op` composes.
    assert_eq!(op::CLASS_ALU64 | op::SRC_X | op::MOV, 0xbf);
    assert_eq!(op::CLASS_LDX | op::MODE_MEMSX | op::SIZE_B, 0x91);
    assert_eq!(op::CLASS_ST | op::MODE_MEM | op::SIZE_DW, 0x7a);
    assert_eq!(op::CLASS_JMP32 | op::SRC_X | op::JSLE, 0xde);
    assert_eq!(op::CLASS_ALU | op::END | op::TO_BE, 0xdc);
}

#[test]
fn immediates_accept_every_spelling_of_the_field() {
    let mov = |imm| vec![insn(0xb7, 1, 0, 0, imm)];
    assert_eq!(assemble("mov64 r1, 0xffffffff").unwrap(), mov(-1));
    assert_eq!(assemble("mov64 r1, 4294967295").unwrap(), mov(-1));
    assert_eq!(assemble("mov64 r1, -1").unwrap(), mov(-1));
    assert_eq!(assemble("mov64 r1, -0x80000000").unwrap(), mov(i32::MIN));
    assert_eq!(assemble("mov64 r1, 0x80000000").unwrap(), mov(i32::MIN));
    assert_eq!(assemble("mov64 r1, 0xABCDEF").unwrap(), mov(0xab_cdef));
    assert_eq!(assemble("mov64 r1, -0").unwrap(), mov(0));
    let wide = |value: i64| {
        vec![
            insn(0x18, 2, 0, 0, value as i32),
            insn(0, 0, 0, 0, (value >> 32) as i32),
        ]
    };
    assert_eq!(assemble("lddw r2, -1").unwrap(), wide(-1));
    assert_eq!(assemble("lddw r2, 0xffffffffffffffff").unwrap(), wide(-1));
    assert_eq!(
        assemble("lddw r2, -0x8000000000000000").unwrap(),
        wide(i64::MIN)
    );
    assert_eq!(
        assemble("lddw r2, 0x123456789").unwrap(),
        wide(0x1_2345_6789)
    );
}

#[test]
fn immediates_disassemble_readably() {
    let line = |imm| disassemble(&[insn(0xb7, 1, 0, 0, imm)]);
    assert_eq!(line(65535), "mov64 r1, 65535\n");
    assert_eq!(line(-65535), "mov64 r1, -65535\n");
    assert_eq!(line(65536), "mov64 r1, 0x10000\n");
    assert_eq!(line(-65536), "mov64 r1, 0xffff0000\n");
    assert_eq!(line(i32::MIN), "mov64 r1, 0x80000000\n");
    let wide = |value: i64| {
        disassemble(&[
            insn(0x18, 2, 0, 0, value as i32),
            insn(0, 0, 0, 0, (value >> 32) as i32),
        ])
    };
    assert_eq!(wide(-3), "lddw r2, -3\n");
    assert_eq!(wide(-0x8000_0000), "lddw r2, 0xffffffff80000000\n");
    assert_eq!(wide(-0x8000_0001), "lddw r2, 0xffffffff7fffffff\n");
    assert_eq!(wide(i64::MIN), "lddw r2, 0x8000000000000000\n");
}

#[test]
fn syntax_details() {
    // Labels may share a line, stand alone, or stack; comments of both kinds.
    let text = "a: b:\n  # comment only\n\n  c: ja a ; back\n ja32 c\n_x.y: ja b\n";
    assert_eq!(
        assemble(text).unwrap(),
        [
            insn(0x05, 0, 0, -1, 0),
            insn(0x06, 0, 0, 0, -2),
            insn(0x05, 0, 0, -3, 0)
        ]
    );
    // A label may be defined after its last instruction.
    assert_eq!(assemble("ja end\nend:").unwrap(), [insn(0x05, 0, 0, 0, 0)]);
    // Spaces inside memory operands and around commas; CRLF line ends.
    assert_eq!(
        assemble("stw [ r10 - 0x10 ] ,7\r\nexit\r\n").unwrap(),
        [insn(0x62, 10, 0, -16, 7), insn(0x95, 0, 0, 0, 0)]
    );
    // Registers the verifier refuses are still writable.
    assert_eq!(
        assemble("mov64 r15, r11").unwrap(),
        [insn(0xbf, 15, 11, 0, 0)]
    );
    assert_eq!(disassemble(&[insn(0xbf, 15, 11, 0, 0)]), "mov64 r15, r11\n");
    // Jumps that only the verifier refuses.
    assert_eq!(assemble("ja -1").unwrap(), [insn(0x05, 0, 0, -1, 0)]);
    assert_eq!(assemble("ja +0").unwrap(), [insn(0x05, 0, 0, 0, 0)]);
    // Helpers by number print by name.
    assert_eq!(
        disassemble(&assemble("call 12").unwrap()),
        "call aggregate\n"
    );
    assert_eq!(assemble("call -1").unwrap(), [insn(0x85, 0, 0, 0, -1)]);
    // Labels spanning lddw count two slots.
    assert_eq!(
        assemble("ja x\nlddw r0, 1\nx: exit").unwrap()[0],
        insn(0x05, 0, 0, 2, 0)
    );
    assert_eq!(assemble("").unwrap(), []);
}

#[test]
fn raw_slots_are_the_wire_bytes_in_order() {
    let slot = assemble(".raw 0xb70100002a000000").unwrap();
    assert_eq!(slot, [insn(0xb7, 1, 0, 0, 42)]);
    assert_eq!(
        slot[0].to_bytes(),
        [0xb7, 0x01, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x00]
    );
    assert_eq!(
        assemble(".raw 0x0123456789ABCDEF").unwrap()[0].to_bytes(),
        [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
    );
    // A canonical slot written raw disassembles readably.
    assert_eq!(disassemble(&slot), "mov64 r1, 42\n");
}

#[test]
fn non_canonical_slots_disassemble_raw() {
    let cases: &[(&[Insn], &str)] = &[
        // Immediate form with a source register.
        (&[insn(0xb7, 1, 2, 0, 42)], ".raw 0xb72100002a000000\n"),
        // Register form with an immediate.
        (&[insn(0x0f, 1, 2, 0, 1)], ".raw 0x0f21000001000000\n"),
        // Offset where none is allowed, and a signed division with offset 2.
        (&[insn(0x07, 1, 0, 1, 1)], ".raw 0x0701010001000000\n"),
        (&[insn(0x37, 1, 0, 2, 1)], ".raw 0x3701020001000000\n"),
        // Sign-extending move from an unknown width, and in immediate form.
        (&[insn(0xbf, 1, 2, 4, 0)], ".raw 0xbf21040000000000\n"),
        (&[insn(0xb7, 1, 0, 8, 0)], ".raw 0xb701080000000000\n"),
        // Byte swaps of unknown width, or with the source bit in the 64-bit class.
        (&[insn(0xd4, 1, 0, 0, 8)], ".raw 0xd401000008000000\n"),
        (&[insn(0xdf, 1, 0, 0, 16)], ".raw 0xdf01000010000000\n"),
        // Negation with an immediate.
        (&[insn(0x87, 1, 0, 0, 1)], ".raw 0x8701000001000000\n"),
        // Loads with an immediate, stores with a source register in the immediate form.
        (&[insn(0x79, 1, 2, 0, 1)], ".raw 0x7921000001000000\n"),
        (&[insn(0x7a, 1, 2, 0, 1)], ".raw 0x7a21000001000000\n"),
        // Calls with a source register (local calls), exit with anything set.
        (&[insn(0x85, 0, 1, 0, 1)], ".raw 0x8510000001000000\n"),
        (&[insn(0x95, 0, 0, 0, 1)], ".raw 0x9500000001000000\n"),
        // ja with an immediate, ja32 with an offset.
        (&[insn(0x05, 0, 0, 1, 1)], ".raw 0x0500010001000000\n"),
        (&[insn(0x06, 0, 0, 1, 1)], ".raw 0x0600010001000000\n"),
        // Unknown opcodes, such as legacy packet loads and atomics.
        (&[insn(0x20, 0, 0, 0, 0)], ".raw 0x2000000000000000\n"),
        (&[insn(0xdb, 1, 2, 0, 0)], ".raw 0xdb21000000000000\n"),
        // lddw: last slot, pseudo source, or a second slot with fields set.
        (&[insn(0x18, 1, 0, 0, 1)], ".raw 0x1801000001000000\n"),
        (
            &[insn(0x18, 1, 1, 0, 1), insn(0, 0, 0, 0, 0)],
            ".raw 0x1811000001000000\n.raw 0x0000000000000000\n",
        ),
        (
            &[insn(0x18, 1, 0, 0, 1), insn(0, 0, 0, 1, 0)],
            ".raw 0x1801000001000000\n.raw 0x0000010000000000\n",
        ),
    ];
    for (insns, text) in cases {
        assert_eq!(disassemble(insns), *text);
        assert_eq!(assemble(text).as_deref(), Ok(*insns));
    }
}

#[test]
fn labelled_disassembly_keeps_outside_targets_numeric() {
    let insns = [
        insn(0x05, 0, 0, 1, 0),  // 0: to 2, the start of lddw
        insn(0x05, 0, 0, 1, 0),  // 1: to 3, inside lddw: numeric
        insn(0x18, 1, 0, 0, 7),  // 2: lddw r1, 7
        insn(0x00, 0, 0, 0, 0),  // 3
        insn(0x15, 1, 0, 1, 0),  // 4: to 6, past the end: numeric
        insn(0x16, 1, 0, -6, 0), // 5: to 0
    ];
    let text = disassemble_labelled(&insns);
    assert_eq!(
        text,
        "\
L0:
    ja L2
    ja +1
L2:
    lddw r1, 7
    jeq r1, 0, +1
    jeq32 r1, 0, L0
"
    );
    assert_eq!(assemble(&text).unwrap(), insns);
    assert_eq!(format_insn(&insns, 2), "lddw r1, 7");
    assert_eq!(format_insn(&insns, 3), ".raw 0x0000000000000000");
    assert_eq!(format_insn(&insns, 5), "jeq32 r1, 0, -6");
    assert_eq!(format_insn(&insns, 6), "(end of program)");
}

fn error(text: &str) -> AsmError {
    assemble(text).expect_err(text)
}

#[test]
fn errors_carry_line_column_and_cause() {
    let cases: &[(&str, usize, usize, &str)] = &[
        // Unknown mnemonics, lowercase only.
        ("exit\n  mvo64 r1, 2", 2, 3, "unknown mnemonic \"mvo64\""),
        ("EXIT", 1, 1, "unknown mnemonic \"EXIT\""),
        ("exit!", 1, 5, "unexpected \"!\" after mnemonic \"exit\""),
        (
            "[r1]",
            1,
            1,
            "expected an instruction or a label, found \"[r1]\"",
        ),
        // Operand counts.
        (
            "add64 r1",
            1,
            1,
            "\"add64\" takes 2 operands (dst, src|imm), found 1",
        ),
        ("exit r0", 1, 1, "\"exit\" takes no operands, found 1"),
        (
            "  ja +1, +2",
            1,
            3,
            "\"ja\" takes 1 operand (target), found 2",
        ),
        ("add64 r1,", 1, 10, "missing operand"),
        // Operand kinds.
        ("add64 [r1], 2", 1, 7, "expected a register, found \"[r1]\""),
        (
            "mov64 r1, rx",
            1,
            11,
            "expected a register or an immediate, found \"rx\"",
        ),
        (
            "mov64 r1, foo",
            1,
            11,
            "expected an immediate, found \"foo\"",
        ),
        (
            "ldxdw r1, r2",
            1,
            11,
            "expected a memory operand like [r1+8], found \"r2\"",
        ),
        ("ldxdw r1, [r2+8", 1, 16, "expected \"]\""),
        (
            "ldxdw r1, [8]",
            1,
            12,
            "expected a base register, found \"8\"",
        ),
        (
            "ldxdw r1, [r2*8]",
            1,
            14,
            "expected \"+\" or \"-\", found \"*8\"",
        ),
        (
            "ldxdw r1, [r2+x]",
            1,
            14,
            "expected a memory offset, found \"+x\"",
        ),
        (
            "jeq r1, 0, 5",
            1,
            12,
            "expected a label or a +N/-N offset, found \"5\"",
        ),
        ("ja +x", 1, 4, "expected a jump offset, found \"+x\""),
        ("call nothing", 1, 6, "unknown helper \"nothing\""),
        (
            ".raw 0x1234",
            1,
            6,
            "expected 0x and exactly 16 hex digits (the 8 wire bytes in order), found \"0x1234\"",
        ),
        ("1abc: exit", 1, 1, "invalid label name \"1abc\""),
        // Registers out of range.
        (
            "mov64 r16, 1",
            1,
            7,
            "register \"r16\" out of range (r0 to r15)",
        ),
        (
            "ldxb r0, [r99+1]",
            1,
            11,
            "register \"r99\" out of range (r0 to r15)",
        ),
        // Immediates and offsets out of range.
        (
            "mov64 r1, 0x100000000",
            1,
            11,
            "immediate \"0x100000000\" out of range for a 32-bit field",
        ),
        (
            "stw [r1], -2147483649",
            1,
            11,
            "immediate \"-2147483649\" out of range for a 32-bit field",
        ),
        (
            "call 99999999999999999999999999999999999999999999",
            1,
            6,
            "immediate \"99999999999999999999999999999999999999999999\" out of range for a 32-bit field",
        ),
        (
            "lddw r1, 0x10000000000000000",
            1,
            10,
            "immediate \"0x10000000000000000\" out of range for a 64-bit immediate",
        ),
        (
            "lddw r1, -0x8000000000000001",
            1,
            10,
            "immediate \"-0x8000000000000001\" out of range for a 64-bit immediate",
        ),
        (
            "stw [r10-32769], 1",
            1,
            9,
            "memory offset \"-32769\" out of range (-32768 to 32767)",
        ),
        // Labels.
        ("ja nowhere", 1, 4, "undefined label \"nowhere\""),
        (
            "a: exit\nexit\n  a: exit",
            3,
            3,
            "duplicate label \"a\" (first defined on line 1)",
        ),
        // Jump offsets.
        (
            "ja +32768",
            1,
            4,
            "jump offset +32768 out of range (-32768 to 32767)",
        ),
        (
            "jeq r1, 0, -32769",
            1,
            12,
            "jump offset -32769 out of range (-32768 to 32767)",
        ),
        (
            "ja32 +2147483648",
            1,
            6,
            "jump offset +2147483648 out of range (-2147483648 to 2147483647)",
        ),
        // Columns count characters, not bytes.
        ("\u{3000}mvo64", 1, 2, "unknown mnemonic \"mvo64\""),
    ];
    for (text, line, column, message) in cases {
        let found = error(text);
        assert_eq!(
            (found.line, found.column, found.message.as_str()),
            (*line, *column, *message),
            "{text:?}"
        );
    }
}

#[test]
fn errors_display_with_their_position() {
    assert_eq!(
        error("exit\nexit\n  mvo64 r1, 2").to_string(),
        "line 3, column 3: unknown mnemonic \"mvo64\""
    );
    let boxed: Box<dyn std::error::Error> = Box::new(error("mvo64"));
    assert!(boxed.to_string().starts_with("line 1, column 1:"));
}

#[test]
fn label_jumps_beyond_sixteen_bits_need_ja32() {
    let far = format!("ja far\n{}far: exit\n", "exit\n".repeat(32768));
    let found = error(&far);
    assert_eq!((found.line, found.column), (1, 4));
    assert_eq!(
        found.message,
        "jump to \"far\" is +32768 slots, out of range (-32768 to 32767)"
    );
    let just_in_range = format!("ja far\n{}far: exit\n", "exit\n".repeat(32767));
    assert_eq!(
        assemble(&just_in_range).unwrap()[0],
        insn(0x05, 0, 0, i16::MAX, 0)
    );
    let wide = far.replacen("ja far", "ja32 far", 1);
    assert_eq!(assemble(&wide).unwrap()[0], insn(0x06, 0, 0, 0, 32768));
    let backwards = format!("back: exit\n{}jeq r0, 0, back\n", "exit\n".repeat(32767));
    assert_eq!(
        error(&backwards).message,
        "jump to \"back\" is -32769 slots, out of range (-32768 to 32767)"
    );
}

/// Opcodes the table knows, plus 0x00 (the second slot of lddw), so that random
/// slots often hit a real opcode with random, usually non-canonical, fields.
const KNOWN_CODES: [u8; 32] = [
    0x00, 0x04, 0x07, 0x0c, 0x0f, 0x18, 0x37, 0x3f, 0x84, 0x87, 0x94, 0x97, 0xb4, 0xb7, 0xbc, 0xbf,
    0xd4, 0xd7, 0xdc, 0x61, 0x79, 0x81, 0x91, 0x62, 0x7a, 0x63, 0x7b, 0x05, 0x06, 0x15, 0x85, 0x95,
];

fn random_slot() -> impl Strategy<Value = Insn> {
    let small_or_any_off = prop_oneof![Just(0i16), 0i16..40, any::<i16>()];
    let small_or_any_imm = prop_oneof![Just(0i32), Just(16), Just(64), any::<i32>()];
    prop_oneof![
        any::<[u8; 8]>().prop_map(Insn::from_bytes),
        (
            select(&KNOWN_CODES[..]),
            any::<u8>(),
            small_or_any_off,
            small_or_any_imm
        )
            .prop_map(|(code, regs, off, imm)| Insn {
                code,
                regs,
                off,
                imm
            }),
        (
            select(&KNOWN_CODES[..]),
            prop_oneof![Just(0u8), any::<u8>()],
            -4i16..4,
            -4i32..4
        )
            .prop_map(|(code, regs, off, imm)| Insn {
                code,
                regs,
                off,
                imm
            }),
    ]
}

/// One canonical instruction (two slots for lddw), built from the RFC 9669 layout
/// independently of the assembler.
fn canonical() -> impl Strategy<Value = Vec<Insn>> {
    const ARITHMETIC: [(u8, i16); 14] = [
        (op::ADD, 0),
        (op::SUB, 0),
        (op::MUL, 0),
        (op::DIV, 0),
        (op::DIV, 1),
        (op::OR, 0),
        (op::AND, 0),
        (op::LSH, 0),
        (op::RSH, 0),
        (op::MOD, 0),
        (op::MOD, 1),
        (op::XOR, 0),
        (op::MOV, 0),
        (op::ARSH, 0),
    ];
    const CONDITIONS: [u8; 11] = [
        op::JEQ,
        op::JGT,
        op::JGE,
        op::JSET,
        op::JNE,
        op::JSGT,
        op::JSGE,
        op::JLT,
        op::JLE,
        op::JSLT,
        op::JSLE,
    ];
    let class = || select(&[op::CLASS_ALU, op::CLASS_ALU64][..]);
    let jump_class = || select(&[op::CLASS_JMP, op::CLASS_JMP32][..]);
    let register = || 0u8..16;
    let jump = || prop_oneof![-8i16..8, any::<i16>()];
    prop_oneof![
        (class(), select(&ARITHMETIC[..]), register(), any::<i32>()).prop_map(
            |(class, (operation, off), dst, imm)| vec![insn(class | operation, dst, 0, off, imm)]
        ),
        (class(), select(&ARITHMETIC[..]), register(), register()).prop_map(
            |(class, (operation, off), dst, src)| {
                vec![insn(class | operation | op::SRC_X, dst, src, off, 0)]
            }
        ),
        (class(), register()).prop_map(|(class, dst)| vec![insn(class | op::NEG, dst, 0, 0, 0)]),
        (
            select(
                &[
                    (op::CLASS_ALU64, 8),
                    (op::CLASS_ALU64, 16),
                    (op::CLASS_ALU64, 32),
                    (op::CLASS_ALU, 8),
                    (op::CLASS_ALU, 16)
                ][..]
            ),
            register(),
            register()
        )
            .prop_map(|((class, bits), dst, src)| {
                vec![insn(class | op::MOV | op::SRC_X, dst, src, bits, 0)]
            }),
        (
            select(&[0xd4u8, 0xdc, 0xd7][..]),
            select(&[16, 32, 64][..]),
            register()
        )
            .prop_map(|(code, width, dst)| vec![insn(code, dst, 0, 0, width)]),
        (
            select(&[0x61u8, 0x69, 0x71, 0x79, 0x81, 0x89, 0x91][..]),
            register(),
            register(),
            any::<i16>()
        )
            .prop_map(|(code, dst, src, off)| vec![insn(code, dst, src, off, 0)]),
        (
            select(&[0x63u8, 0x6b, 0x73, 0x7b][..]),
            register(),
            register(),
            any::<i16>()
        )
            .prop_map(|(code, dst, src, off)| vec![insn(code, dst, src, off, 0)]),
        (
            select(&[0x62u8, 0x6a, 0x72, 0x7a][..]),
            register(),
            any::<i16>(),
            any::<i32>()
        )
            .prop_map(|(code, dst, off, imm)| vec![insn(code, dst, 0, off, imm)]),
        (register(), any::<i64>()).prop_map(|(dst, value)| {
            vec![
                insn(op::LDDW, dst, 0, 0, value as i32),
                insn(0, 0, 0, 0, (value >> 32) as i32),
            ]
        }),
        jump().prop_map(|off| vec![insn(op::CLASS_JMP | op::JA, 0, 0, off, 0)]),
        prop_oneof![-8i32..8, any::<i32>()].prop_map(|imm| vec![insn(
            op::CLASS_JMP32 | op::JA,
            0,
            0,
            0,
            imm
        )]),
        (
            jump_class(),
            select(&CONDITIONS[..]),
            register(),
            any::<i32>(),
            jump()
        )
            .prop_map(|(class, condition, dst, imm, off)| vec![insn(
                class | condition,
                dst,
                0,
                off,
                imm
            )]),
        (
            jump_class(),
            select(&CONDITIONS[..]),
            register(),
            register(),
            jump()
        )
            .prop_map(|(class, condition, dst, src, off)| {
                vec![insn(class | condition | op::SRC_X, dst, src, off, 0)]
            }),
        any::<i32>().prop_map(|imm| vec![insn(op::CLASS_JMP | op::CALL, 0, 0, 0, imm)]),
        Just(vec![insn(op::CLASS_JMP | op::EXIT, 0, 0, 0, 0)]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_slots_round_trip(insns in prop::collection::vec(random_slot(), 0..64)) {
        prop_assert_eq!(assemble(&disassemble(&insns)), Ok(insns.clone()));
        prop_assert_eq!(assemble(&disassemble_labelled(&insns)), Ok(insns.clone()));
        for index in 0..insns.len() {
            let line = format_insn(&insns, index);
            let slots = assemble(&line).unwrap();
            prop_assert_eq!(&slots[..], &insns[index..index + slots.len()]);
        }
    }

    #[test]
    fn canonical_instructions_read_as_text(
        program in prop::collection::vec(canonical(), 0..32)
    ) {
        let insns: Vec<Insn> = program.into_iter().flatten().collect();
        let text = disassemble(&insns);
        prop_assert!(!text.contains(".raw"), "{}", text);
        prop_assert_eq!(assemble(&text), Ok(insns.clone()));
        let labelled = disassemble_labelled(&insns);
        prop_assert!(!labelled.contains(".raw"), "{}", labelled);
        prop_assert_eq!(assemble(&labelled), Ok(insns));
    }
}

/// Pieces of the syntax, for text that is nearly right.
const VOCABULARY: [&str; 24] = [
    "mov64",
    "ldxdw",
    "stw",
    "lddw",
    "jeq",
    "ja32",
    "call",
    ".raw",
    "exit",
    "r1",
    "r16",
    "[r10",
    "-8]",
    "+",
    "-",
    "0x",
    "ffffffff",
    "99999999999",
    ",",
    ":",
    "l:",
    " ",
    "\n",
    ";",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_assembles_or_errors_without_panicking(text in "\\PC{0,120}") {
        let _ = assemble(&text);
    }

    #[test]
    fn near_miss_text_errors_inside_the_text(
        words in prop::collection::vec(select(&VOCABULARY[..]), 0..24)
    ) {
        let text = words.concat();
        if let Err(error) = assemble(&text) {
            let line = text.lines().nth(error.line - 1).unwrap_or_default();
            prop_assert!(error.column >= 1 && error.column <= line.chars().count() + 1);
        }
    }
}
