//! Per-agent bookkeeping with bounded memory and no allocation per frame.
//!
//! * [`SendLog`]: when each unacked run of seqs was sent (or was meant to be sent), so that a
//!   cumulative ack yields one latency sample **per newly acked frame** (recorded with
//!   `record_n` per run, not one call per frame). Bounded by the credit window: the agent never
//!   has more than `max_inflight` frames unacked, and every entry holds at least one.
//! * [`SeqTracker`]: which seqs of one agent a subscriber has seen: everything below `next`,
//!   plus a 128-frame bitmap above it for out-of-order arrivals. Counts unique deliveries and
//!   duplicates exactly while frames arrive at most 128 seqs out of order (the relay delivers
//!   each agent's frames in order, so in practice they arrive in order).

use std::collections::VecDeque;

/// Send times of unacked runs of seqs. It grows to the runs actually outstanding (a few for
/// a fixed-rate agent, at most a credit window's worth) and keeps that capacity, so an idle or
/// slow simulated agent holds no window's worth of slots up front.
#[derive(Debug, Default)]
pub struct SendLog {
    runs: VecDeque<Run>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: u64,
    last: u64,
    at_ns: u64,
}

impl SendLog {
    /// Seqs `first..=last` were sent (or scheduled) at `at_ns` (ns since the run's epoch).
    pub fn sent(&mut self, first: u64, last: u64, at_ns: u64) {
        if last >= first {
            self.runs.push_back(Run { first, last, at_ns });
        }
    }

    /// Whether nothing is unacked.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The cumulative ack moved to `up_to`: calls `each(sent_at_ns, frames)` once per run (or
    /// the acked part of a run) that it covers, oldest first. Returns the frames newly acked.
    pub fn acked(&mut self, up_to: u64, mut each: impl FnMut(u64, u64)) -> u64 {
        let mut total = 0;
        while let Some(front) = self.runs.front_mut() {
            if front.first > up_to {
                break;
            }
            let end = front.last.min(up_to);
            let n = end - front.first + 1;
            each(front.at_ns, n);
            total += n;
            if end == front.last {
                self.runs.pop_front();
            } else {
                front.first = end + 1;
            }
        }
        total
    }
}

/// Width of the out-of-order window, in seqs.
pub const WINDOW: u64 = 128;

/// What one agent's subscriber has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// Every seq below this was seen (seqs start at 1).
    next: u64,
    /// Bit `i` set: seq `next + 1 + i` was seen (`next` itself is never set, or `next` would move).
    ahead: u128,
    /// Distinct seqs seen.
    pub unique: u64,
    /// Seqs seen again.
    pub dups: u64,
    /// Seqs skipped when a frame arrived more than [`WINDOW`] ahead of a gap (counted once).
    pub skipped: u64,
}

/// What [`SeqTracker::record`] made of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time.
    New,
    /// Already seen.
    Dup,
}

impl SeqTracker {
    /// A tracker expecting seq 1 first.
    pub fn new() -> Self {
        SeqTracker {
            next: 1,
            ..SeqTracker::default()
        }
    }

    /// Lowest seq not yet seen.
    pub fn next_expected(&self) -> u64 {
        self.next
    }

    /// Records a delivery of `seq` (0 is ignored as a dup: real seqs start at 1).
    pub fn record(&mut self, seq: u64) -> Seen {
        if self.next == 0 {
            self.next = 1;
        }
        if seq < self.next {
            self.dups += 1;
            return Seen::Dup;
        }
        let off = loop {
            if seq == self.next {
                self.unique += 1;
                self.move_past_next();
                return Seen::New;
            }
            // seq > next: a gap before it.
            let off = seq - self.next - 1;
            if off < WINDOW {
                break off;
            }
            if self.ahead == 0 {
                // Nothing seen in the window: jump so that `seq` is its last bit.
                let target = seq - WINDOW;
                self.skipped += target - self.next;
                self.next = target;
            } else {
                self.give_up_next();
            }
        };
        let bit = 1u128 << off;
        if self.ahead & bit != 0 {
            self.dups += 1;
            Seen::Dup
        } else {
            self.ahead |= bit;
            self.unique += 1;
            Seen::New
        }
    }

    /// Moves `next` past itself and the run of already-seen seqs after it.
    fn move_past_next(&mut self) {
        // Bit 0 describes `next + 1`, which becomes the new `next`.
        let run = u64::from(self.ahead.trailing_ones());
        self.next += 1 + run;
        self.ahead = if run + 1 >= 128 {
            0
        } else {
            self.ahead >> (run + 1)
        };
    }

    /// Gives up on the unseen `next` (counted as skipped).
    fn give_up_next(&mut self) {
        self.skipped += 1;
        self.move_past_next();
    }

    /// Distinct seqs seen that are `<= up_to` — exact when nothing was skipped.
    pub fn unique_through(&self, up_to: u64) -> u64 {
        if up_to < self.next {
            return up_to;
        }
        let span = (up_to - self.next).min(WINDOW) as u32;
        let mask = if span >= 128 {
            u128::MAX
        } else {
            (1u128 << span) - 1
        };
        (self.next - 1 - self.skipped) + u64::from((self.ahead & mask).count_ones())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_latency_is_one_sample_per_frame_in_runs() {
        let mut log = SendLog::default();
        log.sent(1, 4, 100);
        log.sent(5, 5, 200);
        log.sent(6, 10, 300);
        let mut got = Vec::new();
        assert_eq!(log.acked(7, |at, n| got.push((at, n))), 7);
        assert_eq!(got, vec![(100, 4), (200, 1), (300, 2)]);
        got.clear();
        assert_eq!(
            log.acked(7, |at, n| got.push((at, n))),
            0,
            "no double count"
        );
        assert_eq!(log.acked(10, |at, n| got.push((at, n))), 3);
        assert_eq!(got, vec![(300, 3)]);
        assert!(log.is_empty());
    }

    #[test]
    fn in_order_deliveries_are_all_unique() {
        let mut t = SeqTracker::new();
        for s in 1..=1000 {
            assert_eq!(t.record(s), Seen::New);
        }
        assert_eq!((t.unique, t.dups, t.next_expected()), (1000, 0, 1001));
        assert_eq!(t.unique_through(1000), 1000);
        assert_eq!(t.unique_through(2000), 1000);
    }

    #[test]
    fn duplicates_and_reordering_are_exact() {
        let mut t = SeqTracker::new();
        for s in [1, 3, 2, 2, 5, 4, 1, 5, 6] {
            t.record(s);
        }
        assert_eq!((t.unique, t.dups, t.next_expected()), (6, 3, 7));
    }

    #[test]
    fn a_gap_is_loss_until_filled() {
        let mut t = SeqTracker::new();
        for s in (1..=10).filter(|s| *s != 4) {
            t.record(s);
        }
        assert_eq!(t.next_expected(), 4);
        assert_eq!(t.unique_through(10), 9);
        assert_eq!(10 - t.unique_through(10), 1, "one frame lost");
        t.record(4);
        assert_eq!(t.unique_through(10), 10);
        assert_eq!(t.next_expected(), 11);
    }

    #[test]
    fn far_ahead_frames_slide_the_window_and_count_skips() {
        let mut t = SeqTracker::new();
        t.record(1);
        t.record(3); // 2 missing
        t.record(1000); // far ahead: 2 and 4..=871 given up
        assert_eq!(t.unique, 3);
        assert_eq!(t.next_expected() + WINDOW, 1000);
        assert_eq!(t.skipped, 1 + (871 - 4 + 1), "2 and 4..=871");
        assert_eq!(t.unique_through(1000), 3);
        assert_eq!(t.record(1000), Seen::Dup);
        for s in 1001..=1010 {
            t.record(s);
        }
        assert_eq!(t.unique_through(1010), 13);
    }

    #[test]
    fn memory_is_bounded() {
        assert!(std::mem::size_of::<SeqTracker>() <= 64);
    }
}
