//! The COM2 echo session: today's stand-in for the stub's byte-level server.
//!
//! # Design
//!
//! Until the probe stub is embedded, the relay proves the wire both ways with this
//! session: it greets with [`HELLO`] as one line, collects one line from the host and
//! sends it back prefixed with [`ECHO_PREFIX`]; then the session is over. Its shape is
//! the stub's: bytes in through [`EchoSession::serve_bytes`], bytes out through a
//! `write` callback, no knowledge of where the bytes come from. Plain code, unit-tested
//! on the host.

use core::fmt;

/// The first line the kernel sends on COM2.
pub(crate) const HELLO: &[u8] = b"probeport demo-kernel: COM2 hello";
/// Prefix of the line the kernel sends back.
pub(crate) const ECHO_PREFIX: &[u8] = b"echo: ";
/// Longest line the session accepts.
pub(crate) const LINE_CAPACITY: usize = 256;

/// Where the session is after some input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// More input is needed.
    Continue,
    /// The line was echoed (its length, without the newline); the session is over.
    Finished { echoed: usize },
}

/// Why the session failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EchoError {
    /// The line does not fit [`LINE_CAPACITY`].
    TooLong,
}

impl fmt::Display for EchoError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EchoError::TooLong => write!(formatter, "line longer than {LINE_CAPACITY} bytes"),
        }
    }
}

/// One hello/echo exchange (see the module docs).
pub(crate) struct EchoSession {
    line: [u8; LINE_CAPACITY],
    length: usize,
    finished: bool,
}

impl EchoSession {
    pub(crate) const fn new() -> EchoSession {
        EchoSession {
            line: [0; LINE_CAPACITY],
            length: 0,
            finished: false,
        }
    }

    /// Sends the greeting.
    pub(crate) fn start(&mut self, write: &mut dyn FnMut(&[u8])) {
        write(HELLO);
        write(b"\n");
    }

    /// Consumes bytes from the host; once a whole line arrived (`\n`; a `\r` is
    /// dropped), echoes it. Input after the line is ignored.
    pub(crate) fn serve_bytes(
        &mut self,
        input: &[u8],
        write: &mut dyn FnMut(&[u8]),
    ) -> Result<Progress, EchoError> {
        if self.finished {
            return Ok(Progress::Finished {
                echoed: self.length,
            });
        }
        for &byte in input {
            match byte {
                b'\n' => {
                    self.finished = true;
                    write(ECHO_PREFIX);
                    write(&self.line[..self.length]);
                    write(b"\n");
                    return Ok(Progress::Finished {
                        echoed: self.length,
                    });
                }
                b'\r' => {}
                _ if self.length == LINE_CAPACITY => return Err(EchoError::TooLong),
                _ => {
                    self.line[self.length] = byte;
                    self.length += 1;
                }
            }
        }
        Ok(Progress::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greets_then_echoes_one_line_fed_in_pieces() {
        let mut output = Vec::new();
        let mut session = EchoSession::new();
        session.start(&mut |bytes| output.extend_from_slice(bytes));
        assert_eq!(output, b"probeport demo-kernel: COM2 hello\n");
        output.clear();
        let mut write = |bytes: &[u8]| output.extend_from_slice(bytes);
        assert_eq!(
            session.serve_bytes(b"ping ", &mut write),
            Ok(Progress::Continue)
        );
        assert_eq!(
            session.serve_bytes(b"12\r", &mut write),
            Ok(Progress::Continue)
        );
        assert_eq!(
            session.serve_bytes(b"34\nignored", &mut write),
            Ok(Progress::Finished { echoed: 9 })
        );
        assert_eq!(
            session.serve_bytes(b"more\n", &mut write),
            Ok(Progress::Finished { echoed: 9 })
        );
        assert_eq!(output, b"echo: ping 1234\n");
    }

    #[test]
    fn an_overlong_line_is_an_error() {
        let mut session = EchoSession::new();
        let long = [b'x'; LINE_CAPACITY + 1];
        assert_eq!(
            session.serve_bytes(&long, &mut |_| panic!("nothing is echoed")),
            Err(EchoError::TooLong)
        );
    }
}
