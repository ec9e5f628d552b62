//! A real PostgreSQL server on a free loopback port, in its own temporary data directory.
//!
//! `initdb` and `postgres` refuse to run as root, so when the tests run as root both run as the
//! `postgres` system user (set with `Command::uid`, no `sudo`/`runuser` in between, so killing
//! the child kills the server) and the temporary directory is handed to that user.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::launch::{self, Spec};
use crate::process::ProcessGuard;

/// A PostgreSQL server (trust authentication, user `postgres`, database `postgres`, `fsync=off`: a killed server keeps committed
/// data, a killed machine might not)
/// on `127.0.0.1:<random port>`; killed when dropped, its data directory removed.
///
/// Requires the Debian `postgresql` package (`/usr/lib/postgresql/<version>/bin`).
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    dir: TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    process: Option<ProcessGuard>,
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`, or `PATH` lookups.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).unwrap_or_default()
}

/// uid and gid of the `postgres` user when running as root (it must not run as root).
fn owner() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let mut f = line.split(':').skip(2);
    let uid = f.next()?.parse().ok()?;
    let gid = f.next()?.parse().ok()?;
    Some((uid, gid))
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
}

impl PostgresServer {
    /// Creates a cluster with `initdb` and starts it on a random port; waits until
    /// `pg_isready` says it accepts connections.
    ///
    /// # Panics
    /// When PostgreSQL is not installed, `initdb` fails, or the server does not come up.
    pub fn start() -> PostgresServer {
        let dir = tempfile::Builder::new()
            .prefix("contrail-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create postgres temp dir: {e}"));
        let owner = owner();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("cannot hand the temp dir to postgres: {e}"));
        }
        let bin = bin_dir();
        let data = dir.path().join("data");
        let mut init = Command::new(bin.join("initdb"));
        init.arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_owner(&mut init, owner);
        let out = init
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb (apt-get install -y postgresql): {e}"));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = PostgresServer {
            port: 0,
            dir,
            bin,
            owner,
            process: None,
        };
        let binary = server.bin.join("postgres").to_string_lossy().into_owned();
        let log = server.log_path();
        let (process, port) = launch::start_random(&server.spec(&binary, &log));
        server.port = port;
        server.process = Some(process);
        tracing::debug!(port, "postgres started");
        server
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn spec<'a>(&self, binary: &'a str, log: &'a Path) -> Spec<'a> {
        let data = self.dir.path().join("data");
        let sock = self.dir.path().to_path_buf();
        let owner = self.owner;
        let isready = self.bin.join("pg_isready");
        Spec {
            binary,
            package: "postgresql",
            log,
            args: Box::new(move |cmd: &mut Command, port: u16| {
                cmd.arg("-D")
                    .arg(&data)
                    .arg("-p")
                    .arg(port.to_string())
                    .arg("-k")
                    .arg(&sock)
                    .args([
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        "fsync=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=200",
                    ]);
                as_owner(cmd, owner);
            }),
            probe: Box::new(move |addr: SocketAddr, _pid| {
                Command::new(&isready)
                    .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-t", "1"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            }),
        }
    }

    /// The server's address (the same across [`PostgresServer::restart`]).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A libpq-style URL for user `postgres`, database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ProcessGuard::is_running)
    }

    /// Kills the server (`SIGKILL`, as a crash would) and waits for it to exit. The data
    /// directory is kept for [`PostgresServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill_hard();
        }
    }

    /// Stops the server if running and starts it again on the same port with the same data
    /// (crash recovery runs), waiting until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        // A killed postmaster leaves its pid file; a new one refuses to start while it names
        // a live process, which it no longer does.
        let _ = std::fs::remove_file(self.dir.path().join("data/postmaster.pid"));
        let binary = self.bin.join("postgres").to_string_lossy().into_owned();
        let log = self.log_path();
        self.process = Some(launch::start_on(&self.spec(&binary, &log), self.port));
    }

    /// Runs SQL through `psql` and returns its unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> io::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
            ])
            .arg(sql)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}
