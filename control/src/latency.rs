//! Latency recorded by the relay: exported as Prometheus **histograms** (cumulative buckets that
//! aggregate across relays with `histogram_quantile(…, sum by (le) (rate(…_bucket[5m])))`), and
//! kept in windowed hdrhistograms (last 10 s, last 1 min) for the fleet page's JSON.
//!
//! Values are nanoseconds, rendered in seconds. The relay records whole batches with
//! [`LatencyRecorder::record_many`] / [`LatencyRecorder::record_weighted`]: one lock per call,
//! never one per frame. Windows rotate in [`SLOT_SECS`]-second slots as values arrive (a slot is
//! cleared when time reaches it again), so a view covers its span plus the current partial slot.

use crate::metric_names as m;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

/// Upper bounds (seconds) of the Prometheus buckets: 50 µs … 30 s, plus `+Inf`.
pub const BUCKETS_SECONDS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];
const NB: usize = BUCKETS_SECONDS.len() + 1;
/// Bucket bounds in ns (same as [`BUCKETS_SECONDS`]).
const BUCKETS_NS: [u64; 18] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Width of one window slot.
pub const SLOT_SECS: u64 = 5;
/// Slots kept: 1 min of full slots plus the current one.
const SLOTS: usize = 13;
/// Largest value the windowed hdrhistograms resolve (larger values saturate): 2 min.
const WINDOW_HIGHEST_NS: u64 = 120_000_000_000;

/// Which histogram to record into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hist<'a> {
    /// `now - sent_at` at ingest, for agents whose clock is sane (`contrail_frame_age_seconds`).
    FrameAge,
    /// Receive → every required sink accepted, per frame (`contrail_commit_latency_seconds`).
    Committed,
    /// Receive → ack sent, per ack (`contrail_ack_latency_seconds`).
    AckLatency,
    /// Receive → write accepted by the named sink, per frame
    /// (`contrail_sink_write_latency_seconds{sink}`).
    SinkWrite(&'a str),
}

impl Hist<'_> {
    fn metric(&self) -> &'static str {
        match self {
            Hist::FrameAge => m::FRAME_AGE,
            Hist::Committed => m::COMMIT_LATENCY,
            Hist::AckLatency => m::ACK_LATENCY,
            Hist::SinkWrite(_) => m::SINK_WRITE_LATENCY,
        }
    }
    fn stage(&self) -> &'static str {
        match self {
            Hist::FrameAge => "frame_age",
            Hist::Committed => "commit",
            Hist::AckLatency => "ack",
            Hist::SinkWrite(_) => "sink_write",
        }
    }
}

fn bucket_of(v_ns: u64) -> usize {
    BUCKETS_NS.partition_point(|&b| b < v_ns)
}

/// Ring of hdrhistograms, one per [`SLOT_SECS`] slot.
#[derive(Debug)]
struct Window {
    slots: Vec<Histogram<u32>>,
    /// Slot number (seconds since the recorder's origin / SLOT_SECS) each ring entry holds.
    epoch: Vec<u64>,
}

fn new_hist() -> Histogram<u32> {
    // Bounds are constants that satisfy hdrhistogram's preconditions.
    Histogram::new_with_bounds(1, WINDOW_HIGHEST_NS, 2)
        .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()))
}

impl Window {
    fn new() -> Self {
        Window {
            slots: Vec::new(),
            epoch: Vec::new(),
        }
    }

    fn slot(&mut self, slot_no: u64) -> &mut Histogram<u32> {
        if self.slots.is_empty() {
            // Allocated on first use: a sink that never writes costs nothing.
            self.slots = (0..SLOTS).map(|_| new_hist()).collect();
            self.epoch = vec![u64::MAX; SLOTS];
        }
        let i = (slot_no % SLOTS as u64) as usize;
        if self.epoch[i] != slot_no {
            self.slots[i].reset();
            self.epoch[i] = slot_no;
        }
        &mut self.slots[i]
    }

    /// Merge of the slots within `span_slots` of `now_slot` (inclusive of the current one).
    fn merged(&self, now_slot: u64, span_slots: u64) -> Histogram<u32> {
        let mut h = new_hist();
        for (s, &e) in self.slots.iter().zip(&self.epoch) {
            if e != u64::MAX && e <= now_slot && now_slot - e <= span_slots {
                let _ = h.add(s);
            }
        }
        h
    }
}

#[derive(Debug)]
struct Series {
    /// Non-cumulative bucket counts (last = above 30 s).
    buckets: [u64; NB],
    sum_ns: u128,
    count: u64,
    window: Window,
}

impl Series {
    fn new() -> Self {
        Self {
            buckets: [0; NB],
            sum_ns: 0,
            count: 0,
            window: Window::new(),
        }
    }

    fn record_n(&mut self, slot_no: u64, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.buckets[bucket_of(v)] += n;
        self.sum_ns += u128::from(v) * u128::from(n);
        self.count += n;
        let h = self.window.slot(slot_no);
        let _ = h.record_n(
            v.clamp(1, WINDOW_HIGHEST_NS),
            n.min(u64::from(u32::MAX)) as u32,
        );
    }
}

type Shared = Arc<Mutex<Series>>;

fn record_into(series: &Mutex<Series>, slot: u64, items: impl IntoIterator<Item = (u64, u64)>) {
    let mut g = series.lock();
    for (v, n) in items {
        g.record_n(slot, v, n);
    }
}

/// One histogram of a [`LatencyRecorder`], resolved once ([`LatencyRecorder::handle`]).
#[derive(Debug, Clone)]
pub struct HistHandle {
    origin: Instant,
    series: Shared,
}

impl HistHandle {
    /// Records `(value_ns, times)` pairs at `now` (the window clock), one lock per call.
    pub fn record_weighted_at(&self, now: Instant, items: impl IntoIterator<Item = (u64, u64)>) {
        let slot = now.saturating_duration_since(self.origin).as_secs() / SLOT_SECS;
        record_into(&self.series, slot, items);
    }
}

/// Named latency histograms; cloneable handle.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    origin: Instant,
    frame_age: Shared,
    committed: Shared,
    ack: Shared,
    sinks: Arc<RwLock<BTreeMap<String, Shared>>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

/// One windowed view of a stage, as served to the fleet page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowView {
    /// Values in the window.
    pub count: u64,
    /// Seconds the window actually covers (its span plus the current partial slot).
    pub span_secs: u64,
    /// Quantiles in seconds (0 when empty).
    pub p50: f64,
    /// 90th percentile (s).
    pub p90: f64,
    /// 99th percentile (s).
    pub p99: f64,
    /// Largest value (s).
    pub max: f64,
    /// Counts per bucket of [`BUCKETS_SECONDS`], the last one above 30 s (not cumulative).
    pub buckets: Vec<u64>,
}

/// Windowed views of one stage.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageView {
    /// `frame_age`, `commit`, `ack` or `sink_write`.
    pub stage: &'static str,
    /// The sink, for `sink_write`.
    pub sink: Option<String>,
    /// Values since start.
    pub total: u64,
    /// The last 10 s.
    pub last_10s: WindowView,
    /// The last minute.
    pub last_1m: WindowView,
}

/// All windowed views (`GET /v1/latency`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyViews {
    /// Bucket upper bounds in seconds (the last bucket, above them, has no bound).
    pub buckets_le_seconds: Vec<f64>,
    /// One entry per stage (and per sink).
    pub stages: Vec<StageView>,
}

impl LatencyRecorder {
    /// Empty histograms.
    pub fn new() -> Self {
        let s = || Arc::new(Mutex::new(Series::new()));
        Self {
            origin: Instant::now(),
            frame_age: s(),
            committed: s(),
            ack: s(),
            sinks: Arc::default(),
        }
    }

    fn slot_no(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs() / SLOT_SECS
    }

    fn series(&self, hist: Hist<'_>) -> Shared {
        match hist {
            Hist::FrameAge => self.frame_age.clone(),
            Hist::Committed => self.committed.clone(),
            Hist::AckLatency => self.ack.clone(),
            Hist::SinkWrite(sink) => {
                if let Some(s) = self.sinks.read().get(sink) {
                    return s.clone();
                }
                let mut g = self.sinks.write();
                g.entry(sink.to_owned())
                    .or_insert_with(|| Arc::new(Mutex::new(Series::new())))
                    .clone()
            }
        }
    }

    /// `hist`, resolved once: a caller that records into the same histogram for every batch
    /// (a sink's writes) skips the per-call lookup (a read lock, a map search by name and a
    /// reference count bounced between threads).
    pub fn handle(&self, hist: Hist<'_>) -> HistHandle {
        HistHandle {
            origin: self.origin,
            series: self.series(hist),
        }
    }

    /// Records every value (nanoseconds) of a batch, taking the histogram lock once.
    pub fn record_many(&self, hist: Hist<'_>, values_ns: impl IntoIterator<Item = u64>) {
        self.record_weighted(hist, values_ns.into_iter().map(|v| (v, 1)));
    }

    /// Records `(value_ns, times)` pairs (a batch's latency once per frame), one lock per call.
    pub fn record_weighted(&self, hist: Hist<'_>, items: impl IntoIterator<Item = (u64, u64)>) {
        self.record_weighted_at(Instant::now(), hist, items);
    }

    /// [`record_weighted`](Self::record_weighted) at a given time (tests drive the window clock).
    pub fn record_weighted_at(
        &self,
        now: Instant,
        hist: Hist<'_>,
        items: impl IntoIterator<Item = (u64, u64)>,
    ) {
        let slot = self.slot_no(now);
        let fixed = match hist {
            Hist::FrameAge => &self.frame_age,
            Hist::Committed => &self.committed,
            Hist::AckLatency => &self.ack,
            Hist::SinkWrite(_) => return record_into(&self.series(hist), slot, items),
        };
        record_into(fixed, slot, items);
    }

    /// Records one value (nanoseconds).
    pub fn record(&self, hist: Hist<'_>, value_ns: u64) {
        self.record_many(hist, std::iter::once(value_ns));
    }

    /// Number of values recorded in `hist` since start.
    pub fn count(&self, hist: Hist<'_>) -> u64 {
        self.series(hist).lock().count
    }

    fn all(&self) -> Vec<(Hist<'static>, Option<String>, Shared)> {
        let mut v = vec![
            (Hist::FrameAge, None, self.frame_age.clone()),
            (Hist::Committed, None, self.committed.clone()),
            (Hist::AckLatency, None, self.ack.clone()),
        ];
        for (name, s) in self.sinks.read().iter() {
            v.push((Hist::SinkWrite(""), Some(name.clone()), s.clone()));
        }
        v
    }

    /// Renders all histograms in Prometheus text format (cumulative since start, as Prometheus
    /// expects; quantiles come from `histogram_quantile` over `rate`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last_metric = "";
        for (hist, sink, s) in self.all() {
            let name = hist.metric();
            if name != last_metric {
                let _ = writeln!(
                    out,
                    "# HELP {name} Latency in seconds ({} stage).",
                    hist.stage()
                );
                let _ = writeln!(out, "# TYPE {name} histogram");
                last_metric = name;
            }
            let (buckets, sum_ns, count) = {
                let g = s.lock();
                (g.buckets, g.sum_ns, g.count)
            };
            let sink_label = sink
                .as_deref()
                .map(|s| format!("sink=\"{}\",", escape_label(s)))
                .unwrap_or_default();
            let mut cum = 0u64;
            for (i, le) in BUCKETS_SECONDS.iter().enumerate() {
                cum += buckets[i];
                let _ = writeln!(out, "{name}_bucket{{{sink_label}le=\"{le}\"}} {cum}");
            }
            let _ = writeln!(out, "{name}_bucket{{{sink_label}le=\"+Inf\"}} {count}");
            let labels = sink
                .as_deref()
                .map(|s| format!("{{sink=\"{}\"}}", escape_label(s)))
                .unwrap_or_default();
            let _ = writeln!(out, "{name}_sum{labels} {}", sum_ns as f64 / 1e9);
            let _ = writeln!(out, "{name}_count{labels} {count}");
        }
        out
    }

    /// Windowed views (last 10 s, last 1 min) of every stage.
    pub fn views(&self) -> LatencyViews {
        self.views_at(Instant::now())
    }

    /// [`views`](Self::views) at a given time.
    pub fn views_at(&self, now: Instant) -> LatencyViews {
        let slot = self.slot_no(now);
        let stages = self
            .all()
            .into_iter()
            .map(|(hist, sink, s)| {
                let g = s.lock();
                StageView {
                    stage: hist.stage(),
                    sink,
                    total: g.count,
                    last_10s: view(&g.window.merged(slot, 10 / SLOT_SECS), 10 + SLOT_SECS),
                    last_1m: view(&g.window.merged(slot, 60 / SLOT_SECS), 60 + SLOT_SECS),
                }
            })
            .collect();
        LatencyViews {
            buckets_le_seconds: BUCKETS_SECONDS.to_vec(),
            stages,
        }
    }
}

fn view(h: &Histogram<u32>, span_secs: u64) -> WindowView {
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut buckets = vec![0u64; NB];
    if !h.is_empty() {
        for v in h.iter_recorded() {
            buckets[bucket_of(h.median_equivalent(v.value_iterated_to()))] +=
                u64::from(v.count_at_value());
        }
    }
    let q = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            secs(h.value_at_quantile(q))
        }
    };
    WindowView {
        count: h.len(),
        span_secs,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        max: if h.is_empty() { 0.0 } else { secs(h.max()) },
        buckets,
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn renders_cumulative_histograms_in_seconds() {
        let r = LatencyRecorder::new();
        // 1..=1000 ms: 1 value <= 1 ms, 10 <= 10 ms, 100 <= 100 ms, 1000 <= 1 s.
        r.record_many(Hist::FrameAge, (1..=1000).map(|i| i * 1_000_000));
        r.record_weighted(Hist::SinkWrite("file"), [(2_000_000_000, 3)]);
        let text = r.render();
        assert!(text.contains("# TYPE contrail_frame_age_seconds histogram"));
        let b = |le: &str| {
            line_value(
                &text,
                &format!("contrail_frame_age_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("0.0005"), Some(0.0));
        assert_eq!(b("0.001"), Some(1.0));
        assert_eq!(b("0.01"), Some(10.0));
        assert_eq!(b("0.1"), Some(100.0));
        assert_eq!(b("1"), Some(1000.0));
        assert_eq!(b("+Inf"), Some(1000.0));
        assert_eq!(
            line_value(&text, "contrail_frame_age_seconds_count"),
            Some(1000.0)
        );
        let sum = line_value(&text, "contrail_frame_age_seconds_sum").expect("sum");
        assert!((sum - 500.5).abs() < 1e-6, "{sum}");
        assert_eq!(
            line_value(
                &text,
                "contrail_sink_write_latency_seconds_bucket{sink=\"file\",le=\"1\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            line_value(
                &text,
                "contrail_sink_write_latency_seconds_bucket{sink=\"file\",le=\"2.5\"}"
            ),
            Some(3.0)
        );
        assert_eq!(r.count(Hist::SinkWrite("file")), 3);
        assert_eq!(
            line_value(&text, "contrail_ack_latency_seconds_count"),
            Some(0.0)
        );
        // Exactly one TYPE line per metric family.
        assert_eq!(
            text.matches("# TYPE contrail_sink_write_latency_seconds")
                .count(),
            1
        );
    }

    #[test]
    fn windows_forget_old_slots() {
        let r = LatencyRecorder::new();
        let t0 = r.origin;
        r.record_weighted_at(t0, Hist::AckLatency, [(3_000_000, 10)]);
        let v = r.views_at(t0);
        let ack = v.stages.iter().find(|s| s.stage == "ack").expect("ack");
        assert_eq!((ack.last_10s.count, ack.last_1m.count), (10, 10));
        assert!(
            (ack.last_10s.p50 - 0.003).abs() < 0.0001,
            "{}",
            ack.last_10s.p50
        );
        assert_eq!(ack.last_10s.buckets[bucket_of(3_000_000)], 10);
        // 30 s later: out of the 10 s view, still in the minute.
        let t1 = t0 + Duration::from_secs(30);
        r.record_weighted_at(t1, Hist::AckLatency, [(20_000_000, 1)]);
        let v = r.views_at(t1);
        let ack = v.stages.iter().find(|s| s.stage == "ack").expect("ack");
        assert_eq!(
            (ack.last_10s.count, ack.last_1m.count, ack.total),
            (1, 11, 11)
        );
        // 2 min later: nothing left.
        let t2 = t0 + Duration::from_secs(120);
        let v = r.views_at(t2);
        let ack = v.stages.iter().find(|s| s.stage == "ack").expect("ack");
        assert_eq!((ack.last_10s.count, ack.last_1m.count), (0, 0));
        r.record_weighted_at(t2, Hist::AckLatency, [(1_000, 1)]);
        let v = r.views_at(t2);
        let ack = v.stages.iter().find(|s| s.stage == "ack").expect("ack");
        assert_eq!(ack.last_1m.count, 1);
    }

    #[test]
    fn bucket_bounds_are_inclusive() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(50_000), 0);
        assert_eq!(bucket_of(50_001), 1);
        assert_eq!(bucket_of(30_000_000_000), 17);
        assert_eq!(bucket_of(30_000_000_001), 18);
    }
}
