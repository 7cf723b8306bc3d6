//! `qemu-run`: boot a kernel image under the harness and report the verdict.
//!
//! ```text
//! qemu-run [--kernel ELF] [--append CMDLINE] [--smp N] [--timeout SECONDS]
//!          [--single-thread] [--icount] [--no-port]
//! ```
//!
//! Without `--kernel` it builds the demo kernel first. With the probe port wired (the
//! default) and the kernel serving it (not with `demo.bench` or `demo.com2=off` on
//! its command line), it opens a session on the port: the handshake (whose reply it
//! prints: kernel name, build-id, CPUs, lease) and `Goodbye`, which the demo kernel
//! waits for before its verdict. Then it waits for the verdict, prints the console
//! log and exits 0 on a pass, 1 on anything else (with the reason).
//!
//! The in-kernel benchmark: `qemu-run --append demo.bench --no-port --single-thread`.
//! `--icount` runs the guest with `-icount shift=0,sleep=off` (implies
//! `--single-thread`): its virtual clock, and so its TSC, advance by one per guest
//! instruction, which turns the benchmark's cycle counts into exact, repeatable
//! instruction counts (`demo.bench=instructions` labels them so).

use std::process::ExitCode;
use std::time::Duration;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use probe_port_protocol::frame::{DefaultFrameDecoder, encode_message_vec};
use probe_port_protocol::message::{
    Hello, PROTOCOL_VERSION, ReplyBody, Request, RequestBody, StubMessage, decode_stub_message,
};
use qemu::{Config, Error, Qemu, TcgThreading, build_demo_kernel};

const USAGE: &str = "usage: qemu-run [--kernel ELF] [--append CMDLINE] [--smp N] [--timeout SECONDS] \
                     [--single-thread] [--icount] [--no-port]";

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
    let mut icount = false;
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
            "--icount" => icount = true,
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
    if icount {
        // Instruction counting is incompatible with multi-threaded TCG.
        config = config.tcg_threading(TcgThreading::Single);
        config
            .extra_arguments
            .extend(["-icount".to_owned(), "shift=0,sleep=off".to_owned()]);
    }
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
    let served = config.append.as_deref().is_none_or(|cmdline| {
        !cmdline
            .split_whitespace()
            .any(|word| word == "demo.bench" || word == "demo.com2=off")
    });
    if config.probe_port && served {
        let deadline = qemu.remaining();
        let port = qemu.take_port().expect("the probe port is wired");
        if let Err(problem) = session(port, deadline) {
            qemu.kill();
            return Err(Error::Port {
                detail: problem,
                console: qemu_console(&qemu),
            });
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

/// The console so far, as the error type wants it.
fn qemu_console(qemu: &Qemu) -> qemu::ConsoleLog {
    qemu::ConsoleLog {
        path: qemu.console_path().to_path_buf(),
        contents: qemu.console(),
        qemu_output: String::new(),
    }
}

/// Opens a session on the probe port, prints the handshake, says goodbye.
fn session(mut port: UnixStream, deadline: Duration) -> Result<(), String> {
    port.set_read_timeout(Some(deadline.max(Duration::from_millis(1))))
        .map_err(|error| error.to_string())?;
    let mut decoder = Box::new(DefaultFrameDecoder::new());
    let mut pending = Vec::new();
    let mut request = |seq: u32, body: RequestBody<'_>| -> Result<String, String> {
        let frame =
            encode_message_vec(&Request { seq, body }).map_err(|error| format!("{error:?}"))?;
        port.write_all(&frame).map_err(|error| error.to_string())?;
        loop {
            let mut input = &pending[..];
            let mut reply = None;
            while !input.is_empty() {
                if let Some(Ok(payload)) = decoder.feed(&mut input)
                    && let Ok(StubMessage::Reply {
                        seq: got,
                        reply: body,
                    }) = decode_stub_message(payload)
                    && got == seq
                {
                    reply = Some(match body {
                        Ok(ReplyBody::Hello(hello)) => format!(
                            "{} ({:?}), build-id {}, {} CPU(s), lease {} ms",
                            hello.kernel.name,
                            hello.kernel.arch,
                            hello
                                .kernel
                                .build_id
                                .iter()
                                .map(|byte| format!("{byte:02x}"))
                                .collect::<String>(),
                            hello.cpu_count,
                            hello.lease_ms
                        ),
                        Ok(other) => format!("{other:?}"),
                        Err(error) => return Err(format!("request {seq} refused: {error}")),
                    });
                    break;
                }
            }
            let consumed = pending.len() - input.len();
            pending.drain(..consumed);
            if let Some(reply) = reply {
                return Ok(reply);
            }
            let mut buffer = [0u8; 4096];
            match port.read(&mut buffer) {
                Ok(0) => return Err("the probe port closed".to_owned()),
                Ok(read) => pending.extend_from_slice(&buffer[..read]),
                Err(error) => return Err(format!("reading the probe port: {error}")),
            }
        }
    };
    let hello = request(
        1,
        RequestBody::Hello(Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client: "qemu-run",
        }),
    )?;
    println!("qemu-run: probe port: {hello}");
    request(2, RequestBody::Goodbye)?;
    println!("qemu-run: probe port: goodbye");
    Ok(())
}
