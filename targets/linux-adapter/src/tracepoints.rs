//! Kernel tracepoints served as the port's static markers (`DescribeMarker`,
//! `Site::Marker`).
//!
//! # Design
//!
//! Linux's tracepoints are its static markers: named sites compiled into the
//! kernel, each with a record whose fields tracefs describes in a `format` file
//! (`events/SUBSYSTEM/EVENT/format`: name, byte offset, size, signedness). The
//! adapter publishes a short list of them ([`DEFAULT`], or the daemon's
//! `--tracepoints`) as its marker table, named `SUBSYSTEM:EVENT`, with one marker
//! argument per scalar field in record order. A handler at a marker reads argument
//! `n` from context slot `n`; the translator turns that load into a load of the
//! field from the record (the context of a `BPF_PROG_TYPE_TRACEPOINT` program).
//!
//! The table is short on purpose: a client reads all of it (one request per
//! marker) before compiling, over a serial line too, and Linux has thousands of
//! tracepoints.
//!
//! Naming: fields keep their `format` names, but the common fields (`common_*`)
//! are left out, arrays of scalars become one argument per element (`name0`,
//! `name1`, …), and fields that are not scalars (inline `char` arrays, `__data_loc`
//! strings) are left out. `raw_syscalls` events follow the convention of the
//! demo kernel's `sys:enter` marker, which scripts and tapsets already use: the
//! call number `id` is published as `number` and `args[6]` as `arg0`…`arg5`.
//!
//! tracefs is found at `/sys/kernel/tracing`, or under debugfs; when neither is
//! mounted the daemon mounts tracefs at `/sys/kernel/tracing` (root may).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use probe_port_protocol::message::{ArgType, MAX_MARKER_ARGS, MAX_NAME};

/// The tracepoints published when the daemon is not told otherwise.
pub const DEFAULT: &[&str] = &[
    "raw_syscalls:sys_enter",
    "raw_syscalls:sys_exit",
    "sched:sched_switch",
];

/// Where tracefs is mounted on current kernels.
const TRACEFS: &str = "/sys/kernel/tracing";
/// Where it appears under debugfs on older setups.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// One field of a tracepoint's record, published as a marker argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The argument's name.
    pub name: String,
    /// Byte offset in the record.
    pub offset: u16,
    /// Size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// The argument's type as the port describes it.
    pub ty: ArgType,
}

/// A tracepoint as a marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracepoint {
    /// `SUBSYSTEM:EVENT`.
    pub name: String,
    /// The tracefs id (`perf_event_attr.config` of a tracepoint event).
    pub id: u64,
    /// The published fields, in context-slot order.
    pub fields: Vec<Field>,
}

/// The tracefs directory, mounting tracefs when it is nowhere to be found.
pub fn tracefs() -> io::Result<PathBuf> {
    for root in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(root).join("events").is_dir() {
            return Ok(PathBuf::from(root));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: NUL-terminated strings that live across the call, no data argument.
    let mounted = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if mounted != 0 {
        return Err(io::Error::other(format!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed: {}",
            io::Error::last_os_error()
        )));
    }
    eprintln!("probeport-linuxd: mounted tracefs at {TRACEFS}");
    Ok(PathBuf::from(TRACEFS))
}

/// The argument type of a field of `size` bytes, signed or not, declared as `ty`.
fn arg_type(ty: &str, size: u8, signed: bool) -> Option<ArgType> {
    if ty.contains('*') {
        return (size == 8).then_some(ArgType::Pointer);
    }
    Some(match (size, signed) {
        (1, false) => ArgType::U8,
        (2, false) => ArgType::U16,
        (4, false) => ArgType::U32,
        (8, false) => ArgType::U64,
        (1, true) => ArgType::I8,
        (2, true) => ArgType::I16,
        (4, true) => ArgType::I32,
        (8, true) => ArgType::I64,
        _ => return None,
    })
}

/// The fields of a tracefs `format` file that become marker arguments, for the
/// tracepoint `name` (`SUBSYSTEM:EVENT`).
pub fn parse_format(name: &str, text: &str) -> Vec<Field> {
    let syscalls = name.starts_with("raw_syscalls:");
    let mut fields = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let mut declaration = "";
        let (mut offset, mut size, mut signed) = (None, None, false);
        for (index, part) in rest.split(';').enumerate() {
            let part = part.trim();
            if index == 0 {
                declaration = part;
            } else if let Some(value) = part.strip_prefix("offset:") {
                offset = value.parse::<u16>().ok();
            } else if let Some(value) = part.strip_prefix("size:") {
                size = value.parse::<u16>().ok();
            } else if let Some(value) = part.strip_prefix("signed:") {
                signed = value == "1";
            }
        }
        let (Some(offset), Some(size)) = (offset, size) else {
            continue;
        };
        if declaration.starts_with("__data_loc") {
            continue;
        }
        // `TYPE NAME` or `TYPE NAME[COUNT]`.
        let Some((ty, declarator)) = declaration.rsplit_once(' ') else {
            continue;
        };
        let (field_name, count) = match declarator.split_once('[') {
            Some((field_name, count)) => {
                let Ok(count) = count.trim_end_matches(']').parse::<u16>() else {
                    continue;
                };
                (field_name, Some(count))
            }
            None => (declarator, None),
        };
        let field_name = field_name.trim_start_matches('*');
        if field_name.starts_with("common_") {
            continue;
        }
        match count {
            None => {
                let Some(ty) = u8::try_from(size)
                    .ok()
                    .and_then(|size| arg_type(ty, size, signed).map(|ty| (size, ty)))
                else {
                    continue;
                };
                let published = if syscalls && field_name == "id" {
                    "number"
                } else {
                    field_name
                };
                fields.push(Field {
                    name: published.to_string(),
                    offset,
                    size: ty.0,
                    ty: ty.1,
                });
            }
            Some(count) if count > 0 && size % count == 0 => {
                let element = size / count;
                // Inline character arrays are strings, not numbers.
                if element == 1 && ty.contains("char") {
                    continue;
                }
                let Some(element_type) = u8::try_from(element)
                    .ok()
                    .and_then(|element| arg_type(ty, element, signed))
                else {
                    continue;
                };
                let stem = if syscalls && field_name == "args" {
                    "arg"
                } else {
                    field_name
                };
                for index in 0..count {
                    fields.push(Field {
                        name: format!("{stem}{index}"),
                        offset: offset + index * element,
                        size: element as u8,
                        ty: element_type,
                    });
                }
            }
            Some(_) => {}
        }
    }
    fields.retain(|field| field.name.len() <= MAX_NAME);
    fields.truncate(MAX_MARKER_ARGS);
    fields
}

/// Reads tracepoint `name` (`SUBSYSTEM:EVENT`) from tracefs at `root`.
pub fn read(root: &Path, name: &str) -> io::Result<Tracepoint> {
    let Some((subsystem, event)) = name.split_once(':') else {
        return Err(io::Error::other(format!(
            "{name}: a tracepoint is SUBSYSTEM:EVENT"
        )));
    };
    let directory = root.join("events").join(subsystem).join(event);
    let id = std::fs::read_to_string(directory.join("id"))
        .map_err(|error| io::Error::new(error.kind(), format!("{name}: {error}")))?
        .trim()
        .parse::<u64>()
        .map_err(|_| io::Error::other(format!("{name}: unreadable id")))?;
    let format = std::fs::read_to_string(directory.join("format"))
        .map_err(|error| io::Error::new(error.kind(), format!("{name}: {error}")))?;
    Ok(Tracepoint {
        name: name.to_string(),
        id,
        fields: parse_format(name, &format),
    })
}

static TABLE: OnceLock<Vec<Tracepoint>> = OnceLock::new();
static CHOSEN: OnceLock<Vec<String>> = OnceLock::new();

/// Chooses the tracepoints the daemon publishes (before the first session; the
/// default is [`DEFAULT`]).
pub fn choose(names: Vec<String>) {
    let _ = CHOSEN.set(names);
}

/// The daemon's marker table: read from tracefs once, on first use. A
/// tracepoint that cannot be read is left out and said on stderr; without
/// tracefs the table is empty.
pub fn table() -> &'static [Tracepoint] {
    TABLE.get_or_init(|| {
        let names: Vec<String> = CHOSEN
            .get()
            .cloned()
            .unwrap_or_else(|| DEFAULT.iter().map(|name| name.to_string()).collect());
        let root = match tracefs() {
            Ok(root) => root,
            Err(error) => {
                eprintln!("probeport-linuxd: no markers: {error}");
                return Vec::new();
            }
        };
        names
            .iter()
            .filter_map(|name| match read(&root, name) {
                Ok(tracepoint) => Some(tracepoint),
                Err(error) => {
                    eprintln!("probeport-linuxd: tracepoint left out: {error}");
                    None
                }
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `events/raw_syscalls/sys_enter/format` of the 6.18 host.
    const SYS_ENTER: &str = "name: sys_enter
ID: 443
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:long id;\toffset:8;\tsize:8;\tsigned:1;
\tfield:unsigned long args[6];\toffset:16;\tsize:48;\tsigned:0;

print fmt: \"NR %ld (%lx, %lx, %lx, %lx, %lx, %lx)\", REC->id, REC->args[0]
";

    /// The start of `events/sched/sched_switch/format` of the same host.
    const SCHED_SWITCH: &str = "format:
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:__data_loc char[] name;\toffset:36;\tsize:4;\tsigned:0;
\tfield:const void * target;\toffset:40;\tsize:8;\tsigned:0;
";

    #[test]
    fn syscall_entry_fields() {
        let fields = parse_format("raw_syscalls:sys_enter", SYS_ENTER);
        let names: Vec<&str> = fields.iter().map(|field| field.name.as_str()).collect();
        assert_eq!(
            names,
            ["number", "arg0", "arg1", "arg2", "arg3", "arg4", "arg5"]
        );
        assert_eq!((fields[0].offset, fields[0].size), (8, 8));
        assert_eq!(fields[0].ty, ArgType::I64);
        assert_eq!((fields[6].offset, fields[6].ty), (56, ArgType::U64));
    }

    #[test]
    fn strings_and_common_fields_are_left_out() {
        let fields = parse_format("sched:sched_switch", SCHED_SWITCH);
        let described: Vec<(&str, u16, u8, ArgType)> = fields
            .iter()
            .map(|field| (field.name.as_str(), field.offset, field.size, field.ty))
            .collect();
        assert_eq!(
            described,
            [
                ("prev_pid", 24, 4, ArgType::I32),
                ("prev_state", 32, 8, ArgType::I64),
                ("target", 40, 8, ArgType::Pointer),
            ]
        );
    }
}
