//! A script as the command line gives it: a file or `-e PROGRAM`, with the tapsets
//! (the built-in ones, then each `-I DIR`), compiled without a kernel connection for
//! `probeport check` (and by `probeport run` before it connects), against the
//! image's debuginfo and the marker table read from the image ([`crate::markers`]).

use std::io;
use std::path::{Path, PathBuf};

use lang::compiled::{CompiledScript, describe};
use lang::diagnostic::{Diagnostic, render};
use lang::resolver::Marker;
use lang::source::Sources;
use lang::{CompileOptions, compile};

use crate::debuginfo::Kernel;
use crate::resolve::DwarfResolver;

/// The name `-e PROGRAM` gets in diagnostics.
pub const COMMAND_LINE: &str = "<command line>";

/// The script (from `path`, or `program` given inline) and every tapset: the
/// demo kernel's built-in ones (the kernels compiled with an image), then each
/// directory's.
pub fn load(
    path: Option<&Path>,
    program: Option<&str>,
    tapset_dirs: &[PathBuf],
) -> io::Result<Sources> {
    let mut sources = script_only(path, program)?;
    lang::tapset::add_builtin(&mut sources);
    lang::tapset::add_search_path(&mut sources, tapset_dirs)?;
    Ok(sources)
}

/// [`load`] without the built-in tapsets, which the session adds for the kernel
/// the handshake names (`SessionOptions::target_tapsets`): for runs without the
/// kernel's image, whose kernel is known only once connected.
pub fn load_for_target(
    path: Option<&Path>,
    program: Option<&str>,
    tapset_dirs: &[PathBuf],
) -> io::Result<Sources> {
    let mut sources = script_only(path, program)?;
    lang::tapset::add_search_path(&mut sources, tapset_dirs)?;
    Ok(sources)
}

fn script_only(path: Option<&Path>, program: Option<&str>) -> io::Result<Sources> {
    let mut sources = Sources::new();
    match (path, program) {
        (_, Some(program)) => {
            sources.add_script(COMMAND_LINE, program);
        }
        (Some(path), None) => {
            let text = std::fs::read_to_string(path).map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot read {}: {error}", path.display()),
                )
            })?;
            sources.add_script(path.display().to_string(), text);
        }
        (None, None) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "give a script file or a program with -e",
            ));
        }
    }
    Ok(sources)
}

/// What `probeport check` found.
#[derive(Debug)]
pub struct Checked {
    /// The compiled script, when there was no error.
    pub script: Option<CompiledScript>,
    /// Every diagnostic, rendered as rustc does (empty when there is none).
    pub rendered: String,
    /// Whether any diagnostic is an error.
    pub failed: bool,
}

/// Compiles `sources` against `kernel`'s debuginfo and `markers` (the table read
/// from the image with [`crate::markers::read_markers`], or none).
pub fn check(
    kernel: &Kernel,
    markers: Vec<Marker>,
    sources: &Sources,
    options: &CompileOptions,
) -> Checked {
    let resolver = DwarfResolver::new(kernel, markers);
    let (script, diagnostics) = compile(sources, &resolver, options);
    Checked {
        failed: diagnostics.iter().any(Diagnostic::is_error),
        rendered: render(sources, &diagnostics),
        script,
    }
}

/// Compiles `sources` (loaded with [`load_for_target`]) with no kernel
/// debuginfo, before connecting, with the Linux tapsets (a run without the
/// kernel's image is the Linux adapter's): user-space (`process(...)`) points
/// resolve in the traced files themselves, kernel functions by exact name for a
/// stub that resolves symbols. Markers are the stub's, unknown until connected:
/// a marker that matches nothing is not counted as a failure here (the session
/// compiles again against the stub's table and tapsets).
pub fn check_user_space(sources: &Sources, options: &CompileOptions) -> Checked {
    check_before_connecting(sources, &crate::uprobe::KernelSymbolResolver, options)
}

/// [`check_user_space`], with kernel functions typed from `btf`.
pub fn check_btf(btf: &crate::btf::Btf, sources: &Sources, options: &CompileOptions) -> Checked {
    check_before_connecting(
        sources,
        &crate::btf::resolver::BtfResolver::new(btf),
        options,
    )
}

fn check_before_connecting(
    sources: &Sources,
    resolver: &dyn lang::resolver::Resolver,
    options: &CompileOptions,
) -> Checked {
    let mut sources = sources.clone();
    lang::tapset::add_builtin_for(&mut sources, lang::tapset::Builtin::Linux);
    let (script, diagnostics) = compile(&sources, resolver, options);
    let unknown_marker = |diagnostic: &Diagnostic| {
        diagnostic.code == lang::diagnostic::NO_MATCH
            && diagnostic.message.starts_with("no marker matches")
    };
    Checked {
        failed: diagnostics
            .iter()
            .any(|diagnostic| diagnostic.is_error() && !unknown_marker(diagnostic)),
        rendered: render(&sources, &diagnostics),
        script,
    }
}

/// One line per probe and a total: what `probeport check` prints on success.
pub fn summary(script: &CompiledScript) -> String {
    let mut text = String::new();
    for probe in &script.probes {
        text.push_str(&format!(
            "probe {}: {} site{}\n",
            probe.name,
            probe.attachments.len(),
            if probe.attachments.len() == 1 {
                ""
            } else {
                "s"
            }
        ));
    }
    let sites: usize = script
        .probes
        .iter()
        .map(|probe| probe.attachments.len())
        .sum();
    text.push_str(&format!(
        "ok: {} probes, {} sites, {} maps, {} records\n",
        script.probes.len(),
        sites,
        script.maps.len(),
        script.records.len()
    ));
    text
}

/// Everything compiled, for `--dump`: maps, records, host actions and each site
/// with its programs disassembled.
pub fn dump(script: &CompiledScript) -> String {
    describe(script, true)
}
