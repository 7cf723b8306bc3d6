//! The one pass over every DIE that indexes functions and named types.
//!
//! # Design
//!
//! A function is keyed by its *root* DIE: the DIE reached by following
//! `DW_AT_abstract_origin` and `DW_AT_specification` to the end. GCC's out-of-line copy
//! of an inline function, its `.isra`/`.constprop` clones, and every
//! `DW_TAG_inlined_subroutine` all point back to the same root, so they become
//! instances of one [`FunctionRecord`].

use std::collections::HashMap;
use std::ops::Range;

use gimli::Reader as _;

use super::{DieRef, Kernel, Reader, TypeId, demangle};

/// How an instance of a function exists in the code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum InstanceRecordKind {
    /// An out-of-line copy with its own entry point.
    OutOfLine,
    /// Inlined into another function at `call_file:call_line`.
    Inlined {
        call_file: Option<String>,
        call_line: u64,
    },
}

/// One piece of code implementing a function.
#[derive(Clone, Debug)]
pub(crate) struct InstanceRecord {
    pub(crate) die: DieRef,
    pub(crate) kind: InstanceRecordKind,
    pub(crate) ranges: Vec<Range<u64>>,
    pub(crate) entry_pc: u64,
}

/// A source-level function and all its instances.
#[derive(Clone, Debug)]
pub(crate) struct FunctionRecord {
    pub(crate) root: DieRef,
    pub(crate) name: String,
    pub(crate) instances: Vec<InstanceRecord>,
}

/// The indexes built by [`Index::build`].
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) functions: Vec<FunctionRecord>,
    /// Out-of-line instances by start address: (range, function index, instance index).
    pub(crate) code: Vec<(Range<u64>, usize, usize)>,
    /// Named types: `struct x`, `union x`, `enum x`, typedef and base names; Rust types
    /// also by their full path.
    pub(crate) types_by_name: HashMap<String, Vec<TypeId>>,
    /// Full paths of named Rust types (`demo_kernel::ipc::ports::Port`).
    pub(crate) rust_type_paths: HashMap<DieRef, String>,
    /// The function of every root DIE (several after merging duplicates).
    pub(crate) function_by_root: HashMap<DieRef, usize>,
}

impl Index {
    pub(crate) fn build(kernel: &Kernel) -> Result<Index, gimli::Error> {
        let mut index = Index::default();
        let mut by_root: HashMap<DieRef, usize> = HashMap::new();
        let mut rust_function_paths: HashMap<DieRef, String> = HashMap::new();
        for (unit_index, unit_data) in kernel.units.iter().enumerate() {
            let unit = &unit_data.unit;
            let mut entries = unit.entries();
            let mut depth: isize = 0;
            // Enclosing namespaces (Rust modules) with the depth of their DIE.
            let mut namespaces: Vec<(isize, String)> = Vec::new();
            while let Some((delta, entry)) = entries.next_dfs()? {
                depth += delta;
                while namespaces.last().is_some_and(|(d, _)| *d >= depth) {
                    namespaces.pop();
                }
                let die = DieRef {
                    unit: unit_index,
                    offset: entry.offset(),
                };
                let name = || -> Option<String> {
                    let value = entry.attr_value(gimli::DW_AT_name).ok()??;
                    let string = kernel.dwarf.attr_string(unit, value).ok()?;
                    Some(string.to_string_lossy().ok()?.into_owned())
                };
                let path = |name: &str| -> String {
                    let mut path: Vec<&str> = namespaces.iter().map(|(_, n)| n.as_str()).collect();
                    path.push(name);
                    path.join("::")
                };
                let is_declaration = matches!(
                    entry.attr_value(gimli::DW_AT_declaration).ok().flatten(),
                    Some(gimli::AttributeValue::Flag(true))
                );
                match entry.tag() {
                    gimli::DW_TAG_namespace => {
                        namespaces.push((depth, name().unwrap_or_else(|| "{anon}".into())));
                    }
                    gimli::DW_TAG_subprogram | gimli::DW_TAG_inlined_subroutine => {
                        let inlined = entry.tag() == gimli::DW_TAG_inlined_subroutine;
                        if unit_data.is_rust
                            && !inlined
                            && let Some(name) = name()
                        {
                            rust_function_paths.insert(die, path(&name));
                        }
                        let mut ranges = Vec::new();
                        let mut iter = kernel.dwarf.die_ranges(unit, entry)?;
                        while let Some(range) = iter.next()? {
                            if range.begin < range.end && range.begin != 0 {
                                ranges.push(range.begin..range.end);
                            }
                        }
                        if ranges.is_empty() && (inlined || is_declaration) {
                            continue;
                        }
                        let root = root_of(kernel, die);
                        let function = *by_root.entry(root).or_insert_with(|| {
                            index.functions.push(FunctionRecord {
                                root,
                                name: String::new(),
                                instances: Vec::new(),
                            });
                            index.functions.len() - 1
                        });
                        if ranges.is_empty() {
                            // An abstract instance (DW_AT_inline): code comes from elsewhere.
                            continue;
                        }
                        ranges.sort_by_key(|range| range.start);
                        let entry_pc = match entry.attr_value(gimli::DW_AT_entry_pc).ok().flatten()
                        {
                            Some(gimli::AttributeValue::Addr(address)) => address,
                            Some(gimli::AttributeValue::DebugAddrIndex(index)) => {
                                kernel.dwarf.address(unit, index).unwrap_or(ranges[0].start)
                            }
                            // DWARF 5: a constant is an offset from the unit's base.
                            Some(gimli::AttributeValue::Udata(offset)) => {
                                entry_low_pc(kernel, unit, entry).unwrap_or(ranges[0].start)
                                    + offset
                            }
                            _ => entry_low_pc(kernel, unit, entry).unwrap_or(ranges[0].start),
                        };
                        let kind = if inlined {
                            let call_file = match entry.attr_value(gimli::DW_AT_call_file) {
                                Ok(Some(gimli::AttributeValue::FileIndex(file))) => {
                                    kernel.file_name(unit_index, file)
                                }
                                Ok(Some(value)) => value
                                    .udata_value()
                                    .and_then(|file| kernel.file_name(unit_index, file)),
                                _ => None,
                            };
                            let call_line = entry
                                .attr_value(gimli::DW_AT_call_line)
                                .ok()
                                .flatten()
                                .and_then(|value| value.udata_value())
                                .unwrap_or(0);
                            InstanceRecordKind::Inlined {
                                call_file,
                                call_line,
                            }
                        } else {
                            InstanceRecordKind::OutOfLine
                        };
                        let instances = &mut index.functions[function].instances;
                        if kind == InstanceRecordKind::OutOfLine {
                            for range in &ranges {
                                index.code.push((range.clone(), function, instances.len()));
                            }
                        }
                        instances.push(InstanceRecord {
                            die,
                            kind,
                            ranges,
                            entry_pc,
                        });
                    }
                    gimli::DW_TAG_structure_type
                    | gimli::DW_TAG_class_type
                    | gimli::DW_TAG_union_type
                    | gimli::DW_TAG_enumeration_type
                    | gimli::DW_TAG_typedef
                    | gimli::DW_TAG_base_type => {
                        let Some(name) = name() else { continue };
                        if is_declaration {
                            continue;
                        }
                        let id = TypeId(die);
                        if unit_data.is_rust {
                            let full = path(&name);
                            index.rust_type_paths.insert(die, full.clone());
                            index.types_by_name.entry(full).or_default().push(id);
                            index.types_by_name.entry(name).or_default().push(id);
                        } else {
                            let key = match entry.tag() {
                                gimli::DW_TAG_structure_type | gimli::DW_TAG_class_type => {
                                    format!("struct {name}")
                                }
                                gimli::DW_TAG_union_type => format!("union {name}"),
                                gimli::DW_TAG_enumeration_type => format!("enum {name}"),
                                _ => name,
                            };
                            index.types_by_name.entry(key).or_default().push(id);
                        }
                    }
                    _ => {}
                }
            }
        }
        for function in &mut index.functions {
            function.name = function_name(kernel, function, &rust_function_paths);
        }
        index.merge_duplicates(kernel);
        index
            .code
            .sort_by_key(|(range, _, _)| (range.start, range.end));
        Ok(index)
    }

    /// Merges records of one source function that several units describe with their
    /// own abstract DIE (rustc emits one per codegen unit; a C `static inline` in a
    /// header gets one per including file). The key is the name and the declaration
    /// `file:line`, so two C `static` functions of the same name stay apart.
    fn merge_duplicates(&mut self, kernel: &Kernel) {
        let mut first_by_key: HashMap<(String, Option<String>, Option<u64>), usize> =
            HashMap::new();
        let mut kept: Vec<FunctionRecord> = Vec::new();
        for record in std::mem::take(&mut self.functions) {
            let declaration = kernel
                .attribute(record.root, gimli::DW_AT_decl_file)
                .and_then(|(holder, value)| {
                    kernel.file_name(
                        holder.unit,
                        value.udata_value().or(match value {
                            gimli::AttributeValue::FileIndex(index) => Some(index),
                            _ => None,
                        })?,
                    )
                });
            let line = kernel
                .attribute(record.root, gimli::DW_AT_decl_line)
                .and_then(|(_, value)| value.udata_value());
            let key = (record.name.clone(), declaration, line);
            match first_by_key.get(&key) {
                Some(&index) if key.1.is_some() => {
                    let target = &mut kept[index];
                    // Keep the record with an out-of-line copy as the primary one.
                    let mut record = record;
                    let record_has_code = record
                        .instances
                        .iter()
                        .any(|instance| instance.kind == InstanceRecordKind::OutOfLine);
                    let target_has_code = target
                        .instances
                        .iter()
                        .any(|instance| instance.kind == InstanceRecordKind::OutOfLine);
                    if record_has_code && !target_has_code {
                        std::mem::swap(target, &mut record);
                    }
                    target.instances.extend(record.instances);
                }
                _ => {
                    first_by_key.insert(key, kept.len());
                    kept.push(record);
                }
            }
        }
        self.functions = kept;
        self.function_by_root.clear();
        for (index, record) in self.functions.iter().enumerate() {
            self.function_by_root.insert(record.root, index);
            for instance in &record.instances {
                self.function_by_root
                    .entry(root_of(kernel, instance.die))
                    .or_insert(index);
            }
        }
        self.code.clear();
        for (function, record) in self.functions.iter().enumerate() {
            for (instance, item) in record.instances.iter().enumerate() {
                if item.kind == InstanceRecordKind::OutOfLine {
                    for range in &item.ranges {
                        self.code.push((range.clone(), function, instance));
                    }
                }
            }
        }
    }

    /// The out-of-line instance whose code contains `address`.
    pub(crate) fn code_at(&self, address: u64) -> Option<(usize, usize)> {
        let after = self
            .code
            .partition_point(|(range, _, _)| range.start <= address);
        self.code[..after]
            .iter()
            .rev()
            .take(64)
            .find(|(range, _, _)| range.contains(&address))
            .map(|(_, function, instance)| (*function, *instance))
    }

    /// The innermost inlined instance whose code contains `address`, as (function
    /// index, instance index).
    pub(crate) fn innermost_inlined_at(&self, address: u64) -> Option<(usize, usize)> {
        let mut best: Option<(u64, usize, usize)> = None;
        for (function_index, function) in self.functions.iter().enumerate() {
            for (instance_index, instance) in function.instances.iter().enumerate() {
                if let InstanceRecordKind::Inlined { .. } = instance.kind
                    && instance.ranges.iter().any(|range| range.contains(&address))
                {
                    let span: u64 = instance.ranges.iter().map(|r| r.end - r.start).sum();
                    if best.is_none_or(|(best_span, _, _)| span < best_span) {
                        best = Some((span, function_index, instance_index));
                    }
                }
            }
        }
        best.map(|(_, function, instance)| (function, instance))
    }

    /// Names of the functions inlined at `address`, outermost first.
    pub(crate) fn inlined_chain_at(&self, address: u64) -> Vec<String> {
        let mut chain: Vec<(u64, String)> = Vec::new();
        // Inlined instances are few per function; a linear scan of the candidates
        // whose ranges contain the address is enough for stack traces.
        for function in &self.functions {
            for instance in &function.instances {
                if let InstanceRecordKind::Inlined { .. } = instance.kind
                    && instance.ranges.iter().any(|range| range.contains(&address))
                {
                    let span: u64 = instance.ranges.iter().map(|r| r.end - r.start).sum();
                    chain.push((span, function.name.clone()));
                }
            }
        }
        // Enclosing inlined instances cover more code than the ones nested in them.
        chain.sort_by_key(|(span, _)| std::cmp::Reverse(*span));
        chain.into_iter().map(|(_, name)| name).collect()
    }
}

/// `DW_AT_low_pc` of a DIE, if it has one.
fn entry_low_pc(
    kernel: &Kernel,
    unit: &gimli::Unit<Reader>,
    entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>,
) -> Option<u64> {
    let value = entry.attr_value(gimli::DW_AT_low_pc).ok()??;
    kernel.dwarf.attr_address(unit, value).ok()?
}

/// Follows `DW_AT_abstract_origin`/`DW_AT_specification` to the root DIE.
pub(crate) fn root_of(kernel: &Kernel, die: DieRef) -> DieRef {
    let mut current = die;
    for _ in 0..8 {
        let Some(entry) = kernel.entry(current) else {
            break;
        };
        let origin = entry
            .attr_value(gimli::DW_AT_abstract_origin)
            .ok()
            .flatten()
            .or_else(|| entry.attr_value(gimli::DW_AT_specification).ok().flatten());
        match origin.and_then(|origin| kernel.resolve_reference(current.unit, &origin)) {
            Some(next) => current = next,
            None => break,
        }
    }
    current
}

/// The user-facing name: demangled linkage name for Rust, the plain name for C.
fn function_name(
    kernel: &Kernel,
    function: &FunctionRecord,
    rust_function_paths: &HashMap<DieRef, String>,
) -> String {
    let root = function.root;
    if kernel.units[root.unit].is_rust {
        let linkage = kernel
            .string_attribute(root, gimli::DW_AT_linkage_name)
            .or_else(|| kernel.string_attribute(root, gimli::DW_AT_MIPS_linkage_name));
        if let Some(linkage) = linkage {
            let demangled = demangle(&linkage);
            if demangled != linkage {
                return demangled;
            }
        }
        if let Some(path) = rust_function_paths.get(&root) {
            return path.clone();
        }
    }
    kernel
        .string_attribute(root, gimli::DW_AT_name)
        .unwrap_or_else(|| format!("<anonymous {:#x}>", root.offset.0))
}
