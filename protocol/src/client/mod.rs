//! The agent client library: what a drone embeds to stream telemetry to a relay. The live
//! subscriber client (backends receiving frames) is in [`subscriber`].
//!
//! An [`Agent`] owns one QUIC connection at a time. It registers, keeps at most `max_inflight`
//! frames unacked (sending awaits credit, it never spins), and when the connection drops it
//! reconnects with capped backoff (rotating through the configured relays), registers with the
//! last acked seq, and resends every unacked frame with its original `seq`.
//!
//! ```no_run
//! use contrail_protocol::client::{Agent, ClientConfig, OutFrame, Trust};
//! use contrail_protocol::AgentId;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ClientConfig::new(
//!     "127.0.0.1:4433".parse()?,
//!     AgentId::new("drone-1")?,
//!     Trust::CaFile(".contrail/dev/cert.pem".into()),
//! );
//! let agent = Agent::connect(config).await?;
//! for i in 0..1000u32 {
//!     let payload = i.to_be_bytes();
//!     agent
//!         .send(&OutFrame { kind: 33, payload: &payload, ..OutFrame::default() })
//!         .await?;
//! }
//! agent.flush().await?; // every frame acked by the relay's required sinks
//! agent.close().await?;
//! # Ok(()) }
//! ```

pub mod commands;
pub mod config;
mod driver;
pub mod gate;
pub mod placement;
pub mod spool;
mod state;
pub mod subscriber;
mod verify;

pub use config::{ClientAuth, ClientConfig, SharedEndpoint, Trust};
pub use spool::{FsyncPolicy, SpoolConfig, WhenFull};
pub use state::AgentStats;

use std::sync::Arc;

use crate::ErrorCode;
use state::Shared;

/// Why the agent could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TLS or QUIC configuration is unusable (bad CA file, bad key).
    #[error("client configuration: {0}")]
    Config(#[from] ClientConfigError),
    /// The relay refused or closed the session with a code that retrying will not fix.
    #[error("relay closed the session: {code} ({message})")]
    Rejected {
        /// The code the relay sent.
        code: ErrorCode,
        /// The relay's message.
        message: String,
    },
    /// No relay could be reached before the connect timeout.
    #[error("could not connect: {0}")]
    Connect(#[from] ConnectError),
    /// The frame is larger than the relay's max frame size.
    #[error("frame of {len} bytes exceeds the relay's limit of {max}")]
    FrameTooLarge {
        /// Encoded length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The agent was closed.
    #[error("agent is closed")]
    Closed,
    /// The on-disk spool failed (open, append or ack).
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    /// The command ledger (`commands.log` in the state directory) could not be read or written.
    #[error("command ledger: {0}")]
    CommandLedger(#[source] Arc<std::io::Error>),
}

/// Why the agent's TLS or QUIC configuration is unusable.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientConfigError {
    /// `relays` is empty.
    #[error("no relay address")]
    NoRelay,
    /// The CA file could not be read.
    #[error("reading {path}: {source}")]
    ReadCa {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// The CA file is not PEM.
    #[error("parsing {path}: {source}")]
    ParseCa {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// The CA file holds no certificate.
    #[error("{path} holds no certificate")]
    NoCertificate {
        /// The file.
        path: std::path::PathBuf,
    },
    /// A trust root was refused.
    #[error("trust root: {0}")]
    TrustRoot(#[source] rustls::Error),
    /// The certificate verifier could not be built from the trust roots.
    #[error("trust roots: {0}")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    /// rustls refused the settings (protocol versions, provider).
    #[error("TLS: {0}")]
    Tls(#[source] rustls::Error),
    /// The client certificate or key was refused.
    #[error("client certificate: {0}")]
    ClientCertificate(#[source] rustls::Error),
    /// The TLS config has no cipher suite QUIC can use.
    #[error("QUIC crypto: {0}")]
    QuicCrypto(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    /// `max_udp_payload_bytes` was refused.
    #[error("max_udp_payload_bytes: {0}")]
    UdpPayload(#[source] quinn::ConfigError),
    /// No tokio runtime to run the endpoint on.
    #[error("no async runtime")]
    NoRuntime,
    /// The UDP socket could not be bound or set up.
    #[error("UDP socket: {0}")]
    Socket(#[source] Arc<std::io::Error>),
    /// quinn refused to start a connection (bad server name, endpoint stopping).
    #[error("starting a connection: {0}")]
    StartConnect(#[source] quinn::ConnectError),
    /// The Register message does not fit the frame size limit.
    #[error("register message too large: {0}")]
    RegisterTooLarge(#[source] crate::CodecError),
}

/// Why no session was established.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No relay registered the agent within the connect timeout.
    #[error("no relay registered this agent within {0:?}")]
    Timeout(std::time::Duration),
}

/// Why the on-disk spool failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// Opening (or recovering) the spool directory failed.
    #[error("opening {dir}: {source}")]
    Open {
        /// The spool directory.
        dir: std::path::PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// One frame is larger than the whole spool.
    #[error("a frame of {len} bytes does not fit a spool of {max} bytes")]
    FrameTooLarge {
        /// Encoded frame length.
        len: usize,
        /// Spool capacity.
        max: u64,
    },
    /// Appending a frame failed.
    #[error("append: {0}")]
    Append(#[source] Arc<std::io::Error>),
    /// Dropping the oldest segment of a full spool (`WhenFull::DropOldest`) failed.
    #[error("dropping the oldest segment: {0}")]
    DropOldest(#[source] Arc<std::io::Error>),
    /// Flushing appended frames failed; frames up to `last` are queued in memory only.
    #[error("flush (frames up to {last} are queued in memory only): {source}")]
    Flush {
        /// Last seq appended.
        last: u64,
        /// Why.
        source: Arc<std::io::Error>,
    },
}

/// One frame to send. `seq` and `sent_at` are filled in by the agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutFrame<'a> {
    /// Kind (e.g. MAVLink message id).
    pub kind: u32,
    /// Flight id.
    pub flight_id: &'a str,
    /// Payload.
    pub payload: &'a [u8],
    /// Content type.
    pub content_type: &'a str,
    /// Device time.
    pub device_time: u64,
}

/// What the relay said when the current session registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Session id (32 hex chars).
    pub session_id: String,
    /// Relay id.
    pub relay_id: String,
    /// Credit window.
    pub max_inflight: u32,
    /// Seq the relay asked to resume after.
    pub resume_from_seq: u64,
    /// Heartbeat interval.
    pub heartbeat_interval_ms: u32,
}

/// A connected agent. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Agent {
    shared: Arc<Shared>,
    driver: Option<tokio::task::JoinHandle<()>>,
    /// Persists acks and syncs the spool (with a spool only).
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// Connects and registers; returns once the first session is registered, or fails after
    /// `connect_timeout` (retrying relays meanwhile) or on a refusal retrying cannot fix.
    pub async fn connect(config: ClientConfig) -> Result<Agent, ClientError> {
        let endpoint = config::build_endpoint(&config)?;
        Self::start(config, endpoint, true, None).await
    }

    /// Like [`connect`](Self::connect), and takes commands from operators: registers with the
    /// `commands` capability and returns the stream of commands (see [`commands`]).
    pub async fn connect_with_commands(
        config: ClientConfig,
        options: commands::CommandOptions,
    ) -> Result<(Agent, commands::Commands), ClientError> {
        let (hub, stream) = commands::Hub::open(options)?;
        let endpoint = config::build_endpoint(&config)?;
        let agent = Self::start(config, endpoint, true, Some(hub)).await?;
        Ok((agent, stream))
    }

    /// Starts without waiting for a relay (offline first): opens the spool and returns at
    /// once; the agent connects in the background and keeps retrying (with capped backoff)
    /// until it is closed. Frames sent meanwhile wait in the spool (or, without one, up to
    /// `max_buffered` in memory). A refusal retrying cannot fix surfaces as the error of the
    /// next `send`.
    pub fn spawn(config: ClientConfig) -> Result<Agent, ClientError> {
        let endpoint = config::build_endpoint(&config)?;
        Self::launch(config, endpoint, true, None)
    }

    /// Like [`spawn`](Self::spawn) (offline first: returns at once, connects in the
    /// background), and takes commands from operators like
    /// [`connect_with_commands`](Self::connect_with_commands).
    pub fn spawn_with_commands(
        config: ClientConfig,
        options: commands::CommandOptions,
    ) -> Result<(Agent, commands::Commands), ClientError> {
        let (hub, stream) = commands::Hub::open(options)?;
        let endpoint = config::build_endpoint(&config)?;
        let agent = Self::launch(config, endpoint, true, Some(hub))?;
        Ok((agent, stream))
    }

    /// Like [`connect`](Self::connect), on a socket shared with other agents (see
    /// [`SharedEndpoint`]). Closing or dropping this agent closes only its own connection.
    pub async fn connect_shared(
        config: ClientConfig,
        endpoint: &SharedEndpoint,
    ) -> Result<Agent, ClientError> {
        if config.relays.is_empty() {
            return Err(ClientConfigError::NoRelay.into());
        }
        Self::start(config, endpoint.endpoint.clone(), false, None).await
    }

    /// [`connect_with_commands`](Self::connect_with_commands) on a socket shared with other
    /// agents (see [`SharedEndpoint`]): many command-taking agents in one process (gateways,
    /// `contrail-loadgen`'s `commands` scenario).
    pub async fn connect_shared_with_commands(
        config: ClientConfig,
        endpoint: &SharedEndpoint,
        options: commands::CommandOptions,
    ) -> Result<(Agent, commands::Commands), ClientError> {
        if config.relays.is_empty() {
            return Err(ClientConfigError::NoRelay.into());
        }
        let (hub, stream) = commands::Hub::open(options)?;
        let agent = Self::start(config, endpoint.endpoint.clone(), false, Some(hub)).await?;
        Ok((agent, stream))
    }

    async fn start(
        config: ClientConfig,
        endpoint: quinn::Endpoint,
        owns_endpoint: bool,
        commands: Option<Arc<commands::Hub>>,
    ) -> Result<Agent, ClientError> {
        let timeout = config.connect_timeout;
        let agent = Self::launch(config, endpoint, owns_endpoint, commands)?;
        match tokio::time::timeout(timeout, agent.shared.wait_first_session()).await {
            Ok(res) => res.map(|()| agent),
            Err(_) => Err(ConnectError::Timeout(timeout).into()),
        }
    }

    fn launch(
        config: ClientConfig,
        endpoint: quinn::Endpoint,
        owns_endpoint: bool,
        commands: Option<Arc<commands::Hub>>,
    ) -> Result<Agent, ClientError> {
        let spool = match &config.spool {
            Some(sc) => Some(spool::Spool::open(sc).map_err(|e| SpoolError::Open {
                dir: sc.dir.clone(),
                source: Arc::new(e),
            })?),
            None => None,
        };
        let shared = Arc::new(Shared::new(&config, spool));
        let keeper = shared
            .spool
            .is_some()
            .then(|| tokio::spawn(shared.clone().keep_spool()));
        let driver = tokio::spawn(driver::run(
            endpoint,
            owns_endpoint,
            config,
            shared.clone(),
            commands,
        ));
        Ok(Agent {
            shared,
            driver: Some(driver),
            keeper,
        })
    }

    /// Sends one frame. Without a spool it awaits credit when the window is full; with one it
    /// returns once the frame is in the spool (waiting only for spool room with
    /// `WhenFull::Block`). Returns its seq.
    pub async fn send(&self, frame: &OutFrame<'_>) -> Result<u64, ClientError> {
        self.shared
            .send_many(1, |_| *frame)
            .await
            .map(|(last, _)| last)
    }

    /// Sends up to `count` frames built by `make(seq)`, as many as the credit window (or, with
    /// a spool, the spool's room) allows at once (at least one). Returns `(last seq sent, how
    /// many were sent)`. `make` is called with consecutive seqs and may be called again for
    /// the same seq (when a full spool had to make room first): build the frame from the seq.
    pub async fn send_many<'a>(
        &self,
        count: usize,
        make: impl FnMut(u64) -> OutFrame<'a>,
    ) -> Result<(u64, usize), ClientError> {
        self.shared.send_many(count, make).await
    }

    /// Highest seq the relay acked (cumulative).
    pub fn acked_seq(&self) -> u64 {
        self.shared.acked()
    }

    /// Last seq handed out.
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq()
    }

    /// A watch of the acked seq, for callers measuring ack latency.
    pub fn ack_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.ack_watch()
    }

    /// Waits until every frame up to `seq` is acked.
    pub async fn wait_acked(&self, seq: u64) -> Result<(), ClientError> {
        self.shared.wait_acked(seq).await
    }

    /// Waits until every frame sent so far is acked.
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.wait_acked(self.last_seq()).await
    }

    /// The current session, if connected.
    pub fn session(&self) -> Option<SessionInfo> {
        self.shared.session()
    }

    /// Counters: frames sent, acked, nacks, reconnects, resent frames, spool depth and drops.
    pub fn stats(&self) -> AgentStats {
        self.shared.stats()
    }

    /// Whether a session is registered now (the link is up), as a watch that changes on every
    /// connect and disconnect.
    pub fn link_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.link_watch()
    }

    /// Replaces the vehicle's identity: the next Register carries it, and a live session sends
    /// it at once as `ControlMessage.identity`. An unchanged identity sends nothing.
    pub fn set_identity(&self, identity: crate::proto::DroneIdentity) {
        self.shared.set_identity(identity);
    }

    /// QUIC statistics of the current connection (packets, datagrams, frames by type, RTT,
    /// congestion window), if connected; a reconnect starts them again.
    pub fn transport_stats(&self) -> Option<quinn::ConnectionStats> {
        self.shared.transport_stats()
    }

    /// Closes the current connection abruptly (no drain), as a cut link would; the agent
    /// reconnects and resumes. Meant for tests and chaos drills.
    pub fn drop_connection(&self) {
        self.shared.drop_connection();
    }

    /// Flushes, then closes the session cleanly.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let flushed = self.flush().await;
        self.shutdown().await;
        flushed
    }

    /// Closes at once without waiting for acks; unacked frames stay in the spool (if any) for
    /// the next start. The spool is synced before this returns.
    pub async fn shutdown(&mut self) {
        self.shared.close();
        if let Some(driver) = self.driver.take() {
            let _ = driver.await;
        }
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shared.close();
        if let Some(driver) = &self.driver {
            driver.abort();
        }
        if let Some(keeper) = &self.keeper {
            keeper.abort();
        }
    }
}
