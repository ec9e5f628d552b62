//! contrail-agent: the drone-side bridge. MAVLink from the autopilot (UDP, TCP, serial) in,
//! one frame per message out to a Contrail relay, through the agent library's offline-first
//! disk spool.
//!
//! Tasks, all owned by [`RunningAgent`] and joined by [`RunningAgent::stop`]:
//! * one task per source (a `tcpin:` source owns one more per connection): read, frame,
//!   queue (bounded, [`config::MavlinkConfig::queue`]);
//! * the pipeline: filters, rate limits, vehicle clock, flight id, identity, then the spool;
//! * the link logger: logs link up/down with the spool depth;
//! * the HTTP server (`/healthz`, `/metrics`), when enabled;
//! * with `[commands]` on: the command server ([`commands::serve`]), which owns one task per
//!   running command (at most `commands.max_running`);
//! * inside the agent library: the connection driver and the spool keeper.
//!
//! Shutdown: the sources stop first (the queue closes), the pipeline hands what it holds to
//! the spool, then the library closes (the spool is synced; unacked frames stay on disk for the
//! next start).

pub mod commands;
pub mod config;
pub mod framer;
pub mod http;
pub mod links;
pub mod pipeline;
pub mod source;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;

use contrail_protocol::client::commands::CommandOptions;
use contrail_protocol::client::{Agent, ClientConfig, ClientError, SpoolConfig, Trust, WhenFull};
use tokio::task::JoinSet;

pub use config::{Cli, Config, ConfigError, Validated};
pub use stats::Stats;

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The agent library refused to start (spool, TLS).
    #[error("agent library: {0}")]
    Client(#[from] ClientError),
    /// A source could not be bound.
    #[error("source: {0}")]
    Source(#[from] source::SourceError),
    /// The HTTP listener could not be bound.
    #[error("http listener {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running agent.
pub struct RunningAgent {
    agent: Arc<Agent>,
    stats: Arc<Stats>,
    sources: JoinSet<()>,
    source_addrs: Vec<Option<SocketAddr>>,
    pipeline: tokio::task::JoinHandle<Result<(), ClientError>>,
    others: JoinSet<()>,
    http_addr: Option<SocketAddr>,
    /// Notified when a staged update asks for a restart.
    restart: Arc<tokio::sync::Notify>,
}

/// The agent library's configuration for `v`.
pub fn client_config(v: &Validated) -> ClientConfig {
    let mut c = ClientConfig::new(
        v.relays[0],
        v.agent_id.clone(),
        Trust::CaFile(v.ca_file.clone()),
    );
    c.relays = v.relays.clone();
    c.server_name = v.server_name.clone();
    c.auth_token = v.auth_token.clone();
    c.agent_version = format!("contrail-agent/{}", env!("CARGO_PKG_VERSION"));
    c.connect_timeout = v.connect_timeout;
    c.reconnect_max = v.reconnect_max;
    let mut spool = SpoolConfig::new(v.spool_dir.clone(), v.spool_max_bytes);
    spool.fsync = v.fsync;
    spool.when_full = match v.when_full {
        config::WhenFull::DropOldest => WhenFull::DropOldest,
        config::WhenFull::Pause => WhenFull::Block,
    };
    c.spool = Some(spool);
    c
}

impl RunningAgent {
    /// Starts with `v`, on the library configuration `client` (from [`client_config`], which
    /// tests adjust: trust roots in memory, shorter timeouts). Returns once the sources are
    /// bound; the relay may be unreachable.
    pub async fn start(v: &Validated, client: ClientConfig) -> Result<RunningAgent, AgentError> {
        let stats = Arc::new(Stats::default());
        let links = Arc::new(links::Links::default());
        let mut others = JoinSet::new();
        let restart = Arc::new(tokio::sync::Notify::new());
        let agent = match &v.commands {
            Some(policy) => {
                let (agent, stream) = Agent::spawn_with_commands(
                    client,
                    CommandOptions::new(policy.state_dir.clone()),
                )?;
                let mut commander =
                    commands::Commander::new(policy.clone(), links.clone(), stats.clone());
                commander.restart = restart.clone();
                others.spawn(commands::serve(stream, Arc::new(commander)));
                Arc::new(agent)
            }
            None => Arc::new(Agent::spawn(client)?),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(v.queue);
        let ctx = source::SourceCtx {
            tx,
            stats: stats.clone(),
            heartbeat_system_id: v.heartbeat_system_id,
            links,
        };
        let mut sources = JoinSet::new();
        let mut source_addrs = Vec::new();
        for ep in &v.sources {
            let bound = source::bind(ep).await?;
            source_addrs.push(bound.local_addr());
            tracing::info!(source = %ep.label(), local = ?bound.local_addr(), "MAVLink source");
            sources.spawn(source::run(bound, ep.label(), ctx.clone()));
        }
        drop(ctx);
        let pipeline = pipeline::Pipeline::new(
            pipeline::PipelineConfig {
                agent_id: v.agent_id.as_str().to_string(),
                flight_id: v.flight_id.clone(),
                include: v.include.clone(),
                exclude: v.exclude.clone(),
                rate_limits: v.rate_limits.clone(),
            },
            stats.clone(),
        );
        let pipeline = tokio::spawn(pipeline::run(rx, pipeline, agent.clone(), stats.clone()));
        others.spawn(log_link(agent.clone()));
        let mut http_addr = None;
        if let Some(addr) = v.http {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Http { addr, source })?;
            http_addr = listener.local_addr().ok();
            let app = http::router(http::HttpState {
                agent: agent.clone(),
                stats: stats.clone(),
            });
            others.spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::warn!(error = %e, "http server ended");
                }
            });
        }
        Ok(RunningAgent {
            agent,
            stats,
            sources,
            source_addrs,
            pipeline,
            others,
            http_addr,
            restart,
        })
    }

    /// The agent library (seqs, acks, stats).
    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }

    /// The agent's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Local addresses of the sources, in configuration order (`None` for outgoing ones).
    pub fn source_addrs(&self) -> &[Option<SocketAddr>] {
        &self.source_addrs
    }

    /// Where `/healthz` and `/metrics` listen.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Runs until `shutdown` resolves, an `update_agent` with `restart_after_staging` staged
    /// an update, or the agent stops for good (a refusal retrying cannot fix); then stops
    /// everything in order.
    pub async fn run_until(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ClientError> {
        let res = tokio::select! {
            _ = shutdown => Ok(()),
            _ = self.restart.notified() => {
                tracing::info!("stopping: a staged update is installed at the next start");
                Ok(())
            }
            r = &mut self.pipeline => match r {
                Ok(r) => r,
                Err(_) => Err(ClientError::Closed),
            },
        };
        self.stop().await;
        res
    }

    /// Stops the sources, lets the pipeline hand its queue to the spool, and closes the
    /// library (syncing the spool). Unacked frames stay in the spool.
    pub async fn stop(mut self) {
        self.sources.shutdown().await;
        if !self.pipeline.is_finished() {
            let _ = (&mut self.pipeline).await;
        }
        self.others.shutdown().await;
        match Arc::try_unwrap(self.agent) {
            Ok(mut agent) => agent.shutdown().await,
            Err(agent) => tracing::warn!(
                refs = Arc::strong_count(&agent),
                "agent still shared at stop; not closed cleanly"
            ),
        }
    }
}

/// Logs link up and down with the spool depth.
async fn log_link(agent: Arc<Agent>) {
    let mut rx = agent.link_watch();
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let up = *rx.borrow_and_update();
        let s = agent.stats();
        if up {
            let relay = agent.session().map(|x| x.relay_id).unwrap_or_default();
            tracing::info!(%relay, spool_frames = s.spool_frames, spool_bytes = s.spool_bytes, "link up");
        } else {
            tracing::warn!(
                spool_frames = s.spool_frames,
                spool_bytes = s.spool_bytes,
                "link down"
            );
        }
    }
}
