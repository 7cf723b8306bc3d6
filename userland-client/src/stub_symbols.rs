//! Kernel code addresses named by the stub (`Symbolize`, PROTOCOL.md §8.11), for
//! sessions without the kernel's image.
//!
//! # Design
//!
//! Without the image (Debian's kernel through the Linux adapter) the client cannot
//! name a kernel address, and the adapter can: it reads the running kernel's
//! `/proc/kallsyms`, which also accounts for KASLR. Before printing a record or a
//! map, the session asks the stub once for every kernel address in its `symbol`
//! and `kstack` values that it has not asked about yet, and keeps the answers for
//! the session. User-space addresses (a timer that interrupted a process) are not
//! asked about and print in hex, as do addresses the stub cannot name.

use std::collections::HashMap;

use lang::compiled::{Field, ValueType};

/// The lowest x86-64 kernel address (the upper half of the canonical space).
const KERNEL_SPACE: u64 = 0xffff_8000_0000_0000;

/// The names the stub gave, by address (`None`: it has none).
#[derive(Debug, Default)]
pub struct StubSymbols {
    names: HashMap<u64, Option<String>>,
}

impl StubSymbols {
    /// `function+0xoff` for `address`, if the stub named it.
    pub fn name(&self, address: u64) -> Option<String> {
        self.names.get(&address).cloned().flatten()
    }

    /// The kernel addresses in the `symbol` and `kstack` values of `fields` (read
    /// from `bytes`) not asked about yet.
    pub fn unknown(&self, fields: &[Field], bytes: &[u8]) -> Vec<u64> {
        let word = |at: usize| {
            bytes
                .get(at..at + 8)
                .map(|word| u64::from_le_bytes(word.try_into().unwrap_or([0; 8])))
        };
        let mut addresses = Vec::new();
        for field in fields {
            let at = usize::from(field.offset);
            match field.ty {
                ValueType::Symbol => addresses.extend(word(at)),
                ValueType::Stack { depth } => addresses.extend(
                    (0..usize::from(depth))
                        .map_while(|frame| word(at + frame * 8))
                        .take_while(|address| *address != 0),
                ),
                _ => {}
            }
        }
        addresses.retain(|address| *address >= KERNEL_SPACE && !self.names.contains_key(address));
        addresses.sort_unstable();
        addresses.dedup();
        addresses
    }

    /// Keeps the stub's answer for `address`.
    pub fn insert(&mut self, address: u64, name: Option<String>) {
        self.names.insert(address, name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kernel_code_addresses_not_yet_named_are_asked_about() {
        let fields = [
            Field {
                offset: 0,
                ty: ValueType::Symbol,
                name: None,
            },
            Field {
                offset: 8,
                ty: ValueType::Unsigned,
                name: None,
            },
            Field {
                offset: 16,
                ty: ValueType::Symbol,
                name: None,
            },
        ];
        let mut bytes = Vec::new();
        for word in [0xffff_ffff_8100_0010u64, 0xffff_ffff_8100_0020, 0x40_1000] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        let mut symbols = StubSymbols::default();
        assert_eq!(symbols.unknown(&fields, &bytes), [0xffff_ffff_8100_0010]);
        symbols.insert(0xffff_ffff_8100_0010, Some("f+0x10".to_string()));
        assert!(symbols.unknown(&fields, &bytes).is_empty());
        assert_eq!(
            symbols.name(0xffff_ffff_8100_0010).as_deref(),
            Some("f+0x10")
        );
        assert_eq!(symbols.name(0x40_1000), None);
    }
}
