//! The `probeport` command line: `list` what a kernel offers to probe, `check` a
//! script against its debuginfo, and `run` it on a kernel's probe port.
//!
//! Exit status: 0 success; 1 an error (compile errors, a refused probe, a port or
//! I/O failure, events unaccounted for), its cause printed on stderr; 2 bad usage.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use lang::CompileOptions;
use userland_client::btf::source::{KernelBtf, KernelTypes};
use userland_client::debuginfo::{Kernel, ListOptions, format_list};
use userland_client::markers;
use userland_client::port::Port;
use userland_client::record::Recorder;
use userland_client::script;
use userland_client::session::{self, Output, OutputFormat, SessionError, SessionOptions};
use userland_client::target::{self, Link, Target};

/// Where Debian's `gnumach-image-1.8-486-dbg` package puts its image.
const GNUMACH_DEBUG_IMAGE: &str = "/boot/gnumach-1.8-486-dbg.gz";

const AFTER_HELP: &str = "\
Examples:
  probeport run --demo -e 'probe kernel.function(\"demo_kernel::vm::fault\") { @faults[$address >> 12] = count(); }' -d 2
  probeport run --demo trace.probe --format json -o trace.jsonl
  probeport run --kernel vmlinux --port unix:/run/probeport.sock trace.probe
  probeport run --port unix:/run/probeport.sock -e 'probe process(\"/usr/bin/bash\").function(\"readline\") { @n = count(); }' -d 5
  probeport run --kernel demo-kernel --port serial:/dev/ttyS1 --record session.rec trace.probe
  probeport run --kernel demo-kernel --replay session.rec trace.probe
  probeport check --kernel gnumach-dbg -e 'probe kernel.function(\"ipc_kmsg_get\") { printf(\"%d\\n\", $size); }' --dump
  probeport list --kernel gnumach-dbg 'ipc_kmsg_*'

Exit status: 0 success; 1 an error (compile errors, a refused probe, a port or I/O
failure, events unaccounted for), the cause printed on stderr; 2 bad usage.";

#[derive(Debug, Parser)]
#[command(
    name = "probeport",
    version,
    about = "Dynamic tracing for kernels that cannot load modules",
    after_help = AFTER_HELP
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
    /// Compiles a script against a kernel's debuginfo and the static markers its
    /// image holds, without running it.
    #[command(after_help = AFTER_HELP)]
    Check {
        #[command(flatten)]
        script: ScriptArgs,
        /// The kernel image with DWARF, or `gnumach-dbg`.
        #[arg(long, short = 'k', required_unless_present = "btf")]
        kernel: Option<String>,
        /// Instead of `--kernel`: the kernel's BTF (raw, as /sys/kernel/btf/vmlinux, a
        /// vmlinux with a .BTF section, or a compressed vmlinuz), for kernel functions
        /// named by symbol as the Linux adapter probes them.
        #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
        btf: Option<PathBuf>,
        /// Prints every map, record format and site with its programs disassembled.
        #[arg(long)]
        dump: bool,
    },
    /// Runs a script on a kernel's probe port and prints what it traces.
    #[command(after_help = AFTER_HELP)]
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct ScriptArgs {
    /// The script file.
    #[arg(required_unless_present = "program", conflicts_with = "program")]
    script: Option<PathBuf>,
    /// The script, given on the command line.
    #[arg(short = 'e', value_name = "PROGRAM")]
    program: Option<String>,
    /// A directory of tapsets (`*.probe`) to read besides the built-in ones.
    #[arg(short = 'I', long = "tapsets", value_name = "DIR")]
    tapset_dirs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["port", "replay", "demo"]))]
struct RunArgs {
    #[command(flatten)]
    script: ScriptArgs,
    /// The kernel image with DWARF (`gnumach-dbg`: Debian's GNU Mach debug image);
    /// with `--demo`, the demo kernel built for it by default. Without it (and with
    /// `--port`), only user-space `process(...)` points can be used (the Linux
    /// adapter, `probeport-linuxd`).
    #[arg(long, short = 'k')]
    kernel: Option<String>,
    /// The kernel's BTF for kernel functions named by symbol (the Linux adapter): a
    /// raw BTF file, a vmlinux with a .BTF section, or a compressed vmlinuz; refused
    /// when its build-id is not the running kernel's. Without it (and without
    /// `--kernel`), a `unix:` port is typed from this machine's
    /// /sys/kernel/btf/vmlinux when the port's kernel is this machine's.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel")]
    btf: Option<PathBuf>,
    /// An existing probe port: `unix:PATH` (a socket) or `serial:DEVICE`.
    #[arg(long, value_name = "unix:PATH|serial:DEVICE")]
    port: Option<String>,
    /// Plays back a recorded session instead of connecting to a kernel.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// Boots the demo kernel under QEMU and traces it.
    #[arg(long)]
    demo: bool,
    /// Records the session's messages into FILE (for `--replay`).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Stops after this many seconds (else at `exit()` or Ctrl-C).
    #[arg(short = 'd', long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Writes the output to FILE instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Text, as bpftrace prints it.
    Text,
    /// JSON lines: one object per record, map and summary.
    Json,
}

/// An error with its exit status.
struct Failure {
    status: u8,
    error: anyhow::Error,
    /// Already shown (diagnostics): print nothing more than a one-line cause.
    quiet: bool,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            status: 1,
            error: error.into(),
            quiet: false,
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        status: 2,
        error: anyhow::anyhow!(message.into()),
        quiet: false,
    }
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

fn open_kernel(name: &str) -> anyhow::Result<Kernel> {
    let path = kernel_path(name)?;
    Kernel::open(&path).with_context(|| format!("cannot read debuginfo from {}", path.display()))
}

fn load_script(args: &ScriptArgs) -> Result<lang::source::Sources, Failure> {
    script::load(
        args.script.as_deref(),
        args.program.as_deref(),
        &args.tapset_dirs,
    )
    .map_err(Failure::from)
}

fn list(kernel: &str, verbose: bool, pattern: &str) -> Result<(), Failure> {
    let kernel = open_kernel(kernel)?;
    let mut listing = format_list(&kernel, pattern, ListOptions { verbose });
    // Static markers the image declares, as `kernel.marker("name")` probe points.
    for marker in markers::read(&kernel).map_err(anyhow::Error::from)? {
        let marker = marker.marker;
        if !userland_client::debuginfo::matches_pattern(pattern, &marker.name) {
            continue;
        }
        let arguments: Vec<String> = marker
            .args
            .iter()
            .map(|argument| format!("{} {}", arg_type_name(argument.ty), argument.name))
            .collect();
        listing.push_str(&format!(
            "kernel.marker(\"{}\")({})\n",
            marker.name,
            arguments.join(", ")
        ));
    }
    if listing.trim().is_empty() {
        return Err(anyhow::anyhow!("no function or marker matches `{pattern}`").into());
    }
    print!("{listing}");
    if !listing.ends_with('\n') {
        println!();
    }
    Ok(())
}

/// A marker argument's type as C spells it.
fn arg_type_name(ty: probe_port_protocol::message::ArgType) -> &'static str {
    use probe_port_protocol::message::ArgType;
    match ty {
        ArgType::U8 => "uint8_t",
        ArgType::U16 => "uint16_t",
        ArgType::U32 => "uint32_t",
        ArgType::U64 => "uint64_t",
        ArgType::I8 => "int8_t",
        ArgType::I16 => "int16_t",
        ArgType::I32 => "int32_t",
        ArgType::I64 => "int64_t",
        ArgType::Bool => "bool",
        ArgType::Pointer => "void *",
        ArgType::String => "char *",
    }
}

/// The marker table of the image (`None` when it has no `probeport_markers`
/// section); a table that cannot be read is an error.
fn image_markers(kernel: &Kernel) -> anyhow::Result<Option<Vec<lang::resolver::Marker>>> {
    Ok(markers::read_markers(kernel)?)
}

fn open_btf(path: &std::path::Path) -> anyhow::Result<KernelBtf> {
    KernelBtf::open(path).context("cannot read the kernel's BTF")
}

fn check(
    args: &ScriptArgs,
    kernel: Option<&str>,
    btf: Option<&std::path::Path>,
    dump: bool,
) -> Result<(), Failure> {
    // With BTF and no image the kernel is a Linux one: its tapsets, which
    // `check_btf` adds, not the demo kernel's.
    let sources = if kernel.is_none() {
        script::load_for_target(
            args.script.as_deref(),
            args.program.as_deref(),
            &args.tapset_dirs,
        )
        .map_err(Failure::from)?
    } else {
        load_script(args)?
    };
    let checked = match (kernel, btf) {
        (Some(kernel), _) => {
            let kernel = open_kernel(kernel)?;
            let markers = image_markers(&kernel)?.unwrap_or_default();
            script::check(&kernel, markers, &sources, &CompileOptions::default())
        }
        (None, Some(btf)) => {
            script::check_btf(&open_btf(btf)?.btf, &sources, &CompileOptions::default())
        }
        (None, None) => return Err(usage("give --kernel IMAGE or --btf FILE")),
    };
    eprint!("{}", checked.rendered);
    match checked.script {
        Some(compiled) if !checked.failed => {
            if dump {
                print!("{}", script::dump(&compiled));
            } else {
                print!("{}", script::summary(&compiled));
            }
            Ok(())
        }
        _ => Err(Failure {
            status: 1,
            error: anyhow::anyhow!("the script has errors"),
            quiet: true,
        }),
    }
}

fn run_script(args: &RunArgs) -> Result<(), Failure> {
    // Without an image the kernel is known from the handshake, and so are its
    // built-in tapsets (the session adds them).
    let sources = if args.kernel.is_some() || args.demo {
        load_script(&args.script)?
    } else {
        script::load_for_target(
            args.script.script.as_deref(),
            args.script.program.as_deref(),
            &args.script.tapset_dirs,
        )
        .map_err(Failure::from)?
    };
    let duration = match args.duration {
        Some(seconds) if !(seconds.is_finite() && seconds > 0.0) => {
            return Err(usage(format!(
                "-d {seconds}: give a positive number of seconds"
            )));
        }
        seconds => seconds.map(Duration::from_secs_f64),
    };
    let kernel_name = match (&args.kernel, args.demo) {
        (Some(kernel), _) => kernel.clone(),
        (None, true) => target::DemoKernel::build()
            .context("cannot build the demo kernel")?
            .display()
            .to_string(),
        (None, false) if args.port.is_some() || args.replay.is_some() => String::new(),
        (None, false) => return Err(usage("--kernel is needed (the image the kernel runs)")),
    };
    // Without --kernel, only user-space points and exact kernel function names (for
    // a stub that resolves them) can be resolved (the Linux adapter).
    let kernel = if kernel_name.is_empty() {
        None
    } else {
        Some(open_kernel(&kernel_name)?)
    };
    // With the image's marker table, compile once before connecting (or booting the
    // demo kernel), so a script with errors fails at once; the session compiles
    // again against the running kernel's table, which must equal this one.
    let image_markers = match &kernel {
        Some(kernel) => image_markers(kernel)?,
        None => None,
    };
    // Kernel types from BTF: a file given is read now (and checked against the
    // running kernel's build-id once connected); a Unix socket's kernel may be this
    // machine's, whose BTF the session takes if the build-ids agree.
    let kernel_types = match (&args.btf, &kernel, args.port.as_deref()) {
        (Some(path), _, _) => Some(KernelTypes::File(Arc::new(open_btf(path)?))),
        (None, None, Some(port)) if port.starts_with("unix:") => Some(KernelTypes::Running),
        _ => None,
    };
    if kernel.is_none() {
        // With this machine's BTF for a `unix:` port, checking against it is sound:
        // if the port's kernel is another, the session has no types at all and
        // fails wherever this check does.
        let running = match &kernel_types {
            Some(KernelTypes::Running) => KernelBtf::running().ok().map(Arc::new),
            _ => None,
        };
        let checked = match (&kernel_types, &running) {
            (Some(KernelTypes::File(btf)), _) | (_, Some(btf)) => {
                script::check_btf(&btf.btf, &sources, &CompileOptions::default())
            }
            _ => script::check_user_space(&sources, &CompileOptions::default()),
        };
        if checked.failed {
            eprint!("{}", checked.rendered);
            return Err(Failure {
                status: 1,
                error: anyhow::anyhow!(
                    "the script has errors (without --kernel, only user-space process(...) \
                     points and kernel functions named exactly can be resolved)"
                ),
                quiet: false,
            });
        }
    }
    if let (Some(markers), Some(kernel)) = (&image_markers, &kernel) {
        let checked = script::check(
            kernel,
            markers.clone(),
            &sources,
            &CompileOptions::default(),
        );
        if checked.failed {
            eprint!("{}", checked.rendered);
            return Err(Failure {
                status: 1,
                error: anyhow::anyhow!("the script has errors"),
                quiet: true,
            });
        }
    }
    let mut target: Box<dyn Target> = if args.demo {
        let timeout = duration.unwrap_or(Duration::from_secs(24 * 3600)) + Duration::from_secs(120);
        Box::new(target::DemoKernel::new(
            kernel
                .as_ref()
                .map(|kernel| kernel.path().to_path_buf())
                .unwrap_or_default(),
            timeout,
        ))
    } else if let Some(replay) = &args.replay {
        Box::new(target::Replayed {
            path: replay.clone(),
        })
    } else {
        let port = args.port.as_deref().unwrap_or_default();
        match port.split_once(':') {
            Some(("unix", path)) => Box::new(target::UnixSocket {
                path: PathBuf::from(path),
            }),
            Some(("serial", path)) => Box::new(target::Serial {
                path: PathBuf::from(path),
            }),
            _ => {
                return Err(usage(format!(
                    "--port {port}: give unix:PATH or serial:DEVICE"
                )));
            }
        }
    };
    let link: Link = target
        .connect()
        .with_context(|| format!("cannot open the probe port of {}", target.describe()))?;
    let link: Link = match &args.record {
        Some(path) => Box::new(
            Recorder::create(link, path)
                .with_context(|| format!("cannot create the recording {}", path.display()))?,
        ),
        None => link,
    };
    let mut port = Port::new(link);

    let stop = Arc::new(AtomicBool::new(false));
    // A first Ctrl-C stops tracing cleanly (the `end` output still comes); a second
    // one ends the process at once.
    signal_hook::flag::register_conditional_shutdown(
        signal_hook::consts::SIGINT,
        1,
        Arc::clone(&stop),
    )?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&stop))?;

    let mut file_output;
    let mut stdout_output;
    let out: &mut dyn Write = match &args.output {
        Some(path) => {
            file_output = io::BufWriter::new(
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
            );
            &mut file_output
        }
        None => {
            stdout_output = io::stdout().lock();
            &mut stdout_output
        }
    };
    let mut stderr = io::stderr().lock();
    let mut output = Output {
        out,
        err: &mut stderr,
        format: match args.format {
            Format::Text => OutputFormat::Text,
            Format::Json => OutputFormat::Json,
        },
    };
    let options = SessionOptions {
        duration,
        format: output.format,
        image_markers,
        // Without the image, the tapsets are those of the kernel the stub names.
        target_tapsets: kernel.is_none(),
        kernel_types,
        ..SessionOptions::default()
    };
    let outcome = match &kernel {
        Some(kernel) => session::run(&mut port, kernel, &sources, &options, &mut output, &stop),
        None => session::run_user_space(&mut port, &sources, &options, &mut output, &stop),
    };
    match outcome {
        Ok(summary) if summary.is_consistent() => Ok(()),
        Ok(_) => Err(anyhow::anyhow!("some events are unaccounted for (see above)").into()),
        Err(SessionError::Compile { rendered }) => {
            eprint!("{rendered}");
            Err(Failure {
                status: 1,
                error: anyhow::anyhow!("the script has errors"),
                quiet: true,
            })
        }
        Err(error) => Err(anyhow::Error::new(error)
            .context(format!("tracing {}", target.describe()))
            .into()),
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::List {
            kernel,
            verbose,
            pattern,
        } => list(kernel, *verbose, pattern),
        Command::Check {
            script,
            kernel,
            btf,
            dump,
        } => check(script, kernel.as_deref(), btf.as_deref(), *dump),
        Command::Run(args) => run_script(args),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if failure.quiet {
                eprintln!("probeport: {}", failure.error);
            } else {
                eprintln!("probeport: {:#}", failure.error);
            }
            ExitCode::from(failure.status)
        }
    }
}
