//! What every task of a run shares: the clock epoch, the measured window, counters, histograms.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::hist::ShardedHist;
use crate::scenario::Plan;

/// Histogram shards: enough that agents rarely share a lock at the same moment.
const SHARDS: usize = 32;

/// Shared state of one run.
pub struct RunCtx {
    /// The plan.
    pub plan: Plan,
    /// The MAVLink vehicle mix, when the plan's payload is `mavlink-mix`.
    pub mix: Option<crate::mavmix::MavlinkMix>,
    /// Monotonic epoch; times are ns since it.
    pub epoch: Instant,
    /// The same moment on the wall clock, Unix ns (frames carry wall-clock stamps).
    pub epoch_unix_ns: u64,
    /// Prefix of this run's agent ids (`{prefix}{index}`).
    pub id_prefix: String,
    /// Start of the measured window, ns since epoch (`u64::MAX` until known).
    measure_from: AtomicU64,
    /// End of the measured window, ns since epoch.
    measure_to: AtomicU64,
    /// Frames handed to the agent library (or written to the broker).
    pub sent: AtomicU64,
    /// Frames acked (cumulative across agents).
    pub acked: AtomicU64,
    /// Distinct frames the subscriber received.
    pub delivered: AtomicU64,
    /// Frames the subscriber received again.
    pub dups: AtomicU64,
    /// Sessions registered and not ended.
    pub sessions_up: AtomicU64,
    /// Connect attempts finished (either way).
    pub connects_done: AtomicU64,
    /// When the last connect attempt finished, ns since epoch.
    pub last_connect_ns: AtomicU64,
    /// Nacks received.
    pub nacks: AtomicU64,
    /// Reconnects.
    pub reconnects: AtomicU64,
    /// Errors by code.
    errors: Mutex<BTreeMap<String, u64>>,
    /// Send → ack latency.
    pub ack_hist: ShardedHist,
    /// Send → subscriber latency.
    pub e2e_hist: ShardedHist,
    /// Intended send time → handed to the agent library or broker client (fixed-rate runs):
    /// how late the load generator itself was.
    pub send_lag_hist: ShardedHist,
    /// Handed to the client library → subscriber (every target: e2e without the load
    /// generator's own send lag).
    pub handoff_hist: ShardedHist,
    /// Send → the relay's receive stamp (Contrail e2e, one clock).
    pub to_relay_hist: ShardedHist,
    /// The relay's receive stamp → subscriber (Contrail e2e, one clock).
    pub from_relay_hist: ShardedHist,
    /// Connect + register time.
    pub connect_hist: ShardedHist,
    /// Turns true when streaming agents may start sending (after the plan's idle phase).
    pub go: tokio::sync::watch::Sender<bool>,
}

impl RunCtx {
    /// A context for `plan`, with agent ids `{prefix}{index}`.
    pub fn new(plan: Plan, id_prefix: String) -> Self {
        let epoch = Instant::now();
        RunCtx {
            mix: plan
                .mavlink_mix
                .then(|| crate::mavmix::MavlinkMix::vehicle(1)),
            plan,
            epoch,
            epoch_unix_ns: unix_ns(),
            id_prefix,
            measure_from: AtomicU64::new(u64::MAX),
            measure_to: AtomicU64::new(u64::MAX),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            sessions_up: AtomicU64::new(0),
            connects_done: AtomicU64::new(0),
            last_connect_ns: AtomicU64::new(0),
            nacks: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            ack_hist: ShardedHist::new(SHARDS),
            e2e_hist: ShardedHist::new(SHARDS),
            send_lag_hist: ShardedHist::new(SHARDS),
            handoff_hist: ShardedHist::new(1),
            to_relay_hist: ShardedHist::new(1),
            from_relay_hist: ShardedHist::new(1),
            connect_hist: ShardedHist::new(SHARDS),
            go: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Nanoseconds since the epoch.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The instant `ns` after the epoch.
    pub fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// Sets the measured window `[from, to)`, ns since epoch.
    pub fn set_window(&self, from: u64, to: u64) {
        self.measure_to.store(to, Relaxed);
        self.measure_from.store(from, Relaxed);
    }

    /// Whether a frame sent (or scheduled) at `t_ns` belongs to the measured window.
    #[inline]
    pub fn measured(&self, t_ns: u64) -> bool {
        t_ns >= self.measure_from.load(Relaxed) && t_ns < self.measure_to.load(Relaxed)
    }

    /// A connect attempt finished.
    pub fn connect_finished(&self, _ok: bool) {
        self.last_connect_ns.fetch_max(self.now_ns(), Relaxed);
        self.connects_done.fetch_add(1, Relaxed);
    }

    /// Counts one error under `code`.
    pub fn error(&self, code: impl Into<String>) {
        *self.errors.lock().entry(code.into()).or_default() += 1;
    }

    /// Errors so far.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().clone()
    }

    /// The agent id of agent `idx`.
    pub fn agent_id(&self, idx: usize) -> String {
        format!("{}{idx}", self.id_prefix)
    }

    /// The agent index in `agent_id`, if it is one of this run's.
    pub fn agent_index(&self, agent_id: &str) -> Option<usize> {
        agent_id
            .strip_prefix(self.id_prefix.as_str())?
            .parse::<usize>()
            .ok()
            .filter(|&i| i < self.plan.agents)
    }
}

/// What one agent (publisher) ended with.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentEnd {
    /// Last seq sent (seqs are `1..=sent`).
    pub sent: u64,
    /// Cumulative acked seq at the end (`sent` for targets without acks).
    pub acked: u64,
}

/// Wall clock, Unix ns.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A prefix unique to this run, so that agent ids of earlier runs never collide.
pub fn run_prefix() -> String {
    format!("lg{:x}{:04x}-", std::process::id(), rand::random::<u16>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Overrides, Plan};

    #[test]
    fn agent_ids_round_trip_and_foreign_ids_are_ignored() {
        let plan = Plan::build(
            None,
            &Overrides {
                agents: Some(10),
                ..Overrides::default()
            },
        )
        .expect("plan");
        let ctx = RunCtx::new(plan, "lgtest-".into());
        assert_eq!(ctx.agent_index(&ctx.agent_id(7)), Some(7));
        assert_eq!(ctx.agent_index("lgtest-10"), None, "out of range");
        assert_eq!(ctx.agent_index("drone-1"), None);
        assert!(
            !ctx.measured(5),
            "nothing measured before the window is known"
        );
        ctx.set_window(10, 20);
        assert!(ctx.measured(10) && !ctx.measured(20) && !ctx.measured(9));
    }
}
