//! End to end without a kernel: compile scripts against the fake demo kernel, run
//! every program with the stub's own interpreter (`kernel_stub::interpreter::run`)
//! on hand-made probe contexts and a fake kernel memory, and check what comes out:
//! records formatted as the client would print them, map contents, aggregations.

use std::collections::BTreeMap;

use kernel_stub::interpreter::{EntrySaveError, Fault, Full, Helpers, run};
use lang::compiled::{Attachment, CompiledScript, MapValue, RecordKind, SiteSpec};
use lang::diagnostic::render;
use lang::fake::{self, DemoKernel};
use lang::format::format_record;
use lang::source::Sources;
use lang::{CompileOptions, compile};
use probe_port_protocol::context::{ProbeContext, slot};
use probe_port_protocol::maps::{
    AggregateKind, MapId, MapKind, MapSpec, linear_bucket, log2_bucket,
};

/// A kernel and its CPU as the helpers see them.
#[derive(Default)]
struct Machine {
    memory: BTreeMap<u64, Vec<u8>>,
    specs: Vec<MapSpec>,
    maps: BTreeMap<(u16, Vec<u8>), Vec<u8>>,
    aggregates: BTreeMap<(u16, Vec<u8>), Vec<i64>>,
    records: Vec<Vec<u8>>,
    entry_saves: [u64; 8],
    entry_program: bool,
    cpu: u64,
    tid: u64,
    name: Vec<u8>,
    now: u64,
    stack: Vec<u64>,
    faults: Vec<u64>,
}

impl Machine {
    fn new(script: &CompiledScript) -> Self {
        Machine {
            specs: script.map_specs(),
            tid: 7,
            name: b"worker-1".to_vec(),
            now: 1_000,
            ..Machine::default()
        }
    }

    fn poke(&mut self, address: u64, bytes: &[u8]) {
        self.memory.insert(address, bytes.to_vec());
    }

    fn read(&self, address: u64, length: usize) -> Result<Vec<u8>, Fault> {
        let (start, bytes) = self
            .memory
            .range(..=address)
            .next_back()
            .ok_or(Fault { address })?;
        let offset = (address - start) as usize;
        bytes
            .get(offset..offset + length)
            .map(<[u8]>::to_vec)
            .ok_or(Fault { address })
    }

    fn spec(&self, map: MapId) -> MapSpec {
        *self.specs.iter().find(|spec| spec.map == map).unwrap()
    }
}

impl Helpers for Machine {
    fn read_kernel(&mut self, dst: &mut [u8], src: u64) -> Result<(), Fault> {
        match self.read(src, dst.len()) {
            Ok(bytes) => {
                dst.copy_from_slice(&bytes);
                Ok(())
            }
            Err(fault) => {
                self.faults.push(fault.address);
                Err(fault)
            }
        }
    }

    fn read_kernel_str(&mut self, dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        let mut written = 0;
        while written + 1 < dst.len() {
            let byte = self.read(src + written as u64, 1)?[0];
            if byte == 0 {
                break;
            }
            dst[written] = byte;
            written += 1;
        }
        dst[written] = 0;
        Ok(written + 1)
    }

    fn cpu(&mut self) -> u64 {
        self.cpu
    }

    fn task_id(&mut self) -> u64 {
        self.tid
    }

    fn task_name(&mut self, dst: &mut [u8]) -> usize {
        let length = self.name.len().min(dst.len());
        dst[..length].copy_from_slice(&self.name[..length]);
        length
    }

    fn time_ns(&mut self) -> u64 {
        self.now
    }

    fn map_spec(&self, map: MapId) -> Option<MapSpec> {
        self.specs.iter().find(|spec| spec.map == map).copied()
    }

    fn map_lookup(&mut self, map: MapId, key: &[u8], value: &mut [u8]) -> bool {
        match self.maps.get(&(map.0, key.to_vec())) {
            Some(stored) => {
                value.copy_from_slice(stored);
                true
            }
            None => false,
        }
    }

    fn map_update(&mut self, map: MapId, key: &[u8], value: &[u8]) -> Result<(), Full> {
        self.maps.insert((map.0, key.to_vec()), value.to_vec());
        Ok(())
    }

    fn map_delete(&mut self, map: MapId, key: &[u8]) -> bool {
        self.maps.remove(&(map.0, key.to_vec())).is_some()
    }

    fn aggregate(&mut self, map: MapId, key: &[u8], value: i64) -> Result<(), Full> {
        let MapKind::Aggregate(kind) = self.spec(map).kind else {
            panic!("aggregate on a hash map");
        };
        let words = kind.value_size().unwrap() as usize / 8;
        let entry = self
            .aggregates
            .entry((map.0, key.to_vec()))
            .or_insert_with(|| {
                let mut initial = vec![0i64; words];
                match kind {
                    AggregateKind::Min => initial[0] = i64::MAX,
                    AggregateKind::Max => initial[0] = i64::MIN,
                    AggregateKind::Stats => {
                        initial[2] = i64::MAX;
                        initial[3] = i64::MIN;
                    }
                    _ => {}
                }
                initial
            });
        match kind {
            AggregateKind::Count => entry[0] += 1,
            AggregateKind::Sum => entry[0] = entry[0].wrapping_add(value),
            AggregateKind::Min => entry[0] = entry[0].min(value),
            AggregateKind::Max => entry[0] = entry[0].max(value),
            AggregateKind::Avg => {
                entry[0] += 1;
                entry[1] += value;
            }
            AggregateKind::Stats => {
                entry[0] += 1;
                entry[1] += value;
                entry[2] = entry[2].min(value);
                entry[3] = entry[3].max(value);
            }
            AggregateKind::Log2Hist => entry[log2_bucket(value)] += 1,
            AggregateKind::LinearHist { min, max, step } => {
                entry[linear_bucket(value, min, max, step)] += 1;
            }
        }
        Ok(())
    }

    fn emit(&mut self, record: &[u8]) -> Result<(), Full> {
        self.records.push(record.to_vec());
        Ok(())
    }

    fn stack_trace(&mut self, dst: &mut [u8]) -> usize {
        let count = self.stack.len().min(dst.len() / 8);
        for (index, address) in self.stack.iter().take(count).enumerate() {
            dst[index * 8..index * 8 + 8].copy_from_slice(&address.to_le_bytes());
        }
        count
    }

    fn entry_save(&mut self, slot: usize, value: u64) -> Result<(), EntrySaveError> {
        if !self.entry_program {
            return Err(EntrySaveError::NotEntryProgram);
        }
        self.entry_saves[slot] = value;
        Ok(())
    }
}

fn compile_script(text: &str) -> CompiledScript {
    let mut sources = Sources::new();
    sources.add_script("test.probe", text);
    lang::tapset::add_builtin(&mut sources);
    let (result, diagnostics) = compile(&sources, &DemoKernel::new(), &CompileOptions::default());
    let rendered = render(&sources, &diagnostics);
    let script = result.unwrap_or_else(|| panic!("does not compile:\n{rendered}"));
    let specs = script.map_specs();
    let specs = specs.as_slice();
    for attachment in script.attachments() {
        use probe_port_protocol::verifier::{ProgramKind, VerifierConfig, verify_alloc};
        verify_alloc(
            &attachment.program,
            &VerifierConfig::new(ProgramKind::Probe, &specs),
        )
        .expect("the handler verifies");
        if !attachment.entry_program.is_empty() {
            verify_alloc(
                &attachment.entry_program,
                &VerifierConfig::new(ProgramKind::Entry, &specs),
            )
            .expect("the entry program verifies");
        }
    }
    script
}

fn symbolize(address: u64) -> Option<String> {
    let kernel = DemoKernel::new();
    lang::resolver::Resolver::functions(&kernel, "*")
        .into_iter()
        .find(|function| address >= function.entry && address < function.entry + function.size)
        .map(|function| {
            if address == function.entry {
                function.name
            } else {
                format!("{}+{:#x}", function.name, address - function.entry)
            }
        })
}

/// The attachment of the first probe whose site is described as `description`.
fn attachment<'s>(script: &'s CompiledScript, description: &str) -> &'s Attachment {
    script
        .attachments()
        .find(|attachment| attachment.description == description)
        .unwrap_or_else(|| panic!("no attachment {description}"))
}

/// A context for a dynamic site: registers by slot, and the probed address.
fn context(attachment: &Attachment, registers: &[(u8, u64)]) -> ProbeContext {
    let mut context = ProbeContext::default();
    for (register, value) in registers {
        context.slots[*register as usize] = *value;
    }
    context.slots[slot::PC] = match attachment.site {
        SiteSpec::Dynamic { address, .. } | SiteSpec::Return { address, .. } => address,
        _ => 0,
    };
    context
}

/// Runs a site's program (and, for return sites, its entry program first on
/// `entry_registers`), then formats the records it emitted.
fn fire(machine: &mut Machine, attachment: &Attachment, context: &ProbeContext) -> Vec<String> {
    let before = machine.records.len();
    machine.entry_program = false;
    run(&attachment.program, context, machine).expect("the handler runs to exit");
    machine.records[before..]
        .to_vec()
        .iter()
        .map(|record| format_record_text(machine, record))
        .collect()
}

fn fire_return(
    machine: &mut Machine,
    attachment: &Attachment,
    entry_registers: &[(u8, u64)],
    return_registers: &[(u8, u64)],
) -> Vec<String> {
    machine.entry_saves = [0; 8];
    if !attachment.entry_program.is_empty() {
        machine.entry_program = true;
        let entry = context(attachment, entry_registers);
        run(&attachment.entry_program, &entry, machine).expect("the entry program runs");
    }
    let mut at_return = context(attachment, return_registers);
    for (index, value) in machine.entry_saves.iter().enumerate() {
        at_return.slots[slot::ENTRY_BASE + index] = *value;
    }
    fire(machine, attachment, &at_return)
}

thread_local! {
    static SCRIPT: std::cell::RefCell<Option<CompiledScript>> = const { std::cell::RefCell::new(None) };
}

fn format_record_text(_machine: &Machine, record: &[u8]) -> String {
    SCRIPT.with(|script| {
        let script = script.borrow();
        let script = script.as_ref().unwrap();
        let format = script.record_of(record).expect("a known record number");
        match &format.kind {
            RecordKind::Printf(_) => format_record(format, record, &symbolize),
            RecordKind::PrintMap(map) => format!("<print map {}>", map.0),
            RecordKind::ClearMap(map) => format!("<clear map {}>", map.0),
            RecordKind::Exit => "<exit>".to_string(),
        }
    })
}

fn setup(text: &str) -> (CompiledScript, Machine) {
    let script = compile_script(text);
    SCRIPT.with(|cell| *cell.borrow_mut() = Some(script.clone()));
    let machine = Machine::new(&script);
    (script, machine)
}

fn key(values: &[u64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

fn count_of(machine: &Machine, map: u16, key: &[u8]) -> i64 {
    machine
        .aggregates
        .get(&(map, key.to_vec()))
        .map_or(0, |words| words[0])
}

/// A message at `address`: id, size, payload.
fn message(machine: &mut Machine, address: u64, id: u32, size: u32, payload: [u64; 4]) {
    let mut bytes = Vec::new();
    bytes.extend(id.to_le_bytes());
    bytes.extend(size.to_le_bytes());
    for word in payload {
        bytes.extend(word.to_le_bytes());
    }
    machine.poke(address, &bytes);
}

/// A thread at `address`: tid, cpu, name.
fn thread(machine: &mut Machine, address: u64, tid: u32, name: &str, vm: u64) {
    let mut bytes = vec![0u8; 56];
    bytes[0..4].copy_from_slice(&tid.to_le_bytes());
    bytes[8..8 + name.len()].copy_from_slice(name.as_bytes());
    bytes[24] = name.len() as u8;
    bytes[40..48].copy_from_slice(&vm.to_le_bytes());
    machine.poke(address, &bytes);
}

#[test]
fn counts_calls_by_argument() {
    let (script, mut machine) =
        setup(r#"probe kernel.function("port_send") { @sends[$right] = count(); }"#);
    let site = attachment(&script, "demo_kernel::ipc::ports::port_send");
    for right in [3, 5, 3] {
        fire(&mut machine, site, &context(site, &[(fake::RDI, right)]));
    }
    assert_eq!(count_of(&machine, 0, &key(&[3])), 2);
    assert_eq!(count_of(&machine, 0, &key(&[5])), 1);
}

#[test]
fn printf_reads_members_through_pointers() {
    let (script, mut machine) = setup(
        r#"probe kernel.function("port_send") /$right != 0/ {
            printf("send %u size %u id %u payload[2]=%#x by %s (%s)\n", $right, $message->size,
                   $message->id, $message->payload[2], comm, probefunc);
        }"#,
    );
    message(&mut machine, 0x1000, 7, 24, [1, 2, 0xabc, 4]);
    let site = attachment(&script, "demo_kernel::ipc::ports::port_send");
    let lines = fire(
        &mut machine,
        site,
        &context(site, &[(fake::RDI, 3), (fake::RSI, 0x1000)]),
    );
    assert_eq!(
        lines,
        ["send 3 size 24 id 7 payload[2]=0xabc by worker-1 (demo_kernel::ipc::ports::port_send)\n"]
    );
    // The predicate filters.
    let lines = fire(
        &mut machine,
        site,
        &context(site, &[(fake::RDI, 0), (fake::RSI, 0x1000)]),
    );
    assert!(lines.is_empty());
}

#[test]
fn a_bad_pointer_reads_as_zero_and_is_counted() {
    let (script, mut machine) =
        setup(r#"probe kernel.function("port_send") { printf("%u\n", $message->size); }"#);
    let site = attachment(&script, "demo_kernel::ipc::ports::port_send");
    let lines = fire(
        &mut machine,
        site,
        &context(site, &[(fake::RSI, 0xdead_0000)]),
    );
    assert_eq!(lines, ["0\n"]);
    assert_eq!(machine.faults, [0xdead_0004]);
}

#[test]
fn signed_and_unsigned_arithmetic() {
    let (script, mut machine) = setup(
        r#"probe kernel.marker("test:label") {
            printf("%d %d %d %d %u %d %d\n", $delta, $delta / 2, $delta % 3, $delta >> 1,
                   (u32)$delta, $delta < 1, -$delta * 3);
        }"#,
    );
    let site = attachment(&script, "marker test:label");
    let mut ctx = ProbeContext::default();
    ctx.slots[1] = (-7i32) as u32 as u64; // a 32-bit marker argument, zero-extended
    let lines = fire(&mut machine, site, &ctx);
    assert_eq!(lines, ["-7 -3 -1 -4 4294967289 1 21\n"]);
}

#[test]
fn comparisons_and_logic() {
    let (script, mut machine) = setup(
        r#"probe kernel.function("demo_kernel::sys::dispatch") {
            let kind = $number > 2 ? 10 : 20;
            if ($number == 1 || $arg0 == 0) { kind += 1; } else if (!($arg1 >= 5) && $arg2 != 9) { kind += 2; } else { kind += 3; }
            printf("%d\n", kind);
        }"#,
    );
    let site = attachment(&script, "demo_kernel::sys::dispatch");
    let run_with = |machine: &mut Machine, number, arg0, arg1, arg2| {
        fire(
            machine,
            site,
            &context(
                site,
                &[
                    (fake::RDI, number),
                    (fake::RSI, arg0),
                    (fake::RDX, arg1),
                    (fake::RCX, arg2),
                ],
            ),
        )
    };
    assert_eq!(run_with(&mut machine, 1, 5, 5, 5), ["21\n"]);
    assert_eq!(run_with(&mut machine, 3, 0, 5, 5), ["11\n"]);
    assert_eq!(run_with(&mut machine, 3, 1, 4, 5), ["12\n"]);
    assert_eq!(run_with(&mut machine, 0, 1, 4, 9), ["23\n"]);
    assert_eq!(run_with(&mut machine, 0, 1, 6, 1), ["23\n"]);
}

#[test]
fn strings_compare_and_key_maps() {
    let (script, mut machine) = setup(
        r#"probe kernel.function("demo_kernel::sched::switch_to") /comm == "worker-1"/ {
            let name = str($next->name);
            if (name != "idle") { @to[name] = count(); }
            printf("%s -> %s\n", $prev->name, thread_name($next));
        }"#,
    );
    thread(&mut machine, 0x2000, 1, "idle", 0);
    thread(&mut machine, 0x3000, 2, "client", 0);
    let site = attachment(&script, "demo_kernel::sched::switch_to");
    let lines = fire(
        &mut machine,
        site,
        &context(site, &[(fake::RDI, 0x2000), (fake::RSI, 0x3000)]),
    );
    assert_eq!(lines, ["idle -> client\n"]);
    fire(
        &mut machine,
        site,
        &context(site, &[(fake::RDI, 0x3000), (fake::RSI, 0x2000)]),
    );
    let mut client = b"client".to_vec();
    client.resize(16, 0);
    assert_eq!(count_of(&machine, 0, &client), 1);
    assert_eq!(machine.aggregates.len(), 1, "idle is not counted");
    // Another task: the predicate compares the whole name.
    machine.name = b"worker-10".to_vec();
    assert!(
        fire(
            &mut machine,
            site,
            &context(site, &[(fake::RDI, 0x2000), (fake::RSI, 0x3000)])
        )
        .is_empty()
    );
}

#[test]
fn return_probes_use_entry_values() {
    let (script, mut machine) = setup(
        r#"probe kernel.function("demo_kernel::vm::age").return {
            @latency = avg(nsecs - @entry(nsecs));
            printf("owner %u aged %u took %d\n", $map->owner, $return, nsecs - @entry(nsecs));
        }"#,
    );
    let site = attachment(&script, "demo_kernel::vm::age.return");
    let mut vm_map = vec![0u8; 48];
    vm_map[16..20].copy_from_slice(&42u32.to_le_bytes());
    machine.poke(0x4000, &vm_map);
    machine.now = 1_000;
    // At entry `map` is in rdi; the entry program saves it and the time.
    machine.entry_program = true;
    machine.entry_saves = [0; 8];
    let entry = context(site, &[(fake::RDI, 0x4000)]);
    run(&site.entry_program, &entry, &mut machine).unwrap();
    machine.now = 1_250;
    let mut at_return = context(site, &[(0, 0xffff_0000_0000_0003)]);
    for (index, value) in machine.entry_saves.iter().enumerate() {
        at_return.slots[slot::ENTRY_BASE + index] = *value;
    }
    let lines = fire(&mut machine, site, &at_return);
    assert_eq!(lines, ["owner 42 aged 3 took 250\n"]);
    assert_eq!(machine.aggregates[&(0, vec![0])], [1, 250]);
    // The helper of the harness works for the common case too.
    machine.now = 2_000;
    let lines = fire_return(&mut machine, site, &[(fake::RDI, 0x4000)], &[(0, 9)]);
    assert_eq!(lines, ["owner 42 aged 9 took 0\n"]);
}

#[test]
fn aggregations_fold_as_specified() {
    let (script, mut machine) = setup(
        r#"probe kernel.function("demo_kernel::sys::dispatch") {
            @sum = sum($arg0); @min = min($arg0); @max = max($arg0); @avg = avg($arg0);
            @stats = stats($arg0); @hist = hist($arg0); @lin = lhist($arg0, 0, 100, 10);
        }"#,
    );
    let site = attachment(&script, "demo_kernel::sys::dispatch");
    for value in [5u64, 50, 500, (-3i64) as u64] {
        fire(&mut machine, site, &context(site, &[(fake::RSI, value)]));
    }
    let map = |name: &str| {
        let info = script.maps.iter().find(|map| map.name == name).unwrap();
        machine.aggregates[&(info.spec.map.0, vec![0])].clone()
    };
    assert_eq!(map("@sum"), [552]);
    assert_eq!(map("@min"), [-3]);
    assert_eq!(map("@max"), [500]);
    assert_eq!(map("@avg"), [4, 552]);
    assert_eq!(map("@stats"), [4, 552, -3, 500]);
    let hist = map("@hist");
    assert_eq!(
        (
            hist[0],
            hist[log2_bucket(5)],
            hist[log2_bucket(50)],
            hist[log2_bucket(500)]
        ),
        (1, 1, 1, 1)
    );
    let linear = map("@lin");
    assert_eq!(linear, [1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
    assert!(matches!(
        script.maps.iter().find(|m| m.name == "@lin").unwrap().value,
        MapValue::Aggregate(AggregateKind::LinearHist {
            min: 0,
            max: 100,
            step: 10
        })
    ));
}

#[test]
fn plain_maps_store_read_update_and_delete() {
    let (script, mut machine) = setup(
        r#"probe kernel.function("port_send") {
            @start[tid] = nsecs;
            @total += $message->size;
            @last_name[$right] = comm;
        }
        probe kernel.function("port_receive") {
            printf("waited %d total %d name %s\n", nsecs - @start[tid], @total, @last_name[$right]);
            delete(@start[tid]);
        }"#,
    );
    message(&mut machine, 0x1000, 1, 16, [0; 4]);
    let send = attachment(&script, "demo_kernel::ipc::ports::port_send");
    let receive = attachment(&script, "demo_kernel::ipc::ports::port_receive");
    machine.now = 100;
    fire(
        &mut machine,
        send,
        &context(send, &[(fake::RDI, 4), (fake::RSI, 0x1000)]),
    );
    fire(
        &mut machine,
        send,
        &context(send, &[(fake::RDI, 4), (fake::RSI, 0x1000)]),
    );
    machine.now = 350;
    let lines = fire(&mut machine, receive, &context(receive, &[(fake::RDI, 4)]));
    assert_eq!(lines, ["waited 250 total 32 name worker-1\n"]);
    assert!(!machine.maps.contains_key(&(0, key(&[7]))), "deleted");
    // A missing key reads as zero.
    let lines = fire(&mut machine, receive, &context(receive, &[(fake::RDI, 5)]));
    assert_eq!(lines, ["waited 350 total 32 name \n"]);
}

#[test]
fn every_location_kind_is_read() {
    let (script, mut machine) = setup(
        r#"probe kernel.function("port_send+0x12") { printf("%u %p %u\n", $right, $message, $limit); }
        probe kernel.statement("ipc.rs:348") { printf("%u %x\n", $port_id, $queued); }
        probe kernel.function("demo_kernel::vm::fault") { printf("%d %x %u\n", $access, $address, $map->pages); }"#,
    );
    // `right` is on the stack at rsp + 8.
    machine.poke(
        0x7000,
        &[0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
    );
    let inside = attachment(&script, "demo_kernel::ipc::ports::port_send+0x12");
    let lines = fire(
        &mut machine,
        inside,
        &context(inside, &[(fake::RSP, 0x7000), (fake::RBX, 0x1000)]),
    );
    assert_eq!(lines, ["9 0x1000 32\n"]);
    let line = attachment(
        &script,
        "ipc.rs:348 (demo_kernel::ipc::ports::port_send+0x30)",
    );
    let lines = fire(
        &mut machine,
        line,
        &context(line, &[(fake::R12, 0x1_0000_0005), (fake::RBX, 0x100)]),
    );
    assert_eq!(lines, ["5 108\n"]);
    let mut vm_map = vec![0u8; 48];
    vm_map[8..12].copy_from_slice(&12u32.to_le_bytes());
    machine.poke(0x4000, &vm_map);
    let fault = attachment(&script, "demo_kernel::vm::fault");
    let lines = fire(
        &mut machine,
        fault,
        &context(
            fault,
            &[(fake::RDI, 0x4000), (fake::RSI, 0xbeef), (fake::RDX, 0x101)],
        ),
    );
    assert_eq!(lines, ["1 beef 12\n"]);
}

#[test]
fn markers_parms_and_actions() {
    let (script, mut machine) = setup(
        r#"probe ipc.send { printf("%s\n", $$parms); if ($id == 99) { exit(); } }
        probe kernel.function("demo_kernel::vm::access") { printf("[%s]\n", $$parms); }
        probe timer.s(1) { print(@n); clear(@n); }
        probe kernel.marker("vm:fault") { @n = count(); }"#,
    );
    let send = attachment(&script, "marker ipc:send");
    let mut ctx = ProbeContext::default();
    ctx.slots[..4].copy_from_slice(&[2, 99, 16, 7]);
    let lines = fire(&mut machine, send, &ctx);
    assert_eq!(lines, ["port=2 id=99 size=16 tid=7\n", "<exit>"]);
    let access = attachment(&script, "demo_kernel::vm::access");
    let lines = fire(
        &mut machine,
        access,
        &context(
            access,
            &[
                (fake::RDI, 0x4000),
                (fake::RSI, 0x10),
                (fake::RDX, 1),
                (fake::RCX, 5),
            ],
        ),
    );
    assert_eq!(lines, ["[map=0x4000 address=16 access=1 value=5]\n"]);
    let timer = attachment(&script, "timer every 1s");
    let lines = fire(&mut machine, timer, &ProbeContext::default());
    assert_eq!(lines, ["<print map 0>", "<clear map 0>"]);
}

#[test]
fn inline_functions_and_tapset_functions() {
    let (script, mut machine) = setup(
        r#"function square(x) { return x * x; }
        function bigger(a, b) { if (a > b) { return a; } return b; }
        probe kernel.function("demo_kernel::sys::dispatch") {
            printf("%d %s %s\n", bigger(square($arg0), $arg1 + 1) + square(2), syscall_name($number), access_name($arg2));
        }"#,
    );
    let site = attachment(&script, "demo_kernel::sys::dispatch");
    let call = |machine: &mut Machine, number, arg0, arg1, arg2| {
        fire(
            machine,
            site,
            &context(
                site,
                &[
                    (fake::RDI, number),
                    (fake::RSI, arg0),
                    (fake::RDX, arg1),
                    (fake::RCX, arg2),
                ],
            ),
        )
    };
    assert_eq!(call(&mut machine, 2, 3, 1, 1), ["13 send write\n"]);
    assert_eq!(call(&mut machine, 4, 3, 20, 0), ["25 touch read\n"]);
    assert_eq!(call(&mut machine, 1, 0, 0, 0), ["5 yield read\n"]);
    assert_eq!(call(&mut machine, 9, 0, 0, 0), ["5 unknown read\n"]);
}

#[test]
fn kernel_stacks_are_symbolized() {
    let (script, mut machine) = setup(
        r#"probe kernel.function("demo_kernel::vm::fault") { @stacks[kstack(4)] = count(); printf("%s", kstack(4)); }"#,
    );
    machine.stack = vec![fake::VM_FAULT + 0x10, fake::DISPATCH + 0x40];
    let site = attachment(&script, "demo_kernel::vm::fault");
    let lines = fire(&mut machine, site, &context(site, &[]));
    assert_eq!(
        lines,
        ["\n        demo_kernel::vm::fault+0x10\n        demo_kernel::sys::dispatch+0x40\n"]
    );
    let stack_key = key(&[fake::VM_FAULT + 0x10, fake::DISPATCH + 0x40, 0, 0]);
    assert_eq!(count_of(&machine, 0, &stack_key), 1);
}

#[test]
fn tapset_aliases_bring_their_locals() {
    let (script, mut machine) = setup(
        r#"probe ipc.port_send /size > 8/ { printf("id %u size %u\n", id, size); }
        probe vm.fault_entry { @faults[owner, access_name($access)] = count(); }"#,
    );
    message(&mut machine, 0x1000, 5, 9, [0; 4]);
    let send = attachment(&script, "demo_kernel::ipc::ports::port_send");
    assert_eq!(
        fire(&mut machine, send, &context(send, &[(fake::RSI, 0x1000)])),
        ["id 5 size 9\n"]
    );
    message(&mut machine, 0x1000, 5, 8, [0; 4]);
    assert!(fire(&mut machine, send, &context(send, &[(fake::RSI, 0x1000)])).is_empty());
    let mut vm_map = vec![0u8; 48];
    vm_map[16..20].copy_from_slice(&3u32.to_le_bytes());
    machine.poke(0x4000, &vm_map);
    let fault = attachment(&script, "demo_kernel::vm::fault");
    fire(
        &mut machine,
        fault,
        &context(fault, &[(fake::RDI, 0x4000), (fake::RDX, 1)]),
    );
    let mut expected = key(&[3]);
    let mut name = b"write".to_vec();
    name.resize(64, 0);
    expected.extend(name);
    assert_eq!(count_of(&machine, 0, &expected), 1);
}

#[test]
fn begin_and_end_run_in_the_client() {
    let script = compile_script(
        r#"probe begin { printf("Tracing %s (%d)\n", "ipc", 2 + 3); }
        probe ipc.send { @sends = count(); @sizes = hist($size); }
        probe end { print(@sends); printf("bye\n"); }"#,
    );
    use lang::compiled::HostAction;
    assert_eq!(
        script.begin,
        [HostAction::Print("Tracing ipc (5)\n".to_string())]
    );
    assert_eq!(
        script.end,
        [
            HostAction::PrintMap(MapId(0)),
            HostAction::Print("bye\n".to_string()),
            HostAction::PrintMap(MapId(1)),
        ]
    );
}

#[test]
fn computed_locations_run_their_programs() {
    let (script, mut machine) = setup(
        r#"probe kernel.function("port_send+0x12") { printf("%x %u\n", $spilled, $masked); }
        probe kernel.statement("ipc.rs:348") { printf("%u\n", $size_again); }"#,
    );
    // `spilled` is the u64 at rsp + 16; `masked` is (rbx & 0xff) * 2.
    let mut frame = vec![0u8; 24];
    frame[16..24].copy_from_slice(&0x1234_5678_9abc_def0u64.to_le_bytes());
    machine.poke(0x7000, &frame);
    let inside = attachment(&script, "demo_kernel::ipc::ports::port_send+0x12");
    let lines = fire(
        &mut machine,
        inside,
        &context(inside, &[(fake::RSP, 0x7000), (fake::RBX, 0x1_0342)]),
    );
    assert_eq!(lines, ["123456789abcdef0 132\n"]);
    // `size_again` is *(u32 *)(rbx + 4), through dup, swap and drop.
    message(&mut machine, 0x1000, 1, 77, [0; 4]);
    let line = attachment(
        &script,
        "ipc.rs:348 (demo_kernel::ipc::ports::port_send+0x30)",
    );
    assert_eq!(
        fire(&mut machine, line, &context(line, &[(fake::RBX, 0x1000)])),
        ["77\n"]
    );
}

#[test]
fn maps_print_as_bpftrace_prints_them() {
    use lang::format::{MapEntry, MapEntryValue, format_map};
    let (script, mut machine) = setup(
        r#"probe kernel.function("port_send") { @sends[$right] = count(); @sizes = hist($right); }"#,
    );
    let site = attachment(&script, "demo_kernel::ipc::ports::port_send");
    for right in [3, 5, 3, 3, 100] {
        fire(&mut machine, site, &context(site, &[(fake::RDI, right)]));
    }
    let print = |name: &str| {
        let info = script.maps.iter().find(|map| map.name == name).unwrap();
        let entries: Vec<MapEntry> = machine
            .aggregates
            .iter()
            .filter(|((map, _), _)| *map == info.spec.map.0)
            .map(|((_, key), words)| MapEntry {
                key: key.clone(),
                value: MapEntryValue::Aggregate(words.clone()),
            })
            .collect();
        format_map(info, &entries, &symbolize)
    };
    assert_eq!(
        print("@sends"),
        "@sends[5]: 1\n@sends[100]: 1\n@sends[3]: 3\n\n"
    );
    let bar = |n: usize| format!("|{:<52}|", "@".repeat(n));
    assert_eq!(
        print("@sizes"),
        format!(
            "@sizes:\n[2, 4){:>18} {}\n[4, 8){:>18} {}\n[8, 16){:>17} {}\n[16, 32){:>16} {}\n[32, 64){:>16} {}\n[64, 128){:>15} {}\n\n",
            3,
            bar(52),
            1,
            bar(17),
            0,
            bar(0),
            0,
            bar(0),
            0,
            bar(0),
            1,
            bar(17)
        )
    );
}
