//! Contrail control plane: the actor tree that runs a relay's lifecycle, publishes which relay
//! holds which drone in Redis, and serves SREs over HTTP. See `control/README.md`.
//!
//! The relay starts it with [`Control::start`], reports sessions through [`ControlEvents`],
//! bumps per-session counters in [`fleet::SessionStats`], records latencies in
//! [`latency::LatencyRecorder`], watches [`lifecycle::Lifecycle`] for drain, and ends with
//! [`Control::shutdown`].

pub mod commands;
pub mod db;
pub mod error;
pub mod events;
pub mod fleet;
pub mod grpc;
pub mod health;
pub mod http;
pub mod latency;
pub mod lifecycle;
pub mod metric_names;
pub mod placement;
pub mod registry;
pub mod root;
pub mod routing;
pub mod usage;
pub mod watchers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorRef};

pub use error::{ControlError, RoutingError};
pub use events::ControlEvents;
pub use fleet::{DroneIdentity, Fleet, SessionInfo, SessionStats};
pub use health::{Health, HealthFlag};
pub use latency::{Hist, LatencyRecorder};
pub use lifecycle::{Lifecycle, LifecycleState};
pub use root::{ChildKind, ShutdownReport};
pub use routing::RoutingConfig;

use http::{AppState, HttpArgs};
use root::{ControlRoot, RootArgs, RootMsg};
use routing::publisher::PublisherArgs;
use routing::RoutingQueue;
use watchers::{AccountantArgs, LifecycleArgs};

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Address the HTTP listener was bound to (informational: the caller binds it).
    pub http_listen: SocketAddr,
    /// Bearer token of `POST /v1/admin/drain`; `None` disables the endpoint.
    pub admin_token: Option<String>,
    /// Token the fleet page and the read API (`/`, `/v1/…` GETs) require (as a bearer token or
    /// the page's cookie); the admin token is accepted too. `None`: open to anyone who reaches
    /// the admin port.
    pub viewer_token: Option<String>,
    /// Fleet-wide relay registry (`relay:{id}` in the routing Redis).
    pub registry: registry::RegistryConfig,
    /// Period of the fleet page's live updates (SSE), at least 250 ms.
    pub page_interval: Duration,
    /// Hourly usage buckets (in PostgreSQL when `commands.database_url` is set, else in memory).
    pub usage: usage::UsageConfig,
    /// Redis routing.
    pub routing: RoutingConfig,
    /// Bound on removing routing keys during shutdown.
    pub drain_deadline: Duration,
    /// Usage entries kept for disconnected agents (oldest evicted).
    pub max_disconnected_usage: usize,
    /// Period of the gauge exporters and recorder upkeep.
    pub export_period: Duration,
    /// Command downlink (queue store, API tokens, limits).
    pub commands: commands::CommandsConfig,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 2112)),
            admin_token: None,
            viewer_token: None,
            registry: registry::RegistryConfig::default(),
            page_interval: Duration::from_secs(1),
            usage: usage::UsageConfig::default(),
            routing: RoutingConfig::default(),
            drain_deadline: Duration::from_secs(10),
            max_disconnected_usage: fleet::DEFAULT_MAX_DISCONNECTED_USAGE,
            export_period: Duration::from_secs(1),
            commands: commands::CommandsConfig::default(),
        }
    }
}

impl ControlConfig {
    /// Checks the settings; a pure function for config validation tests.
    pub fn validate(&self) -> Result<(), ControlError> {
        let bad = |field, reason| Err(ControlError::Config { field, reason });
        if self.admin_token.as_deref().is_some_and(str::is_empty) {
            return bad(
                "admin_token",
                "must not be empty (omit it to disable the drain endpoint)",
            );
        }
        if self.viewer_token.as_deref().is_some_and(str::is_empty) {
            return bad(
                "viewer_token",
                "must not be empty (omit it to leave the page open)",
            );
        }
        if self.page_interval < Duration::from_millis(250) {
            return bad("page_interval", "must be at least 250 ms");
        }
        let u = &self.usage;
        if u.period.is_zero() || u.max_buckets == 0 || u.max_pending == 0 || u.max_tracked == 0 {
            return bad(
                "usage",
                "period, max_buckets, max_pending and max_tracked must be > 0",
            );
        }
        let g = &self.registry;
        if g.refresh.is_zero() || g.refresh > g.ttl / 2 || g.scan_chunk == 0 || g.max_scan_keys == 0
        {
            return bad(
                "registry",
                "refresh must be in (0, ttl/2]; scan_chunk and max_scan_keys > 0",
            );
        }
        let r = &self.routing;
        if r.ttl < Duration::from_secs(2) {
            return bad(
                "routing.ttl",
                "must be at least 2 s (whole seconds, refreshed every ttl/2)",
            );
        }
        if r.max_batch == 0 || r.queue_capacity == 0 || r.refresh_chunk == 0 {
            return bad(
                "routing",
                "max_batch, queue_capacity and refresh_chunk must be > 0",
            );
        }
        if r.relay_id.is_empty() {
            return bad("routing.relay_id", "must not be empty");
        }
        if r.addr.is_some() {
            routing::store_connection_info(r)?;
        }
        if self.export_period.is_zero() || r.flush_interval.is_zero() {
            return bad("export_period/flush_interval", "must be > 0");
        }
        Ok(())
    }
}

/// `RELAY_ID` if given and non-empty, else the hostname, else `relay`. The caller reads the
/// environment and passes the value, so tests never touch env vars.
pub fn relay_id_from_env_or_host(explicit: Option<&str>) -> String {
    if let Some(id) = explicit.map(str::trim).filter(|s| !s.is_empty()) {
        return id.to_owned();
    }
    hostname::get()
        .ok()
        .map(|h| h.to_string_lossy().trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".to_owned())
}

/// Installs the global Prometheus recorder (the binary's job, once) and returns its handle for
/// [`Control::start`].
pub fn install_metrics_recorder() -> Result<PrometheusHandle, ControlError> {
    // The command latencies are histograms with buckets (aggregatable across relays).
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Prefix("contrail_command_".into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ],
        )
        .map_err(|e| ControlError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| ControlError::Metrics(e.to_string()))
}

/// A running control tree and the handles the relay uses.
pub struct Control {
    root: ActorRef<RootMsg>,
    root_join: Option<JoinHandle<()>>,
    lifecycle: Lifecycle,
    health: Health,
    fleet: Arc<Fleet>,
    latency: LatencyRecorder,
    events: ControlEvents,
    relay_id: Arc<str>,
    http_addr: SocketAddr,
    commands: Arc<commands::CommandService>,
    local: Arc<registry::LocalRelay>,
    fleet_reader: Arc<registry::FleetReader>,
    registry_publisher: Option<registry::publisher::RegistryPublisher>,
    grpc: Option<grpc::GrpcServer>,
    usage_sampler: Option<usage::UsageSampler>,
    viewer_token: Option<Arc<str>>,
    admin_token: Option<Arc<str>>,
}

impl Control {
    /// Starts the tree serving HTTP on `http_listener` (already bound, e.g. to port 0 in tests).
    /// `metrics` is the handle from [`install_metrics_recorder`]; without it `/metrics` serves only
    /// the latency summaries.
    pub async fn start(
        config: ControlConfig,
        http_listener: tokio::net::TcpListener,
        metrics: Option<PrometheusHandle>,
    ) -> Result<Control, ControlError> {
        config.validate()?;
        let http_addr = http_listener.local_addr().map_err(ControlError::Listener)?;
        let std_listener = http_listener.into_std().map_err(ControlError::Listener)?;
        let lifecycle = Lifecycle::new();
        let health = Health::default();
        let fleet = Arc::new(Fleet::new(config.max_disconnected_usage));
        let latency = LatencyRecorder::new();
        let relay_id: Arc<str> = Arc::from(config.routing.relay_id.as_str());
        let routing = config.routing.addr.is_some().then(|| PublisherArgs {
            config: config.routing.clone(),
            fleet: fleet.clone(),
            queue: Arc::new(RoutingQueue::new(config.routing.queue_capacity)),
            health: health.register("redis", false),
        });
        let command_svc =
            commands::CommandService::start(config.commands.clone(), relay_id.clone(), &health)
                .await?;
        let command_api = http::commands::CommandApi {
            svc: command_svc.clone(),
            fleet: fleet.clone(),
            hint: config
                .routing
                .addr
                .is_some()
                .then(|| Arc::new(commands::hint::RouteHint::new(config.routing.clone()))),
        };
        let events = ControlEvents::new(fleet.clone(), routing.as_ref().map(|r| r.queue.clone()));
        let local = Arc::new(registry::LocalRelay::new(
            relay_id.clone(),
            fleet.clone(),
            lifecycle.clone(),
        ));
        local.set_commands_report(Arc::new(commands::report::StoreReport::new(
            command_svc.clone(),
        )));
        let redis = config
            .routing
            .addr
            .is_some()
            .then(|| config.routing.clone());
        let mut reg_cfg = config.registry.clone();
        reg_cfg.ttl = config.routing.ttl;
        let fleet_reader = Arc::new(registry::FleetReader::new(
            local.clone(),
            redis.clone(),
            reg_cfg.clone(),
        ));
        let registry_publisher = Some(registry::publisher::RegistryPublisher::spawn(
            local.clone(),
            redis,
            reg_cfg,
        ));
        // After the command store: its start ran the migrations (0002_usage included).
        let usage = Arc::new(match &config.commands.database_url {
            Some(url) => usage::UsageLedger::postgres(
                config.usage.clone(),
                usage::postgres::PgUsage::new(
                    url,
                    config.commands.db_timeout,
                    &relay_id,
                    config.usage.max_pending,
                ),
            ),
            None => usage::UsageLedger::new(config.usage.clone()),
        });
        let usage_sampler = Some(usage::UsageSampler::spawn(usage.clone(), fleet.clone()));
        let app = AppState {
            fleet: fleet.clone(),
            lifecycle: lifecycle.clone(),
            health: health.clone(),
            latency: latency.clone(),
            relay_id: relay_id.clone(),
            admin_token: config.admin_token.as_deref().map(Arc::from),
            viewer_token: config.viewer_token.as_deref().map(Arc::from),
            metrics: metrics.clone(),
            local: local.clone(),
            fleet_reader: fleet_reader.clone(),
            page_interval: config.page_interval,
            page_streams: Arc::default(),
            usage,
        };
        let args = RootArgs {
            lifecycle: lifecycle.clone(),
            lifecycle_args: LifecycleArgs {
                lifecycle: lifecycle.clone(),
                health: health.clone(),
                period: config.export_period,
            },
            routing,
            accountant: AccountantArgs {
                fleet: fleet.clone(),
                metrics,
                period: config.export_period,
            },
            http: HttpArgs {
                listener: Arc::new(std_listener),
                state: app,
                commands: Some(command_api),
            },
            drain_deadline: config.drain_deadline,
        };
        let (root, join) = Actor::spawn(None, ControlRoot, args).await?;
        Ok(Control {
            root,
            root_join: Some(join),
            lifecycle,
            health,
            fleet,
            latency,
            events,
            relay_id,
            http_addr,
            commands: command_svc,
            local,
            fleet_reader,
            registry_publisher,
            grpc: None,
            usage_sampler,
            viewer_token: config.viewer_token.as_deref().map(Arc::from),
            admin_token: config.admin_token.as_deref().map(Arc::from),
        })
    }

    /// Serves seed 003's gRPC RelayControl on `listener` (already bound), with the HTTP API's
    /// auth; stopped by [`shutdown`](Self::shutdown).
    pub fn serve_grpc(&mut self, listener: tokio::net::TcpListener) {
        let svc = grpc::RelayControlService::new(
            self.fleet.clone(),
            self.fleet_reader.clone(),
            self.relay_id.clone(),
        );
        self.grpc = Some(grpc::GrpcServer::spawn(
            listener,
            svc,
            self.viewer_token.clone(),
            self.admin_token.clone(),
        ));
    }

    /// This relay as the registry and the page see it: set its facts and sink reporter here.
    pub fn local(&self) -> &Arc<registry::LocalRelay> {
        &self.local
    }

    /// The cached fleet-wide view (every relay and drone when Redis is configured).
    pub fn fleet_reader(&self) -> &Arc<registry::FleetReader> {
        &self.fleet_reader
    }

    /// Lifecycle latch: `mark_ready`, `begin_drain`, `subscribe`.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// Health components feeding `/readyz`.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Live sessions and usage.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// Latency histograms.
    pub fn latency(&self) -> &LatencyRecorder {
        &self.latency
    }

    /// A sender of session up/down events (cheap to clone, never blocks).
    pub fn events(&self) -> ControlEvents {
        self.events.clone()
    }

    /// This relay's id (`relay_id` in routing values and `Registered`).
    pub fn relay_id(&self) -> &str {
        &self.relay_id
    }

    /// The command downlink queue.
    pub fn commands(&self) -> &Arc<commands::CommandService> {
        &self.commands
    }

    /// Address the HTTP server listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// How often each child has been restarted by the root.
    pub async fn restart_counts(&self) -> HashMap<ChildKind, u32> {
        match self
            .root
            .call(RootMsg::Restarts, Some(Duration::from_secs(5)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(m)) => m,
            _ => HashMap::new(),
        }
    }

    /// Makes a child fail so its restart can be observed (tests only).
    #[doc(hidden)]
    pub fn inject_child_failure(&self, kind: ChildKind) {
        let _ = self.root.send_message(RootMsg::Crash(kind));
    }

    /// Ordered shutdown: drain (if not already), remove routing keys of live sessions (bounded by
    /// `drain_deadline`), stop the routing publisher, accountant and lifecycle actor, mark
    /// `Stopped`, and stop the HTTP server last so `/readyz` answers 503 throughout.
    pub async fn shutdown(mut self) -> Result<ShutdownReport, ControlError> {
        self.lifecycle.begin_drain("shutdown");
        if let Some(g) = self.grpc.take() {
            g.stop().await;
        }
        let res = self.root.call(RootMsg::Shutdown, None).await;
        self.root.stop(None);
        if let Some(j) = self.root_join.take() {
            let _ = j.await;
        }
        if let Some(p) = self.registry_publisher.take() {
            p.stop().await;
        }
        if let Some(u) = self.usage_sampler.take() {
            u.stop().await;
        }
        match res {
            Ok(ractor::rpc::CallResult::Success(r)) => Ok(r),
            _ => Err(ControlError::RootGone),
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if self.root_join.is_some() {
            // Not shut down explicitly: stop the tree (root post_stop stops the children).
            self.root.stop(Some("control dropped".into()));
        }
    }
}
