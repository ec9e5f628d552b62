//! The command downlink's queue: a [`CommandService`] over a PostgreSQL or in-memory store,
//! with the notices relays act on, the deadline sweep, metrics and the audit log.
//! Design and failure cases: `docs/downlink.md`.

pub mod hint;
pub mod memory;
pub mod model;
pub mod postgres;
pub mod report;

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use model::{
    ApiToken, CommandId, CommandRecord, CommandStatus, CommandsConfig, NewCommand, Notice,
    OutputChunk, OutputStored, Role, Stream,
};

use crate::db::DbError;
use crate::health::Health;
use memory::MemoryStore;
use postgres::PgStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The same `Idempotency-Key` was used with a different body.
    #[error("idempotency key already used with a different request")]
    IdempotencyConflict,
    /// The drone has `max_open_per_drone` open commands.
    #[error("too many open commands for this drone")]
    DroneQueueFull,
    /// The in-memory store is full of open commands.
    #[error("command store is full")]
    Full,
}

/// A submit's outcome.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The command (new, or the earlier one with the same idempotency key and body).
    pub record: CommandRecord,
    /// False when an idempotent retry returned an existing command.
    pub created: bool,
}

/// A cancel's outcome.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// No such command.
    NotFound,
    /// Already final: nothing changed.
    AlreadyFinal(CommandRecord),
    /// Cancelled now.
    Cancelled {
        /// The command after the change.
        record: CommandRecord,
        /// Its state before.
        was: CommandStatus,
    },
}

/// Commands not yet final: how many per status, and the most recent.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    /// Stored, not yet sent.
    pub queued: u64,
    /// Sent, not yet accepted.
    pub delivered: u64,
    /// Accepted by the agent, no result yet.
    pub running: u64,
    /// The most recently submitted open commands, newest first.
    pub recent: Vec<CommandRecord>,
}

impl InFlight {
    fn count(&mut self, status: &str, n: u64) {
        match status {
            "queued" => self.queued += n,
            "delivered" => self.delivered += n,
            "running" => self.running += n,
            _ => {}
        }
    }
}

/// Where commands are kept.
pub enum CommandStore {
    /// PostgreSQL: durable, shared by every relay.
    Postgres(PgStore),
    /// This process only, lost on restart.
    Memory(Box<MemoryStore>),
}

/// Label for a command type in metrics: known types by name, anything else `other` (types are
/// free-form; labels must stay bounded).
pub fn type_label(kind: &str) -> &'static str {
    match kind {
        "run_command" => "run_command",
        "update_agent" => "update_agent",
        "update_package" => "update_package",
        "mavlink_command_long" => "mavlink_command_long",
        _ => "other",
    }
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn secs_since(start_ms: u64, now: u64) -> f64 {
    now.saturating_sub(start_ms) as f64 / 1000.0
}

/// Records a state change: the counter by status and type, and one audit line.
pub fn audit(r: &CommandRecord, actor: &str) {
    metrics::counter!("contrail_commands_total", "status" => r.status.as_str(), "type" => type_label(&r.kind))
        .increment(1);
    tracing::info!(
        target: "contrail::audit",
        command = %r.id,
        drone = %r.drone_id,
        r#type = %r.kind,
        status = r.status.as_str(),
        submitted_by = %r.submitted_by,
        actor,
        relay = r.relay_id.as_deref().unwrap_or(""),
        exit_code = r.exit_code,
        message = r.message.as_deref().unwrap_or(""),
        "command state change"
    );
}

/// The command queue a relay uses: the store, its notices, the deadline sweep.
pub struct CommandService {
    store: CommandStore,
    config: CommandsConfig,
    relay_id: Arc<str>,
    notices: broadcast::Sender<Notice>,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for CommandService {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl CommandService {
    /// Opens the configured store (PostgreSQL: connects and migrates, or fails) and starts the
    /// notification listener and deadline sweep, owned by the service (aborted on drop).
    pub async fn start(
        config: CommandsConfig,
        relay_id: Arc<str>,
        health: &Health,
    ) -> Result<Arc<Self>, DbError> {
        let (notices, _) = broadcast::channel(4096);
        let store = match &config.database_url {
            Some(url) => CommandStore::Postgres(
                PgStore::open(url, config.pool_size, config.db_timeout).await?,
            ),
            None => {
                // Not required for readiness, but /readyz shows it: nothing survives a restart.
                health
                    .register("commands:memory (lost on restart)", false)
                    .set_healthy(true);
                CommandStore::Memory(Box::new(MemoryStore::new(
                    config.memory_capacity,
                    config.memory_max_drones,
                )))
            }
        };
        let svc = Arc::new(CommandService {
            store,
            config,
            relay_id,
            notices,
            tasks: parking_lot::Mutex::default(),
        });
        let mut tasks = Vec::new();
        if let Some(url) = &svc.config.database_url {
            let flag = health.register("commands:postgres", false);
            tasks.push(tokio::spawn(postgres::listen(
                Arc::from(url.as_str()),
                svc.config.db_timeout,
                svc.notices.clone(),
                flag,
            )));
        }
        let weak = Arc::downgrade(&svc);
        let period = svc.config.sweep_interval;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(svc) = weak.upgrade() else { return };
                svc.sweep().await;
            }
        }));
        *svc.tasks.lock() = tasks;
        Ok(svc)
    }

    /// Settings.
    pub fn config(&self) -> &CommandsConfig {
        &self.config
    }

    /// Whether commands live in this process only.
    pub fn is_memory(&self) -> bool {
        matches!(self.store, CommandStore::Memory(_))
    }

    /// This relay's id.
    pub fn relay_id(&self) -> &str {
        &self.relay_id
    }

    /// Notices about submits and cancels (from every relay when on PostgreSQL).
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    fn notify_local(&self, n: Notice) {
        if self.is_memory() {
            let _ = self.notices.send(n);
        }
    }

    /// Expires commands whose deadline passed before an agent accepted them (bounded batch).
    pub async fn sweep(&self) {
        let now = now_ms();
        let res = match &self.store {
            CommandStore::Postgres(s) => s.expire_due(now, self.config.sweep_batch).await,
            CommandStore::Memory(s) => Ok(s.expire_due(
                now,
                usize::try_from(self.config.sweep_batch).unwrap_or(1000),
            )),
        };
        match res {
            Ok(expired) => {
                for r in expired {
                    audit(&r, "deadline sweep");
                }
            }
            Err(e) => tracing::debug!(error = %e, "deadline sweep failed"),
        }
    }

    /// Stores a new command (or returns the earlier one for an idempotent retry) and tells the
    /// relays.
    pub async fn submit(&self, cmd: NewCommand) -> Result<Submitted, StoreError> {
        let max_open = self.config.max_open_per_drone;
        let res = match &self.store {
            CommandStore::Postgres(s) => s.submit(cmd, max_open).await,
            CommandStore::Memory(s) => s.submit(cmd, max_open),
        }?;
        if res.created {
            audit(&res.record, &res.record.submitted_by);
            self.notify_local(Notice::Submitted(res.record.drone_id.clone()));
        }
        Ok(res)
    }

    /// One command.
    pub async fn get(&self, id: &CommandId) -> Result<Option<CommandRecord>, StoreError> {
        match &self.store {
            CommandStore::Postgres(s) => s.get(id).await,
            CommandStore::Memory(s) => Ok(s.get(id)),
        }
    }

    /// A command's stored output chunks, by stream and offset.
    pub async fn output(&self, id: &CommandId) -> Result<Vec<OutputChunk>, StoreError> {
        match &self.store {
            CommandStore::Postgres(s) => s.output(id).await,
            CommandStore::Memory(s) => Ok(s.output(id)),
        }
    }

    /// A drone's commands, newest first, and how many match in all.
    pub async fn list(
        &self,
        drone: &str,
        status: Option<CommandStatus>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<CommandRecord>, usize), StoreError> {
        match &self.store {
            CommandStore::Postgres(s) => s.list(drone, status, offset, limit).await,
            CommandStore::Memory(s) => Ok(s.list(drone, status, offset, limit)),
        }
    }

    /// Cancels an open command; the relay holding the drone tells the agent.
    pub async fn cancel(&self, id: &CommandId, by: &str) -> Result<CancelOutcome, StoreError> {
        let res = match &self.store {
            CommandStore::Postgres(s) => s.cancel(id, now_ms()).await,
            CommandStore::Memory(s) => Ok(s.cancel(id, now_ms())),
        }?;
        if let CancelOutcome::Cancelled { record, .. } = &res {
            audit(record, by);
            self.notify_local(Notice::Cancelled(
                record.drone_id.clone(),
                record.id.clone(),
            ));
        }
        Ok(res)
    }

    /// Open commands by status and the `limit` most recent (fleet-wide with PostgreSQL).
    pub async fn in_flight(&self, limit: usize) -> Result<InFlight, StoreError> {
        match &self.store {
            CommandStore::Postgres(s) => s.in_flight(limit).await,
            CommandStore::Memory(s) => Ok(s.in_flight(limit)),
        }
    }

    /// A drone registered on this relay (with the commands capability).
    pub async fn drone_seen(&self, drone: &str) -> Result<(), StoreError> {
        match &self.store {
            CommandStore::Postgres(s) => s.drone_seen(drone, &self.relay_id, now_ms()).await,
            CommandStore::Memory(s) => {
                s.drone_seen(drone, &self.relay_id);
                Ok(())
            }
        }
    }

    /// The relay a drone last registered on (`None`: never seen, i.e. unknown).
    pub async fn drone_relay(&self, drone: &str) -> Result<Option<String>, StoreError> {
        match &self.store {
            CommandStore::Postgres(s) => s.drone_relay(drone).await,
            CommandStore::Memory(s) => Ok(s.drone_relay(drone)),
        }
    }

    /// Commands to (re)send to a drone that is connected here.
    pub async fn pending_for(&self, drone: &str) -> Result<Vec<CommandRecord>, StoreError> {
        match &self.store {
            CommandStore::Postgres(s) => s.pending_for(drone, now_ms()).await,
            CommandStore::Memory(s) => Ok(s.pending_for(drone, now_ms())),
        }
    }

    /// The command was written to a session of this relay.
    pub async fn mark_delivered(&self, r: &CommandRecord) -> Result<(), StoreError> {
        let now = now_ms();
        let first = match &self.store {
            CommandStore::Postgres(s) => s.mark_delivered(&r.id, &self.relay_id, now).await?,
            CommandStore::Memory(s) => s.mark_delivered(&r.id, &self.relay_id, now),
        };
        if first {
            metrics::histogram!("contrail_command_queue_age_seconds")
                .record(secs_since(r.created_ms, now));
            let mut shown = r.clone();
            shown.status = CommandStatus::Delivered;
            shown.relay_id = Some(self.relay_id.to_string());
            audit(&shown, "relay");
        }
        Ok(())
    }

    /// The agent accepted the command (`at_ms`: when the relay received that, Unix ms).
    pub async fn accepted(&self, id: &CommandId, at_ms: u64) -> Result<(), StoreError> {
        let now = at_ms;
        let r = match &self.store {
            CommandStore::Postgres(s) => s.accepted(id, now).await?,
            CommandStore::Memory(s) => s.accepted(id, now),
        };
        if let Some(r) = r {
            metrics::histogram!("contrail_command_delivery_seconds")
                .record(secs_since(r.created_ms, now));
            audit(&r, "agent");
        }
        Ok(())
    }

    /// The agent reported a final result (or `Running`, treated as accepted) at `at_ms`.
    pub async fn finish(
        &self,
        id: &CommandId,
        status: CommandStatus,
        exit_code: i32,
        message: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        if !status.is_final() {
            return self.accepted(id, at_ms).await;
        }
        let now = at_ms;
        let r = match &self.store {
            CommandStore::Postgres(s) => s.finish(id, status, exit_code, message, now).await?,
            CommandStore::Memory(s) => s.finish(id, status, exit_code, message, now),
        };
        if let Some(r) = r {
            metrics::histogram!("contrail_command_completion_seconds")
                .record(secs_since(r.created_ms, now));
            audit(&r, "agent");
        }
        Ok(())
    }

    /// Stores one output chunk idempotently by (command, stream, offset).
    pub async fn store_output(
        &self,
        id: &CommandId,
        chunk: OutputChunk,
    ) -> Result<OutputStored, StoreError> {
        let (max_bytes, max_chunks) = (self.config.max_output_bytes, self.config.max_output_chunks);
        let res = match &self.store {
            CommandStore::Postgres(s) => s.store_output(id, chunk, max_bytes, max_chunks).await?,
            CommandStore::Memory(s) => s.store_output(id, chunk, max_bytes, max_chunks),
        };
        let label = match res {
            OutputStored::Inserted => "stored",
            OutputStored::Duplicate => "duplicate",
            OutputStored::OverLimit => "over_limit",
            OutputStored::UnknownCommand => "unknown_command",
        };
        metrics::counter!("contrail_command_output_chunks_total", "result" => label).increment(1);
        Ok(res)
    }
}
