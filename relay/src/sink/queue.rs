//! The bounded queue in front of each sink: an array queue of shared batches with async
//! waiting on both ends, and a per-sink policy for when it is full.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use serde::Deserialize;
use tokio::sync::Notify;

use super::SinkBatch;

/// What an optional sink does when its queue is full. Required sinks always block (throttling
/// agents through credits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Evict the oldest queued batch to make room (counted as a drop).
    #[default]
    DropOldest,
    /// Drop the incoming batch (counted).
    DropNewest,
    /// Wait for room (what required sinks do).
    Block,
}

/// Outcome of a non-blocking push.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Queued after evicting the oldest batch.
    EvictedOldest,
    /// Not queued: the queue was full.
    DroppedNewest,
}

/// A bounded multi-producer, single-consumer queue of batches.
#[derive(Debug)]
pub struct BatchQueue {
    q: ArrayQueue<Arc<SinkBatch>>,
    not_empty: Notify,
    not_full: Notify,
    closed: AtomicBool,
}

impl BatchQueue {
    /// A queue of `capacity` batches.
    pub fn new(capacity: usize) -> Self {
        BatchQueue {
            q: ArrayQueue::new(capacity.max(1)),
            not_empty: Notify::new(),
            not_full: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Batches queued.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Capacity in batches.
    pub fn capacity(&self) -> usize {
        self.q.capacity()
    }

    /// Pushes, waiting for room. Returns false if the queue was closed.
    pub async fn push_wait(&self, mut batch: Arc<SinkBatch>) -> bool {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            let notified = self.not_full.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.q.push(batch) {
                Ok(()) => {
                    self.not_empty.notify_one();
                    return true;
                }
                Err(back) => batch = back,
            }
            notified.await;
        }
    }

    /// Pushes without waiting, applying `policy` when full (`Block` behaves as `DropNewest`).
    pub fn push_now(&self, batch: Arc<SinkBatch>, policy: WhenFull) -> Pushed {
        let pushed = match policy {
            WhenFull::DropOldest => match self.q.force_push(batch) {
                None => Pushed::Queued,
                Some(_evicted) => Pushed::EvictedOldest,
            },
            WhenFull::DropNewest | WhenFull::Block => match self.q.push(batch) {
                Ok(()) => Pushed::Queued,
                Err(_) => Pushed::DroppedNewest,
            },
        };
        if pushed != Pushed::DroppedNewest {
            self.not_empty.notify_one();
        }
        pushed
    }

    /// Moves up to `max` batches into `out`, oldest first. Returns how many.
    pub fn pop_many(&self, out: &mut Vec<Arc<SinkBatch>>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.q.pop() {
                Some(b) => {
                    out.push(b);
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            self.not_full.notify_waiters();
        }
        n
    }

    /// Waits until the queue is probably non-empty (the single consumer's wait).
    pub async fn wait_non_empty(&self) {
        loop {
            if !self.q.is_empty() {
                return;
            }
            let notified = self.not_empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.q.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Closes the queue: blocked producers give up.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.not_full.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::AgentCursor;
    use crate::sink::BatchOrigin;
    use bytes::Bytes;
    use contrail_protocol::{AgentId, SessionId, TelemetryBatch};
    use std::time::Instant;

    fn batch() -> Arc<SinkBatch> {
        let origin = Arc::new(BatchOrigin {
            agent_id: AgentId::new("a").expect("id"),
            session_id: SessionId::from_random_bytes([1; 16]),
            session_hex: String::new(),
        });
        Arc::new(SinkBatch::new(
            origin,
            TelemetryBatch::new(Bytes::new(), Vec::new()),
            Instant::now(),
            0,
            0,
            Arc::new(AgentCursor::default()),
        ))
    }

    #[test]
    fn policies_when_full() {
        let q = BatchQueue::new(2);
        assert_eq!(q.push_now(batch(), WhenFull::DropNewest), Pushed::Queued);
        assert_eq!(q.push_now(batch(), WhenFull::DropNewest), Pushed::Queued);
        assert_eq!(
            q.push_now(batch(), WhenFull::DropNewest),
            Pushed::DroppedNewest
        );
        assert_eq!(
            q.push_now(batch(), WhenFull::DropOldest),
            Pushed::EvictedOldest
        );
        assert_eq!(q.len(), 2);
        let mut out = Vec::new();
        assert_eq!(q.pop_many(&mut out, 10), 2);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn blocked_producer_resumes_when_room_appears() {
        let q = Arc::new(BatchQueue::new(1));
        assert!(q.push_wait(batch()).await);
        let q2 = q.clone();
        let producer = tokio::spawn(async move { q2.push_wait(batch()).await });
        tokio::task::yield_now().await;
        assert!(!producer.is_finished());
        let mut out = Vec::new();
        q.pop_many(&mut out, 1);
        assert!(producer.await.expect("join"));
        assert_eq!(q.len(), 1);
        q.close();
        assert!(!q.push_wait(batch()).await, "closed queue refuses");
    }
}
