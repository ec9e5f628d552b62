//! Shared start-up logic for server child processes: random port, retry on "address in use",
//! wait until the server answers.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::poll::POLL_INTERVAL;
use crate::process::ProcessGuard;

/// How long one start attempt may take before the server must answer.
pub(crate) const START_DEADLINE: Duration = Duration::from_secs(15);
/// How many random ports (or restarts on the same port) are tried.
const MAX_ATTEMPTS: usize = 25;
/// Range random ports are chosen from.
const PORT_RANGE: std::ops::Range<u16> = 20_000..60_000;

/// Adds the server arguments for a port to a command.
pub(crate) type ArgsFn<'a> = Box<dyn Fn(&mut Command, u16) + 'a>;
/// Whether the server at an address, run by a pid, answers.
pub(crate) type ProbeFn<'a> = Box<dyn Fn(SocketAddr, u32) -> bool + 'a>;

/// What to launch and how to tell that it is up.
pub(crate) struct Spec<'a> {
    /// Binary name, looked up in `PATH`.
    pub binary: &'a str,
    /// Debian package that provides the binary (for the install hint).
    pub package: &'a str,
    /// Where the server's stdout/stderr go.
    pub log: &'a Path,
    /// Adds the server arguments for a given port to the command.
    pub args: ArgsFn<'a>,
    /// Returns true once the server at `addr`, run by process `pid`, answers.
    pub probe: ProbeFn<'a>,
}

/// Outcome of one start attempt on one port.
pub(crate) enum Attempt {
    /// The server answered.
    Up(ProcessGuard),
    /// The port was taken; the process exited.
    AddrInUse,
}

/// Starts the server on a random free port; returns the process and the port.
pub(crate) fn start_random(spec: &Spec<'_>) -> (ProcessGuard, u16) {
    let mut rng = rand::rng();
    for _ in 0..MAX_ATTEMPTS {
        let port = rng.random_range(PORT_RANGE);
        if let Attempt::Up(p) = attempt(spec, port) {
            return (p, port);
        }
        tracing::debug!(binary = spec.binary, port, "port in use, trying another");
    }
    panic!(
        "{} could not bind any of {MAX_ATTEMPTS} random ports",
        spec.binary
    );
}

/// Starts the server on exactly `port`, retrying while the port is briefly in use.
pub(crate) fn start_on(spec: &Spec<'_>, port: u16) -> ProcessGuard {
    for _ in 0..MAX_ATTEMPTS {
        if let Attempt::Up(p) = attempt(spec, port) {
            return p;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{} could not re-bind port {port}: address in use",
        spec.binary
    );
}

/// Starts the server once on `port` and waits until it answers or exits.
pub(crate) fn attempt(spec: &Spec<'_>, port: u16) -> Attempt {
    let log = File::create(spec.log)
        .unwrap_or_else(|e| panic!("cannot create log file {}: {e}", spec.log.display()));
    let log_err = log
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot clone log file handle: {e}"));
    let mut cmd = Command::new(spec.binary);
    (spec.args)(&mut cmd, port);
    cmd.stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
    let mut proc = match ProcessGuard::spawn(spec.binary, &mut cmd) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{}` not found in PATH; install it with `apt-get install -y {}`",
            spec.binary, spec.package
        ),
        Err(e) => panic!("failed to spawn {}: {e}", spec.binary),
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let end = Instant::now() + START_DEADLINE;
    loop {
        match proc.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                let text = std::fs::read_to_string(spec.log).unwrap_or_default();
                if text.to_ascii_lowercase().contains("address already in use") {
                    return Attempt::AddrInUse;
                }
                panic!("{} exited early ({status}); log:\n{text}", spec.binary);
            }
            Err(e) => panic!("cannot query {} status: {e}", spec.binary),
        }
        if (spec.probe)(addr, proc.id()) {
            return Attempt::Up(proc);
        }
        if Instant::now() >= end {
            let text = std::fs::read_to_string(spec.log).unwrap_or_default();
            panic!(
                "{} on {addr} did not answer within {START_DEADLINE:?}; log:\n{text}",
                spec.binary
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
