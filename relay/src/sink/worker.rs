//! The sink worker: pops batches in order, writes, retries, completes, flushes on request.
//!
//! The batches a worker is writing live in its [`SinkHandle`] (`held`), not in the worker: a
//! worker that panics (or is aborted) mid-write leaves them there, and the worker the sink
//! actor starts next writes them first. Nothing a worker took from the queue is lost with it,
//! and acks wait for it (the ack point also never passes a gap: see [`crate::cursor`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use contrail_control::metric_names as m;
use metrics::{Counter, Gauge};
use tokio::sync::{mpsc, oneshot, Mutex};

use super::queue::Pushed;
use super::{BatchQueue, Sink, SinkBatch, SinkCommon, SinkError, SinkFactory};
use crate::latency::{Latency, SinkLatency};

const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// The shared half of a sink: its queue, health and metrics. The fan-out pushes into it; the
/// worker (owned by the sink actor) pops from it. It outlives worker restarts, so nothing
/// queued, and nothing a worker was writing, is lost when a worker is replaced.
pub struct SinkHandle {
    /// Settings.
    pub common: SinkCommon,
    /// The bounded queue.
    pub queue: BatchQueue,
    healthy: AtomicBool,
    frames_written: AtomicU64,
    frames_dropped: AtomicU64,
    flush_tx: mpsc::Sender<oneshot::Sender<Result<(), SinkError>>>,
    flush_rx: Mutex<mpsc::Receiver<oneshot::Sender<Result<(), SinkError>>>>,
    /// Batches popped and not yet written: locked by the running worker for its whole life,
    /// so when it dies they are still here for the next one.
    held: Mutex<Vec<Arc<SinkBatch>>>,
    dropped_full: AtomicU64,
    m_accepted: Counter,
    m_dropped_full: Counter,
    m_dropped_error: Counter,
    m_errors: Counter,
    m_depth: Gauge,
    m_healthy: Gauge,
    latency: SinkLatency,
    health: Option<contrail_control::HealthFlag>,
}

impl std::fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkHandle")
            .field("name", &self.common.name)
            .finish()
    }
}

impl SinkHandle {
    /// A handle with an empty queue.
    pub fn new(
        common: SinkCommon,
        latency: Latency,
        health: Option<contrail_control::HealthFlag>,
    ) -> Self {
        let name = common.name.clone();
        let (flush_tx, flush_rx) = mpsc::channel(4);
        let m_healthy = metrics::gauge!(m::SINK_HEALTHY, "sink" => name.clone());
        m_healthy.set(0.0);
        SinkHandle {
            queue: BatchQueue::new(common.queue_batches),
            healthy: AtomicBool::new(false),
            frames_written: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            flush_tx,
            flush_rx: Mutex::new(flush_rx),
            held: Mutex::new(Vec::with_capacity(common.max_batches_per_write.max(1))),
            m_accepted: metrics::counter!(m::SINK_ACCEPTED, "sink" => name.clone()),
            m_dropped_full: metrics::counter!(m::SINK_DROPPED, "sink" => name.clone(), "reason" => "queue_full"),
            m_dropped_error: metrics::counter!(m::SINK_DROPPED, "sink" => name.clone(), "reason" => "write_failed"),
            m_errors: metrics::counter!(m::SINK_ERRORS, "sink" => name.clone()),
            m_depth: metrics::gauge!(m::SINK_QUEUE_DEPTH, "sink" => name),
            m_healthy,
            latency: latency.for_sink(&common.name),
            health,
            common,
        }
    }

    /// The sink's state for the fleet page.
    pub fn status(&self) -> contrail_control::registry::SinkStatus {
        let dropped = self.frames_dropped();
        let full = self.dropped_full.load(Ordering::Relaxed);
        contrail_control::registry::SinkStatus {
            name: self.common.name.clone(),
            required: self.common.required,
            healthy: self.is_healthy(),
            queue_depth: self.queue.len() as u64,
            queue_capacity: self.queue.capacity() as u64,
            frames_written: self.frames_written(),
            dropped_queue_full: full,
            dropped_write_failed: dropped.saturating_sub(full),
        }
    }

    /// Whether the last write (or connect) succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Frames written so far.
    pub fn frames_written(&self) -> u64 {
        self.frames_written.load(Ordering::Relaxed)
    }

    /// Frames dropped so far (full queue of an optional sink, or failed writes).
    pub fn frames_dropped(&self) -> u64 {
        self.frames_dropped.load(Ordering::Relaxed)
    }

    fn count_dropped(&self, frames: u64, full: bool) {
        self.frames_dropped.fetch_add(frames, Ordering::Relaxed);
        if full {
            self.dropped_full.fetch_add(frames, Ordering::Relaxed);
            self.m_dropped_full.increment(frames);
        } else {
            self.m_dropped_error.increment(frames);
        }
    }

    fn set_healthy(&self, ok: bool) {
        if self.healthy.swap(ok, Ordering::AcqRel) != ok {
            self.m_healthy.set(if ok { 1.0 } else { 0.0 });
        }
        if let Some(h) = &self.health {
            h.set_healthy(ok);
        }
    }

    /// Hands a batch to this sink: required sinks wait for room; optional ones apply their
    /// `when_full` policy and count drops. Returns false only if the queue is closed.
    pub async fn offer(&self, batch: &Arc<SinkBatch>) -> bool {
        let ok = if self.common.required || self.common.when_full == super::WhenFull::Block {
            self.queue.push_wait(batch.clone()).await
        } else {
            match self.queue.push_now(batch.clone(), self.common.when_full) {
                Pushed::Queued => true,
                Pushed::EvictedOldest | Pushed::DroppedNewest => {
                    // drop_oldest evicts a batch of unknown size; count the incoming one's size
                    // as the best available measure.
                    self.count_dropped(batch.frames.len() as u64, true);
                    true
                }
            }
        };
        self.m_depth.set(self.queue.len() as f64);
        ok
    }

    /// Asks the worker to write everything queued and flush the sink; waits for it.
    pub async fn flush(&self) -> Result<(), FlushError> {
        let (tx, rx) = oneshot::channel();
        self.flush_tx
            .send(tx)
            .await
            .map_err(|_| FlushError::WorkerGone)?;
        rx.await
            .map_err(|_| FlushError::WorkerGone)?
            .map_err(FlushError::Sink)
    }
}

/// Why [`SinkHandle::flush`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlushError {
    /// The sink's worker task is gone (the relay is shutting down).
    #[error("sink worker gone")]
    WorkerGone,
    /// The sink's own flush failed.
    #[error(transparent)]
    Sink(SinkError),
}

async fn build_with_retry(handle: &SinkHandle, factory: &SinkFactory) -> Box<dyn Sink> {
    let mut backoff = MIN_BACKOFF;
    loop {
        match factory().await {
            Ok(sink) => return sink,
            Err(e) => {
                handle.m_errors.increment(1);
                handle.set_healthy(false);
                tracing::warn!(sink = %handle.common.name, error = %e, retry_in = ?backoff, "sink unavailable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Runs a sink until the task is aborted. Never returns on its own. A restarted worker
/// (`restart_delay`: the actor's backoff for a worker that keeps dying) first writes what the
/// previous one held.
pub async fn run(handle: Arc<SinkHandle>, factory: SinkFactory, restart_delay: Duration) {
    // Locked for this worker's life: the previous worker's guard went with it.
    let mut held = handle.held.lock().await;
    let mut flush_rx = handle.flush_rx.lock().await;
    if !restart_delay.is_zero() {
        tokio::time::sleep(restart_delay).await;
    }
    let mut sink = build_with_retry(&handle, &factory).await;
    handle.set_healthy(true);
    let max = handle.common.max_batches_per_write.max(1);
    let items: &mut Vec<Arc<SinkBatch>> = &mut held;
    let mut done = Done {
        batches: Vec::with_capacity(max),
        committed: Vec::with_capacity(max),
    };
    if !items.is_empty() {
        let frames: usize = items.iter().map(|b| b.frames.len()).sum();
        tracing::warn!(sink = %handle.common.name, batches = items.len(), frames, "redelivering what the previous worker held");
        metrics::counter!(m::SINK_REDELIVERED, "sink" => handle.common.name.clone())
            .increment(items.len() as u64);
        write_items(&handle, &factory, &mut sink, items, &mut done).await;
    }
    loop {
        tokio::select! {
            biased;
            req = flush_rx.recv() => {
                let Some(reply) = req else { return };
                while handle.queue.pop_many(items, max) > 0 {
                    write_items(&handle, &factory, &mut sink, items, &mut done).await;
                }
                let res = sink.flush().await;
                let _ = reply.send(res);
            }
            _ = handle.queue.wait_non_empty() => {
                handle.queue.pop_many(items, max);
                handle.m_depth.set(handle.queue.len() as f64);
                write_items(&handle, &factory, &mut sink, items, &mut done).await;
            }
        }
    }
}

/// Scratch space of [`write_items`], kept across calls (no allocation per write).
struct Done {
    /// The batches just written.
    batches: Vec<Arc<SinkBatch>>,
    /// Whether this sink's completion committed each of them (it was the last required sink).
    committed: Vec<bool>,
}

/// Writes `items` (held in the handle until written), then completes them.
async fn write_items(
    handle: &SinkHandle,
    factory: &SinkFactory,
    sink: &mut Box<dyn Sink>,
    items: &mut Vec<Arc<SinkBatch>>,
    done: &mut Done,
) {
    if items.is_empty() {
        return;
    }
    let mut attempt = 0u32;
    let mut backoff = MIN_BACKOFF;
    loop {
        match sink.write(items, &handle.common.filter).await {
            Ok(written) => {
                // Written: out of the held set before anything else can fail, so a later
                // panic never writes (and completes) them twice.
                std::mem::swap(items, &mut done.batches);
                handle.set_healthy(true);
                handle.m_accepted.increment(written as u64);
                handle
                    .frames_written
                    .fetch_add(written as u64, Ordering::Relaxed);
                if handle.common.required {
                    done.committed
                        .extend(done.batches.iter().map(|b| b.complete()));
                }
                handle.latency.written(&done.batches, &done.committed);
                done.batches.clear();
                done.committed.clear();
                return;
            }
            Err(e) => {
                handle.m_errors.increment(1);
                handle.set_healthy(false);
                if attempt == 0 || attempt.is_multiple_of(20) {
                    tracing::warn!(sink = %handle.common.name, error = %e, attempt, "sink write failed; retrying");
                }
                if !handle.common.required && attempt >= handle.common.optional_retries {
                    let frames: usize = items.iter().map(|b| b.frames.len()).sum();
                    handle.count_dropped(frames as u64, false);
                    items.clear();
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
                if attempt.is_multiple_of(3) {
                    if let Ok(fresh) = factory().await {
                        *sink = fresh;
                    }
                }
            }
        }
    }
}

impl From<SinkError> for String {
    fn from(e: SinkError) -> String {
        e.to_string()
    }
}

/// Reports every sink to the control plane's fleet page.
pub struct SinkReporter(pub Vec<Arc<SinkHandle>>);

impl contrail_control::registry::SinkReport for SinkReporter {
    fn sinks(&self) -> Vec<contrail_control::registry::SinkStatus> {
        self.0.iter().map(|h| h.status()).collect()
    }
}
