//! Command downlink, relay side: which local session holds which drone, and the dispatcher that
//! turns the queue's notices (from every relay, through PostgreSQL `LISTEN/NOTIFY`) into wake-ups
//! of the session holding the drone. The per-session part is `session::commands`.

use std::collections::HashMap;
use std::sync::Arc;

use contrail_control::commands::{CommandId, CommandService, Notice};
use contrail_protocol::SessionId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

/// Wake-ups a session's command task gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Look for pending commands.
    Poll,
    /// Tell the agent to stop this command.
    Cancel(CommandId),
}

/// Wake-ups queued per session (more are dropped: a poll covers them).
pub(crate) const WAKE_QUEUE: usize = 16;

/// Sessions with the `commands` capability on this relay, by agent id.
pub struct CommandRouter {
    svc: Arc<CommandService>,
    sessions: Mutex<HashMap<String, (SessionId, mpsc::Sender<Wake>)>>,
}

impl CommandRouter {
    /// A router over the relay's command queue.
    pub fn new(svc: Arc<CommandService>) -> Self {
        CommandRouter {
            svc,
            sessions: Mutex::default(),
        }
    }

    /// The queue.
    pub fn service(&self) -> &Arc<CommandService> {
        &self.svc
    }

    /// A session took the drone (replacing an older session of it).
    pub(crate) fn attach(&self, agent: &str, session: SessionId) -> mpsc::Receiver<Wake> {
        let (tx, rx) = mpsc::channel(WAKE_QUEUE);
        self.sessions.lock().insert(agent.to_owned(), (session, tx));
        rx
    }

    /// The session ended (only removes the entry if it is still this session's).
    pub(crate) fn detach(&self, agent: &str, session: SessionId) {
        let mut s = self.sessions.lock();
        if s.get(agent).is_some_and(|(sid, _)| *sid == session) {
            s.remove(agent);
        }
    }

    fn wake(&self, agent: &str, w: Wake) {
        let tx = self.sessions.lock().get(agent).map(|(_, tx)| tx.clone());
        if let Some(tx) = tx {
            if tx.try_send(w).is_err() {
                metrics::counter!("contrail_limit_hits_total", "limit" => "command_wake_queue")
                    .increment(1);
            }
        }
    }

    fn wake_all(&self) {
        let all: Vec<_> = self
            .sessions
            .lock()
            .values()
            .map(|(_, tx)| tx.clone())
            .collect();
        for tx in all {
            let _ = tx.try_send(Wake::Poll);
        }
    }

    /// Local sessions that take commands.
    pub fn sessions(&self) -> usize {
        self.sessions.lock().len()
    }
}

/// Routes the queue's notices to local sessions until the queue closes. Owned by the running
/// relay (aborted when it stops).
pub(crate) async fn dispatch(router: Arc<CommandRouter>) {
    let mut rx = router.svc.subscribe();
    loop {
        match rx.recv().await {
            Ok(Notice::Submitted(drone)) => router.wake(&drone, Wake::Poll),
            Ok(Notice::Cancelled(drone, id)) => router.wake(&drone, Wake::Cancel(id)),
            Ok(Notice::Resync) => router.wake_all(),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "command notices lagged; polling every session");
                router.wake_all();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// `[commands]` of the relay configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsSection {
    /// PostgreSQL URL (`CONTRAIL_DATABASE_URL`); unset: commands in memory, lost on restart.
    pub database_url: Option<String>,
    /// Pooled database connections.
    pub pool_size: usize,
    /// Bound on connecting and each query, ms.
    pub db_timeout_ms: u64,
    /// Largest payload, JSON bytes.
    pub max_payload_bytes: usize,
    /// Deadline when the submit gives none, s.
    pub default_deadline_secs: u64,
    /// Furthest deadline accepted, s.
    pub max_deadline_secs: u64,
    /// Open (queued, delivered or running) commands per drone.
    pub max_open_per_drone: usize,
    /// Commands kept by the in-memory store.
    pub memory_capacity: usize,
    /// Output bytes stored per command.
    pub max_output_bytes: u64,
    /// Output chunks stored per command.
    pub max_output_chunks: u64,
    /// Largest output chunk an agent may send.
    pub max_chunk_bytes: usize,
    /// Deadline sweep period, ms.
    pub sweep_interval_ms: u64,
    /// API tokens with their roles.
    pub tokens: Vec<contrail_control::commands::ApiToken>,
}

impl Default for CommandsSection {
    fn default() -> Self {
        let d = contrail_control::commands::CommandsConfig::default();
        CommandsSection {
            database_url: None,
            pool_size: d.pool_size,
            db_timeout_ms: d.db_timeout.as_millis() as u64,
            max_payload_bytes: d.max_payload_bytes,
            default_deadline_secs: d.default_deadline.as_secs(),
            max_deadline_secs: d.max_deadline.as_secs(),
            max_open_per_drone: d.max_open_per_drone,
            memory_capacity: d.memory_capacity,
            max_output_bytes: d.max_output_bytes,
            max_output_chunks: d.max_output_chunks,
            max_chunk_bytes: d.max_chunk_bytes,
            sweep_interval_ms: d.sweep_interval.as_millis() as u64,
            tokens: Vec::new(),
        }
    }
}

impl CommandsSection {
    /// The control plane's settings.
    pub fn to_control(&self) -> contrail_control::commands::CommandsConfig {
        use std::time::Duration;
        contrail_control::commands::CommandsConfig {
            database_url: self.database_url.clone(),
            pool_size: self.pool_size,
            db_timeout: Duration::from_millis(self.db_timeout_ms),
            tokens: self.tokens.clone(),
            max_payload_bytes: self.max_payload_bytes,
            default_deadline: Duration::from_secs(self.default_deadline_secs),
            max_deadline: Duration::from_secs(self.max_deadline_secs),
            max_open_per_drone: self.max_open_per_drone,
            memory_capacity: self.memory_capacity,
            max_output_bytes: self.max_output_bytes,
            max_chunk_bytes: self.max_chunk_bytes,
            max_output_chunks: self.max_output_chunks,
            sweep_interval: Duration::from_millis(self.sweep_interval_ms),
            ..contrail_control::commands::CommandsConfig::default()
        }
    }

    /// Checks the section; the message names the field.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.pool_size == 0 || self.db_timeout_ms == 0 || self.sweep_interval_ms == 0 {
            return Err("commands: pool_size, db_timeout_ms and sweep_interval_ms must be > 0");
        }
        if self.max_open_per_drone == 0 || self.memory_capacity == 0 || self.max_chunk_bytes == 0 {
            return Err(
                "commands: max_open_per_drone, memory_capacity and max_chunk_bytes must be > 0",
            );
        }
        if self.default_deadline_secs == 0 || self.default_deadline_secs > self.max_deadline_secs {
            return Err("commands: default_deadline_secs must be 1..=max_deadline_secs");
        }
        if self
            .tokens
            .iter()
            .any(|t| t.token.len() < 8 || t.name.is_empty())
        {
            return Err("commands.tokens: every token needs a name and at least 8 characters");
        }
        if self.database_url.as_deref().is_some_and(str::is_empty) {
            return Err("commands.database_url: must not be empty (omit it for memory)");
        }
        Ok(())
    }
}
