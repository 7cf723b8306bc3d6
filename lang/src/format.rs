//! `printf` formats: parsing them at compile time, and printing records with them
//! in the client.
//!
//! The compiler checks every conversion against its argument's type; the client
//! calls [`format_record`] on each record a handler emitted. Formatting never
//! fails: a record too short for its format prints `?` for the missing values.

use std::fmt::Write;

use crate::compiled::{Conversion, Field, FormatPiece, RecordFormat, RecordKind, ValueType};

/// A piece of a format before its arguments are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawPiece {
    /// Literal text.
    Text(String),
    /// A conversion and its text (`%-8s`).
    Conversion(Conversion, String),
}

/// Why a format string is malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    /// What is wrong.
    pub message: String,
}

/// Splits a format into text and conversions.
pub fn parse_format(format: &str) -> Result<Vec<RawPiece>, FormatError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = format.chars().peekable();
    while let Some(character) = chars.next() {
        if character != '%' {
            text.push(character);
            continue;
        }
        if chars.peek() == Some(&'%') {
            chars.next();
            text.push('%');
            continue;
        }
        let mut spec = Conversion::default();
        let mut written = String::from("%");
        while let Some(&flag) = chars.peek() {
            match flag {
                '-' => spec.left = true,
                '0' => spec.zero = true,
                '+' => spec.plus = true,
                ' ' => spec.space = true,
                '#' => spec.alternate = true,
                _ => break,
            }
            written.push(flag);
            chars.next();
        }
        let number = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
                      written: &mut String|
         -> Option<usize> {
            let mut digits = String::new();
            while let Some(&digit) = chars.peek() {
                if !digit.is_ascii_digit() {
                    break;
                }
                digits.push(digit);
                written.push(digit);
                chars.next();
            }
            digits.parse().ok()
        };
        spec.width = number(&mut chars, &mut written);
        if chars.peek() == Some(&'.') {
            chars.next();
            written.push('.');
            spec.precision = Some(number(&mut chars, &mut written).unwrap_or(0));
        }
        if spec.width.is_some_and(|width| width > 256)
            || spec.precision.is_some_and(|precision| precision > 256)
        {
            return Err(FormatError {
                message: format!("`{written}`: widths and precisions are at most 256"),
            });
        }
        // Length modifiers are accepted for C habits and ignored: every value is 64-bit.
        while let Some(&modifier) = chars.peek() {
            if !matches!(modifier, 'l' | 'h' | 'z' | 'j' | 't') {
                break;
            }
            written.push(modifier);
            chars.next();
        }
        match chars.next() {
            Some(kind @ ('d' | 'i' | 'u' | 'x' | 'X' | 'o' | 'c' | 's' | 'p')) => {
                written.push(kind);
                spec.kind = kind;
                if !text.is_empty() {
                    pieces.push(RawPiece::Text(std::mem::take(&mut text)));
                }
                pieces.push(RawPiece::Conversion(spec, written));
            }
            Some(other) => {
                written.push(other);
                return Err(FormatError {
                    message: format!(
                        "`{written}` is not a conversion (use d i u x X o c s p, or %% for `%`)"
                    ),
                });
            }
            None => {
                return Err(FormatError {
                    message: format!("the format ends inside the conversion `{written}`"),
                });
            }
        }
    }
    if !text.is_empty() {
        pieces.push(RawPiece::Text(text));
    }
    Ok(pieces)
}

/// A constant value for formatting at compile time (`begin` and `end` blocks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConstValue {
    /// A signed integer.
    Signed(i64),
    /// An unsigned integer.
    Unsigned(u64),
    /// A truth value.
    Bool(bool),
    /// A string.
    Str(String),
}

/// What a value is once read from a record.
enum Value {
    Int { bits: u64, signed: bool },
    Bool(bool),
    Pointer(u64),
    Symbol(u64),
    Syscall(u64),
    Str(Vec<u8>),
    Stack(Vec<u64>),
    Missing,
}

fn word(data: &[u8], offset: usize) -> Option<u64> {
    let bytes = data.get(offset..offset + 8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn read_value(data: &[u8], field: &Field) -> Value {
    let offset = field.offset as usize;
    let scalar = |make: fn(u64) -> Value| word(data, offset).map_or(Value::Missing, make);
    match field.ty {
        ValueType::Signed => scalar(|bits| Value::Int { bits, signed: true }),
        ValueType::Unsigned => scalar(|bits| Value::Int {
            bits,
            signed: false,
        }),
        ValueType::Bool => scalar(|bits| Value::Bool(bits != 0)),
        ValueType::Pointer => scalar(Value::Pointer),
        ValueType::Symbol => scalar(Value::Symbol),
        ValueType::Syscall => scalar(Value::Syscall),
        ValueType::Str { size } => match data.get(offset..offset + size as usize) {
            Some(bytes) => {
                let end = bytes
                    .iter()
                    .position(|byte| *byte == 0)
                    .unwrap_or(bytes.len());
                Value::Str(bytes[..end].to_vec())
            }
            None => Value::Missing,
        },
        ValueType::Stack { depth } => {
            let mut frames = Vec::new();
            for index in 0..depth as usize {
                match word(data, offset + index * 8) {
                    Some(0) | None => break,
                    Some(address) => frames.push(address),
                }
            }
            Value::Stack(frames)
        }
    }
}

/// Turns a code address into `name+0xoff`, if the client knows it.
pub type Symbolizer<'s> = &'s dyn Fn(u64) -> Option<String>;

fn symbol(address: u64, symbolizer: Symbolizer<'_>) -> String {
    symbolizer(address).unwrap_or_else(|| format!("{address:#x}"))
}

/// The text of one value for `%s` (and for `$$parms` and map keys).
fn plain(value: &Value, symbolizer: Symbolizer<'_>) -> String {
    match value {
        Value::Int { bits, signed: true } => (*bits as i64).to_string(),
        Value::Int { bits, .. } => bits.to_string(),
        Value::Bool(value) => value.to_string(),
        Value::Pointer(address) => format!("{address:#x}"),
        Value::Symbol(address) => symbol(*address, symbolizer),
        Value::Syscall(number) => crate::syscalls::x86_64_name(*number)
            .map_or_else(|| format!("syscall_{number}"), str::to_string),
        Value::Str(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::Stack(frames) => {
            let mut text = String::new();
            for frame in frames {
                let _ = write!(text, "\n        {}", symbol(*frame, symbolizer));
            }
            text.push('\n');
            text
        }
        Value::Missing => "?".to_string(),
    }
}

fn pad(spec: &Conversion, body: String, numeric: bool) -> String {
    let width = spec.width.unwrap_or(0);
    let length = body.chars().count();
    if length >= width {
        return body;
    }
    let fill = width - length;
    if spec.left {
        format!("{body}{}", " ".repeat(fill))
    } else if spec.zero && numeric {
        // Zeros go after the sign or `0x` prefix.
        let split = if body.starts_with("0x") || body.starts_with("0X") {
            2
        } else if body.starts_with(['-', '+', ' ']) {
            1
        } else {
            0
        };
        format!("{}{}{}", &body[..split], "0".repeat(fill), &body[split..])
    } else {
        format!("{}{body}", " ".repeat(fill))
    }
}

fn convert(spec: &Conversion, value: &Value, symbolizer: Symbolizer<'_>) -> String {
    let bits = match value {
        Value::Int { bits, .. }
        | Value::Pointer(bits)
        | Value::Symbol(bits)
        | Value::Syscall(bits) => Some(*bits),
        Value::Bool(value) => Some(u64::from(*value)),
        _ => None,
    };
    let signed = matches!(value, Value::Int { signed: true, .. });
    let sign = |negative: bool| {
        if negative {
            "-"
        } else if spec.plus {
            "+"
        } else if spec.space {
            " "
        } else {
            ""
        }
    };
    let body = match (spec.kind, bits) {
        ('d' | 'i', Some(bits)) if signed => {
            let value = bits as i64;
            format!("{}{}", sign(value < 0), value.unsigned_abs())
        }
        ('d' | 'i' | 'u', Some(bits)) => format!("{}{bits}", sign(false)),
        ('x', Some(bits)) => format!("{}{bits:x}", if spec.alternate { "0x" } else { "" }),
        ('X', Some(bits)) => format!("{}{bits:X}", if spec.alternate { "0X" } else { "" }),
        ('o', Some(bits)) => format!("{}{bits:o}", if spec.alternate { "0" } else { "" }),
        ('p', Some(bits)) => format!("{bits:#x}"),
        ('c', Some(bits)) => char::from(bits as u8).to_string(),
        ('s', _) => {
            let text = plain(value, symbolizer);
            match spec.precision {
                Some(precision) => text.chars().take(precision).collect(),
                None => text,
            }
        }
        _ => plain(value, symbolizer),
    };
    pad(spec, body, spec.kind != 's' && spec.kind != 'c')
}

/// Prints a `printf` record (other record kinds give an empty string).
pub fn format_record(record: &RecordFormat, data: &[u8], symbolizer: Symbolizer<'_>) -> String {
    let RecordKind::Printf(pieces) = &record.kind else {
        return String::new();
    };
    let mut text = String::new();
    for piece in pieces {
        match piece {
            FormatPiece::Text(literal) => text.push_str(literal),
            FormatPiece::Value { spec, fields } => {
                if fields.len() == 1 && record.fields[fields[0]].name.is_none() {
                    let value = read_value(data, &record.fields[fields[0]]);
                    text.push_str(&convert(spec, &value, symbolizer));
                } else {
                    // `$$parms`: `name=value` pairs; pointers and symbols in hex.
                    let parts: Vec<String> = fields
                        .iter()
                        .map(|index| {
                            let field = &record.fields[*index];
                            let value = read_value(data, field);
                            let shown = match value {
                                Value::Symbol(address) => format!("{address:#x}"),
                                _ => plain(&value, symbolizer),
                            };
                            format!("{}={shown}", field.name.as_deref().unwrap_or("?"))
                        })
                        .collect();
                    text.push_str(&convert(
                        spec,
                        &Value::Str(parts.join(" ").into_bytes()),
                        symbolizer,
                    ));
                }
            }
        }
    }
    text
}

/// Formats constant arguments at compile time (`printf` in `begin` and `end`).
pub fn format_constants(pieces: &[RawPiece], args: &[ConstValue]) -> String {
    let mut text = String::new();
    let mut args = args.iter();
    for piece in pieces {
        match piece {
            RawPiece::Text(literal) => text.push_str(literal),
            RawPiece::Conversion(spec, _) => {
                let value = match args.next() {
                    Some(ConstValue::Signed(value)) => Value::Int {
                        bits: *value as u64,
                        signed: true,
                    },
                    Some(ConstValue::Unsigned(value)) => Value::Int {
                        bits: *value,
                        signed: false,
                    },
                    Some(ConstValue::Bool(value)) => Value::Bool(*value),
                    Some(ConstValue::Str(value)) => Value::Str(value.as_bytes().to_vec()),
                    None => Value::Missing,
                };
                text.push_str(&convert(spec, &value, &|_| None));
            }
        }
    }
    text
}

/// Prints one value of a map key or a plain map value (for the client's map output).
pub fn format_value(ty: ValueType, bytes: &[u8], symbolizer: Symbolizer<'_>) -> String {
    let field = Field {
        offset: 0,
        ty,
        name: None,
    };
    plain(&read_value(bytes, &field), symbolizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversions(format: &str) -> Vec<String> {
        parse_format(format)
            .unwrap()
            .into_iter()
            .filter_map(|piece| match piece {
                RawPiece::Conversion(_, text) => Some(text),
                RawPiece::Text(_) => None,
            })
            .collect()
    }

    #[test]
    fn formats_parse() {
        assert_eq!(
            conversions("%d %-8s %08lx %% %.3s"),
            ["%d", "%-8s", "%08lx", "%.3s"]
        );
        assert!(parse_format("%q").is_err());
        assert!(parse_format("abc %").is_err());
        assert!(parse_format("%999d").is_err());
    }

    #[test]
    fn constants_format_like_c() {
        let pieces = parse_format("[%5d|%-5d|%05d|%x|%#x|%+d|%s|%.2s|%c|%u]").unwrap();
        let text = format_constants(
            &pieces,
            &[
                ConstValue::Signed(-42),
                ConstValue::Signed(7),
                ConstValue::Signed(-3),
                ConstValue::Unsigned(255),
                ConstValue::Unsigned(255),
                ConstValue::Signed(5),
                ConstValue::Str("hello".into()),
                ConstValue::Str("hello".into()),
                ConstValue::Unsigned(65),
                ConstValue::Bool(true),
            ],
        );
        assert_eq!(text, "[  -42|7    |-0003|ff|0xff|+5|hello|he|A|1]");
    }
}

// ----- maps -----

/// One map entry as the client holds it after reading a map: the key bytes, and
/// either the plain value's bytes or an aggregation merged over every CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// The key (one zero byte for a map without keys).
    pub key: Vec<u8>,
    /// The value.
    pub value: MapEntryValue,
}

/// The value of a [`MapEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapEntryValue {
    /// A plain map's value bytes.
    Plain(Vec<u8>),
    /// An aggregation's 64-bit words, merged over CPUs (see [`merge_aggregate`]).
    Aggregate(Vec<i64>),
}

fn words(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|chunk| i64::from_le_bytes(chunk.try_into().expect("chunks of 8")))
        .collect()
}

/// Merges one aggregation value per CPU (each the kind's value bytes) into one.
pub fn merge_aggregate(
    kind: probe_port_protocol::maps::AggregateKind,
    per_cpu: &[&[u8]],
) -> Vec<i64> {
    use probe_port_protocol::maps::AggregateKind;
    let mut merged: Option<Vec<i64>> = None;
    for value in per_cpu {
        let value = words(value);
        merged = Some(match merged {
            None => value,
            Some(mut total) => {
                for (index, (total, new)) in total.iter_mut().zip(&value).enumerate() {
                    *total = match (kind, index) {
                        (AggregateKind::Min, _) | (AggregateKind::Stats, 2) => (*total).min(*new),
                        (AggregateKind::Max, _) | (AggregateKind::Stats, 3) => (*total).max(*new),
                        _ => total.wrapping_add(*new),
                    };
                }
                total
            }
        });
    }
    merged.unwrap_or_default()
}

/// Splits the `entries` bytes of `MapPage` replies (PROTOCOL.md §8.6) into entries,
/// merging aggregations over the `cpu_count` CPUs.
pub fn split_map_page(
    map: &crate::compiled::MapInfo,
    entries: &[u8],
    cpu_count: usize,
) -> Vec<MapEntry> {
    use crate::compiled::MapValue;
    let key_size = usize::from(map.spec.key_size);
    let value_size = usize::from(map.spec.value_size);
    let (stride, aggregate) = match map.value {
        MapValue::Value(_) => (key_size + value_size, None),
        MapValue::Aggregate(kind) => (key_size + value_size * cpu_count.max(1), Some(kind)),
    };
    entries
        .chunks_exact(stride.max(1))
        .map(|entry| {
            let (key, rest) = entry.split_at(key_size);
            let value = match aggregate {
                None => MapEntryValue::Plain(rest.to_vec()),
                Some(kind) => {
                    let per_cpu: Vec<&[u8]> = rest.chunks_exact(value_size.max(1)).collect();
                    MapEntryValue::Aggregate(merge_aggregate(kind, &per_cpu))
                }
            };
            MapEntry {
                key: key.to_vec(),
                value,
            }
        })
        .collect()
}

/// The text of a key: `[k1, k2]`, or nothing for a map without keys.
fn key_text(map: &crate::compiled::MapInfo, key: &[u8], symbolizer: Symbolizer<'_>) -> String {
    if map.key.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = map
        .key
        .iter()
        .map(|field| {
            let start = usize::from(field.offset).min(key.len());
            let text = format_value(field.ty, &key[start..], symbolizer);
            match field.ty {
                ValueType::Stack { .. } => text.replace("\n        ", "\n    "),
                _ => text,
            }
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// `1K`, `2M` … for powers of 1024, as histograms label buckets.
fn short_number(value: u64) -> String {
    const SUFFIXES: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    let mut value_abs = value;
    let mut suffix = "";
    for next in SUFFIXES {
        if value_abs >= 1024 && value_abs.is_multiple_of(1024) {
            value_abs /= 1024;
            suffix = next;
        } else {
            break;
        }
    }
    format!("{value_abs}{suffix}")
}

/// Histogram lines, from the first to the last non-empty bucket.
fn histogram(labels: &[String], counts: &[i64]) -> String {
    let Some(first) = counts.iter().position(|count| *count != 0) else {
        return String::new();
    };
    let last = counts
        .iter()
        .rposition(|count| *count != 0)
        .unwrap_or(first);
    let largest = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut text = String::new();
    for index in first..=last {
        let count = counts[index];
        let bar = (count.max(0) as u128 * 52 / largest as u128) as usize;
        let _ = writeln!(
            text,
            "{:<16}{:>8} |{:<52}|",
            labels[index],
            count,
            "@".repeat(bar)
        );
    }
    text
}

/// Prints a map the way bpftrace does: one line per entry sorted by value for
/// counts, sums, minimums, maxima and averages (by key for plain maps), and an ASCII
/// histogram per entry for `hist` and `lhist`. Ends with a blank line (each
/// histogram is followed by one).
pub fn format_map(
    map: &crate::compiled::MapInfo,
    entries: &[MapEntry],
    symbolizer: Symbolizer<'_>,
) -> String {
    use crate::compiled::MapValue;
    use probe_port_protocol::maps::AggregateKind;
    let mut text = String::new();
    let mut rows: Vec<(&MapEntry, i64)> = entries
        .iter()
        .map(|entry| {
            let sort = match (&entry.value, &map.value) {
                (MapEntryValue::Aggregate(words), MapValue::Aggregate(AggregateKind::Avg)) => {
                    words.get(1).copied().unwrap_or(0) / words.first().copied().unwrap_or(1).max(1)
                }
                (MapEntryValue::Aggregate(words), _) => words.first().copied().unwrap_or(0),
                (MapEntryValue::Plain(_), _) => 0,
            };
            (entry, sort)
        })
        .collect();
    match map.value {
        MapValue::Value(_) => rows.sort_by(|a, b| a.0.key.cmp(&b.0.key)),
        _ => rows.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.key.cmp(&b.0.key))),
    }
    for (entry, sorted_value) in rows {
        let name = format!("{}{}", map.name, key_text(map, &entry.key, symbolizer));
        match (&map.value, &entry.value) {
            (MapValue::Value(ty), MapEntryValue::Plain(bytes)) => {
                let _ = writeln!(text, "{name}: {}", format_value(*ty, bytes, symbolizer));
            }
            (MapValue::Aggregate(kind), MapEntryValue::Aggregate(words)) => match kind {
                AggregateKind::Stats => {
                    let count = words.first().copied().unwrap_or(0);
                    let total = words.get(1).copied().unwrap_or(0);
                    let average = if count == 0 { 0 } else { total / count };
                    let _ = writeln!(
                        text,
                        "{name}: count {count}, average {average}, total {total}"
                    );
                }
                AggregateKind::Log2Hist => {
                    let labels: Vec<String> = (0..words.len())
                        .map(|bucket| match bucket {
                            0 => "(..., 0)".to_string(),
                            1 => "[0]".to_string(),
                            2 => "[1]".to_string(),
                            _ => {
                                let low = 1u64 << (bucket - 2);
                                let high = low.checked_mul(2);
                                format!(
                                    "[{}, {})",
                                    short_number(low),
                                    high.map_or("...".to_string(), short_number)
                                )
                            }
                        })
                        .collect();
                    let _ = writeln!(text, "{name}:");
                    text.push_str(&histogram(&labels, words));
                    text.push('\n');
                }
                AggregateKind::LinearHist { min, max, step } => {
                    let buckets = words.len().saturating_sub(2);
                    let labels: Vec<String> = (0..words.len())
                        .map(|bucket| {
                            if bucket == 0 {
                                format!("(..., {min})")
                            } else if bucket > buckets {
                                format!("[{max}, ...)")
                            } else {
                                let low =
                                    i128::from(*min) + (bucket as i128 - 1) * i128::from(*step);
                                let high = (low + i128::from(*step)).min(i128::from(*max));
                                format!("[{low}, {high})")
                            }
                        })
                        .collect();
                    let _ = writeln!(text, "{name}:");
                    text.push_str(&histogram(&labels, words));
                    text.push('\n');
                }
                _ => {
                    let _ = writeln!(text, "{name}: {sorted_value}");
                }
            },
            _ => {
                let _ = writeln!(text, "{name}: ?");
            }
        }
    }
    // Each histogram already ends with a blank line.
    if !matches!(
        map.value,
        MapValue::Aggregate(AggregateKind::Log2Hist | AggregateKind::LinearHist { .. })
    ) || entries.is_empty()
    {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod map_tests {
    use super::*;
    use crate::compiled::{MapInfo, MapValue};
    use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};

    fn map(name: &str, key: Vec<ValueType>, value: MapValue) -> MapInfo {
        let mut offset = 0;
        let fields = key
            .iter()
            .map(|ty| {
                let field = Field {
                    offset,
                    ty: *ty,
                    name: None,
                };
                offset += ty.padded_size();
                field
            })
            .collect::<Vec<_>>();
        let (kind, value_size) = match value {
            MapValue::Value(ty) => (MapKind::Hash, ty.padded_size()),
            MapValue::Aggregate(kind) => (MapKind::Aggregate(kind), kind.value_size().unwrap()),
        };
        MapInfo {
            spec: MapSpec {
                map: MapId(0),
                kind,
                key_size: if fields.is_empty() { 1 } else { offset },
                value_size,
                max_entries: 16,
            },
            name: name.to_string(),
            key: fields,
            value,
        }
    }

    fn le(values: &[i64]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect()
    }

    #[test]
    fn counts_sort_by_value_and_merge_over_cpus() {
        let info = map(
            "@sends",
            vec![ValueType::Unsigned],
            MapValue::Aggregate(AggregateKind::Count),
        );
        // Two entries, two CPUs each.
        let mut page = Vec::new();
        page.extend(le(&[3, 5, 1]));
        page.extend(le(&[4, 1, 0]));
        let entries = split_map_page(&info, &page, 2);
        assert_eq!(entries[0].value, MapEntryValue::Aggregate(vec![6]));
        assert_eq!(
            format_map(&info, &entries, &|_| None),
            "@sends[4]: 1\n@sends[3]: 6\n\n"
        );
    }

    #[test]
    fn stats_min_max_merge_by_their_rules() {
        let per_cpu = [le(&[2, 10, 3, 7]), le(&[1, -4, -4, -4])];
        let slices: Vec<&[u8]> = per_cpu.iter().map(Vec::as_slice).collect();
        assert_eq!(
            merge_aggregate(AggregateKind::Stats, &slices),
            [3, 6, -4, 7]
        );
        let info = map("@s", vec![], MapValue::Aggregate(AggregateKind::Stats));
        let entries = [MapEntry {
            key: vec![0],
            value: MapEntryValue::Aggregate(vec![3, 6, -4, 7]),
        }];
        assert_eq!(
            format_map(&info, &entries, &|_| None),
            "@s: count 3, average 2, total 6\n\n"
        );
        let mins = [le(&[5]), le(&[-2])];
        let slices: Vec<&[u8]> = mins.iter().map(Vec::as_slice).collect();
        assert_eq!(merge_aggregate(AggregateKind::Min, &slices), [-2]);
    }

    #[test]
    fn histograms_draw_bars() {
        let info = map("@lat", vec![], MapValue::Aggregate(AggregateKind::Log2Hist));
        let mut counts = vec![0i64; 65];
        counts[2] = 1; // [1]
        counts[4] = 2; // [4, 8)
        counts[12] = 1; // [1K, 2K)
        let entries = [MapEntry {
            key: vec![0],
            value: MapEntryValue::Aggregate(counts),
        }];
        let text = format_map(&info, &entries, &|_| None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "@lat:");
        assert_eq!(
            lines[1],
            format!("[1]{}1 |{:<52}|", " ".repeat(20), "@".repeat(26))
        );
        assert_eq!(
            lines[3],
            format!("[4, 8){}2 |{}|", " ".repeat(17), "@".repeat(52))
        );
        assert!(lines[11].starts_with("[1K, 2K)"));
        assert_eq!(lines.len(), 13);
        assert_eq!(lines[12], "");

        let info = map(
            "@l",
            vec![],
            MapValue::Aggregate(AggregateKind::LinearHist {
                min: 0,
                max: 100,
                step: 30,
            }),
        );
        let entries = [MapEntry {
            key: vec![0],
            value: MapEntryValue::Aggregate(vec![1, 0, 0, 0, 2, 3]),
        }];
        let text = format_map(&info, &entries, &|_| None);
        let labels: Vec<&str> = text
            .lines()
            .skip(1)
            .filter_map(|line| line.split("  ").next())
            .filter(|label| !label.is_empty())
            .collect();
        assert_eq!(
            labels,
            [
                "(..., 0)",
                "[0, 30)",
                "[30, 60)",
                "[60, 90)",
                "[90, 100)",
                "[100, ...)"
            ]
        );
    }

    #[test]
    fn plain_maps_sort_by_key_and_show_strings() {
        let info = map(
            "@names",
            vec![ValueType::Unsigned],
            MapValue::Value(ValueType::Str { size: 16 }),
        );
        let mut name = b"worker".to_vec();
        name.resize(16, 0);
        let entries = [
            MapEntry {
                key: le(&[9]),
                value: MapEntryValue::Plain(name.clone()),
            },
            MapEntry {
                key: le(&[2]),
                value: MapEntryValue::Plain(name),
            },
        ];
        assert_eq!(
            format_map(&info, &entries, &|_| None),
            "@names[2]: worker\n@names[9]: worker\n\n"
        );
    }
}
