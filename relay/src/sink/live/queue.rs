//! One subscriber's bounded queue: shared batches plus which of their frames this subscriber
//! takes, bounded in frames, with the subscriber's full-queue policy.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use metrics::Counter;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::sink::{Filter, SinkBatch};

/// Full-queue policy of a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberPolicy {
    /// Evict the oldest queued frames (counted).
    DropOldest,
    /// Wait for room (the live sink's write waits, so a required live sink throttles agents).
    Block,
}

/// Which frames of a batch an entry carries.
#[derive(Debug)]
pub(crate) enum Selection {
    /// Every frame.
    All,
    /// These frame indices, ascending.
    Some(Vec<u32>),
}

/// A queued batch (shared, never copied) and this subscriber's selection of it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub batch: Arc<SinkBatch>,
    pub selection: Selection,
    pub frames: usize,
}

impl Entry {
    /// Calls `f` with each selected frame index, in order.
    pub fn for_each_index(&self, mut f: impl FnMut(usize)) {
        match &self.selection {
            Selection::All => (0..self.batch.frames.len()).for_each(f),
            Selection::Some(ix) => ix.iter().for_each(|&i| f(i as usize)),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: VecDeque<Entry>,
    frames: usize,
}

/// The queue between the live sink (producer) and one subscriber's writer (consumer).
#[derive(Debug)]
pub struct SubscriberQueue {
    /// Subscriber id (hex), for logs and status.
    pub id: String,
    filter: Filter,
    frame_pass_all: bool,
    policy: SubscriberPolicy,
    capacity: usize,
    inner: Mutex<Inner>,
    closed: AtomicBool,
    not_empty: Notify,
    not_full: Notify,
    dropped: AtomicU64,
    sent: AtomicU64,
    /// Frames the writer took and has not reported written yet.
    writing: AtomicUsize,
    waiting: AtomicUsize,
    m_dropped: Counter,
}

impl SubscriberQueue {
    /// A queue of `capacity` frames for a subscriber with `filter` (kind/flight checks are
    /// skipped per frame when `frame_pass_all`).
    pub(crate) fn new(
        id: String,
        filter: Filter,
        frame_pass_all: bool,
        policy: SubscriberPolicy,
        capacity: usize,
        m_dropped: Counter,
    ) -> Self {
        SubscriberQueue {
            id,
            filter,
            frame_pass_all,
            policy,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
            closed: AtomicBool::new(false),
            not_empty: Notify::new(),
            not_full: Notify::new(),
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            writing: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            m_dropped,
        }
    }

    /// The policy.
    pub fn policy(&self) -> SubscriberPolicy {
        self.policy
    }

    /// Capacity in frames.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Frames queued or taken by the writer and not yet written (the lag): 0 means every
    /// frame that entered the queue is counted in [`sent`](Self::sent) or [`dropped`](Self::dropped).
    pub fn lag(&self) -> usize {
        let inner = self.inner.lock();
        inner.frames + self.writing.load(Ordering::Acquire)
    }

    /// Frames evicted so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Frames written to the subscriber's stream so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether a producer (the live sink's write) is waiting for room right now.
    pub fn is_blocking(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// The writer wrote `n` of the frames it took.
    pub(crate) fn add_sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Release);
        self.writing.fetch_sub(n, Ordering::AcqRel);
    }

    /// Whether the subscriber is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the subscriber gone: producers blocked on it give up, the writer stops.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.not_full.notify_waiters();
        self.not_empty.notify_waiters();
    }

    /// Queues the frames of `batch` that both this subscriber's filter and `sink_filter` admit.
    /// A `Block` subscriber waits for room; a `DropOldest` one evicts (and counts). Returns
    /// the number of frames queued.
    pub(crate) async fn offer(&self, batch: &Arc<SinkBatch>, sink_filter: &Filter) -> usize {
        if !self.filter.admits_agent(&batch.origin.agent_id) {
            return 0;
        }
        let total = batch.frames.len();
        let (selection, frames) = if self.frame_pass_all && sink_filter.is_pass_all() {
            (Selection::All, total)
        } else {
            let ix: Vec<u32> = batch
                .frames
                .iter()
                .enumerate()
                .filter(|(_, f)| {
                    let (kind, flight) = (f.kind(), f.flight_id());
                    self.filter.admits_frame(kind, flight) && sink_filter.admits_frame(kind, flight)
                })
                .map(|(i, _)| i as u32)
                .collect();
            let n = ix.len();
            if n == total {
                (Selection::All, n)
            } else {
                (Selection::Some(ix), n)
            }
        };
        if frames == 0 {
            return 0;
        }
        let mut entry = Entry {
            batch: batch.clone(),
            selection,
            frames,
        };
        // Counted while waiting (also if this future is dropped mid-wait).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let notified = self.not_full.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_push(entry) {
                Ok(()) => return frames,
                Err(Some(back)) => entry = back,
                Err(None) => return 0,
            }
            if waiting.is_none() {
                self.waiting.fetch_add(1, Ordering::AcqRel);
                waiting = Some(Waiting(&self.waiting));
            }
            notified.await;
        }
    }

    /// Pushes if there is room (or by evicting, for `DropOldest`). `Err(Some)` hands the entry
    /// back when a `Block` subscriber is full; `Err(None)` when the queue is closed.
    fn try_push(&self, entry: Entry) -> Result<(), Option<Entry>> {
        if self.is_closed() {
            return Err(None);
        }
        let mut inner = self.inner.lock();
        let fits =
            |inner: &Inner| inner.frames == 0 || inner.frames + entry.frames <= self.capacity;
        if !fits(&inner) {
            if self.policy == SubscriberPolicy::Block {
                return Err(Some(entry));
            }
            let mut evicted = 0usize;
            while !fits(&inner) {
                let Some(old) = inner.entries.pop_front() else {
                    break;
                };
                inner.frames -= old.frames;
                evicted += old.frames;
            }
            self.dropped.fetch_add(evicted as u64, Ordering::Relaxed);
            self.m_dropped.increment(evicted as u64);
        }
        inner.frames += entry.frames;
        inner.entries.push_back(entry);
        drop(inner);
        self.not_empty.notify_one();
        Ok(())
    }

    /// Moves queued entries into `out`, oldest first, until at least `max_frames` frames were
    /// taken or the queue is empty. Returns the number of frames taken.
    pub(crate) fn pop_into(&self, out: &mut Vec<Entry>, max_frames: usize) -> usize {
        let mut taken = 0;
        {
            let mut inner = self.inner.lock();
            while taken < max_frames {
                let Some(e) = inner.entries.pop_front() else {
                    break;
                };
                inner.frames -= e.frames;
                taken += e.frames;
                out.push(e);
            }
            // Still lag until written (under the lock, so `lag` never misses them).
            self.writing.fetch_add(taken, Ordering::AcqRel);
        }
        if taken > 0 {
            self.not_full.notify_waiters();
        }
        taken
    }

    /// Waits until something is queued; false once the queue is closed.
    pub(crate) async fn wait_non_empty(&self) -> bool {
        loop {
            let notified = self.not_empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return false;
            }
            if self.inner.lock().frames > 0 {
                return true;
            }
            notified.await;
        }
    }

    /// Waits until the writer took everything queued (or the subscriber is gone).
    pub(crate) async fn wait_empty(&self) {
        loop {
            let notified = self.not_full.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() || self.inner.lock().frames == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::AgentCursor;
    use crate::sink::BatchOrigin;
    use bytes::BytesMut;
    use contrail_protocol::{AgentId, FrameCodec, SessionId};
    use std::time::Instant;

    fn batch(agent: &str, kinds: &[u32]) -> Arc<SinkBatch> {
        let mut buf = BytesMut::new();
        for (i, k) in kinds.iter().enumerate() {
            contrail_protocol::codec::encode_telemetry(
                &mut buf,
                i as u64 + 1,
                1,
                0,
                *k,
                "f",
                b"x",
                "",
            );
        }
        let frames = FrameCodec::default()
            .decode_telemetry_batch(&mut buf, &mut Vec::new())
            .expect("decode")
            .expect("frames");
        let origin = Arc::new(BatchOrigin {
            agent_id: AgentId::new(agent).expect("id"),
            session_id: SessionId::from_random_bytes([1; 16]),
            session_hex: String::new(),
        });
        Arc::new(SinkBatch::new(
            origin,
            frames,
            Instant::now(),
            0,
            0,
            Arc::new(AgentCursor::default()),
        ))
    }

    fn queue(policy: SubscriberPolicy, cap: usize, filter: Filter, pass: bool) -> SubscriberQueue {
        SubscriberQueue::new(
            "s".into(),
            filter,
            pass,
            policy,
            cap,
            metrics::Counter::noop(),
        )
    }

    #[tokio::test]
    async fn drop_oldest_evicts_whole_entries_and_counts_frames() {
        let q = queue(SubscriberPolicy::DropOldest, 4, Filter::default(), true);
        assert_eq!(
            q.offer(&batch("a", &[1, 1, 1]), &Filter::default()).await,
            3
        );
        assert_eq!(q.offer(&batch("a", &[1, 1]), &Filter::default()).await, 2);
        assert_eq!(q.dropped(), 3);
        assert_eq!(q.lag(), 2);
        let mut out = Vec::new();
        assert_eq!(q.pop_into(&mut out, 100), 2);
        assert_eq!(
            q.lag(),
            2,
            "taken by the writer but not written yet: still lag"
        );
        q.add_sent(2);
        assert_eq!((q.lag(), q.sent()), (0, 2));
    }

    #[tokio::test]
    async fn filters_select_frames_and_block_waits_for_room() {
        let f = Filter::new(&[2], &[], &["drone-*".into()], &[], None).expect("filter");
        let q = Arc::new(queue(SubscriberPolicy::Block, 2, f, false));
        assert_eq!(q.offer(&batch("rover", &[2]), &Filter::default()).await, 0);
        assert_eq!(
            q.offer(&batch("drone-1", &[1, 2, 2, 3]), &Filter::default())
                .await,
            2
        );
        let q2 = q.clone();
        let blocked =
            tokio::spawn(
                async move { q2.offer(&batch("drone-1", &[2]), &Filter::default()).await },
            );
        tokio::task::yield_now().await;
        assert!(
            !blocked.is_finished(),
            "a full Block queue makes the producer wait"
        );
        let mut out = Vec::new();
        q.pop_into(&mut out, 1);
        let mut seen = Vec::new();
        out[0].for_each_index(|i| seen.push(i));
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(blocked.await.expect("join"), 1);
        q.close();
        assert_eq!(
            q.offer(&batch("drone-1", &[2]), &Filter::default()).await,
            0
        );
        assert_eq!(q.dropped(), 0);
    }
}
