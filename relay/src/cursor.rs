//! Per-agent stream cursors: what was forwarded to sinks, what every required sink accepted,
//! and what the agent was acked.
//!
//! A cursor outlives its session so that a reconnecting agent resumes where it left off: the
//! relay tells it `resume_from_seq = completed`, drops resent frames up to `forwarded` as
//! duplicates, and acks them once the earlier session's batches complete. The table is bounded
//! in entries and age; the oldest idle cursors are evicted first (and counted).
//!
//! **The ack point never passes a gap.** Batches report the seq range they carry
//! ([`AgentCursor::complete_range`]); `completed` moves only over ranges that join it. A range
//! completed out of order (two required sinks finishing in different orders) waits in a small
//! side table until the gap before it closes. So whatever fails in a sink (a worker panic, a
//! dropped batch, a future bug), no frame is ever acked that every required sink did not
//! accept: the agent keeps it and, at worst, resends it. The side table holds at most one entry
//! per batch in the credit window (`max_inflight` frames past the last ack).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contrail_control::metric_names as m;
use contrail_protocol::AgentId;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Stream position of one agent.
#[derive(Debug, Default)]
pub struct AgentCursor {
    forwarded: AtomicU64,
    /// Highest seq such that every seq up to it was accepted by every required sink.
    completed: AtomicU64,
    completed_received_at: AtomicU64,
    /// Highest seq the session's ack writer has acked (the credit window counts from it).
    acked: AtomicU64,
    /// Frames waiting for an ack that wake the ack writer (1: every completion wakes it).
    wake_after: AtomicU64,
    /// Ranges completed past a gap, `first → last`, waiting for `completed` to reach them.
    parked: Mutex<BTreeMap<u64, u64>>,
    /// Whether `parked` may hold ranges (read without the lock on the in-order path).
    has_parked: AtomicBool,
    /// The ack writer has a deadline of its own for the oldest frame waiting (it armed its
    /// coalescing timer when it saw the frame forwarded), so the first completion need not
    /// wake it; the `wake_after` threshold still does.
    timer_armed: AtomicBool,
    /// Woken when `completed` advances past the last ack for the first time, and whenever at
    /// least `wake_after` frames wait for an ack.
    pub notify: Notify,
    /// Frames and bytes acked, for the usage ledger (shared with the sessions of this stream
    /// through `SessionStats::committed`).
    pub committed: Arc<contrail_control::usage::UsageCounters>,
    /// Batches completed and not yet acked, `(last seq, frames, bytes)` in seq order: usage
    /// counts them when an ack covers them. At most one entry per batch in the credit window.
    usage_log: Mutex<VecDeque<(u64, u64, u64)>>,
    /// No acks on this stream (the MAVLink UDP endpoint): usage counts at completion.
    usage_on_commit: bool,
}

impl AgentCursor {
    /// A cursor starting after `seq` (forwarded, completed and acked).
    pub fn starting_at(seq: u64) -> Self {
        AgentCursor {
            forwarded: AtomicU64::new(seq),
            completed: AtomicU64::new(seq),
            completed_received_at: AtomicU64::new(0),
            acked: AtomicU64::new(seq),
            wake_after: AtomicU64::new(1),
            parked: Mutex::new(BTreeMap::new()),
            has_parked: AtomicBool::new(false),
            timer_armed: AtomicBool::new(false),
            notify: Notify::new(),
            committed: Arc::default(),
            usage_log: Mutex::new(VecDeque::new()),
            usage_on_commit: false,
        }
    }

    /// For a stream without acks: usage counts batches when they complete.
    pub fn usage_on_commit(mut self) -> Self {
        self.usage_on_commit = true;
        self
    }

    /// A batch `..=last` of `frames` frames and `bytes` bytes was accepted by every required
    /// sink: counted as usage once an ack covers it (at once without acks).
    pub fn usage_completed(&self, last: u64, frames: u64, bytes: u64) {
        if self.usage_on_commit {
            self.committed.add(frames, bytes);
            return;
        }
        let mut log = self.usage_log.lock();
        // In order nearly always (appended); a batch completed out of order goes in its place.
        let at = log.iter().rposition(|e| e.0 < last).map_or(0, |p| p + 1);
        log.insert(at, (last, frames, bytes));
    }

    /// The agent resumes claiming acks up to `seq` that this relay did not write (it acked
    /// elsewhere in between): those batches are not this relay's usage.
    pub fn usage_forget_through(&self, seq: u64) {
        let mut log = self.usage_log.lock();
        while log.front().is_some_and(|e| e.0 <= seq) {
            log.pop_front();
        }
    }

    /// The agent was acked up to `seq` (an `Ack` written, or `resume_from_seq` in
    /// `Registered`): the batches it covers count as usage.
    pub fn usage_acked(&self, seq: u64) {
        let (mut frames, mut bytes) = (0, 0);
        {
            let mut log = self.usage_log.lock();
            while let Some(&(last, f, b)) = log.front() {
                if last > seq {
                    break;
                }
                frames += f;
                bytes += b;
                log.pop_front();
            }
        }
        if frames > 0 {
            self.committed.add(frames, bytes);
        }
    }
    /// Highest seq handed to the sinks.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Acquire)
    }
    /// Records that frames up to `seq` were handed to the sinks.
    pub fn set_forwarded(&self, seq: u64) {
        self.forwarded.fetch_max(seq, Ordering::AcqRel);
    }
    /// Highest seq every required sink accepted, with every seq before it (the ack point).
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::SeqCst)
    }
    /// Highest seq acked to the agent: the credit window is `acked + max_inflight`.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Declares everything up to `seq` complete (a resume claim the agent makes), then takes
    /// in any parked range that now joins.
    pub fn complete_through(&self, seq: u64) {
        self.complete_range(1, seq);
    }

    /// Records that every required sink accepted seqs `first..=last`. The ack point moves only
    /// if the range joins it (`first <= completed + 1`); otherwise the range is parked until
    /// the gap before it closes. Wakes the ack writer when this is the first frame waiting for
    /// an ack (it starts the coalescing delay) or when `wake_after` frames wait (it acks at
    /// once). Other completions only move the cursor: the writer picks them up when its delay
    /// ends, without a wake-up per batch.
    pub fn complete_range(&self, first: u64, last: u64) {
        if last < first {
            return; // not a range (an empty batch is 0..=0)
        }
        // In order (the common case): one compare-and-swap from the seq before the range.
        let (before, after) = match self.completed.compare_exchange(
            first.saturating_sub(1),
            last,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(before) => (before, self.join_parked(last)),
            Err(cur) if last <= cur => return,
            // Overlapping the ack point (a resume claim, a repeated range): `completed` only
            // grows, so a range that joins it once joins it for good.
            Err(cur) if first <= cur.saturating_add(1) => {
                let before = self.completed.fetch_max(last, Ordering::SeqCst);
                (before, self.join_parked(before.max(last)))
            }
            Err(cur) => (cur, self.take_parked(Some((first, last)))),
        };
        if before < after {
            let acked = self.acked.load(Ordering::Acquire);
            let wake_after = self.wake_after.load(Ordering::Relaxed);
            // (SeqCst with `set_timer_armed`: an ack writer that disarms and then reads
            // `completed` either sees this advance or is woken by it.)
            let first_waiting = before <= acked && !self.timer_armed.load(Ordering::SeqCst);
            if first_waiting || after.saturating_sub(acked) >= wake_after {
                self.notify.notify_one();
            }
        }
    }

    /// After `completed` moved to `now`: takes in parked ranges that may join now. (A parking
    /// thread sets `has_parked` before it reads `completed`: either it sees this advance, or
    /// this sees its flag.)
    fn join_parked(&self, now: u64) -> u64 {
        if self.has_parked.load(Ordering::SeqCst) {
            now.max(self.take_parked(None))
        } else {
            now
        }
    }

    /// Parks `range` (if any), then moves `completed` over every parked range that joins it.
    /// Returns `completed` as left.
    fn take_parked(&self, range: Option<(u64, u64)>) -> u64 {
        let mut parked = self.parked.lock();
        if let Some((first, last)) = range {
            self.has_parked.store(true, Ordering::SeqCst);
            let e = parked.entry(first).or_insert(last);
            *e = (*e).max(last);
        }
        let mut cur = self.completed.load(Ordering::SeqCst);
        while let Some(entry) = parked.first_entry() {
            if *entry.key() > cur.saturating_add(1) {
                break;
            }
            let last = entry.remove();
            if last > cur {
                cur = self.completed.fetch_max(last, Ordering::SeqCst).max(last);
            }
        }
        self.has_parked.store(!parked.is_empty(), Ordering::SeqCst);
        cur
    }

    /// Ranges completed past a gap, not yet taken into the ack point.
    pub fn parked_ranges(&self) -> usize {
        self.parked.lock().len()
    }

    /// The ack writer's state: it acked up to `seq`, and wants a wake-up once `wake_after`
    /// frames wait (1: after every completion).
    pub fn set_acked(&self, seq: u64, wake_after: u64) {
        self.wake_after.store(wake_after.max(1), Ordering::Relaxed);
        self.acked.fetch_max(seq, Ordering::AcqRel);
    }

    /// Whether the ack writer's own timer covers the oldest frame waiting (see
    /// `timer_armed`). After disarming, the writer must read [`completed`](Self::completed)
    /// again: a completion racing with the disarm is either seen there or wakes it.
    pub fn set_timer_armed(&self, armed: bool) {
        self.timer_armed.store(armed, Ordering::SeqCst);
    }

    /// Starts a session's acks: returns `resume_from_seq` (the ack point) and makes it the
    /// ack the credit window counts from until the session sends its first `Ack`.
    pub fn start_session(&self) -> u64 {
        self.set_timer_armed(false);
        let resume_from = self.completed();
        self.acked.store(resume_from, Ordering::Release);
        resume_from
    }

    /// Like [`complete_range`](Self::complete_range), remembering when the batch arrived
    /// (for the receive → ack histogram).
    pub fn complete_batch(&self, first: u64, last: u64, received_at: Instant) {
        self.completed_received_at
            .store(crate::clock::mono_ns(received_at), Ordering::Release);
        self.complete_range(first, last);
    }

    /// When the most recently completed batch was received.
    pub fn completed_received_at(&self) -> Option<Instant> {
        match self.completed_received_at.load(Ordering::Acquire) {
            0 => None,
            ns => Some(crate::clock::from_mono_ns(ns)),
        }
    }
}

struct Entry {
    cursor: Arc<AgentCursor>,
    /// While the session is gone: its key in [`Table::idle`].
    idle: Option<IdleKey>,
}

/// When a cursor went idle, and a counter that keeps keys unique.
type IdleKey = (Instant, u64);

/// Bounded table of cursors by agent id.
pub struct ResumeTable {
    inner: Mutex<Table>,
    max_entries: usize,
    ttl: Duration,
}

/// The cursors, and the idle ones ordered by when they went idle: ageing out and making room
/// take the oldest from the front, so no operation walks the whole table (with 10,000 sessions
/// ending at once, a walk per session end was the top of the relay's profile).
struct Table {
    map: HashMap<AgentId, Entry>,
    idle: BTreeMap<IdleKey, AgentId>,
    next: u64,
}

impl Table {
    /// Removes idle cursors older than `ttl`, oldest first; returns how many.
    fn expire(&mut self, now: Instant, ttl: Duration) -> usize {
        let mut n = 0;
        while let Some(entry) = self.idle.first_entry() {
            if now.saturating_duration_since(entry.key().0) < ttl {
                break;
            }
            let agent = entry.remove();
            self.map.remove(&agent);
            n += 1;
        }
        n
    }

    /// Removes the oldest idle cursor; false when every cursor is live.
    fn evict_oldest(&mut self) -> bool {
        match self.idle.pop_first() {
            Some((_, agent)) => {
                self.map.remove(&agent);
                true
            }
            None => false,
        }
    }
}

fn count_evicted(n: usize) {
    if n > 0 {
        metrics::counter!(m::RESUME_EVICTED).increment(n as u64);
    }
}

impl ResumeTable {
    /// A table of at most `max_entries` cursors, idle ones kept for `ttl`.
    pub fn new(max_entries: usize, ttl: Duration) -> Self {
        ResumeTable {
            inner: Mutex::new(Table {
                map: HashMap::new(),
                idle: BTreeMap::new(),
                next: 0,
            }),
            max_entries: max_entries.max(1),
            ttl,
        }
    }

    /// Takes the cursor for a registering agent. Without a resume claim the agent starts a new
    /// stream (fresh cursor). With one, an existing cursor is kept and moved forward to the claim.
    pub fn attach(&self, agent: &AgentId, claim: Option<u64>, now: Instant) -> Arc<AgentCursor> {
        let mut table = self.inner.lock();
        let mut evicted = table.expire(now, self.ttl);
        let held = table.map.remove(agent);
        if let Some(key) = held.as_ref().and_then(|e| e.idle) {
            table.idle.remove(&key);
        }
        let cursor = match (claim, held) {
            (Some(claim), Some(e)) => {
                // Batches up to the claim that this relay never acked were acked (and counted)
                // by another relay.
                e.cursor.usage_forget_through(claim);
                e.cursor.set_forwarded(claim);
                e.cursor.complete_through(claim);
                e.cursor
            }
            (Some(claim), None) => Arc::new(AgentCursor::starting_at(claim)),
            (None, _) => Arc::new(AgentCursor::starting_at(0)),
        };
        if table.map.len() >= self.max_entries && table.evict_oldest() {
            evicted += 1;
        }
        table.map.insert(
            agent.clone(),
            Entry {
                cursor: cursor.clone(),
                idle: None,
            },
        );
        count_evicted(evicted);
        cursor
    }

    /// Marks the agent's cursor idle (its session ended), if it is still `cursor`.
    pub fn detach(&self, agent: &AgentId, cursor: &Arc<AgentCursor>, now: Instant) {
        let mut table = self.inner.lock();
        let key = (now, table.next);
        let newly_idle = match table.map.get_mut(agent) {
            Some(e) if Arc::ptr_eq(&e.cursor, cursor) && e.idle.is_none() => {
                e.idle = Some(key);
                true
            }
            _ => false,
        };
        if newly_idle {
            table.next += 1;
            table.idle.insert(key, agent.clone());
        }
        let evicted = table.expire(now, self.ttl);
        count_evicted(evicted);
    }

    /// Number of cursors held.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn usage_counts_acked_batches_once_and_not_those_acked_elsewhere() {
        let c = AgentCursor::starting_at(0);
        c.usage_completed(10, 10, 100);
        c.usage_completed(30, 10, 100); // out of order: 11..=20 completes later
        c.usage_completed(20, 10, 100);
        c.usage_acked(20);
        assert_eq!(c.committed.take(), (20, 200));
        c.usage_acked(20);
        assert_eq!(c.committed.take(), (0, 0), "an ack counts a batch once");
        // The agent left, was acked through 30 by another relay, and came back.
        c.usage_completed(40, 10, 100);
        c.usage_forget_through(30);
        c.usage_acked(40);
        assert_eq!(
            c.committed.take(),
            (10, 100),
            "only 31..=40 is this relay's"
        );
        // No acks (MAVLink UDP): counted at completion.
        let u = AgentCursor::starting_at(0).usage_on_commit();
        u.usage_completed(5, 5, 50);
        assert_eq!(u.committed.take(), (5, 50));
    }
    use super::*;

    /// Whether the cursor woke its ack writer since the last call (takes the permit).
    fn woken(c: &AgentCursor) -> bool {
        futures::FutureExt::now_or_never(c.notify.notified()).is_some()
    }

    #[test]
    fn an_armed_ack_writer_is_woken_only_by_the_threshold_or_after_disarming() {
        let c = AgentCursor::starting_at(0);
        c.set_acked(0, 4);
        c.complete_range(1, 1);
        assert!(
            woken(&c),
            "unarmed: the first frame waiting wakes the writer"
        );
        c.set_acked(1, 4);
        c.set_timer_armed(true);
        c.complete_range(2, 2);
        assert!(!woken(&c), "armed: its own timer covers the first frame");
        c.complete_range(3, 5);
        assert!(woken(&c), "the threshold (4 waiting) wakes it all the same");
        c.set_acked(5, 4);
        c.set_timer_armed(false);
        c.complete_range(6, 6);
        assert!(
            woken(&c),
            "disarmed (deadline passed): the first completion wakes it"
        );
        c.set_timer_armed(true);
        assert_eq!(c.start_session(), 6);
        c.complete_range(7, 7);
        assert!(woken(&c), "a new session starts disarmed");
    }

    fn id(s: &str) -> AgentId {
        AgentId::new(s).expect("valid id")
    }

    #[test]
    fn resume_keeps_the_cursor_and_fresh_start_resets() {
        let t = ResumeTable::new(10, Duration::from_secs(60));
        let now = Instant::now();
        let c = t.attach(&id("a"), None, now);
        c.set_forwarded(10);
        c.complete_through(8);
        t.detach(&id("a"), &c, now);
        let again = t.attach(&id("a"), Some(5), now);
        assert!(Arc::ptr_eq(&c, &again));
        assert_eq!((again.forwarded(), again.completed()), (10, 8));
        let fresh = t.attach(&id("a"), None, now);
        assert_eq!((fresh.forwarded(), fresh.completed()), (0, 0));
    }

    #[test]
    fn the_ack_point_never_passes_a_gap() {
        let c = AgentCursor::starting_at(0);
        c.complete_range(1, 3);
        // 4..=6 was lost (a sink dropped it): later batches complete, the ack point stays.
        c.complete_range(7, 9);
        c.complete_range(10, 12);
        assert_eq!(c.completed(), 3);
        assert_eq!(c.parked_ranges(), 2);
        // Once 4..=6 completes (redelivered), everything parked joins.
        c.complete_range(4, 6);
        assert_eq!((c.completed(), c.parked_ranges()), (12, 0));
    }

    #[test]
    fn out_of_order_overlapping_and_repeated_ranges() {
        let c = AgentCursor::starting_at(0);
        c.complete_range(5, 8);
        c.complete_range(5, 6); // a repeat of part of a parked range
        c.complete_range(2, 4);
        assert_eq!(c.completed(), 0, "1 is missing");
        c.complete_range(1, 1);
        assert_eq!((c.completed(), c.parked_ranges()), (8, 0));
        c.complete_range(3, 7); // already complete
        c.complete_range(6, 10); // overlaps the ack point
        assert_eq!(c.completed(), 10);
        c.complete_range(0, 0); // an empty batch
        assert_eq!(c.completed(), 10);
        // A resume claim declares everything up to it complete, and parked ranges join.
        c.complete_range(15, 20);
        c.complete_through(14);
        assert_eq!((c.completed(), c.parked_ranges()), (20, 0));
    }

    #[test]
    fn sessions_start_their_window_at_the_ack_point() {
        let c = AgentCursor::starting_at(0);
        c.complete_range(1, 5);
        assert_eq!(c.acked(), 0);
        assert_eq!(c.start_session(), 5);
        assert_eq!(c.acked(), 5);
    }

    #[test]
    fn concurrent_completions_in_any_order_end_at_the_last_seq() {
        // Two "sinks" complete the same 2,000 batches of 3 frames; the batch's completion is
        // reported by whichever finishes it last, so ranges arrive in a mixed order.
        for _ in 0..20 {
            let c = Arc::new(AgentCursor::starting_at(0));
            let batches = 2_000u64;
            let threads: Vec<_> = (0..4u64)
                .map(|t| {
                    let c = c.clone();
                    std::thread::spawn(move || {
                        for b in (t..batches).step_by(4) {
                            c.complete_range(b * 3 + 1, b * 3 + 3);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("thread");
            }
            assert_eq!(c.completed(), batches * 3);
            assert_eq!(c.parked_ranges(), 0);
        }
    }

    #[test]
    fn table_is_bounded_and_ages_out_idle_cursors() {
        let t = ResumeTable::new(2, Duration::from_secs(60));
        let now = Instant::now();
        let a = t.attach(&id("a"), Some(1), now);
        t.detach(&id("a"), &a, now);
        let _b = t.attach(&id("b"), Some(1), now + Duration::from_secs(1));
        let _c = t.attach(&id("c"), Some(1), now + Duration::from_secs(2));
        assert_eq!(t.len(), 2, "idle cursor a was evicted for room");
        let later = now + Duration::from_secs(120);
        t.detach(&id("b"), &_b, later);
        assert_eq!(t.len(), 2, "b just went idle: kept");
        t.detach(&id("c"), &_c, later + Duration::from_secs(61));
        assert_eq!(t.len(), 1, "b aged out");
    }

    #[test]
    fn idle_cursors_age_out_oldest_first_and_live_ones_never() {
        let t = ResumeTable::new(10, Duration::from_secs(5));
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let a = t.attach(&id("a"), Some(1), t0);
        let b = t.attach(&id("b"), Some(1), t0);
        let live = t.attach(&id("live"), Some(1), t0);
        b.set_forwarded(7);
        b.complete_through(7);
        t.detach(&id("a"), &a, t0);
        t.detach(&id("b"), &b, ms(500));
        t.detach(&id("b"), &b, ms(900)); // a second detach keeps its first idle time
        let x = t.attach(&id("x"), None, ms(5_200)); // a (idle 5.2 s) goes, b (4.7 s) stays
        assert_eq!(t.len(), 3, "a aged out; b, live and x kept");
        // b is resumed where it was while its TTL runs ...
        let again = t.attach(&id("b"), Some(5), ms(5_300));
        assert!(Arc::ptr_eq(&again, &b), "b resumed");
        assert_eq!((again.forwarded(), again.completed()), (7, 7));
        // ... and once resumed it is live: no TTL until its next session ends.
        t.detach(&id("x"), &x, ms(20_000)); // everything idle past 5 s goes; b and live stay
        assert_eq!(t.len(), 3, "b, live and x (just idle) kept");
        t.detach(&id("b"), &again, ms(20_000));
        let fresh = t.attach(&id("b"), Some(3), ms(25_000)); // b idle 5 s: expired
        assert!(!Arc::ptr_eq(&fresh, &b), "expired cursor resumed");
        assert_eq!((fresh.forwarded(), fresh.completed()), (3, 3));
        assert!(Arc::ptr_eq(
            &t.attach(&id("live"), Some(1), ms(99_000)),
            &live
        ));
    }
}
