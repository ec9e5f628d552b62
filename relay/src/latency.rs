//! Latency recording for the relay's hot path: one call per batch, never per frame.

use std::time::Instant;

use contrail_control::{Hist, LatencyRecorder};

/// A cloneable handle to the control plane's latency histograms (or nothing, in tests that
/// run without control).
#[derive(Debug, Clone, Default)]
pub struct Latency {
    recorder: Option<LatencyRecorder>,
}

impl Latency {
    /// Records into `recorder`.
    pub fn new(recorder: LatencyRecorder) -> Self {
        Latency {
            recorder: Some(recorder),
        }
    }

    /// Frame age at ingest for every frame of a batch: `now - sent_at` (ns, saturating at 0).
    pub fn frame_ages(&self, now_unix_ns: u64, sent_at: impl Iterator<Item = u64>) {
        if let Some(r) = &self.recorder {
            r.record_many(
                Hist::FrameAge,
                sent_at
                    .filter(|&s| s > 0)
                    .map(|s| now_unix_ns.saturating_sub(s)),
            );
        }
    }

    /// Receive → ack for one ack (covering one or more batches).
    pub fn ack_sent(&self, received_at: Instant) {
        if let Some(r) = &self.recorder {
            r.record(Hist::AckLatency, received_at.elapsed().as_nanos() as u64);
        }
    }

    /// Receive → write accepted, once per batch written by sink `name`.
    pub fn sink_written(&self, name: &str, received_at: impl Iterator<Item = Instant>) {
        if let Some(r) = &self.recorder {
            let now = Instant::now();
            r.record_many(
                Hist::SinkWrite(name),
                received_at.map(|t| now.duration_since(t).as_nanos() as u64),
            );
        }
    }
}
