//! What handlers produce: hash maps and per-CPU aggregations read back through
//! `ReadMap` pages, `ClearMap`, and a flood of events where every sequence number
//! is either delivered or reported lost, exactly.

#[macro_use]
mod common;

use std::collections::BTreeMap;

use common::*;
use probe_port_protocol::isa::helper_error::{ENOENT, ENOSPC};
use probe_port_protocol::maps::{
    AggregateKind, MapId, MapKind, MapSpec, linear_bucket, log2_bucket,
};
use probe_port_protocol::message::{ReplyBody, RequestBody};

const STACK_TOP: u64 = STACK_BASE + 0x8000;

fn define(
    client: &mut Client,
    map: u16,
    kind: MapKind,
    key_size: u16,
    value_size: u16,
    max_entries: u32,
) {
    client.done(RequestBody::DefineMap(MapSpec {
        map: MapId(map),
        kind,
        key_size,
        value_size,
        max_entries,
    }));
}

/// One hit of `address` on `cpu` with these arguments.
fn hit(client: &Client, address: u64, cpu: usize, args: &[u64]) {
    let mut regs = call_registers(address, STACK_TOP, args);
    assert!(client.sim().fetch(client.stub, cpu, &mut regs).is_some());
}

fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks(8)
        .map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap()))
        .collect()
}

/// Key rdi, value [rsi, rdx] into map 1; emits map_update's result.
const UPDATE: &str = "
    ldxdw r2, [r1+40]
    stxdw [r10-8], r2
    ldxdw r2, [r1+32]
    stxdw [r10-24], r2
    ldxdw r2, [r1+8]
    stxdw [r10-16], r2
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, r10
    add64 r3, -24
    call map_update
    stxdw [r10-32], r0
    mov64 r1, r10
    add64 r1, -32
    mov64 r2, 8
    call emit
    mov64 r0, 0
    exit
";

/// Looks key rdi up in map 1, deletes it if rsi is 1; emits
/// [delete result, lookup result, value0, value1].
const LOOKUP_DELETE: &str = "
    mov64 r6, r1
    ldxdw r2, [r6+40]
    stxdw [r10-8], r2
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, r10
    add64 r3, -24
    call map_lookup
    stxdw [r10-32], r0
    ldxdw r2, [r6+32]
    jne r2, 1, report
    mov64 r1, 1
    mov64 r2, r10
    add64 r2, -8
    call map_delete
    stxdw [r10-40], r0
report:
    mov64 r1, r10
    add64 r1, -40
    mov64 r2, 32
    call emit
    mov64 r0, 0
    exit
";

#[test]
fn hash_maps_update_lookup_delete_fill_up_and_read_back() {
    let stub = new_stub!();
    let mut client = Client::new(stub);
    client.open();
    define(&mut client, 1, MapKind::Hash, 8, 16, 200);
    let update = client.arm_dynamic(G, &program(UPDATE));
    client.arm_dynamic(F_PUSH, &program(LOOKUP_DELETE));
    client.done(RequestBody::Start);
    let mut model = BTreeMap::new();
    for key in 1..=200u64 {
        hit(&client, G, (key % 2) as usize, &[key, key * 10, key * 100]);
        model.insert(key, (key * 10, key * 100));
    }
    // Replacing is not inserting; a new key beyond max_entries is refused.
    hit(&client, G, 0, &[5, 55, 555]);
    model.insert(5, (55, 555));
    hit(&client, G, 1, &[201, 1, 1]);
    client.drain();
    let results: Vec<u64> = client.events.iter().map(|event| event.words()[0]).collect();
    assert_eq!(results.iter().filter(|&&result| result == 0).count(), 201);
    assert_eq!(
        results
            .iter()
            .filter(|&&result| result == ENOSPC as u64)
            .count(),
        1
    );
    assert_eq!(client.probe_stats(update).drops, 1);

    let (count, entries) = client.read_map(1);
    assert_eq!(count, 200);
    let read: BTreeMap<u64, (u64, u64)> = entries
        .chunks(24)
        .map(|entry| {
            let words = words(entry);
            (words[0], (words[1], words[2]))
        })
        .collect();
    assert_eq!(read, model);

    // Lookup, then delete, then the key is gone and there is room again.
    client.events.clear();
    hit(&client, F_PUSH, 0, &[5, 0]);
    hit(&client, F_PUSH, 1, &[5, 1]);
    hit(&client, F_PUSH, 0, &[5, 0]);
    hit(&client, G, 1, &[201, 1, 2]);
    client.drain();
    let reports: Vec<Vec<u64>> = client.events.iter().map(|event| event.words()).collect();
    // Per CPU: CPU 0's two lookups, then CPU 1's delete and update.
    assert_eq!(reports[0], [0, 0, 55, 555]);
    assert_eq!(reports[1], [0, ENOENT as u64, 0, 0]);
    assert_eq!(reports[2], [0, 0, 55, 555]);
    assert_eq!(reports[3], [0]);
    let (count, _) = client.read_map(1);
    assert_eq!(count, 200);
}

#[test]
fn large_maps_are_read_in_several_pages() {
    let stub = new_stub!();
    let mut client = Client::new(stub);
    client.open();
    define(&mut client, 2, MapKind::Hash, 128, 256, 300);
    // Key: rdi then zeros (128 bytes); value: rsi then zeros (256 bytes).
    let handler = program(
        "
        ldxdw r2, [r1+40]
        stxdw [r10-384], r2
        ldxdw r2, [r1+32]
        stxdw [r10-256], r2
        mov64 r1, 2
        mov64 r2, r10
        add64 r2, -384
        mov64 r3, r10
        add64 r3, -256
        call map_update
        mov64 r0, 0
        exit
        ",
    );
    client.arm_dynamic(G, &handler);
    client.done(RequestBody::Start);
    for key in 0..250u64 {
        hit(&client, G, 0, &[key, key + 1000]);
    }
    let mut cursor = 0;
    let mut pages = 0;
    let mut seen = BTreeMap::new();
    loop {
        let reply = client.send(RequestBody::ReadMap {
            map: MapId(2),
            cursor,
        });
        let ReplyBody::MapPage(page) = reply.ok() else {
            panic!()
        };
        pages += 1;
        assert_eq!(page.entries.len(), page.count as usize * 384);
        for entry in page.entries.chunks(384) {
            let key = words(&entry[..128]);
            let value = words(&entry[128..]);
            assert!(key[1..].iter().chain(&value[1..]).all(|&word| word == 0));
            assert!(seen.insert(key[0], value[0]).is_none(), "an entry twice");
        }
        match page.next_cursor {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
    assert!(seen.iter().all(|(key, value)| *value == key + 1000));
}

/// The value words of one CPU's aggregation of `values`.
fn fold(kind: AggregateKind, values: &[i64]) -> Vec<u64> {
    let count = values.len() as u64;
    let sum = values
        .iter()
        .fold(0i64, |sum, value| sum.wrapping_add(*value)) as u64;
    let min = values.iter().copied().min().unwrap_or(i64::MAX) as u64;
    let max = values.iter().copied().max().unwrap_or(i64::MIN) as u64;
    match kind {
        AggregateKind::Count => vec![count],
        AggregateKind::Sum => vec![sum],
        AggregateKind::Min => vec![min],
        AggregateKind::Max => vec![max],
        AggregateKind::Avg => vec![count, sum],
        AggregateKind::Stats => vec![count, sum, min, max],
        AggregateKind::Log2Hist => {
            let mut buckets = vec![0; 65];
            for value in values {
                buckets[log2_bucket(*value)] += 1;
            }
            buckets
        }
        AggregateKind::LinearHist { min, max, step } => {
            let mut buckets = vec![0; (kind.value_size().unwrap() / 8) as usize];
            for value in values {
                buckets[linear_bucket(*value, min, max, step)] += 1;
            }
            buckets
        }
    }
}

/// The client-side merge of per-CPU values.
fn merge(kind: AggregateKind, per_cpu: &[Vec<u64>]) -> Vec<u64> {
    let mut merged = per_cpu[0].clone();
    for other in &per_cpu[1..] {
        for (index, word) in other.iter().enumerate() {
            merged[index] = match (kind, index) {
                (AggregateKind::Min, 0) | (AggregateKind::Stats, 2) => {
                    (merged[index] as i64).min(*word as i64) as u64
                }
                (AggregateKind::Max, 0) | (AggregateKind::Stats, 3) => {
                    (merged[index] as i64).max(*word as i64) as u64
                }
                _ => merged[index].wrapping_add(*word),
            };
        }
    }
    merged
}

#[test]
fn every_aggregation_kind_is_kept_per_cpu_and_merges_exactly() {
    let stub = new_stub!();
    let mut client = Client::new(stub);
    client.open();
    let kinds = [
        AggregateKind::Count,
        AggregateKind::Sum,
        AggregateKind::Min,
        AggregateKind::Max,
        AggregateKind::Avg,
        AggregateKind::Stats,
        AggregateKind::Log2Hist,
        AggregateKind::LinearHist {
            min: -10,
            max: 100,
            step: 10,
        },
    ];
    let mut text =
        String::from("mov64 r6, r1\nldxdw r7, [r6+40]\nldxdw r8, [r6+32]\nstxdw [r10-8], r8\n");
    for (index, kind) in kinds.iter().enumerate() {
        let map = 10 + index as u16;
        define(
            &mut client,
            map,
            MapKind::Aggregate(*kind),
            8,
            kind.value_size().unwrap(),
            16,
        );
        text += &format!(
            "mov64 r1, {map}\nmov64 r2, r10\nadd64 r2, -8\nmov64 r3, r7\ncall aggregate\n"
        );
    }
    text += "mov64 r0, 0\nexit";
    let probe = client.arm_dynamic(G, &program(&text));
    client.done(RequestBody::Start);

    // (cpu, key, value) samples; key 3 only ever on CPU 1.
    let values = [
        -50i64,
        -1,
        0,
        1,
        2,
        3,
        7,
        8,
        9,
        10,
        11,
        99,
        100,
        101,
        1 << 20,
        i64::MAX,
        i64::MIN,
        42,
    ];
    let mut model: BTreeMap<(usize, u64), Vec<i64>> = BTreeMap::new();
    for (index, value) in values.iter().enumerate() {
        let cpu = index % 2;
        let key = if cpu == 1 && index % 3 == 0 {
            3
        } else {
            (index % 2) as u64 + 1
        };
        hit(&client, G, cpu, &[*value as u64, key]);
        model.entry((cpu, key)).or_default().push(*value);
    }
    assert_eq!(client.probe_stats(probe).hits, values.len() as u64);
    let keys: Vec<u64> = {
        let mut keys: Vec<u64> = model.keys().map(|(_, key)| *key).collect();
        keys.sort();
        keys.dedup();
        keys
    };
    for (index, kind) in kinds.iter().enumerate() {
        let value_size = kind.value_size().unwrap() as usize;
        let (count, entries) = client.read_map(10 + index as u16);
        assert_eq!(count as usize, keys.len(), "{kind:?}");
        let entry_size = 8 + 2 * value_size;
        assert_eq!(entries.len(), keys.len() * entry_size);
        let mut seen = Vec::new();
        for entry in entries.chunks(entry_size) {
            let key = words(&entry[..8])[0];
            seen.push(key);
            let per_cpu: Vec<Vec<u64>> = (0..2)
                .map(|cpu| words(&entry[8 + cpu * value_size..8 + (cpu + 1) * value_size]))
                .collect();
            for (cpu, values) in per_cpu.iter().enumerate() {
                let samples = model.get(&(cpu, key)).map_or(&[][..], Vec::as_slice);
                assert_eq!(
                    *values,
                    fold(*kind, samples),
                    "{kind:?} key {key} cpu {cpu}"
                );
            }
            let all: Vec<i64> = (0..2)
                .flat_map(|cpu| model.get(&(cpu, key)).cloned().unwrap_or_default())
                .collect();
            assert_eq!(
                merge(*kind, &per_cpu),
                fold(*kind, &all),
                "{kind:?} key {key}"
            );
        }
        seen.sort();
        assert_eq!(seen, keys);
    }
}

#[test]
fn clear_map_empties_hash_maps_and_aggregations() {
    let stub = new_stub!();
    let mut client = Client::new(stub);
    client.open();
    define(&mut client, 1, MapKind::Hash, 8, 16, 8);
    define(
        &mut client,
        2,
        MapKind::Aggregate(AggregateKind::Count),
        8,
        8,
        8,
    );
    let text = UPDATE.replace("    mov64 r0, 0\n    exit\n", "")
        + "
    stdw [r10-8], 0
    mov64 r1, 2
    mov64 r2, r10
    add64 r2, -8
    mov64 r3, 1
    call aggregate
    mov64 r0, 0
    exit";
    let probe = client.arm_dynamic(G, &program(&text));
    client.done(RequestBody::Start);
    for key in 0..8 {
        hit(&client, G, key as usize % 2, &[key, 1, 2]);
    }
    assert_eq!(client.read_map(1).0, 8);
    let (_, counts) = client.read_map(2);
    assert_eq!(words(&counts), [0, 4, 4]);
    client.done(RequestBody::ClearMap { map: MapId(1) });
    client.done(RequestBody::ClearMap { map: MapId(2) });
    assert_eq!(client.read_map(1), (0, vec![]));
    assert_eq!(client.read_map(2), (0, vec![]));
    // Both fill again from empty, to their full size.
    for key in 100..108 {
        hit(&client, G, 1, &[key, 3, 4]);
    }
    assert_eq!(client.read_map(1).0, 8);
    assert_eq!(words(&client.read_map(2).1), [0, 0, 8]);
    assert_eq!(client.probe_stats(probe).drops, 0);
}

#[test]
fn a_flood_of_events_is_delivered_or_counted_lost_exactly() {
    let stub = new_stub!();
    let sim = stub.platform();
    let mut client = Client::new(stub);
    client.open();
    // 512-byte records: 67 ring words each, so a 64 KiB ring holds 122 of them.
    let probe = client.arm_dynamic(
        G,
        &program(
            "
            ldxdw r2, [r1+40]
            stxdw [r10-512], r2
            ldxdw r2, [r1+32]
            stxdw [r10-8], r2
            mov64 r1, r10
            add64 r1, -512
            mov64 r2, 512
            call emit
            mov64 r0, 0
            exit
            ",
        ),
    );
    client.done(RequestBody::Start);
    let mut emitted = [0u64; 2];
    for round in 0..1700u64 {
        let cpu = if round % 7 < 4 { 0 } else { 1 };
        // rdi: the CPU's own sequence number, so each record says which it is.
        hit(&client, G, cpu, &[emitted[cpu], round]);
        emitted[cpu] += 1;
        if round % 400 == 399 {
            client.drain();
        }
    }
    client.done(RequestBody::Stop);

    let mut lost_total = 0;
    for cpu in 0..2u16 {
        let stats = client.cpu_stats(cpu);
        assert_eq!(stats.next_seq, emitted[cpu as usize]);
        assert_eq!(stats.emitted + stats.lost, stats.next_seq);
        // Events and loss reports of this CPU partition 0..next_seq, in order.
        let mut covered = vec![0u8; stats.next_seq as usize];
        let mut delivered = 0;
        let mut last_seq = None;
        for event in client.events.iter().filter(|event| event.cpu == cpu) {
            assert!(last_seq < Some(event.seq), "events in sequence order");
            last_seq = Some(event.seq);
            covered[event.seq as usize] += 1;
            delivered += 1;
            let words = words(&event.data);
            assert_eq!(words[0], event.seq, "the record of its own number");
            assert_eq!(words.len(), 64);
        }
        let mut lost = 0;
        for loss in client.losses.iter().filter(|loss| loss.cpu == cpu) {
            for seq in loss.first_seq..loss.first_seq + loss.count {
                covered[seq as usize] += 1;
            }
            lost += loss.count;
        }
        assert!(
            covered.iter().all(|&times| times == 1),
            "cpu {cpu}: a number missing or twice"
        );
        assert_eq!(delivered, stats.emitted);
        assert_eq!(lost, stats.lost);
        assert!(
            lost > 0 && delivered > 0,
            "the flood overflowed the ring and some got through"
        );
        lost_total += lost;
    }
    assert_eq!(client.probe_stats(probe).drops, lost_total);
    // The server was woken each time a ring went past half full.
    assert!(sim.wakeups() >= 2);
}
