//! Command line: flags (each also readable from its environment variable) layered over the
//! TOML file, plus the `healthcheck` and `drain` helper subcommands used by container probes.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};

/// contrail-relay: QUIC telemetry relay.
#[derive(Debug, Parser)]
#[command(name = "contrail-relay", version, about)]
pub struct Cli {
    /// Subcommand (default: run the relay).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Relay settings.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exit 0 if the relay's /healthz answers 200 (container health checks).
    Healthcheck {
        /// Base URL of the admin HTTP server.
        #[arg(long, default_value = "http://127.0.0.1:2112")]
        url: String,
    },
    /// Print the SHA-256 hash of a token, for the tokens file.
    HashToken {
        /// The token.
        token: String,
    },
    /// Ask a running relay to drain (Kubernetes preStop).
    Drain {
        /// Base URL of the admin HTTP server.
        #[arg(long, default_value = "http://127.0.0.1:2112")]
        url: String,
        /// File holding the admin bearer token.
        #[arg(long)]
        token_file: PathBuf,
        /// Wait until the relay stops answering (bounded by --wait-secs).
        #[arg(long)]
        wait: bool,
        /// Upper bound of --wait.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
}

/// Each relay flag's environment variable and the config-file key it overrides (`None`: the
/// flag has no file key). Tests check it against the flags, [`crate::config::ENV_VARS`] and the
/// table in CONTRACTS.md, and that a flag and its file key set the same thing.
pub const FILE_KEYS: &[(&str, Option<&str>)] = &[
    ("CONTRAIL_CONFIG", None),
    ("CONTRAIL_LISTEN", Some("listen")),
    ("CONTRAIL_TLS_CERT", Some("tls.cert")),
    ("CONTRAIL_TLS_KEY", Some("tls.key")),
    ("CONTRAIL_DEV_CERT_DIR", Some("tls.dev_cert_dir")),
    ("CONTRAIL_MAX_SESSIONS", Some("limits.max_sessions")),
    ("CONTRAIL_MAX_INFLIGHT", Some("limits.max_inflight")),
    ("CONTRAIL_MAX_FRAME_BYTES", Some("limits.max_frame_bytes")),
    (
        "CONTRAIL_HANDSHAKE_TIMEOUT_MS",
        Some("limits.handshake_timeout_ms"),
    ),
    ("CONTRAIL_IDLE_TIMEOUT_MS", Some("limits.idle_timeout_ms")),
    (
        "CONTRAIL_HEARTBEAT_INTERVAL_MS",
        Some("limits.heartbeat_interval_ms"),
    ),
    ("CONTRAIL_HTTP_LISTEN", Some("http.listen")),
    ("CONTRAIL_ADMIN_TOKEN", Some("http.admin_token")),
    ("CONTRAIL_VIEWER_TOKEN", Some("http.viewer_token")),
    ("CONTRAIL_GRPC_LISTEN", Some("grpc.listen")),
    ("CONTRAIL_DRAIN_DEADLINE_MS", Some("drain.deadline_ms")),
    ("CONTRAIL_AUTH_MODE", Some("auth.mode")),
    ("CONTRAIL_AUTH_TOKENS_FILE", Some("auth.tokens_file")),
    ("CONTRAIL_JWT_SECRET", Some("auth.jwt_secret")),
    ("RELAY_ID", Some("relay_id")),
    ("REDIS_ADDR", Some("redis.addr")),
    ("REDIS_TLS_CA_FILE", Some("redis.tls_ca_file")),
    ("REDIS_PASSWORD", Some("redis.password")),
    ("REDIS_DB", Some("redis.db")),
    ("CONTRAIL_REDIS_TTL_SECS", Some("redis.ttl_secs")),
    ("CONTRAIL_DATABASE_URL", Some("commands.database_url")),
    ("CONTRAIL_LOG", None),
];

/// Flags of the relay itself; each overrides the config file.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "CONTRAIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// QUIC listen address (UDP).
    #[arg(long, env = "CONTRAIL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "CONTRAIL_TLS_CERT")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "CONTRAIL_TLS_KEY")]
    pub key: Option<PathBuf>,
    /// Directory of the generated development certificate.
    #[arg(long, env = "CONTRAIL_DEV_CERT_DIR")]
    pub dev_cert_dir: Option<PathBuf>,
    /// Max concurrent sessions.
    #[arg(long, env = "CONTRAIL_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Credit window per agent.
    #[arg(long, env = "CONTRAIL_MAX_INFLIGHT")]
    pub max_inflight: Option<u32>,
    /// Max frame size in bytes.
    #[arg(long, env = "CONTRAIL_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Handshake + register timeout.
    #[arg(long, env = "CONTRAIL_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// QUIC idle timeout.
    #[arg(long, env = "CONTRAIL_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Heartbeat interval told to agents.
    #[arg(long, env = "CONTRAIL_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u32>,
    /// HTTP admin/metrics listen address.
    #[arg(long, env = "CONTRAIL_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// gRPC RelayControl listen address (seed 003; off unless set).
    #[arg(long, env = "CONTRAIL_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// Admin bearer token.
    #[arg(long, env = "CONTRAIL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Viewer token of the fleet page and the read API.
    #[arg(long, env = "CONTRAIL_VIEWER_TOKEN", hide_env_values = true)]
    pub viewer_token: Option<String>,
    /// Drain deadline.
    #[arg(long, env = "CONTRAIL_DRAIN_DEADLINE_MS")]
    pub drain_deadline_ms: Option<u64>,
    /// Agent authentication mode: none, token or jwt.
    #[arg(long, env = "CONTRAIL_AUTH_MODE")]
    pub auth_mode: Option<String>,
    /// File of `agent_id sha256(token)` lines (auth mode token).
    #[arg(long, env = "CONTRAIL_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// HMAC secret of agent JWTs (auth mode jwt).
    #[arg(long, env = "CONTRAIL_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Relay id.
    #[arg(long, env = "RELAY_ID")]
    pub relay_id: Option<String>,
    /// Redis address (enables routing publication).
    #[arg(long, env = "REDIS_ADDR")]
    pub redis_addr: Option<String>,
    /// PEM CA file verifying a `rediss://` Redis (default: system roots).
    #[arg(long, env = "REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<PathBuf>,
    /// Redis password.
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Redis database.
    #[arg(long, env = "REDIS_DB")]
    pub redis_db: Option<i64>,
    /// Routing key TTL.
    #[arg(long, env = "CONTRAIL_REDIS_TTL_SECS")]
    pub redis_ttl_secs: Option<u64>,
    /// PostgreSQL URL of the command queue (unset: commands kept in memory, lost on restart).
    #[arg(long, env = "CONTRAIL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "CONTRAIL_LOG", default_value = "info")]
    pub log: String,
}

impl RunArgs {
    /// The file (if any) with every flag/env override applied.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let c = self.apply(c)?;
        c.validate()?;
        Ok(c)
    }

    /// `c` with every flag/env override applied (not validated). Each flag sets the file key
    /// [`FILE_KEYS`] names for its environment variable.
    pub fn apply(&self, mut c: Config) -> Result<Config, ConfigError> {
        macro_rules! set {
            ($flag:expr => $($field:tt)+) => {
                if let Some(v) = $flag.clone() { c.$($field)+ = v; }
            };
        }
        set!(self.listen => listen);
        if self.cert.is_some() {
            c.tls.cert = self.cert.clone();
        }
        if self.key.is_some() {
            c.tls.key = self.key.clone();
        }
        set!(self.dev_cert_dir => tls.dev_cert_dir);
        set!(self.max_sessions => limits.max_sessions);
        set!(self.max_inflight => limits.max_inflight);
        set!(self.max_frame_bytes => limits.max_frame_bytes);
        set!(self.handshake_timeout_ms => limits.handshake_timeout_ms);
        set!(self.idle_timeout_ms => limits.idle_timeout_ms);
        set!(self.heartbeat_interval_ms => limits.heartbeat_interval_ms);
        set!(self.http_listen => http.listen);
        if self.grpc_listen.is_some() {
            c.grpc.listen = self.grpc_listen;
        }
        if self.viewer_token.is_some() {
            c.http.viewer_token = self.viewer_token.clone();
        }
        if self.admin_token.is_some() {
            c.http.admin_token = self.admin_token.clone();
        }
        set!(self.drain_deadline_ms => drain.deadline_ms);
        if self.relay_id.is_some() {
            c.relay_id = self.relay_id.clone();
        }
        if self.redis_addr.is_some() {
            c.redis.addr = self.redis_addr.clone();
        }
        if self.redis_tls_ca_file.is_some() {
            c.redis.tls_ca_file = self.redis_tls_ca_file.clone();
        }
        if self.redis_password.is_some() {
            c.redis.password = self.redis_password.clone();
        }
        if self.redis_db.is_some() {
            c.redis.db = self.redis_db;
        }
        set!(self.redis_ttl_secs => redis.ttl_secs);
        if let Some(mode) = &self.auth_mode {
            c.auth.mode = Some(match mode.as_str() {
                "none" => crate::auth::AuthMode::None,
                "token" => crate::auth::AuthMode::Token,
                "jwt" => crate::auth::AuthMode::Jwt,
                other => {
                    return Err(ConfigError::Invalid {
                        field: "auth.mode".into(),
                        reason: format!("unknown mode {other:?} (none, token, jwt)"),
                    })
                }
            });
        }
        if self.auth_tokens_file.is_some() {
            c.auth.tokens_file = self.auth_tokens_file.clone();
        }
        if self.jwt_secret.is_some() {
            c.auth.jwt_secret = self.jwt_secret.clone();
        }
        if self.database_url.is_some() {
            c.commands.database_url = self.database_url.clone();
        }
        Ok(c)
    }
}

/// A minimal HTTP/1.1 request over std TCP for the probe subcommands (no extra dependency).
pub fn http_request(
    base: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let hostport = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&hostport)?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let timeout = std::time::Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 16];
    let n = s.read(&mut head)?;
    let text = std::str::from_utf8(&head[..n]).unwrap_or("");
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad HTTP response"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory;

    use super::*;
    use crate::config::ENV_VARS;

    /// `(env, long flag)` of every relay flag, from clap's own definitions.
    fn flags() -> Vec<(String, String)> {
        Cli::command()
            .get_arguments()
            .filter_map(|a| {
                let env = a.get_env()?.to_str()?.to_owned();
                Some((env, a.get_long()?.to_owned()))
            })
            .collect()
    }

    /// A value each flag accepts, written for the command line and for TOML.
    fn sample(env: &str) -> (&'static str, &'static str) {
        match env {
            "CONTRAIL_LISTEN" | "CONTRAIL_HTTP_LISTEN" | "CONTRAIL_GRPC_LISTEN" => {
                ("127.0.0.1:9", "\"127.0.0.1:9\"")
            }
            "CONTRAIL_TLS_CERT" | "CONTRAIL_TLS_KEY" | "CONTRAIL_DEV_CERT_DIR" => {
                ("/x/y.pem", "\"/x/y.pem\"")
            }
            "CONTRAIL_AUTH_TOKENS_FILE" | "REDIS_TLS_CA_FILE" => ("/x/y.pem", "\"/x/y.pem\""),
            "CONTRAIL_AUTH_MODE" => ("jwt", "\"jwt\""),
            "CONTRAIL_ADMIN_TOKEN"
            | "CONTRAIL_VIEWER_TOKEN"
            | "CONTRAIL_JWT_SECRET"
            | "RELAY_ID"
            | "REDIS_PASSWORD" => ("s3cret", "\"s3cret\""),
            "REDIS_ADDR" => ("rediss://r:6380", "\"rediss://r:6380\""),
            "CONTRAIL_DATABASE_URL" => ("postgres://db/x", "\"postgres://db/x\""),
            _ => ("7", "7"),
        }
    }

    #[test]
    fn env_vars_flags_and_file_keys_are_one_list() {
        let from_clap: BTreeSet<String> = flags().into_iter().map(|(e, _)| e).collect();
        let listed: BTreeSet<String> = ENV_VARS.iter().map(|s| s.to_string()).collect();
        let keyed: BTreeSet<String> = FILE_KEYS.iter().map(|(e, _)| e.to_string()).collect();
        assert_eq!(from_clap, listed, "clap flags vs config::ENV_VARS");
        assert_eq!(from_clap, keyed, "clap flags vs cli::FILE_KEYS");
        assert_eq!(FILE_KEYS.len(), keyed.len(), "duplicate in FILE_KEYS");
    }

    #[test]
    fn each_flag_sets_what_its_file_key_sets() {
        let longs: std::collections::HashMap<String, String> = flags().into_iter().collect();
        for (env, key) in FILE_KEYS {
            let Some(key) = key else { continue };
            let (cli_value, toml_value) = sample(env);
            let flag = format!("--{}", longs[*env]);
            let cli = Cli::try_parse_from(["contrail-relay", flag.as_str(), cli_value])
                .unwrap_or_else(|e| panic!("{flag} {cli_value}: {e}"));
            let by_flag = cli.run.apply(Config::default()).expect("applies");
            let by_file = Config::from_toml(&format!("{key} = {toml_value}"))
                .unwrap_or_else(|e| panic!("{key} = {toml_value}: {e}"));
            assert_eq!(
                format!("{by_flag:?}"),
                format!("{by_file:?}"),
                "{flag} and the file key {key} disagree"
            );
            assert_ne!(
                format!("{by_file:?}"),
                format!("{:?}", Config::default()),
                "{key} = {toml_value} changed nothing (pick another sample)"
            );
        }
    }

    #[test]
    fn contracts_env_table_matches_the_flags() {
        let text = include_str!("../../CONTRACTS.md");
        let section = text
            .split("## Environment variables")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("CONTRACTS.md has an Environment variables section");
        let mut rows = BTreeSet::new();
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line
                .split('|')
                .map(|c| c.trim().trim_matches('`'))
                .collect();
            rows.insert((
                cells[1].to_owned(),
                cells[2].to_owned(),
                cells[3].to_owned(),
            ));
        }
        let longs: std::collections::HashMap<String, String> = flags().into_iter().collect();
        let want: BTreeSet<(String, String, String)> = FILE_KEYS
            .iter()
            .map(|(env, key)| {
                (
                    env.to_string(),
                    format!("--{}", longs[*env]),
                    key.unwrap_or("-").to_owned(),
                )
            })
            .collect();
        assert_eq!(rows, want, "CONTRACTS.md env table vs the flags");
    }
}
