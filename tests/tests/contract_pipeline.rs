//! The contract end to end, without a kernel: a program written in assembler text
//! travels as a client would send it (message, frame, noisy byte stream) to a
//! stub-side decoder, is verified and run on a probe context, and what it emits
//! travels back as an event; a program the verifier refuses comes back as a
//! numbered error that names the instruction and the rule.

use kernel_stub::interpreter::{EntrySaveError, Fault, Full, Helpers, run};
use probe_port_protocol::asm::{assemble, format_insn};
use probe_port_protocol::context::{ProbeContext, x86_64};
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::frame::{DefaultFrameDecoder, encode_message_vec};
use probe_port_protocol::isa::{self, Insn, MAX_INSNS};
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};
use probe_port_protocol::message::*;
use probe_port_protocol::verifier::{ProgramKind, Rule, VerifierConfig, VerifierScratch, verify};

/// The example program of the README.
const README_EXAMPLE: &str = "
; count calls whose first argument (rdi, context slot 5) is above 100
    ldxdw r6, [r1+40]        ; r6 = rdi
    jle r6, 100, out
    stdw [r10-8], 0          ; key = 0
    mov64 r1, 1              ; map 1, an aggregation
    mov64 r2, r10
    add64 r2, -8             ; r2 = &key
    mov64 r3, 1
    call aggregate
out:
    mov64 r0, 0
    exit
";

/// Emits the first argument and the task id as a 16-byte record.
const EMITTER: &str = "
    ldxdw r6, [r1+40]
    stxdw [r10-16], r6
    call task_id
    stxdw [r10-8], r0
    mov64 r1, r10
    add64 r1, -16
    mov64 r2, 16
    call emit
    mov64 r0, 0
    exit
";

const COUNT_MAP: MapSpec = MapSpec {
    map: MapId(1),
    kind: MapKind::Aggregate(AggregateKind::Count),
    key_size: 8,
    value_size: 8,
    max_entries: 16,
};

/// A stub-side executor with one count map and an event list.
#[derive(Default)]
struct Executor {
    counts: std::collections::BTreeMap<Vec<u8>, u64>,
    records: Vec<Vec<u8>>,
}

impl Helpers for Executor {
    fn read_kernel(&mut self, _dst: &mut [u8], src: u64) -> Result<(), Fault> {
        Err(Fault { address: src })
    }
    fn read_kernel_str(&mut self, _dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        Err(Fault { address: src })
    }
    fn cpu(&mut self) -> u64 {
        0
    }
    fn task_id(&mut self) -> u64 {
        42
    }
    fn task_name(&mut self, _dst: &mut [u8]) -> usize {
        0
    }
    fn time_ns(&mut self) -> u64 {
        0
    }
    fn map_spec(&self, map: MapId) -> Option<MapSpec> {
        (map == COUNT_MAP.map).then_some(COUNT_MAP)
    }
    fn map_lookup(&mut self, _map: MapId, _key: &[u8], _value: &mut [u8]) -> bool {
        false
    }
    fn map_update(&mut self, _map: MapId, _key: &[u8], _value: &[u8]) -> Result<(), Full> {
        Err(Full)
    }
    fn map_delete(&mut self, _map: MapId, _key: &[u8]) -> bool {
        false
    }
    fn aggregate(&mut self, _map: MapId, key: &[u8], _value: i64) -> Result<(), Full> {
        *self.counts.entry(key.to_vec()).or_default() += 1;
        Ok(())
    }
    fn emit(&mut self, record: &[u8]) -> Result<(), Full> {
        self.records.push(record.to_vec());
        Ok(())
    }
    fn stack_trace(&mut self, _dst: &mut [u8]) -> usize {
        0
    }
    fn entry_save(&mut self, _slot: usize, _value: u64) -> Result<(), EntrySaveError> {
        Err(EntrySaveError::NotEntryProgram)
    }
}

/// Sends `message` as a frame preceded by line noise, and returns the payload the
/// stub's decoder recovers.
fn through_noisy_stream<T: serde::Serialize>(message: &T) -> Vec<u8> {
    let mut wire = b"\xff\x13garbage from a serial line\x00".to_vec();
    wire.extend(encode_message_vec(message).unwrap());
    let mut decoder = DefaultFrameDecoder::new();
    let mut input = &wire[..];
    let mut payloads = Vec::new();
    while !input.is_empty() {
        if let Some(Ok(payload)) = decoder.feed(&mut input) {
            payloads.push(payload.to_vec());
        }
    }
    assert_eq!(
        decoder.frames_dropped(),
        1,
        "the noise is reported as one dropped frame"
    );
    assert_eq!(payloads.len(), 1);
    payloads.pop().unwrap()
}

/// What the stub does with an `Arm` request: decode, verify, run once on `context`.
fn stub_arms_and_fires(
    payload: &[u8],
    context: &ProbeContext,
    executor: &mut Executor,
) -> Result<u64, ErrorReply<'static>> {
    let request = decode_request(payload).expect("the request decodes");
    request.validate().expect("the request is in bounds");
    let RequestBody::Arm(ArmRequest { program, .. }) = request.body else {
        panic!("expected an Arm request");
    };
    let mut slots = [Insn::default(); MAX_INSNS];
    let insns = isa::decode_into(program, &mut slots).expect("whole instructions");
    let maps = [COUNT_MAP];
    let config = VerifierConfig::new(ProgramKind::Probe, &maps);
    let mut scratch = Box::new(VerifierScratch::<MAX_INSNS>::new());
    let verified = verify(insns, &config, &mut scratch).map_err(|error| {
        ErrorReply::with(
            ErrorCode::PROGRAM_REJECTED,
            ErrorDetail::Verifier {
                index: error.index,
                rule: error.rule.code(),
                entry: false,
            },
        )
    })?;
    Ok(run(verified.insns(), context, executor).expect("a verified program does not trap"))
}

fn arm_request(program: &[Insn]) -> Request<'static> {
    let program: &'static [u8] = Box::leak(isa::encode(program).into_boxed_slice());
    Request {
        seq: 7,
        body: RequestBody::Arm(ArmRequest {
            site: Site::Dynamic {
                address: 0xffff_ffff_8100_1000,
                expected: &[0x55],
            },
            program,
        }),
    }
}

fn context_with_first_argument(value: u64) -> ProbeContext {
    let mut context = ProbeContext::default();
    context.slots[x86_64::ARGUMENT_SLOTS[0]] = value;
    context
}

#[test]
fn the_readme_example_counts_only_large_arguments() {
    let program = assemble(README_EXAMPLE).expect("the README example assembles");
    let payload = through_noisy_stream(&arm_request(&program));
    let mut executor = Executor::default();
    for argument in [5, 101, 100, 7_000, 0] {
        let context = context_with_first_argument(argument);
        assert_eq!(
            stub_arms_and_fires(&payload, &context, &mut executor),
            Ok(0)
        );
    }
    assert_eq!(executor.counts.get(&vec![0u8; 8]), Some(&2));
}

#[test]
fn an_emitted_record_comes_back_as_an_event() {
    let program = assemble(EMITTER).unwrap();
    let payload = through_noisy_stream(&arm_request(&program));
    let mut executor = Executor::default();
    stub_arms_and_fires(
        &payload,
        &context_with_first_argument(0xdead_beef),
        &mut executor,
    )
    .unwrap();
    let record = executor.records.pop().expect("one record");

    let event = StubMessage::Event(Event {
        cpu: 1,
        seq: 0,
        probe: ProbeId(3),
        time_ns: 99,
        data: &record,
    });
    let payload = through_noisy_stream(&event);
    let StubMessage::Event(received) = decode_stub_message(&payload).unwrap() else {
        panic!("expected an event");
    };
    assert_eq!(received.probe, ProbeId(3));
    assert_eq!(&received.data[..8], &0xdead_beef_u64.to_le_bytes());
    assert_eq!(&received.data[8..], &42_u64.to_le_bytes());
}

#[test]
fn a_refused_program_comes_back_naming_instruction_and_rule() {
    // Reads past the end of the context: slot 32 does not exist.
    let program = assemble("mov64 r0, 0\nldxdw r2, [r1+256]\nexit").unwrap();
    let payload = through_noisy_stream(&arm_request(&program));
    let error = stub_arms_and_fires(&payload, &ProbeContext::default(), &mut Executor::default())
        .unwrap_err();

    let reply = StubMessage::Reply {
        seq: 7,
        reply: Err(error),
    };
    let payload = through_noisy_stream(&reply);
    let StubMessage::Reply {
        seq: 7,
        reply: Err(received),
    } = decode_stub_message(&payload).unwrap()
    else {
        panic!("expected the error reply to request 7");
    };
    assert_eq!(received.code, ErrorCode::PROGRAM_REJECTED);
    let ErrorDetail::Verifier {
        index,
        rule,
        entry: false,
    } = received.detail
    else {
        panic!("expected a verifier detail, got {:?}", received.detail);
    };
    assert_eq!(
        (index, Rule::from_code(rule)),
        (1, Some(Rule::ContextOutOfBounds))
    );
    assert_eq!(
        received.to_string(),
        "handler program rejected (error 14): program instruction 1: \
         the context load is not entirely inside the 256-byte probe context"
    );
    assert_eq!(format_insn(&program, index as usize), "ldxdw r2, [r1+256]");
}
