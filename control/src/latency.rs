//! Latency histograms recorded by the relay and exported as Prometheus summaries.
//!
//! Values are recorded in nanoseconds into hdrhistograms (3 significant figures, 1 ns – 1 h,
//! larger values saturate) and rendered in seconds. Summaries are cumulative since start:
//! `_sum`/`_count` are monotonic and quantiles cover the whole run. The relay records whole batches
//! with [`LatencyRecorder::record_many`], which takes one lock per call.

use crate::metric_names as m;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use hdrhistogram::Histogram;
use parking_lot::{Mutex, RwLock};

/// Quantiles exported for every summary.
pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

const HIGHEST_NS: u64 = 3_600_000_000_000;

/// Which histogram to record into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hist<'a> {
    /// `now - sent_at` at ingest (`contrail_frame_age_seconds`).
    FrameAge,
    /// Receive → ack sent (`contrail_ack_latency_seconds`).
    AckLatency,
    /// Receive → write accepted by the named sink (`contrail_sink_write_latency_seconds{sink}`).
    SinkWrite(&'a str),
}

#[derive(Debug)]
struct Series {
    hist: Histogram<u64>,
    sum_ns: u128,
}

impl Series {
    fn new() -> Self {
        // Bounds are constants that satisfy hdrhistogram's preconditions.
        let hist = Histogram::new_with_bounds(1, HIGHEST_NS, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
        Self { hist, sum_ns: 0 }
    }

    fn record(&mut self, v: u64) {
        self.hist.saturating_record(v.max(1));
        self.sum_ns += u128::from(v);
    }
}

type Shared = Arc<Mutex<Series>>;

/// Named latency histograms; cloneable handle.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    frame_age: Shared,
    ack: Shared,
    sinks: Arc<RwLock<BTreeMap<String, Shared>>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    /// Empty histograms.
    pub fn new() -> Self {
        Self {
            frame_age: Arc::new(Mutex::new(Series::new())),
            ack: Arc::new(Mutex::new(Series::new())),
            sinks: Arc::default(),
        }
    }

    fn series(&self, hist: Hist<'_>) -> Shared {
        match hist {
            Hist::FrameAge => self.frame_age.clone(),
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

    /// Records every value (nanoseconds) of a batch, taking the histogram lock once.
    pub fn record_many(&self, hist: Hist<'_>, values_ns: impl IntoIterator<Item = u64>) {
        let series = self.series(hist);
        let mut g = series.lock();
        for v in values_ns {
            g.record(v);
        }
    }

    /// Records one value (nanoseconds).
    pub fn record(&self, hist: Hist<'_>, value_ns: u64) {
        self.record_many(hist, std::iter::once(value_ns));
    }

    /// Number of values recorded in `hist`.
    pub fn count(&self, hist: Hist<'_>) -> u64 {
        self.series(hist).lock().hist.len()
    }

    /// Renders all summaries in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        render_one(&mut out, m::FRAME_AGE, None, &self.frame_age, true);
        render_one(&mut out, m::ACK_LATENCY, None, &self.ack, true);
        let sinks = self.sinks.read();
        let mut first = true;
        for (name, s) in sinks.iter() {
            render_one(&mut out, m::SINK_WRITE_LATENCY, Some(name), s, first);
            first = false;
        }
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn secs(ns: f64) -> f64 {
    ns / 1e9
}

fn render_one(out: &mut String, name: &str, sink: Option<&str>, s: &Shared, header: bool) {
    let (quantiles, sum_ns, count) = {
        let g = s.lock();
        let q: Vec<(f64, u64)> = QUANTILES
            .iter()
            .map(|&q| (q, g.hist.value_at_quantile(q)))
            .collect();
        (q, g.sum_ns, g.hist.len())
    };
    if header {
        let _ = writeln!(
            out,
            "# HELP {name} Latency in seconds (hdrhistogram, since start)."
        );
        let _ = writeln!(out, "# TYPE {name} summary");
    }
    let prefix = sink
        .map(|s| format!("sink=\"{}\",", escape_label(s)))
        .unwrap_or_default();
    for (q, v) in quantiles {
        if count == 0 {
            let _ = writeln!(out, "{name}{{{prefix}quantile=\"{q}\"}} NaN");
        } else {
            let _ = writeln!(out, "{name}{{{prefix}quantile=\"{q}\"}} {}", secs(v as f64));
        }
    }
    let labels = sink
        .map(|s| format!("{{sink=\"{}\"}}", escape_label(s)))
        .unwrap_or_default();
    let _ = writeln!(out, "{name}_sum{labels} {}", secs(sum_ns as f64));
    let _ = writeln!(out, "{name}_count{labels} {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_summaries_in_seconds() {
        let r = LatencyRecorder::new();
        r.record_many(Hist::FrameAge, (1..=1000).map(|i| i * 1_000_000));
        r.record_many(Hist::SinkWrite("file"), [2_000_000_000]);
        let text = r.render();
        assert!(
            text.contains("# TYPE contrail_frame_age_seconds summary"),
            "{text}"
        );
        let p50 = text
            .lines()
            .find(|l| l.starts_with("contrail_frame_age_seconds{quantile=\"0.5\"}"))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("p50 line");
        assert!((p50 - 0.5).abs() < 0.01, "{p50}");
        assert!(text.contains("contrail_frame_age_seconds_count 1000"));
        assert!(text.contains("contrail_ack_latency_seconds{quantile=\"0.99\"} NaN"));
        assert!(
            text.contains("contrail_sink_write_latency_seconds{sink=\"file\",quantile=\"0.5\"}")
        );
        assert!(text.contains("contrail_sink_write_latency_seconds_sum{sink=\"file\"} 2"));
        assert_eq!(r.count(Hist::SinkWrite("file")), 1);
    }
}
