//! The subscriber side of the harness, shared by every target: match each delivered frame to
//! its agent and seq, count unique deliveries and duplicates exactly, and record end-to-end
//! latency from the frame's (intended) send time.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::ctx::{unix_ns, RunCtx};
use crate::hist;
use crate::track::{Seen, SeqTracker};

/// One frame (message) the subscriber received.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivery {
    /// The agent (publisher) index; `None` for a frame that is not this run's.
    pub idx: Option<usize>,
    /// The agent's seq.
    pub seq: u64,
    /// Intended send time for fixed-rate runs, the actual one otherwise (Unix ns, 0 unknown).
    pub stamp: u64,
    /// When the load generator handed the frame to the client library (Unix ns, 0 unknown).
    pub handed: u64,
    /// The relay's receive stamp (Unix ns, 0 unknown: brokers have none).
    pub relay_rx: u64,
}

/// Per-agent delivery trackers (≈ 56 bytes per agent) and the run's counters.
pub struct DeliveryBook {
    ctx: Arc<RunCtx>,
    trackers: Vec<SeqTracker>,
    /// Frames from agents not in this run (ignored).
    pub foreign: u64,
}

impl DeliveryBook {
    /// A book for every agent of the run.
    pub fn new(ctx: Arc<RunCtx>) -> Self {
        let n = ctx.plan.agents;
        DeliveryBook {
            ctx,
            trackers: vec![SeqTracker::new(); n],
            foreign: 0,
        }
    }

    /// Records a batch of deliveries received at one moment. `frames` yields
    /// `(agent index, seq, stamp_unix_ns)`, where the stamp is the intended send time for
    /// fixed-rate runs (coordinated-omission correction) or the actual one otherwise.
    #[cfg(test)]
    pub fn record_batch(&mut self, frames: impl Iterator<Item = (Option<usize>, u64, u64)>) {
        self.record(frames.map(|(idx, seq, stamp)| Delivery {
            idx,
            seq,
            stamp,
            ..Delivery::default()
        }));
    }

    /// Records a batch of deliveries received at one moment, one histogram lock and one clock
    /// reading per call. The end-to-end latency of each new frame is measured from its
    /// `stamp`; where known it is also split at the hand-over to the client (handed →
    /// subscriber) and at the relay's receive stamp (stamp → relay, relay → subscriber),
    /// meaningful when everything runs on one clock.
    pub fn record(&mut self, frames: impl Iterator<Item = Delivery>) {
        let now_unix = unix_ns();
        let epoch_unix = self.ctx.epoch_unix_ns;
        let mut new = 0u64;
        let mut dups = 0u64;
        let mut shard = self.ctx.e2e_hist.shard(0);
        let mut handoff = self.ctx.handoff_hist.shard(0);
        let mut to_relay = self.ctx.to_relay_hist.shard(0);
        let mut from_relay = self.ctx.from_relay_hist.shard(0);
        for d in frames {
            let Some(t) = d.idx.and_then(|i| self.trackers.get_mut(i)) else {
                self.foreign += 1;
                continue;
            };
            match t.record(d.seq) {
                Seen::New => {
                    new += 1;
                    if d.stamp > 0 && self.ctx.measured(d.stamp.saturating_sub(epoch_unix)) {
                        hist::record_n(&mut shard, now_unix.saturating_sub(d.stamp), 1);
                        if d.handed > 0 {
                            hist::record_n(&mut handoff, now_unix.saturating_sub(d.handed), 1);
                        }
                        if d.relay_rx > 0 {
                            hist::record_n(&mut to_relay, d.relay_rx.saturating_sub(d.stamp), 1);
                            hist::record_n(&mut from_relay, now_unix.saturating_sub(d.relay_rx), 1);
                        }
                    }
                }
                Seen::Dup => dups += 1,
            }
        }
        drop((shard, handoff, to_relay, from_relay));
        self.ctx.delivered.fetch_add(new, Relaxed);
        if dups > 0 {
            self.ctx.dups.fetch_add(dups, Relaxed);
        }
    }

    /// The tracker of agent `idx`.
    pub fn tracker(&self, idx: usize) -> Option<&SeqTracker> {
        self.trackers.get(idx)
    }

    /// Distinct deliveries of agent `idx` with seq `<= up_to`.
    pub fn unique_through(&self, idx: usize, up_to: u64) -> u64 {
        self.trackers
            .get(idx)
            .map_or(0, |t| t.unique_through(up_to))
    }

    /// Frames this agent's subscriber has seen: (unique, dups, skipped).
    pub fn totals(&self) -> (u64, u64, u64) {
        self.trackers.iter().fold((0, 0, 0), |(u, d, s), t| {
            (u + t.unique, d + t.dups, s + t.skipped)
        })
    }
}

/// Frames lost: for each agent, frames up to its reference seq (acked, or sent when the target
/// has no acks) that the subscriber never saw.
pub fn losses(book: &DeliveryBook, reference: &[u64]) -> u64 {
    reference
        .iter()
        .enumerate()
        .map(|(i, &r)| r.saturating_sub(book.unique_through(i, r)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist::Percentiles;
    use crate::scenario::{Overrides, Plan};

    fn ctx(agents: usize) -> Arc<RunCtx> {
        let plan = Plan::build(
            None,
            &Overrides {
                agents: Some(agents),
                ..Overrides::default()
            },
        )
        .expect("plan");
        Arc::new(RunCtx::new(plan, "t-".into()))
    }

    #[test]
    fn loss_and_dups_are_exact_per_agent() {
        let ctx = ctx(2);
        let mut book = DeliveryBook::new(ctx.clone());
        // agent 0: 1..=10 minus 7, with 3 twice; agent 1: 1..=5; one foreign frame.
        let frames = (1..=10u64)
            .filter(|s| *s != 7)
            .map(|s| (Some(0), s, 0))
            .chain([(Some(0), 3, 0)])
            .chain((1..=5).map(|s| (Some(1), s, 0)))
            .chain([(None, 1, 0)]);
        book.record_batch(frames);
        assert_eq!(book.totals(), (14, 1, 0));
        assert_eq!(book.foreign, 1);
        assert_eq!(losses(&book, &[10, 5]), 1);
        assert_eq!(
            losses(&book, &[10, 6]),
            2,
            "agent 1's seq 6 was acked, never delivered"
        );
        assert_eq!(ctx.delivered.load(Relaxed), 14);
        assert_eq!(ctx.dups.load(Relaxed), 1);
    }

    #[test]
    fn latency_is_recorded_only_inside_the_window() {
        let ctx = ctx(1);
        let mut book = DeliveryBook::new(ctx.clone());
        let e = ctx.epoch_unix_ns;
        ctx.set_window(1_000, u64::MAX);
        book.record_batch([(Some(0), 1, e + 10), (Some(0), 2, e + 2_000)].into_iter());
        assert_eq!(ctx.e2e_hist.snapshot().len(), 1);
        assert!(
            ctx.to_relay_hist.snapshot().is_empty(),
            "no relay stamp, no split"
        );
    }

    #[test]
    fn relayed_frames_split_e2e_at_the_relay_stamp() {
        let ctx = ctx(1);
        let mut book = DeliveryBook::new(ctx.clone());
        ctx.set_window(0, u64::MAX);
        let sent = unix_ns() - 10_000_000; // 10 ms ago
        let relay_rx = sent + 4_000_000; // the relay had it 4 ms later
        let d = Delivery {
            idx: Some(0),
            seq: 1,
            stamp: sent,
            handed: sent + 1_000_000, // handed to the client library 1 ms late
            relay_rx,
        };
        book.record([d, d].into_iter());
        let to_relay = Percentiles::of(&ctx.to_relay_hist.snapshot());
        let from_relay = Percentiles::of(&ctx.from_relay_hist.snapshot());
        assert_eq!(
            (to_relay.count, from_relay.count),
            (1, 1),
            "a duplicate is not measured"
        );
        assert!((to_relay.p50_us - 4_000.0).abs() < 10.0, "{to_relay:?}");
        assert!(from_relay.p50_us >= 6_000.0, "{from_relay:?}");
        let e2e = Percentiles::of(&ctx.e2e_hist.snapshot());
        assert!(e2e.p50_us >= 10_000.0, "{e2e:?}");
        let handoff = Percentiles::of(&ctx.handoff_hist.snapshot());
        assert_eq!(handoff.count, 1);
        assert!(
            handoff.p50_us >= 9_000.0 && handoff.p50_us < e2e.p50_us,
            "{handoff:?} {e2e:?}"
        );
    }
}
