//! The relay: QUIC endpoint, accept loop, session supervisor, sink actors, control plane, and
//! the graceful drain that stops them in order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contrail_control::{Control, ControlConfig, ControlEvents, Lifecycle, LifecycleState};
use contrail_protocol::{AgentId, ErrorCode};
use metrics::Counter;
use ractor::{Actor, ActorRef};
use rustls_pki_types::CertificateDer;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::cursor::ResumeTable;
use crate::fanout::FanOut;
use crate::latency::Latency;
use crate::session::supervisor::{SessionSupervisor, SupervisorMsg};
use crate::session::{self, Registration, SessionEntry};
use crate::sink::actor::{SinkActor, SinkArgs, SinkMsg};
use crate::sink::live::SubscriberRegistry;
use crate::sink::{registry, SinkHandle, SinkSpec};
use crate::tls;

/// Longest a registration waits for the session supervisor's answer.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Binding or using a socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The control plane failed to start.
    #[error("control: {0}")]
    Control(#[from] contrail_control::ControlError),
    /// Authentication could not be set up (tokens file, JWT secret).
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// An actor failed to spawn.
    #[error("actor: {0}")]
    Actor(#[from] ractor::SpawnErr),
}

/// Why the session registry could not answer a claim.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// The supervisor did not answer within the claim timeout.
    #[error("the session supervisor did not answer within {0:?}")]
    Timeout(Duration),
    /// The supervisor dropped the claim or is gone.
    #[error("the session supervisor failed: {0}")]
    Supervisor(String),
}

/// A per-batch hook (see [`Hooks::on_batch`]).
pub type BatchHook = Arc<dyn Fn(&AgentId) + Send + Sync>;

/// A claim hook (see [`Hooks::fail_claim`]).
pub type ClaimHook = Arc<dyn Fn(&AgentId) -> bool + Send + Sync>;

/// Test and embedding hooks (never reachable from the network or the config file).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called by the reader for every batch before it is checked; a panic here simulates a bug
    /// in one session.
    pub on_batch: Option<BatchHook>,
    /// Asked by the session supervisor for every claim; `true` makes it drop that claim
    /// unanswered, as a failed supervisor would (tests of the refusal that follows).
    pub fail_claim: Option<ClaimHook>,
}

/// What every session shares.
pub struct RelayCore {
    /// Configuration.
    pub config: Config,
    /// This relay's id.
    pub relay_id: String,
    /// Sinks.
    pub fanout: FanOut,
    /// Resume cursors.
    pub resume: ResumeTable,
    /// Session up/down events to control.
    pub events: ControlEvents,
    /// Latency histograms.
    pub latency: Latency,
    /// Lifecycle latch.
    pub lifecycle: Lifecycle,
    /// Hooks.
    pub hooks: Hooks,
    /// Live subscribers, when a `live` sink is configured.
    pub live: Option<Arc<SubscriberRegistry>>,
    /// Placement across the fleet (redirects, drain targets).
    pub placement: crate::placement::RelayPlacement,
    supervisor: ActorRef<SupervisorMsg>,
    auth: crate::auth::Authenticator,
    /// Successful registrations per agent id (reconnect storms).
    reconnects: crate::quota::Damper<AgentId>,
    /// Failed authentications per source address.
    auth_failures: crate::quota::Damper<std::net::IpAddr>,
    sessions: AtomicUsize,
    pending: AtomicUsize,
    session_errors: std::sync::atomic::AtomicU64,
    pub(crate) frames_received: Counter,
    pub(crate) bytes_received: Counter,
    pub(crate) frames_duplicate: Counter,
    pub(crate) frames_discarded: Counter,
    pub(crate) acks_sent: AckCounters,
    pub(crate) credits_exhausted: Counter,
    sessions_opened: Counter,
}

/// `contrail_acks_sent_total{trigger}`: why each ack went out.
pub(crate) struct AckCounters {
    /// A quarter of the agent's credit window was waiting (`max_inflight / 4`).
    pub(crate) window: Counter,
    /// The coalescing delay (`limits.ack_delay_ms`) ran out (or is 0).
    pub(crate) delay: Counter,
    /// The agent's batches come further apart than the delay: acked without waiting.
    pub(crate) pace: Counter,
    /// The relay is draining: everything is acked at once.
    pub(crate) drain: Counter,
}

impl AckCounters {
    fn new() -> Self {
        let c = |t: &'static str| metrics::counter!("contrail_acks_sent_total", "trigger" => t);
        AckCounters {
            window: c("window"),
            delay: c("delay"),
            pace: c("pace"),
            drain: c("drain"),
        }
    }
}

impl RelayCore {
    pub(crate) fn is_draining(&self) -> bool {
        matches!(
            self.lifecycle.state(),
            LifecycleState::Draining | LifecycleState::Stopped
        )
    }

    /// Takes a session slot; false when the relay is at `max_sessions`.
    pub(crate) fn try_reserve_session(&self) -> bool {
        let max = self.config.limits.max_sessions;
        if self.sessions.fetch_add(1, Ordering::AcqRel) >= max {
            self.sessions.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("contrail_limit_hits_total", "limit" => "max_sessions").increment(1);
            return false;
        }
        self.sessions_opened.increment(1);
        true
    }

    pub(crate) fn session_ended(&self, r: &Registration, now: Instant) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
        self.events
            .session_down(r.agent_id.as_str(), &r.session_id.to_hex());
        self.resume.detach(&r.agent_id, &r.cursor, now);
    }

    pub(crate) fn handshake_done(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn count_rejection(&self, code: ErrorCode) {
        metrics::counter!("contrail_sessions_rejected_total", "code" => code.label()).increment(1);
    }

    /// Admits a registration, or says why not: a source address with too many failed
    /// authentications in the last minute is refused before its credentials are checked; then
    /// token/JWT/mTLS (a failure counts against the source address, never against the agent id
    /// it named); then reconnect-storm damping of the authenticated agent id.
    pub(crate) fn admit(
        &self,
        agent: &AgentId,
        token: &str,
        conn: &quinn::Connection,
    ) -> Result<(), crate::session::driver::End> {
        use crate::session::driver::End;
        let now = Instant::now();
        let source = conn.remote_address().ip().to_canonical();
        if self.auth_failures.over(&source, now) {
            metrics::counter!("contrail_limit_hits_total", "limit" => "auth_failures_per_minute")
                .increment(1);
            return Err(End::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "too many failed authentications from {source} in the last minute (limit {}); retry later",
                    self.auth_failures.limit()
                ),
            ));
        }
        let chain = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok());
        if let Err(code) = self
            .auth
            .check(agent, token, chain.as_deref().map(Vec::as_slice))
        {
            self.auth_failures.allow(&source, now);
            return Err(End::new(code, "authentication failed"));
        }
        if !self.reconnects.allow(agent, now) {
            metrics::counter!("contrail_limit_hits_total", "limit" => "registrations_per_minute")
                .increment(1);
            return Err(End::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "more than {} registrations of agent {agent} in the last minute (reconnect storm); retry later",
                    self.reconnects.limit()
                ),
            ));
        }
        Ok(())
    }

    /// The agent authentication mode in force.
    pub fn auth_mode(&self) -> crate::auth::AuthMode {
        self.auth.mode()
    }

    /// Registers `entry` as `agent`'s session; returns the session it replaces, if any.
    pub(crate) async fn claim(
        &self,
        agent: &AgentId,
        entry: SessionEntry,
    ) -> Result<Option<SessionEntry>, ClaimError> {
        let agent = agent.clone();
        let timeout = CLAIM_TIMEOUT;
        match self
            .supervisor
            .call(
                |reply| SupervisorMsg::Claim {
                    agent,
                    entry,
                    reply,
                },
                Some(timeout),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(old)) => Ok(old),
            Ok(ractor::rpc::CallResult::Timeout) => Err(ClaimError::Timeout(timeout)),
            Ok(ractor::rpc::CallResult::SenderError) => Err(ClaimError::Supervisor(
                "the claim was dropped unanswered".into(),
            )),
            Err(e) => Err(ClaimError::Supervisor(e.to_string())),
        }
    }

    /// Gives back a slot taken by [`Self::try_reserve_session`] for a session that did not
    /// register after all.
    pub(crate) fn release_session(&self) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn count_session_error(&self) {
        self.session_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions that ended with an error code (not clean closes or supersedes).
    pub fn session_errors(&self) -> u64 {
        self.session_errors.load(Ordering::Relaxed)
    }

    /// Registered sessions right now.
    pub fn session_count(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }
}

/// Builds and starts a relay.
pub struct RelayBuilder {
    config: Config,
    extra_sinks: Vec<SinkSpec>,
    hooks: Hooks,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    grpc: Option<tokio::net::TcpListener>,
}

impl RelayBuilder {
    /// A relay with `config`.
    pub fn new(config: Config) -> Self {
        RelayBuilder {
            config,
            extra_sinks: Vec::new(),
            hooks: Hooks::default(),
            metrics: None,
            grpc: None,
        }
    }

    /// Adds a sink built in code (e.g. a channel sink in tests), besides configured ones.
    pub fn sink(mut self, spec: SinkSpec) -> Self {
        self.extra_sinks.push(spec);
        self
    }

    /// Installs hooks.
    pub fn hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = hooks;
        self
    }

    /// Serves seed 003's gRPC RelayControl on this (already bound) listener.
    pub fn grpc(mut self, listener: tokio::net::TcpListener) -> Self {
        self.grpc = Some(listener);
        self
    }

    /// Serves this Prometheus handle on `/metrics`.
    pub fn metrics(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// Starts on an already-bound UDP socket (QUIC) and TCP listener (HTTP).
    pub async fn start(
        self,
        udp: std::net::UdpSocket,
        http: tokio::net::TcpListener,
    ) -> Result<RunningRelay, RelayError> {
        let config = self.config;
        config.validate()?;
        let identity = tls::load_or_generate(&config.tls)?;
        let relay_id = contrail_control::relay_id_from_env_or_host(config.relay_id.as_deref());
        let control_cfg = ControlConfig {
            http_listen: http.local_addr()?,
            admin_token: config.http.admin_token.clone(),
            viewer_token: config.http.viewer_token.clone(),
            routing: contrail_control::RoutingConfig {
                addr: config.redis.addr.clone(),
                password: config.redis.password.clone(),
                db: config.redis.db,
                tls_ca_file: config.redis.tls_ca_file.clone(),
                ttl: Duration::from_secs(config.redis.ttl_secs),
                relay_id: relay_id.clone(),
                ..contrail_control::RoutingConfig::default()
            },
            drain_deadline: Duration::from_millis(config.drain.deadline_ms),
            ..ControlConfig::default()
        };
        let mut control = Control::start(control_cfg, http, self.metrics).await?;
        if let Some(grpc) = self.grpc {
            control.serve_grpc(grpc);
        }
        let latency = Latency::new(control.latency().clone());

        let live = config
            .sinks
            .iter()
            .find_map(|s| match &s.kind {
                crate::config::SinkKind::Live(l) => Some(l),
                _ => None,
            })
            .map(|l| SubscriberRegistry::new(crate::sink::live::settings(l, &config)));
        let mut specs: Vec<SinkSpec> = config
            .sinks
            .iter()
            .map(|s| registry::build_with(s, live.as_ref()))
            .collect::<Result<_, _>>()?;
        specs.extend(self.extra_sinks);
        if specs.is_empty() {
            specs = registry::default_specs();
        }
        let mut handles = Vec::new();
        let mut sink_actors = Vec::new();
        for spec in specs {
            let flag = control
                .health()
                .register(&format!("sink:{}", spec.common.name), spec.common.required);
            let handle = Arc::new(SinkHandle::new(spec.common, latency.clone(), Some(flag)));
            let (actor, join) = Actor::spawn(
                None,
                SinkActor,
                SinkArgs {
                    handle: handle.clone(),
                    factory: spec.factory,
                },
            )
            .await?;
            handles.push(handle);
            sink_actors.push((actor, join));
        }

        let handles_for_report = handles.clone();
        let (supervisor, supervisor_join) =
            Actor::spawn(None, SessionSupervisor, self.hooks.fail_claim.clone()).await?;
        let limits = &config.limits;
        let core = Arc::new(RelayCore {
            relay_id,
            fanout: FanOut::new(handles.clone()),
            resume: ResumeTable::new(
                limits.resume_max_agents,
                Duration::from_secs(limits.resume_ttl_secs),
            ),
            events: control.events(),
            latency,
            lifecycle: control.lifecycle().clone(),
            hooks: self.hooks,
            live,
            supervisor: supervisor.clone(),
            auth: crate::auth::Authenticator::new(&config.auth, config.auth_mode()?)?,
            reconnects: crate::quota::Damper::new(
                config.quotas.registrations_per_minute,
                config.quotas.max_tracked_agents,
            ),
            auth_failures: crate::quota::Damper::new(
                config.quotas.auth_failures_per_minute,
                config.quotas.max_tracked_sources,
            ),
            sessions: AtomicUsize::new(0),
            placement: crate::placement::RelayPlacement::new(
                control.fleet_reader().clone(),
                config.limits.soft_max_sessions(),
                config.region.clone(),
            ),
            pending: AtomicUsize::new(0),
            session_errors: std::sync::atomic::AtomicU64::new(0),
            frames_received: metrics::counter!("contrail_frames_received_total"),
            bytes_received: metrics::counter!("contrail_bytes_received_total"),
            frames_duplicate: metrics::counter!("contrail_frames_duplicate_total"),
            frames_discarded: metrics::counter!("contrail_frames_discarded_total"),
            acks_sent: AckCounters::new(),
            credits_exhausted: metrics::counter!("contrail_credits_exhausted_total"),
            sessions_opened: metrics::counter!("contrail_sessions_opened_total"),
            config,
        });

        let alpns: &[&[u8]] = if core.live.is_some() {
            &[
                contrail_protocol::ALPN_AGENT,
                contrail_protocol::ALPN_SUBSCRIBER,
            ]
        } else {
            &[contrail_protocol::ALPN_AGENT]
        };
        let server = tls::server_config(
            &identity,
            &core.config.limits,
            alpns,
            core.config.auth.client_ca.as_deref(),
            core.config.tls.session_tickets,
        )?;
        tune_udp_socket(&udp, core.config.limits.udp_buffer_bytes);
        let endpoint_config = contrail_protocol::client::config::endpoint_config(
            core.config.limits.max_udp_payload_bytes,
        )
        .map_err(|e| RelayError::Tls(tls::TlsError::Config(e.to_string())))?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server),
            udp,
            Arc::new(quinn::TokioRuntime),
        )?;
        let local_addr = endpoint.local_addr()?;
        {
            let c = &control;
            c.local().set_facts(contrail_control::registry::RelayFacts {
                address: core
                    .config
                    .public_address
                    .clone()
                    .unwrap_or_else(|| local_addr.to_string()),
                http_address: c.http_addr().to_string(),
                region: core.config.region.clone(),
                zone: core.config.zone.clone(),
                soft_max_sessions: core.config.limits.soft_max_sessions() as u64,
                max_sessions: core.config.limits.max_sessions as u64,
                version: env!("CARGO_PKG_VERSION").to_owned(),
            });
            c.local()
                .set_sink_report(Arc::new(crate::sink::worker::SinkReporter(
                    handles_for_report,
                )));
        }
        let accept = tokio::spawn(accept_loop(
            core.clone(),
            endpoint.clone(),
            supervisor.clone(),
        ));
        core.lifecycle.mark_ready();
        Ok(RunningRelay {
            core,
            endpoint,
            control: Some(control),
            supervisor,
            supervisor_join: Some(supervisor_join),
            sink_actors,
            accept: Some(accept),
            local_addr,
            dev_cert_path: identity.dev_cert_path,
            certificate: identity.chain[0].clone(),
        })
    }
}

/// Raises the UDP socket's kernel buffers so bursts from many agents are not dropped before
/// quinn reads them (drops cost retransmission round trips: seconds of tail latency).
fn tune_udp_socket(udp: &std::net::UdpSocket, bytes: usize) {
    contrail_protocol::client::config::size_socket_buffers(udp, bytes);
    // Linux stores (and reports) twice the size asked for, capped at twice net.core.rmem_max.
    let full = if cfg!(target_os = "linux") {
        bytes.saturating_mul(2)
    } else {
        bytes
    };
    let read = || socket2::SockRef::from(udp).recv_buffer_size().unwrap_or(0);
    let mut got = read();
    #[cfg(target_os = "linux")]
    if got < full {
        // With CAP_NET_ADMIN, SO_RCVBUFFORCE / SO_SNDBUFFORCE pass the sysctl caps.
        let r = rustix::net::sockopt::set_socket_recv_buffer_size_force(udp, bytes);
        let s = rustix::net::sockopt::set_socket_send_buffer_size_force(udp, bytes);
        tracing::debug!(recv = ?r, send = ?s, "SO_RCVBUFFORCE / SO_SNDBUFFORCE");
        got = read();
    }
    metrics::gauge!("contrail_udp_recv_buffer_bytes").set(got as f64);
    if got < full {
        metrics::counter!("contrail_limit_hits_total", "limit" => "udp_buffer_capped").increment(1);
        tracing::warn!(
            asked = bytes,
            got,
            "UDP RECEIVE BUFFER CAPPED BY THE KERNEL: bursts will overflow it (RcvbufErrors in \
             /proc/net/snmp) and every overflow is a QUIC loss. Set `sysctl -w \
             net.core.rmem_max={bytes} net.core.wmem_max={bytes}` (deploy/RUNBOOK.md) or give \
             the relay CAP_NET_ADMIN"
        );
    }
}

async fn accept_loop(
    core: Arc<RelayCore>,
    endpoint: quinn::Endpoint,
    supervisor: ActorRef<SupervisorMsg>,
) {
    let max_pending = core.config.limits.max_pending_handshakes;
    // Session actors start concurrently: awaiting each actor's start here would serialize
    // connection setup (measured: ~1k connects/s with the relay mostly idle). The set owns
    // the starts in flight (at most `max_pending_handshakes`) and aborts them if the loop stops.
    let mut starting = tokio::task::JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
            Some(_) = starting.join_next(), if !starting.is_empty() => continue,
        };
        if core.pending.fetch_add(1, Ordering::AcqRel) >= max_pending {
            core.pending.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("contrail_limit_hits_total", "limit" => "max_pending_handshakes")
                .increment(1);
            incoming.refuse();
            continue;
        }
        let core = core.clone();
        let parent = supervisor.get_cell();
        starting.spawn(async move {
            if let Err(e) = session::spawn(core.clone(), incoming, parent).await {
                core.pending.fetch_sub(1, Ordering::AcqRel);
                tracing::error!(error = %e, "could not spawn a session actor");
            }
        });
    }
}

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions still open when the wait for agents to leave ended.
    pub sessions_left: usize,
    /// Sinks that failed to flush in time.
    pub sinks_not_flushed: Vec<String>,
    /// Whether everything finished before the deadline.
    pub within_deadline: bool,
}

/// A started relay.
pub struct RunningRelay {
    core: Arc<RelayCore>,
    endpoint: quinn::Endpoint,
    control: Option<Control>,
    supervisor: ActorRef<SupervisorMsg>,
    supervisor_join: Option<JoinHandle<()>>,
    sink_actors: Vec<(ActorRef<SinkMsg>, JoinHandle<()>)>,
    accept: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
    dev_cert_path: Option<PathBuf>,
    certificate: CertificateDer<'static>,
}

impl RunningRelay {
    /// The QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().map(Control::http_addr)
    }

    /// Path of the development certificate, when one is in use.
    pub fn dev_cert_path(&self) -> Option<&std::path::Path> {
        self.dev_cert_path.as_deref()
    }

    /// The served leaf certificate (agents in tests pin it).
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.certificate.clone()
    }

    /// Shared core (sessions, sinks, lifecycle).
    pub fn core(&self) -> &Arc<RelayCore> {
        &self.core
    }

    /// The control plane.
    pub fn control(&self) -> Option<&Control> {
        self.control.as_ref()
    }

    /// The sinks.
    pub fn sinks(&self) -> &[Arc<SinkHandle>] {
        self.core.fanout.sinks()
    }

    /// Live subscribers, when a `live` sink is configured.
    pub fn subscribers(&self) -> Option<&Arc<SubscriberRegistry>> {
        self.core.live.as_ref()
    }

    /// Resolves when a drain was requested (signal handler or admin API).
    pub async fn drain_requested(&self) {
        let mut rx = self.core.lifecycle.subscribe();
        loop {
            let state = *rx.borrow_and_update();
            if !matches!(state, LifecycleState::Starting | LifecycleState::Ready) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Graceful stop, bounded by `drain.deadline_ms`: readiness fails and new sessions are
    /// refused at once, agents get `Drain` and leave (the relay keeps acking what they send
    /// meanwhile), remaining connections close with `DRAINING`, sinks write everything queued
    /// and flush, routing keys are removed, actors stop.
    pub async fn drain(mut self, reason: &str) -> DrainReport {
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_millis(self.core.config.drain.deadline_ms);
        // Leave the last part of the deadline for flushing sinks and removing routing keys.
        let agents_deadline =
            start + Duration::from_millis(self.core.config.drain.deadline_ms * 6 / 10);
        self.core.lifecycle.begin_drain(reason);
        tracing::info!(%reason, "draining");
        while self.core.session_count() > 0 && tokio::time::Instant::now() < agents_deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sessions_left = self.core.session_count();
        self.endpoint.close(
            quinn::VarInt::from_u32(ErrorCode::Draining.close_code()),
            b"relay draining",
        );
        if let Some(a) = self.accept.take() {
            a.abort();
            let _ = a.await;
        }
        // Stop session actors: their readers finish the batch in hand, then end.
        let _ = self
            .supervisor
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        if let Some(j) = self.supervisor_join.take() {
            let _ = tokio::time::timeout_at(deadline, j).await;
        }
        let mut sinks_not_flushed = Vec::new();
        for sink in self.core.fanout.sinks() {
            match tokio::time::timeout_at(deadline, sink.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(sink = %sink.common.name, error = %e, "sink flush failed");
                    sinks_not_flushed.push(sink.common.name.clone());
                }
                Err(_) => {
                    tracing::error!(sink = %sink.common.name, queued = sink.queue.len(), "sink flush missed the drain deadline");
                    sinks_not_flushed.push(sink.common.name.clone());
                }
            }
        }
        for (actor, join) in self.sink_actors.drain(..) {
            actor.stop(None);
            let _ = join.await;
        }
        if let Some(live) = &self.core.live {
            live.shutdown(Duration::from_secs(1)).await;
        }
        if let Some(control) = self.control.take() {
            if let Err(e) = control.shutdown().await {
                tracing::warn!(error = %e, "control shutdown");
            }
        }
        let within_deadline = tokio::time::Instant::now() <= deadline;
        self.core.lifecycle.mark_stopped();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        DrainReport {
            sessions_left,
            sinks_not_flushed,
            within_deadline,
        }
    }
}

impl Drop for RunningRelay {
    fn drop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(ErrorCode::Internal.close_code()),
            b"relay stopped",
        );
        self.supervisor.stop(None);
        if let Some(live) = &self.core.live {
            live.abort_all();
        }
        for (actor, _) in &self.sink_actors {
            actor.stop(None);
        }
    }
}
