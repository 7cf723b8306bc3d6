//! The probe context: the read-only record a handler receives in `r1`.
//!
//! # Design
//!
//! The context is 32 little-endian u64 slots (256 bytes). The first slots hold the
//! trapped registers in the architecture's **DWARF register numbering**, so a
//! client that resolved a parameter to `DW_OP_reg5` reads slot 5 without any other
//! table. Fixed slots follow for the program counter, flags and probe number, and the
//! last eight slots carry the values an entry program saved for its return program.
//!
//! At a static marker the first slots hold the marker's arguments instead (slot `i`
//! is argument `i`), and `PC` is the marker's address. At a timer probe the slots
//! hold the interrupted registers.
//!
//! # Invariants
//!
//! - Handlers may only read the context, at offsets inside [`CONTEXT_SIZE`] and
//!   aligned to the access size; the verifier enforces it.

/// Number of u64 slots in the context.
pub const CONTEXT_SLOTS: usize = 32;
/// Size of the context in bytes.
pub const CONTEXT_SIZE: usize = CONTEXT_SLOTS * 8;
/// Number of entry-value slots (for `@entry(...)` in return probes).
pub const ENTRY_SLOTS: usize = 8;

/// Slot numbers (multiply by 8 for the byte offset).
pub mod slot {
    /// First register slot; registers occupy `0..REGISTER_SLOTS` by DWARF number.
    pub const REGISTER_BASE: usize = 0;
    /// How many register slots there are.
    pub const REGISTER_SLOTS: usize = 16;
    /// The address of the probe (the trapped instruction, or the marker site).
    pub const PC: usize = 16;
    /// The flags register at the trap (x86_64: RFLAGS).
    pub const FLAGS: usize = 17;
    /// The number of the probe that fired.
    pub const PROBE: usize = 18;
    /// In a return probe: the address the function returned to.
    pub const RETURN_ADDRESS: usize = 19;
    /// In a return probe: the stack pointer at function entry (identifies the frame).
    pub const ENTRY_SP: usize = 20;
    /// First entry-value slot; entry values occupy `ENTRY_BASE..ENTRY_BASE + ENTRY_SLOTS`.
    pub const ENTRY_BASE: usize = 24;
}

/// The context as the executor builds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct ProbeContext {
    /// The slots described in [`slot`].
    pub slots: [u64; CONTEXT_SLOTS],
}

impl Default for ProbeContext {
    fn default() -> Self {
        Self {
            slots: [0; CONTEXT_SLOTS],
        }
    }
}

impl ProbeContext {
    /// The context as bytes (little-endian hosts only, which every target is).
    pub fn as_bytes(&self) -> &[u8; CONTEXT_SIZE] {
        // SAFETY: `ProbeContext` is `repr(C)`, 256 bytes of plain u64s with no
        // padding, so it may be viewed as a byte array of the same size; the
        // borrow keeps the lifetime tied to `self`.
        unsafe { &*(self as *const Self as *const [u8; CONTEXT_SIZE]) }
    }
}

/// x86_64 register names by DWARF number (System V psABI, figure 3.36).
pub mod x86_64 {
    /// Register names in slot order; `rax` is slot 0, `r15` slot 15.
    pub const REGISTER_NAMES: [&str; 16] = [
        "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    /// Slots of the integer argument registers, in argument order.
    pub const ARGUMENT_SLOTS: [usize; 6] = [5, 4, 1, 2, 8, 9];
    /// Slot of the integer return value register (`rax`).
    pub const RETURN_SLOT: usize = 0;

    /// The slot of a register name, if it is one.
    pub fn register_slot(name: &str) -> Option<usize> {
        REGISTER_NAMES
            .iter()
            .position(|candidate| *candidate == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_fixed() {
        assert_eq!(core::mem::size_of::<ProbeContext>(), CONTEXT_SIZE);
        const { assert!(slot::ENTRY_BASE + ENTRY_SLOTS <= CONTEXT_SLOTS) };
        const { assert!(slot::REGISTER_BASE + slot::REGISTER_SLOTS <= slot::PC) };
        let mut context = ProbeContext::default();
        context.slots[slot::PC] = 0x1122_3344_5566_7788;
        assert_eq!(context.as_bytes()[slot::PC * 8], 0x88);
    }

    #[test]
    fn x86_64_arguments_follow_the_abi() {
        let names: [&str; 6] = x86_64::ARGUMENT_SLOTS.map(|slot| x86_64::REGISTER_NAMES[slot]);
        assert_eq!(names, ["rdi", "rsi", "rdx", "rcx", "r8", "r9"]);
        assert_eq!(x86_64::register_slot("rsp"), Some(7));
    }
}
