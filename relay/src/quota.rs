//! Per-agent quotas: token buckets for frame and byte rates, and damping of reconnect storms.
//! Plain state machines that take `now`, so they are tested with a fake clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use contrail_protocol::AgentId;
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
    /// Registrations allowed per agent id per minute (0: unlimited); more are refused with
    /// `QUOTA_EXCEEDED` (reconnect-storm damping).
    pub registrations_per_minute: u32,
    /// Agents tracked by the damper (oldest forgotten first).
    pub max_tracked_agents: usize,
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

/// Counts registrations per agent id in one-minute windows; bounded in agents.
pub struct FlapDamper {
    limit: u32,
    max_agents: usize,
    window: Duration,
    seen: Mutex<HashMap<AgentId, (Instant, u32)>>,
}

impl FlapDamper {
    /// A damper allowing `per_minute` registrations per agent (0: off).
    pub fn new(per_minute: u32, max_agents: usize) -> Self {
        FlapDamper {
            limit: per_minute,
            max_agents: max_agents.max(1),
            window: Duration::from_secs(60),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `agent` may register now.
    pub fn allow(&self, agent: &AgentId, now: Instant) -> bool {
        if self.limit == 0 {
            return true;
        }
        let mut seen = self.seen.lock();
        if !seen.contains_key(agent) && seen.len() >= self.max_agents {
            let window = self.window;
            seen.retain(|_, (start, _)| now.saturating_duration_since(*start) < window);
            if seen.len() >= self.max_agents {
                if let Some(oldest) = seen
                    .iter()
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(k, _)| k.clone())
                {
                    seen.remove(&oldest);
                }
            }
        }
        let entry = seen.entry(agent.clone()).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn damper_limits_registrations_per_minute_and_is_bounded() {
        let d = FlapDamper::new(3, 2);
        let t0 = Instant::now();
        let a = AgentId::new("a").expect("id");
        assert!(d.allow(&a, t0));
        assert!(d.allow(&a, t0));
        assert!(d.allow(&a, t0));
        assert!(!d.allow(&a, t0 + Duration::from_secs(1)));
        assert!(d.allow(&a, t0 + Duration::from_secs(61)), "new window");
        let b = AgentId::new("b").expect("id");
        let c = AgentId::new("c").expect("id");
        assert!(d.allow(&b, t0 + Duration::from_secs(62)));
        assert!(d.allow(&c, t0 + Duration::from_secs(63)));
        assert!(d.seen.lock().len() <= 2, "bounded");
    }
}
