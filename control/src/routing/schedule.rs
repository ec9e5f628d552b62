//! When the routing publisher connects, flushes, refreshes and backs off: a plain struct driven
//! with an explicit `now`, so it is tested without Redis or a clock.

use std::time::{Duration, Instant};

/// What the publisher should do on this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Not connected and the backoff has elapsed: try to connect.
    Connect,
    /// Not connected, still backing off.
    Wait,
    /// Connected: flush pending changes, and refresh every live session if `refresh`.
    Work {
        /// Refresh (or, after a reconnect, republish) every live session.
        refresh: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Disconnected { retry_at: Instant },
    Connected,
}

/// Connection, refresh and backoff state.
#[derive(Debug, Clone)]
pub struct Schedule {
    refresh_every: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    conn: Conn,
    failures: u32,
    /// Every live session must be (re)published before the next plain flush counts as done.
    full_pending: bool,
    next_refresh: Instant,
}

impl Schedule {
    /// Starts disconnected with an immediate first attempt; refreshes every `ttl / 2`.
    pub fn new(
        now: Instant,
        ttl: Duration,
        backoff_initial: Duration,
        backoff_max: Duration,
    ) -> Self {
        Self {
            refresh_every: (ttl / 2).max(Duration::from_millis(1)),
            backoff_initial,
            backoff_max: backoff_max.max(backoff_initial),
            conn: Conn::Disconnected { retry_at: now },
            failures: 0,
            full_pending: true,
            next_refresh: now,
        }
    }

    /// Decides what to do at `now`.
    pub fn poll(&self, now: Instant) -> Action {
        match self.conn {
            Conn::Disconnected { retry_at } if now >= retry_at => Action::Connect,
            Conn::Disconnected { .. } => Action::Wait,
            Conn::Connected => Action::Work {
                refresh: self.full_pending || now >= self.next_refresh,
            },
        }
    }

    /// A connection was established: everything must be republished.
    pub fn on_connected(&mut self) {
        self.conn = Conn::Connected;
        self.failures = 0;
        self.full_pending = true;
    }

    /// Every live session was refreshed at `now`.
    pub fn on_refreshed(&mut self, now: Instant) {
        self.full_pending = false;
        self.next_refresh = now + self.refresh_every;
    }

    /// A connect or a pipeline failed at `now`; returns the delay before the next attempt.
    pub fn on_failure(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(20);
        let delay = self
            .backoff_initial
            .saturating_mul(1u32 << shift)
            .min(self.backoff_max);
        self.conn = Conn::Disconnected {
            retry_at: now + delay,
        };
        self.full_pending = true;
        delay
    }

    /// Whether a connection is believed up.
    pub fn is_connected(&self) -> bool {
        self.conn == Conn::Connected
    }

    /// Interval between refreshes.
    pub fn refresh_every(&self) -> Duration {
        self.refresh_every
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn connects_republishes_then_refreshes_every_half_ttl() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, Duration::from_secs(2), 100 * MS, 1000 * MS);
        assert_eq!(s.poll(t0), Action::Connect);
        s.on_connected();
        assert_eq!(s.poll(t0), Action::Work { refresh: true });
        s.on_refreshed(t0);
        assert_eq!(s.poll(t0 + 999 * MS), Action::Work { refresh: false });
        assert_eq!(s.poll(t0 + 1000 * MS), Action::Work { refresh: true });
    }

    #[test]
    fn backoff_doubles_up_to_cap_and_resets() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, Duration::from_secs(45), 100 * MS, 500 * MS);
        let delays: Vec<_> = (0..5).map(|_| s.on_failure(t0)).collect();
        assert_eq!(delays, [100 * MS, 200 * MS, 400 * MS, 500 * MS, 500 * MS]);
        assert_eq!(s.poll(t0 + 499 * MS), Action::Wait);
        assert_eq!(s.poll(t0 + 500 * MS), Action::Connect);
        s.on_connected();
        assert_eq!(s.on_failure(t0), 100 * MS);
    }

    #[test]
    fn failure_after_refresh_forces_full_republish() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, Duration::from_secs(45), MS, MS);
        s.on_connected();
        s.on_refreshed(t0);
        s.on_failure(t0);
        s.on_connected();
        assert_eq!(s.poll(t0 + MS), Action::Work { refresh: true });
    }
}
