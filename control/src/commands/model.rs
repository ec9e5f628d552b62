//! What a command is: ids, states, records, and the settings of the downlink.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A command id: 128 random bits as 32 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CommandId(String);

impl CommandId {
    /// A fresh random id.
    pub fn random() -> Self {
        CommandId(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// Validates user or wire input.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| CommandId(s.to_owned()))
    }

    /// The hex form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CommandId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a command is in its life. Only moves forward: `queued → delivered → running →` one of
/// the final states (`expired` and `cancelled` from any open state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Stored, not yet sent to the drone.
    Queued,
    /// Sent on a session; the agent has not accepted it yet.
    Delivered,
    /// The agent accepted it.
    Running,
    /// Finished with success.
    Succeeded,
    /// Finished with failure (including refused by the agent's policy, or agent restarted).
    Failed,
    /// Its deadline passed before the agent accepted it.
    Expired,
    /// An operator cancelled it.
    Cancelled,
}

impl CommandStatus {
    /// All states, in order.
    pub const ALL: [CommandStatus; 7] = [
        CommandStatus::Queued,
        CommandStatus::Delivered,
        CommandStatus::Running,
        CommandStatus::Succeeded,
        CommandStatus::Failed,
        CommandStatus::Expired,
        CommandStatus::Cancelled,
    ];

    /// The stored / JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Delivered => "delivered",
            CommandStatus::Running => "running",
            CommandStatus::Succeeded => "succeeded",
            CommandStatus::Failed => "failed",
            CommandStatus::Expired => "expired",
            CommandStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Final states never change again.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            CommandStatus::Queued | CommandStatus::Delivered | CommandStatus::Running
        )
    }
}

/// A command as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    /// Id.
    pub id: CommandId,
    /// Target drone (agent id).
    pub drone_id: String,
    /// Type, e.g. `run_command`.
    pub kind: String,
    /// JSON payload (UTF-8 bytes).
    pub payload: Vec<u8>,
    /// Unix ms after which it must not start.
    pub deadline_ms: u64,
    /// State.
    pub status: CommandStatus,
    /// Name of the token that submitted it.
    pub submitted_by: String,
    /// `Idempotency-Key` it was submitted with.
    pub idempotency_key: Option<String>,
    /// Hash of what was submitted (for idempotent retries).
    pub body_hash: String,
    /// Submit time, Unix ms.
    pub created_ms: u64,
    /// Last sent to an agent, Unix ms.
    pub delivered_ms: Option<u64>,
    /// Accepted by the agent, Unix ms.
    pub accepted_ms: Option<u64>,
    /// Reached a final state, Unix ms.
    pub finished_ms: Option<u64>,
    /// Exit code reported by the agent.
    pub exit_code: Option<i32>,
    /// Result message (agent's, or why it expired / was cancelled).
    pub message: Option<String>,
    /// Relay that last delivered it.
    pub relay_id: Option<String>,
    /// Output bytes stored.
    pub output_bytes: u64,
}

/// A submit, validated by the API.
#[derive(Debug, Clone)]
pub struct NewCommand {
    /// Target drone.
    pub drone_id: String,
    /// Type.
    pub kind: String,
    /// JSON payload bytes.
    pub payload: Vec<u8>,
    /// Deadline, Unix ms.
    pub deadline_ms: u64,
    /// Who submitted it.
    pub submitted_by: String,
    /// Optional idempotency key.
    pub idempotency_key: Option<String>,
    /// Hash of (drone, type, payload, deadline as given).
    pub body_hash: String,
    /// Now, Unix ms.
    pub now_ms: u64,
}

impl NewCommand {
    /// The record a fresh submit creates.
    pub fn into_record(self) -> CommandRecord {
        CommandRecord {
            id: CommandId::random(),
            drone_id: self.drone_id,
            kind: self.kind,
            payload: self.payload,
            deadline_ms: self.deadline_ms,
            status: CommandStatus::Queued,
            submitted_by: self.submitted_by,
            idempotency_key: self.idempotency_key,
            body_hash: self.body_hash,
            created_ms: self.now_ms,
            delivered_ms: None,
            accepted_ms: None,
            finished_ms: None,
            exit_code: None,
            message: None,
            relay_id: None,
            output_bytes: 0,
        }
    }
}

/// Which output stream a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// Standard output.
    Stdout = 0,
    /// Standard error.
    Stderr = 1,
}

/// One stored output chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// Stream.
    pub stream: Stream,
    /// Byte offset in its stream.
    pub offset: u64,
    /// Bytes.
    pub data: Vec<u8>,
}

/// What storing an output chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStored {
    /// New chunk stored.
    Inserted,
    /// A chunk at that (command, stream, offset) was already stored: nothing written.
    Duplicate,
    /// The command's output limit is reached: dropped.
    OverLimit,
    /// No such command: dropped.
    UnknownCommand,
}

/// Something relays must react to, from the store (the PostgreSQL store hears it from every
/// relay through `LISTEN/NOTIFY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// New command(s) for this drone: the relay holding it should poll.
    Submitted(String),
    /// This command of this drone was cancelled: the relay holding it should tell the agent.
    Cancelled(String, CommandId),
    /// Notices may have been missed (the listener reconnected): poll every local drone.
    Resync,
}

/// An API token and the role it carries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Shown in audit logs and `submitted_by`.
    pub name: String,
    /// The bearer token.
    pub token: String,
    /// What it may do.
    pub role: Role,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Submit, cancel and read.
    Operator,
    /// Read only.
    Viewer,
}

/// Settings of the command downlink.
#[derive(Debug, Clone)]
pub struct CommandsConfig {
    /// PostgreSQL URL; `None` keeps commands in memory (lost on restart).
    pub database_url: Option<String>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Bound on connecting and on each query.
    pub db_timeout: Duration,
    /// API tokens; empty disables the command API.
    pub tokens: Vec<ApiToken>,
    /// Largest payload (JSON bytes).
    pub max_payload_bytes: usize,
    /// Deadline when the submit gives none.
    pub default_deadline: Duration,
    /// Furthest deadline accepted.
    pub max_deadline: Duration,
    /// Open commands per drone (queued, delivered or running).
    pub max_open_per_drone: usize,
    /// Commands kept by the in-memory store (oldest final ones evicted first).
    pub memory_capacity: usize,
    /// Output bytes stored per command (more is dropped and counted).
    pub max_output_bytes: u64,
    /// Largest output chunk an agent may send.
    pub max_chunk_bytes: usize,
    /// Output chunks stored per command.
    pub max_output_chunks: u64,
    /// Period of the deadline sweep.
    pub sweep_interval: Duration,
    /// Commands expired per sweep (the rest wait for the next one).
    pub sweep_batch: i64,
    /// Drones remembered by the in-memory store as seen.
    pub memory_max_drones: usize,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            database_url: None,
            pool_size: 8,
            db_timeout: Duration::from_secs(2),
            tokens: Vec::new(),
            max_payload_bytes: 64 * 1024,
            default_deadline: Duration::from_secs(3600),
            max_deadline: Duration::from_secs(7 * 24 * 3600),
            max_open_per_drone: 100,
            memory_capacity: 10_000,
            max_output_bytes: 1024 * 1024,
            max_chunk_bytes: 64 * 1024,
            max_output_chunks: 4096,
            sweep_interval: Duration::from_secs(1),
            sweep_batch: 1000,
            memory_max_drones: 100_000,
        }
    }
}
