//! Latency recording for the relay's hot path: one call per batch, never per frame.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use contrail_control::latency::HistHandle;
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
    /// `now` is the batch's receive time (the windows' clock).
    pub fn frame_ages(&self, now: Instant, now_unix_ns: u64, sent_at: impl Iterator<Item = u64>) {
        let Some(r) = &self.recorder else { return };
        let (mut unset, mut ahead, mut old) = (0u64, 0u64, 0u64);
        r.record_weighted_at(
            now,
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
                    Some((now_unix_ns.saturating_sub(s), 1))
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

    /// Receive → ack for one ack (covering one or more batches); returns that latency.
    pub fn ack_sent(&self, received_at: Instant) -> std::time::Duration {
        let now = Instant::now();
        let latency = now.saturating_duration_since(received_at);
        if let Some(r) = &self.recorder {
            r.record_weighted_at(now, Hist::AckLatency, [(latency.as_nanos() as u64, 1)]);
        }
        latency
    }

    /// The latency histograms of sink `name` (resolved on its first write).
    pub fn for_sink(&self, name: &str) -> SinkLatency {
        SinkLatency {
            recorder: self.recorder.clone(),
            name: name.to_owned(),
            hists: OnceLock::new(),
        }
    }

    /// Receive → committed for a batch no required sink waits for (0: committed on arrival).
    pub fn committed_on_arrival(&self, frames: u64) {
        if let Some(r) = &self.recorder {
            r.record_weighted(Hist::Committed, [(0, frames)]);
        }
    }
}

/// One sink's latency histograms: receive → write accepted by the sink, and receive →
/// committed for the batches whose last required sink it was. Looked up once, on the first
/// write (a sink that never writes exports no series), not per write.
#[derive(Debug)]
pub struct SinkLatency {
    recorder: Option<LatencyRecorder>,
    name: String,
    hists: OnceLock<(HistHandle, HistHandle)>,
}

impl SinkLatency {
    /// Receive → write accepted, once per frame of the written batches; and receive →
    /// committed (every required sink accepted) for the batches in `committed`.
    pub fn written(&self, written: &[Arc<SinkBatch>], committed: &[bool]) {
        let Some(r) = &self.recorder else { return };
        let (write, commit) = self.hists.get_or_init(|| {
            (
                r.handle(Hist::SinkWrite(&self.name)),
                r.handle(Hist::Committed),
            )
        });
        let now = Instant::now();
        let lat = |b: &SinkBatch| now.saturating_duration_since(b.received_at).as_nanos() as u64;
        write.record_weighted_at(now, written.iter().map(|b| (lat(b), b.frames.len() as u64)));
        if committed.iter().any(|&c| c) {
            commit.record_weighted_at(
                now,
                written
                    .iter()
                    .zip(committed)
                    .filter(|(_, &c)| c)
                    .map(|(b, _)| (lat(b), b.frames.len() as u64)),
            );
        }
    }
}
