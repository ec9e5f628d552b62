//! The in-memory command store: the dev default. Bounded; everything is lost on restart.

use std::collections::{BTreeMap, HashMap, VecDeque};

use parking_lot::Mutex;

use super::model::{
    CommandId, CommandRecord, CommandStatus, NewCommand, OutputChunk, OutputStored, Stream,
};
use super::{CancelOutcome, StoreError, Submitted};

#[derive(Default)]
struct State {
    commands: HashMap<CommandId, CommandRecord>,
    /// Submit order (for eviction and listing).
    order: VecDeque<CommandId>,
    by_key: HashMap<String, CommandId>,
    output: HashMap<CommandId, BTreeMap<(Stream, u64), Vec<u8>>>,
    drones: HashMap<String, String>,
    drone_order: VecDeque<String>,
}

/// Commands in a map, bounded by `capacity` (oldest final commands are evicted to make room).
pub struct MemoryStore {
    capacity: usize,
    max_drones: usize,
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new(capacity: usize, max_drones: usize) -> Self {
        MemoryStore {
            capacity: capacity.max(1),
            max_drones: max_drones.max(1),
            state: Mutex::default(),
        }
    }

    pub(super) fn submit(&self, cmd: NewCommand, max_open: usize) -> Result<Submitted, StoreError> {
        let mut s = self.state.lock();
        if let Some(key) = &cmd.idempotency_key {
            if let Some(existing) = s.by_key.get(key).and_then(|id| s.commands.get(id)) {
                if existing.body_hash == cmd.body_hash {
                    return Ok(Submitted {
                        record: existing.clone(),
                        created: false,
                    });
                }
                return Err(StoreError::IdempotencyConflict);
            }
        }
        let open = s
            .commands
            .values()
            .filter(|c| c.drone_id == cmd.drone_id && !c.status.is_final())
            .count();
        if open >= max_open {
            return Err(StoreError::DroneQueueFull);
        }
        if s.commands.len() >= self.capacity {
            let victim = s
                .order
                .iter()
                .position(|id| s.commands.get(id).is_none_or(|c| c.status.is_final()));
            let Some(pos) = victim else {
                return Err(StoreError::Full);
            };
            if let Some(id) = s.order.remove(pos) {
                if let Some(old) = s.commands.remove(&id) {
                    if let Some(k) = old.idempotency_key {
                        s.by_key.remove(&k);
                    }
                }
                s.output.remove(&id);
            }
        }
        let record = cmd.into_record();
        if let Some(k) = &record.idempotency_key {
            s.by_key.insert(k.clone(), record.id.clone());
        }
        s.order.push_back(record.id.clone());
        s.commands.insert(record.id.clone(), record.clone());
        Ok(Submitted {
            record,
            created: true,
        })
    }

    pub(super) fn get(&self, id: &CommandId) -> Option<CommandRecord> {
        self.state.lock().commands.get(id).cloned()
    }

    pub(super) fn output(&self, id: &CommandId) -> Vec<OutputChunk> {
        self.state
            .lock()
            .output
            .get(id)
            .map(|m| {
                m.iter()
                    .map(|(&(stream, offset), data)| OutputChunk {
                        stream,
                        offset,
                        data: data.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn list(
        &self,
        drone: &str,
        status: Option<CommandStatus>,
        offset: usize,
        limit: usize,
    ) -> (Vec<CommandRecord>, usize) {
        let s = self.state.lock();
        let matching: Vec<&CommandRecord> = s
            .order
            .iter()
            .rev()
            .filter_map(|id| s.commands.get(id))
            .filter(|c| c.drone_id == drone && status.is_none_or(|st| c.status == st))
            .collect();
        let total = matching.len();
        (
            matching
                .into_iter()
                .skip(offset)
                .take(limit)
                .cloned()
                .collect(),
            total,
        )
    }

    pub(super) fn cancel(&self, id: &CommandId, now_ms: u64) -> CancelOutcome {
        let mut s = self.state.lock();
        let Some(c) = s.commands.get_mut(id) else {
            return CancelOutcome::NotFound;
        };
        if c.status.is_final() {
            return CancelOutcome::AlreadyFinal(c.clone());
        }
        let was = c.status;
        c.status = CommandStatus::Cancelled;
        c.finished_ms = Some(now_ms);
        c.message = Some("cancelled by an operator".into());
        CancelOutcome::Cancelled {
            record: c.clone(),
            was,
        }
    }

    pub(super) fn drone_seen(&self, drone: &str, relay: &str) {
        let mut s = self.state.lock();
        if s.drones
            .insert(drone.to_owned(), relay.to_owned())
            .is_none()
        {
            s.drone_order.push_back(drone.to_owned());
            while s.drone_order.len() > self.max_drones {
                if let Some(old) = s.drone_order.pop_front() {
                    s.drones.remove(&old);
                }
            }
        }
    }

    pub(super) fn drone_relay(&self, drone: &str) -> Option<String> {
        self.state.lock().drones.get(drone).cloned()
    }

    pub(super) fn pending_for(&self, drone: &str, now_ms: u64) -> Vec<CommandRecord> {
        let s = self.state.lock();
        s.order
            .iter()
            .filter_map(|id| s.commands.get(id))
            .filter(|c| c.drone_id == drone && is_pending(c, now_ms))
            .cloned()
            .collect()
    }

    pub(super) fn mark_delivered(&self, id: &CommandId, relay: &str, now_ms: u64) -> bool {
        let mut s = self.state.lock();
        match s.commands.get_mut(id) {
            Some(c) if !c.status.is_final() => {
                let first = c.status == CommandStatus::Queued;
                if first {
                    c.status = CommandStatus::Delivered;
                }
                c.delivered_ms = Some(now_ms);
                c.relay_id = Some(relay.to_owned());
                first
            }
            _ => false,
        }
    }

    pub(super) fn accepted(&self, id: &CommandId, now_ms: u64) -> Option<CommandRecord> {
        let mut s = self.state.lock();
        let c = s.commands.get_mut(id)?;
        if !matches!(c.status, CommandStatus::Queued | CommandStatus::Delivered) {
            return None;
        }
        c.status = CommandStatus::Running;
        c.accepted_ms = Some(now_ms);
        Some(c.clone())
    }

    pub(super) fn finish(
        &self,
        id: &CommandId,
        status: CommandStatus,
        exit_code: i32,
        message: &str,
        now_ms: u64,
    ) -> Option<CommandRecord> {
        let mut s = self.state.lock();
        let c = s.commands.get_mut(id)?;
        if c.status.is_final() {
            return None;
        }
        if c.accepted_ms.is_none() {
            c.accepted_ms = Some(now_ms);
        }
        c.status = status;
        c.exit_code = Some(exit_code);
        c.message = Some(message.to_owned());
        c.finished_ms = Some(now_ms);
        Some(c.clone())
    }

    pub(super) fn store_output(
        &self,
        id: &CommandId,
        chunk: OutputChunk,
        max_bytes: u64,
        max_chunks: u64,
    ) -> OutputStored {
        let mut s = self.state.lock();
        let Some(c) = s.commands.get(id) else {
            return OutputStored::UnknownCommand;
        };
        let total = c.output_bytes;
        let chunks = s.output.get(id).map_or(0, |m| m.len() as u64);
        let len = chunk.data.len() as u64;
        let map = s.output.entry(id.clone()).or_default();
        if map.contains_key(&(chunk.stream, chunk.offset)) {
            return OutputStored::Duplicate;
        }
        if total + len > max_bytes || chunks >= max_chunks {
            return OutputStored::OverLimit;
        }
        map.insert((chunk.stream, chunk.offset), chunk.data);
        if let Some(c) = s.commands.get_mut(id) {
            c.output_bytes += len;
        }
        OutputStored::Inserted
    }

    /// Open commands by status and the `limit` most recent of them (one pass over the store,
    /// which is bounded by its capacity).
    pub(super) fn in_flight(&self, limit: usize) -> super::InFlight {
        let s = self.state.lock();
        let mut out = super::InFlight::default();
        for id in s.order.iter().rev() {
            let Some(c) = s.commands.get(id) else {
                continue;
            };
            if c.status.is_final() {
                continue;
            }
            out.count(c.status.as_str(), 1);
            if out.recent.len() < limit {
                out.recent.push(c.clone());
            }
        }
        out
    }

    pub(super) fn expire_due(&self, now_ms: u64, limit: usize) -> Vec<CommandRecord> {
        let mut s = self.state.lock();
        let mut out = Vec::new();
        for c in s.commands.values_mut() {
            if out.len() >= limit {
                break;
            }
            if matches!(c.status, CommandStatus::Queued | CommandStatus::Delivered)
                && c.deadline_ms < now_ms
            {
                c.status = CommandStatus::Expired;
                c.finished_ms = Some(now_ms);
                c.message = Some("deadline passed before the agent accepted it".into());
                out.push(c.clone());
            }
        }
        out
    }
}

/// Sent (again) to the agent when it (re)connects: not final, and (unless already running)
/// not past its deadline.
pub(super) fn is_pending(c: &CommandRecord, now_ms: u64) -> bool {
    match c.status {
        CommandStatus::Queued | CommandStatus::Delivered => c.deadline_ms >= now_ms,
        CommandStatus::Running => true,
        _ => false,
    }
}
