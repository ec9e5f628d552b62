//! A real `redis-server` child process on a free loopback port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo, RedisResult};
use tempfile::TempDir;

use crate::launch::{self, Spec};
use crate::process::ProcessGuard;

/// Connect, read and write timeout of the commands sent by [`RedisServer::cmd`] and its kin.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How a [`RedisServer`] is started beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `--requirepass`: clients must `AUTH` with this password.
    pub password: Option<String>,
    /// Also serve TLS (`--tls-port`, on the plain port + 1) with a certificate for
    /// `127.0.0.1` and `localhost` generated for this server (see [`RedisServer::tls_ca_file`]).
    pub tls: bool,
}

/// A `redis-server` (no persistence, `--save "" --appendonly no`) on `127.0.0.1:<random port>`,
/// running in its own temporary directory; killed when dropped.
///
/// Requires `redis-server` in `PATH` (`apt-get install -y redis-server`).
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    process: Option<ProcessGuard>,
    options: RedisOptions,
}

impl RedisServer {
    /// Starts a server on a random port in 20000-60000 (retrying another port when the chosen one is
    /// in use) and waits until it answers `PING`.
    ///
    /// # Panics
    /// When `redis-server` is missing, exits for another reason, or does not answer in time.
    pub fn start() -> RedisServer {
        RedisServer::start_with(RedisOptions::default())
    }

    /// Starts a server with a password and/or TLS (see [`RedisOptions`]).
    ///
    /// # Panics
    /// As [`RedisServer::start`], and when the certificate cannot be generated or written.
    pub fn start_with(options: RedisOptions) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("contrail-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create redis temp dir: {e}"));
        if options.tls {
            write_certificate(dir.path());
        }
        let (process, port) =
            launch::start_random(&spec(dir.path(), &log_path(dir.path()), &options));
        tracing::debug!(port, "redis-server started");
        RedisServer {
            port,
            dir,
            process: Some(process),
            options,
        }
    }

    /// The TLS address (plain port + 1), when started with `tls`.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.options
            .tls
            .then(|| SocketAddr::from((Ipv4Addr::LOCALHOST, self.port + 1)))
    }

    /// `rediss://127.0.0.1:<tls port>/`, when started with `tls`.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_addr()
            .map(|a| format!("rediss://127.0.0.1:{}/", a.port()))
    }

    /// PEM file of the generated certificate (self-signed: it is its own CA), with `tls`.
    pub fn tls_ca_file(&self) -> Option<PathBuf> {
        self.options
            .tls
            .then(|| self.dir.path().join("tls-cert.pem"))
    }

    /// The server's address (stays the same across [`RedisServer::restart`]).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Connection URL, `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ProcessGuard::is_running)
    }

    /// Kills the server (`SIGKILL`) and waits for it to exit. The port stays reserved in this
    /// struct for [`RedisServer::restart`]. No-op when already stopped.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill_hard();
        }
    }

    /// Stops the server if running, then starts it again on the same port and waits until it
    /// answers `PING`. Data is not preserved (no persistence).
    ///
    /// # Panics
    /// When the port cannot be re-bound or the server does not answer in time.
    pub fn restart(&mut self) {
        self.stop();
        let spec_log = log_path(self.dir.path());
        self.process = Some(launch::start_on(
            &spec(self.dir.path(), &spec_log, &self.options),
            self.port,
        ));
    }

    /// Sends one command over a fresh connection (with the server's password, on database 0)
    /// and converts the reply to `T`. Connection failures, error replies and replies that do not
    /// convert are errors.
    pub fn try_cmd<T: FromRedisValue>(&self, args: &[&str]) -> RedisResult<T> {
        request(self.addr(), self.options.password.as_deref(), 0, args)
    }

    /// Like [`RedisServer::cmd`] on database `db`.
    ///
    /// # Panics
    /// As [`RedisServer::cmd`].
    pub fn cmd_in_db<T: FromRedisValue>(&self, db: u32, args: &[&str]) -> T {
        request(
            self.addr(),
            self.options.password.as_deref(),
            i64::from(db),
            args,
        )
        .unwrap_or_else(|e| panic!("redis command {args:?} to {} failed: {e}", self.addr()))
    }

    /// Sends one command over a fresh connection and returns the reply as `T`, e.g.
    /// `server.cmd::<i64>(&["TTL", "key"])` or `server.cmd::<Option<String>>(&["GET", "key"])`.
    ///
    /// # Panics
    /// On connection errors, error replies, and replies that do not convert to `T` (use
    /// [`RedisServer::try_cmd`] to see those).
    pub fn cmd<T: FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("redis command {args:?} to {} failed: {e}", self.addr()))
    }
}

/// One command on a fresh blocking connection of the `redis` crate (AUTH and SELECT as given,
/// [`IO_TIMEOUT`] for connect, read and write).
fn request<T: FromRedisValue>(
    addr: SocketAddr,
    password: Option<&str>,
    db: i64,
    args: &[&str],
) -> RedisResult<T> {
    let (name, rest) = args
        .split_first()
        .unwrap_or_else(|| panic!("an empty redis command"));
    let mut info: ConnectionInfo =
        ConnectionAddr::Tcp(addr.ip().to_string(), addr.port()).into_connection_info()?;
    let mut settings = info.redis_settings().clone().set_db(db);
    if let Some(pw) = password {
        settings = settings.set_password(pw);
    }
    info = info.set_redis_settings(settings);
    let mut con = redis::Client::open(info)?.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    redis::cmd(name).arg(rest).query(&mut con)
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

/// A self-signed certificate and key for `127.0.0.1` / `localhost` in `dir`.
fn write_certificate(dir: &Path) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let cert = rcgen::generate_simple_self_signed(names)
        .unwrap_or_else(|e| panic!("cannot generate the redis certificate: {e}"));
    std::fs::write(dir.join("tls-cert.pem"), cert.cert.pem())
        .and_then(|()| std::fs::write(dir.join("tls-key.pem"), cert.signing_key.serialize_pem()))
        .unwrap_or_else(|e| panic!("cannot write the redis certificate: {e}"));
}

fn spec<'a>(dir: &'a Path, log: &'a Path, options: &'a RedisOptions) -> Spec<'a> {
    let password = options.password.clone();
    Spec {
        binary: "redis-server",
        package: "redis-server",
        log,
        args: Box::new(move |cmd: &mut Command, port: u16| {
            cmd.arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no", "--protected-mode", "yes"])
                .arg("--dir")
                .arg(dir);
            if let Some(pw) = &options.password {
                cmd.arg("--requirepass").arg(pw);
            }
            if options.tls {
                cmd.arg("--tls-port")
                    .arg((port + 1).to_string())
                    .arg("--tls-cert-file")
                    .arg(dir.join("tls-cert.pem"))
                    .arg("--tls-key-file")
                    .arg(dir.join("tls-key.pem"))
                    .arg("--tls-ca-cert-file")
                    .arg(dir.join("tls-cert.pem"))
                    .args(["--tls-auth-clients", "no"]);
            }
        }),
        probe: Box::new(move |addr, pid| probe(addr, pid, password.as_deref())),
    }
}

/// `PING` must answer `+PONG`, and `INFO server` must name our process (not some other server
/// that already owned the port).
fn probe(addr: SocketAddr, pid: u32, password: Option<&str>) -> bool {
    match request::<String>(addr, password, 0, &["PING"]) {
        Ok(s) if s == "PONG" => {}
        _ => return false,
    }
    request::<String>(addr, password, 0, &["INFO", "server"]).is_ok_and(|info| {
        info.lines()
            .any(|l| l.trim() == format!("process_id:{pid}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::poll::poll_until;

    #[test]
    fn answers_commands_and_replies_parse() {
        let redis = RedisServer::start();
        assert_eq!(
            redis.url(),
            format!("redis://127.0.0.1:{}/", redis.addr().port())
        );
        assert_eq!(redis.cmd::<String>(&["PING"]), "PONG");
        assert_eq!(redis.cmd::<String>(&["SET", "k", "v", "EX", "100"]), "OK");
        assert_eq!(
            redis.cmd::<Option<String>>(&["GET", "k"]).as_deref(),
            Some("v")
        );
        let ttl: i64 = redis.cmd(&["TTL", "k"]);
        assert!((1..=100).contains(&ttl), "ttl {ttl}");
        assert_eq!(redis.cmd::<Option<String>>(&["GET", "missing"]), None);
        assert!(redis.try_cmd::<redis::Value>(&["NOSUCHCOMMAND"]).is_err());
        let id: String = redis.cmd(&["XADD", "s", "*", "f", "v"]);
        assert!(id.contains('-'), "{id:?}");
        let range: Vec<(String, HashMap<String, Vec<u8>>)> = redis.cmd(&["XRANGE", "s", "-", "+"]);
        assert_eq!(range.len(), 1);
        assert_eq!(range[0].0, id);
        assert_eq!(range[0].1.get("f").map(Vec::as_slice), Some(&b"v"[..]));
        // No persistence configured.
        let save: (String, String) = redis.cmd(&["CONFIG", "GET", "save"]);
        assert_eq!(save.1, "");
        let aof: (String, String) = redis.cmd(&["CONFIG", "GET", "appendonly"]);
        assert_eq!(aof.1, "no");
    }

    #[test]
    fn password_db_and_tls_options() {
        let redis = RedisServer::start_with(RedisOptions {
            password: Some("pw".into()),
            tls: true,
        });
        assert_eq!(redis.cmd::<String>(&["PING"]), "PONG");
        let anonymous = request::<String>(redis.addr(), None, 0, &["PING"]);
        assert!(anonymous.is_err(), "no password needed: {anonymous:?}");
        redis.cmd_in_db::<()>(4, &["SET", "k", "v"]);
        assert_eq!(
            redis
                .cmd_in_db::<Option<String>>(4, &["GET", "k"])
                .as_deref(),
            Some("v")
        );
        assert_eq!(
            redis.cmd::<Option<String>>(&["GET", "k"]),
            None,
            "db 0 has it"
        );
        let tls = redis.tls_addr().expect("tls addr");
        assert_eq!(tls.port(), redis.addr().port() + 1);
        assert!(
            std::net::TcpStream::connect(tls).is_ok(),
            "TLS port not listening"
        );
        let pem = std::fs::read_to_string(redis.tls_ca_file().expect("ca")).expect("ca file");
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert!(RedisServer::start().tls_url().is_none());
    }

    #[test]
    fn two_servers_get_distinct_ports() {
        let a = RedisServer::start();
        let b = RedisServer::start();
        assert_ne!(a.addr(), b.addr());
        a.cmd::<()>(&["SET", "only-a", "1"]);
        assert_eq!(b.cmd::<Option<String>>(&["GET", "only-a"]), None);
    }

    #[test]
    fn stop_and_restart_on_same_port() {
        let mut redis = RedisServer::start();
        let addr = redis.addr();
        redis.cmd::<()>(&["SET", "k", "v"]);
        redis.stop();
        assert!(!redis.is_running());
        assert!(
            redis.try_cmd::<String>(&["PING"]).is_err(),
            "still answering after stop"
        );
        redis.stop(); // idempotent
        redis.restart();
        assert_eq!(redis.addr(), addr);
        assert_eq!(redis.cmd::<String>(&["PING"]), "PONG");
        assert_eq!(
            redis.cmd::<Option<String>>(&["GET", "k"]),
            None,
            "data survived without persistence"
        );
        redis.restart(); // restart while running
        assert_eq!(redis.cmd::<String>(&["PING"]), "PONG");
    }

    #[test]
    fn occupied_port_is_detected_not_mistaken_for_ours() {
        let taken = RedisServer::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log_path(dir.path());
        // The other server answers PING on that port, but it is not our process.
        let options = RedisOptions::default();
        let spec = spec(dir.path(), &log, &options);
        match launch::attempt(&spec, taken.addr().port()) {
            launch::Attempt::AddrInUse => {}
            launch::Attempt::Up(p) => panic!("claimed the port of another server (pid {})", p.id()),
        }
    }

    #[test]
    fn drop_kills_the_server() {
        let redis = RedisServer::start();
        let addr = redis.addr();
        let dir = redis.dir().to_path_buf();
        drop(redis);
        assert!(request::<String>(addr, None, 0, &["PING"]).is_err());
        poll_until(Duration::from_secs(5), "temp dir removal", || !dir.exists());
    }
}
