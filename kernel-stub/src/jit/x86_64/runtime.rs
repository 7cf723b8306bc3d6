//! Running compiled code: the environment, the helper dispatch, the entry.
//!
//! # Design
//!
//! A run builds a [`JitEnv`] on the machine stack and calls the code with the
//! environment's address; the code's prologue zeroes the handler-stack words the
//! program may touch (as `interpreter::run_on_stack` does). Helper calls come back
//! into Rust through [`dispatch`], monomorphised for the caller's [`Helpers`]
//! type: it rebuilds the interpreter's view of memory from the environment and
//! calls the interpreter's `call_other_helper` (`call_helper`'s body for every
//! helper but `aggregate`), so both executors check and translate helper
//! arguments with the same code. `aggregate` comes back through [`aggregate`]
//! instead, which calls the interpreter's own `aggregate` (what `call_helper`
//! calls for it) without the dispatch.
//!
//! # Invariants
//!
//! - The code only runs through [`JitProgram::run`], whose constructor's
//!   contract ties the code to a verified program and its stack depth.
//! - The dispatch function never unwinds into the compiled code: `Helpers`
//!   methods must not panic (the trait says so); if one does anyway, the
//!   `extern "sysv64"` boundary aborts instead of unwinding through code without
//!   unwind tables.

use core::ffi::c_void;
use core::fmt;
use core::mem::offset_of;

use probe_port_protocol::context::ProbeContext;
use probe_port_protocol::isa::STACK_SIZE;

use crate::interpreter::{self, Helpers, Memory, Trap, TrapKind, call_other_helper};

/// The helper-dispatch function the compiled code calls: `r1`–`r5` in the first
/// five argument registers, the environment in the sixth.
pub type DispatchFn =
    unsafe extern "sysv64" fn(u64, u64, u64, u64, u64, *mut JitEnv) -> HelperReturn;

/// What [`DispatchFn`] returns, in `rax` and `rdx`: the value for `r0`, and
/// whether the call trapped (non-zero; the trap is then in [`JitEnv::trap`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct HelperReturn {
    /// The helper's result, the new `r0`.
    pub value: u64,
    /// Non-zero when the call trapped and the program must stop.
    pub trapped: u64,
}

/// The environment of one run of compiled code: everything the code reads
/// besides its registers, at fixed offsets the code has compiled in.
#[repr(C)]
pub struct JitEnv {
    /// The probe context; `r1` on entry.
    pub context: *const ProbeContext,
    /// The address just past the handler stack; `r10`.
    pub stack_top: *mut u8,
    /// How many bytes below `stack_top` the program may use (its verified depth).
    pub stack_depth: usize,
    /// The helper-dispatch function.
    pub dispatch: DispatchFn,
    /// The `aggregate` helper, called directly (the most common call of all: the
    /// same checks and work as through [`JitEnv::dispatch`], without the
    /// dispatch).
    pub aggregate: DispatchFn,
    /// Opaque to the code: the dispatch function's state (the [`Helpers`]).
    pub helpers: *mut c_void,
    /// Written by the code before each call: `helper | slot << 16`.
    pub call_site: u64,
    /// Written by the dispatch function when a helper call traps.
    pub trap: Option<Trap>,
}

impl fmt::Debug for JitEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitEnv")
            .field("context", &self.context)
            .field("stack_top", &self.stack_top)
            .field("stack_depth", &self.stack_depth)
            .field("call_site", &self.call_site)
            .field("trap", &self.trap)
            .finish_non_exhaustive()
    }
}

pub(super) const AGGREGATE_OFFSET: i32 = offset_of!(JitEnv, aggregate) as i32;
pub(super) const CONTEXT_OFFSET: i32 = offset_of!(JitEnv, context) as i32;
pub(super) const STACK_TOP_OFFSET: i32 = offset_of!(JitEnv, stack_top) as i32;
pub(super) const DISPATCH_OFFSET: i32 = offset_of!(JitEnv, dispatch) as i32;
pub(super) const CALL_SITE_OFFSET: i32 = offset_of!(JitEnv, call_site) as i32;

/// The value the code stores in [`JitEnv::call_site`] before calling `helper`
/// from `slot`.
pub(super) const fn call_site(helper: u16, slot: u16) -> i32 {
    helper as i32 | (slot as i32) << 16
}

/// Runs one helper call for the compiled code, with the interpreter's checks.
///
/// # Safety
///
/// `env` is the environment of a run in progress of [`JitProgram::run`] with
/// helpers of type `H`: every pointer in it is live for the call.
#[unsafe(link_section = ".text.probeport")]
unsafe extern "sysv64" fn dispatch<H: Helpers + ?Sized>(
    r1: u64,
    r2: u64,
    r3: u64,
    r4: u64,
    r5: u64,
    env: *mut JitEnv,
) -> HelperReturn {
    // SAFETY: the caller's contract.
    unsafe {
        with_memory::<H>(env, |memory, helpers, helper| {
            call_other_helper(helper, &[r1, r2, r3, r4, r5], memory, helpers)
        })
    }
}

/// The `aggregate` helper for the compiled code (see [`JitEnv::aggregate`]).
///
/// # Safety
///
/// As [`dispatch`].
#[unsafe(link_section = ".text.probeport")]
unsafe extern "sysv64" fn aggregate<H: Helpers + ?Sized>(
    r1: u64,
    r2: u64,
    r3: u64,
    _r4: u64,
    _r5: u64,
    env: *mut JitEnv,
) -> HelperReturn {
    // SAFETY: the caller's contract.
    unsafe {
        with_memory::<H>(env, |memory, helpers, _| {
            interpreter::aggregate(r1, r2, r3, memory, helpers)
        })
    }
}

/// Runs `call` with the interpreter's view of the run's memory, its helpers and
/// the helper number of the call site, and turns its result into the code's.
///
/// # Safety
///
/// As [`dispatch`].
#[inline(always)]
unsafe fn with_memory<H: Helpers + ?Sized>(
    env: *mut JitEnv,
    call: impl FnOnce(&mut Memory<'_, '_>, &mut H, i32) -> Result<u64, TrapKind>,
) -> HelperReturn {
    // SAFETY: the caller's contract: `env` is the live environment of this run,
    // which nothing else borrows while the code waits for this call.
    let env = unsafe { &mut *env };
    // SAFETY: `run` stored a `*mut &mut H` here, live for the whole run.
    let helpers: &mut H = unsafe { &mut **env.helpers.cast::<&mut H>() };
    // SAFETY: `run` derived `stack_top` from its exclusive borrow of the whole
    // handler stack and `stack_depth <= STACK_SIZE`, so these are bytes of that
    // stack; the compiled code does not touch them while this call runs.
    let stack = unsafe {
        core::slice::from_raw_parts_mut(env.stack_top.sub(env.stack_depth), env.stack_depth)
    };
    // SAFETY: `run` stored a shared borrow of the context, live for the run.
    let context = unsafe { &*env.context };
    let mut memory = Memory::new(stack, context);
    let helper = (env.call_site & 0xffff) as i32;
    let slot = (env.call_site >> 16) as u32;
    match call(&mut memory, helpers, helper) {
        Ok(value) => HelperReturn { value, trapped: 0 },
        Err(kind) => {
            env.trap = Some(Trap { pc: slot, kind });
            HelperReturn {
                value: 0,
                trapped: 1,
            }
        }
    }
}

/// The entry point of compiled code.
type Entry = unsafe extern "sysv64" fn(*mut JitEnv) -> u64;

/// Compiled code in executable memory, ready to run on probe hits.
#[derive(Clone, Copy)]
pub struct JitProgram {
    entry: Entry,
    stack_depth: usize,
}

impl fmt::Debug for JitProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitProgram")
            .field("entry", &(self.entry as *const u8))
            .field("stack_depth", &self.stack_depth)
            .finish()
    }
}

impl JitProgram {
    /// The program whose code starts at `code`.
    ///
    /// # Safety
    ///
    /// `code` is the address of an exact copy of the bytes
    /// [`compile`](super::compile) wrote for a program the verifier accepted with
    /// stack depth `stack_depth` (its
    /// [`stack_depth`](probe_port_protocol::verifier::VerifiedProgram::stack_depth)),
    /// in memory that is executable on every CPU that may run it (instruction
    /// caches and pipelines synchronised after the copy), and it stays there,
    /// unmodified, as long as this value or a copy of it may be used.
    pub unsafe fn new(code: *const u8, stack_depth: usize) -> Self {
        // SAFETY: the caller's contract: the bytes at `code` are a function with
        // this signature.
        let entry = unsafe { core::mem::transmute::<*const u8, Entry>(code) };
        Self {
            entry,
            stack_depth: stack_depth.min(STACK_SIZE),
        }
    }

    /// The verified stack depth the code was compiled for.
    pub fn stack_depth(&self) -> usize {
        self.stack_depth
    }

    /// Runs the program on `context` with `stack` as its handler stack and returns
    /// `r0` at `exit`, or the trap of a helper call.
    ///
    /// The same contract and the same result as
    /// [`interpreter::run_on_stack`](crate::interpreter::run_on_stack) with the
    /// program's verified stack depth: only the top `stack_depth` bytes of `stack`
    /// are used, and the code's prologue zeroes them (rounded up to whole words),
    /// `r10` is the address just past `stack` and `r1` the
    /// address of `context`.
    #[unsafe(link_section = ".text.probeport")]
    pub fn run<H: Helpers + ?Sized>(
        &self,
        context: &ProbeContext,
        helpers: &mut H,
        stack: &mut [u8; STACK_SIZE],
    ) -> Result<u64, Trap> {
        // The code zeroes the words it may touch itself (its prologue).
        let stack_top = stack.as_mut_ptr_range().end;
        let mut helpers: &mut H = helpers;
        let mut env = JitEnv {
            context,
            stack_top,
            stack_depth: self.stack_depth,
            dispatch: dispatch::<H>,
            aggregate: aggregate::<H>,
            helpers: (&raw mut helpers).cast::<c_void>(),
            call_site: 0,
            trap: None,
        };
        // SAFETY: `new`'s contract makes `entry` the compiled code of a verified
        // program with this stack depth: it touches only `stack`'s top
        // `stack_depth` bytes, reads `context` and the environment, and calls
        // `dispatch::<H>` with `&mut env`, all of which outlive the call.
        let r0 = unsafe { (self.entry)(&raw mut env) };
        match env.trap {
            Some(trap) => Err(trap),
            None => Ok(r0),
        }
    }
}
