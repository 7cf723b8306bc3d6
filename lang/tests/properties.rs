//! Bounded property tests (the proptest twins of the fuzz targets in `lang/fuzz`),
//! and a differential test of integer expressions: the compiled program, run by the
//! stub's interpreter, computes what a direct evaluation in Rust computes.

use kernel_stub::interpreter::{EntrySaveError, Fault, Full, Helpers, run};
use lang::compiled::RecordKind;
use lang::fake::{self, DemoKernel};
use lang::format::format_record;
use lang::parser::parse;
use lang::source::{FileId, Sources};
use lang::{CompileOptions, compile};
use probe_port_protocol::context::ProbeContext;
use probe_port_protocol::maps::{MapId, MapSpec};
use proptest::prelude::*;

/// 256 cases per property, or `PROPTEST_CASES` for longer runs.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256)
}

/// Words that make scripts the parser gets far into.
const VOCABULARY: &[&str] = &[
    "probe",
    "alias",
    "function",
    "let",
    "if",
    "else",
    "return",
    "true",
    "false",
    "struct",
    "kernel.function(\"port_send\")",
    "kernel.marker(\"ipc:send\")",
    ".return",
    "begin",
    "end",
    "timer.s(1)",
    "ipc.send",
    "$right",
    "$message",
    "$$parms",
    "$return",
    "@m",
    "@",
    "@entry",
    "x",
    "y",
    "cpu",
    "tid",
    "comm",
    "nsecs",
    "probefunc",
    "kstack",
    "count()",
    "sum",
    "hist",
    "lhist",
    "printf",
    "str",
    "reg(\"rdi\")",
    "\"%d\\n\"",
    "\"s\"",
    "0",
    "1",
    "0xffffffff80200040",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ";",
    ".",
    "->",
    "::",
    ":",
    "?",
    "=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "<<",
    ">>",
    "+",
    "-",
    "*",
    "/",
    "%",
    "&",
    "&&",
    "|",
    "||",
    "^",
    "!",
    "~",
    "+=",
    "++",
    "(u64 *)",
    "(struct Message *)",
    "size",
    "id",
    "payload",
    "name",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(VOCABULARY), 0..60).prop_map(|words| words.join(" "))
}

fn compile_text(text: &str) -> (bool, Vec<lang::diagnostic::Diagnostic>, Sources) {
    let mut sources = Sources::new();
    sources.add_script("property.probe", text);
    lang::tapset::add_builtin(&mut sources);
    let (result, diagnostics) = compile(&sources, &DemoKernel::new(), &CompileOptions::default());
    (result.is_some(), diagnostics, sources)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Any text: the parser terminates, is deterministic, and keeps spans inside.
    #[test]
    fn parser_survives_any_text(text in "\\PC{0,200}") {
        let (script, diagnostics) = parse(FileId(0), &text);
        let (again, _) = parse(FileId(0), &text);
        prop_assert_eq!(&script, &again);
        for diagnostic in &diagnostics {
            for label in &diagnostic.labels {
                prop_assert!(label.span.end as usize <= text.len());
            }
        }
    }

    /// Token soup through the whole compiler: no panic, no internal error.
    #[test]
    fn compiler_survives_token_soup(text in token_soup()) {
        let (_, diagnostics, sources) = compile_text(&text);
        prop_assert!(
            diagnostics.iter().all(|d| d.code != lang::diagnostic::INTERNAL),
            "{}", lang::diagnostic::render(&sources, &diagnostics)
        );
        // Rendering never fails either.
        let _ = lang::diagnostic::render(&sources, &diagnostics);
    }

    /// Token soup inside a probe body gets much further into the checker.
    #[test]
    fn compiler_survives_bodies(body in token_soup()) {
        let text = format!("probe kernel.function(\"port_send\") {{ {body} }}");
        let (_, diagnostics, sources) = compile_text(&text);
        prop_assert!(
            diagnostics.iter().all(|d| d.code != lang::diagnostic::INTERNAL),
            "{}", lang::diagnostic::render(&sources, &diagnostics)
        );
    }
}

// ----- the differential test -----

/// An unsigned integer expression over the three u64 arguments of `dispatch`.
#[derive(Debug, Clone)]
enum Expr {
    Literal(u64),
    Arg(usize),
    Binary(&'static str, Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Conditional(Box<Expr>, Box<Expr>, Box<Expr>),
}

const OPERATORS: &[&str] = &[
    "+", "-", "*", "/", "%", "&", "|", "^", "<<", ">>", "==", "!=", "<", "<=", ">", ">=", "&&",
    "||",
];

fn expression() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        prop_oneof![
            0u64..20,
            Just(u64::MAX),
            Just(1 << 40),
            any::<u32>().prop_map(u64::from)
        ]
        .prop_map(Expr::Literal),
        (0usize..3).prop_map(Expr::Arg),
    ];
    leaf.prop_recursive(5, 40, 3, |inner| {
        prop_oneof![
            (
                prop::sample::select(OPERATORS),
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(op, a, b)| Expr::Binary(op, Box::new(a), Box::new(b))),
            inner.clone().prop_map(|a| Expr::Not(Box::new(a))),
            (inner.clone(), inner.clone(), inner).prop_map(|(c, a, b)| Expr::Conditional(
                Box::new(c),
                Box::new(a),
                Box::new(b)
            )),
        ]
    })
}

fn source(expr: &Expr) -> String {
    match expr {
        Expr::Literal(value) => value.to_string(),
        Expr::Arg(index) => format!("$arg{index}"),
        Expr::Binary(op, a, b) => format!("({} {op} {})", source(a), source(b)),
        Expr::Not(a) => format!("!{}", source(a)),
        Expr::Conditional(c, a, b) => format!("({} ? {} : {})", source(c), source(a), source(b)),
    }
}

/// How the language types a value (see `LANGUAGE.md`, "Integers"): arguments are
/// unsigned, literals up to `i64::MAX` take the signedness of the other operand,
/// comparisons and logic give booleans.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Signed,
    Unsigned,
    Bool,
}

fn flexible(expr: &Expr) -> bool {
    matches!(expr, Expr::Literal(value) if *value <= i64::MAX as u64)
}

/// What the compiled program computes: the language's typing rules on top of the
/// handler ISA's semantics (division by zero gives 0, modulo by zero keeps the
/// dividend, register shift amounts are masked to 63).
fn evaluate(expr: &Expr, args: [u64; 3]) -> (u64, Kind) {
    match expr {
        Expr::Literal(value) => (
            *value,
            if *value <= i64::MAX as u64 {
                Kind::Signed
            } else {
                Kind::Unsigned
            },
        ),
        Expr::Arg(index) => (args[*index], Kind::Unsigned),
        Expr::Not(a) => (u64::from(evaluate(a, args).0 == 0), Kind::Bool),
        Expr::Conditional(c, a, b) => {
            let (x, x_kind) = evaluate(a, args);
            let (y, y_kind) = evaluate(b, args);
            let kind = match (x_kind, y_kind) {
                (Kind::Bool, Kind::Bool) => Kind::Bool,
                (Kind::Signed, Kind::Signed) => Kind::Signed,
                _ => Kind::Unsigned,
            };
            (if evaluate(c, args).0 != 0 { x } else { y }, kind)
        }
        Expr::Binary(op, a, b) => {
            let (x, x_kind) = evaluate(a, args);
            let (y, y_kind) = evaluate(b, args);
            let signed =
                (flexible(a) || x_kind == Kind::Signed) && (flexible(b) || y_kind == Kind::Signed);
            let (sx, sy) = (x as i64, y as i64);
            let truth = |value: bool| (u64::from(value), Kind::Bool);
            let number = |value: u64| (value, if signed { Kind::Signed } else { Kind::Unsigned });
            match *op {
                "+" => number(x.wrapping_add(y)),
                "-" => number(x.wrapping_sub(y)),
                "*" => number(x.wrapping_mul(y)),
                "/" if signed => number(if sy == 0 {
                    0
                } else {
                    sx.wrapping_div(sy) as u64
                }),
                "/" => number(x.checked_div(y).unwrap_or(0)),
                "%" if signed => number(if sy == 0 {
                    x
                } else {
                    sx.wrapping_rem(sy) as u64
                }),
                "%" => number(x.checked_rem(y).unwrap_or(x)),
                "&" => number(x & y),
                "|" => number(x | y),
                "^" => number(x ^ y),
                "<<" => number(x << (y & 63)),
                ">>" if x_kind == Kind::Signed => number((sx >> (y & 63)) as u64),
                ">>" => number(x >> (y & 63)),
                "==" => truth(x == y),
                "!=" => truth(x != y),
                "<" if signed => truth(sx < sy),
                "<=" if signed => truth(sx <= sy),
                ">" if signed => truth(sx > sy),
                ">=" if signed => truth(sx >= sy),
                "<" => truth(x < y),
                "<=" => truth(x <= y),
                ">" => truth(x > y),
                ">=" => truth(x >= y),
                "&&" => truth(x != 0 && y != 0),
                "||" => truth(x != 0 || y != 0),
                _ => unreachable!(),
            }
        }
    }
}

/// Helpers that only emit (the expressions read nothing else).
struct Recorder {
    records: Vec<Vec<u8>>,
}

impl Helpers for Recorder {
    fn read_kernel(&mut self, _dst: &mut [u8], src: u64) -> Result<(), Fault> {
        Err(Fault { address: src })
    }
    fn read_kernel_str(&mut self, _dst: &mut [u8], src: u64) -> Result<usize, Fault> {
        Err(Fault { address: src })
    }
    fn cpu(&mut self) -> u64 {
        0
    }
    fn task_id(&mut self) -> u64 {
        1
    }
    fn task_name(&mut self, _dst: &mut [u8]) -> usize {
        0
    }
    fn time_ns(&mut self) -> u64 {
        0
    }
    fn map_spec(&self, _map: MapId) -> Option<MapSpec> {
        None
    }
    fn map_lookup(&mut self, _map: MapId, _key: &[u8], _value: &mut [u8]) -> bool {
        false
    }
    fn map_update(&mut self, _map: MapId, _key: &[u8], _value: &[u8]) -> Result<(), Full> {
        Err(Full)
    }
    fn map_delete(&mut self, _map: MapId, _key: &[u8]) -> bool {
        false
    }
    fn aggregate(&mut self, _map: MapId, _key: &[u8], _value: i64) -> Result<(), Full> {
        Err(Full)
    }
    fn emit(&mut self, record: &[u8]) -> Result<(), Full> {
        self.records.push(record.to_vec());
        Ok(())
    }
    fn stack_trace(&mut self, _dst: &mut [u8]) -> usize {
        0
    }
    fn entry_save(&mut self, _slot: usize, _value: u64) -> Result<(), EntrySaveError> {
        Err(EntrySaveError::NotEntryProgram)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn integer_expressions_compute_what_rust_computes(
        expr in expression(),
        args in prop::array::uniform3(prop_oneof![0u64..10, any::<u64>()]),
    ) {
        let text = format!(
            "probe kernel.function(\"demo_kernel::sys::dispatch\") {{ printf(\"%u\", {}); }}",
            source(&expr)
        );
        let (compiled, diagnostics, sources) = compile_text(&text);
        prop_assert!(compiled, "{}\n{}", text, lang::diagnostic::render(&sources, &diagnostics));
        let mut sources = Sources::new();
        sources.add_script("property.probe", text.as_str());
        let (script, _) = compile(&sources, &DemoKernel::new(), &CompileOptions::default());
        let script = script.unwrap();
        let attachment = script.attachments().next().unwrap();
        let mut context = ProbeContext::default();
        context.slots[fake::RSI as usize] = args[0];
        context.slots[fake::RDX as usize] = args[1];
        context.slots[fake::RCX as usize] = args[2];
        let mut recorder = Recorder { records: Vec::new() };
        run(&attachment.program, &context, &mut recorder).expect("no trap");
        prop_assert_eq!(recorder.records.len(), 1);
        let format = script.record_of(&recorder.records[0]).unwrap();
        prop_assert!(matches!(format.kind, RecordKind::Printf(_)));
        let printed = format_record(format, &recorder.records[0], &|_| None);
        prop_assert_eq!(printed, evaluate(&expr, args).0.to_string(), "{}", text);
    }
}
