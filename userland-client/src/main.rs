//! The `probeport` command line.
//!
//! Today it lists what a kernel's debuginfo offers to probe (`probeport list`); the
//! script front end (`run`, `check`) arrives with the language.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use userland_client::debuginfo::{Kernel, ListOptions, format_list};

/// Where Debian's `gnumach-image-1.8-486-dbg` package puts its image.
const GNUMACH_DEBUG_IMAGE: &str = "/boot/gnumach-1.8-486-dbg.gz";

#[derive(Debug, Parser)]
#[command(
    name = "probeport",
    version,
    about = "Dynamic tracing for kernels that cannot load modules",
    after_help = "Examples:\n  \
        probeport list --kernel gnumach-dbg 'ipc_kmsg_*'\n  \
        probeport list --kernel target/x86_64-unknown-none/release/demo-kernel -v '*::port_send'\n\n\
        Exit status: 0 success, 1 error (the cause is printed), 2 bad usage."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists the functions of a kernel's debuginfo with their parameters and types.
    List {
        /// The kernel image with DWARF (ELF, optionally gzip-compressed), or
        /// `gnumach-dbg` for Debian's GNU Mach debug image.
        #[arg(long, short = 'k')]
        kernel: String,
        /// Shows entry addresses, declarations, parameter locations and inlined copies.
        #[arg(long, short = 'v')]
        verbose: bool,
        /// Function names to list, with shell wildcards (`*`, `?`, `[..]`).
        #[arg(default_value = "*")]
        pattern: String,
    },
}

fn kernel_path(name: &str) -> anyhow::Result<PathBuf> {
    if name != "gnumach-dbg" {
        return Ok(PathBuf::from(name));
    }
    let path = PathBuf::from(GNUMACH_DEBUG_IMAGE);
    anyhow::ensure!(
        path.exists(),
        "{GNUMACH_DEBUG_IMAGE} is missing: install it with \
         `apt-get install gnumach-image-1.8-486-dbg`"
    );
    Ok(path)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::List {
            kernel,
            verbose,
            pattern,
        } => {
            let path = kernel_path(&kernel)?;
            let kernel = Kernel::open(&path)
                .with_context(|| format!("cannot read debuginfo from {}", path.display()))?;
            let listing = format_list(&kernel, &pattern, ListOptions { verbose });
            anyhow::ensure!(
                !listing.trim().is_empty(),
                "no function matches `{pattern}`"
            );
            print!("{listing}");
            if !listing.ends_with('\n') {
                println!();
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("probeport: {error:#}");
            ExitCode::FAILURE
        }
    }
}
