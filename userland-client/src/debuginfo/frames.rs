//! The canonical frame address at an address, from `.debug_frame` or `.eh_frame`.
//!
//! # Design
//!
//! gimli finds the FDE for an address by scanning the whole section, which is slow
//! when every probe point of a kernel is resolved. The FDEs are parsed once into a
//! table sorted by address, and only the one FDE's instructions run per query.

use gimli::UnwindSection as _;

use super::Reader;
use super::location::FrameBase;

/// Which section an FDE came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Debug,
    Eh,
}

/// Every FDE of the image, sorted by start address.
#[derive(Debug, Default)]
pub(crate) struct FrameTable {
    debug_frame: Option<gimli::DebugFrame<Reader>>,
    eh_frame: Option<(gimli::EhFrame<Reader>, gimli::BaseAddresses)>,
    /// (start, end, section, FDE); `.debug_frame` entries sort before `.eh_frame`
    /// ones at the same start.
    entries: Vec<(u64, u64, Section, gimli::FrameDescriptionEntry<Reader>)>,
}

impl FrameTable {
    pub(crate) fn build(
        debug_frame: Option<gimli::DebugFrame<Reader>>,
        eh_frame: Option<(gimli::EhFrame<Reader>, gimli::BaseAddresses)>,
    ) -> FrameTable {
        let mut entries = Vec::new();
        let no_bases = gimli::BaseAddresses::default();
        if let Some(frame) = &debug_frame {
            let mut iter = frame.entries(&no_bases);
            // A malformed entry ends the scan of its section: what was read is kept.
            while let Ok(Some(entry)) = iter.next() {
                if let gimli::CieOrFde::Fde(partial) = entry
                    && let Ok(fde) = partial.parse(gimli::DebugFrame::cie_from_offset)
                {
                    let start = fde.initial_address();
                    entries.push((start, start + fde.len(), Section::Debug, fde));
                }
            }
        }
        if let Some((frame, bases)) = &eh_frame {
            let mut iter = frame.entries(bases);
            while let Ok(Some(entry)) = iter.next() {
                if let gimli::CieOrFde::Fde(partial) = entry
                    && let Ok(fde) = partial.parse(gimli::EhFrame::cie_from_offset)
                {
                    let start = fde.initial_address();
                    entries.push((start, start + fde.len(), Section::Eh, fde));
                }
            }
        }
        entries.sort_by_key(|(start, end, section, _)| (*start, *end, *section == Section::Eh));
        FrameTable {
            debug_frame,
            eh_frame,
            entries,
        }
    }

    /// The CFA rule at `address` as register + offset.
    pub(crate) fn cfa(&self, address: u64) -> FrameBase {
        let after = self
            .entries
            .partition_point(|(start, _, _, _)| *start <= address);
        let found = self.entries[..after]
            .iter()
            .rev()
            .take(16)
            .find(|(start, end, _, _)| *start <= address && address < *end);
        let Some((_, _, section, fde)) = found else {
            return FrameBase::Unknown(format!("no call-frame information for {address:#x}"));
        };
        let mut context = gimli::UnwindContext::new();
        let row = match section {
            Section::Debug => self.debug_frame.as_ref().map(|frame| {
                fde.unwind_info_for_address(
                    frame,
                    &gimli::BaseAddresses::default(),
                    &mut context,
                    address,
                )
                .map(|row| row.cfa().clone())
            }),
            Section::Eh => self.eh_frame.as_ref().map(|(frame, bases)| {
                fde.unwind_info_for_address(frame, bases, &mut context, address)
                    .map(|row| row.cfa().clone())
            }),
        };
        match row {
            Some(Ok(gimli::CfaRule::RegisterAndOffset { register, offset })) => {
                FrameBase::RegisterOffset(register.0, offset)
            }
            Some(Ok(gimli::CfaRule::Expression(_))) => {
                FrameBase::Unknown("CFA given by an expression is not supported".into())
            }
            Some(Err(error)) => FrameBase::Unknown(format!("bad call-frame information: {error}")),
            None => FrameBase::Unknown(format!("no call-frame information for {address:#x}")),
        }
    }
}
