//! Source files and spans: where every token, node and diagnostic points.
//!
//! # Design
//!
//! A compilation sees one script and any number of tapset files (libraries of
//! functions and aliases). All of them live in one [`Sources`], each under a
//! [`FileId`]; a [`Span`] is a byte range in one file. Diagnostics render against
//! the `Sources` through `codespan-reporting`, so an error inside a tapset points
//! into the tapset's own text.

use std::ops::Range;

use codespan_reporting::files::{Files, SimpleFile};

/// The number of a file in [`Sources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FileId(pub u32);

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Span {
    /// The file.
    pub file: FileId,
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// A span of `range` in `file`.
    pub fn new(file: FileId, range: Range<usize>) -> Self {
        Self {
            file,
            start: range.start as u32,
            end: range.end as u32,
        }
    }

    /// The smallest span covering both (which must be in the same file).
    pub fn to(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }

    /// The byte range.
    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// What a file is to the compilation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// The user's script: probes, functions, aliases.
    Script,
    /// A library file found on the tapset search path: functions and aliases only.
    Tapset,
}

/// Every file of one compilation.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    files: Vec<(SimpleFile<String, String>, SourceKind)>,
}

impl Sources {
    /// No files yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the user's script (a compilation has one).
    pub fn add_script(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.add(name.into(), text.into(), SourceKind::Script)
    }

    /// Adds a tapset file.
    pub fn add_tapset(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.add(name.into(), text.into(), SourceKind::Tapset)
    }

    fn add(&mut self, name: String, text: String, kind: SourceKind) -> FileId {
        self.files.push((SimpleFile::new(name, text), kind));
        FileId(self.files.len() as u32 - 1)
    }

    /// Every file, in the order added.
    pub fn ids(&self) -> impl Iterator<Item = FileId> + '_ {
        (0..self.files.len() as u32).map(FileId)
    }

    /// The text of a file.
    pub fn text(&self, file: FileId) -> &str {
        self.files[file.0 as usize].0.source()
    }

    /// The name of a file.
    pub fn name(&self, file: FileId) -> &str {
        self.files[file.0 as usize].0.name()
    }

    /// What the file is.
    pub fn kind(&self, file: FileId) -> SourceKind {
        self.files[file.0 as usize].1
    }

    /// The source text a span covers.
    pub fn snippet(&self, span: Span) -> &str {
        self.text(span.file).get(span.range()).unwrap_or("")
    }

    /// 1-based line and column of the span's start.
    pub fn line_column(&self, span: Span) -> (usize, usize) {
        let text = self.text(span.file);
        let start = (span.start as usize).min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map_or(start, |newline| start - newline - 1)
            + 1;
        (line, column)
    }
}

impl<'a> Files<'a> for Sources {
    type FileId = FileId;
    type Name = &'a str;
    type Source = &'a str;

    fn name(&'a self, id: FileId) -> Result<&'a str, codespan_reporting::files::Error> {
        self.files
            .get(id.0 as usize)
            .map(|(file, _)| file.name().as_str())
            .ok_or(codespan_reporting::files::Error::FileMissing)
    }

    fn source(&'a self, id: FileId) -> Result<&'a str, codespan_reporting::files::Error> {
        self.files
            .get(id.0 as usize)
            .map(|(file, _)| file.source().as_str())
            .ok_or(codespan_reporting::files::Error::FileMissing)
    }

    fn line_index(
        &'a self,
        id: FileId,
        byte_index: usize,
    ) -> Result<usize, codespan_reporting::files::Error> {
        self.files
            .get(id.0 as usize)
            .ok_or(codespan_reporting::files::Error::FileMissing)?
            .0
            .line_index((), byte_index)
    }

    fn line_range(
        &'a self,
        id: FileId,
        line_index: usize,
    ) -> Result<Range<usize>, codespan_reporting::files::Error> {
        self.files
            .get(id.0 as usize)
            .ok_or(codespan_reporting::files::Error::FileMissing)?
            .0
            .line_range((), line_index)
    }
}
