//! The kernel command line (`-append` in QEMU, carried by the PVH start info).
//!
//! # Design
//!
//! Whitespace-separated words; the kernel's own options are prefixed with `demo.` so
//! they cannot collide with anything a later kernel passes. Unknown or malformed words
//! are reported to the caller (the kernel prints them) and otherwise ignored.
//!
//! | word                  | effect                                                       |
//! |-----------------------|--------------------------------------------------------------|
//! | `demo.panic`          | panic on purpose after bring-up (tests the FAIL path)        |
//! | `demo.hang`           | never print a verdict (tests the harness timeout)            |
//! | `demo.com2=off`       | no relay thread: COM2 is left alone                          |
//! | `demo.rounds=N`       | rounds of the workload ([`DEFAULT_ROUNDS`] by default)        |
//! | `demo.wait_start`     | the workload waits for `workload::release()`                 |
//! | `demo.exit_when_done` | `VERDICT: PASS` as soon as the workload is done              |
//! | `demo.intruder`       | a thread without the right tries to submit to the probe port |
//! | `demo.bench`          | run the in-kernel probe benchmark instead of the workload    |
//! | `demo.bench=instructions` | the same, labelled in guest instructions (QEMU `-icount`) |

/// Workload rounds when the command line does not say.
pub(crate) const DEFAULT_ROUNDS: u32 = 1000;

/// What the command line asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Options {
    /// `demo.panic`: panic once the CPUs are up.
    pub(crate) panic: bool,
    /// `demo.hang`: run, but never print a verdict.
    pub(crate) hang: bool,
    /// Start the relay thread on COM2 (on unless `demo.com2=off`).
    pub(crate) com2_relay: bool,
    /// `demo.rounds=N`: how many rounds each workload client runs.
    pub(crate) rounds: u32,
    /// `demo.wait_start`: park the workload until `workload::release()`.
    pub(crate) wait_start: bool,
    /// `demo.exit_when_done`: pass as soon as the workload is done, whatever the relay
    /// does.
    pub(crate) exit_when_done: bool,
    /// `demo.intruder`: start a thread that tries the probe port without the right.
    pub(crate) intruder: bool,
    /// `demo.bench`: run the probe benchmark (`bench.rs`) instead of the workload.
    pub(crate) bench: bool,
    /// `demo.bench=instructions`: the benchmark runs under QEMU's `-icount shift=0`,
    /// where the TSC counts guest instructions; its figures say so.
    pub(crate) bench_instructions: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            panic: false,
            hang: false,
            com2_relay: true,
            rounds: DEFAULT_ROUNDS,
            wait_start: false,
            exit_when_done: false,
            intruder: false,
            bench: false,
            bench_instructions: false,
        }
    }
}

impl Options {
    /// Parses `cmdline`, calling `unknown` for every word it does not know (or whose
    /// value it cannot read).
    pub(crate) fn parse(cmdline: &str, mut unknown: impl FnMut(&str)) -> Options {
        let mut options = Options::default();
        for word in cmdline.split_ascii_whitespace() {
            match word {
                "demo.panic" => options.panic = true,
                "demo.hang" => options.hang = true,
                "demo.com2=off" => options.com2_relay = false,
                "demo.com2=on" => options.com2_relay = true,
                "demo.wait_start" => options.wait_start = true,
                "demo.exit_when_done" => options.exit_when_done = true,
                "demo.intruder" => options.intruder = true,
                "demo.bench" => options.bench = true,
                "demo.bench=instructions" => {
                    options.bench = true;
                    options.bench_instructions = true;
                }
                other => match other.strip_prefix("demo.rounds=").map(str::parse::<u32>) {
                    Some(Ok(rounds)) if rounds > 0 => options.rounds = rounds,
                    _ => unknown(other),
                },
            }
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_command_line_gives_the_defaults() {
        let options = Options::parse("", |word| panic!("unexpected unknown word {word}"));
        assert_eq!(options, Options::default());
        assert!(options.com2_relay);
        assert_eq!(options.rounds, DEFAULT_ROUNDS);
    }

    #[test]
    fn known_words_set_options_and_unknown_words_are_reported() {
        let mut unknown = Vec::new();
        let options = Options::parse(
            "  demo.panic console=ttyS0\tdemo.com2=off demo.hang demo.rounds=37 \
             demo.wait_start demo.exit_when_done demo.intruder demo.bench ",
            |word| unknown.push(word.to_owned()),
        );
        assert_eq!(
            options,
            Options {
                panic: true,
                hang: true,
                com2_relay: false,
                rounds: 37,
                wait_start: true,
                exit_when_done: true,
                intruder: true,
                bench: true,
                bench_instructions: false,
            }
        );
        assert_eq!(unknown, ["console=ttyS0"]);
    }

    #[test]
    fn bad_round_counts_are_reported_and_ignored() {
        let mut unknown = Vec::new();
        let options = Options::parse("demo.rounds=0 demo.rounds=x demo.rounds=", |word| {
            unknown.push(word.to_owned())
        });
        assert_eq!(options.rounds, DEFAULT_ROUNDS);
        assert_eq!(unknown, ["demo.rounds=0", "demo.rounds=x", "demo.rounds="]);
    }
}
