//! Numbered error codes of the port.
//!
//! # Design
//!
//! An error code is a plain `u16` on the wire, wrapped in [`ErrorCode`] so that a
//! client can still print a code that a newer stub sends and it does not know.
//! Numbers are fixed forever; new errors get new numbers.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A numbered error of the probe port.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $name:ident = $value:literal, $text:literal;)*) => {
        impl ErrorCode {
            $($(#[doc = $doc])* pub const $name: ErrorCode = ErrorCode($value);)*

            /// Every code this version knows, in number order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code's constant name (`BYTES_MISMATCH`), if known.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// A short description, if known.
            pub const fn description(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($text),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    /// The request could not be decoded (bad postcard, field out of range).
    MALFORMED = 1, "malformed request";
    /// The request kind is unknown to this stub (a newer client).
    UNKNOWN_REQUEST = 2, "unknown request kind";
    /// No protocol version is common to both sides.
    VERSION = 3, "no common protocol version";
    /// The sender does not hold the right to use the port.
    NOT_PRIVILEGED = 4, "not privileged";
    /// A request other than `Hello` arrived before the handshake.
    NO_HANDSHAKE = 5, "handshake required first";
    /// The request does not fit the session's state (e.g. `Start` twice).
    BAD_STATE = 6, "not allowed in the current state";
    /// No probe has this number.
    UNKNOWN_PROBE = 7, "unknown probe";
    /// No map has this number.
    UNKNOWN_MAP = 8, "unknown map";
    /// No static marker has this index.
    UNKNOWN_MARKER = 9, "unknown marker";
    /// The address is not the start of an instruction.
    NOT_INSN_BOUNDARY = 10, "address is not an instruction boundary";
    /// The bytes at the address differ from the bytes the client expected.
    BYTES_MISMATCH = 11, "kernel text differs from the expected bytes";
    /// The address belongs to the stub, the trap path or the platform's blacklist.
    FORBIDDEN_ADDRESS = 12, "address may not be probed";
    /// A probe of this kind is already armed at the address.
    ALREADY_PROBED = 13, "address already probed";
    /// The handler program failed verification (detail: instruction index and rule).
    PROGRAM_REJECTED = 14, "handler program rejected";
    /// A limit was reached (probes, maps, memory budget, program size).
    NO_SPACE = 15, "limit reached";
    /// The stub does not support this site kind or feature.
    UNSUPPORTED = 16, "unsupported";
    /// A field has a value outside its allowed range.
    INVALID_ARGUMENT = 17, "invalid argument";
    /// Reading kernel memory faulted (detail: the address).
    FAULT = 18, "memory fault";
    /// The instruction at the address cannot be executed out of line.
    UNRELOCATABLE = 19, "instruction cannot be executed out of line";
    /// A map with this number already exists.
    MAP_EXISTS = 20, "map already defined";
}

impl ErrorCode {
    /// Whether this version knows the code.
    pub const fn is_known(self) -> bool {
        self.name().is_some()
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "ErrorCode::{name}"),
            None => write!(f, "ErrorCode({})", self.0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.description() {
            Some(text) => write!(f, "{text} (error {})", self.0),
            None => write!(f, "unknown error {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_and_named() {
        for (position, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.0 as usize, position + 1);
            assert!(code.is_known());
        }
        assert!(!ErrorCode(999).is_known());
        assert_eq!(format!("{}", ErrorCode(999)), "unknown error 999");
        assert_eq!(format!("{:?}", ErrorCode::FAULT), "ErrorCode::FAULT");
    }
}
