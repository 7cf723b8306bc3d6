//! The handler programs both executors' benchmarks run (`interpreter.rs`, `jit.rs`),
//! with the maps they use: each passes the verifier, as the JIT needs.

use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};

/// The maps the programs use: 1 a hash map of counts, 2 a count aggregation.
pub(crate) const MAPS: [MapSpec; 2] = [
    MapSpec {
        map: MapId(1),
        kind: MapKind::Hash,
        key_size: 16,
        value_size: 8,
        max_entries: 64,
    },
    MapSpec {
        map: MapId(2),
        kind: MapKind::Aggregate(AggregateKind::Count),
        key_size: 8,
        value_size: 8,
        max_entries: 64,
    },
];

/// The "kernel" string the string handler reads: longer than its buffer.
pub(crate) static KERNEL_STRING: &[u8] =
    b"/usr/lib/x86_64-linux-gnu/libprobeport-example.so.1.2.3 opened for reading\0";

/// A predicate, then a count per (probe, argument) in a hash map: lookup,
/// increment, update.
pub(crate) const PREDICATE_COUNT: &str = "
    mov64 r0, 0
    ldxdw r6, [r1+40]
    jle r6, 2, done
    ldxdw r7, [r1+144]
    stxdw [r10-16], r7
    stxdw [r10-8], r6
    stdw [r10-24], 0
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -16
    mov64 r3, r10
    add64 r3, -24
    call map_lookup
    ldxdw r0, [r10-24]
    add64 r0, 1
    stxdw [r10-24], r0
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -16
    mov64 r3, r10
    add64 r3, -24
    call map_update
    ldxdw r0, [r10-24]
done:
    exit
";

/// A log2 histogram bucket by binary search, then a count keyed by bucket.
pub(crate) const LOG2_HISTOGRAM: &str = "
    ldxdw r6, [r1+32]
    mov64 r7, 0
    jslt r6, 0, store
    mov64 r7, 1
    jeq r6, 0, store
    mov64 r7, 2
    mov64 r8, r6
    rsh64 r8, 32
    jeq r8, 0, +2
    mov64 r6, r8
    add64 r7, 32
    mov64 r8, r6
    rsh64 r8, 16
    jeq r8, 0, +2
    mov64 r6, r8
    add64 r7, 16
    mov64 r8, r6
    rsh64 r8, 8
    jeq r8, 0, +2
    mov64 r6, r8
    add64 r7, 8
    mov64 r8, r6
    rsh64 r8, 4
    jeq r8, 0, +2
    mov64 r6, r8
    add64 r7, 4
    mov64 r8, r6
    rsh64 r8, 2
    jeq r8, 0, +2
    mov64 r6, r8
    add64 r7, 2
    mov64 r8, r6
    rsh64 r8, 1
    jeq r8, 0, +1
    add64 r7, 1
store:
    stxdw [r10-8], r7
    mov64 r1, 2
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, 1
    call aggregate
    mov64 r0, r7
    exit
";

/// A bounded string read into the stack, then an event.
pub(crate) const STRING_EVENT: &str = "
    ldxdw r6, [r1+144]
    stxdw [r10-80], r6
    ldxdw r3, [r1+40]
    mov64 r1, r10
    add64 r1, -64
    mov64 r2, 64
    call read_kernel_str
    stxdw [r10-72], r0
    mov64 r1, r10
    add64 r1, -80
    mov64 r2, 80
    call emit
    ldxdw r0, [r10-72]
    exit
";
