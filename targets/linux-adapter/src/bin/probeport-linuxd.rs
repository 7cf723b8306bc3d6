//! `probeport-linuxd`: serves the probe port on a Unix socket or a serial line on
//! Linux.
//!
//! Usage: `probeport-linuxd (SOCKET | --serial DEVICE) [--lease-ms N] [--ring-bytes N]
//! [--socket-mode OCTAL] [--tracepoints SUBSYSTEM:EVENT,...]`. The socket is root-only (0600) unless `--socket-mode`
//! says otherwise; peers are checked for uid 0, `CAP_PERFMON` or `CAP_SYS_ADMIN` in
//! any case. A serial line is put in raw 8N1 mode; whoever can open it holds the
//! port.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use linux_adapter::serial;
use linux_adapter::server::{self, Config};
use linux_adapter::sys::UprobePmu;

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut socket: Option<PathBuf> = None;
    let mut serial: Option<PathBuf> = None;
    let mut config = Config::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--lease-ms" => {
                let value = args.next().context("--lease-ms needs a value")?;
                config.lease_ms = value.parse().context("--lease-ms")?;
            }
            "--ring-bytes" => {
                let value = args.next().context("--ring-bytes needs a value")?;
                config.ring_bytes = value.parse().context("--ring-bytes")?;
                if !config.ring_bytes.is_power_of_two() || config.ring_bytes < 4096 {
                    bail!("--ring-bytes must be a power of two of at least 4096");
                }
            }
            "--socket-mode" => {
                let value = args.next().context("--socket-mode needs a value")?;
                config.socket_mode = u32::from_str_radix(&value, 8).context("--socket-mode")?;
            }
            "--tracepoints" => {
                let value = args.next().context("--tracepoints needs a list")?;
                linux_adapter::tracepoints::choose(
                    value
                        .split(',')
                        .filter(|name| !name.is_empty())
                        .map(str::to_string)
                        .collect(),
                );
            }
            "--serial" => {
                serial = Some(PathBuf::from(
                    args.next().context("--serial needs a device")?,
                ));
            }
            other if other.starts_with('-') => bail!("unknown option {other}"),
            path => socket = Some(PathBuf::from(path)),
        }
    }
    let pmu =
        UprobePmu::discover().context("the uprobe PMU (/sys/bus/event_source/devices/uprobe)")?;
    if let Some(device) = serial {
        if socket.is_some() {
            bail!("a socket and --serial: choose one");
        }
        serial::serve(&device, pmu, &config)
            .with_context(|| format!("serial line {}", device.display()))?;
        return Ok(());
    }
    let socket = socket.context(
        "usage: probeport-linuxd (SOCKET | --serial DEVICE) [--lease-ms N] [--ring-bytes N] \
         [--socket-mode OCTAL] [--tracepoints SUBSYSTEM:EVENT,...]",
    )?;
    let listener = server::bind(&socket, &config)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    eprintln!("probeport-linuxd: serving {}", socket.display());
    server::serve(&listener, pmu, &config)?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("probeport-linuxd: {error:#}");
            ExitCode::FAILURE
        }
    }
}
