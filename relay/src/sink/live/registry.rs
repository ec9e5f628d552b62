//! The subscriber registry: shared by the live sink (which fans batches out to the current
//! subscribers) and the accept path (which hands it subscriber connections). It bounds the
//! number of subscribers, owns every subscriber task, and joins them on shutdown.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use contrail_control::metric_names as m;
use contrail_protocol::ErrorCode;
use metrics::{Counter, Gauge};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::conn::Slot;
use super::queue::SubscriberQueue;
use super::settings::LiveSettings;

/// One subscriber as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberInfo {
    /// Subscriber id.
    pub id: String,
    /// Queue capacity, frames.
    pub capacity: usize,
    /// Frames queued now.
    pub lag: usize,
    /// Frames evicted so far.
    pub dropped: u64,
    /// Frames written so far.
    pub sent: u64,
    /// Whether the live sink is waiting for room in this (`block`) subscriber's queue.
    pub blocking: bool,
}

/// Subscribers of the live sink.
pub struct SubscriberRegistry {
    pub(crate) settings: LiveSettings,
    subscribers: RwLock<Arc<[Arc<SubscriberQueue>]>>,
    /// Connections being served (handshaking or subscribed); bounded by `max_subscribers`.
    slots: AtomicUsize,
    tasks: Mutex<JoinSet<()>>,
    shutdown: watch::Sender<bool>,
    next_id: AtomicU64,
    m_active: Gauge,
    pub(crate) m_dropped: Counter,
    m_rejected: Counter,
}

impl std::fmt::Debug for SubscriberRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberRegistry")
            .field("active", &self.active())
            .finish()
    }
}

/// Releases a connection slot, and unregisters the subscriber, however its task ends.
pub(crate) struct SlotGuard {
    registry: Arc<SubscriberRegistry>,
    queue: Option<Arc<SubscriberQueue>>,
}

impl Slot for SlotGuard {
    fn settings(&self) -> &LiveSettings {
        &self.registry.settings
    }

    fn rejected(&self) {
        self.registry.rejected();
    }

    fn dropped_counter(&self) -> Counter {
        self.registry.m_dropped.clone()
    }

    fn register(&mut self, queue: Arc<SubscriberQueue>) {
        let reg = &self.registry;
        let mut subs = reg.subscribers.write();
        let mut next: Vec<_> = subs.iter().cloned().collect();
        next.push(queue.clone());
        *subs = next.into();
        reg.m_active.set(subs.len() as f64);
        self.queue = Some(queue);
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let reg = &self.registry;
        if let Some(q) = self.queue.take() {
            q.close();
            let mut subs = reg.subscribers.write();
            let next: Vec<_> = subs
                .iter()
                .filter(|s| !Arc::ptr_eq(s, &q))
                .cloned()
                .collect();
            *subs = next.into();
            reg.m_active.set(subs.len() as f64);
        }
        reg.slots.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SubscriberRegistry {
    /// An empty registry.
    pub fn new(settings: LiveSettings) -> Arc<Self> {
        let m_active = metrics::gauge!(m::SUBSCRIBERS_ACTIVE);
        m_active.set(0.0);
        Arc::new(SubscriberRegistry {
            settings,
            subscribers: RwLock::new(Arc::from(Vec::new())),
            slots: AtomicUsize::new(0),
            tasks: Mutex::new(JoinSet::new()),
            shutdown: watch::Sender::new(false),
            next_id: AtomicU64::new(1),
            m_active,
            m_dropped: metrics::counter!(m::SUBSCRIBER_DROPPED),
            m_rejected: metrics::counter!(m::SUBSCRIBERS_REJECTED),
        })
    }

    /// Subscribers currently subscribed.
    pub fn active(&self) -> usize {
        self.subscribers.read().len()
    }

    /// The current subscribers (a snapshot; cheap to take once per write).
    pub fn snapshot(&self) -> Arc<[Arc<SubscriberQueue>]> {
        self.subscribers.read().clone()
    }

    /// Per-subscriber counters.
    pub fn subscribers(&self) -> Vec<SubscriberInfo> {
        self.snapshot()
            .iter()
            .map(|q| SubscriberInfo {
                id: q.id.clone(),
                capacity: q.capacity(),
                lag: q.lag(),
                dropped: q.dropped(),
                sent: q.sent(),
                blocking: q.is_blocking(),
            })
            .collect()
    }

    /// Takes over a connection that negotiated the subscriber ALPN: refuses it with
    /// `TOO_MANY_SESSIONS` when `max_subscribers` connections are already served, else serves
    /// it on a task this registry owns.
    pub fn accept(self: &Arc<Self>, conn: quinn::Connection) {
        if *self.shutdown.borrow() {
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::Draining.close_code()),
                b"relay is draining",
            );
            return;
        }
        if self.slots.fetch_add(1, Ordering::AcqRel) >= self.settings.max_subscribers {
            self.slots.fetch_sub(1, Ordering::AcqRel);
            self.m_rejected.increment(1);
            metrics::counter!(m::LIMIT_HITS, "limit" => "max_subscribers").increment(1);
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::TooManySessions.close_code()),
                b"relay is at max_subscribers",
            );
            return;
        }
        let guard = SlotGuard {
            registry: self.clone(),
            queue: None,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{id:x}-{:08x}", rand::random::<u32>());
        let shutdown = self.shutdown.subscribe();
        let mut tasks = self.tasks.lock();
        // Reap finished tasks so the set stays as small as the live subscriber count.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(super::conn::serve(guard, conn, id, shutdown));
    }

    pub(crate) fn rejected(&self) {
        self.m_rejected.increment(1);
    }

    /// Waits (up to `limit`) until every subscriber's queue was taken by its writer.
    pub async fn wait_drained(&self, limit: Duration) {
        let subs = self.snapshot();
        let all = futures::future::join_all(subs.iter().map(|q| q.wait_empty()));
        let _ = tokio::time::timeout(limit, all).await;
    }

    /// Closes every subscriber connection with `DRAINING` and joins their tasks (aborting any
    /// still running after `limit`). New subscribers are refused from now on.
    pub async fn shutdown(&self, limit: Duration) {
        self.shutdown.send_replace(true);
        let mut tasks = std::mem::take(&mut *self.tasks.lock());
        let joined = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, joined).await.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Aborts every subscriber task at once (the relay is being dropped without a drain).
    pub fn abort_all(&self) {
        self.shutdown.send_replace(true);
        self.tasks.lock().abort_all();
    }
}
