//! Static marker sites: `trace_marker!`, the kernel's side of the stub's markers.
//!
//! # Design
//!
//! A marker names a point of semantic interest (`ipc:send`, `vm:fault`, ...) and the
//! typed values available there, like `sys/sdt.h` probes:
//!
//! ```text
//! trace_marker!("ipc:send", port: U32 = port.0, id: U32 = message.id, size: U32 = message.size);
//! ```
//!
//! The macro is `kernel_stub::marker!` under the kernel's own name: a `static`
//! marker site in the `probeport_markers` section (which `kernel.ld` keeps, between
//! `__start_probeport_markers` and `__stop_probeport_markers`, for the platform's
//! marker table) and a test of its enable flag. Types are `U8`, `U16`, `U32`, `U64`,
//! `I8`, `I16`, `I32`, `I64`, `Bool`, `Pointer`, `String`. Disabled (no probe armed
//! on it, or the session not started) a marker costs one load and a branch not
//! taken, and **no argument is evaluated**, so its expressions must not carry side
//! effects the kernel relies on. Enabled, it evaluates its arguments and runs the
//! probe's handler through the stub.
//!
//! The kernel's marker sites (names, arguments, where they fire):
//!
//! | marker         | arguments                                       | fires when             |
//! |----------------|-------------------------------------------------|------------------------|
//! | `ipc:send`     | `port: U32, id: U32, size: U32, tid: U32`       | a message is queued    |
//! | `ipc:receive`  | `port: U32, id: U32, size: U32, tid: U32`       | a message is dequeued  |
//! | `vm:fault`     | `address: U64, write: Bool, major: Bool`        | a fault is resolved    |
//! | `sched:switch` | `prev: U32, next: U32, cpu: U32`                | any context switch     |
//! | `sys:enter`    | `number: U32, arg0: U64, arg1: U64, tid: U32`   | any syscall-like call  |

/// A static marker site (see the module docs): `kernel_stub::marker!`.
macro_rules! trace_marker {
    ($($tokens:tt)*) => {
        ::kernel_stub::marker!($($tokens)*)
    };
}

pub(crate) use trace_marker;

#[cfg(test)]
mod tests {
    // The macro is in textual scope here (defined above in this file).
    #[test]
    fn markers_evaluate_no_argument() {
        let mut evaluated = 0;
        let mut count = || {
            evaluated += 1;
            7u32
        };
        trace_marker!("test:marker", value: U32 = count(), flag: Bool = true);
        trace_marker!("test:empty");
        trace_marker!("test:trailing", address: U64 = 1u64,);
        let _ = &mut count;
        assert_eq!(evaluated, 0);
    }
}
