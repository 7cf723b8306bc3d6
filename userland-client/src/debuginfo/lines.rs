//! The line table as sorted address ranges: address → line and line → addresses.

use std::ops::Range;

use super::Kernel;

/// A source position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineLocation {
    /// The file path as the compiler recorded it (directory joined with the name).
    pub file: String,
    /// The line (1-based; 0 for compiler-generated code).
    pub line: u64,
    /// Whether the row is a recommended breakpoint location (`is_stmt`).
    pub is_stmt: bool,
}

/// One row of the table, covering `range`.
#[derive(Clone, Debug)]
struct Row {
    range: Range<u64>,
    file: u32,
    line: u32,
    is_stmt: bool,
    /// Whether the previous row of the sequence had another line or file: the row
    /// starts a run of code for its line.
    starts_run: bool,
}

/// All line programs of the image, flattened.
#[derive(Debug, Default)]
pub(crate) struct LineTable {
    files: Vec<String>,
    rows: Vec<Row>,
}

impl LineTable {
    pub(crate) fn build(kernel: &Kernel) -> Result<LineTable, gimli::Error> {
        let mut table = LineTable::default();
        let mut file_ids: std::collections::HashMap<String, u32> = Default::default();
        for (unit_index, unit_data) in kernel.units.iter().enumerate() {
            let Some(program) = unit_data.unit.line_program.clone() else {
                continue;
            };
            // File index → table file id, computed once per unit.
            let mut unit_files: std::collections::HashMap<u64, u32> = Default::default();
            let mut rows = program.rows();
            let mut previous: Option<(u64, u32, u32, bool)> = None;
            while let Some((_, row)) = rows.next_row()? {
                let address = row.address();
                if let Some((start, file, line, is_stmt)) = previous.take() {
                    // Empty rows are kept: GCC's location views put several
                    // statements at one address, and each is a valid probe point
                    // for its line (gdb: "is at address ... but contains no code").
                    if address >= start {
                        let starts_run = table.rows.last().is_none_or(|last: &Row| {
                            last.range.end != start || last.file != file || last.line != line
                        });
                        table.rows.push(Row {
                            range: start..address,
                            file,
                            line,
                            is_stmt,
                            starts_run,
                        });
                    }
                }
                if row.end_sequence() {
                    continue;
                }
                let file_index = row.file_index();
                let file = match unit_files.get(&file_index) {
                    Some(file) => *file,
                    None => {
                        let name = kernel
                            .file_name(unit_index, file_index)
                            .unwrap_or_else(|| "?".into());
                        let next = table.files.len() as u32;
                        let id = *file_ids.entry(name.clone()).or_insert(next);
                        if id == next {
                            table.files.push(name);
                        }
                        unit_files.insert(file_index, id);
                        id
                    }
                };
                let line = row.line().map_or(0, |line| line.get()) as u32;
                previous = Some((address, file, line, row.is_stmt()));
            }
        }
        table
            .rows
            .sort_by_key(|row| (row.range.start, row.range.end));
        Ok(table)
    }
}

impl Kernel {
    /// The source line of an address.
    pub fn line_for_address(&self, address: u64) -> Option<LineLocation> {
        let rows = &self.lines.rows;
        let after = rows.partition_point(|row| row.range.start <= address);
        let row = rows[..after]
            .iter()
            .rev()
            .take(64)
            .find(|row| row.range.contains(&address))?;
        Some(LineLocation {
            file: self.lines.files[row.file as usize].clone(),
            line: u64::from(row.line),
            is_stmt: row.is_stmt,
        })
    }

    /// The addresses where a probe on `file:line` goes, sorted: in each function
    /// (and in each inlined copy of a function) the lowest `is_stmt` address of the
    /// line, plus the entry of every function inlined from a call on that line. This
    /// is what gdb picks for `break file:line`. `file` matches any recorded path
    /// ending with it at a `/` boundary (`ipc_kmsg.c`, `ipc/ipc_kmsg.c`).
    pub fn addresses_for_line(&self, file: &str, line: u64) -> Vec<u64> {
        let mut candidates = self.line_rows_for(file, line);
        for function in &self.index.functions {
            for instance in &function.instances {
                if let super::index::InstanceRecordKind::Inlined {
                    call_file: Some(call_file),
                    call_line,
                } = &instance.kind
                    && *call_line == line
                    && path_matches(call_file, file)
                {
                    candidates.push(instance.entry_pc);
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        // One address per scope: the out-of-line function and the innermost inlined
        // instance containing the address.
        let mut seen = std::collections::HashSet::new();
        candidates
            .into_iter()
            .filter(|address| {
                let scope = (
                    self.index.code_at(*address),
                    self.index.innermost_inlined_at(*address),
                );
                seen.insert(scope)
            })
            .collect()
    }

    /// The first `is_stmt` address of each run of line-table rows for `file:line`.
    fn line_rows_for(&self, file: &str, line: u64) -> Vec<u64> {
        let matching_files: Vec<bool> = self
            .lines
            .files
            .iter()
            .map(|path| path_matches(path, file))
            .collect();
        let mut addresses: Vec<u64> = Vec::new();
        let mut in_run = false;
        for row in &self.lines.rows {
            let hit = u64::from(row.line) == line && matching_files[row.file as usize];
            if !hit || row.starts_run {
                in_run = false;
            }
            if hit && row.is_stmt && !in_run {
                addresses.push(row.range.start);
                in_run = true;
            }
        }
        addresses.sort_unstable();
        addresses.dedup();
        addresses
    }
}

/// Whether a recorded `path` names `file`: equal, or ending with it at a `/`.
fn path_matches(path: &str, file: &str) -> bool {
    path == file
        || path
            .strip_suffix(file)
            .is_some_and(|prefix| prefix.ends_with('/') || file.starts_with('/'))
}
