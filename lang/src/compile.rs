//! The compiler driver: definitions, probe points, sites, maps, records, and the
//! two passes over the script.
//!
//! # Design
//!
//! Compilation runs the same lowering twice. The first pass (*discovery*) only
//! learns every map's number, key and value from all its uses in source order, and
//! throws its code and diagnostics away; the second pass emits the programs with
//! every map known, so a probe may read a map that a later probe fills. Each probe
//! point expands (through aliases) to concrete points, each concrete point to
//! sites (a wildcard to many functions), and each site gets its own program,
//! because where a variable lives differs from address to address.
//!
//! `begin` and `end` blocks never reach the kernel: they become [`HostAction`]s.
//!
//! After the second pass, every program is verified against the map definitions;
//! a refusal is an internal compiler error (`E0901`).

use std::collections::HashMap;

use probe_port_protocol::isa::{Insn, MAX_INSNS};
use probe_port_protocol::maps::{AggregateKind, MapId, MapKind, MapSpec};
use probe_port_protocol::message::TimerScope;
use probe_port_protocol::verifier::{ProgramKind, VerifierConfig, verify_alloc};

use crate::ast::{self, ExprKind, Item, StatementKind};
use crate::compiled::*;
use crate::diagnostic::{self, Diagnostic, Diagnostics, closest};
use crate::format::{ConstValue, RawPiece, format_constants, parse_format};
use crate::lower::{self, Site, SiteKind};
use crate::parser::parse;
use crate::resolver::{Marker, NameKind, Resolver, SiteRefusal, UserTarget, is_glob};
use crate::source::{SourceKind, Sources, Span};
use crate::types::Type;

/// Knobs of a compilation.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Buffer size of `str(p)` without an explicit size, in bytes.
    pub string_size: u16,
    /// Frames in `kstack` without an explicit depth.
    pub stack_depth: u16,
    /// Entries of every map.
    pub max_entries: u32,
    /// Longest program, in instruction slots (the stub's `max_program_insns`).
    pub max_insns: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            string_size: 64,
            stack_depth: 16,
            max_entries: 4096,
            max_insns: MAX_INSNS,
        }
    }
}

/// Parses every file of `sources` and returns the scripts' trees with the
/// diagnostics of all files.
pub fn parse_all(
    sources: &Sources,
) -> (Vec<(crate::source::FileId, ast::Script)>, Vec<Diagnostic>) {
    let mut scripts = Vec::new();
    let mut diagnostics = Vec::new();
    for file in sources.ids() {
        let (script, mut found) = parse(file, sources.text(file));
        diagnostics.append(&mut found);
        scripts.push((file, script));
    }
    (scripts, diagnostics)
}

/// Compiles the script and tapsets in `sources` against the kernel `resolver`
/// describes. Returns the compiled script when there was no error, and every
/// diagnostic (warnings come with a result too).
pub fn compile(
    sources: &Sources,
    resolver: &dyn Resolver,
    options: &CompileOptions,
) -> (Option<CompiledScript>, Vec<Diagnostic>) {
    let (scripts, parse_diagnostics) = parse_all(sources);
    if parse_diagnostics.iter().any(Diagnostic::is_error) {
        return (None, parse_diagnostics);
    }
    let mut compiler = Compiler {
        resolver,
        options,
        sources,
        functions: HashMap::new(),
        aliases: HashMap::new(),
        maps: Vec::new(),
        records: Vec::new(),
        diagnostics: Diagnostics::default(),
    };
    for diagnostic in parse_diagnostics {
        compiler.diagnostics.push(diagnostic);
    }

    // Definitions first, from every file.
    let mut probes = Vec::new();
    for (file, script) in &scripts {
        for item in &script.items {
            match item {
                Item::Probe(probe) => {
                    if sources.kind(*file) == SourceKind::Tapset {
                        compiler.error(
                            Diagnostic::error(
                                diagnostic::PROBE_IN_TAPSET,
                                probe.span,
                                "tapsets cannot define probes",
                            )
                            .label("this probe is in a tapset")
                            .help("define a `probe alias` here and use it from the script"),
                        );
                    } else {
                        probes.push(probe);
                    }
                }
                Item::Function(function) => compiler.define_function(function),
                Item::Alias(alias) => compiler.define_alias(alias),
            }
        }
    }
    if compiler.diagnostics.has_errors() {
        return (None, compiler.diagnostics.into_vec());
    }

    // Pass 1: discover maps. Its diagnostics are dropped: pass 2 reports them.
    let kept = compiler.diagnostics.len();
    for probe in &probes {
        compiler.probe(probe);
    }
    compiler.diagnostics.truncate(kept);
    compiler.records.clear();

    // Pass 2: emit.
    let mut compiled_probes = Vec::new();
    let mut probe_spans = Vec::new();
    let mut begin = Vec::new();
    let mut end = Vec::new();
    let mut end_mentions = Vec::new();
    for probe in &probes {
        match compiler.probe(probe) {
            Lowered::Probe(compiled) => {
                compiled_probes.push(compiled);
                probe_spans.push(probe.span);
            }
            Lowered::Host {
                is_end,
                actions,
                mentioned,
            } => {
                if is_end {
                    end.extend(actions);
                    end_mentions.extend(mentioned);
                } else {
                    begin.extend(actions);
                }
            }
            Lowered::Nothing => {}
        }
    }
    let maps = compiler.map_infos();
    if compiler.diagnostics.has_errors() {
        return (None, compiler.diagnostics.into_vec());
    }
    let maps = maps.expect("maps are complete when there is no error");
    for map in &maps {
        if !end_mentions.contains(&map.spec.map) {
            end.push(HostAction::PrintMap(map.spec.map));
        }
    }
    let specs: Vec<MapSpec> = maps.iter().map(|map| map.spec).collect();
    for (span, compiled) in probe_spans.iter().zip(&compiled_probes) {
        for attachment in &compiled.attachments {
            compiler.verify(*span, &attachment.program, ProgramKind::Probe, &specs);
            if !attachment.entry_program.is_empty() {
                compiler.verify(*span, &attachment.entry_program, ProgramKind::Entry, &specs);
            }
        }
    }
    if compiler.diagnostics.has_errors() {
        return (None, compiler.diagnostics.into_vec());
    }
    let records = std::mem::take(&mut compiler.records);
    (
        Some(CompiledScript {
            maps,
            probes: compiled_probes,
            records,
            begin,
            end,
        }),
        compiler.diagnostics.into_vec(),
    )
}

/// Everything the compiler knows about a map so far.
#[derive(Debug, Clone)]
pub(crate) struct MapState {
    pub(crate) name: String,
    pub(crate) span: Span,
    /// `None` until a use with or without keys fixes it; `Some(vec![])` for none.
    pub(crate) key: Option<Vec<ValueType>>,
    pub(crate) key_span: Span,
    pub(crate) value: Option<MapValueState>,
    pub(crate) value_span: Span,
}

/// What a map holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MapValueState {
    Value(Type),
    Aggregate(AggregateKind),
}

/// A concrete probe point.
#[derive(Debug, Clone)]
enum Point {
    Begin,
    End,
    Function {
        pattern: String,
        offset: Option<u64>,
        is_return: bool,
    },
    Statement {
        file: String,
        line: u32,
    },
    Marker(String),
    Timer {
        period_ns: u64,
        scope: TimerScope,
    },
    /// `process("path").function("name")[.return]`, `process("path").mark("p:n")`.
    User {
        path: String,
        target: UserTarget,
        is_return: bool,
    },
}

/// A concrete point with the alias prologues that lead to it, outermost first.
struct Expanded<'a> {
    point: Point,
    span: Span,
    prologues: Vec<&'a ast::Block>,
}

enum Lowered {
    Probe(CompiledProbe),
    Host {
        is_end: bool,
        actions: Vec<HostAction>,
        mentioned: Vec<MapId>,
    },
    Nothing,
}

pub(crate) struct Compiler<'a> {
    pub(crate) resolver: &'a dyn Resolver,
    pub(crate) options: &'a CompileOptions,
    pub(crate) sources: &'a Sources,
    pub(crate) functions: HashMap<String, &'a ast::Function>,
    aliases: HashMap<String, &'a ast::Alias>,
    pub(crate) maps: Vec<MapState>,
    pub(crate) records: Vec<RecordFormat>,
    diagnostics: Diagnostics,
}

/// Builtin names that script functions may not take.
pub(crate) const BUILTIN_FUNCTIONS: &[&str] = &[
    "printf",
    "print",
    "clear",
    "delete",
    "exit",
    "str",
    "reg",
    "ksym",
    "kstack",
    "x86_64_syscall",
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "stats",
    "hist",
    "lhist",
];

impl<'a> Compiler<'a> {
    pub(crate) fn error(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    /// The variables at a code or return site's address, or `None` (no error
    /// reported) when the resolver cannot say.
    pub(crate) fn resolver_variables_quiet(
        &self,
        kind: &crate::lower::SiteKind,
    ) -> Option<Vec<crate::resolver::Variable>> {
        match kind {
            SiteKind::Code {
                function, address, ..
            } => self.resolver.variables(function, *address).ok(),
            SiteKind::Return { function, .. } => {
                self.resolver.variables(function, function.entry).ok()
            }
            SiteKind::Symbol {
                function: Some(function),
                offset,
                ..
            } => self
                .resolver
                .variables(function, function.entry + offset)
                .ok(),
            _ => None,
        }
    }

    pub(crate) fn error_count(&self) -> usize {
        self.diagnostics.error_count()
    }

    fn in_tapset(&self, span: Span) -> bool {
        self.sources.kind(span.file) == SourceKind::Tapset
    }

    fn define_function(&mut self, function: &'a ast::Function) {
        let name = &function.name.name;
        if BUILTIN_FUNCTIONS.contains(&name.as_str()) {
            self.error(
                Diagnostic::error(
                    diagnostic::DUPLICATE_DEFINITION,
                    function.name.span,
                    format!("`{name}` is a builtin function"),
                )
                .label("cannot be redefined"),
            );
            return;
        }
        if let Some(first) = self.functions.get(name) {
            // The script's own definitions take precedence over the tapsets'.
            match (self.in_tapset(first.span), self.in_tapset(function.span)) {
                (true, false) => {
                    self.functions.insert(name.clone(), function);
                    return;
                }
                (false, true) => return,
                _ => {}
            }
            let first = first.name.span;
            self.error(
                Diagnostic::error(
                    diagnostic::DUPLICATE_DEFINITION,
                    function.name.span,
                    format!("function `{name}` is defined twice"),
                )
                .label("second definition")
                .secondary(first, "first definition"),
            );
            return;
        }
        let mut seen: Vec<&str> = Vec::new();
        for param in &function.params {
            if seen.contains(&param.name.as_str()) {
                self.error(
                    Diagnostic::error(
                        diagnostic::DUPLICATE_LOCAL,
                        param.span,
                        format!("parameter `{}` is declared twice", param.name),
                    )
                    .label("second declaration"),
                );
            }
            seen.push(&param.name);
        }
        self.functions.insert(name.clone(), function);
    }

    fn define_alias(&mut self, alias: &'a ast::Alias) {
        let name = alias.dotted_name();
        let span = alias.name[0].span.to(alias.name[alias.name.len() - 1].span);
        if builtin_point(&name) {
            self.error(
                Diagnostic::error(
                    diagnostic::DUPLICATE_DEFINITION,
                    span,
                    format!("`{name}` is a builtin probe point"),
                )
                .label("an alias cannot take its name"),
            );
            return;
        }
        if let Some(first) = self.aliases.get(&name) {
            match (self.in_tapset(first.span), self.in_tapset(alias.span)) {
                (true, false) => {
                    self.aliases.insert(name, alias);
                    return;
                }
                (false, true) => return,
                _ => {}
            }
            let first = first.name[0].span.to(first.name[first.name.len() - 1].span);
            self.error(
                Diagnostic::error(
                    diagnostic::DUPLICATE_DEFINITION,
                    span,
                    format!("probe alias `{name}` is defined twice"),
                )
                .label("second definition")
                .secondary(first, "first definition"),
            );
            return;
        }
        self.aliases.insert(name, alias);
    }

    // ----- maps -----

    /// The map called `name` (with `@`), created at its first use.
    pub(crate) fn map_index(&mut self, name: &str, span: Span) -> usize {
        if let Some(index) = self.maps.iter().position(|map| map.name == name) {
            return index;
        }
        self.maps.push(MapState {
            name: name.to_string(),
            span,
            key: None,
            key_span: span,
            value: None,
            value_span: span,
        });
        self.maps.len() - 1
    }

    fn map_infos(&mut self) -> Option<Vec<MapInfo>> {
        let mut infos = Vec::new();
        let mut complete = true;
        for (index, map) in self.maps.clone().iter().enumerate() {
            let Some(value) = &map.value else {
                self.error(
                    Diagnostic::error(
                        diagnostic::UNKNOWN_MAP,
                        map.span,
                        format!("map `{}` is never assigned", map.name),
                    )
                    .label("used here")
                    .help(format!(
                        "give it a value somewhere, such as `{}[...] = count()`",
                        map.name
                    )),
                );
                complete = false;
                continue;
            };
            let key_types = map.key.clone().unwrap_or_default();
            let mut key = Vec::new();
            let mut offset = 0u16;
            for ty in &key_types {
                key.push(Field {
                    offset,
                    ty: *ty,
                    name: None,
                });
                offset += ty.padded_size();
            }
            let key_size = if key_types.is_empty() { 1 } else { offset };
            let (kind, value_size, value) = match value {
                MapValueState::Value(ty) => {
                    let value_type = ty.value_type().unwrap_or(ValueType::Unsigned);
                    (
                        MapKind::Hash,
                        value_type.padded_size(),
                        MapValue::Value(value_type),
                    )
                }
                MapValueState::Aggregate(kind) => (
                    MapKind::Aggregate(*kind),
                    kind.value_size().unwrap_or(8),
                    MapValue::Aggregate(*kind),
                ),
            };
            infos.push(MapInfo {
                spec: MapSpec {
                    map: MapId(index as u16),
                    kind,
                    key_size,
                    value_size,
                    // A map without keys holds one entry: reserving more would only
                    // take map memory from the maps that have keys.
                    max_entries: if key_types.is_empty() {
                        1
                    } else {
                        self.options.max_entries
                    },
                },
                name: map.name.clone(),
                key,
                value,
            });
        }
        complete.then_some(infos)
    }

    /// Registers a record format and returns its number; an identical format
    /// (the same `printf` lowered at several sites) shares its number.
    pub(crate) fn record(&mut self, kind: RecordKind, fields: Vec<Field>, size: u16) -> u32 {
        if let Some(existing) = self
            .records
            .iter()
            .find(|record| record.kind == kind && record.fields == fields && record.size == size)
        {
            return existing.id;
        }
        let id = self.records.len() as u32;
        self.records.push(RecordFormat {
            id,
            size,
            kind,
            fields,
        });
        id
    }

    fn verify(&mut self, span: Span, program: &[Insn], kind: ProgramKind, specs: &[MapSpec]) {
        let mut config = VerifierConfig::new(kind, &specs);
        config.max_insns = self.options.max_insns;
        if let Err(error) = verify_alloc(program, &config) {
            let instruction = probe_port_protocol::asm::format_insn(program, error.index as usize);
            self.error(
                Diagnostic::error(
                    diagnostic::INTERNAL,
                    span,
                    format!(
                        "internal compiler error: the verifier refused this probe's {} program",
                        if kind == ProgramKind::Entry {
                            "entry"
                        } else {
                            "handler"
                        }
                    ),
                )
                .label("while compiling this probe")
                .note(format!(
                    "instruction {}: `{}` breaks rule {} ({}): {}",
                    error.index,
                    instruction,
                    error.rule.code(),
                    error.rule.name(),
                    error.rule.description()
                ))
                .help("this is a bug in the compiler; please report it with the script"),
            );
        }
    }

    // ----- probes -----

    fn probe(&mut self, probe: &'a ast::Probe) -> Lowered {
        let mut expanded = Vec::new();
        for point in &probe.points {
            let mut chain = Vec::new();
            self.expand(point, &mut Vec::new(), &mut chain, &mut expanded);
        }
        let host = expanded
            .iter()
            .filter(|e| matches!(e.point, Point::Begin | Point::End))
            .count();
        if host > 0 {
            if host != expanded.len() || expanded.len() != 1 {
                self.error(
                    Diagnostic::error(
                        diagnostic::HOST_BLOCK,
                        probe.points[0]
                            .span
                            .to(probe.points[probe.points.len() - 1].span),
                        "`begin` and `end` must be a probe's only point",
                    )
                    .label("mixed with other probe points")
                    .note("`begin` and `end` run in the client, the other points in the kernel"),
                );
                return Lowered::Nothing;
            }
            let is_end = matches!(expanded[0].point, Point::End);
            return self.host_probe(probe, is_end);
        }
        let mut attachments = Vec::new();
        for expansion in &expanded {
            for site in self.sites(expansion) {
                if let Some(attachment) =
                    lower::lower_site(self, &site, expansion.prologues.as_slice(), probe)
                {
                    attachments.push(attachment);
                }
            }
        }
        Lowered::Probe(CompiledProbe {
            name: probe
                .points
                .iter()
                .map(ast::ProbePoint::text)
                .collect::<Vec<_>>()
                .join(", "),
            attachments,
        })
    }

    /// Expands a point through aliases into concrete points.
    fn expand(
        &mut self,
        point: &'a ast::ProbePoint,
        stack: &mut Vec<String>,
        prologues: &mut Vec<&'a ast::Block>,
        out: &mut Vec<Expanded<'a>>,
    ) {
        let Some(builtin) = self.builtin_point(point) else {
            return;
        };
        if let Some(concrete) = builtin {
            out.push(Expanded {
                point: concrete,
                span: point.span,
                prologues: prologues.clone(),
            });
            return;
        }
        let name = point.dotted_name();
        let Some(alias) = self.aliases.get(&name).copied() else {
            unreachable!("builtin_point reports unknown names");
        };
        if stack.contains(&name) {
            self.error(
                Diagnostic::error(
                    diagnostic::ALIAS_CYCLE,
                    point.span,
                    format!("probe alias `{name}` is defined in terms of itself"),
                )
                .label("expanding this point again")
                .secondary(alias.name[0].span, "the alias")
                .note(format!("expansion: {} -> {name}", stack.join(" -> "))),
            );
            return;
        }
        stack.push(name);
        let pushed = alias.body.is_some();
        if let Some(body) = &alias.body {
            prologues.push(body);
        }
        for inner in &alias.points {
            self.expand(inner, stack, prologues, out);
        }
        if pushed {
            prologues.pop();
        }
        stack.pop();
    }

    /// `Some(Some(point))` for a builtin point, `Some(None)` for a known alias,
    /// `None` after reporting an error.
    fn builtin_point(&mut self, point: &ast::ProbePoint) -> Option<Option<Point>> {
        let components = &point.components;
        let name = point.dotted_name();
        let argument = |index: usize| components.get(index).and_then(|c| c.argument.clone());
        let no_arguments = components.iter().all(|c| c.argument.is_none());
        let string = |this: &mut Self, index: usize, what: &str| -> Option<String> {
            match argument(index) {
                Some(ast::Literal::Str(value, _)) => Some(value),
                other => {
                    let span = other.map_or(components[index].name.span, |literal| literal.span());
                    this.error(
                        Diagnostic::error(
                            diagnostic::BAD_PROBE_ARGUMENT,
                            span,
                            format!("`{}` takes {what}", components[index].name.name),
                        )
                        .label(format!("expected {what}")),
                    );
                    None
                }
            }
        };
        let point = match name.as_str() {
            "begin" | "end" if no_arguments => {
                if name == "begin" {
                    Point::Begin
                } else {
                    Point::End
                }
            }
            "kernel.function" | "kernel.function.return" => {
                let text = string(self, 1, "a function name in quotes")?;
                let is_return = components.len() == 3;
                if components.len() == 3 && components[2].argument.is_some() {
                    self.bad_argument(point, 2);
                    return None;
                }
                let (pattern, offset) = match split_offset(&text) {
                    Ok(split) => split,
                    Err(message) => {
                        let span = argument(1).map_or(point.span, |literal| literal.span());
                        self.error(
                            Diagnostic::error(diagnostic::BAD_PROBE_ARGUMENT, span, message)
                                .label("in this function name"),
                        );
                        return None;
                    }
                };
                if is_return && offset.is_some() {
                    let span = argument(1).map_or(point.span, |literal| literal.span());
                    self.error(
                        Diagnostic::error(
                            diagnostic::BAD_PROBE_ARGUMENT,
                            span,
                            "a `.return` probe cannot have an offset",
                        )
                        .label("the offset names an instruction, `.return` the function's return"),
                    );
                    return None;
                }
                Point::Function {
                    pattern,
                    offset,
                    is_return,
                }
            }
            "kernel.statement" => {
                let text = string(self, 1, "\"file:line\"")?;
                let parsed = text
                    .rsplit_once(':')
                    .and_then(|(file, line)| Some((file.to_string(), line.parse::<u32>().ok()?)))
                    .filter(|(file, line)| !file.is_empty() && *line > 0);
                let Some((file, line)) = parsed else {
                    let span = argument(1).map_or(point.span, |literal| literal.span());
                    self.error(
                        Diagnostic::error(
                            diagnostic::BAD_PROBE_ARGUMENT,
                            span,
                            format!("`{text}` is not `file:line`"),
                        )
                        .label("expected a file name, a colon and a line number")
                        .help("for example kernel.statement(\"ipc.rs:348\")"),
                    );
                    return None;
                };
                Point::Statement { file, line }
            }
            "kernel.marker" => Point::Marker(string(self, 1, "a marker name in quotes")?),
            "process.function" | "process.function.return" | "process.mark" => {
                let path = string(self, 0, "an absolute file path in quotes")?;
                if !path.starts_with('/') {
                    let span = argument(0).map_or(point.span, |literal| literal.span());
                    self.error(
                        Diagnostic::error(
                            diagnostic::BAD_PROBE_ARGUMENT,
                            span,
                            format!("`{path}` is not an absolute path"),
                        )
                        .label("user-space probes name their file by its absolute path"),
                    );
                    return None;
                }
                if components.len() == 3 && components[2].argument.is_some() {
                    self.bad_argument(point, 2);
                    return None;
                }
                let is_return = components.len() == 3;
                let target = if components[1].name.name == "mark" {
                    let text = string(self, 1, "\"provider:name\" in quotes")?;
                    let Some((provider, name)) = text
                        .split_once(':')
                        .filter(|(provider, name)| !provider.is_empty() && !name.is_empty())
                    else {
                        let span = argument(1).map_or(point.span, |literal| literal.span());
                        self.error(
                            Diagnostic::error(
                                diagnostic::BAD_PROBE_ARGUMENT,
                                span,
                                format!("`{text}` is not `provider:name`"),
                            )
                            .label("expected a provider, a colon and a marker name"),
                        );
                        return None;
                    };
                    UserTarget::Mark {
                        provider: provider.to_string(),
                        name: name.to_string(),
                    }
                } else {
                    UserTarget::Function(string(self, 1, "a function name in quotes")?)
                };
                Point::User {
                    path,
                    target,
                    is_return,
                }
            }
            "timer.ms" | "timer.s" | "timer.us" | "timer.hz" | "profile.hz" => {
                let (value, span) = match argument(1) {
                    Some(ast::Literal::Int(value, span)) => (value, span),
                    other => {
                        let span = other.map_or(point.span, |literal| literal.span());
                        self.error(
                            Diagnostic::error(
                                diagnostic::BAD_PROBE_ARGUMENT,
                                span,
                                format!("`{name}` takes a positive integer"),
                            )
                            .label("expected an integer, such as timer.ms(100)"),
                        );
                        return None;
                    }
                };
                let period = match components[1].name.name.as_str() {
                    "ms" => value.checked_mul(1_000_000),
                    "s" => value.checked_mul(1_000_000_000),
                    "us" => value.checked_mul(1_000),
                    _ => (value > 0 && value <= 1_000_000_000).then(|| 1_000_000_000 / value),
                };
                let Some(period_ns) = period.filter(|period| *period > 0) else {
                    self.error(
                        Diagnostic::error(
                            diagnostic::BAD_PROBE_ARGUMENT,
                            span,
                            format!("`{value}` is not a usable period"),
                        )
                        .label("the period must be above zero and fit 64-bit nanoseconds"),
                    );
                    return None;
                };
                let scope = if components[0].name.name == "profile" {
                    TimerScope::EachCpu
                } else {
                    TimerScope::OneCpu
                };
                Point::Timer { period_ns, scope }
            }
            _ if no_arguments && self.aliases.contains_key(&name) => return Some(None),
            _ => {
                let mut known: Vec<String> = BUILTIN_POINTS.iter().map(|p| p.to_string()).collect();
                known.extend(self.aliases.keys().cloned());
                let mut error = Diagnostic::error(
                    diagnostic::UNKNOWN_PROBE_POINT,
                    point.span,
                    format!("unknown probe point `{}`", point.text()),
                )
                .label("neither a builtin probe point nor an alias");
                if let Some(similar) = closest(&name, known.iter().map(String::as_str)) {
                    error = error.help(format!("did you mean `{similar}`?"));
                } else {
                    error = error.note(
                        "probe points are kernel.function(\"name\"), kernel.function(\"name\").return, \
                         kernel.statement(\"file:line\"), kernel.marker(\"name\"), \
                         process(\"path\").function(\"name\")[.return], \
                         process(\"path\").mark(\"provider:name\"), timer.ms(N), \
                         timer.s(N), timer.hz(N), profile.hz(N), begin, end, or an alias",
                    );
                }
                self.error(error);
                return None;
            }
        };
        Some(Some(point))
    }

    fn bad_argument(&mut self, point: &ast::ProbePoint, index: usize) {
        let span = point.components[index]
            .argument
            .as_ref()
            .map_or(point.span, ast::Literal::span);
        self.error(
            Diagnostic::error(
                diagnostic::BAD_PROBE_ARGUMENT,
                span,
                format!("`{}` takes no argument", point.components[index].name.name),
            )
            .label("unexpected argument"),
        );
    }

    // ----- sites -----

    fn sites(&mut self, expanded: &Expanded<'_>) -> Vec<Site> {
        let span = expanded.span;
        match &expanded.point {
            Point::Begin | Point::End => Vec::new(),
            Point::Function {
                pattern,
                offset,
                is_return,
            } => self.function_sites(pattern, *offset, *is_return, span),
            Point::Statement { file, line } => {
                let found = match self.resolver.statements(file, *line) {
                    Ok(found) => found,
                    Err(error) => {
                        self.error(
                            Diagnostic::error(diagnostic::RESOLVER, span, error.message)
                                .label("while looking up this line"),
                        );
                        return Vec::new();
                    }
                };
                if found.is_empty() {
                    self.error(
                        Diagnostic::error(
                            diagnostic::NO_MATCH,
                            span,
                            format!("no code at `{file}:{line}`"),
                        )
                        .label("the line table has no address for this line")
                        .help(
                            "the line may hold no code, or the code may have been optimised away",
                        ),
                    );
                }
                let mut sites = Vec::new();
                for statement in found {
                    match self.resolver.instruction(statement.address) {
                        Ok(expected) => sites.push(Site {
                            description: format!(
                                "{}:{line} ({}+{:#x})",
                                file,
                                statement.function.name,
                                statement.address - statement.function.entry
                            ),
                            kind: SiteKind::Code {
                                at_entry: statement.address == statement.function.entry,
                                address: statement.address,
                                function: statement.function,
                                expected,
                            },
                            span,
                        }),
                        Err(refusal) => self.refused(span, statement.address, &refusal, false),
                    }
                }
                sites
            }
            Point::Marker(pattern) => {
                let markers = self.resolver.markers(pattern);
                if markers.is_empty() {
                    let candidates = self.resolver.candidates(NameKind::Marker);
                    let mut error = Diagnostic::error(
                        diagnostic::NO_MATCH,
                        span,
                        format!("no marker matches `{pattern}`"),
                    )
                    .label("the kernel has no such static marker");
                    if let Some(similar) = closest(pattern, candidates.iter().map(String::as_str)) {
                        error = error.help(format!("did you mean `{similar}`?"));
                    }
                    self.error(error);
                }
                markers
                    .into_iter()
                    .map(|marker: Marker| Site {
                        description: format!("marker {}", marker.name),
                        kind: SiteKind::Marker(marker),
                        span,
                    })
                    .collect()
            }
            Point::Timer { period_ns, scope } => vec![Site {
                description: format!(
                    "{} every {}",
                    if *scope == TimerScope::EachCpu {
                        "profile"
                    } else {
                        "timer"
                    },
                    describe_period(*period_ns)
                ),
                kind: SiteKind::Timer {
                    period_ns: *period_ns,
                    scope: *scope,
                },
                span,
            }],
            Point::User {
                path,
                target,
                is_return,
            } => match self.resolver.user_site(path, target) {
                Ok(found) => {
                    let what = match target {
                        UserTarget::Function(name) => name.clone(),
                        UserTarget::Mark { provider, name } => format!("mark {provider}:{name}"),
                    };
                    vec![Site {
                        description: format!(
                            "{path}:{what}{}",
                            if *is_return { ".return" } else { "" }
                        ),
                        kind: SiteKind::User {
                            path: path.clone(),
                            file_offset: found.file_offset,
                            is_return: *is_return,
                            ref_ctr_offset: found.ref_ctr_offset,
                            args: found.args,
                        },
                        span,
                    }]
                }
                Err(error) => {
                    self.error(
                        Diagnostic::error(diagnostic::NO_MATCH, span, error.message)
                            .label("while looking up this user-space probe point"),
                    );
                    Vec::new()
                }
            },
        }
    }

    fn function_sites(
        &mut self,
        pattern: &str,
        offset: Option<u64>,
        is_return: bool,
        span: Span,
    ) -> Vec<Site> {
        if self.resolver.kernel_symbols() {
            return self.symbol_site(pattern, offset, is_return, span);
        }
        let functions = self.resolver.functions(pattern);
        if functions.is_empty() {
            let candidates = self.resolver.candidates(NameKind::Function);
            let mut error = Diagnostic::error(
                diagnostic::NO_MATCH,
                span,
                format!("no function matches `{pattern}`"),
            )
            .label("not found in the kernel's symbols");
            if let Some(similar) = closest(pattern, candidates.iter().map(String::as_str)) {
                error = error.help(format!("did you mean `{similar}`?"));
            }
            self.error(error);
            return Vec::new();
        }
        let wildcard = is_glob(pattern);
        let mut sites = Vec::new();
        let mut skipped = Vec::new();
        for function in functions {
            let offset_value = offset.unwrap_or(0);
            if function.size != 0 && offset_value >= function.size {
                self.error(
                    Diagnostic::error(
                        diagnostic::BAD_PROBE_ARGUMENT,
                        span,
                        format!(
                            "offset {offset_value:#x} is past the end of `{}` ({:#x} bytes)",
                            function.name, function.size
                        ),
                    )
                    .label("offset out of the function"),
                );
                continue;
            }
            let address = function.entry + offset_value;
            match self.resolver.instruction(address) {
                Ok(expected) => {
                    let description = if is_return {
                        format!("{}.return", function.name)
                    } else if offset_value != 0 {
                        format!("{}+{offset_value:#x}", function.name)
                    } else {
                        function.name.clone()
                    };
                    let kind = if is_return {
                        SiteKind::Return { function, expected }
                    } else {
                        SiteKind::Code {
                            at_entry: offset_value == 0,
                            address,
                            function,
                            expected,
                        }
                    };
                    sites.push(Site {
                        description,
                        kind,
                        span,
                    });
                }
                Err(refusal) if wildcard => skipped.push((function, refusal)),
                Err(refusal) => self.refused(span, address, &refusal, true),
            }
        }
        if !skipped.is_empty() {
            let names: Vec<String> = skipped
                .iter()
                .take(5)
                .map(|(function, refusal)| format!("{} ({})", function.name, refusal_text(refusal)))
                .collect();
            let mut warning = Diagnostic::warning(
                diagnostic::SKIPPED_SITES,
                span,
                format!(
                    "{} of the functions matching `{pattern}` cannot be probed and are skipped",
                    skipped.len()
                ),
            )
            .label("this pattern")
            .note(format!("skipped: {}", names.join(", ")));
            if skipped.len() > 5 {
                warning = warning.note(format!("and {} more", skipped.len() - 5));
            }
            self.error(warning);
            if sites.is_empty() {
                self.error(
                    Diagnostic::error(
                        diagnostic::NO_MATCH,
                        span,
                        format!("no function matching `{pattern}` can be probed"),
                    )
                    .label("every match was refused"),
                );
            }
        }
        sites
    }

    /// `kernel.function("name")[.return]` as a symbol site for the stub to resolve.
    fn symbol_site(
        &mut self,
        name: &str,
        offset: Option<u64>,
        is_return: bool,
        span: Span,
    ) -> Vec<Site> {
        if is_glob(name) {
            self.error(
                Diagnostic::error(
                    diagnostic::NO_MATCH,
                    span,
                    format!("`{name}` is a pattern, and kernel functions are named exactly here"),
                )
                .label("a pattern needs the kernel's symbol list")
                .help("name one function, or give the kernel image with --kernel"),
            );
            return Vec::new();
        }
        let offset = offset.unwrap_or(0);
        let description = if is_return {
            format!("{name}.return")
        } else if offset != 0 {
            format!("{name}+{offset:#x}")
        } else {
            name.to_string()
        };
        // A resolver with the kernel's types (BTF) knows the function's prototype:
        // its parameters are then readable at the entry.
        let function = self
            .resolver
            .functions(name)
            .into_iter()
            .find(|function| function.name == name);
        vec![Site {
            description,
            kind: SiteKind::Symbol {
                symbol: name.to_string(),
                offset,
                is_return,
                function,
            },
            span,
        }]
    }

    fn refused(&mut self, span: Span, address: u64, refusal: &SiteRefusal, function: bool) {
        let mut error = Diagnostic::error(
            diagnostic::SITE_REFUSED,
            span,
            format!("cannot probe {address:#x}: {}", refusal_text(refusal)),
        )
        .label("this probe point");
        if function && *refusal == SiteRefusal::NotInstructionBoundary {
            error = error.help("`name+offset` must be the offset of an instruction's first byte");
        }
        self.error(error);
    }

    // ----- begin and end -----

    fn host_probe(&mut self, probe: &ast::Probe, is_end: bool) -> Lowered {
        if let Some(predicate) = &probe.predicate {
            self.error(
                Diagnostic::error(
                    diagnostic::HOST_BLOCK,
                    predicate.span,
                    "`begin` and `end` cannot have a predicate",
                )
                .label("they run exactly once, in the client"),
            );
        }
        let mut actions = Vec::new();
        let mut mentioned = Vec::new();
        self.host_statements(&probe.body.statements, &mut actions, &mut mentioned);
        Lowered::Host {
            is_end,
            actions,
            mentioned,
        }
    }

    fn host_statements(
        &mut self,
        statements: &[ast::Statement],
        actions: &mut Vec<HostAction>,
        mentioned: &mut Vec<MapId>,
    ) {
        for statement in statements {
            let refuse = |this: &mut Self, span: Span| {
                this.error(
                    Diagnostic::error(
                        diagnostic::HOST_BLOCK,
                        span,
                        "`begin` and `end` blocks run in the client and cannot do this",
                    )
                    .label("not allowed in `begin` or `end`")
                    .note(
                        "they may use printf with constant arguments, print(@map), clear(@map) \
                         and exit()",
                    ),
                );
            };
            let StatementKind::Expr(expr) = &statement.kind else {
                if let StatementKind::Block(block) = &statement.kind {
                    self.host_statements(&block.statements, actions, mentioned);
                } else {
                    refuse(self, statement.span);
                }
                continue;
            };
            let ExprKind::Call { name, args } = &expr.kind else {
                refuse(self, statement.span);
                continue;
            };
            match name.name.as_str() {
                "printf" => {
                    if let Some(text) = self.host_printf(expr.span, args) {
                        actions.push(HostAction::Print(text));
                    }
                }
                "print" | "clear" => {
                    if let Some(map) = self.map_argument(&name.name, expr.span, args) {
                        mentioned.push(map);
                        actions.push(if name.name == "print" {
                            HostAction::PrintMap(map)
                        } else {
                            HostAction::ClearMap(map)
                        });
                    }
                }
                "exit" => {
                    if !args.is_empty() {
                        self.arity(expr.span, "exit", 0, args.len());
                    }
                    actions.push(HostAction::Exit);
                }
                _ => refuse(self, statement.span),
            }
        }
    }

    pub(crate) fn arity(&mut self, span: Span, name: &str, expected: usize, found: usize) {
        self.error(
            Diagnostic::error(
                diagnostic::ARGUMENT_COUNT,
                span,
                format!(
                    "`{name}` takes {expected} argument{}, {found} given",
                    if expected == 1 { "" } else { "s" }
                ),
            )
            .label("wrong number of arguments"),
        );
    }

    /// The map named by the single argument of `print`/`clear`.
    pub(crate) fn map_argument(
        &mut self,
        function: &str,
        span: Span,
        args: &[ast::Expr],
    ) -> Option<MapId> {
        if args.len() != 1 {
            self.arity(span, function, 1, args.len());
            return None;
        }
        match &args[0].kind {
            ExprKind::Map { name, keys } if keys.is_empty() => {
                let index = self.map_index(&format!("@{}", name.name), name.span);
                Some(MapId(index as u16))
            }
            _ => {
                self.error(
                    Diagnostic::error(
                        diagnostic::TYPE_MISMATCH,
                        args[0].span,
                        format!("`{function}` takes a whole map"),
                    )
                    .label("expected a map such as `@counts`, without keys")
                    .help("to print one value, use printf"),
                );
                None
            }
        }
    }

    fn host_printf(&mut self, span: Span, args: &[ast::Expr]) -> Option<String> {
        let (pieces, format_span) = self.format_argument(span, args)?;
        let conversions = pieces
            .iter()
            .filter(|piece| matches!(piece, RawPiece::Conversion(..)))
            .count();
        if conversions != args.len() - 1 {
            self.format_count(format_span, conversions, args.len() - 1);
            return None;
        }
        let mut values = Vec::new();
        for arg in &args[1..] {
            match const_eval(arg) {
                Some(value) => values.push(value),
                None => {
                    self.error(
                        Diagnostic::error(
                            diagnostic::HOST_BLOCK,
                            arg.span,
                            "`printf` in `begin` and `end` takes only constants",
                        )
                        .label("not a constant")
                        .help("print maps with print(@map); values of probes are printed by the probes"),
                    );
                    return None;
                }
            }
        }
        Some(format_constants(&pieces, &values))
    }

    /// The parsed format of a `printf` call, or `None` after reporting.
    pub(crate) fn format_argument(
        &mut self,
        span: Span,
        args: &[ast::Expr],
    ) -> Option<(Vec<RawPiece>, Span)> {
        let Some(first) = args.first() else {
            self.error(
                Diagnostic::error(
                    diagnostic::ARGUMENT_COUNT,
                    span,
                    "`printf` needs a format string",
                )
                .label("no arguments")
                .help("for example printf(\"%d\\n\", tid)"),
            );
            return None;
        };
        let ExprKind::Str(format) = &first.kind else {
            self.error(
                Diagnostic::error(
                    diagnostic::BAD_FORMAT,
                    first.span,
                    "the first argument of `printf` must be a string literal",
                )
                .label("not a string literal")
                .note("formats are checked against the arguments when the script compiles"),
            );
            return None;
        };
        match parse_format(format) {
            Ok(pieces) => Some((pieces, first.span)),
            Err(error) => {
                self.error(
                    Diagnostic::error(diagnostic::BAD_FORMAT, first.span, "invalid format string")
                        .label(error.message),
                );
                None
            }
        }
    }

    pub(crate) fn format_count(&mut self, span: Span, conversions: usize, arguments: usize) {
        self.error(
            Diagnostic::error(
                diagnostic::FORMAT_ARGUMENT_COUNT,
                span,
                format!(
                    "the format has {conversions} conversion{} but {arguments} argument{} follow{}",
                    if conversions == 1 { "" } else { "s" },
                    if arguments == 1 { "" } else { "s" },
                    if arguments == 1 { "s" } else { "" },
                ),
            )
            .label("this format")
            .help(
                "write one conversion (`%d`, `%s`, ...) per argument, and `%%` for a percent sign",
            ),
        );
    }
}

const BUILTIN_POINTS: &[&str] = &[
    "begin",
    "end",
    "kernel.function",
    "kernel.function.return",
    "kernel.statement",
    "kernel.marker",
    "timer.ms",
    "timer.s",
    "timer.us",
    "timer.hz",
    "profile.hz",
    "process.function",
    "process.function.return",
    "process.mark",
];

fn builtin_point(name: &str) -> bool {
    BUILTIN_POINTS.contains(&name)
        || name == "kernel"
        || name == "timer"
        || name == "profile"
        || name == "process"
}

fn refusal_text(refusal: &SiteRefusal) -> String {
    match refusal {
        SiteRefusal::NotInstructionBoundary => "not the start of an instruction".to_string(),
        SiteRefusal::NoCode => "no kernel text there".to_string(),
        SiteRefusal::Forbidden(reason) => format!("the kernel forbids probing it ({reason})"),
    }
}

fn describe_period(period_ns: u64) -> String {
    if period_ns.is_multiple_of(1_000_000_000) {
        format!("{}s", period_ns / 1_000_000_000)
    } else if period_ns.is_multiple_of(1_000_000) {
        format!("{}ms", period_ns / 1_000_000)
    } else if period_ns.is_multiple_of(1_000) {
        format!("{}us", period_ns / 1_000)
    } else {
        format!("{period_ns}ns")
    }
}

/// Splits `name+0x12` into the name and the offset.
fn split_offset(text: &str) -> Result<(String, Option<u64>), String> {
    let Some((name, offset)) = text.rsplit_once('+') else {
        return Ok((text.to_string(), None));
    };
    let parsed = match offset
        .strip_prefix("0x")
        .or_else(|| offset.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => offset.parse::<u64>().ok(),
    };
    match parsed {
        Some(value) if !name.is_empty() && !is_glob(name) => Ok((name.to_string(), Some(value))),
        Some(_) if is_glob(name) => Err("an offset needs one function, not a wildcard".to_string()),
        _ => Err(format!(
            "`{offset}` is not an offset (write name+0x12 or name+18)"
        )),
    }
}

/// The value of a constant expression (literals and arithmetic on them).
pub(crate) fn const_eval(expr: &ast::Expr) -> Option<ConstValue> {
    use ast::{BinaryOp as B, UnaryOp as U};
    match &expr.kind {
        ExprKind::Int(value) => Some(match i64::try_from(*value) {
            Ok(signed) => ConstValue::Signed(signed),
            Err(_) => ConstValue::Unsigned(*value),
        }),
        ExprKind::Str(value) => Some(ConstValue::Str(value.clone())),
        ExprKind::Bool(value) => Some(ConstValue::Bool(*value)),
        ExprKind::Unary { op, operand } => {
            let value = const_int(operand)?;
            Some(ConstValue::Signed(match op {
                U::Negate => value.wrapping_neg(),
                U::BitNot => !value,
                U::Not => i64::from(value == 0),
                _ => return None,
            }))
        }
        ExprKind::Binary { op, lhs, rhs } => {
            let (a, b) = (const_int(lhs)?, const_int(rhs)?);
            Some(ConstValue::Signed(match op {
                B::Add => a.wrapping_add(b),
                B::Sub => a.wrapping_sub(b),
                B::Mul => a.wrapping_mul(b),
                B::Div => a.checked_div(b)?,
                B::Rem => a.checked_rem(b)?,
                B::BitAnd => a & b,
                B::BitOr => a | b,
                B::BitXor => a ^ b,
                B::Shl => a.checked_shl(u32::try_from(b).ok()?)?,
                B::Shr => a.checked_shr(u32::try_from(b).ok()?)?,
                B::Eq => i64::from(a == b),
                B::Ne => i64::from(a != b),
                B::Lt => i64::from(a < b),
                B::Le => i64::from(a <= b),
                B::Gt => i64::from(a > b),
                B::Ge => i64::from(a >= b),
                B::And => i64::from(a != 0 && b != 0),
                B::Or => i64::from(a != 0 || b != 0),
            }))
        }
        _ => None,
    }
}

/// The value of a constant integer expression.
pub(crate) fn const_int(expr: &ast::Expr) -> Option<i64> {
    match const_eval(expr)? {
        ConstValue::Signed(value) => Some(value),
        ConstValue::Unsigned(value) => Some(value as i64),
        ConstValue::Bool(value) => Some(i64::from(value)),
        ConstValue::Str(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::DemoKernel;
    use crate::source::FileId;

    /// A program the verifier refuses becomes `E0901`, with the rule in a note.
    #[test]
    fn verifier_refusal_is_an_internal_error() {
        let sources = Sources::new();
        let kernel = DemoKernel::new();
        let options = CompileOptions::default();
        let mut compiler = Compiler {
            resolver: &kernel,
            options: &options,
            sources: &sources,
            functions: HashMap::new(),
            aliases: HashMap::new(),
            maps: Vec::new(),
            records: Vec::new(),
            diagnostics: Diagnostics::default(),
        };
        let jump_back = probe_port_protocol::asm::assemble("ja -1\nexit").unwrap();
        let span = Span::new(FileId(0), 0..5);
        compiler.verify(span, &jump_back, ProgramKind::Probe, &[]);
        let diagnostics = compiler.diagnostics.into_vec();
        assert_eq!(diagnostics.len(), 1);
        assert_eq!(diagnostics[0].code, diagnostic::INTERNAL);
        assert!(diagnostics[0].notes[0].contains("rule 9 (jump-backward)"));
    }

    #[test]
    fn offsets_split_from_names() {
        assert_eq!(split_offset("f+0x12"), Ok(("f".to_string(), Some(0x12))));
        assert_eq!(split_offset("f+18"), Ok(("f".to_string(), Some(18))));
        assert_eq!(split_offset("f"), Ok(("f".to_string(), None)));
        assert!(split_offset("f*+1").is_err());
        assert!(split_offset("f+x").is_err());
    }

    #[test]
    fn periods_read_naturally() {
        assert_eq!(describe_period(1_000_000_000), "1s");
        assert_eq!(describe_period(250_000_000), "250ms");
        assert_eq!(describe_period(5_000), "5us");
        assert_eq!(describe_period(333), "333ns");
    }
}
