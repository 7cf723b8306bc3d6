//! Functions, their parameters, and the variables in scope at an address.

use std::ops::Range;

use gimli::Reader as _;

use super::index::{InstanceRecord, InstanceRecordKind};
use super::location::{FrameBase, reduce_expression};
use super::{DieRef, Kernel, Location, TypeId};

/// A source-level function with every piece of code that implements it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// The name: plain for C, the demangled path for Rust
    /// (`demo_kernel::ipc::ports::port_send`).
    pub name: String,
    /// Declaration file, as the compiler recorded it.
    pub decl_file: Option<String>,
    /// Declaration line.
    pub decl_line: Option<u64>,
    /// The return type; `None` is `void`.
    pub return_type: Option<TypeId>,
    /// The return type's C-like name.
    pub return_type_name: String,
    /// Parameters in declaration order, with their locations at [`Function::entry`].
    ///
    /// This is the source order of the abstract DIE. GCC's IPA passes may reorder or
    /// drop parameters of an out-of-line copy; gdb's `info functions` shows that copy's
    /// order, this shows the declaration's (each location is still the copy's).
    pub parameters: Vec<Parameter>,
    /// Whether the function takes `...` after its parameters.
    pub variadic: bool,
    /// Out-of-line copies first (by address), then inlined instances (by address).
    pub instances: Vec<Instance>,
}

impl Function {
    /// The entry address of the first out-of-line copy, if there is one.
    pub fn entry(&self) -> Option<u64> {
        self.out_of_line().next().map(|instance| instance.entry_pc)
    }

    /// The code size of the first out-of-line copy (0 if there is none).
    pub fn size(&self) -> u64 {
        self.out_of_line().next().map_or(0, Instance::size)
    }

    /// Out-of-line copies (the function itself and compiler clones).
    pub fn out_of_line(&self) -> impl Iterator<Item = &Instance> {
        self.instances
            .iter()
            .filter(|instance| instance.kind == InstanceKind::OutOfLine)
    }

    /// Inlined instances.
    pub fn inlined(&self) -> impl Iterator<Item = &Instance> {
        self.instances
            .iter()
            .filter(|instance| matches!(instance.kind, InstanceKind::Inlined { .. }))
    }
}

/// One piece of code implementing a function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Out of line or inlined.
    pub kind: InstanceKind,
    /// The address where this instance starts executing (`DW_AT_entry_pc`, or the
    /// lowest address).
    pub entry_pc: u64,
    /// The code ranges, sorted.
    pub ranges: Vec<Range<u64>>,
    /// The ELF symbol at `entry_pc` for out-of-line copies (`foo.isra.0` for a clone).
    pub symbol: Option<String>,
}

impl Instance {
    /// Total code size in bytes.
    pub fn size(&self) -> u64 {
        self.ranges
            .iter()
            .map(|range| range.end - range.start)
            .sum()
    }
}

/// How an [`Instance`] exists in the code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceKind {
    /// A copy with its own entry point, called normally.
    OutOfLine,
    /// Inlined into another function from this call site.
    Inlined {
        /// The caller's file.
        call_file: Option<String>,
        /// The caller's line.
        call_line: u64,
    },
}

/// A formal parameter of a [`Function`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parameter {
    /// The name (`None` for unnamed parameters).
    pub name: Option<String>,
    /// The type.
    pub type_id: Option<TypeId>,
    /// The type's C-like name.
    pub type_name: String,
    /// The location at the function's entry address.
    pub location_at_entry: Location,
}

/// Whether a [`Variable`] is a parameter or a local.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VariableKind {
    /// A formal parameter.
    Parameter,
    /// A local variable.
    Local,
}

/// A variable in scope at an address, with its location there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    /// The name.
    pub name: String,
    /// Parameter or local.
    pub kind: VariableKind,
    /// The type.
    pub type_id: Option<TypeId>,
    /// The type's C-like name.
    pub type_name: String,
    /// The function that declares it (an inlined function for variables of an
    /// inlined instance).
    pub function: String,
    /// Whether `function` is inlined at this address.
    pub inlined: bool,
    /// The location evaluated at the address.
    pub location: Location,
}

impl Kernel {
    /// Functions whose name matches a shell-style pattern (`*`, `?`, `[abc]`), sorted
    /// by name. Functions with neither an out-of-line copy nor an inlined instance
    /// (declarations) are not listed.
    pub fn functions(&self, pattern: &str) -> Vec<Function> {
        let mut found: Vec<Function> = self
            .index
            .functions
            .iter()
            .filter(|record| !record.instances.is_empty())
            .filter(|record| super::matches_pattern(pattern, &record.name))
            .map(|record| self.function_from_record(record))
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name).then(a.entry().cmp(&b.entry())));
        found
    }

    /// The function with exactly this name (the first, if two `static` functions of
    /// different files share it: [`Kernel::functions`] lists all).
    pub fn function(&self, name: &str) -> Option<Function> {
        self.index
            .functions
            .iter()
            .filter(|record| !record.instances.is_empty() && record.name == name)
            .map(|record| self.function_from_record(record))
            .next()
    }

    fn function_from_record(&self, record: &super::index::FunctionRecord) -> Function {
        let root = record.root;
        let mut instances: Vec<(&InstanceRecord, Instance)> = record
            .instances
            .iter()
            .map(|instance| {
                let kind = match &instance.kind {
                    InstanceRecordKind::OutOfLine => InstanceKind::OutOfLine,
                    InstanceRecordKind::Inlined {
                        call_file,
                        call_line,
                    } => InstanceKind::Inlined {
                        call_file: call_file.clone(),
                        call_line: *call_line,
                    },
                };
                let symbol = (kind == InstanceKind::OutOfLine)
                    .then(|| {
                        let at = self
                            .symbols
                            .partition_point(|symbol| symbol.address < instance.entry_pc);
                        self.symbols
                            .get(at)
                            .filter(|symbol| symbol.address == instance.entry_pc)
                            .map(|symbol| symbol.name.clone())
                    })
                    .flatten();
                (
                    instance,
                    Instance {
                        kind,
                        entry_pc: instance.entry_pc,
                        ranges: instance.ranges.clone(),
                        symbol,
                    },
                )
            })
            .collect();
        // The copy named like the function first, then clones, then inlined instances.
        instances.sort_by_key(|(_, instance)| {
            (
                instance.kind != InstanceKind::OutOfLine,
                instance.symbol.as_deref() != Some(record.name.as_str()),
                instance.entry_pc,
            )
        });
        let decl_file = self
            .attribute(root, gimli::DW_AT_decl_file)
            .and_then(|(holder, value)| match value {
                gimli::AttributeValue::FileIndex(file) => self.file_name(holder.unit, file),
                value => self.file_name(holder.unit, value.udata_value()?),
            });
        let decl_line = self
            .attribute(root, gimli::DW_AT_decl_line)
            .and_then(|(_, value)| value.udata_value());
        let return_type = self.type_attribute(root);

        // Parameters come from the root DIE (the full prototype); their locations from
        // the primary instance's DIEs that point back to them.
        let primary = instances.first().map(|(record, _)| *record);
        let concrete_parameters: Vec<(DieRef, DieRef)> = primary
            .map(|instance| {
                self.children(instance.die)
                    .into_iter()
                    .filter(|child| {
                        self.entry(*child)
                            .is_some_and(|entry| entry.tag() == gimli::DW_TAG_formal_parameter)
                    })
                    .map(|child| (super::index::root_of(self, child), child))
                    .collect()
            })
            .unwrap_or_default();
        let parameters = self
            .children(root)
            .into_iter()
            .filter(|child| {
                self.entry(*child)
                    .is_some_and(|entry| entry.tag() == gimli::DW_TAG_formal_parameter)
            })
            .map(|parameter| {
                let type_id = self.type_attribute(parameter);
                let location_at_entry = match primary {
                    None => Location::Unavailable("no code".into()),
                    Some(instance) => {
                        // By origin; by name when the instance comes from another
                        // unit's copy of the function (merged records).
                        let name = self.string_attribute(parameter, gimli::DW_AT_name);
                        let concrete = concrete_parameters
                            .iter()
                            .find(|(origin, _)| *origin == parameter)
                            .or_else(|| {
                                concrete_parameters.iter().find(|(origin, _)| {
                                    origin.unit != parameter.unit
                                        && name.is_some()
                                        && self.string_attribute(*origin, gimli::DW_AT_name) == name
                                })
                            })
                            .map(|(_, concrete)| *concrete);
                        match concrete {
                            Some(concrete) => {
                                // The frame base belongs to the out-of-line function the
                                // instance's code is part of.
                                let subprogram = match instance.kind {
                                    InstanceRecordKind::OutOfLine => Some(instance.die),
                                    InstanceRecordKind::Inlined { .. } => self
                                        .index
                                        .code_at(instance.entry_pc)
                                        .map(|(function, index)| {
                                            self.index.functions[function].instances[index].die
                                        }),
                                };
                                match subprogram {
                                    Some(subprogram) => {
                                        self.location_at(concrete, subprogram, instance.entry_pc)
                                    }
                                    None => Location::Unavailable(
                                        "inlined into code without a containing function".into(),
                                    ),
                                }
                            }
                            None => Location::Unavailable(
                                "optimised out (not passed to this copy)".into(),
                            ),
                        }
                    }
                };
                Parameter {
                    name: self.string_attribute(parameter, gimli::DW_AT_name),
                    type_name: type_id.map_or_else(|| "void".into(), |id| self.type_name(id)),
                    type_id,
                    location_at_entry,
                }
            })
            .collect();
        let variadic = self.children(root).into_iter().any(|child| {
            self.entry(child)
                .is_some_and(|entry| entry.tag() == gimli::DW_TAG_unspecified_parameters)
        });
        Function {
            name: record.name.clone(),
            variadic,
            decl_file,
            decl_line,
            return_type,
            return_type_name: return_type.map_or_else(|| "void".into(), |id| self.type_name(id)),
            parameters,
            instances: instances
                .into_iter()
                .map(|(_, instance)| instance)
                .collect(),
        }
    }

    /// Parameters and locals in scope at `address`, with their locations evaluated
    /// there: the containing function's, then those of each function inlined at the
    /// address (innermost last). Locals of lexical blocks that do not contain the
    /// address are left out.
    pub fn variables_at(&self, address: u64) -> Vec<Variable> {
        let Some((function, instance)) = self.index.code_at(address) else {
            return Vec::new();
        };
        let record = &self.index.functions[function];
        let subprogram = record.instances[instance].die;
        let mut variables = Vec::new();
        self.collect_scope(
            subprogram,
            subprogram,
            &record.name,
            false,
            address,
            &mut variables,
        );
        variables
    }

    fn collect_scope(
        &self,
        scope: DieRef,
        subprogram: DieRef,
        function: &str,
        inlined: bool,
        address: u64,
        variables: &mut Vec<Variable>,
    ) {
        let mut nested = Vec::new();
        for child in self.children(scope) {
            let Some(entry) = self.entry(child) else {
                continue;
            };
            let kind = match entry.tag() {
                gimli::DW_TAG_formal_parameter => VariableKind::Parameter,
                gimli::DW_TAG_variable => VariableKind::Local,
                gimli::DW_TAG_lexical_block | gimli::DW_TAG_inlined_subroutine => {
                    if self.die_contains(child, address) {
                        nested.push((child, entry.tag()));
                    }
                    continue;
                }
                _ => continue,
            };
            let Some(name) = self.string_attribute(child, gimli::DW_AT_name) else {
                continue;
            };
            // A `static` local or a declaration of a global: not a frame variable.
            if kind == VariableKind::Local
                && entry
                    .attr_value(gimli::DW_AT_declaration)
                    .ok()
                    .flatten()
                    .is_some()
            {
                continue;
            }
            let type_id = self.type_attribute(child);
            variables.push(Variable {
                name,
                kind,
                type_name: type_id.map_or_else(|| "void".into(), |id| self.type_name(id)),
                type_id,
                function: function.to_owned(),
                inlined,
                location: self.location_at(child, subprogram, address),
            });
        }
        for (child, tag) in nested {
            if tag == gimli::DW_TAG_inlined_subroutine {
                let root = super::index::root_of(self, child);
                let name = self
                    .index
                    .function_by_root
                    .get(&root)
                    .map(|index| self.index.functions[*index].name.clone())
                    .or_else(|| self.string_attribute(child, gimli::DW_AT_name))
                    .unwrap_or_default();
                self.collect_scope(child, subprogram, &name, true, address, variables);
            } else {
                self.collect_scope(child, subprogram, function, inlined, address, variables);
            }
        }
    }

    fn die_contains(&self, die: DieRef, address: u64) -> bool {
        let unit = &self.units[die.unit].unit;
        let Some(entry) = self.entry(die) else {
            return false;
        };
        let Ok(mut ranges) = self.dwarf.die_ranges(unit, &entry) else {
            return false;
        };
        while let Ok(Some(range)) = ranges.next() {
            if range.begin <= address && address < range.end {
                return true;
            }
        }
        false
    }

    /// The location of variable `die` at `address`, inside the out-of-line
    /// `subprogram` (whose frame base applies).
    pub(crate) fn location_at(&self, die: DieRef, subprogram: DieRef, address: u64) -> Location {
        let Some(entry) = self.entry(die) else {
            return Location::Unavailable("bad DIE reference".into());
        };
        let unit = &self.units[die.unit].unit;
        let value = match entry.attr_value(gimli::DW_AT_location) {
            Ok(Some(value)) => value,
            Ok(None) => {
                return match entry.attr_value(gimli::DW_AT_const_value).ok().flatten() {
                    Some(gimli::AttributeValue::Sdata(value)) => Location::Value(value as u64),
                    Some(gimli::AttributeValue::Block(block)) => match block.to_slice() {
                        Ok(bytes) if bytes.len() <= 8 => {
                            let mut value = [0u8; 8];
                            value[..bytes.len()].copy_from_slice(&bytes);
                            Location::Value(u64::from_le_bytes(value))
                        }
                        Ok(bytes) => Location::Unavailable(format!(
                            "constant of {} bytes (DW_AT_const_value block) is not supported",
                            bytes.len()
                        )),
                        Err(error) => Location::Unavailable(format!("bad constant: {error}")),
                    },
                    Some(value) => match value.udata_value() {
                        Some(value) => Location::Value(value),
                        None => Location::Unavailable("unsupported constant value".into()),
                    },
                    None => Location::Unavailable("optimised out".into()),
                };
            }
            Err(error) => return Location::Unavailable(format!("bad location: {error}")),
        };
        let expression = match value {
            gimli::AttributeValue::Exprloc(expression) => Some(expression),
            value => match self.dwarf.attr_locations(unit, value) {
                Ok(Some(mut list)) => {
                    let mut found = None;
                    loop {
                        match list.next() {
                            Ok(Some(item)) => {
                                if item.range.begin <= address && address < item.range.end {
                                    found = Some(item.data);
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(error) => {
                                return Location::Unavailable(format!(
                                    "bad location list: {error}"
                                ));
                            }
                        }
                    }
                    match found {
                        Some(expression) => Some(expression),
                        None => {
                            return Location::Unavailable(format!(
                                "optimised out at {address:#x} (no location list entry)"
                            ));
                        }
                    }
                }
                Ok(None) => None,
                Err(error) => return Location::Unavailable(format!("bad location list: {error}")),
            },
        };
        let Some(expression) = expression else {
            return Location::Unavailable("unsupported location form".into());
        };
        let encoding = unit.encoding();
        reduce_expression(
            expression,
            encoding,
            &mut || self.frame_base(subprogram, address),
            &mut || self.cfa(address),
            &mut |index| self.dwarf.address(unit, index).ok(),
        )
    }

    /// The frame base (`DW_AT_frame_base`) of a subprogram at `address`.
    fn frame_base(&self, subprogram: DieRef, address: u64) -> FrameBase {
        let Some(entry) = self.entry(subprogram) else {
            return FrameBase::Unknown("bad subprogram".into());
        };
        let Ok(Some(value)) = entry.attr_value(gimli::DW_AT_frame_base) else {
            return FrameBase::Unknown("function has no frame base".into());
        };
        let unit = &self.units[subprogram.unit].unit;
        let expression = match value {
            gimli::AttributeValue::Exprloc(expression) => expression,
            value => {
                let Ok(Some(mut list)) = self.dwarf.attr_locations(unit, value) else {
                    return FrameBase::Unknown("unsupported frame base".into());
                };
                let mut found = None;
                while let Ok(Some(item)) = list.next() {
                    if item.range.begin <= address && address < item.range.end {
                        found = Some(item.data);
                        break;
                    }
                }
                match found {
                    Some(expression) => expression,
                    None => return FrameBase::Unknown("no frame base at this address".into()),
                }
            }
        };
        let mut reader = expression.0;
        let mut operations = Vec::new();
        while !reader.is_empty() {
            match gimli::Operation::parse(&mut reader, unit.encoding()) {
                Ok(operation) => operations.push(operation),
                Err(_) => return FrameBase::Unknown("malformed frame base".into()),
            }
        }
        match operations.as_slice() {
            [gimli::Operation::CallFrameCFA] => self.cfa(address),
            // DW_OP_regN as a frame base means "the contents of register N".
            [gimli::Operation::Register { register }] => FrameBase::RegisterOffset(register.0, 0),
            [
                gimli::Operation::RegisterOffset {
                    register, offset, ..
                },
            ] => FrameBase::RegisterOffset(register.0, *offset),
            _ => FrameBase::Unknown("unsupported frame base expression".into()),
        }
    }

    /// The canonical frame address at `address`.
    fn cfa(&self, address: u64) -> FrameBase {
        self.frames.cfa(address)
    }
}
