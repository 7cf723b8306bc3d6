//! Diagnostics: what the compiler tells the user, with spans and hints.
//!
//! # Design
//!
//! Every pass pushes [`Diagnostic`]s into a list instead of stopping at the first
//! problem; the entry points return `(result, Vec<Diagnostic>)`. A diagnostic has a
//! numbered [`Code`] (listed in [`CODES`] and in `LANGUAGE.md`), a message, labelled
//! spans (the first is the primary one), an optional `help` line and notes.
//! [`render`] shows them as rustc does, through `codespan-reporting`.
//!
//! The same mistake seen at many probe sites (a wildcard matching fifty functions)
//! is reported once: `Diagnostics::push` drops exact duplicates.

use codespan_reporting::diagnostic as cr;
use codespan_reporting::term;

use crate::source::{Sources, Span};

/// How bad it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    /// The script cannot run.
    Error,
    /// The script runs, but probably not as meant.
    Warning,
}

/// A diagnostic's fixed number, such as `E0201`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Code(pub &'static str);

macro_rules! codes {
    ($($name:ident = $code:literal, $what:literal;)*) => {
        $(#[doc = $what] pub const $name: Code = Code($code);)*
        /// Every code with what it means, in number order.
        pub const CODES: &[(Code, &str)] = &[$(($name, $what)),*];
    };
}

codes! {
    UNEXPECTED_CHARACTER = "E0101", "a character that starts no token";
    UNTERMINATED_STRING = "E0102", "a string literal without its closing quote";
    UNTERMINATED_COMMENT = "E0103", "a block comment without its closing `*/`";
    BAD_ESCAPE = "E0104", "an unknown escape sequence in a string literal";
    INTEGER_TOO_LARGE = "E0105", "an integer literal that does not fit 64 bits";
    SYNTAX = "E0106", "the parser expected something else here";
    UNKNOWN_VARIABLE = "E0201", "a `$name` that is no parameter, local or marker argument at the probe";
    UNKNOWN_NAME = "E0202", "an identifier that is no local variable or builtin";
    UNKNOWN_FUNCTION = "E0203", "a call of a function that is neither builtin nor defined";
    UNKNOWN_MAP = "E0204", "a map that is read but never assigned";
    DUPLICATE_DEFINITION = "E0205", "a function or alias defined twice";
    DUPLICATE_LOCAL = "E0206", "a `let` of a name already declared in the same block";
    UNKNOWN_PROBE_POINT = "E0207", "a probe point that is neither built in nor an alias";
    UNKNOWN_TYPE = "E0208", "a type name the kernel's debuginfo does not have";
    UNKNOWN_MEMBER = "E0209", "a struct or union member that does not exist";
    UNKNOWN_REGISTER = "E0210", "a register name that is not one of the architecture's";
    RECURSION = "E0211", "a script function that calls itself (functions are inlined)";
    ALIAS_CYCLE = "E0212", "a probe alias defined in terms of itself";
    UNDECLARED_ASSIGNMENT = "E0213", "an assignment to a local never declared with `let`";
    TYPE_MISMATCH = "E0301", "operands or values of types that do not fit together";
    NOT_A_POINTER = "E0302", "`->`, `*` or `str` applied to something that is no pointer";
    NOT_A_STRUCT = "E0303", "a member access on something that is no struct or union";
    NOT_INDEXABLE = "E0304", "indexing something that is no array or pointer";
    FORMAT_MISMATCH = "E0305", "a printf argument whose type does not fit its conversion";
    FORMAT_ARGUMENT_COUNT = "E0306", "more or fewer printf arguments than conversions";
    BAD_FORMAT = "E0307", "a malformed printf format string";
    MAP_KEY_MISMATCH = "E0308", "a map used with keys of different types or counts";
    MAP_VALUE_MISMATCH = "E0309", "a map given values of different types or aggregations";
    MISPLACED_AGGREGATION = "E0310", "an aggregation function outside `@map[...] = agg(...)`, or an aggregation read";
    ARGUMENT_COUNT = "E0311", "a call with the wrong number of arguments";
    NOT_CONSTANT = "E0312", "an argument that must be a constant is not";
    NOT_A_CONDITION = "E0313", "a condition that is not an integer, boolean or pointer";
    UNSUPPORTED_TYPE = "E0314", "a value of a type the language cannot read (float, bitfield, Rust enum with data)";
    NOT_ASSIGNABLE = "E0315", "an assignment to something that is no local or map entry";
    NO_VALUE = "E0316", "a call that returns nothing, used as a value";
    STRING_COMPARISON = "E0317", "a string compared with something other than a string literal";
    LOCAL_TYPE_MISMATCH = "E0318", "a local assigned a value of another kind than its first";
    USELESS_EXPRESSION = "E0319", "an expression statement whose value is not used";
    RETURN_VALUE_IN_PROBE = "E0320", "`return` with a value in a probe (only functions return values)";
    PROBE_IN_TAPSET = "E0401", "a probe defined in a tapset (tapsets hold functions and aliases)";
    NO_MATCH = "E0402", "a probe point that matches no function, statement or marker";
    SITE_REFUSED = "E0403", "a probe address the kernel's text does not allow";
    BAD_PROBE_ARGUMENT = "E0404", "a probe point argument of the wrong kind or out of range";
    UNAVAILABLE_VARIABLE = "E0405", "a variable whose value the debuginfo cannot give at the probe";
    ENTRY_OUTSIDE_RETURN = "E0406", "`@entry(...)` outside a `.return` probe, or nested";
    RETURN_OUTSIDE_RETURN = "E0407", "`$return` outside a `.return` probe, or in a function returning nothing";
    ENTRY_VALUE_LOCATION = "E0408", "a variable that only the function's entry knows, read elsewhere";
    HOST_BLOCK = "E0409", "a statement `begin` and `end` blocks cannot run (they run in the client)";
    NO_CONTEXT = "E0410", "context (`$name`, `$$parms`) at a probe that has none (timers)";
    TOO_MANY_ENTRY_VALUES = "E0411", "more `@entry` values than the 8 entry slots";
    RESOLVER = "E0412", "the debuginfo could not answer a question about the kernel";
    STACK_EXHAUSTED = "E0501", "a handler needing more than the 512 bytes of handler stack";
    PROGRAM_TOO_LONG = "E0502", "a handler longer than the instruction limit";
    KEY_TOO_LARGE = "E0503", "a map key longer than 256 bytes";
    BAD_HISTOGRAM = "E0504", "`lhist` bounds that give no bucket or too many";
    STRING_TOO_LONG = "E0505", "a string or stack size out of range";
    INTERNAL = "E0901", "an internal compiler error (a handler the verifier refused)";
    SKIPPED_SITES = "W0401", "wildcard matches that were skipped because their address cannot be probed";
    PARAMETER_LEFT_OUT = "W0402", "a parameter that `$$parms` leaves out because it is not readable at the probe";
}

/// One labelled span.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What about it (may be empty).
    pub message: String,
}

/// One message to the user.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The fixed number.
    pub code: Code,
    /// The headline.
    pub message: String,
    /// The primary span first, then secondary ones.
    pub labels: Vec<Label>,
    /// A suggestion, shown as `= help: ...`.
    pub help: Option<String>,
    /// Further notes, shown as `= note: ...`.
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// An error with its primary span.
    pub fn error(code: Code, span: Span, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            labels: vec![Label {
                span,
                message: String::new(),
            }],
            help: None,
            notes: Vec::new(),
        }
    }

    /// A warning with its primary span.
    pub fn warning(code: Code, span: Span, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, span, message)
        }
    }

    /// Sets the primary label's text.
    pub fn label(mut self, message: impl Into<String>) -> Self {
        self.labels[0].message = message.into();
        self
    }

    /// Adds a secondary label.
    pub fn secondary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    /// Sets the help line.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// The primary span.
    pub fn span(&self) -> Span {
        self.labels[0].span
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// A de-duplicating list of diagnostics.
#[derive(Debug, Default)]
pub(crate) struct Diagnostics {
    list: Vec<Diagnostic>,
}

impl Diagnostics {
    pub(crate) fn push(&mut self, diagnostic: Diagnostic) {
        if !self.list.contains(&diagnostic) {
            self.list.push(diagnostic);
        }
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.list.iter().any(Diagnostic::is_error)
    }

    pub(crate) fn error_count(&self) -> usize {
        self.list.iter().filter(|d| d.is_error()).count()
    }

    pub(crate) fn into_vec(self) -> Vec<Diagnostic> {
        self.list
    }

    pub(crate) fn truncate(&mut self, len: usize) {
        self.list.truncate(len);
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}

fn to_codespan(diagnostic: &Diagnostic) -> cr::Diagnostic<crate::source::FileId> {
    let severity = match diagnostic.severity {
        Severity::Error => cr::Severity::Error,
        Severity::Warning => cr::Severity::Warning,
    };
    let labels = diagnostic
        .labels
        .iter()
        .enumerate()
        .map(|(index, label)| {
            let style = if index == 0 {
                cr::LabelStyle::Primary
            } else {
                cr::LabelStyle::Secondary
            };
            cr::Label::new(style, label.span.file, label.span.range())
                .with_message(label.message.clone())
        })
        .collect();
    let mut notes: Vec<String> = diagnostic
        .notes
        .iter()
        .map(|note| format!("note: {note}"))
        .collect();
    if let Some(help) = &diagnostic.help {
        notes.push(format!("help: {help}"));
    }
    cr::Diagnostic::new(severity)
        .with_code(diagnostic.code.0)
        .with_message(diagnostic.message.clone())
        .with_labels(labels)
        .with_notes(notes)
}

/// Renders diagnostics as rustc does, without colour, each followed by a blank line.
pub fn render(sources: &Sources, diagnostics: &[Diagnostic]) -> String {
    let config = term::Config::default();
    let mut text = String::new();
    for diagnostic in diagnostics {
        match term::emit_into_string(&config, sources, &to_codespan(diagnostic)) {
            Ok(rendered) => text.push_str(&rendered),
            Err(error) => text.push_str(&format!(
                "{}[{}]: {} (cannot show the source: {error})\n",
                match diagnostic.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                },
                diagnostic.code.0,
                diagnostic.message
            )),
        }
        text.push('\n');
    }
    text
}

/// Renders diagnostics with colour to a terminal-like writer (for the client).
pub fn render_to(
    writer: &mut dyn term::termcolor::WriteColor,
    sources: &Sources,
    diagnostics: &[Diagnostic],
) -> std::io::Result<()> {
    let config = term::Config::default();
    let styles = term::Styles::default();
    for diagnostic in diagnostics {
        let mut styled = term::StylesWriter::new(&mut *writer, &styles);
        term::emit_to_write_style(&mut styled, &config, sources, &to_codespan(diagnostic))
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a
/// plausible typo.
pub fn closest<'c>(name: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .filter(|candidate| *candidate != name)
        .map(|candidate| (edit_distance(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min()
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, with a transposition of neighbours counting as one edit.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut previous2: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut current = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            current[j] = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                current[j] = current[j].min(previous2[j - 2] + 1);
            }
        }
        previous2 = std::mem::replace(&mut previous, current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_sorted() {
        for pair in CODES.windows(2) {
            assert!(pair[0].0.0 < pair[1].0.0 || pair[0].0.0.starts_with('E'));
        }
        let mut seen: Vec<&str> = CODES.iter().map(|(code, _)| code.0).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), CODES.len());
    }

    #[test]
    fn typos_find_their_word() {
        assert_eq!(edit_distance("msg", "mgs"), 1);
        assert_eq!(closest("mgs", ["msg", "right"]), Some("msg"));
        assert_eq!(closest("xyz", ["message", "right"]), None);
        assert_eq!(
            closest("port_sned", ["port_send", "port_receive"]),
            Some("port_send")
        );
    }
}
