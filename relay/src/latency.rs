//! Latency recording for the relay's hot path: one call per batch, never per frame.

use std::time::Instant;

use contrail_control::{Hist, LatencyRecorder};

use crate::sink::batch::SinkBatch;

/// An agent clock counts as sane when its `sent_at` is at most this far ahead of ours…
pub const MAX_CLOCK_AHEAD_NS: u64 = 1_000_000_000;
/// …and at most this far behind (older frames are spool replays or a wrong clock).
pub const MAX_FRAME_AGE_NS: u64 = 3_600_000_000_000;

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

    /// Frame age at ingest for every frame of a batch whose agent clock is sane: `now - sent_at`
    /// when `sent_at` is set, at most [`MAX_CLOCK_AHEAD_NS`] ahead (counted as 0) and at most
    /// [`MAX_FRAME_AGE_NS`] old. Frames outside are counted in
    /// `contrail_frame_age_skipped_total{reason}` instead.
    pub fn frame_ages(&self, now_unix_ns: u64, sent_at: impl Iterator<Item = u64>) {
        let Some(r) = &self.recorder else { return };
        let (mut unset, mut ahead, mut old) = (0u64, 0u64, 0u64);
        r.record_many(
            Hist::FrameAge,
            sent_at.filter_map(|s| {
                if s == 0 {
                    unset += 1;
                    None
                } else if s > now_unix_ns.saturating_add(MAX_CLOCK_AHEAD_NS) {
                    ahead += 1;
                    None
                } else if now_unix_ns.saturating_sub(s) > MAX_FRAME_AGE_NS {
                    old += 1;
                    None
                } else {
                    Some(now_unix_ns.saturating_sub(s))
                }
            }),
        );
        for (reason, n) in [("unset", unset), ("ahead", ahead), ("too_old", old)] {
            if n > 0 {
                metrics::counter!("contrail_frame_age_skipped_total", "reason" => reason)
                    .increment(n);
            }
        }
    }

    /// Receive → ack for one ack (covering one or more batches).
    pub fn ack_sent(&self, received_at: Instant) {
        if let Some(r) = &self.recorder {
            r.record(Hist::AckLatency, received_at.elapsed().as_nanos() as u64);
        }
    }

    /// Receive → write accepted by sink `name`, once per frame of the written batches; and
    /// receive → committed (every required sink accepted) for the batches in `committed`.
    pub fn sink_written(
        &self,
        name: &str,
        written: &[std::sync::Arc<SinkBatch>],
        committed: &[bool],
    ) {
        let Some(r) = &self.recorder else { return };
        let now = Instant::now();
        let lat = |b: &SinkBatch| now.saturating_duration_since(b.received_at).as_nanos() as u64;
        r.record_weighted(
            Hist::SinkWrite(name),
            written.iter().map(|b| (lat(b), b.frames.len() as u64)),
        );
        if committed.iter().any(|&c| c) {
            r.record_weighted(
                Hist::Committed,
                written
                    .iter()
                    .zip(committed)
                    .filter(|(_, &c)| c)
                    .map(|(b, _)| (lat(b), b.frames.len() as u64)),
            );
        }
    }

    /// Receive → committed for a batch no required sink waits for (0: committed on arrival).
    pub fn committed_on_arrival(&self, frames: u64) {
        if let Some(r) = &self.recorder {
            r.record_weighted(Hist::Committed, [(0, frames)]);
        }
    }
}
