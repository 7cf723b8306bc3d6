//! What the compiler produces: maps, probe sites with their programs, and the
//! metadata the client needs to print what comes back.
//!
//! # Design
//!
//! A [`CompiledScript`] is everything the client sends (map definitions, sites,
//! programs) plus everything it keeps (record formats, map shapes, `begin`/`end`
//! actions). Nothing in it refers to the script text: the client can arm, run and
//! format from it alone.
//!
//! Every record a handler emits starts with its record number as a little-endian
//! u64, followed by the values at the offsets [`RecordFormat::fields`] gives, each
//! 8-byte aligned. The record number says how to print it: a `printf`, or an action
//! the client performs (print or clear a map, exit).

use probe_port_protocol::isa::Insn;
use probe_port_protocol::maps::{AggregateKind, MapId, MapSpec};
use probe_port_protocol::message::TimerScope;

/// A compiled script.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledScript {
    /// Every map, in [`MapId`] order, to define before arming.
    pub maps: Vec<MapInfo>,
    /// Every probe of the script (aliases expanded), in source order.
    pub probes: Vec<CompiledProbe>,
    /// Record formats, indexed by record number.
    pub records: Vec<RecordFormat>,
    /// What the client does before starting the probes (`begin` blocks).
    pub begin: Vec<HostAction>,
    /// What the client does after stopping them (`end` blocks, then printing every
    /// map that the `end` blocks neither printed nor cleared).
    pub end: Vec<HostAction>,
}

impl CompiledScript {
    /// The map definitions to send.
    pub fn map_specs(&self) -> Vec<MapSpec> {
        self.maps.iter().map(|map| map.spec).collect()
    }

    /// The record format of a record's first 8 bytes, if known.
    pub fn record_of(&self, data: &[u8]) -> Option<&RecordFormat> {
        let id = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
        self.records.get(usize::try_from(id).ok()?)
    }

    /// Every attachment of every probe.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.probes
            .iter()
            .flat_map(|probe| probe.attachments.iter())
    }
}

/// A map: its definition and how to print it.
#[derive(Clone, Debug, PartialEq)]
pub struct MapInfo {
    /// The definition sent with `DefineMap`.
    pub spec: MapSpec,
    /// Its name with the `@` (`@` alone for the anonymous map).
    pub name: String,
    /// The key's fields (empty for a map without keys, whose key is one zero byte).
    pub key: Vec<Field>,
    /// What each value is.
    pub value: MapValue,
}

/// What a map holds.
#[derive(Clone, Debug, PartialEq)]
pub enum MapValue {
    /// A plain value at offset 0 of the value bytes.
    Value(ValueType),
    /// An aggregation (values per CPU, merged by the client).
    Aggregate(AggregateKind),
}

/// One probe of the script: one or more attachments (one per matched site).
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledProbe {
    /// The probe points as written, comma-separated.
    pub name: String,
    /// The attachments, one per site.
    pub attachments: Vec<Attachment>,
}

/// One site with its program.
#[derive(Clone, Debug, PartialEq)]
pub struct Attachment {
    /// Where it fires.
    pub site: SiteSpec,
    /// What the site is, for people: `demo_kernel::vm::fault+0x12`, `marker ipc:send`.
    pub description: String,
    /// The handler program (verified).
    pub program: Vec<Insn>,
    /// For return sites, the entry program (verified; empty if none).
    pub entry_program: Vec<Insn>,
}

impl Attachment {
    /// The handler program's wire bytes (for `Arm`).
    pub fn program_bytes(&self) -> Vec<u8> {
        probe_port_protocol::isa::encode(&self.program)
    }

    /// The entry program's wire bytes (empty when there is none).
    pub fn entry_program_bytes(&self) -> Vec<u8> {
        probe_port_protocol::isa::encode(&self.entry_program)
    }
}

impl SiteSpec {
    /// The wire form of the site; `entry_program` is
    /// [`Attachment::entry_program_bytes`] (ignored by every site but `Return`).
    pub fn to_wire<'a>(
        &'a self,
        entry_program: &'a [u8],
    ) -> probe_port_protocol::message::Site<'a> {
        use probe_port_protocol::message::Site;
        match self {
            SiteSpec::Dynamic { address, expected } => Site::Dynamic {
                address: *address,
                expected,
            },
            SiteSpec::Return { address, expected } => Site::Return {
                address: *address,
                expected,
                entry_program,
            },
            SiteSpec::Marker { index } => Site::Marker { index: *index },
            SiteSpec::Timer { period_ns, scope } => Site::Timer {
                period_ns: *period_ns,
                scope: *scope,
            },
            SiteSpec::User {
                path,
                file_offset,
                is_return,
                ref_ctr_offset,
            } => Site::User {
                path,
                file_offset: *file_offset,
                is_return: *is_return,
                ref_ctr_offset: *ref_ctr_offset,
                entry_program,
            },
            SiteSpec::KernelSymbol {
                symbol,
                offset,
                is_return,
            } => Site::KernelSymbol {
                symbol,
                offset: *offset,
                is_return: *is_return,
                entry_program,
            },
        }
    }
}

/// A site, owned (the wire form `message::Site` borrows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteSpec {
    /// An instruction boundary in kernel text.
    Dynamic {
        /// The address.
        address: u64,
        /// The instruction's bytes there.
        expected: Vec<u8>,
    },
    /// The return of the function entered at `address`.
    Return {
        /// The function's entry.
        address: u64,
        /// The entry instruction's bytes.
        expected: Vec<u8>,
    },
    /// A static marker.
    Marker {
        /// Its index in the kernel's table.
        index: u32,
    },
    /// A timer.
    Timer {
        /// The period.
        period_ns: u64,
        /// One CPU or each CPU.
        scope: TimerScope,
    },
    /// An instruction of a user-space ELF file (PROTOCOL.md §8.8).
    User {
        /// The file's absolute path.
        path: String,
        /// The instruction's offset in the file.
        file_offset: u64,
        /// Whether the site is the function's return.
        is_return: bool,
        /// The file offset of a USDT semaphore, 0 for none.
        ref_ctr_offset: u64,
    },
    /// Kernel text named by symbol and offset, for the stub to resolve
    /// (PROTOCOL.md §8.10).
    KernelSymbol {
        /// The kernel's name for the function.
        symbol: String,
        /// Bytes from the symbol's address.
        offset: u64,
        /// Whether the site is the function's return.
        is_return: bool,
    },
}

/// How the client prints one record.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordFormat {
    /// The record number (the record's first 8 bytes).
    pub id: u32,
    /// The record's size in bytes, the number included.
    pub size: u16,
    /// What the record means.
    pub kind: RecordKind,
    /// The values after the number.
    pub fields: Vec<Field>,
}

/// What a record means.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordKind {
    /// Print the values with a format.
    Printf(Vec<FormatPiece>),
    /// Print a map (`print(@m)` in a probe).
    PrintMap(MapId),
    /// Clear a map (`clear(@m)` in a probe).
    ClearMap(MapId),
    /// Stop tracing (`exit()`).
    Exit,
}

/// One value in a record or a map key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Byte offset in the record (after the record number: offsets start at 8) or key.
    pub offset: u16,
    /// What it is; its size follows from the type.
    pub ty: ValueType,
    /// For `$$parms` entries, the parameter's name.
    pub name: Option<String>,
}

/// How the bytes of a value are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// A signed integer, 8 bytes.
    Signed,
    /// An unsigned integer, 8 bytes.
    Unsigned,
    /// A truth value, 8 bytes (0 or 1).
    Bool,
    /// A kernel address, 8 bytes, printed in hex.
    Pointer,
    /// A code address, 8 bytes, printed as `function+offset` by the client.
    Symbol,
    /// An x86-64 Linux system call number, 8 bytes, printed as its name by the
    /// client ([`crate::syscalls`]).
    Syscall,
    /// A NUL-padded string of `size` bytes.
    Str {
        /// Its buffer size.
        size: u16,
    },
    /// A kernel stack: `depth` u64 return addresses, zero after the last.
    Stack {
        /// How many addresses.
        depth: u16,
    },
}

impl ValueType {
    /// Size in bytes.
    pub fn size(self) -> u16 {
        match self {
            ValueType::Str { size } => size,
            ValueType::Stack { depth } => depth * 8,
            _ => 8,
        }
    }

    /// Size rounded up to 8.
    pub fn padded_size(self) -> u16 {
        self.size().div_ceil(8) * 8
    }
}

/// One piece of a `printf` format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatPiece {
    /// Text printed as is (`%%` already turned into `%`).
    Text(String),
    /// A conversion of some fields (one, or several for `$$parms`).
    Value {
        /// The conversion as written.
        spec: Conversion,
        /// Indices into the record's fields.
        fields: Vec<usize>,
    },
}

/// A parsed `printf` conversion: `%[flags][width][.precision][length]kind`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Conversion {
    /// `-`: left-justify.
    pub left: bool,
    /// `0`: pad numbers with zeros.
    pub zero: bool,
    /// `+`: always a sign.
    pub plus: bool,
    /// ` `: a space for positive numbers.
    pub space: bool,
    /// `#`: `0x` prefix for `%x`, `0` for `%o`.
    pub alternate: bool,
    /// Minimum width.
    pub width: Option<usize>,
    /// Precision (strings: most bytes printed).
    pub precision: Option<usize>,
    /// The conversion letter: `d i u x X o c s p`.
    pub kind: char,
}

/// What the client does in `begin` and `end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// Print this text (a `printf` with constant arguments, formatted at compile time).
    Print(String),
    /// Read and print a map.
    PrintMap(MapId),
    /// Clear a map.
    ClearMap(MapId),
    /// Stop (in `begin`: before starting any probe).
    Exit,
}

/// Text for people (and golden files): maps, records, host actions and every
/// attachment, with its programs disassembled when `with_code`.
pub fn describe(script: &CompiledScript, with_code: bool) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    for map in &script.maps {
        let key: Vec<String> = map
            .key
            .iter()
            .map(|field| describe_value(field.ty))
            .collect();
        let value = match &map.value {
            MapValue::Value(ty) => describe_value(*ty),
            MapValue::Aggregate(kind) => format!("{kind:?}"),
        };
        let _ = writeln!(
            text,
            "map {} {}: key ({}) {} bytes, value {} {} bytes, {} entries",
            map.spec.map.0,
            map.name,
            key.join(", "),
            map.spec.key_size,
            value,
            map.spec.value_size,
            map.spec.max_entries
        );
    }
    for record in &script.records {
        let kind = match &record.kind {
            RecordKind::Printf(pieces) => {
                let mut format = String::new();
                for piece in pieces {
                    match piece {
                        FormatPiece::Text(literal) => format.push_str(literal),
                        FormatPiece::Value { spec, fields } => {
                            let _ = write!(format, "{{%{} {:?}}}", spec.kind, fields);
                        }
                    }
                }
                format!("printf {format:?}")
            }
            RecordKind::PrintMap(map) => format!("print map {}", map.0),
            RecordKind::ClearMap(map) => format!("clear map {}", map.0),
            RecordKind::Exit => "exit".to_string(),
        };
        let fields: Vec<String> = record
            .fields
            .iter()
            .map(|field| {
                let name = field
                    .name
                    .as_ref()
                    .map_or(String::new(), |name| format!("{name}="));
                format!("{}@{}", name, field.offset) + ":" + &describe_value(field.ty)
            })
            .collect();
        let _ = writeln!(
            text,
            "record {} ({} bytes): {kind} [{}]",
            record.id,
            record.size,
            fields.join(", ")
        );
    }
    for (name, actions) in [("begin", &script.begin), ("end", &script.end)] {
        for action in actions.iter() {
            let _ = writeln!(text, "{name}: {action:?}");
        }
    }
    for probe in &script.probes {
        let _ = writeln!(text, "probe {}", probe.name);
        for attachment in &probe.attachments {
            let site = match &attachment.site {
                SiteSpec::Dynamic { address, expected } => {
                    format!("dynamic {address:#x} expecting {}", hex(expected))
                }
                SiteSpec::Return { address, expected } => {
                    format!("return of {address:#x} expecting {}", hex(expected))
                }
                SiteSpec::Marker { index } => format!("marker #{index}"),
                SiteSpec::Timer { period_ns, scope } => format!("timer {period_ns}ns {scope:?}"),
                SiteSpec::User {
                    path,
                    file_offset,
                    is_return,
                    ref_ctr_offset,
                } => {
                    let mut text = format!("user {path} at offset {file_offset:#x}");
                    if *is_return {
                        text.push_str(" (return)");
                    }
                    if *ref_ctr_offset != 0 {
                        text.push_str(&format!(", semaphore at offset {ref_ctr_offset:#x}"));
                    }
                    text
                }
                SiteSpec::KernelSymbol {
                    symbol,
                    offset,
                    is_return,
                } => format!(
                    "kernel symbol {symbol}+{offset:#x}{}",
                    if *is_return { " (return)" } else { "" }
                ),
            };
            let _ = writeln!(
                text,
                "  at {}: {site}, {} instructions{}",
                attachment.description,
                attachment.program.len(),
                if attachment.entry_program.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", entry program {} instructions",
                        attachment.entry_program.len()
                    )
                }
            );
            if with_code {
                if !attachment.entry_program.is_empty() {
                    text.push_str("  entry program:\n");
                    text.push_str(&probe_port_protocol::asm::disassemble_labelled(
                        &attachment.entry_program,
                    ));
                    text.push_str("  handler:\n");
                }
                text.push_str(&probe_port_protocol::asm::disassemble_labelled(
                    &attachment.program,
                ));
            }
        }
    }
    text
}

fn describe_value(ty: ValueType) -> String {
    match ty {
        ValueType::Signed => "i64".to_string(),
        ValueType::Unsigned => "u64".to_string(),
        ValueType::Bool => "bool".to_string(),
        ValueType::Pointer => "pointer".to_string(),
        ValueType::Symbol => "symbol".to_string(),
        ValueType::Syscall => "syscall".to_string(),
        ValueType::Str { size } => format!("string[{size}]"),
        ValueType::Stack { depth } => format!("kstack[{depth}]"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
