//! Usage per agent in hourly buckets: frames (and their bytes) the relay acked — accepted by
//! every required sink, and the `Ack` covering them written to the agent — in memory or, with a
//! database, in PostgreSQL shared by the fleet. Design and failure cases: `docs/sre.md` ("Usage").
//!
//! The relay counts per agent stream in a [`UsageCounters`] pair (its resume cursor logs each
//! completed batch and adds it when an `Ack` covers it; every session of that stream shares the
//! counters). A sampler *takes* what accumulated since the last sample (`swap(0)`) from every
//! counter it can reach — the live sessions' and, for a few periods after they end (the fleet
//! hands every ended session over, however short), ended sessions' — and adds it to the hour of
//! the sample. Taking (rather than diffing running
//! totals) is what keeps a counter shared by two sessions, or seen again after the sampler
//! forgot it, from being counted twice.
//!
//! - **Memory** (no database): at most `max_buckets` (agent, hour) buckets and `retention_hours`
//!   hours; the oldest hours go first (`contrail_limit_hits_total{limit="usage_buckets"}`).
//! - **PostgreSQL** ([`postgres::PgUsage`]): each sample's deltas are staged and flushed every
//!   period as one transaction that adds them to `usage_hourly (agent_id, hour_ms, relay_id)`
//!   and advances this process's flush mark in `usage_flushes`, so a retried flush whose commit
//!   was in doubt is applied once. A failed flush keeps its deltas (bounded by `max_pending`,
//!   `contrail_limit_hits_total{limit="usage_pending"}` when full) and is retried.

pub mod postgres;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::db::DbError;
use crate::fleet::Fleet;
use crate::metric_names as m;

/// Frames and bytes acked (where there are no acks, as for the MAVLink UDP endpoint: accepted by
/// every required sink), not yet taken by the usage sampler. Shared by the relay's per-agent
/// cursor (which adds) and the sessions of that stream (through which the sampler finds it).
#[derive(Debug, Default)]
pub struct UsageCounters {
    frames: AtomicU64,
    bytes: AtomicU64,
}

impl UsageCounters {
    /// Counts frames.
    pub fn add(&self, frames: u64, bytes: u64) {
        self.frames.fetch_add(frames, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Takes everything counted since the last take.
    pub fn take(&self) -> (u64, u64) {
        (
            self.frames.swap(0, Ordering::Relaxed),
            self.bytes.swap(0, Ordering::Relaxed),
        )
    }
}

/// One hour of one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HourUsage {
    /// Agent id.
    pub agent_id: String,
    /// Start of the hour, ms since the Unix epoch.
    pub hour_start_unix_ms: u64,
    /// Frames acked in that hour.
    pub frames: u64,
    /// Bytes of those frames as received.
    pub bytes: u64,
}

/// One hour in ms.
pub const HOUR_MS: u64 = 3_600_000;

/// Settings of the ledger.
#[derive(Debug, Clone)]
pub struct UsageConfig {
    /// Sampling period; with a database, also the flush period.
    pub period: Duration,
    /// Most (agent, hour) buckets kept in memory (memory store).
    pub max_buckets: usize,
    /// Hours kept in memory (memory store; the database keeps every hour).
    pub retention_hours: u64,
    /// Most (agent, hour) deltas waiting for a flush (database store).
    pub max_pending: usize,
    /// Most counters tracked (live sessions plus recently ended ones).
    pub max_tracked: usize,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            period: Duration::from_secs(10),
            max_buckets: 1_000_000,
            retention_hours: 48,
            max_pending: 200_000,
            max_tracked: 500_000,
        }
    }
}

/// Samples an ended session's counter keeps being taken for (its last batches may still be in a
/// sink queue when it ends).
const GRACE_SAMPLES: u32 = 3;

struct Tracked {
    agent: String,
    counters: Arc<UsageCounters>,
    /// Samples since a live session last showed this counter.
    missed: u32,
}

/// The counters the sampler takes from, by address.
#[derive(Default)]
struct Collector {
    tracked: HashMap<usize, Tracked>,
}

impl Collector {
    /// Everything committed since the last call, per agent.
    fn collect(&mut self, fleet: &Fleet, max_tracked: usize) -> BTreeMap<String, (u64, u64)> {
        for t in self.tracked.values_mut() {
            t.missed += 1;
        }
        // Sessions that ended since the last sample (seen live or not): a full grace period
        // from now.
        for (agent, counters) in fleet.take_ended() {
            let key = Arc::as_ptr(&counters) as usize;
            self.tracked
                .entry(key)
                .and_modify(|t| t.missed = 0)
                .or_insert(Tracked {
                    agent,
                    counters,
                    missed: 0,
                });
        }
        for s in fleet.all() {
            let key = Arc::as_ptr(&s.stats.committed) as usize;
            self.tracked
                .entry(key)
                .and_modify(|t| t.missed = 0)
                .or_insert_with(|| Tracked {
                    agent: s.agent_id.clone(),
                    counters: s.stats.committed.clone(),
                    missed: 0,
                });
        }
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for t in self.tracked.values() {
            let (f, b) = t.counters.take();
            if f > 0 || b > 0 {
                let e = out.entry(t.agent.clone()).or_default();
                e.0 += f;
                e.1 += b;
            }
        }
        self.tracked.retain(|_, t| t.missed <= GRACE_SAMPLES);
        if self.tracked.len() > max_tracked {
            // Ended sessions go first (everything they had is taken above).
            let over = self.tracked.len() - max_tracked;
            let gone: Vec<usize> = self
                .tracked
                .iter()
                .filter(|(_, t)| t.missed > 0)
                .map(|(k, _)| *k)
                .take(over)
                .collect();
            for k in gone {
                self.tracked.remove(&k);
            }
            metrics::counter!(m::LIMIT_HITS, "limit" => "usage_tracked").increment(1);
        }
        out
    }
}

#[derive(Debug, Default)]
struct MemBuckets {
    /// (hour start, agent) → (frames, bytes).
    buckets: BTreeMap<(u64, String), (u64, u64)>,
}

enum Store {
    Memory(Mutex<MemBuckets>),
    Postgres(postgres::PgUsage),
}

/// Hourly usage buckets.
pub struct UsageLedger {
    store: Store,
    collector: Mutex<Collector>,
    cfg: UsageConfig,
}

impl std::fmt::Debug for UsageLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageLedger")
            .field("storage", &self.storage())
            .finish()
    }
}

impl UsageLedger {
    /// An empty in-memory ledger.
    pub fn new(cfg: UsageConfig) -> Self {
        UsageLedger {
            store: Store::Memory(Mutex::default()),
            collector: Mutex::default(),
            cfg,
        }
    }

    /// A ledger that flushes to PostgreSQL (tables of migration `0002_usage`, applied by the
    /// command store's migration runner before this is called).
    pub fn postgres(cfg: UsageConfig, pg: postgres::PgUsage) -> Self {
        UsageLedger {
            store: Store::Postgres(pg),
            collector: Mutex::default(),
            cfg,
        }
    }

    /// `postgres` or `memory`.
    pub fn storage(&self) -> &'static str {
        match self.store {
            Store::Memory(_) => "memory",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Takes what every reachable counter committed since the last sample and adds it to the
    /// hour of `now_unix_ms` (memory) or stages it for the next flush (database).
    pub fn sample(&self, fleet: &Fleet, now_unix_ms: u64) {
        let deltas = self.collector.lock().collect(fleet, self.cfg.max_tracked);
        let hour = now_unix_ms - now_unix_ms % HOUR_MS;
        match &self.store {
            Store::Postgres(pg) => pg.stage(now_unix_ms, hour, deltas),
            Store::Memory(mem) => {
                let mut g = mem.lock();
                for (agent, (f, b)) in deltas {
                    let e = g.buckets.entry((hour, agent)).or_default();
                    e.0 += f;
                    e.1 += b;
                }
                let oldest = hour.saturating_sub(self.cfg.retention_hours.saturating_mul(HOUR_MS));
                while let Some(((h, _), _)) = g.buckets.first_key_value() {
                    if *h >= oldest && g.buckets.len() <= self.cfg.max_buckets {
                        break;
                    }
                    if *h >= oldest {
                        metrics::counter!(m::LIMIT_HITS, "limit" => "usage_buckets").increment(1);
                    }
                    g.buckets.pop_first();
                }
            }
        }
    }

    /// Writes staged deltas to the database (no-op in memory); `Ok(false)` when nothing was
    /// waiting.
    pub async fn flush(&self) -> Result<bool, DbError> {
        match &self.store {
            Store::Postgres(pg) => pg.flush().await,
            Store::Memory(_) => Ok(false),
        }
    }

    /// Buckets of `agent` (all agents when `None`) whose hour overlaps `[from, to)` (ms), ordered
    /// by hour then agent, at most `limit`; from the database, summed over every relay.
    pub async fn query(
        &self,
        agent: Option<&str>,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<HourUsage>, DbError> {
        let start = from - from % HOUR_MS;
        match &self.store {
            Store::Postgres(pg) => pg.query(agent, start, to, limit).await,
            Store::Memory(mem) => {
                let g = mem.lock();
                Ok(g.buckets
                    .range((start, String::new())..)
                    .take_while(|((h, _), _)| *h < to)
                    .filter(|((_, a), _)| agent.is_none_or(|want| want == a))
                    .take(limit)
                    .map(|((h, a), (f, b))| HourUsage {
                        agent_id: a.clone(),
                        hour_start_unix_ms: *h,
                        frames: *f,
                        bytes: *b,
                    })
                    .collect())
            }
        }
    }
}

/// The task that samples (and flushes) the ledger, owned by [`crate::Control`]; a last sample
/// and flush on stop.
#[derive(Debug)]
pub struct UsageSampler {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl UsageSampler {
    /// Samples `fleet` into `ledger` every period and flushes.
    pub fn spawn(ledger: Arc<UsageLedger>, fleet: Arc<Fleet>) -> Self {
        let (tx, mut rx) = oneshot::channel();
        let period = ledger.cfg.period;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tick.tick() => {}
                }
                ledger.sample(&fleet, crate::registry::unix_ms());
                if let Err(e) = ledger.flush().await {
                    tracing::warn!(error = %e, "usage flush failed; kept in memory, retried next period");
                }
            }
            ledger.sample(&fleet, crate::registry::unix_ms());
            // Twice: a flush left in doubt by the last period goes first, then the last sample.
            for _ in 0..2 {
                match ledger.flush().await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "last usage flush failed: unflushed usage is lost");
                        break;
                    }
                }
            }
        });
        UsageSampler {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Takes a last sample, flushes and stops.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for UsageSampler {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{SessionInfo, SessionStats};
    use std::net::SocketAddr;

    fn info(agent: &str, session: &str, committed: &Arc<UsageCounters>) -> Arc<SessionInfo> {
        Arc::new(SessionInfo {
            agent_id: agent.into(),
            session_id: session.into(),
            remote_addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            connected_since_unix_ms: 1,
            stats: Arc::new(SessionStats {
                committed: committed.clone(),
                ..SessionStats::default()
            }),
        })
    }

    async fn rows(l: &UsageLedger, agent: &str, from: u64, to: u64) -> Vec<(u64, u64, u64)> {
        l.query(Some(agent), from, to, 100)
            .await
            .expect("memory query")
            .iter()
            .map(|u| (u.hour_start_unix_ms, u.frames, u.bytes))
            .collect()
    }

    #[tokio::test]
    async fn deltas_land_in_their_hour_once_across_sessions_sharing_a_counter() {
        let fleet = Fleet::new(10);
        let l = UsageLedger::new(UsageConfig::default());
        let h0 = 100 * HOUR_MS;
        let c = Arc::new(UsageCounters::default());
        fleet.session_up(info("a", "s1", &c));
        c.add(10, 1000);
        l.sample(&fleet, h0 + 5);
        c.add(5, 500);
        // The session ends; a resumed one shares the stream's counter (same cursor), and a
        // batch of the old session commits after it ended: all counted once.
        fleet.session_down("a", "s1");
        fleet.session_up(info("a", "s2", &c));
        c.add(3, 300);
        l.sample(&fleet, h0 + HOUR_MS + 1);
        l.sample(&fleet, h0 + HOUR_MS + 2);
        assert_eq!(
            rows(&l, "a", h0, h0 + 2 * HOUR_MS).await,
            [(h0, 10, 1000), (h0 + HOUR_MS, 8, 800)]
        );
        assert_eq!(rows(&l, "a", h0 + HOUR_MS, h0 + 2 * HOUR_MS).await.len(), 1);
        assert!(rows(&l, "b", 0, u64::MAX).await.is_empty());
    }

    #[tokio::test]
    async fn an_ended_session_is_taken_for_a_grace_period_then_forgotten() {
        let fleet = Fleet::new(10);
        let l = UsageLedger::new(UsageConfig::default());
        let h = 7 * HOUR_MS;
        let c = Arc::new(UsageCounters::default());
        fleet.session_up(info("a", "s1", &c));
        l.sample(&fleet, h);
        fleet.session_down("a", "s1");
        // Taken at the sample after it ended (the fleet hands it over), while it is missing for
        // GRACE_SAMPLES more, and once more at the sample that forgets it.
        for i in 0..=GRACE_SAMPLES + 1 {
            c.add(1, 10);
            l.sample(&fleet, h + 1 + u64::from(i));
        }
        assert_eq!(rows(&l, "a", 0, u64::MAX).await, [(h, 5, 50)]);
        // Forgotten now: a later increment is not seen, and nothing counted before is counted
        // again.
        c.add(1, 10);
        l.sample(&fleet, h + 10);
        assert_eq!(rows(&l, "a", 0, u64::MAX).await, [(h, 5, 50)]);
        // A new session sharing the counter makes it reachable again: counted once.
        fleet.session_up(info("a", "s2", &c));
        l.sample(&fleet, h + 11);
        assert_eq!(rows(&l, "a", 0, u64::MAX).await, [(h, 6, 60)]);
    }

    #[tokio::test]
    async fn a_session_that_ends_between_two_samples_is_counted() {
        let fleet = Fleet::new(10);
        let l = UsageLedger::new(UsageConfig::default());
        let h = 9 * HOUR_MS;
        let c = Arc::new(UsageCounters::default());
        fleet.session_up(info("a", "short", &c));
        c.add(2, 20);
        fleet.session_down("a", "short");
        // A superseded session is handed over too.
        let d = Arc::new(UsageCounters::default());
        fleet.session_up(info("b", "old", &d));
        d.add(1, 10);
        fleet.session_up(info("b", "new", &Arc::default()));
        l.sample(&fleet, h);
        assert_eq!(rows(&l, "a", 0, u64::MAX).await, [(h, 2, 20)]);
        assert_eq!(rows(&l, "b", 0, u64::MAX).await, [(h, 1, 10)]);
    }

    #[tokio::test]
    async fn buckets_are_bounded_oldest_first() {
        let fleet = Fleet::new(10);
        let l = UsageLedger::new(UsageConfig {
            max_buckets: 2,
            ..UsageConfig::default()
        });
        let c = Arc::new(UsageCounters::default());
        fleet.session_up(info("a", "s", &c));
        for h in 0..4u64 {
            c.add(1, 0);
            l.sample(&fleet, (1000 + h) * HOUR_MS);
        }
        let hours: Vec<u64> = l
            .query(None, 0, u64::MAX, 10)
            .await
            .expect("query")
            .iter()
            .map(|u| u.hour_start_unix_ms / HOUR_MS)
            .collect();
        assert_eq!(hours, [1002, 1003]);
    }
}
