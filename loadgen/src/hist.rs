//! Latency histograms shared by many tasks without a lock per frame.
//!
//! Tasks record into one of a few shards (chosen by agent index), taking that shard's lock once
//! per ack or delivery *event* and recording a whole run of frames with `record_n`. Readers merge
//! the shards (once per second for the progress line, once at the end for the report).

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Highest latency tracked, ns (60 s); larger values are clamped to it.
pub const MAX_NS: u64 = 60_000_000_000;

/// A fresh histogram in nanoseconds with 3 significant figures.
pub fn new_hist() -> Histogram<u64> {
    // 1 ns .. 60 s at 3 significant figures: 1 µs-resolution well below a millisecond.
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("constant bounds are valid")
}

/// Shards of one latency histogram.
pub struct ShardedHist {
    shards: Box<[Mutex<Histogram<u64>>]>,
}

impl ShardedHist {
    /// `n` shards (at least one).
    pub fn new(n: usize) -> Self {
        ShardedHist {
            shards: (0..n.max(1)).map(|_| Mutex::new(new_hist())).collect(),
        }
    }

    /// Locks the shard for `key` (e.g. the agent index) to record several values at once.
    pub fn shard(&self, key: usize) -> parking_lot::MutexGuard<'_, Histogram<u64>> {
        self.shards[key % self.shards.len()].lock()
    }

    /// Records `count` occurrences of `ns` in the shard for `key`.
    pub fn record_n(&self, key: usize, ns: u64, count: u64) {
        record_n(&mut self.shard(key), ns, count);
    }

    /// Everything recorded so far, merged.
    pub fn snapshot(&self) -> Histogram<u64> {
        let mut out = new_hist();
        for s in self.shards.iter() {
            let _ = out.add(&*s.lock());
        }
        out
    }
}

/// Records `count` occurrences of `ns`, clamped to the histogram's range.
#[inline]
pub fn record_n(h: &mut Histogram<u64>, ns: u64, count: u64) {
    if count > 0 {
        let _ = h.record_n(ns.clamp(1, MAX_NS), count);
    }
}

/// Percentiles of one histogram, in microseconds, as the report prints them.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Maximum, µs.
    pub max_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
}

impl Percentiles {
    /// Summarises `h` (ns values).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Percentiles {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1_000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_and_percentiles_are_in_microseconds() {
        let h = ShardedHist::new(4);
        for key in 0..4 {
            h.record_n(key, 1_000_000, 99); // 1 ms
        }
        h.record_n(1, 50_000_000, 4); // 50 ms
        let p = Percentiles::of(&h.snapshot());
        assert_eq!(p.count, 400);
        assert!((p.p50_us - 1_000.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_us - 1_000.0).abs() < 1.0, "{p:?}");
        assert!((p.p999_us - 50_000.0).abs() < 50.0, "{p:?}");
        assert!((p.max_us - 50_000.0).abs() < 50.0, "{p:?}");
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut h = new_hist();
        record_n(&mut h, 0, 1);
        record_n(&mut h, u64::MAX, 1);
        record_n(&mut h, 5, 0);
        assert_eq!(h.len(), 2);
    }
}
