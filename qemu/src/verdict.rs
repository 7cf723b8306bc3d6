//! The verdict line a guest prints on its console.
//!
//! # Design
//!
//! A guest ends its run with exactly one line `VERDICT: PASS` or
//! `VERDICT: FAIL <reason>`. Anything else that starts with `VERDICT:` is malformed; a
//! missing line and a second line are errors too, because either means the run cannot
//! be trusted (a crash before the end, or a failure path racing a success path).

use std::fmt;

const PREFIX: &str = "VERDICT:";

/// What the guest said about its run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `VERDICT: PASS`.
    Pass,
    /// `VERDICT: FAIL <reason>`, with the reason.
    Fail(String),
}

/// Why no verdict could be read from a console log.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerdictProblem {
    /// No line starts with `VERDICT:`.
    Missing,
    /// More than one line starts with `VERDICT:`; all of them, in order.
    Duplicate(Vec<String>),
    /// A `VERDICT:` line that is neither `PASS` nor `FAIL <reason>`.
    Malformed(String),
}

impl fmt::Display for VerdictProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerdictProblem::Missing => formatter.write_str("the console has no VERDICT line"),
            VerdictProblem::Duplicate(lines) => {
                write!(
                    formatter,
                    "the console has {} VERDICT lines: {}",
                    lines.len(),
                    lines.join(" | ")
                )
            }
            VerdictProblem::Malformed(line) => write!(formatter, "malformed verdict line {line:?}"),
        }
    }
}

/// Reads the one verdict line of a console log.
pub fn parse(console: &str) -> Result<Verdict, VerdictProblem> {
    let lines: Vec<&str> = console
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| line.starts_with(PREFIX))
        .collect();
    match lines.as_slice() {
        [] => Err(VerdictProblem::Missing),
        [line] => parse_line(line),
        _ => Err(VerdictProblem::Duplicate(
            lines.iter().map(|line| (*line).to_owned()).collect(),
        )),
    }
}

fn parse_line(line: &str) -> Result<Verdict, VerdictProblem> {
    let rest = &line[PREFIX.len()..];
    if rest == " PASS" {
        return Ok(Verdict::Pass);
    }
    match rest.strip_prefix(" FAIL ") {
        Some(reason) if !reason.trim().is_empty() => Ok(Verdict::Fail(reason.trim().to_owned())),
        _ => Err(VerdictProblem::Malformed(line.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_and_fail_lines_are_read() {
        assert_eq!(parse("boot\r\nVERDICT: PASS\r\n"), Ok(Verdict::Pass));
        assert_eq!(
            parse("x\nVERDICT: FAIL timer: no ticks\n"),
            Ok(Verdict::Fail("timer: no ticks".to_owned()))
        );
    }

    #[test]
    fn missing_duplicate_and_malformed_verdicts_are_rejected() {
        assert_eq!(parse("booting\nsomething\n"), Err(VerdictProblem::Missing));
        assert_eq!(parse(""), Err(VerdictProblem::Missing));
        assert_eq!(
            parse("VERDICT: PASS\nVERDICT: FAIL late panic\n"),
            Err(VerdictProblem::Duplicate(vec![
                "VERDICT: PASS".to_owned(),
                "VERDICT: FAIL late panic".to_owned()
            ]))
        );
        assert_eq!(
            parse("VERDICT: PASSED\n"),
            Err(VerdictProblem::Malformed("VERDICT: PASSED".to_owned()))
        );
        assert_eq!(
            parse("VERDICT: FAIL \n"),
            Err(VerdictProblem::Malformed("VERDICT: FAIL ".to_owned()))
        );
    }

    #[test]
    fn verdict_must_start_the_line() {
        assert_eq!(
            parse("Booting from ROM..VERDICT: PASS\n"),
            Err(VerdictProblem::Missing)
        );
    }
}
