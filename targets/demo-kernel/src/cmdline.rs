//! The kernel command line (`-append` in QEMU, carried by the PVH start info).
//!
//! # Design
//!
//! Whitespace-separated words; the kernel's own options are prefixed with `demo.` so
//! they cannot collide with anything a later kernel passes. Unknown words are reported
//! to the caller (the kernel prints them) and otherwise ignored.
//!
//! | word             | effect                                                    |
//! |------------------|-----------------------------------------------------------|
//! | `demo.panic`     | panic on purpose after bring-up (tests the FAIL path)     |
//! | `demo.hang`      | never print a verdict (tests the harness timeout)         |
//! | `demo.com2=off`  | skip the COM2 hello/echo self-check                       |

/// What the command line asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Options {
    /// `demo.panic`: panic once the CPUs are up.
    pub(crate) panic: bool,
    /// `demo.hang`: idle forever without a verdict.
    pub(crate) hang: bool,
    /// Run the COM2 hello/echo check (on unless `demo.com2=off`).
    pub(crate) com2_check: bool,
}

impl Options {
    /// Parses `cmdline`, calling `unknown` for every word it does not know.
    pub(crate) fn parse(cmdline: &str, mut unknown: impl FnMut(&str)) -> Options {
        let mut options = Options {
            com2_check: true,
            ..Options::default()
        };
        for word in cmdline.split_ascii_whitespace() {
            match word {
                "demo.panic" => options.panic = true,
                "demo.hang" => options.hang = true,
                "demo.com2=off" => options.com2_check = false,
                "demo.com2=on" => options.com2_check = true,
                other => unknown(other),
            }
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_command_line_runs_every_check() {
        let options = Options::parse("", |word| panic!("unexpected unknown word {word}"));
        assert_eq!(
            options,
            Options {
                panic: false,
                hang: false,
                com2_check: true
            }
        );
    }

    #[test]
    fn known_words_set_options_and_unknown_words_are_reported() {
        let mut unknown = Vec::new();
        let options = Options::parse(
            "  demo.panic console=ttyS0\tdemo.com2=off demo.hang ",
            |word| unknown.push(word.to_owned()),
        );
        assert_eq!(
            options,
            Options {
                panic: true,
                hang: true,
                com2_check: false
            }
        );
        assert_eq!(unknown, ["console=ttyS0"]);
    }
}
