//! The agent's configuration: one typed tree read from TOML (`deny_unknown_fields`), overridden
//! by flags and environment variables ([`Cli`]), checked by [`Config::validate`] (pure, so
//! tests call it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mavlink::Message;
use serde::Deserialize;

use crate::commands::config::{AllowedProgram, CommandsConfig, CommandsValidated};
use crate::framer::Dialect;
use crate::source::Endpoint;

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not match the schema.
    #[error("parsing the configuration: {0}")]
    Parse(#[from] toml::de::Error),
    /// A setting has a value the agent cannot use.
    #[error("{key}: {reason}")]
    Invalid {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This drone's agent id (letters, digits, `-_.:`; at most 128 characters).
    #[serde(default)]
    pub agent_id: String,
    /// Where to send.
    #[serde(default)]
    pub relay: RelayConfig,
    /// The disk spool.
    #[serde(default)]
    pub spool: SpoolSettings,
    /// MAVLink endpoints to read.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// What becomes a frame.
    #[serde(default)]
    pub mavlink: MavlinkConfig,
    /// Local `/healthz` and `/metrics`.
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Commands from operators (off by default).
    #[serde(default)]
    pub commands: CommandsConfig,
}

/// `[relay]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Relays to try in order, `host:port`.
    pub addresses: Vec<String>,
    /// Name the relay's certificate must carry.
    pub server_name: String,
    /// PEM file of the CA (or the relay's pinned certificate).
    pub ca_file: PathBuf,
    /// Token or JWT for relays with authentication on (prefer `auth_token_file` or the
    /// `CONTRAIL_AUTH_TOKEN` environment variable).
    pub auth_token: String,
    /// File holding the token (trailing whitespace ignored).
    pub auth_token_file: Option<PathBuf>,
    /// Connect + register timeout per attempt, ms.
    pub connect_timeout_ms: u64,
    /// Longest wait between reconnect attempts, ms.
    pub reconnect_max_ms: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            addresses: Vec::new(),
            server_name: "localhost".into(),
            ca_file: PathBuf::new(),
            auth_token: String::new(),
            auth_token_file: None,
            connect_timeout_ms: 10_000,
            reconnect_max_ms: 5_000,
        }
    }
}

/// `fsync` policy names.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// Sync every append.
    Always,
    /// Sync every `fsync_interval_ms`.
    Interval,
    /// Never sync.
    Never,
}

/// `when_full` names.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Drop the oldest unacked frames (counted).
    DropOldest,
    /// Stop reading the sources until acks make room.
    Pause,
}

/// `[spool]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSettings {
    /// Directory (one agent per directory).
    pub dir: PathBuf,
    /// Bound on the spool's disk bytes (the unacked frames are held in memory too).
    pub max_bytes: u64,
    /// always | interval | never.
    pub fsync: Fsync,
    /// With `interval`: how often, ms.
    pub fsync_interval_ms: u64,
    /// drop_oldest | pause.
    pub when_full: WhenFull,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            dir: PathBuf::from("/var/lib/contrail-agent/spool"),
            max_bytes: 16 << 20,
            fsync: Fsync::Interval,
            fsync_interval_ms: 1_000,
            when_full: WhenFull::DropOldest,
        }
    }
}

/// One `[[sources]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `udpin:HOST:PORT`, `udpout:HOST:PORT`, `tcpin:HOST:PORT`, `tcpout:HOST:PORT` or
    /// `serial:PATH:BAUD`.
    pub url: String,
}

/// `[mavlink]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MavlinkConfig {
    /// A fixed flight id for every frame; empty: a new one per arming cycle.
    pub flight_id: String,
    /// Only these message names (empty: all).
    pub include: Vec<String>,
    /// Never these message names.
    pub exclude: Vec<String>,
    /// Most messages per second by name, per sending system and component.
    pub rate_limits: BTreeMap<String, f64>,
    /// Packets queued between the sources and the spool.
    pub queue: usize,
    /// System id of the heartbeat a `udpout:` source sends so the vehicle learns the address.
    pub heartbeat_system_id: u8,
}

impl Default for MavlinkConfig {
    fn default() -> Self {
        MavlinkConfig {
            flight_id: String::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            rate_limits: BTreeMap::new(),
            queue: 4_096,
            heartbeat_system_id: 254,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address of `/healthz` and `/metrics`; empty disables them.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9109".into(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `contrail_agent=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl Config {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Checks every setting and resolves it into what the agent runs with.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let agent_id = contrail_protocol::AgentId::new(self.agent_id.clone())
            .map_err(|e| invalid("agent_id", e.to_string()))?;
        if self.relay.addresses.is_empty() {
            return Err(invalid("relay.addresses", "at least one relay is needed"));
        }
        let mut relays = Vec::new();
        for a in &self.relay.addresses {
            let addr = resolve(a).map_err(|e| invalid("relay.addresses", e))?;
            relays.push(addr);
        }
        if self.relay.ca_file.as_os_str().is_empty() {
            return Err(invalid(
                "relay.ca_file",
                "a CA (or pinned certificate) file is needed",
            ));
        }
        if self.spool.max_bytes < 64 * 1024 {
            return Err(invalid("spool.max_bytes", "at least 65536"));
        }
        if self.spool.dir.as_os_str().is_empty() {
            return Err(invalid("spool.dir", "a directory is needed"));
        }
        let fsync = match self.spool.fsync {
            Fsync::Always => contrail_protocol::client::FsyncPolicy::Always,
            Fsync::Never => contrail_protocol::client::FsyncPolicy::Never,
            Fsync::Interval => {
                if self.spool.fsync_interval_ms == 0 {
                    return Err(invalid("spool.fsync_interval_ms", "must be > 0"));
                }
                contrail_protocol::client::FsyncPolicy::Interval(Duration::from_millis(
                    self.spool.fsync_interval_ms,
                ))
            }
        };
        if self.sources.is_empty() {
            return Err(invalid("sources", "at least one MAVLink source is needed"));
        }
        let mut sources = Vec::new();
        for s in &self.sources {
            sources.push(Endpoint::parse(&s.url).map_err(|e| invalid("sources.url", e))?);
        }
        let ids = |key: &'static str, names: &[String]| -> Result<Vec<u32>, ConfigError> {
            names
                .iter()
                .map(|n| {
                    Dialect::message_id_from_name(n)
                        .ok_or_else(|| invalid(key, format!("unknown MAVLink message {n:?}")))
                })
                .collect()
        };
        let include = ids("mavlink.include", &self.mavlink.include)?;
        let exclude = ids("mavlink.exclude", &self.mavlink.exclude)?;
        let mut rate_limits = BTreeMap::new();
        for (name, hz) in &self.mavlink.rate_limits {
            let id = Dialect::message_id_from_name(name).ok_or_else(|| {
                invalid(
                    "mavlink.rate_limits",
                    format!("unknown MAVLink message {name:?}"),
                )
            })?;
            if !(hz.is_finite() && *hz > 0.0) {
                return Err(invalid(
                    "mavlink.rate_limits",
                    format!("{name}: a rate in Hz > 0"),
                ));
            }
            rate_limits.insert(id, Duration::from_secs_f64(1.0 / hz));
        }
        if self.mavlink.queue == 0 {
            return Err(invalid("mavlink.queue", "must be > 0"));
        }
        let http = if self.http.listen.is_empty() {
            None
        } else {
            Some(
                self.http
                    .listen
                    .parse::<SocketAddr>()
                    .map_err(|e| invalid("http.listen", e.to_string()))?,
            )
        };
        let commands = self.commands.validate(
            &self.spool.dir,
            &self.relay.ca_file,
            self.mavlink.heartbeat_system_id,
            &std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )?;
        let auth_token = match &self.relay.auth_token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| invalid("relay.auth_token_file", format!("{}: {e}", path.display())))?
                .trim_end()
                .to_string(),
            None => self.relay.auth_token.clone(),
        };
        Ok(Validated {
            agent_id,
            relays,
            server_name: self.relay.server_name.clone(),
            ca_file: self.relay.ca_file.clone(),
            auth_token,
            connect_timeout: Duration::from_millis(self.relay.connect_timeout_ms.max(100)),
            reconnect_max: Duration::from_millis(self.relay.reconnect_max_ms.max(100)),
            spool_dir: self.spool.dir.clone(),
            spool_max_bytes: self.spool.max_bytes,
            fsync,
            when_full: self.spool.when_full,
            sources,
            flight_id: (!self.mavlink.flight_id.is_empty()).then(|| self.mavlink.flight_id.clone()),
            include,
            exclude,
            rate_limits,
            queue: self.mavlink.queue,
            heartbeat_system_id: self.mavlink.heartbeat_system_id,
            http,
            commands,
        })
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Agent id.
    pub agent_id: contrail_protocol::AgentId,
    /// Relays in order.
    pub relays: Vec<SocketAddr>,
    /// TLS name.
    pub server_name: String,
    /// CA file.
    pub ca_file: PathBuf,
    /// Token.
    pub auth_token: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Reconnect backoff cap.
    pub reconnect_max: Duration,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool bound.
    pub spool_max_bytes: u64,
    /// Sync policy.
    pub fsync: contrail_protocol::client::FsyncPolicy,
    /// Full policy.
    pub when_full: WhenFull,
    /// Sources.
    pub sources: Vec<Endpoint>,
    /// Fixed flight id.
    pub flight_id: Option<String>,
    /// Included message ids (empty: all).
    pub include: Vec<u32>,
    /// Excluded message ids.
    pub exclude: Vec<u32>,
    /// Minimum interval per message id.
    pub rate_limits: BTreeMap<u32, Duration>,
    /// Source → spool queue.
    pub queue: usize,
    /// System id of `udpout:` heartbeats.
    pub heartbeat_system_id: u8,
    /// HTTP listen address.
    pub http: Option<SocketAddr>,
    /// Commands (`None`: not taken).
    pub commands: Option<CommandsValidated>,
}

/// Flags and environment variables; each one overrides the file's setting.
#[derive(Debug, Parser)]
#[command(
    name = "contrail-agent",
    version,
    about = "The drone-side Contrail bridge: reads MAVLink from the autopilot over UDP, TCP or \
             serial and streams every message, raw, to a Contrail relay over QUIC through an \
             offline-first disk spool.",
    after_help = "Sources: udpin:0.0.0.0:14550  udpout:192.168.1.10:14550  tcpin:0.0.0.0:5760  \
                  tcpout:127.0.0.1:5760  serial:/dev/ttyACM0:57600\n\
                  Every setting is described in agent/examples/agent.toml."
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(short, long, env = "CONTRAIL_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Agent id (overrides `agent_id`).
    #[arg(long, env = "CONTRAIL_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Relay `host:port`, repeatable or comma-separated (overrides `relay.addresses`).
    #[arg(long = "relay", env = "CONTRAIL_RELAY", value_delimiter = ',')]
    pub relays: Vec<String>,
    /// TLS server name of the relay (overrides `relay.server_name`).
    #[arg(long, env = "CONTRAIL_SERVER_NAME")]
    pub server_name: Option<String>,
    /// CA or pinned certificate PEM (overrides `relay.ca_file`).
    #[arg(long, env = "CONTRAIL_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Token or JWT (overrides `relay.auth_token`; prefer the environment variable).
    #[arg(long, env = "CONTRAIL_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// MAVLink source URL, repeatable or comma-separated (replaces `[[sources]]`).
    #[arg(long = "source", env = "CONTRAIL_SOURCES", value_delimiter = ',')]
    pub sources: Vec<String>,
    /// Spool directory (overrides `spool.dir`).
    #[arg(long, env = "CONTRAIL_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Spool bound in bytes (overrides `spool.max_bytes`).
    #[arg(long, env = "CONTRAIL_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: Option<u64>,
    /// When spool appends reach the disk (overrides `spool.fsync`).
    #[arg(long, env = "CONTRAIL_SPOOL_FSYNC", value_enum)]
    pub fsync: Option<Fsync>,
    /// What to do when the spool is full (overrides `spool.when_full`).
    #[arg(long, env = "CONTRAIL_SPOOL_WHEN_FULL", value_enum)]
    pub when_full: Option<WhenFull>,
    /// Fixed flight id (overrides `mavlink.flight_id`).
    #[arg(long, env = "CONTRAIL_FLIGHT_ID")]
    pub flight_id: Option<String>,
    /// Listen address of /healthz and /metrics, empty to disable (overrides `http.listen`).
    #[arg(long, env = "CONTRAIL_AGENT_HTTP")]
    pub http_listen: Option<String>,
    /// Log filter (overrides `log.level`; `RUST_LOG` wins over both).
    #[arg(long, env = "CONTRAIL_AGENT_LOG")]
    pub log_level: Option<String>,
    /// Take commands from operators (overrides `commands.enabled`; `--commands` alone: true).
    #[arg(long, env = "CONTRAIL_AGENT_COMMANDS", num_args = 0..=1, default_missing_value = "true")]
    pub commands: Option<bool>,
    /// Allow an executable for `run_command` (name or absolute path, any arguments up to the
    /// default count), repeatable or comma-separated (added to `[[commands.run.allow]]`).
    #[arg(
        long = "allow-exec",
        env = "CONTRAIL_AGENT_ALLOW_EXEC",
        value_delimiter = ','
    )]
    pub allow_exec: Vec<String>,
    /// Check the configuration, print it resolved, and exit.
    #[arg(long)]
    pub check: bool,
    /// Install the update staged by `update_agent` (verified again) over TARGET (default: this
    /// executable) and exit: 0 installed or nothing staged, 1 failed. For a systemd
    /// `ExecStartPre=+`.
    #[arg(long, value_name = "TARGET", num_args = 0..=1, default_missing_value = "")]
    pub apply_update: Option<PathBuf>,
}

impl Cli {
    /// Reads the file (if any) and applies the overrides.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Config::from_toml(&text)?
            }
            None => Config::from_toml("")?,
        };
        self.apply(&mut config);
        Ok(config)
    }

    /// Applies the flags and environment variables to `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(v) = &self.agent_id {
            config.agent_id = v.clone();
        }
        if !self.relays.is_empty() {
            config.relay.addresses = self.relays.clone();
        }
        if let Some(v) = &self.server_name {
            config.relay.server_name = v.clone();
        }
        if let Some(v) = &self.ca_file {
            config.relay.ca_file = v.clone();
        }
        if let Some(v) = &self.auth_token {
            config.relay.auth_token = v.clone();
            config.relay.auth_token_file = None;
        }
        if !self.sources.is_empty() {
            config.sources = self
                .sources
                .iter()
                .map(|url| SourceConfig { url: url.clone() })
                .collect();
        }
        if let Some(v) = &self.spool_dir {
            config.spool.dir = v.clone();
        }
        if let Some(v) = self.spool_max_bytes {
            config.spool.max_bytes = v;
        }
        if let Some(v) = self.fsync {
            config.spool.fsync = v;
        }
        if let Some(v) = self.when_full {
            config.spool.when_full = v;
        }
        if let Some(v) = &self.flight_id {
            config.mavlink.flight_id = v.clone();
        }
        if let Some(v) = &self.http_listen {
            config.http.listen = v.clone();
        }
        if let Some(v) = &self.log_level {
            config.log.level = v.clone();
        }
        if let Some(v) = self.commands {
            config.commands.enabled = v;
        }
        for program in &self.allow_exec {
            config.commands.run.allow.push(AllowedProgram {
                program: program.clone(),
                max_args: 16,
                args: Vec::new(),
                arg_pattern: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../examples/agent.toml");

    #[test]
    fn the_example_parses_and_validates() {
        let c = Config::from_toml(EXAMPLE).expect("example parses");
        let v = c.validate().expect("example validates");
        assert_eq!(v.agent_id.as_str(), "drone-1");
        assert!(!v.sources.is_empty());
        assert!(v.rate_limits.contains_key(&30), "ATTITUDE (id 30) limited");
    }

    #[test]
    fn the_example_commands_section_validates_when_enabled() {
        let mut c = Config::from_toml(EXAMPLE).expect("example parses");
        assert!(
            c.validate().expect("validates").commands.is_none(),
            "off by default"
        );
        c.commands.enabled = true;
        let v = c.validate().expect("validates with commands on");
        let cmds = v.commands.expect("on");
        assert!(cmds.run.programs.contains_key("echo"));
        assert_eq!(
            cmds.state_dir, c.spool.dir,
            "state_dir defaults to spool.dir"
        );
        assert!(cmds.mavlink.is_some() && cmds.update.is_none());
        let cli = Cli::parse_from(["contrail-agent", "--commands", "--allow-exec", "uptime,df"]);
        let mut c = Config::from_toml(EXAMPLE).expect("example parses");
        cli.apply(&mut c);
        assert!(c.commands.enabled);
        assert_eq!(c.commands.run.allow.len(), 4);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key() {
        assert!(matches!(
            Config::from_toml("agent_id = \"a\"\nbogus = 1\n"),
            Err(ConfigError::Parse(_))
        ));
        let mut c = Config::from_toml(EXAMPLE).expect("example parses");
        c.mavlink.rate_limits.insert("NOT_A_MESSAGE".into(), 5.0);
        let err = c.validate().expect_err("unknown message name");
        assert!(err.to_string().starts_with("mavlink.rate_limits"), "{err}");
        let mut c = Config::from_toml(EXAMPLE).expect("example parses");
        c.sources[0].url = "carrier-pigeon:1".into();
        let err = c.validate().expect_err("bad source");
        assert!(err.to_string().starts_with("sources.url"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli::parse_from([
            "contrail-agent",
            "--agent-id",
            "drone-9",
            "--source",
            "udpin:127.0.0.1:0,tcpout:127.0.0.1:5760",
            "--fsync",
            "always",
        ]);
        let mut c = Config::from_toml(EXAMPLE).expect("example parses");
        cli.apply(&mut c);
        assert_eq!(c.agent_id, "drone-9");
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.spool.fsync, Fsync::Always);
    }
}
