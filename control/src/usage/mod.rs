//! Usage per agent in hourly buckets, in memory (the PostgreSQL store of the downlink issue is
//! not there yet: until it is, buckets do not survive a restart, and `GET /v1/usage` says
//! `"storage": "memory"`).
//!
//! A sampler reads every agent's running totals from the [`Fleet`] (ended sessions plus the live
//! one) each period and adds the difference since the previous sample to the bucket of the hour
//! it falls in. So a frame is counted once, in the hour of the sample that first saw it (at most
//! one period late). Bounded: at most `max_buckets` (agent, hour) buckets and `retention_hours`
//! hours; the oldest hours go first (`contrail_limit_hits_total{limit="usage_buckets"}`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::fleet::Fleet;

/// One hour of one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HourUsage {
    /// Agent id.
    pub agent_id: String,
    /// Start of the hour, ms since the Unix epoch.
    pub hour_start_unix_ms: u64,
    /// Frames accepted in that hour.
    pub frames: u64,
    /// Bytes accepted in that hour.
    pub bytes: u64,
}

const HOUR_MS: u64 = 3_600_000;

/// Settings of the ledger.
#[derive(Debug, Clone)]
pub struct UsageConfig {
    /// Sampling period.
    pub period: Duration,
    /// Most (agent, hour) buckets kept.
    pub max_buckets: usize,
    /// Hours kept.
    pub retention_hours: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            period: Duration::from_secs(10),
            max_buckets: 1_000_000,
            retention_hours: 48,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Running totals last seen per agent.
    last: HashMap<String, (u64, u64)>,
    /// (hour start, agent) → (frames, bytes).
    buckets: BTreeMap<(u64, String), (u64, u64)>,
}

/// Hourly usage buckets.
#[derive(Debug)]
pub struct UsageLedger {
    inner: Mutex<Inner>,
    cfg: UsageConfig,
}

impl UsageLedger {
    /// An empty ledger.
    pub fn new(cfg: UsageConfig) -> Self {
        UsageLedger {
            inner: Mutex::new(Inner::default()),
            cfg,
        }
    }

    /// Folds the fleet's totals at `now_unix_ms` into the buckets.
    pub fn sample(&self, fleet: &Fleet, now_unix_ms: u64) {
        let totals = fleet.usage_list(0, usize::MAX);
        let hour = now_unix_ms - now_unix_ms % HOUR_MS;
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let mut seen = HashMap::with_capacity(totals.len());
        for u in totals {
            let (pf, pb) = inner.last.get(&u.agent_id).copied().unwrap_or((0, 0));
            // Totals only grow while the fleet keeps the agent; smaller means it was evicted and
            // came back: everything is new.
            let (df, db) = if u.total_frames >= pf && u.total_bytes >= pb {
                (u.total_frames - pf, u.total_bytes - pb)
            } else {
                (u.total_frames, u.total_bytes)
            };
            if df > 0 || db > 0 {
                let b = inner.buckets.entry((hour, u.agent_id.clone())).or_default();
                b.0 += df;
                b.1 += db;
            }
            seen.insert(u.agent_id, (u.total_frames, u.total_bytes));
        }
        inner.last = seen;
        let oldest = hour.saturating_sub(self.cfg.retention_hours.saturating_mul(HOUR_MS));
        while let Some(((h, _), _)) = inner.buckets.first_key_value() {
            if *h >= oldest && inner.buckets.len() <= self.cfg.max_buckets {
                break;
            }
            if *h >= oldest {
                metrics::counter!("contrail_limit_hits_total", "limit" => "usage_buckets")
                    .increment(1);
            }
            inner.buckets.pop_first();
        }
    }

    /// Buckets of `agent` (all agents when `None`) whose hour overlaps `[from, to)` (ms), ordered
    /// by hour then agent, at most `limit`.
    pub fn query(&self, agent: Option<&str>, from: u64, to: u64, limit: usize) -> Vec<HourUsage> {
        let start = from - from % HOUR_MS;
        let g = self.inner.lock();
        g.buckets
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
            .collect()
    }
}

/// The task that samples the ledger (owned by [`crate::Control`]; a last sample on stop).
#[derive(Debug)]
pub struct UsageSampler {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl UsageSampler {
    /// Samples `fleet` into `ledger` every period.
    pub fn spawn(ledger: Arc<UsageLedger>, fleet: Arc<Fleet>) -> Self {
        let (tx, mut rx) = oneshot::channel();
        let period = ledger.cfg.period;
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tokio::time::sleep(period) => {}
                }
                ledger.sample(&fleet, crate::registry::unix_ms());
            }
            ledger.sample(&fleet, crate::registry::unix_ms());
        });
        UsageSampler {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Takes a last sample and stops.
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
    use crate::fleet::SessionInfo;
    use std::net::SocketAddr;
    use std::sync::atomic::Ordering;

    fn info(agent: &str, session: &str) -> Arc<SessionInfo> {
        Arc::new(SessionInfo {
            agent_id: agent.into(),
            session_id: session.into(),
            remote_addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            connected_since_unix_ms: 1,
            stats: Arc::default(),
        })
    }

    #[test]
    fn deltas_land_in_their_hour_once_across_sessions() {
        let fleet = Fleet::new(10);
        let l = UsageLedger::new(UsageConfig::default());
        let h0 = 100 * HOUR_MS;
        let a = info("a", "s1");
        fleet.session_up(a.clone());
        a.stats.frames.store(10, Ordering::Relaxed);
        a.stats.bytes.store(1000, Ordering::Relaxed);
        l.sample(&fleet, h0 + 5);
        a.stats.frames.store(15, Ordering::Relaxed);
        a.stats.bytes.store(1500, Ordering::Relaxed);
        // The session ends and a new one starts in the next hour: its frames and the 5 the old
        // one sent since the last sample are counted once.
        fleet.session_down("a", "s1");
        let b = info("a", "s2");
        fleet.session_up(b.clone());
        b.stats.frames.store(3, Ordering::Relaxed);
        b.stats.bytes.store(300, Ordering::Relaxed);
        l.sample(&fleet, h0 + HOUR_MS + 1);
        l.sample(&fleet, h0 + HOUR_MS + 2);
        let q = l.query(Some("a"), h0, h0 + 2 * HOUR_MS, 100);
        assert_eq!(
            q.iter()
                .map(|u| (u.hour_start_unix_ms, u.frames, u.bytes))
                .collect::<Vec<_>>(),
            [(h0, 10, 1000), (h0 + HOUR_MS, 8, 800)]
        );
        assert_eq!(
            l.query(Some("a"), h0 + HOUR_MS, h0 + 2 * HOUR_MS, 100)
                .len(),
            1
        );
        assert!(l.query(Some("b"), 0, u64::MAX, 100).is_empty());
    }

    #[test]
    fn buckets_are_bounded_oldest_first() {
        let fleet = Fleet::new(10);
        let l = UsageLedger::new(UsageConfig {
            max_buckets: 2,
            ..UsageConfig::default()
        });
        let a = info("a", "s");
        fleet.session_up(a.clone());
        for h in 0..4u64 {
            a.stats.frames.store(h + 1, Ordering::Relaxed);
            l.sample(&fleet, (1000 + h) * HOUR_MS);
        }
        let hours: Vec<u64> = l
            .query(None, 0, u64::MAX, 10)
            .iter()
            .map(|u| u.hour_start_unix_ms / HOUR_MS)
            .collect();
        assert_eq!(hours, [1002, 1003]);
    }
}
