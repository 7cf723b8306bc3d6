//! Just enough ACPI to find the CPUs and the I/O APIC: RSDP, RSDT/XSDT, MADT.
//!
//! # Design
//!
//! The parser sees physical memory only through [`PhysicalMemory`], so the same code
//! runs in the kernel (identity-mapped memory) and in host unit tests (a few byte
//! buffers placed at fake addresses). Every table's length and checksum is checked
//! before it is used; a bad table is an error, never a panic.
//!
//! The kernel gets the RSDP address from the PVH start info; [`find_rsdp`] scans the
//! BIOS area as a fallback. From the MADT it needs the processor entries: type 0
//! (local APIC) and type 9 (local x2APIC), each with the "enabled" flag; and, to route
//! COM2's interrupt, the I/O APICs (type 1) and the interrupt source overrides (type 2).
//!
//! # Invariants
//!
//! - No function here panics on malformed tables (all indexing is checked).

use core::fmt;

/// Read access to physical memory.
pub(crate) trait PhysicalMemory {
    /// The `length` bytes at physical `address`, or `None` if they are not readable.
    fn read(&self, address: u64, length: usize) -> Option<&[u8]>;
}

/// Why the CPU list could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AcpiError {
    /// No RSDP signature where it was looked for.
    NoRsdp,
    /// The RSDP's checksum does not add up.
    BadRsdpChecksum,
    /// A table could not be read at this address.
    Unreadable(u64),
    /// A table's checksum does not add up.
    BadChecksum([u8; 4]),
    /// A table is shorter than its header says, or than its fixed fields.
    Truncated([u8; 4]),
    /// The RSDT/XSDT lists no MADT.
    NoMadt,
}

impl fmt::Display for AcpiError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::NoRsdp => formatter.write_str("no ACPI RSDP found"),
            AcpiError::BadRsdpChecksum => formatter.write_str("ACPI RSDP checksum mismatch"),
            AcpiError::Unreadable(address) => {
                write!(formatter, "ACPI table at {address:#x} is not readable")
            }
            AcpiError::BadChecksum(signature) => {
                write!(
                    formatter,
                    "ACPI table {} checksum mismatch",
                    Signature(signature)
                )
            }
            AcpiError::Truncated(signature) => write!(
                formatter,
                "ACPI table {} is truncated",
                Signature(signature)
            ),
            AcpiError::NoMadt => formatter.write_str("no MADT (APIC table) in the ACPI root table"),
        }
    }
}

/// Displays a 4-byte table signature as text.
struct Signature<'a>(&'a [u8; 4]);

impl fmt::Display for Signature<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &byte in self.0 {
            let shown = if byte.is_ascii_graphic() {
                byte as char
            } else {
                '?'
            };
            write!(formatter, "{shown}")?;
        }
        Ok(())
    }
}

const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
const RSDP_V1_LENGTH: usize = 20;
const RSDP_V2_LENGTH: usize = 36;
const HEADER_LENGTH: usize = 36;
const MADT_FIXED_LENGTH: usize = HEADER_LENGTH + 8;

/// Where the RSDP may be when nobody says: the first KiB of the EBDA and the BIOS
/// area `0xe0000..0x100000` (ACPI spec, "Finding the RSDP on IA-PC systems").
pub(crate) fn find_rsdp(memory: &impl PhysicalMemory) -> Result<u64, AcpiError> {
    let ebda_segment = memory
        .read(0x40e, 2)
        .map(|bytes| u64::from(u16::from_le_bytes([bytes[0], bytes[1]])))
        .unwrap_or(0);
    let ranges = [(ebda_segment << 4, 1024usize), (0xe0000, 0x20000)];
    for (start, length) in ranges {
        if start == 0 {
            continue;
        }
        let Some(area) = memory.read(start, length) else {
            continue;
        };
        for offset in (0..area.len().saturating_sub(RSDP_V1_LENGTH)).step_by(16) {
            if area[offset..].starts_with(RSDP_SIGNATURE)
                && checksum_ok(&area[offset..offset + RSDP_V1_LENGTH])
            {
                return Ok(start + offset as u64);
            }
        }
    }
    Err(AcpiError::NoRsdp)
}

/// A processor entry of the MADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LocalApic {
    /// ACPI processor UID.
    pub(crate) processor_uid: u32,
    /// Local APIC id (the IPI destination).
    pub(crate) apic_id: u32,
    /// The "enabled" flag: the CPU is present and may be started.
    pub(crate) enabled: bool,
}

/// The parts of the MADT the kernel uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Madt<'a> {
    /// Physical address of the local APIC registers as the MADT states it.
    pub(crate) local_apic_address: u32,
    entries: &'a [u8],
}

impl<'a> Madt<'a> {
    /// Parses a whole MADT (header included) whose checksum was verified.
    fn parse(table: &'a [u8]) -> Result<Madt<'a>, AcpiError> {
        if table.len() < MADT_FIXED_LENGTH {
            return Err(AcpiError::Truncated(*b"APIC"));
        }
        Ok(Madt {
            local_apic_address: read_u32(table, HEADER_LENGTH),
            entries: &table[MADT_FIXED_LENGTH..],
        })
    }

    /// Every processor entry (local APIC and local x2APIC), in table order. Stops at
    /// the first malformed entry.
    pub(crate) fn local_apics(&self) -> impl Iterator<Item = LocalApic> + 'a {
        madt_entries(self.entries).filter_map(|(kind, entry)| match (kind, entry.len()) {
            (0, 8..) => Some(LocalApic {
                processor_uid: u32::from(entry[2]),
                apic_id: u32::from(entry[3]),
                enabled: read_u32(entry, 4) & 1 != 0,
            }),
            (9, 16..) => Some(LocalApic {
                processor_uid: read_u32(entry, 12),
                apic_id: read_u32(entry, 4),
                enabled: read_u32(entry, 8) & 1 != 0,
            }),
            _ => None,
        })
    }

    /// Every I/O APIC entry (type 1), in table order.
    pub(crate) fn io_apics(&self) -> impl Iterator<Item = IoApic> + 'a {
        madt_entries(self.entries).filter_map(|(kind, entry)| match (kind, entry.len()) {
            (1, 12..) => Some(IoApic {
                id: entry[2],
                address: read_u32(entry, 4),
                first_interrupt: read_u32(entry, 8),
            }),
            _ => None,
        })
    }

    /// Every interrupt source override (type 2), in table order.
    pub(crate) fn interrupt_overrides(&self) -> impl Iterator<Item = InterruptOverride> + 'a {
        madt_entries(self.entries).filter_map(|(kind, entry)| match (kind, entry.len()) {
            (2, 10..) => Some(InterruptOverride {
                bus: entry[2],
                source: entry[3],
                global_interrupt: read_u32(entry, 4),
                flags: u16::from_le_bytes([entry[8], entry[9]]),
            }),
            _ => None,
        })
    }

    /// Where ISA interrupt `irq` arrives: its global system interrupt and MPS flags
    /// (polarity in bits 0-1, trigger mode in bits 2-3; 0 means "bus default", for ISA
    /// active high and edge-triggered).
    pub(crate) fn isa_interrupt(&self, irq: u8) -> (u32, u16) {
        self.interrupt_overrides()
            .find(|entry| entry.bus == 0 && entry.source == irq)
            .map_or((u32::from(irq), 0), |entry| {
                (entry.global_interrupt, entry.flags)
            })
    }
}

/// Every MADT entry in `bytes` as `(type, bytes)`, in order. Stops at the first
/// malformed entry (a length below 2 or past the end of the table).
fn madt_entries(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = bytes;
    core::iter::from_fn(move || {
        let (&kind, &length) = (rest.first()?, rest.get(1)?);
        let length = usize::from(length);
        if length < 2 || length > rest.len() {
            rest = &[];
            return None;
        }
        let (entry, tail) = rest.split_at(length);
        rest = tail;
        Some((kind, entry))
    })
}

/// An I/O APIC entry of the MADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IoApic {
    /// The I/O APIC's id.
    pub(crate) id: u8,
    /// Physical address of its registers.
    pub(crate) address: u32,
    /// Global system interrupt of its first input.
    pub(crate) first_interrupt: u32,
}

/// An interrupt source override of the MADT: an ISA IRQ wired to another input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InterruptOverride {
    /// Bus (0 = ISA).
    pub(crate) bus: u8,
    /// The bus-relative IRQ.
    pub(crate) source: u8,
    /// The global system interrupt it arrives on.
    pub(crate) global_interrupt: u32,
    /// MPS INTI flags (polarity, trigger mode).
    pub(crate) flags: u16,
}

/// Follows RSDP → RSDT or XSDT → MADT.
pub(crate) fn find_madt(
    memory: &impl PhysicalMemory,
    rsdp_address: u64,
) -> Result<Madt<'_>, AcpiError> {
    let rsdp = memory
        .read(rsdp_address, RSDP_V1_LENGTH)
        .ok_or(AcpiError::Unreadable(rsdp_address))?;
    if !rsdp.starts_with(RSDP_SIGNATURE) {
        return Err(AcpiError::NoRsdp);
    }
    if !checksum_ok(rsdp) {
        return Err(AcpiError::BadRsdpChecksum);
    }
    let revision = rsdp[15];
    let rsdt_address = u64::from(read_u32(rsdp, 16));
    // ACPI 2.0+: prefer the XSDT (64-bit entries) when its extended checksum holds.
    let (root_address, entry_size) = match memory.read(rsdp_address, RSDP_V2_LENGTH) {
        Some(rsdp_v2) if revision >= 2 && checksum_ok(rsdp_v2) && read_u64(rsdp_v2, 24) != 0 => {
            (read_u64(rsdp_v2, 24), 8)
        }
        _ => (rsdt_address, 4),
    };
    let root = read_table(memory, root_address)?;
    for entry in root[HEADER_LENGTH..].chunks_exact(entry_size) {
        let address = if entry_size == 8 {
            read_u64(entry, 0)
        } else {
            u64::from(read_u32(entry, 0))
        };
        let Some(header) = memory.read(address, 4) else {
            continue;
        };
        if header == b"APIC" {
            return Madt::parse(read_table(memory, address)?);
        }
    }
    Err(AcpiError::NoMadt)
}

/// A whole table at `address`, with its length and checksum verified.
fn read_table(memory: &impl PhysicalMemory, address: u64) -> Result<&[u8], AcpiError> {
    let header = memory
        .read(address, HEADER_LENGTH)
        .ok_or(AcpiError::Unreadable(address))?;
    let signature = [header[0], header[1], header[2], header[3]];
    let length = read_u32(header, 4) as usize;
    if length < HEADER_LENGTH {
        return Err(AcpiError::Truncated(signature));
    }
    let table = memory
        .read(address, length)
        .ok_or(AcpiError::Unreadable(address))?;
    if !checksum_ok(table) {
        return Err(AcpiError::BadChecksum(signature));
    }
    Ok(table)
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &byte| sum.wrapping_add(byte)) == 0
}

/// Little-endian u32 at `offset`; callers check the length first.
fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut value = [0; 4];
    value.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(value)
}

/// Little-endian u64 at `offset`; callers check the length first.
fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut value = [0; 8];
    value.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte buffers placed at physical addresses.
    struct FakeMemory(Vec<(u64, Vec<u8>)>);

    impl PhysicalMemory for FakeMemory {
        fn read(&self, address: u64, length: usize) -> Option<&[u8]> {
            self.0.iter().find_map(|(base, bytes)| {
                let offset = usize::try_from(address.checked_sub(*base)?).ok()?;
                bytes.get(offset..offset.checked_add(length)?)
            })
        }
    }

    fn fix_checksum(bytes: &mut [u8], checksum_offset: usize, covered: usize) {
        bytes[checksum_offset] = 0;
        let sum = bytes[..covered]
            .iter()
            .fold(0u8, |sum, &byte| sum.wrapping_add(byte));
        bytes[checksum_offset] = 0u8.wrapping_sub(sum);
    }

    fn table(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_LENGTH];
        bytes[..4].copy_from_slice(signature);
        let length = (HEADER_LENGTH + body.len()) as u32;
        bytes[4..8].copy_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(body);
        let covered = bytes.len();
        fix_checksum(&mut bytes, 9, covered);
        bytes
    }

    fn rsdp_v1(rsdt: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; RSDP_V1_LENGTH];
        bytes[..8].copy_from_slice(RSDP_SIGNATURE);
        bytes[16..20].copy_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut bytes, 8, RSDP_V1_LENGTH);
        bytes
    }

    fn rsdp_v2(xsdt: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; RSDP_V2_LENGTH];
        bytes[..8].copy_from_slice(RSDP_SIGNATURE);
        bytes[15] = 2;
        bytes[20..24].copy_from_slice(&(RSDP_V2_LENGTH as u32).to_le_bytes());
        bytes[24..32].copy_from_slice(&xsdt.to_le_bytes());
        fix_checksum(&mut bytes, 8, RSDP_V1_LENGTH);
        fix_checksum(&mut bytes, 32, RSDP_V2_LENGTH);
        bytes
    }

    /// A MADT with two enabled local APICs (ids 0 and 1), one disabled (id 7), an
    /// I/O APIC entry and two interrupt source overrides in between, and one enabled
    /// x2APIC (id 300).
    fn madt() -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT
        body.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]);
        body.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]); // I/O APIC
        body.extend_from_slice(&[0, 8, 1, 1, 1, 0, 0, 0]);
        body.extend_from_slice(&[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]); // IRQ 0 -> GSI 2
        body.extend_from_slice(&[2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0]); // IRQ 9 level, high
        body.extend_from_slice(&[0, 8, 2, 7, 0, 0, 0, 0]);
        let mut x2apic = vec![9, 16, 0, 0];
        x2apic.extend_from_slice(&300u32.to_le_bytes());
        x2apic.extend_from_slice(&1u32.to_le_bytes());
        x2apic.extend_from_slice(&42u32.to_le_bytes());
        body.extend_from_slice(&x2apic);
        table(b"APIC", &body)
    }

    fn expected_cpus() -> Vec<LocalApic> {
        vec![
            LocalApic {
                processor_uid: 0,
                apic_id: 0,
                enabled: true,
            },
            LocalApic {
                processor_uid: 1,
                apic_id: 1,
                enabled: true,
            },
            LocalApic {
                processor_uid: 2,
                apic_id: 7,
                enabled: false,
            },
            LocalApic {
                processor_uid: 42,
                apic_id: 300,
                enabled: true,
            },
        ]
    }

    #[test]
    fn rsdt_path_finds_every_processor_entry() {
        let facp = table(b"FACP", &[0; 8]);
        let mut rsdt_body = Vec::new();
        rsdt_body.extend_from_slice(&0x7000u32.to_le_bytes());
        rsdt_body.extend_from_slice(&0x8000u32.to_le_bytes());
        let memory = FakeMemory(vec![
            (0xf0000, rsdp_v1(0x6000)),
            (0x6000, table(b"RSDT", &rsdt_body)),
            (0x7000, facp),
            (0x8000, madt()),
        ]);
        let madt = find_madt(&memory, 0xf0000).unwrap();
        assert_eq!(madt.local_apic_address, 0xfee0_0000);
        assert_eq!(madt.local_apics().collect::<Vec<_>>(), expected_cpus());
    }

    #[test]
    fn io_apics_and_interrupt_overrides_are_listed() {
        let table = madt();
        let madt = Madt::parse(&table).unwrap();
        assert_eq!(
            madt.io_apics().collect::<Vec<_>>(),
            [IoApic {
                id: 0,
                address: 0xfec0_0000,
                first_interrupt: 0
            }]
        );
        assert_eq!(madt.interrupt_overrides().count(), 2);
        assert_eq!(madt.isa_interrupt(0), (2, 0));
        assert_eq!(madt.isa_interrupt(9), (9, 0x0d));
        assert_eq!(
            madt.isa_interrupt(3),
            (3, 0),
            "no override: identity, bus default"
        );
    }

    #[test]
    fn xsdt_path_is_preferred_for_revision_two() {
        let xsdt_body = 0x9000u64.to_le_bytes();
        let memory = FakeMemory(vec![
            (0xf0000, rsdp_v2(0x5000)),
            (0x5000, table(b"XSDT", &xsdt_body)),
            (0x9000, madt()),
        ]);
        let madt = find_madt(&memory, 0xf0000).unwrap();
        assert_eq!(madt.local_apics().count(), 4);
    }

    #[test]
    fn rsdp_scan_finds_the_signature_on_a_16_byte_boundary() {
        let mut bios = vec![0u8; 0x20000];
        bios[0x1230..0x1230 + RSDP_V1_LENGTH].copy_from_slice(&rsdp_v1(0x6000));
        let memory = FakeMemory(vec![(0x400, vec![0; 0x100]), (0xe0000, bios)]);
        assert_eq!(find_rsdp(&memory), Ok(0xe1230));
    }

    #[test]
    fn corrupted_tables_are_errors_not_panics() {
        let mut bad_madt = madt();
        bad_madt[40] ^= 0xff;
        let rsdt_body = 0x8000u32.to_le_bytes();
        let memory = FakeMemory(vec![
            (0xf0000, rsdp_v1(0x6000)),
            (0x6000, table(b"RSDT", &rsdt_body)),
            (0x8000, bad_madt),
        ]);
        assert_eq!(
            find_madt(&memory, 0xf0000).unwrap_err(),
            AcpiError::BadChecksum(*b"APIC")
        );

        let mut bad_rsdp = rsdp_v1(0x6000);
        bad_rsdp[12] ^= 1;
        let memory = FakeMemory(vec![(0xf0000, bad_rsdp)]);
        assert_eq!(
            find_madt(&memory, 0xf0000).unwrap_err(),
            AcpiError::BadRsdpChecksum
        );

        let memory = FakeMemory(vec![(0xf0000, rsdp_v1(0x6000))]);
        assert_eq!(
            find_madt(&memory, 0xf0000).unwrap_err(),
            AcpiError::Unreadable(0x6000)
        );
    }

    #[test]
    fn malformed_madt_entries_end_the_list() {
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]);
        body.extend_from_slice(&[0, 0xff, 1, 1]); // length runs past the table
        let table = table(b"APIC", &body);
        let madt = Madt::parse(&table).unwrap();
        assert_eq!(madt.local_apics().count(), 1);

        for truncated_length in 0..table.len() {
            let Ok(madt) = Madt::parse(&table[..truncated_length]) else {
                continue;
            };
            let _ = madt.local_apics().count();
        }
    }
}
