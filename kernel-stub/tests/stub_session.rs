//! The session rules (PROTOCOL.md §5) and every error the stub can reply (§6,
//! §7.5), one test each, with the exact code and detail.

#[macro_use]
mod common;

use common::*;
use kernel_stub::limits::{
    MAP_ARENA_BYTES, MAX_MAPS, MAX_MESSAGE, MAX_PAGE_ENTRIES, MAX_PROBES, MAX_PROGRAM_INSNS,
    MAX_RECORD, MAX_TIMERS, PROGRAM_ARENA_SLOTS, RETURN_DEPTH, RING_BYTES_PER_CPU,
};
use kernel_stub::{ArgType, MarkerSite};
use probe_port_protocol::error::ErrorCode;
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};
use probe_port_protocol::message::{
    Arch, Capabilities, ErrorDetail, Hello, ProbeId, ReplyBody, RequestBody, Site, StubMessage,
    TimerScope, UNATTRIBUTED_SEQ, encode,
};
use probe_port_protocol::verifier::Rule;

fn hello(min_version: u16, max_version: u16, client: &str) -> RequestBody<'_> {
    RequestBody::Hello(Hello {
        min_version,
        max_version,
        client,
    })
}

fn timer() -> Site<'static> {
    Site::Timer {
        period_ns: 1_000_000,
        scope: TimerScope::OneCpu,
    }
}

fn hash_map(map: u16) -> MapSpec {
    MapSpec {
        map: MapId(map),
        kind: MapKind::Hash,
        key_size: 8,
        value_size: 8,
        max_entries: 4,
    }
}

#[test]
fn a_request_before_hello_is_no_handshake() {
    let mut client = Client::new(new_stub!());
    client
        .send(RequestBody::KeepAlive)
        .assert_err(ErrorCode::NO_HANDSHAKE, ErrorDetail::None);
    client
        .send(RequestBody::Start)
        .assert_err(ErrorCode::NO_HANDSHAKE, ErrorDetail::None);
}

#[test]
fn hello_announces_identity_limits_capabilities_and_lease() {
    let mut client = Client::new(new_stub!());
    let reply = client.hello();
    let ReplyBody::Hello(hello) = reply.ok() else {
        panic!("not a hello");
    };
    assert_eq!(hello.version, 1);
    assert_eq!(hello.kernel.name, "sim-kernel 1.0");
    assert_eq!(hello.kernel.build_id, &[0xab; 20]);
    assert_eq!(hello.kernel.arch, Arch::X86_64);
    assert_eq!(hello.cpu_count, 2);
    assert_eq!(hello.limits.max_message, MAX_MESSAGE as u32);
    assert_eq!(hello.limits.max_program_insns, MAX_PROGRAM_INSNS as u32);
    assert_eq!(hello.limits.max_probes, MAX_PROBES as u32);
    assert_eq!(hello.limits.max_maps, MAX_MAPS as u32);
    assert_eq!(hello.limits.map_memory, MAP_ARENA_BYTES as u64);
    assert_eq!(hello.limits.ring_bytes_per_cpu, RING_BYTES_PER_CPU as u32);
    assert_eq!(hello.limits.max_record, MAX_RECORD as u32);
    assert_eq!(hello.limits.return_depth, RETURN_DEPTH as u32);
    let expected = Capabilities::DYNAMIC
        | Capabilities::RETURN
        | Capabilities::MARKER
        | Capabilities::TIMER
        | Capabilities::PROFILE
        | Capabilities::STACK_TRACE
        | Capabilities::JUMP;
    assert_eq!(hello.capabilities, Capabilities(expected));
    assert_eq!(hello.lease_ms, 5000);
    // The return trampoline was written at the start of the out-of-line area.
    assert_eq!(client.sim().text_writes(), vec![(AREA_BASE, vec![0xcc])]);
}

#[test]
fn a_second_hello_is_bad_state() {
    let mut client = Client::new(new_stub!());
    client.open();
    client
        .hello()
        .assert_err(ErrorCode::BAD_STATE, ErrorDetail::None);
}

#[test]
fn no_common_version_is_version_with_the_stubs_highest() {
    let mut client = Client::new(new_stub!());
    client
        .send(hello(2, 7, "future"))
        .assert_err(ErrorCode::VERSION, ErrorDetail::Value(1));
    // The session did not open.
    client
        .send(RequestBody::KeepAlive)
        .assert_err(ErrorCode::NO_HANDSHAKE, ErrorDetail::None);
    // A range that includes 1 works.
    assert!(
        matches!(client.send(hello(0, 3, "wide")).ok(), ReplyBody::Hello(hello) if hello.version == 1)
    );
}

#[test]
fn too_many_cpus_is_unsupported() {
    let stub = new_stub!();
    stub.platform().set_cpu_count(9);
    let mut client = Client::new(stub);
    client
        .hello()
        .assert_err(ErrorCode::UNSUPPORTED, ErrorDetail::Value(8));
}

#[test]
fn undecodable_requests_still_get_exactly_one_reply() {
    let mut client = Client::new(new_stub!());
    let cases: [(&[u8], u32, ErrorCode); 5] = [
        // seq 7, kind 16: a request kind this version does not know.
        (&[0x07, 0x10], 7, ErrorCode::UNKNOWN_REQUEST),
        // seq 300, kind 200 (two-byte varint).
        (&[0xac, 0x02, 0xc8, 0x01], 300, ErrorCode::UNKNOWN_REQUEST),
        // seq 5, Hello cut short.
        (&[0x05, 0x00, 0x01], 5, ErrorCode::MALFORMED),
        // No sequence number at all.
        (&[], UNATTRIBUTED_SEQ, ErrorCode::MALFORMED),
        (&[0x80, 0x80], UNATTRIBUTED_SEQ, ErrorCode::MALFORMED),
    ];
    for (payload, seq, code) in cases {
        let replies = client.send_payload(payload);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].seq(), seq);
        replies[0].assert_err(code, ErrorDetail::None);
    }
}

#[test]
fn out_of_bound_fields_are_invalid_argument_with_the_field_name() {
    let mut client = Client::new(new_stub!());
    let long_name = "x".repeat(65);
    client
        .send(hello(1, 1, &long_name))
        .assert_err(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("client"));
    client.send(hello(2, 1, "backwards")).assert_err(
        ErrorCode::INVALID_ARGUMENT,
        ErrorDetail::Text("min_version"),
    );
    client.open();
    client
        .send(RequestBody::ReadMemory { address: F, len: 0 })
        .assert_err(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("len"));
    client
        .send(RequestBody::ReadMemory {
            address: F,
            len: 1025,
        })
        .assert_err(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("len"));
    client
        .arm(
            Site::Dynamic {
                address: F,
                expected: &[],
            },
            &noop(),
        )
        .assert_err(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("expected"));
    client
        .arm(
            Site::Timer {
                period_ns: 0,
                scope: TimerScope::EachCpu,
            },
            &noop(),
        )
        .assert_err(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("period_ns"));
    client
        .arm(timer(), &noop()[..12])
        .assert_err(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("program"));
    client
        .arm(
            Site::Return {
                address: G,
                expected: &[0x55],
                entry_program: &[0; 5],
            },
            &noop(),
        )
        .assert_err(
            ErrorCode::INVALID_ARGUMENT,
            ErrorDetail::Text("entry_program"),
        );
    client
        .send(RequestBody::CpuStats { cpu: 2 })
        .assert_err(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("cpu"));
    let bad_map = MapSpec {
        value_size: 16,
        kind: MapKind::Aggregate(AggregateKind::Count),
        ..hash_map(1)
    };
    client
        .send(RequestBody::DefineMap(bad_map))
        .assert_err(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("value_size"));
    client
        .send(RequestBody::DefineMap(MapSpec {
            key_size: 0,
            ..hash_map(1)
        }))
        .assert_err(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("key_size"));
    client
        .send(RequestBody::DefineMap(MapSpec {
            max_entries: 0,
            ..hash_map(1)
        }))
        .assert_err(
            ErrorCode::INVALID_ARGUMENT,
            ErrorDetail::Text("max_entries"),
        );
    client.done(RequestBody::DefineMap(hash_map(1)));
    client
        .send(RequestBody::ReadMap {
            map: MapId(1),
            cursor: 1_000_000,
        })
        .assert_err(ErrorCode::INVALID_ARGUMENT, ErrorDetail::Text("cursor"));
}

#[test]
fn unprivileged_senders_get_not_privileged_and_change_nothing() {
    let stub = new_stub!();
    let payload = encode(&probe_port_protocol::message::Request {
        seq: 9,
        body: hello(1, 1, "intruder"),
    })
    .unwrap();
    let mut replies = Vec::new();
    stub.refuse_unprivileged(&payload, &mut |message| {
        if let StubMessage::Reply { seq, reply } = message {
            replies.push((
                *seq,
                reply
                    .clone()
                    .map(|_| ())
                    .map_err(|e| (e.code, e.detail == ErrorDetail::None)),
            ));
        }
    });
    assert_eq!(replies, vec![(9, Err((ErrorCode::NOT_PRIVILEGED, true)))]);
    assert!(!stub.session_open());
}

#[test]
fn start_twice_and_stop_unstarted_are_bad_state() {
    let mut client = Client::new(new_stub!());
    client.open();
    client
        .send(RequestBody::Stop)
        .assert_err(ErrorCode::BAD_STATE, ErrorDetail::None);
    client.done(RequestBody::Start);
    client
        .send(RequestBody::Start)
        .assert_err(ErrorCode::BAD_STATE, ErrorDetail::None);
    client.done(RequestBody::Stop);
    client.done(RequestBody::Start);
}

#[test]
fn unknown_probes_maps_and_markers_carry_their_number() {
    let stub = new_stub!();
    static MARKERS: [MarkerSite; 1] = [MarkerSite::new("only:one", &[("x", ArgType::U64)])];
    stub.platform().set_markers(&MARKERS);
    let mut client = Client::new(stub);
    client.open();
    client
        .send(RequestBody::Disarm { probe: ProbeId(42) })
        .assert_err(ErrorCode::UNKNOWN_PROBE, ErrorDetail::Value(42));
    client
        .send(RequestBody::ProbeStats { probe: ProbeId(3) })
        .assert_err(ErrorCode::UNKNOWN_PROBE, ErrorDetail::Value(3));
    client
        .send(RequestBody::ReadMap {
            map: MapId(6),
            cursor: 0,
        })
        .assert_err(ErrorCode::UNKNOWN_MAP, ErrorDetail::Value(6));
    client
        .send(RequestBody::ClearMap { map: MapId(7) })
        .assert_err(ErrorCode::UNKNOWN_MAP, ErrorDetail::Value(7));
    client
        .send(RequestBody::DescribeMarker { index: 1 })
        .assert_err(ErrorCode::UNKNOWN_MARKER, ErrorDetail::Value(1));
    client
        .arm(Site::Marker { index: 5 }, &noop())
        .assert_err(ErrorCode::UNKNOWN_MARKER, ErrorDetail::Value(5));
    let reply = client.send(RequestBody::DescribeMarker { index: 0 });
    let ReplyBody::Marker(marker) = reply.ok() else {
        panic!("not a marker");
    };
    assert_eq!(
        (marker.index, marker.total, marker.name),
        (0, 1, "only:one")
    );
    assert_eq!(marker.address, &MARKERS[0] as *const MarkerSite as u64);
    assert_eq!(marker.args.len(), 1);
    assert_eq!(
        (marker.args[0].name, marker.args[0].ty),
        ("x", ArgType::U64)
    );
}

#[test]
fn an_empty_marker_table_is_unknown_marker() {
    let mut client = Client::new(new_stub!());
    client.open();
    client
        .send(RequestBody::DescribeMarker { index: 0 })
        .assert_err(ErrorCode::UNKNOWN_MARKER, ErrorDetail::Value(0));
}

#[test]
fn read_memory_returns_bytes_or_faults_with_the_address() {
    let mut client = Client::new(new_stub!());
    client.open();
    match client
        .send(RequestBody::ReadMemory {
            address: F,
            len: 22,
        })
        .ok()
    {
        ReplyBody::Memory { address, bytes } => {
            assert_eq!(address, F);
            assert_eq!(bytes, f_bytes());
        }
        other => panic!("{other:?}"),
    }
    // The read runs off the end of the text: the fault names the first bad byte.
    let end = TEXT_BASE + TEXT_SIZE as u64;
    client
        .send(RequestBody::ReadMemory {
            address: end - 4,
            len: 16,
        })
        .assert_err(ErrorCode::FAULT, ErrorDetail::Address(end));
    client
        .send(RequestBody::ReadMemory {
            address: 0x10,
            len: 8,
        })
        .assert_err(ErrorCode::FAULT, ErrorDetail::Address(0x10));
}

#[test]
fn map_definitions_refuse_duplicates_and_exhaustion() {
    let mut client = Client::new(new_stub!());
    client.open();
    client.done(RequestBody::DefineMap(hash_map(1)));
    client
        .send(RequestBody::DefineMap(hash_map(1)))
        .assert_err(ErrorCode::MAP_EXISTS, ErrorDetail::Value(1));
    // Memory: 256-byte keys, 512-byte values, 3000 entries: 2.3 MiB.
    client
        .send(RequestBody::DefineMap(MapSpec {
            map: MapId(2),
            kind: MapKind::Hash,
            key_size: 256,
            value_size: 512,
            max_entries: 3000,
        }))
        .assert_err(
            ErrorCode::NO_SPACE,
            ErrorDetail::Value(MAP_ARENA_BYTES as u64),
        );
    // An aggregation whose one entry (a 1026-bucket histogram per CPU) would not
    // fit a page on 8 CPUs.
    let stub = new_stub!();
    stub.platform().set_cpu_count(8);
    let mut wide = Client::new(stub);
    wide.open();
    wide.send(RequestBody::DefineMap(MapSpec {
        map: MapId(3),
        kind: MapKind::Aggregate(AggregateKind::LinearHist {
            min: 0,
            max: 1024,
            step: 1,
        }),
        key_size: 8,
        value_size: 1026 * 8,
        max_entries: 1,
    }))
    .assert_err(
        ErrorCode::NO_SPACE,
        ErrorDetail::Value(MAX_PAGE_ENTRIES as u64),
    );
    // Count.
    for map in 2..=MAX_MAPS as u16 {
        client.done(RequestBody::DefineMap(hash_map(map)));
    }
    client
        .send(RequestBody::DefineMap(hash_map(100)))
        .assert_err(ErrorCode::NO_SPACE, ErrorDetail::Value(MAX_MAPS as u64));
}

#[test]
fn too_many_timers_probes_or_program_slots_are_no_space() {
    let mut client = Client::new(new_stub!());
    client.open();
    for _ in 0..MAX_TIMERS {
        client.arm(timer(), &noop()).probe();
    }
    client
        .arm(timer(), &noop())
        .assert_err(ErrorCode::NO_SPACE, ErrorDetail::Value(MAX_TIMERS as u64));

    // Probes: one per nop, up to the table's size.
    let mut client = Client::new(new_stub!());
    client.open();
    for index in 0..MAX_PROBES as u64 {
        client.arm_dynamic(NOPS + index, &noop());
    }
    client
        .arm(
            Site::Dynamic {
                address: NOPS + MAX_PROBES as u64,
                expected: &[0x90],
            },
            &noop(),
        )
        .assert_err(ErrorCode::NO_SPACE, ErrorDetail::Value(MAX_PROBES as u64));

    // Program slots: eight programs of the largest size fill the arena.
    let mut client = Client::new(new_stub!());
    client.open();
    let big = program(&("mov64 r0, 0\n".repeat(MAX_PROGRAM_INSNS - 1) + "exit"));
    for index in 0..(PROGRAM_ARENA_SLOTS / MAX_PROGRAM_INSNS) as u64 {
        client.arm_dynamic(NOPS + index, &big);
    }
    client
        .arm(
            Site::Dynamic {
                address: NOPS + 100,
                expected: &[0x90],
            },
            &noop(),
        )
        .assert_err(
            ErrorCode::NO_SPACE,
            ErrorDetail::Value(PROGRAM_ARENA_SLOTS as u64),
        );
    // Disarming one makes room again (the freed slots are reused).
    client.done(RequestBody::Disarm { probe: ProbeId(3) });
    client.arm_dynamic(NOPS + 100, &big);
}

#[test]
fn programs_failing_verification_name_the_instruction_and_rule() {
    let mut client = Client::new(new_stub!());
    client.open();
    // Reads r3 before writing it.
    let uninitialised = program("mov64 r0, 0\nmov64 r2, r3\nexit");
    client.arm(timer(), &uninitialised).assert_err(
        ErrorCode::PROGRAM_REJECTED,
        ErrorDetail::Verifier {
            index: 1,
            rule: Rule::UninitializedRegister.code(),
            entry: false,
        },
    );
    client.arm(timer(), &[]).assert_err(
        ErrorCode::PROGRAM_REJECTED,
        ErrorDetail::Verifier {
            index: 0,
            rule: Rule::EmptyProgram.code(),
            entry: false,
        },
    );
    // entry_save outside an entry program.
    let saves = program("mov64 r1, 0\nmov64 r2, 7\ncall entry_save\nmov64 r0, 0\nexit");
    client.arm(timer(), &saves).assert_err(
        ErrorCode::PROGRAM_REJECTED,
        ErrorDetail::Verifier {
            index: 2,
            rule: Rule::EntrySaveOutsideEntry.code(),
            entry: false,
        },
    );
    // A map that does not exist.
    let unknown_map = program(
        "stdw [r10-8], 0\nmov64 r1, 9\nmov64 r2, r10\nadd64 r2, -8\nmov64 r3, 1\ncall aggregate\nmov64 r0, 0\nexit",
    );
    client.arm(timer(), &unknown_map).assert_err(
        ErrorCode::PROGRAM_REJECTED,
        ErrorDetail::Verifier {
            index: 5,
            rule: Rule::UnknownMap.code(),
            entry: false,
        },
    );
    // The entry program of a return site, with its own flag.
    let backwards = program("mov64 r0, 0\nja -2\nexit");
    client
        .arm(
            Site::Return {
                address: G,
                expected: &[0x55],
                entry_program: &backwards,
            },
            &noop(),
        )
        .assert_err(
            ErrorCode::PROGRAM_REJECTED,
            ErrorDetail::Verifier {
                index: 1,
                rule: Rule::JumpBackward.code(),
                entry: true,
            },
        );
    // Too long.
    let long = program(&("mov64 r0, 0\n".repeat(MAX_PROGRAM_INSNS) + "exit"));
    client.arm(timer(), &long).assert_err(
        ErrorCode::PROGRAM_REJECTED,
        ErrorDetail::Verifier {
            index: MAX_PROGRAM_INSNS as u32,
            rule: Rule::TooLong.code(),
            entry: false,
        },
    );
    // Nothing was armed: the next probe is number 1.
    assert_eq!(client.arm(timer(), &noop()).probe(), 1);
}

#[test]
fn forbidden_addresses_are_refused() {
    let mut client = Client::new(new_stub!());
    client.open();
    for address in [
        AREA_BASE,
        AREA_BASE + 40,
        FORBIDDEN.start,
        FORBIDDEN.start + 1,
        0,
    ] {
        let expected = if address == 0 {
            vec![0]
        } else {
            client.sim().read(address, 1)
        };
        client
            .arm(
                Site::Dynamic {
                    address,
                    expected: &expected,
                },
                &noop(),
            )
            .assert_err(ErrorCode::FORBIDDEN_ADDRESS, ErrorDetail::Address(address));
    }
    // The stub's own entry point.
    let entry: fn(&kernel_stub::Stub<Sim>, &mut kernel_stub::arch::TrapRegisters) -> _ =
        kernel_stub::Stub::<Sim>::on_breakpoint;
    let address = entry as usize as u64;
    client
        .arm(
            Site::Dynamic {
                address,
                expected: &[0x55],
            },
            &noop(),
        )
        .assert_err(ErrorCode::FORBIDDEN_ADDRESS, ErrorDetail::Address(address));
    assert_eq!(client.sim().text_writes().len(), 1, "only the trampoline");
}

#[test]
fn an_address_inside_an_instruction_is_not_a_boundary() {
    let mut client = Client::new(new_stub!());
    client.sim().add_function(F..F + 22);
    client.open();
    // F + 2 is the middle of `mov rbp, rsp` (48 89 e5), though its byte matches.
    client
        .arm(
            Site::Dynamic {
                address: F + 2,
                expected: &[0x89],
            },
            &noop(),
        )
        .assert_err(ErrorCode::NOT_INSN_BOUNDARY, ErrorDetail::Address(F + 2));
    // Boundaries pass, also with another probe's breakpoint earlier in the
    // function (the check decodes the original bytes).
    client.arm_dynamic(F_PUSH, &noop());
    client.done(RequestBody::Start);
    client.arm_dynamic(F_LOAD, &noop());
}

#[test]
fn different_bytes_are_bytes_mismatch_with_the_bytes_found() {
    let mut client = Client::new(new_stub!());
    client.open();
    client
        .arm(
            Site::Dynamic {
                address: F_MOV_RBP,
                expected: &[0x48, 0x89, 0xe4],
            },
            &noop(),
        )
        .assert_err(
            ErrorCode::BYTES_MISMATCH,
            ErrorDetail::Bytes(&[0x48, 0x89, 0xe5]),
        );
    // With a live breakpoint there, the original byte is compared, not 0xcc.
    client.arm_dynamic(F_PUSH, &noop());
    client.done(RequestBody::Start);
    client
        .arm(
            Site::Return {
                address: F_PUSH,
                expected: &[0x55, 0x48],
                entry_program: &[],
            },
            &noop(),
        )
        .probe();
    client
        .arm(
            Site::Dynamic {
                address: F_LOAD,
                expected: &[0x48, 0x8b, 0x47, 0x09],
            },
            &noop(),
        )
        .assert_err(
            ErrorCode::BYTES_MISMATCH,
            ErrorDetail::Bytes(&[0x48, 0x8b, 0x47, 0x08]),
        );
}

#[test]
fn unreadable_addresses_fault_and_undisplaceable_instructions_are_unrelocatable() {
    let mut client = Client::new(new_stub!());
    client.open();
    client
        .arm(
            Site::Dynamic {
                address: 0x1000,
                expected: &[0x55],
            },
            &noop(),
        )
        .assert_err(ErrorCode::FAULT, ErrorDetail::Address(0x1000));
    client
        .arm(
            Site::Dynamic {
                address: UD2,
                expected: &[0x0f, 0x0b],
            },
            &noop(),
        )
        .assert_err(ErrorCode::UNRELOCATABLE, ErrorDetail::Address(UD2));
    client
        .arm(
            Site::Dynamic {
                address: KERNEL_INT3,
                expected: &[0xcc],
            },
            &noop(),
        )
        .assert_err(ErrorCode::UNRELOCATABLE, ErrorDetail::Address(KERNEL_INT3));
}

#[test]
fn a_second_probe_of_the_same_kind_is_already_probed() {
    let mut client = Client::new(new_stub!());
    client.open();
    let first = client.arm_dynamic(G, &noop());
    client
        .arm(
            Site::Dynamic {
                address: G,
                expected: &[0x55],
            },
            &noop(),
        )
        .assert_err(
            ErrorCode::ALREADY_PROBED,
            ErrorDetail::Value(u64::from(first)),
        );
    // A return probe at the same address is another kind: allowed, once.
    let ret = client
        .arm(
            Site::Return {
                address: G,
                expected: &[0x55],
                entry_program: &[],
            },
            &noop(),
        )
        .probe();
    client
        .arm(
            Site::Return {
                address: G,
                expected: &[0x55],
                entry_program: &[],
            },
            &noop(),
        )
        .assert_err(
            ErrorCode::ALREADY_PROBED,
            ErrorDetail::Value(u64::from(ret)),
        );
}

#[test]
fn without_an_out_of_line_area_dynamic_sites_are_unsupported() {
    let stub = new_stub!();
    stub.platform().set_area_size(0);
    let mut client = Client::new(stub);
    let reply = client.hello();
    let ReplyBody::Hello(hello) = reply.ok() else {
        panic!()
    };
    assert!(!hello.capabilities.has(Capabilities::DYNAMIC));
    assert!(!hello.capabilities.has(Capabilities::RETURN));
    client
        .arm(
            Site::Dynamic {
                address: G,
                expected: &[0x55],
            },
            &noop(),
        )
        .assert_err(ErrorCode::UNSUPPORTED, ErrorDetail::None);
}

#[test]
fn user_space_sites_are_unsupported_and_not_announced() {
    let mut client = Client::new(new_stub!());
    let reply = client.hello();
    let ReplyBody::Hello(hello) = reply.ok() else {
        panic!("not a hello");
    };
    assert!(!hello.capabilities.has(Capabilities::USER));
    client
        .arm(
            Site::User {
                path: "/usr/bin/true",
                file_offset: 0x1000,
                is_return: false,
                ref_ctr_offset: 0,
                entry_program: &[],
            },
            &noop(),
        )
        .assert_err(
            ErrorCode::UNSUPPORTED,
            ErrorDetail::Text("user-space sites"),
        );
    // The refusal armed nothing: the first probe still gets number 1.
    assert_eq!(client.arm(timer(), &noop()).probe(), 1);
}

#[test]
fn kernel_symbol_sites_are_unsupported_and_not_announced() {
    let mut client = Client::new(new_stub!());
    let reply = client.hello();
    let ReplyBody::Hello(hello) = reply.ok() else {
        panic!("not a hello");
    };
    assert!(!hello.capabilities.has(Capabilities::KERNEL_SYMBOL));
    client
        .arm(
            Site::KernelSymbol {
                symbol: "__x64_sys_getpid",
                offset: 0,
                is_return: true,
                entry_program: &[],
            },
            &noop(),
        )
        .assert_err(
            ErrorCode::UNSUPPORTED,
            ErrorDetail::Text("kernel symbol sites"),
        );
    // The refusal armed nothing: the first probe still gets number 1.
    assert_eq!(client.arm(timer(), &noop()).probe(), 1);
}

#[test]
fn symbolize_is_unsupported_and_not_announced() {
    let mut client = Client::new(new_stub!());
    let reply = client.hello();
    let ReplyBody::Hello(hello) = reply.ok() else {
        panic!("not a hello");
    };
    assert!(!hello.capabilities.has(Capabilities::SYMBOLIZE));
    client
        .send(RequestBody::Symbolize {
            address: 0xffff_ffff_8100_0000,
        })
        .assert_err(ErrorCode::UNSUPPORTED, ErrorDetail::None);
}

#[test]
fn a_text_write_the_platform_refuses_fails_start_and_restores_everything() {
    let mut client = Client::new(new_stub!());
    client.open();
    let before = client.sim().text();
    client.arm_dynamic(G, &noop());
    client.sim().refuse_text_writes(true);
    client
        .send(RequestBody::Start)
        .assert_err(ErrorCode::UNSUPPORTED, ErrorDetail::Address(G));
    client.sim().refuse_text_writes(false);
    assert_eq!(client.sim().text(), before);
    // Not started: Start works now.
    client.done(RequestBody::Start);
    assert_eq!(client.sim().read(G, 1), [0xcc]);
}

#[test]
fn goodbye_ends_the_session_and_a_new_one_can_start() {
    let mut client = Client::new(new_stub!());
    client.open();
    client.done(RequestBody::KeepAlive);
    client.done(RequestBody::Goodbye);
    client
        .send(RequestBody::KeepAlive)
        .assert_err(ErrorCode::NO_HANDSHAKE, ErrorDetail::None);
    client.open();
    assert_eq!(client.arm(timer(), &noop()).probe(), 1);
}

#[test]
fn a_markers_site_is_not_an_instruction_to_probe() {
    let stub = new_stub!();
    static MARKERS: [MarkerSite; 1] = [MarkerSite::new("data:site", &[])];
    stub.platform().set_markers(&MARKERS);
    let mut client = Client::new(stub);
    client.open();
    client.arm(Site::Marker { index: 0 }, &noop()).probe();
    let address = &MARKERS[0] as *const MarkerSite as u64;
    client
        .arm(
            Site::Return {
                address,
                expected: &[0],
                entry_program: &[],
            },
            &noop(),
        )
        .assert_err(ErrorCode::FORBIDDEN_ADDRESS, ErrorDetail::Address(address));
}

#[test]
fn session_started_follows_start_stop_and_goodbye() {
    let stub = new_stub!();
    let mut client = Client::new(stub);
    assert!(!stub.session_started());
    client.open();
    assert!(!stub.session_started());
    client.done(RequestBody::Start);
    assert!(stub.session_started());
    client.done(RequestBody::Stop);
    assert!(!stub.session_started());
    client.done(RequestBody::Start);
    client.done(RequestBody::Goodbye);
    assert!(!stub.session_started());
}
