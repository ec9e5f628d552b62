//! Per-agent quotas: token buckets for frame and byte rates, and damping of reconnect storms.
//! Plain state machines that take `now`, so they are tested with a fake clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

/// `[quotas]` settings; a zero rate disables that limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Sustained frames per second per agent (0: unlimited).
    pub frames_per_sec: u64,
    /// Burst of frames above the rate.
    pub burst_frames: u64,
    /// Sustained bytes per second per agent (0: unlimited).
    pub bytes_per_sec: u64,
    /// Burst of bytes above the rate.
    pub burst_bytes: u64,
    /// What a `Nack RETRY_WITH_BACKOFF` asks the agent to wait.
    pub retry_after_ms: u32,
    /// How long an agent may stay over quota (nacked, or still sending what was nacked)
    /// before its session is closed with `QUOTA_EXCEEDED`.
    pub close_after_ms: u64,
    /// Successful registrations allowed per agent id per minute (0: unlimited); more are
    /// refused with `QUOTA_EXCEEDED` (reconnect-storm damping). Counted only after the agent
    /// authenticated, so nobody else can use up an agent's registrations.
    pub registrations_per_minute: u32,
    /// Agent ids tracked by the reconnect damper (older minutes forgotten first).
    pub max_tracked_agents: usize,
    /// Failed authentications allowed per source IP address per minute (0: unlimited); more
    /// registrations from that address are refused with `QUOTA_EXCEEDED` before their
    /// credentials are checked.
    pub auth_failures_per_minute: u32,
    /// Source addresses tracked by the failed-authentication damper.
    pub max_tracked_sources: usize,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            frames_per_sec: 0,
            burst_frames: 0,
            bytes_per_sec: 0,
            burst_bytes: 0,
            retry_after_ms: 250,
            close_after_ms: 5_000,
            registrations_per_minute: 60,
            max_tracked_agents: 100_000,
            auth_failures_per_minute: 30,
            max_tracked_sources: 100_000,
        }
    }
}

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket (`burst` is raised to at least one second of `rate`).
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(rate) as f64;
        TokenBucket {
            rate: rate as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` tokens if available.
    pub fn try_take(&mut self, n: u64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// The per-session quota state.
#[derive(Debug, Clone)]
pub struct SessionQuota {
    frames: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    over_since: Option<Instant>,
    close_after: Duration,
}

/// What the reader does with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within quota.
    Accept,
    /// Over quota: nack and discard until the agent resends.
    Nack,
    /// Over quota for too long: close with `QUOTA_EXCEEDED`.
    Close,
}

impl SessionQuota {
    /// Quota state for a new session; `None` when no rate limit is configured.
    pub fn new(cfg: &QuotaConfig, now: Instant) -> Option<Self> {
        if cfg.frames_per_sec == 0 && cfg.bytes_per_sec == 0 {
            return None;
        }
        Some(SessionQuota {
            frames: (cfg.frames_per_sec > 0)
                .then(|| TokenBucket::new(cfg.frames_per_sec, cfg.burst_frames, now)),
            bytes: (cfg.bytes_per_sec > 0)
                .then(|| TokenBucket::new(cfg.bytes_per_sec, cfg.burst_bytes, now)),
            over_since: None,
            close_after: Duration::from_millis(cfg.close_after_ms.max(1)),
        })
    }

    /// Judges a batch of `frames` frames and `bytes` bytes.
    pub fn check(&mut self, frames: u64, bytes: u64, now: Instant) -> Verdict {
        let frames_ok = self.frames.as_mut().is_none_or(|b| b.try_take(frames, now));
        let bytes_ok = frames_ok && self.bytes.as_mut().is_none_or(|b| b.try_take(bytes, now));
        if frames_ok && bytes_ok {
            self.over_since = None;
            return Verdict::Accept;
        }
        self.still_over(now)
    }

    /// The agent is still over quota (e.g. sending frames after a nack instead of backing
    /// off): `Close` once that has lasted `close_after`.
    pub fn still_over(&mut self, now: Instant) -> Verdict {
        let since = *self.over_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.close_after {
            Verdict::Close
        } else {
            Verdict::Nack
        }
    }
}

/// Shards of a [`Damper`]: keys hash to one, so concurrent registrations rarely share a lock.
const DAMPER_SHARDS: usize = 16;

/// Counts events per key (agent id, source address) over a sliding minute, bounded in keys.
///
/// Each shard keeps two generations of counts: the current minute and the one before. The
/// count of a key is its current count plus its previous count weighted by how much of the
/// previous minute still lies in the sliding window. Expiry is amortised: a shard drops its
/// older generation when a minute has passed or when the current one is full (so a shard holds
/// at most twice its share of `max_keys`), never by scanning its map per new key.
pub struct Damper<K> {
    limit: u32,
    window: Duration,
    per_shard: usize,
    shards: Vec<Mutex<Generations<K>>>,
    hasher: std::collections::hash_map::RandomState,
}

struct Generations<K> {
    started: Option<Instant>,
    current: HashMap<K, u32>,
    previous: HashMap<K, u32>,
}

impl<K: std::hash::Hash + Eq + Clone> Damper<K> {
    /// A damper allowing `per_minute` events per key (0: off), tracking about `max_keys` keys.
    pub fn new(per_minute: u32, max_keys: usize) -> Self {
        Damper {
            limit: per_minute,
            window: Duration::from_secs(60),
            per_shard: max_keys.div_ceil(DAMPER_SHARDS).max(1),
            shards: (0..DAMPER_SHARDS)
                .map(|_| {
                    Mutex::new(Generations {
                        started: None,
                        current: HashMap::new(),
                        previous: HashMap::new(),
                    })
                })
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The per-minute limit (0: off).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    fn shard(&self, key: &K) -> &Mutex<Generations<K>> {
        use std::hash::BuildHasher;
        &self.shards[(self.hasher.hash_one(key) as usize) % DAMPER_SHARDS]
    }

    /// Counts one event of `key`; false when that makes more than the limit in the last minute.
    pub fn allow(&self, key: &K, now: Instant) -> bool {
        if self.limit == 0 {
            return true;
        }
        let (allowed, dropped) = {
            let mut g = self.shard(key).lock();
            let dropped = g.rotate(now, self.window, self.per_shard, key);
            let allowed = g.estimate(key, now, self.window) < f64::from(self.limit);
            *g.current.entry(key.clone()).or_insert(0) += 1;
            (allowed, dropped)
        };
        // Freed outside the lock.
        drop(dropped);
        allowed
    }

    /// Whether `key` is over the limit now, without counting an event.
    pub fn over(&self, key: &K, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let g = self.shard(key).lock();
        g.estimate(key, now, self.window) >= f64::from(self.limit)
    }

    /// Keys tracked now (both generations).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let g = s.lock();
                g.current.len() + g.previous.len()
            })
            .sum()
    }
}

impl<K: std::hash::Hash + Eq + Clone> Generations<K> {
    /// Starts a new generation when a window has passed or the current one is full; returns
    /// the map dropped, to be freed after the lock is released.
    fn rotate(
        &mut self,
        now: Instant,
        window: Duration,
        cap: usize,
        key: &K,
    ) -> Option<HashMap<K, u32>> {
        let started = *self.started.get_or_insert(now);
        let age = now.saturating_duration_since(started);
        let full = self.current.len() >= cap && !self.current.contains_key(key);
        if age < window && !full {
            return None;
        }
        let old = std::mem::take(&mut self.current);
        self.started = Some(now);
        let stale = std::mem::replace(&mut self.previous, old);
        if age >= window * 2 {
            // The generation just closed ended long ago: none of it is in the window.
            self.previous.clear();
        }
        Some(stale)
    }

    fn estimate(&self, key: &K, now: Instant, window: Duration) -> f64 {
        let current = self.current.get(key).copied().unwrap_or(0);
        let previous = self.previous.get(key).copied().unwrap_or(0);
        let into = self
            .started
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
            .min(window);
        let weight = 1.0 - into.as_secs_f64() / window.as_secs_f64();
        f64::from(current) + f64::from(previous) * weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contrail_protocol::AgentId;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 200, t0);
        assert!(b.try_take(200, t0));
        assert!(!b.try_take(1, t0));
        assert!(b.try_take(50, t0 + Duration::from_millis(500)));
        assert!(!b.try_take(10, t0 + Duration::from_millis(500)));
        assert!(
            b.try_take(200, t0 + Duration::from_secs(10)),
            "refills to burst"
        );
    }

    #[test]
    fn quota_nacks_then_closes_when_it_persists() {
        let cfg = QuotaConfig {
            frames_per_sec: 10,
            burst_frames: 10,
            close_after_ms: 3_000,
            ..QuotaConfig::default()
        };
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut q = SessionQuota::new(&cfg, t0).expect("enabled");
        assert_eq!(q.check(10, 0, t0), Verdict::Accept);
        assert_eq!(q.check(5, 0, t0), Verdict::Nack);
        assert_eq!(q.still_over(t0 + Duration::from_millis(500)), Verdict::Nack);
        assert_eq!(
            q.check(5, 0, t0 + s(1)),
            Verdict::Accept,
            "refilled; over-quota state reset"
        );
        assert_eq!(q.check(50, 0, t0 + s(1)), Verdict::Nack);
        assert_eq!(q.check(50, 0, t0 + s(2)), Verdict::Nack);
        assert_eq!(
            q.still_over(t0 + s(4)),
            Verdict::Close,
            "over quota for 3 s"
        );
        assert!(SessionQuota::new(&QuotaConfig::default(), t0).is_none());
    }

    #[test]
    fn damper_limits_events_per_sliding_minute_and_is_bounded() {
        let d = Damper::new(3, 32);
        let t0 = Instant::now();
        let a = AgentId::new("a").expect("id");
        assert!(d.allow(&a, t0));
        assert!(d.allow(&a, t0));
        assert!(d.allow(&a, t0));
        assert!(d.over(&a, t0));
        assert!(!d.allow(&a, t0 + Duration::from_secs(1)));
        // One minute on, the last minute still weighs in (sliding window) ...
        assert!(!d.allow(&a, t0 + Duration::from_secs(61)));
        // ... two minutes on nothing does.
        assert!(d.allow(&a, t0 + Duration::from_secs(190)));
        // Bounded: many keys in one minute keep at most two generations per shard.
        for i in 0..10_000 {
            let k = AgentId::new(format!("k{i}")).expect("id");
            d.allow(&k, t0 + Duration::from_secs(200));
        }
        assert!(d.tracked() <= 2 * 32 + 2 * DAMPER_SHARDS, "{}", d.tracked());
        assert!(Damper::<u32>::new(0, 1).allow(&7, t0), "0 turns it off");
    }
}
