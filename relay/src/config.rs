//! The relay's one typed configuration tree: TOML file, then flags and environment variables
//! (see `cli.rs`), then one pure [`Config::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::sink::file::FileConfig;
use crate::sink::live::config::LiveConfig;
use crate::sink::nats_jetstream::config::NatsJetstreamConfig;
use crate::sink::redis_streams::config::RedisStreamsConfig;
use crate::sink::stdout::config::StdoutConfig;
use crate::sink::WhenFull;

/// Every environment variable the relay reads (deployment assets are checked against it).
pub const ENV_VARS: &[&str] = &[
    "CONTRAIL_CONFIG",
    "CONTRAIL_DATABASE_URL",
    "CONTRAIL_LISTEN",
    "CONTRAIL_TLS_CERT",
    "CONTRAIL_TLS_KEY",
    "CONTRAIL_DEV_CERT_DIR",
    "CONTRAIL_MAX_SESSIONS",
    "CONTRAIL_MAX_INFLIGHT",
    "CONTRAIL_MAX_FRAME_BYTES",
    "CONTRAIL_HANDSHAKE_TIMEOUT_MS",
    "CONTRAIL_IDLE_TIMEOUT_MS",
    "CONTRAIL_HEARTBEAT_INTERVAL_MS",
    "CONTRAIL_HTTP_LISTEN",
    "CONTRAIL_ADMIN_TOKEN",
    "CONTRAIL_VIEWER_TOKEN",
    "CONTRAIL_GRPC_LISTEN",
    "CONTRAIL_DRAIN_DEADLINE_MS",
    "CONTRAIL_AUTH_MODE",
    "CONTRAIL_AUTH_TOKENS_FILE",
    "CONTRAIL_JWT_SECRET",
    "CONTRAIL_LOG",
    "RELAY_ID",
    "REDIS_ADDR",
    "REDIS_PASSWORD",
    "REDIS_TLS_CA_FILE",
    "REDIS_DB",
    "CONTRAIL_REDIS_TTL_SECS",
];

/// A configuration problem, reported to the operator before anything starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML did not parse or had unknown keys.
    #[error("parsing {path}: {source}")]
    Parse {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid setting `{field}`: {reason}")]
    Invalid {
        /// Dotted field name.
        field: String,
        /// Why.
        reason: String,
    },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The whole relay configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Relay id in `Registered` and Redis routing (else `RELAY_ID`, else hostname, else `relay`).
    pub relay_id: Option<String>,
    /// QUIC listen address (UDP).
    pub listen: SocketAddr,
    /// TLS.
    pub tls: TlsConfig,
    /// Limits.
    pub limits: Limits,
    /// HTTP admin/metrics.
    pub http: HttpConfig,
    /// Graceful drain.
    pub drain: DrainConfig,
    /// Redis routing publication.
    pub redis: RedisConfig,
    /// Agent authentication.
    pub auth: crate::auth::AuthConfig,
    /// Per-agent quotas.
    pub quotas: crate::quota::QuotaConfig,
    /// Sinks; empty means one `stdout` sink.
    pub sinks: Vec<SinkConfig>,
    /// MAVLink: the optional lab/SITL UDP endpoint (`mavlink.udp_listen`, off by default).
    pub mavlink: crate::mavlink::MavlinkConfig,
    /// Command downlink (queue store, API tokens, limits).
    pub commands: crate::downlink::CommandsSection,
    /// Seed 003's gRPC RelayControl.
    pub grpc: GrpcConfig,
    /// Hourly usage (in PostgreSQL with `commands.database_url`, else in memory).
    pub usage: UsageSection,
    /// Region this relay runs in (published in `relay:{id}` and shown on the fleet page).
    pub region: Option<String>,
    /// Zone within the region.
    pub zone: Option<String>,
    /// `host:port` agents of other relays are sent to (Redirect, Drain.relays); default: the
    /// bound listen address, which is right only when agents reach the relay at it.
    pub public_address: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            relay_id: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
            tls: TlsConfig::default(),
            limits: Limits::default(),
            http: HttpConfig::default(),
            drain: DrainConfig::default(),
            redis: RedisConfig::default(),
            auth: crate::auth::AuthConfig::default(),
            quotas: crate::quota::QuotaConfig::default(),
            sinks: Vec::new(),
            mavlink: crate::mavlink::MavlinkConfig::default(),
            commands: crate::downlink::CommandsSection::default(),
            grpc: GrpcConfig::default(),
            usage: UsageSection::default(),
            region: None,
            zone: None,
            public_address: None,
        }
    }
}

/// TLS settings. Without `cert`/`key` the relay generates a development certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Where the development certificate is written (`cert.pem`, `key.pem`).
    pub dev_cert_dir: PathBuf,
    /// Extra names for the development certificate (always includes localhost, 127.0.0.1, ::1).
    pub dev_cert_names: Vec<String>,
    /// TLS 1.3 session tickets sent per handshake (0: none, no resumption). An agent that
    /// reconnects with one resumes its TLS session (still with a fresh key exchange): it
    /// skips verifying the relay's certificate and the relay skips signing. Tickets are
    /// stateless (encrypted with keys that rotate every 6 hours), so they cost the relay no
    /// memory however many agents hold one; they do not survive a relay restart.
    pub session_tickets: usize,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            dev_cert_dir: PathBuf::from(".contrail/dev"),
            dev_cert_names: Vec::new(),
            session_tickets: 1,
        }
    }
}

/// Limits on what peers can make the relay hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent agent sessions.
    pub max_sessions: usize,
    /// Sessions at and above which agents offering the `redirect` capability are redirected to
    /// better relays of the fleet (docs/placement.md); 0: `max_sessions`.
    pub soft_max_sessions: usize,
    /// Credit window: frames an agent may have unacked.
    pub max_inflight: u32,
    /// Largest frame body accepted.
    pub max_frame_bytes: usize,
    /// QUIC handshake + Register must finish within this.
    pub handshake_timeout_ms: u64,
    /// QUIC idle timeout.
    pub idle_timeout_ms: u64,
    /// Heartbeat interval suggested to agents.
    pub heartbeat_interval_ms: u32,
    /// Resume cursors kept (live and recently disconnected agents).
    pub resume_max_agents: usize,
    /// How long a disconnected agent's resume cursor is kept.
    pub resume_ttl_secs: u64,
    /// Per-session read buffer, bytes (bounds one batch).
    pub read_buffer_bytes: usize,
    /// Connections still in the handshake / register phase.
    pub max_pending_handshakes: usize,
    /// Kernel receive and send buffer of the QUIC UDP socket (the kernel may cap it; see
    /// `net.core.rmem_max`). Small buffers drop datagrams under bursts of many agents.
    pub udp_buffer_bytes: usize,
    /// Longest an ack waits to be coalesced with later ones (0: ack every completed batch at
    /// once). An ack goes out sooner when a quarter of `max_inflight` is waiting for it, or
    /// when the relay drains.
    pub ack_delay_ms: u64,
    /// Packets a peer (agent or live subscriber) may receive from the relay before it must
    /// send a QUIC ACK, asked for with the QUIC ACK-frequency extension (0: QUIC's default,
    /// every other packet). Peers still ACK within their max ACK delay.
    pub ack_eliciting_threshold: u32,
    /// Longest a peer may hold back a QUIC ACK of the relay's packets, asked for with the same
    /// extension (0: QUIC's 25 ms). Longer than an agent's frame interval lets its ACK of the
    /// relay's acks ride in its next frame; the relay's loss recovery waits up to this much
    /// longer. Agents ask the same of the relay (`ClientConfig::max_ack_delay`, 125 ms).
    pub quic_max_ack_delay_ms: u64,
    /// Upper bound of the QUIC max ACK delay the relay asks of a slow agent (0, or anything not
    /// above `quic_max_ack_delay_ms`: never adapt; kept below half of `idle_timeout_ms`).
    /// The relay follows each agent's interval between telemetry batches and asks it to hold
    /// ACKs up to 1.5 times that interval (never less than `quic_max_ack_delay_ms`, never more
    /// than this), so a 2 Hz agent's ACK of the relay's ack rides in its next frame instead
    /// of a packet of its own. Live subscribers keep `quic_max_ack_delay_ms`. The relay's loss
    /// recovery towards such an agent waits up to this much longer.
    pub quic_max_ack_delay_cap_ms: u64,
    /// Largest UDP payload the relay sends or accepts: the ceiling of QUIC path-MTU discovery
    /// (which settles lower on paths that carry less) and the datagram size the socket reads.
    /// 1452 suits Ethernet and the internet; jumbo-frame LANs and loopback can use up to 65527
    /// (fewer packets per frame at high rates; agents and subscribers must allow it too).
    pub max_udp_payload_bytes: u16,
    /// Longest the relay waits, after sending `Error{code, message}` on the control stream and
    /// finishing it, for the agent to acknowledge it (or close) before it closes the
    /// connection with the code anyway. Bounds what a peer that never reads can hold open.
    pub error_linger_ms: u64,
    /// Longest string of a drone identity field (`Register.identity`, identity updates) kept
    /// for `/v1/drones/{id}`, bytes; longer ones are cut (counted as
    /// `contrail_limit_hits_total{limit="identity_field_bytes"}`).
    pub max_identity_field_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 10_000,
            soft_max_sessions: 0,
            max_inflight: 1024,
            max_frame_bytes: 64 * 1024,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
            heartbeat_interval_ms: 5_000,
            resume_max_agents: 100_000,
            resume_ttl_secs: 300,
            read_buffer_bytes: 256 * 1024,
            max_pending_handshakes: 1024,
            udp_buffer_bytes: 8 << 20,
            ack_delay_ms: 100,
            ack_eliciting_threshold: 16,
            quic_max_ack_delay_ms: 125,
            quic_max_ack_delay_cap_ms: 1_500,
            max_udp_payload_bytes: 1452,
            error_linger_ms: 1_000,
            max_identity_field_bytes: 128,
        }
    }
}

impl Limits {
    /// The soft session limit (`soft_max_sessions`, 0 meaning `max_sessions`).
    pub fn soft_max_sessions(&self) -> usize {
        if self.soft_max_sessions == 0 || self.soft_max_sessions > self.max_sessions {
            self.max_sessions
        } else {
            self.soft_max_sessions
        }
    }

    /// Handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// Ack coalescing delay.
    pub fn ack_delay(&self) -> Duration {
        Duration::from_millis(self.ack_delay_ms)
    }
    /// QUIC max ACK delay asked of peers.
    pub fn quic_max_ack_delay(&self) -> Duration {
        Duration::from_millis(self.quic_max_ack_delay_ms)
    }
    /// Most a slow agent is asked to hold its QUIC ACKs: `quic_max_ack_delay_cap_ms`, kept
    /// below half the idle timeout (`None`: no adapting, when that is not above
    /// `quic_max_ack_delay_ms`).
    pub fn quic_max_ack_delay_cap(&self) -> Option<Duration> {
        let cap = self
            .quic_max_ack_delay_cap_ms
            .min((self.idle_timeout_ms / 2).saturating_sub(1));
        (cap > self.quic_max_ack_delay_ms).then(|| Duration::from_millis(cap))
    }
    /// How long a rejected session waits for its `Error` message to be acknowledged.
    pub fn error_linger(&self) -> Duration {
        Duration::from_millis(self.error_linger_ms)
    }
    /// Frames waiting for an ack that make it go out without waiting for `ack_delay`.
    pub fn ack_now_threshold(&self) -> u64 {
        u64::from((self.max_inflight / 4).max(1))
    }
}

/// HTTP admin/metrics server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address (TCP).
    pub listen: SocketAddr,
    /// Bearer token for state-changing endpoints; none disables them.
    pub admin_token: Option<String>,
    /// Token the fleet page (`/`) and the read API require; none leaves them open.
    pub viewer_token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2112)),
            admin_token: None,
            viewer_token: None,
        }
    }
}

/// gRPC RelayControl (seed 003): off unless `listen` is set (the seed's port is 50051).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// TCP listen address, e.g. `0.0.0.0:50051`.
    pub listen: Option<SocketAddr>,
}

/// Hourly usage per agent (docs/sre.md "Usage").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageSection {
    /// How often usage is sampled and, with a database, flushed to it; what a relay killed
    /// without a drain loses is at most this much of its usage.
    pub flush_interval_ms: u64,
    /// (agent, hour) rows waiting for a flush while the database is unreachable; beyond, usage
    /// is dropped (`contrail_limit_hits_total{limit="usage_pending"}`).
    pub max_pending_buckets: usize,
}

impl Default for UsageSection {
    fn default() -> Self {
        let d = contrail_control::usage::UsageConfig::default();
        UsageSection {
            flush_interval_ms: d.period.as_millis() as u64,
            max_pending_buckets: d.max_pending,
        }
    }
}

impl UsageSection {
    /// The control plane's settings.
    pub fn to_control(&self) -> contrail_control::usage::UsageConfig {
        contrail_control::usage::UsageConfig {
            period: Duration::from_millis(self.flush_interval_ms),
            max_pending: self.max_pending_buckets,
            ..contrail_control::usage::UsageConfig::default()
        }
    }
}

/// Graceful drain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrainConfig {
    /// The process exits within this after a drain starts.
    pub deadline_ms: u64,
    /// What agents are told to wait before reconnecting elsewhere.
    pub reconnect_after_ms: u32,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            deadline_ms: 10_000,
            reconnect_after_ms: 500,
        }
    }
}

/// Redis routing publication (enabled when `addr` is set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `host:port`, a `redis://` URL, or a `rediss://` URL for TLS.
    pub addr: Option<String>,
    /// PEM CA file verifying a `rediss://` server (default: the system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// Password.
    pub password: Option<String>,
    /// Database index.
    pub db: Option<i64>,
    /// Key TTL; refreshed every TTL/2.
    pub ttl_secs: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            addr: None,
            tls_ca_file: None,
            password: None,
            db: None,
            ttl_secs: 45,
        }
    }
}

/// The type-specific part of a `[[sinks]]` entry, chosen by its `type` key. Each variant is the
/// sink folder's own `deny_unknown_fields` struct, so a key of another type is refused by name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKind {
    /// NDJSON on stdout.
    Stdout(StdoutConfig),
    /// Files with rotation.
    File(FileConfig),
    /// Live subscriptions over QUIC (ALPN `contrail-sub/1`).
    Live(LiveConfig),
    /// Redis Streams (`XADD`, pipelined per write).
    RedisStreams(RedisStreamsConfig),
    /// NATS JetStream (publish with acks and dedup ids).
    NatsJetstream(NatsJetstreamConfig),
}

impl SinkKind {
    /// The `type` value.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Stdout(_) => "stdout",
            SinkKind::File(_) => "file",
            SinkKind::Live(_) => "live",
            SinkKind::RedisStreams(_) => "redis_streams",
            SinkKind::NatsJetstream(_) => "nats_jetstream",
        }
    }

    fn validate(&self) -> Result<(), crate::sink::setting::InvalidSetting> {
        match self {
            SinkKind::Stdout(_) => Ok(()),
            SinkKind::File(c) => c.validate(),
            SinkKind::Live(c) => c.validate(),
            SinkKind::RedisStreams(c) => c.validate(),
            SinkKind::NatsJetstream(c) => c.validate(),
        }
    }
}

/// One `[[sinks]]` entry: the keys every sink has, and its typed [`SinkKind`].
///
/// Parsing is two-layer (serde's `flatten` and `deny_unknown_fields` don't combine): the common
/// keys are read first and everything else, `type` included, must be a key of that type's
/// struct. An unknown or foreign key is a parse error naming the sink and the key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawSink")]
pub struct SinkConfig {
    /// Unique name (metric label).
    pub name: String,
    /// Acks wait for this sink.
    pub required: bool,
    /// Full-queue policy of an optional sink.
    pub when_full: WhenFull,
    /// Queue capacity in batches.
    pub queue_batches: usize,
    /// Only these kinds (empty: all).
    pub include_kinds: Vec<u32>,
    /// Never these kinds.
    pub exclude_kinds: Vec<u32>,
    /// Only agents matching these globs (empty: all).
    pub include_agents: Vec<String>,
    /// Never agents matching these globs.
    pub exclude_agents: Vec<String>,
    /// Only MAVLink frames (content type `application/x-mavlink`) of these message names
    /// (`["ATTITUDE", "HEARTBEAT"]`; empty: all frames).
    pub include_mavlink: Vec<String>,
    /// Never MAVLink frames of these message names.
    pub exclude_mavlink: Vec<String>,
    /// The type and its own keys.
    pub kind: SinkKind,
}

impl SinkConfig {
    /// An entry with the common defaults (optional, `drop_oldest`, 1024 batches, no filter).
    pub fn new(name: impl Into<String>, kind: SinkKind) -> Self {
        SinkConfig {
            name: name.into(),
            required: false,
            when_full: WhenFull::default(),
            queue_batches: default_queue_batches(),
            include_kinds: Vec::new(),
            exclude_kinds: Vec::new(),
            include_agents: Vec::new(),
            exclude_agents: Vec::new(),
            include_mavlink: Vec::new(),
            exclude_mavlink: Vec::new(),
            kind,
        }
    }
}

/// The first layer of a `[[sinks]]` entry: the common keys, and the rest kept for the second.
#[derive(Deserialize)]
struct RawSink {
    name: String,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    when_full: WhenFull,
    #[serde(default = "default_queue_batches")]
    queue_batches: usize,
    #[serde(default)]
    include_kinds: Vec<u32>,
    #[serde(default)]
    exclude_kinds: Vec<u32>,
    #[serde(default)]
    include_agents: Vec<String>,
    #[serde(default)]
    exclude_agents: Vec<String>,
    #[serde(default)]
    include_mavlink: Vec<String>,
    #[serde(default)]
    exclude_mavlink: Vec<String>,
    #[serde(flatten)]
    rest: toml::Table,
}

/// A `[[sinks]]` entry whose type-specific keys did not parse.
#[derive(Debug, thiserror::Error)]
#[error("sink {name:?}: {source}")]
pub struct SinkEntryError {
    /// The sink's name.
    pub name: String,
    /// The parse error (names the unknown key and the keys the type takes).
    pub source: toml::de::Error,
}

impl TryFrom<RawSink> for SinkConfig {
    type Error = SinkEntryError;

    fn try_from(raw: RawSink) -> Result<Self, SinkEntryError> {
        let kind = toml::Value::Table(raw.rest)
            .try_into()
            .map_err(|source| SinkEntryError {
                name: raw.name.clone(),
                source,
            })?;
        Ok(SinkConfig {
            name: raw.name,
            required: raw.required,
            when_full: raw.when_full,
            queue_batches: raw.queue_batches,
            include_kinds: raw.include_kinds,
            exclude_kinds: raw.exclude_kinds,
            include_agents: raw.include_agents,
            exclude_agents: raw.exclude_agents,
            include_mavlink: raw.include_mavlink,
            exclude_mavlink: raw.exclude_mavlink,
            kind,
        })
    }
}

fn default_queue_batches() -> usize {
    1024
}

impl Config {
    /// Reads and parses a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// The effective auth mode: `none` by default only with the development certificate; a
    /// real certificate without an explicit `auth.mode` is a configuration error.
    pub fn auth_mode(&self) -> Result<crate::auth::AuthMode, ConfigError> {
        use crate::auth::AuthMode;
        let mode = match (self.auth.mode, self.tls.cert.is_some()) {
            (Some(m), _) => m,
            (None, false) => AuthMode::None,
            (None, true) => return Err(invalid(
                "auth.mode",
                "set auth.mode (token, jwt, or explicitly none) when serving a real certificate",
            )),
        };
        match mode {
            AuthMode::Token if self.auth.tokens_file.is_none() => Err(invalid(
                "auth.tokens_file",
                "mode = token needs tokens_file",
            )),
            AuthMode::Jwt if self.auth.jwt_secret.as_deref().is_none_or(str::is_empty) => {
                Err(invalid("auth.jwt_secret", "mode = jwt needs jwt_secret"))
            }
            _ => Ok(mode),
        }
    }

    /// Checks every value; pure, so tests call it directly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.commands
            .validate()
            .map_err(|reason| invalid("commands", reason))?;
        if self.usage.flush_interval_ms < 10 || self.usage.flush_interval_ms > 3_600_000 {
            return Err(invalid("usage.flush_interval_ms", "must be 10..=3600000"));
        }
        if self.usage.max_pending_buckets == 0 {
            return Err(invalid("usage.max_pending_buckets", "must be at least 1"));
        }
        let l = &self.limits;
        if l.max_sessions == 0 {
            return Err(invalid("limits.max_sessions", "must be at least 1"));
        }
        if l.max_inflight == 0 || l.max_inflight > 1 << 20 {
            return Err(invalid("limits.max_inflight", "must be 1..=1048576"));
        }
        if l.max_frame_bytes < 64 || l.max_frame_bytes > 16 << 20 {
            return Err(invalid("limits.max_frame_bytes", "must be 64..=16777216"));
        }
        if l.read_buffer_bytes < l.max_frame_bytes + 4 {
            return Err(invalid(
                "limits.read_buffer_bytes",
                "must hold at least one max-size frame plus its prefix",
            ));
        }
        if l.handshake_timeout_ms == 0 || l.idle_timeout_ms == 0 {
            return Err(invalid("limits", "timeouts must be positive"));
        }
        if l.heartbeat_interval_ms == 0 || u64::from(l.heartbeat_interval_ms) >= l.idle_timeout_ms {
            return Err(invalid(
                "limits.heartbeat_interval_ms",
                "must be positive and below idle_timeout_ms",
            ));
        }
        if !(1200..=65_527).contains(&l.max_udp_payload_bytes) {
            return Err(invalid(
                "limits.max_udp_payload_bytes",
                "must be 1200..=65527",
            ));
        }
        if l.ack_delay_ms >= l.idle_timeout_ms / 2 {
            return Err(invalid(
                "limits.ack_delay_ms",
                "must be below half of idle_timeout_ms",
            ));
        }
        if l.quic_max_ack_delay_ms >= (l.idle_timeout_ms / 2).min(16_384) {
            return Err(invalid(
                "limits.quic_max_ack_delay_ms",
                "must be below half of idle_timeout_ms and below 16384",
            ));
        }
        if l.quic_max_ack_delay_cap_ms >= 16_384 {
            return Err(invalid(
                "limits.quic_max_ack_delay_cap_ms",
                "must be below 16384 (QUIC's largest max ACK delay)",
            ));
        }
        if l.resume_max_agents < l.max_sessions {
            return Err(invalid(
                "limits.resume_max_agents",
                "must be at least max_sessions",
            ));
        }
        self.auth_mode()?;
        if self.quotas.retry_after_ms == 0 {
            return Err(invalid("quotas.retry_after_ms", "must be positive"));
        }
        // A burst of 0 means one second's worth; a non-zero burst below the rate would be
        // raised to the rate silently, so it is refused.
        let q = &self.quotas;
        if q.burst_frames != 0 && q.burst_frames < q.frames_per_sec {
            return Err(invalid(
                "quotas.burst_frames",
                format!(
                    "{} is below frames_per_sec ({}): a burst holds at least one second's worth \
                     (0 means exactly that)",
                    q.burst_frames, q.frames_per_sec
                ),
            ));
        }
        if q.burst_bytes != 0 && q.burst_bytes < q.bytes_per_sec {
            return Err(invalid(
                "quotas.burst_bytes",
                format!(
                    "{} is below bytes_per_sec ({}): a burst holds at least one second's worth \
                     (0 means exactly that)",
                    q.burst_bytes, q.bytes_per_sec
                ),
            ));
        }
        if (self.tls.cert.is_some()) != (self.tls.key.is_some()) {
            return Err(invalid("tls", "cert and key go together"));
        }
        if self.http.admin_token.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("http.admin_token", "must not be empty"));
        }
        if l.max_identity_field_bytes == 0 || l.max_identity_field_bytes > 4096 {
            return Err(invalid(
                "limits.max_identity_field_bytes",
                "must be 1..=4096",
            ));
        }
        self.mavlink
            .validate()
            .map_err(|e| invalid(&format!("mavlink.{}", e.key), e.reason))?;
        if self.redis.ttl_secs < 2 {
            return Err(invalid("redis.ttl_secs", "must be at least 2"));
        }
        if let Some(addr) = &self.redis.addr {
            let routing = contrail_control::RoutingConfig {
                addr: Some(addr.clone()),
                ..contrail_control::RoutingConfig::default()
            };
            contrail_control::routing::store_connection_info(&routing)
                .map_err(|e| invalid("redis.addr", e.to_string()))?;
            if self.redis.tls_ca_file.is_some() && !addr.starts_with("rediss://") {
                return Err(invalid(
                    "redis.tls_ca_file",
                    "only used with a rediss:// address",
                ));
            }
        }
        if self.redis.db.is_some_and(|db| db < 0) {
            return Err(invalid("redis.db", "must not be negative"));
        }
        if self
            .sinks
            .iter()
            .filter(|s| matches!(s.kind, SinkKind::Live(_)))
            .count()
            > 1
        {
            return Err(invalid("sinks.type", "at most one live sink"));
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.sinks {
            let field = |k: &str| format!("sinks.{}.{k}", s.name);
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                return Err(invalid("sinks.name", "names must be unique and non-empty"));
            }
            if s.queue_batches == 0 {
                return Err(invalid(&field("queue_batches"), "must be at least 1"));
            }
            s.kind
                .validate()
                .map_err(|e| invalid(&field(e.key), e.reason))?;
            crate::sink::Filter::new(
                &s.include_kinds,
                &s.exclude_kinds,
                &s.include_agents,
                &s.exclude_agents,
                None,
            )
            .map_err(|e| invalid(&field("include_agents"), e.to_string()))?
            .with_mavlink_names(&s.include_mavlink, &s.exclude_mavlink)
            .map_err(|e| invalid(&field("include_mavlink"), e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_listens_on_4433() {
        let c = Config::default();
        c.validate().expect("valid");
        assert_eq!(c.listen.port(), 4433);
        assert_eq!(c.http.listen.port(), 2112);
    }

    #[test]
    fn the_slow_agent_ack_delay_cap_stays_below_half_the_idle_timeout() {
        let mut l = Limits::default();
        assert_eq!(
            l.quic_max_ack_delay_cap(),
            Some(Duration::from_millis(1_500))
        );
        l.idle_timeout_ms = 1_000;
        assert_eq!(l.quic_max_ack_delay_cap(), Some(Duration::from_millis(499)));
        l.idle_timeout_ms = 200;
        assert_eq!(
            l.quic_max_ack_delay_cap(),
            None,
            "not above quic_max_ack_delay_ms"
        );
        l.idle_timeout_ms = 30_000;
        l.quic_max_ack_delay_cap_ms = 0;
        assert_eq!(l.quic_max_ack_delay_cap(), None, "0 turns adapting off");
        let mut c = Config::default();
        c.limits.quic_max_ack_delay_cap_ms = 16_384;
        let e = c.validate().expect_err("over QUIC's limit");
        assert!(e.to_string().contains("quic_max_ack_delay_cap_ms"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("lisen = \"127.0.0.1:1\"").expect_err("unknown key");
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn live_sink_keys_parse_and_are_checked() {
        let c = Config::from_toml(
            r#"
            [[sinks]]
            name = "live"
            type = "live"
            required = true
            max_subscribers = 8
            subscriber_queue_frames = 1000
            subscriber_token = "s3cret"
            "#,
        )
        .expect("parses");
        c.validate().expect("valid");
        let mut bad = c.clone();
        if let SinkKind::Live(l) = &mut bad.sinks[0].kind {
            l.max_subscribers = 0;
        }
        let e = bad.validate().expect_err("zero subscribers");
        assert!(e.to_string().contains("sinks.live.max_subscribers"), "{e}");
        let mut two = c;
        let mut second = two.sinks[0].clone();
        second.name = "live2".into();
        two.sinks.push(second);
        let e = two.validate().expect_err("two live sinks");
        assert!(e.to_string().contains("live"), "{e}");
    }

    #[test]
    fn full_example_parses_and_bad_values_are_named() {
        let c = Config::from_toml(
            r#"
            relay_id = "r1"
            listen = "0.0.0.0:4433"
            [limits]
            max_inflight = 256
            [[sinks]]
            name = "archive"
            type = "file"
            required = true
            path = "/tmp/x.ndjson"
            format = "protobuf"
            rotate_bytes = 1000000
            [[sinks]]
            name = "debug"
            type = "stdout"
            when_full = "drop_newest"
            include_kinds = [0, 33]
            "#,
        )
        .expect("parses");
        c.validate().expect("valid");
        let mut bad = c.clone();
        bad.limits.max_inflight = 0;
        let e = bad.validate().expect_err("invalid");
        assert!(e.to_string().contains("max_inflight"), "{e}");
        let mut bad = c;
        if let SinkKind::File(f) = &mut bad.sinks[0].kind {
            f.path = PathBuf::new();
        }
        let e = bad.validate().expect_err("empty path");
        assert!(e.to_string().contains("sinks.archive.path"), "{e}");
    }

    #[test]
    fn a_burst_below_the_rate_is_refused_and_zero_means_one_second() {
        let parse = |text: &str| Config::from_toml(text).expect("parses").validate();
        let e = parse("[quotas]\nframes_per_sec = 100\nburst_frames = 50").expect_err("below");
        assert!(e.to_string().contains("quotas.burst_frames"), "{e}");
        assert!(e.to_string().contains("below frames_per_sec"), "{e}");
        let e = parse("[quotas]\nbytes_per_sec = 1000\nburst_bytes = 10").expect_err("below");
        assert!(e.to_string().contains("quotas.burst_bytes"), "{e}");
        parse("[quotas]\nframes_per_sec = 100").expect("0: one second's worth");
        parse("[quotas]\nframes_per_sec = 100\nburst_frames = 100").expect("equal");
        parse("[quotas]\nframes_per_sec = 100\nburst_frames = 500").expect("above");
    }

    fn sink_error(entry: &str) -> String {
        let text = format!("[[sinks]]\n{entry}");
        match Config::from_toml(&text) {
            Ok(c) => c.validate().expect_err(entry).to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_key_of_another_sink_type_is_refused_naming_key_and_sink() {
        for (entry, key) in [
            ("name = \"rs\"\ntype = \"redis_streams\"\nurl = \"redis://x\"\npath = \"/tmp/x\"", "path"),
            ("name = \"f\"\ntype = \"file\"\npath = \"/tmp/x\"\nstream = \"S\"", "stream"),
            ("name = \"js\"\ntype = \"nats_jetstream\"\nurl = \"nats://x:4222\"\nmax_subscribers = 3", "max_subscribers"),
            ("name = \"js2\"\ntype = \"nats_jetstream\"\nurl = \"nats://x:4222\"\nsubscriber_token = \"t\"", "subscriber_token"),
            ("name = \"out\"\ntype = \"stdout\"\nfsync = true", "fsync"),
            ("name = \"out2\"\ntype = \"stdout\"\nurl = \"redis://x\"", "url"),
            ("name = \"lv\"\ntype = \"live\"\nrotate_bytes = 5", "rotate_bytes"),
            ("name = \"lv2\"\ntype = \"live\"\nkey = \"k\"", "key"),
            ("name = \"f2\"\ntype = \"file\"\npath = \"/tmp/x\"\nmaxlen = 5", "maxlen"),
            ("name = \"rs2\"\ntype = \"redis_streams\"\nurl = \"redis://x\"\nsubject = \"a.b\"", "subject"),
            ("name = \"typo\"\ntype = \"file\"\npath = \"/tmp/x\"\nrotate_byte = 5", "rotate_byte"),
        ] {
            let e = sink_error(entry);
            let name = entry.split('"').nth(1).expect("name");
            assert!(e.contains(&format!("`{key}`")), "{entry}: {e}");
            assert!(e.contains(&format!("sink \"{name}\"")), "{entry}: {e}");
        }
    }

    #[test]
    fn common_keys_go_with_every_type_and_type_is_required() {
        let common = "required = true\nwhen_full = \"block\"\nqueue_batches = 8\ninclude_kinds = [1]\nexclude_kinds = [2]\ninclude_agents = [\"a*\"]\nexclude_agents = [\"b\"]";
        for (kind, own) in [
            ("stdout", ""),
            ("file", "path = \"/tmp/x\""),
            ("live", "max_subscribers = 2"),
            ("redis_streams", "url = \"redis://x\""),
            ("nats_jetstream", "url = \"nats://x:4222\""),
        ] {
            let text = format!("[[sinks]]\nname = \"s\"\ntype = \"{kind}\"\n{common}\n{own}");
            let c = Config::from_toml(&text).unwrap_or_else(|e| panic!("{kind}: {e}"));
            c.validate().unwrap_or_else(|e| panic!("{kind}: {e}"));
            let s = &c.sinks[0];
            assert_eq!(s.kind.type_name(), kind);
            assert!(s.required && s.queue_batches == 8 && s.when_full == WhenFull::Block);
            assert_eq!(s.include_agents, vec!["a*".to_owned()]);
        }
        let e = sink_error("name = \"x\"\npath = \"/tmp/x\"");
        assert!(e.contains("type"), "{e}");
        let e = sink_error("name = \"x\"\ntype = \"kafka\"");
        assert!(e.contains("kafka"), "{e}");
        let e = sink_error("name = \"x\"\ntype = \"file\"");
        assert!(e.contains("`path`"), "missing path: {e}");
    }
}
