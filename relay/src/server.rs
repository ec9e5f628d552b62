//! The relay: QUIC endpoint, accept loop, session supervisor, sink actors, control plane, and
//! the graceful drain that stops them in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use contrail_control::metric_names as m;
use contrail_control::{Control, ControlConfig, LifecycleState};
use contrail_protocol::ErrorCode;
use ractor::ActorRef;
use rustls_pki_types::CertificateDer;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::core::{Hooks, RelayCore};
use crate::fanout::FanOut;
use crate::latency::Latency;
use crate::root::{RelayChild, RelayRoot, RootArgs, RootMsg};
use crate::session::context::Ingest;
use crate::sink::live::SubscriberRegistry;
use crate::sink::{registry, SinkHandle, SinkSpec};
use crate::tls;

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
    /// The relay root did not hand over the session supervisor.
    #[error("the relay root did not start")]
    Root,
    /// The MAVLink UDP endpoint could not start.
    #[error(transparent)]
    MavlinkUdp(#[from] crate::mavlink::udp::UdpError),
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
            commands: config.commands.to_control(),
            usage: config.usage.to_control(),
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
        let mut sinks = Vec::new();
        for spec in specs {
            let flag = control
                .health()
                .register(&format!("sink:{}", spec.common.name), spec.common.required);
            let handle = Arc::new(SinkHandle::new(spec.common, latency.clone(), Some(flag)));
            sinks.push((handle, spec.factory));
        }
        let handles: Vec<Arc<SinkHandle>> = sinks.iter().map(|(h, _)| h.clone()).collect();
        let handles_for_report = handles.clone();
        let auth = crate::auth::Authenticator::new(&config.auth, config.auth_mode()?)?;
        let downlink = Arc::new(crate::downlink::CommandRouter::new(
            control.commands().clone(),
        ));
        let placement = crate::placement::RelayPlacement::new(
            control.fleet_reader().clone(),
            config.limits.soft_max_sessions(),
            config.region.clone(),
        );
        let mut core = RelayCore::new(
            config,
            relay_id,
            auth,
            &control,
            latency,
            self.hooks.clone(),
            placement,
        );
        core.downlink = Some(downlink.clone());
        let core = Arc::new(core);
        let (root, root_join) = ractor::Actor::spawn(
            None,
            RelayRoot,
            RootArgs {
                sinks,
                fail_claim: self.hooks.fail_claim,
                lifecycle: control.lifecycle().clone(),
            },
        )
        .await?;
        // Until the relay is running, an error below stops the tree again.
        let root_guard = StopOnDrop(Some(root.clone()));
        let supervisor = match root.call(RootMsg::Supervisor, None).await {
            Ok(ractor::rpc::CallResult::Success(slot)) => slot,
            _ => return Err(RelayError::Root),
        };
        let ingest = Arc::new(Ingest {
            core: core.clone(),
            fanout: FanOut::new(handles),
            supervisor,
        });

        let alpns: &[&[u8]] = if live.is_some() {
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
            let cfg = &ingest.core.config;
            c.local().set_facts(contrail_control::registry::RelayFacts {
                address: core
                    .config
                    .public_address
                    .clone()
                    .unwrap_or_else(|| local_addr.to_string()),
                http_address: c.http_addr().to_string(),
                region: cfg.region.clone(),
                zone: cfg.zone.clone(),
                soft_max_sessions: cfg.limits.soft_max_sessions() as u64,
                max_sessions: cfg.limits.max_sessions as u64,
                version: env!("CARGO_PKG_VERSION").to_owned(),
            });
            c.local()
                .set_sink_report(Arc::new(crate::sink::worker::SinkReporter(
                    handles_for_report,
                )));
        }
        let accept = tokio::spawn(accept_loop(ingest.clone(), endpoint.clone(), live.clone()));
        let mavlink_udp = match ingest.core.config.mavlink.udp_listen {
            Some(addr) => Some(crate::mavlink::udp::spawn(ingest.clone(), addr)?),
            None => None,
        };
        let downlink_task = tokio::spawn(crate::downlink::dispatch(downlink));
        core.lifecycle.mark_ready();
        root_guard.disarm();
        Ok(RunningRelay {
            mavlink_udp,
            downlink_task: Some(downlink_task),
            core,
            ingest,
            live,
            endpoint,
            control: Some(control),
            root,
            root_join: Some(root_join),
            accept: Some(accept),
            local_addr,
            dev_cert_path: identity.dev_cert_path,
            certificate: identity.chain[0].clone(),
        })
    }
}

/// Stops the relay root when dropped (a start that fails half-way), unless disarmed.
struct StopOnDrop(Option<ActorRef<RootMsg>>);

impl StopOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(root) = self.0.take() {
            root.stop(None);
        }
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

/// Accepts connections and routes each by its ALPN once the TLS handshake has told it: agents
/// (`contrail/1`) get a session actor, live subscribers (`contrail-sub/1`) go to the live
/// sink's registry. Both count in `max_pending_handshakes` until set up, and both must be set
/// up within `limits.handshake_timeout_ms` of the connection attempt.
async fn accept_loop(
    ingest: Arc<Ingest>,
    endpoint: quinn::Endpoint,
    live: Option<Arc<SubscriberRegistry>>,
) {
    let core = ingest.core.clone();
    // Connections are set up concurrently: awaiting each handshake or actor start here would
    // serialize connection setup (measured: ~1k connects/s with the relay mostly idle). The set
    // owns the starts in flight (at most `max_pending_handshakes`) and aborts them if the loop
    // stops.
    let mut starting = tokio::task::JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
            Some(_) = starting.join_next(), if !starting.is_empty() => continue,
        };
        if !core.try_begin_handshake() {
            incoming.refuse();
            continue;
        }
        let deadline = tokio::time::Instant::now() + core.config.limits.handshake_timeout();
        starting.spawn(route(ingest.clone(), live.clone(), incoming, deadline));
    }
}

/// What the TLS handshake said a connection is.
enum Peer {
    Agent(quinn::Connecting),
    Subscriber(quinn::Connecting),
}

/// Starts the TLS handshake of `incoming` and waits (until `deadline`) for its ALPN.
async fn alpn(
    core: &RelayCore,
    incoming: quinn::Incoming,
    deadline: tokio::time::Instant,
) -> Option<Peer> {
    let mut connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "incoming connection failed");
            return None;
        }
    };
    match tokio::time::timeout_at(deadline, connecting.handshake_data()).await {
        Ok(Ok(data)) => {
            let subscriber = data
                .downcast::<quinn::crypto::rustls::HandshakeData>()
                .ok()
                .and_then(|d| d.protocol)
                .is_some_and(|p| p == contrail_protocol::ALPN_SUBSCRIBER);
            Some(if subscriber {
                Peer::Subscriber(connecting)
            } else {
                Peer::Agent(connecting)
            })
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "handshake failed");
            metrics::counter!(m::HANDSHAKE_FAILURES).increment(1);
            None
        }
        Err(_) => {
            handshake_timed_out(core);
            None
        }
    }
}

fn handshake_timed_out(core: &RelayCore) {
    metrics::counter!(m::LIMIT_HITS, "limit" => "handshake_timeout").increment(1);
    core.count_rejection(ErrorCode::Timeout);
}

/// Routes one connection attempt by ALPN; gives its `max_pending_handshakes` slot back when
/// the connection is set up (an agent's session actor does so once registered).
async fn route(
    ingest: Arc<Ingest>,
    live: Option<Arc<SubscriberRegistry>>,
    incoming: quinn::Incoming,
    deadline: tokio::time::Instant,
) {
    let core = &ingest.core;
    match alpn(core, incoming, deadline).await {
        Some(Peer::Agent(connecting)) => {
            if let Err(e) = crate::session::actor::spawn(ingest.clone(), connecting, deadline).await
            {
                core.handshake_done();
                tracing::error!(error = %e, "could not spawn a session actor");
            }
        }
        Some(Peer::Subscriber(connecting)) => {
            let conn = tokio::time::timeout_at(deadline, connecting).await;
            core.handshake_done();
            match conn {
                Ok(Ok(conn)) => hand_over(core, live.as_ref(), conn),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "handshake failed");
                    metrics::counter!(m::HANDSHAKE_FAILURES).increment(1);
                }
                Err(_) => handshake_timed_out(core),
            }
        }
        None => core.handshake_done(),
    }
}

/// Hands a subscriber connection to the live sink's registry. Refused with `DRAINING` while
/// the relay drains, and with `PROTOCOL_VIOLATION` when no live sink is configured.
fn hand_over(core: &RelayCore, live: Option<&Arc<SubscriberRegistry>>, conn: quinn::Connection) {
    let refuse = |code: ErrorCode, reason: &str| {
        core.count_rejection(code);
        conn.close(
            quinn::VarInt::from_u32(code.close_code()),
            reason.as_bytes(),
        );
    };
    match live {
        _ if core.is_draining() => refuse(ErrorCode::Draining, "relay is draining"),
        Some(live) => live.accept(conn),
        None => refuse(ErrorCode::ProtocolViolation, "no live sink on this relay"),
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
    ingest: Arc<Ingest>,
    live: Option<Arc<SubscriberRegistry>>,
    endpoint: quinn::Endpoint,
    control: Option<Control>,
    root: ActorRef<RootMsg>,
    root_join: Option<JoinHandle<()>>,
    accept: Option<JoinHandle<()>>,
    mavlink_udp: Option<crate::mavlink::udp::UdpHandle>,
    downlink_task: Option<JoinHandle<()>>,
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

    /// The address of the MAVLink UDP endpoint, when `mavlink.udp_listen` is set.
    pub fn mavlink_udp_addr(&self) -> Option<SocketAddr> {
        self.mavlink_udp
            .as_ref()
            .map(crate::mavlink::udp::UdpHandle::local_addr)
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
        self.ingest.fanout.sinks()
    }

    /// Live subscribers, when a `live` sink is configured.
    pub fn subscribers(&self) -> Option<&Arc<SubscriberRegistry>> {
        self.live.as_ref()
    }

    /// How often the relay root restarted each of its children after a failure.
    pub async fn restarts(&self) -> HashMap<RelayChild, u32> {
        match self.root.call(RootMsg::Restarts, None).await {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            _ => HashMap::new(),
        }
    }

    /// Makes a child of the relay root fail (supervision tests).
    #[doc(hidden)]
    pub fn crash_child(&self, child: RelayChild) {
        let _ = self.root.cast(RootMsg::Crash(child));
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
        if let Some(u) = self.mavlink_udp.take() {
            u.stop().await;
        }
        // Stop session actors: their readers finish the batch in hand, then end.
        let _ = tokio::time::timeout_at(
            deadline,
            self.ingest
                .supervisor
                .get()
                .stop_and_wait(None, Some(Duration::from_secs(5))),
        )
        .await;
        let mut sinks_not_flushed = Vec::new();
        for sink in self.ingest.fanout.sinks() {
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
        // The root stops what is left of its tree in order (sessions, then each sink actor:
        // its queue closes and its worker stops), then itself.
        self.root.stop(None);
        if let Some(j) = self.root_join.take() {
            let _ = j.await;
        }
        if let Some(live) = &self.live {
            live.shutdown(Duration::from_secs(1)).await;
        }
        if let Some(t) = self.downlink_task.take() {
            t.abort();
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
        if let Some(t) = self.downlink_task.take() {
            t.abort();
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(ErrorCode::Internal.close_code()),
            b"relay stopped",
        );
        self.ingest.supervisor.get().stop(None);
        if let Some(live) = &self.live {
            live.abort_all();
        }
        self.root.stop(None);
    }
}
