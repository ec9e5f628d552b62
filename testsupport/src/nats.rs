//! A real `nats-server` (JetStream enabled) child process on a free loopback port.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::launch::{self, Spec};
use crate::process::ProcessGuard;

/// A `nats-server -js` on `127.0.0.1:<random port>` with its own JetStream store directory;
/// killed when dropped.
///
/// Requires `nats-server` in `PATH` (`apt-get install -y nats-server`).
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    name: String,
    dir: TempDir,
    process: Option<ProcessGuard>,
}

impl NatsServer {
    /// Starts a server on a random port in 20000-60000 (retrying another port when the chosen one is
    /// in use) and waits until it accepts a TCP connection and sends its `INFO` line.
    ///
    /// # Panics
    /// When `nats-server` is missing, exits for another reason, or does not answer in time.
    pub fn start() -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("contrail-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create nats temp dir: {e}"));
        let name = format!(
            "contrail-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        );
        let store = store_path(dir.path());
        let log = log_path(dir.path());
        let (process, port) = launch::start_random(&spec(&store, &log, &name));
        tracing::debug!(port, "nats-server started");
        NatsServer {
            port,
            name,
            dir,
            process: Some(process),
        }
    }

    /// The server's address (stays the same across [`NatsServer::restart`]).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Connection URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory (`-sd`), kept across restarts.
    pub fn store_dir(&self) -> PathBuf {
        store_path(self.dir.path())
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ProcessGuard::is_running)
    }

    /// Kills the server (`SIGKILL`) and waits for it to exit. The port and store directory stay
    /// reserved for [`NatsServer::restart`]. No-op when already stopped.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill_hard();
        }
    }

    /// Stops the server if running, then starts it again on the same port with the same store
    /// directory, and waits until it sends `INFO`.
    ///
    /// # Panics
    /// When the port cannot be re-bound or the server does not answer in time.
    pub fn restart(&mut self) {
        self.stop();
        let store = store_path(self.dir.path());
        let log = log_path(self.dir.path());
        self.process = Some(launch::start_on(&spec(&store, &log, &self.name), self.port));
    }

    /// Connects and returns the server's `INFO` line (JSON after `INFO `).
    pub fn info(&self) -> std::io::Result<String> {
        read_info(self.addr())
    }
}

fn store_path(dir: &Path) -> PathBuf {
    dir.join("store")
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("nats.log")
}

fn read_info(addr: SocketAddr) -> std::io::Result<String> {
    let timeout = Duration::from_secs(2);
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

fn spec<'a>(store: &'a Path, log: &'a Path, name: &'a str) -> Spec<'a> {
    Spec {
        binary: "nats-server",
        package: "nats-server",
        log,
        args: Box::new(move |cmd: &mut Command, port: u16| {
            cmd.args(["-js", "-a", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .arg("-sd")
                .arg(store)
                .arg("-n")
                .arg(name);
        }),
        // The INFO line must come from our server (by name), not whoever owned the port before.
        probe: Box::new(move |addr, _pid| {
            read_info(addr).is_ok_and(|info| {
                info.starts_with("INFO ") && info.contains(&format!("\"server_name\":\"{name}\""))
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn ping_pong(addr: SocketAddr) -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut info = String::new();
        reader.read_line(&mut info)?;
        stream.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")?;
        let mut reply = String::new();
        reader.read_line(&mut reply)?;
        Ok(reply.trim_end().to_owned())
    }

    #[test]
    fn starts_with_jetstream_and_answers() {
        let nats = NatsServer::start();
        assert_eq!(
            nats.url(),
            format!("nats://127.0.0.1:{}", nats.addr().port())
        );
        let info = nats.info().expect("info");
        assert!(info.starts_with("INFO {"), "{info}");
        assert!(info.contains("\"jetstream\":true"), "{info}");
        assert!(
            info.contains(&format!("\"port\":{}", nats.addr().port())),
            "{info}"
        );
        assert_eq!(ping_pong(nats.addr()).expect("ping"), "PONG");
        assert!(nats.store_dir().join("jetstream").is_dir());
    }

    #[test]
    fn stop_and_restart_on_same_port_and_store() {
        let mut nats = NatsServer::start();
        let addr = nats.addr();
        let marker = nats.store_dir().join("marker");
        std::fs::File::create(&marker)
            .and_then(|mut f| f.write_all(b"x"))
            .expect("marker");
        nats.stop();
        assert!(!nats.is_running());
        assert!(nats.info().is_err(), "still answering after stop");
        nats.restart();
        assert_eq!(nats.addr(), addr);
        assert_eq!(ping_pong(addr).expect("ping"), "PONG");
        let mut s = String::new();
        std::fs::File::open(&marker)
            .and_then(|mut f| f.read_to_string(&mut s))
            .expect("store dir kept");
        assert_eq!(s, "x");
    }

    #[test]
    fn drop_kills_the_server() {
        let nats = NatsServer::start();
        let addr = nats.addr();
        drop(nats);
        assert!(read_info(addr).is_err());
    }
}
