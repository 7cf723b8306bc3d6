//! Arbitrary wire bytes through the decoder and the verifier: never a panic, the same
//! answer twice, errors inside the program, and every accepted program structurally sound.
//!
//! The input is cut to whole 8-byte slots and decoded with `isa::decode_into`; the
//! program is verified as a probe program and as an entry program against a fixed map
//! set (map 1: hash map, 8-byte keys and values; map 2: count aggregation; map 3: log2
//! histogram). An entry program may do everything a probe program may, so a program the
//! probe verification accepts must also pass as an entry program.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use probe_port_protocol::isa::{FRAME_POINTER, INSN_SIZE, Insn, STACK_SIZE, decode_into, op};
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapShapes, MapSpec};
use probe_port_protocol::verifier::{
    ProgramKind, Rule, VerifiedProgram, VerifierConfig, VerifierScratch, VerifyError, verify,
};

/// The fixed map set.
struct FuzzMaps;

impl MapShapes for FuzzMaps {
    fn spec(&self, map: MapId) -> Option<MapSpec> {
        let (kind, value_size) = match map.0 {
            1 => (MapKind::Hash, 8),
            2 => (MapKind::Aggregate(AggregateKind::Count), 8),
            3 => (MapKind::Aggregate(AggregateKind::Log2Hist), 65 * 8),
            _ => return None,
        };
        Some(MapSpec {
            map,
            kind,
            key_size: 8,
            value_size,
            max_entries: 16,
        })
    }
}

thread_local! {
    /// One scratch for every run, as a kernel would keep it.
    static SCRATCH: RefCell<Box<VerifierScratch>> = RefCell::new(Box::new(VerifierScratch::new()));
}

/// What a verification said, in a comparable form.
fn summary(
    result: &Result<VerifiedProgram<'_>, VerifyError>,
) -> Result<(usize, Vec<MapId>), VerifyError> {
    match result {
        Ok(program) => Ok((program.stack_depth(), program.maps_used().iter().collect())),
        Err(error) => Err(*error),
    }
}

/// Walks the reachable slots of an accepted program: each is the start of an
/// instruction, names registers r0 to r10 only, and continues only forward, inside the
/// program and never into the second slot of an `lddw`.
fn check_structure(insns: &[Insn]) {
    let len = insns.len();
    let mut starts = vec![false; len];
    let mut index = 0;
    while index < len {
        starts[index] = true;
        index += if insns[index].is_wide() { 2 } else { 1 };
    }
    let mut reachable = vec![false; len];
    reachable[0] = true;
    for index in 0..len {
        if !reachable[index] {
            continue;
        }
        assert!(starts[index], "slot {index} is reached but is an lddw tail");
        let insn = insns[index];
        assert!(insn.dst() <= FRAME_POINTER && insn.src() <= FRAME_POINTER);
        let operation = insn.code & op::OP_MASK;
        let jump_class = matches!(insn.class(), op::CLASS_JMP | op::CLASS_JMP32);
        let mut distances = Vec::new();
        if jump_class && operation == op::EXIT {
            // The program ends here.
        } else if jump_class && operation == op::JA {
            let jmp = insn.class() == op::CLASS_JMP;
            distances.push(if jmp {
                i64::from(insn.off)
            } else {
                i64::from(insn.imm)
            });
        } else if jump_class && operation != op::CALL {
            distances.push(i64::from(insn.off));
            distances.push(0);
        } else {
            distances.push(if insn.is_wide() { 1 } else { 0 });
        }
        for distance in distances {
            assert!(distance >= 0, "slot {index} jumps backward");
            let target = usize::try_from(index as i64 + 1 + distance).expect("forward");
            assert!(target < len, "slot {index} continues past the end");
            assert!(starts[target], "slot {index} continues into an lddw tail");
            reachable[target] = true;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = data.len() / INSN_SIZE * INSN_SIZE;
    let mut slots = vec![Insn::default(); whole / INSN_SIZE];
    let Ok(insns) = decode_into(&data[..whole], &mut slots) else {
        return;
    };
    SCRATCH.with(|scratch| {
        let scratch = &mut **scratch.borrow_mut();
        let mut accepted = [false; 2];
        for (position, kind) in [ProgramKind::Probe, ProgramKind::Entry]
            .into_iter()
            .enumerate()
        {
            let config = VerifierConfig::new(kind, &FuzzMaps);
            let first = verify(insns, &config, scratch);
            let first_summary = summary(&first);
            match &first {
                Ok(program) => {
                    accepted[position] = true;
                    assert_eq!(program.insns().len(), insns.len());
                    assert_eq!(program.kind(), kind);
                    assert!(program.stack_depth() <= STACK_SIZE);
                    assert!(
                        program
                            .maps_used()
                            .iter()
                            .all(|map| FuzzMaps.spec(map).is_some())
                    );
                    check_structure(insns);
                }
                Err(error) => {
                    assert!((error.index as usize) < insns.len().max(1), "{error:?}");
                    assert_eq!(Rule::from_code(error.rule.code()), Some(error.rule));
                    assert!(!error.to_string().is_empty());
                }
            }
            let again = verify(insns, &config, scratch);
            assert_eq!(first_summary, summary(&again), "a second run disagrees");
        }
        assert!(
            !accepted[0] || accepted[1],
            "a probe program fails as an entry program"
        );
    });
});
