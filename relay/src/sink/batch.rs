//! The unit that travels from a session reader to every sink: one decoded read, shared.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use contrail_protocol::{AgentId, SessionId, TelemetryBatch};

use crate::cursor::AgentCursor;

/// Who sent a batch; shared by all batches of a session.
#[derive(Debug)]
pub struct BatchOrigin {
    /// Agent id.
    pub agent_id: AgentId,
    /// Session id.
    pub session_id: SessionId,
    /// Session id as hex (formatted once per session, not per frame).
    pub session_hex: String,
}

/// One batch of frames, shared (behind `Arc`) by every sink queue it is pushed to.
#[derive(Debug)]
pub struct SinkBatch {
    /// Sender.
    pub origin: Arc<BatchOrigin>,
    /// Frames (zero-copy slices of the read buffer).
    pub frames: TelemetryBatch,
    /// When the reader decoded the batch.
    pub received_at: Instant,
    /// Same moment, Unix ns.
    pub received_unix_ns: u64,
    completion: Option<Completion>,
}

#[derive(Debug)]
struct Completion {
    remaining: AtomicUsize,
    cursor: Arc<AgentCursor>,
}

impl SinkBatch {
    /// A batch awaiting `required_sinks` completions before it advances `cursor`.
    pub fn new(
        origin: Arc<BatchOrigin>,
        frames: TelemetryBatch,
        received_at: Instant,
        received_unix_ns: u64,
        required_sinks: usize,
        cursor: Arc<AgentCursor>,
    ) -> Self {
        let completion = if required_sinks == 0 {
            cursor.usage_completed(
                frames.last_seq(),
                frames.len() as u64,
                frames.data().len() as u64,
            );
            cursor.complete_batch(frames.first_seq(), frames.last_seq(), received_at);
            None
        } else {
            Some(Completion {
                remaining: AtomicUsize::new(required_sinks),
                cursor,
            })
        };
        SinkBatch {
            origin,
            frames,
            received_at,
            received_unix_ns,
            completion,
        }
    }

    /// A required sink accepted this batch. When the last one does, the batch's seq range is
    /// complete; the agent's ack point takes it in once every earlier seq is complete too (it
    /// never passes a batch that a sink lost, see [`AgentCursor::complete_range`]).
    /// Returns whether this call completed the batch (it was the last required sink).
    pub fn complete(&self) -> bool {
        if let Some(c) = &self.completion {
            if c.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                // Usage: counted once an ack covers the batch.
                c.cursor.usage_completed(
                    self.frames.last_seq(),
                    self.frames.len() as u64,
                    self.frames.data().len() as u64,
                );
                c.cursor.complete_batch(
                    self.frames.first_seq(),
                    self.frames.last_seq(),
                    self.received_at,
                );
                return true;
            }
        }
        false
    }
}
