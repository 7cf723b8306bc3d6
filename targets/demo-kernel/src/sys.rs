//! The syscall-like interface: numbered calls with register-sized arguments.
//!
//! # Design
//!
//! The kernel has no user mode, but its workload threads behave like tasks: they ask
//! the kernel for services through one entry point, [`dispatch`], with a call number
//! and three 64-bit arguments, as a `syscall` instruction would pass them in
//! registers. Pointers travel as integers and are checked (non-null, aligned) before
//! use. Every call is counted ([`SYSCALLS`]) and passes the `sys:enter` marker.
//!
//! | number | call             | arguments                                   | returns        |
//! |--------|------------------|---------------------------------------------|----------------|
//! | 1      | [`SYS_YIELD`]    | —                                           | 0              |
//! | 2      | [`SYS_SEND`]     | right name, `*const Message`                | 0              |
//! | 3      | [`SYS_RECEIVE`]  | right name, `*mut Message` (filled)         | the message id |
//! | 4      | [`SYS_TOUCH`]    | address, access (0 read, 1 write), value    | the value      |
//! | 5      | [`SYS_GETTID`]   | —                                           | the thread id  |
//!
//! The small wrappers ([`send`], [`receive`], ...) are what the workload calls; they
//! only marshal arguments.
//!
//! # Invariants
//!
//! - Every call, valid or not, passes the marker and the counter exactly once.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::ipc::{self, IpcError, Message, RightName};
use crate::marker::trace_marker;
use crate::sched;
use crate::vm::{self, Access, FaultError};

/// Give the CPU to the next ready thread.
pub(crate) const SYS_YIELD: u32 = 1;
/// Send a message on a port.
pub(crate) const SYS_SEND: u32 = 2;
/// Receive a message from a port.
pub(crate) const SYS_RECEIVE: u32 = 3;
/// Load or store a word of the caller's simulated address space.
pub(crate) const SYS_TOUCH: u32 = 4;
/// The caller's thread id.
pub(crate) const SYS_GETTID: u32 = 5;

/// Calls made since boot.
pub(crate) static SYSCALLS: AtomicU64 = AtomicU64::new(0);

/// Why a call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum SysError {
    /// No call has this number.
    UnknownCall(u32),
    /// A pointer argument is null or misaligned.
    BadPointer(u64),
    /// An argument is out of range.
    BadArgument(u64),
    /// The caller has no address space.
    NoAddressSpace,
    /// The port operation failed.
    Ipc(IpcError),
    /// The memory access could not be resolved.
    Fault(FaultError),
}

impl fmt::Display for SysError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SysError::UnknownCall(number) => write!(formatter, "no call number {number}"),
            SysError::BadPointer(address) => write!(formatter, "bad pointer {address:#x}"),
            SysError::BadArgument(value) => write!(formatter, "bad argument {value:#x}"),
            SysError::NoAddressSpace => formatter.write_str("the thread has no address space"),
            SysError::Ipc(error) => write!(formatter, "ipc: {error}"),
            SysError::Fault(error) => write!(formatter, "fault: {error}"),
        }
    }
}

impl From<IpcError> for SysError {
    fn from(error: IpcError) -> Self {
        SysError::Ipc(error)
    }
}

impl From<FaultError> for SysError {
    fn from(error: FaultError) -> Self {
        SysError::Fault(error)
    }
}

/// `address` as a pointer to a `T`, if it is non-null and aligned.
fn checked_pointer<T>(address: u64) -> Result<*mut T, SysError> {
    if address == 0 || !address.is_multiple_of(align_of::<T>() as u64) {
        return Err(SysError::BadPointer(address));
    }
    Ok(address as *mut T)
}

/// The syscall-like entry point (see the module docs).
#[inline(never)]
pub(crate) fn dispatch(number: u32, arg0: u64, arg1: u64, arg2: u64) -> Result<u64, SysError> {
    trace_marker!(
        "sys:enter",
        number: U32 = number,
        arg0: U64 = arg0,
        arg1: U64 = arg1,
        tid: U32 = sched::current_tid()
    );
    SYSCALLS.fetch_add(1, Ordering::Relaxed);
    let right = || {
        u32::try_from(arg0)
            .map(RightName)
            .map_err(|_| SysError::BadArgument(arg0))
    };
    match number {
        SYS_YIELD => {
            sched::yield_now();
            Ok(0)
        }
        SYS_SEND => {
            let message = checked_pointer::<Message>(arg1)?;
            // SAFETY: the caller passes the address of a live `Message` it owns and
            // does not touch during the call (the callers are this kernel's threads,
            // through `send`); the pointer is non-null and aligned.
            ipc::port_send(right()?, unsafe { &*message })?;
            Ok(0)
        }
        SYS_RECEIVE => {
            let destination = checked_pointer::<Message>(arg1)?;
            let message = ipc::port_receive(right()?)?;
            // SAFETY: as for SYS_SEND, a live, writable `Message` of the caller.
            unsafe { destination.write(message) };
            Ok(u64::from(message.id))
        }
        SYS_TOUCH => {
            let access = Access::from_number(arg1).ok_or(SysError::BadArgument(arg1))?;
            let map = sched::current().address_space.load(Ordering::Acquire);
            if map.is_null() {
                return Err(SysError::NoAddressSpace);
            }
            // SAFETY: a thread's address space is owned by that thread, which is the
            // caller; it only ever uses the map through these calls, one at a time.
            Ok(vm::access(unsafe { &mut *map }, arg0, access, arg2)?)
        }
        SYS_GETTID => Ok(u64::from(sched::current_tid())),
        other => Err(SysError::UnknownCall(other)),
    }
}

/// `SYS_SEND`.
pub(crate) fn send(right: RightName, message: &Message) -> Result<(), SysError> {
    dispatch(
        SYS_SEND,
        u64::from(right.0),
        message as *const Message as u64,
        0,
    )
    .map(drop)
}

/// `SYS_RECEIVE`.
pub(crate) fn receive(right: RightName) -> Result<Message, SysError> {
    let mut message = Message::default();
    dispatch(
        SYS_RECEIVE,
        u64::from(right.0),
        &mut message as *mut Message as u64,
        0,
    )?;
    Ok(message)
}

/// `SYS_TOUCH`.
pub(crate) fn touch(address: u64, access: Access, value: u64) -> Result<u64, SysError> {
    dispatch(SYS_TOUCH, address, access as u64, value)
}

/// `SYS_YIELD`.
pub(crate) fn yield_now() -> Result<(), SysError> {
    dispatch(SYS_YIELD, 0, 0, 0).map(drop)
}
