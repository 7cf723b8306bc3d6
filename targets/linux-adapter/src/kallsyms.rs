//! Kernel addresses named from the running kernel's own symbol table
//! (`/proc/kallsyms`), for `Symbolize` (PROTOCOL.md §8.11).
//!
//! # Design
//!
//! A client of the adapter has no copy of the kernel's image (Debian ships none
//! with symbols), and the kernel's addresses move with KASLR, so only the running
//! kernel can name them. The daemon runs as root, for whom `/proc/kallsyms` holds
//! the real addresses; it reads the text symbols (`t`, `T`, modules' included)
//! once per session, at the first request, and answers each address with the
//! symbol that starts at or below it. An address past the last symbol, below the
//! first, or when every address reads 0 (no privilege), has no name.

use std::io;

/// Text symbols by start address.
#[derive(Debug)]
pub struct KernelSymbols {
    /// `(start, name)`, sorted by start.
    symbols: Vec<(u64, String)>,
}

impl KernelSymbols {
    /// Reads `/proc/kallsyms`.
    pub fn read() -> io::Result<KernelSymbols> {
        let text = std::fs::read_to_string("/proc/kallsyms")?;
        let symbols = KernelSymbols::parse(&text);
        if symbols.symbols.is_empty() {
            return Err(io::Error::other(
                "no text symbol with an address (kptr_restrict?)",
            ));
        }
        Ok(symbols)
    }

    /// The text symbols of kallsyms' text: `ADDRESS TYPE NAME [MODULE]` lines.
    pub fn parse(text: &str) -> KernelSymbols {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let address = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                (address != 0 && matches!(kind, "t" | "T")).then(|| (address, name.to_string()))
            })
            .collect();
        symbols.sort();
        KernelSymbols { symbols }
    }

    /// The symbol containing `address` and the offset from its start.
    pub fn containing(&self, address: u64) -> Option<(&str, u64)> {
        let after = self.symbols.partition_point(|(start, _)| *start <= address);
        let (start, name) = self.symbols.get(after.checked_sub(1)?)?;
        // Past the last symbol is not known text.
        (after < self.symbols.len()).then(|| (name.as_str(), address - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_fall_in_the_symbol_below_them() {
        let symbols = KernelSymbols::parse(
            "ffffffff81000000 T _stext\n\
             ffffffff81000100 t helper\n\
             ffffffff81000100 D not_text\n\
             ffffffff81000200 T __x64_sys_getppid\n\
             ffffffffc0000000 t module_function\t[some_module]\n\
             ffffffffc0000100 T _etext_module\n",
        );
        assert_eq!(
            symbols.containing(0xffff_ffff_8100_0104),
            Some(("helper", 4))
        );
        assert_eq!(
            symbols.containing(0xffff_ffff_8100_0200),
            Some(("__x64_sys_getppid", 0))
        );
        assert_eq!(
            symbols.containing(0xffff_ffff_c000_0010),
            Some(("module_function", 0x10))
        );
        assert_eq!(symbols.containing(0x1000), None);
        assert_eq!(symbols.containing(0xffff_ffff_c000_0200), None);
    }
}
