//! `qemu-run`: boot a kernel image under the harness and report the verdict.
//!
//! ```text
//! qemu-run [--kernel ELF] [--append CMDLINE] [--smp N] [--timeout SECONDS]
//!          [--single-thread] [--no-port] [--keep-going]
//! ```
//!
//! Without `--kernel` it builds the demo kernel first. With the probe port wired (the
//! default) it answers the demo kernel's COM2 self-check: it prints the kernel's hello
//! line, sends one line back and prints the echo. Then it waits for the verdict,
//! prints the console log and exits 0 on a pass, 1 on anything else (with the reason).

use std::process::ExitCode;
use std::time::Duration;

use qemu::{Config, Error, Qemu, TcgThreading, build_demo_kernel};

const USAGE: &str = "usage: qemu-run [--kernel ELF] [--append CMDLINE] [--smp N] [--timeout SECONDS] \
                     [--single-thread] [--no-port]";

fn main() -> ExitCode {
    let config = match parse_arguments(std::env::args().skip(1)) {
        Ok(Some(config)) => config,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("qemu-run: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("qemu-run: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration the arguments ask for; `None` for `--help`.
fn parse_arguments(mut arguments: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
    let mut kernel = None;
    let mut append = None;
    let mut cpus = 2;
    let mut timeout = Duration::from_secs(60);
    let mut threading = TcgThreading::Multi;
    let mut probe_port = true;
    while let Some(argument) = arguments.next() {
        let mut value = |name: &str| {
            arguments
                .next()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match argument.as_str() {
            "--kernel" => kernel = Some(value("--kernel")?),
            "--append" => append = Some(value("--append")?),
            "--smp" => {
                cpus = value("--smp")?
                    .parse()
                    .map_err(|_| "--smp wants a number".to_owned())?
            }
            "--timeout" => {
                let seconds: f64 = value("--timeout")?
                    .parse()
                    .map_err(|_| "--timeout wants seconds".to_owned())?;
                timeout = Duration::try_from_secs_f64(seconds)
                    .map_err(|_| "--timeout out of range".to_owned())?;
            }
            "--single-thread" => threading = TcgThreading::Single,
            "--no-port" => probe_port = false,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let kernel = match kernel {
        Some(path) => path.into(),
        None => build_demo_kernel().map_err(|error| error.to_string())?,
    };
    let mut config = Config::new(kernel)
        .cpus(cpus)
        .timeout(timeout)
        .tcg_threading(threading)
        .probe_port(probe_port);
    config.append = append;
    Ok(Some(config))
}

fn run(config: Config) -> Result<(), Error> {
    println!(
        "qemu-run: booting {} ({} CPUs, {:?} TCG)",
        config.kernel.display(),
        config.cpus,
        config.tcg_threading
    );
    let mut qemu = Qemu::start(&config)?;
    println!(
        "qemu-run: QEMU pid {}, run directory {}",
        qemu.pid(),
        qemu.run_directory().display()
    );
    if config.probe_port {
        match qemu.read_port_line()? {
            Some(hello) => {
                println!("qemu-run: COM2 <- {hello:?}");
                qemu.write_port(b"hello from qemu-run\n")?;
                match qemu.read_port_line()? {
                    Some(echo) => println!("qemu-run: COM2 <- {echo:?}"),
                    None => println!("qemu-run: COM2 closed before the echo"),
                }
            }
            None => println!("qemu-run: COM2 closed without a line"),
        }
    }
    let outcome = qemu.wait()?;
    print!("{}", outcome.console);
    println!(
        "qemu-run: PASS (exit status {}) in {:.2?}",
        outcome.exit_status, outcome.elapsed
    );
    Ok(())
}
