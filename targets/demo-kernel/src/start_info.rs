//! The PVH start info block (`struct hvm_start_info`) the loader hands over in `ebx`.
//!
//! # Design
//!
//! The block is read once, at boot, and the parts the kernel keeps (the command line,
//! the RSDP address) are copied into a [`BootInfo`] value, so nothing depends on the
//! loader's memory staying intact afterwards (the AP trampoline page, for one, is
//! reused). Layout per the Xen public header `arch-x86/hvm/start_info.h`, version 1:
//!
//! | offset | field            |
//! |--------|------------------|
//! | 0      | magic `0x336ec578` |
//! | 4      | version          |
//! | 8      | flags            |
//! | 12     | nr_modules       |
//! | 16     | modlist_paddr    |
//! | 24     | cmdline_paddr    |
//! | 32     | rsdp_paddr       |
//! | 40     | memmap_paddr (version >= 1) |
//! | 48     | memmap_entries   |
//!
//! Memory map entries are 24 bytes: address, size (u64 each), type (u32), reserved.

use crate::console::println;

const MAGIC: u32 = 0x336e_c578;
/// Longest command line kept; longer ones are cut (and the cut is reported).
const CMDLINE_CAPACITY: usize = 512;

/// What the kernel keeps from the start info.
pub(crate) struct BootInfo {
    cmdline: [u8; CMDLINE_CAPACITY],
    cmdline_length: usize,
    /// Physical address of the ACPI RSDP, 0 if the loader did not give one.
    pub(crate) rsdp_address: u64,
}

impl BootInfo {
    /// The command line (empty when there is none or it is not UTF-8).
    pub(crate) fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_length]).unwrap_or("")
    }
}

fn read_u32(address: u64) -> u32 {
    // SAFETY: callers pass addresses inside the start info block, below 4 GiB and so
    // identity-mapped; the loader placed it in RAM. Unaligned reads are fine on x86.
    unsafe { core::ptr::read_unaligned(address as *const u32) }
}

fn read_u64(address: u64) -> u64 {
    // SAFETY: as in `read_u32`.
    unsafe { core::ptr::read_unaligned(address as *const u64) }
}

/// Reads the start info at `address`, printing the memory map on the way.
pub(crate) fn read(address: u32) -> Result<BootInfo, &'static str> {
    let base = u64::from(address);
    if base == 0 || read_u32(base) != MAGIC {
        return Err("no PVH start info (bad magic in ebx): boot with qemu -kernel and a PVH note");
    }
    let version = read_u32(base + 4);
    let cmdline_address = read_u64(base + 24);
    let rsdp_address = read_u64(base + 32);

    let mut info = BootInfo {
        cmdline: [0; CMDLINE_CAPACITY],
        cmdline_length: 0,
        rsdp_address,
    };
    if cmdline_address != 0 && cmdline_address < (1 << 32) {
        while info.cmdline_length < CMDLINE_CAPACITY {
            // SAFETY: the command line is a NUL-terminated string the loader placed in
            // identity-mapped RAM; reading stops at the NUL or the capacity.
            let byte = unsafe {
                core::ptr::read((cmdline_address + info.cmdline_length as u64) as *const u8)
            };
            if byte == 0 {
                break;
            }
            info.cmdline[info.cmdline_length] = byte;
            info.cmdline_length += 1;
        }
        if info.cmdline_length == CMDLINE_CAPACITY {
            println!("boot: command line longer than {CMDLINE_CAPACITY} bytes, cut");
        }
    }

    if version >= 1 {
        let map_address = read_u64(base + 40);
        let entries = read_u32(base + 48);
        if map_address != 0 {
            println!("boot: memory map ({entries} entries):");
            for entry in 0..u64::from(entries.min(64)) {
                let entry_address = map_address + entry * 24;
                let start = read_u64(entry_address);
                let size = read_u64(entry_address + 8);
                let kind = match read_u32(entry_address + 16) {
                    1 => "ram",
                    2 => "reserved",
                    3 => "acpi-reclaimable",
                    4 => "acpi-nvs",
                    5 => "unusable",
                    _ => "other",
                };
                println!("boot:   {start:#012x}..{:#012x} {kind}", start + size);
            }
        }
    }
    Ok(info)
}
