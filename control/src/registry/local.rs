//! What this relay knows about itself: turned into its [`RelayRecord`] and shown on the page.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use super::cpu::CpuMeter;
use super::{unix_ms, RelayRecord};
use crate::fleet::Fleet;
use crate::lifecycle::{Lifecycle, LifecycleState};

/// State of one sink as the relay reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkStatus {
    /// Sink name.
    pub name: String,
    /// Whether acks wait for it.
    pub required: bool,
    /// Whether its last write succeeded.
    pub healthy: bool,
    /// Batches queued.
    pub queue_depth: u64,
    /// Queue capacity in batches.
    pub queue_capacity: u64,
    /// Frames written.
    pub frames_written: u64,
    /// Frames dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Frames dropped because writes kept failing.
    pub dropped_write_failed: u64,
}

/// Something that reports the sinks (the relay's fan-out).
pub trait SinkReport: Send + Sync + 'static {
    /// Current state of every sink.
    fn sinks(&self) -> Vec<SinkStatus>;
}

/// Commands not yet final, as the page shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CommandsView {
    /// Where commands live (`postgres`: the whole fleet; `memory`: this relay); empty when no
    /// reporter is installed.
    pub storage: &'static str,
    /// Stored, not yet sent.
    pub queued: u64,
    /// Sent, not yet accepted.
    pub delivered: u64,
    /// Accepted, no result yet.
    pub running: u64,
    /// The most recent open commands as JSON objects (`id`, `agent_id`, `type`, `status`,
    /// `age_ms`, `relay_id`), newest first.
    pub recent: Vec<serde_json::Value>,
    /// Why the store could not be read, if it could not.
    pub error: Option<String>,
}

/// Something that reports the commands in flight (the command store, see
/// `commands::report::StoreReport`).
pub trait CommandsReport: Send + Sync + 'static {
    /// Commands not yet final (cheap: implementations cache).
    fn in_flight(&self) -> futures::future::BoxFuture<'_, CommandsView>;
}

/// Static facts about this relay, set by the relay at start.
#[derive(Debug, Clone, Default)]
pub struct RelayFacts {
    /// QUIC address agents use.
    pub address: String,
    /// Admin HTTP address.
    pub http_address: String,
    /// Region.
    pub region: Option<String>,
    /// Zone.
    pub zone: Option<String>,
    /// Soft session limit.
    pub soft_max_sessions: u64,
    /// Hard session limit.
    pub max_sessions: u64,
    /// Version.
    pub version: String,
}

/// This relay, seen from inside.
pub struct LocalRelay {
    /// Relay id.
    pub relay_id: Arc<str>,
    facts: RwLock<RelayFacts>,
    fleet: Arc<Fleet>,
    lifecycle: Lifecycle,
    sinks: RwLock<Option<Arc<dyn SinkReport>>>,
    commands: RwLock<Option<Arc<dyn CommandsReport>>>,
    cpu: Mutex<(CpuMeter, f64)>,
}

impl std::fmt::Debug for LocalRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRelay")
            .field("relay_id", &self.relay_id)
            .finish()
    }
}

impl LocalRelay {
    /// A relay with default facts (the relay sets them with [`set_facts`](Self::set_facts)).
    pub fn new(relay_id: Arc<str>, fleet: Arc<Fleet>, lifecycle: Lifecycle) -> Self {
        LocalRelay {
            relay_id,
            facts: RwLock::new(RelayFacts {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..RelayFacts::default()
            }),
            fleet,
            lifecycle,
            sinks: RwLock::new(None),
            commands: RwLock::new(None),
            cpu: Mutex::new((CpuMeter::new(), 0.0)),
        }
    }

    /// The lifecycle latch.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// Sets the static facts.
    pub fn set_facts(&self, facts: RelayFacts) {
        *self.facts.write() = facts;
    }

    /// Installs the sink reporter.
    pub fn set_sink_report(&self, report: Arc<dyn SinkReport>) {
        *self.sinks.write() = Some(report);
    }

    /// Current sinks (empty before the relay installed its reporter).
    pub fn sinks(&self) -> Vec<SinkStatus> {
        let r = self.sinks.read().clone();
        r.map(|r| r.sinks()).unwrap_or_default()
    }

    /// Installs the commands reporter ([`crate::Control::start`] installs the command store's).
    pub fn set_commands_report(&self, report: Arc<dyn CommandsReport>) {
        *self.commands.write() = Some(report);
    }

    /// Commands in flight (empty without a reporter).
    pub async fn commands(&self) -> CommandsView {
        let r = self.commands.read().clone();
        match r {
            Some(r) => r.in_flight().await,
            None => CommandsView::default(),
        }
    }

    /// Samples CPU (call periodically; the page and the record read the last sample).
    pub fn sample_cpu(&self, now: Instant) -> f64 {
        let mut g = self.cpu.lock();
        g.1 = g.0.sample(now);
        g.1
    }

    /// The record to publish now.
    pub fn record(&self) -> RelayRecord {
        let f = self.facts.read().clone();
        let state = self.lifecycle.state();
        RelayRecord {
            relay_id: self.relay_id.to_string(),
            address: f.address,
            http_address: f.http_address,
            region: f.region,
            zone: f.zone,
            sessions: self.fleet.len() as u64,
            soft_max_sessions: f.soft_max_sessions,
            max_sessions: f.max_sessions,
            cpu_percent: (self.cpu.lock().1 * 10.0).round() / 10.0,
            state: state.as_str().to_owned(),
            draining: matches!(state, LifecycleState::Draining | LifecycleState::Stopped),
            version: f.version,
            updated_unix_ms: unix_ms(),
        }
    }
}
