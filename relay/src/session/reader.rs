//! The telemetry reader: the relay's hot path.
//!
//! Reads whatever the telemetry stream has into one buffer, decodes every complete frame into
//! one batch (zero-copy slices of that buffer), checks sequence, credits and quota
//! ([`credit::check_batch`]), records stats and frame ages once per batch, and hands the batch
//! to the fan-out. Nothing here allocates per frame or takes a lock per frame.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use contrail_control::metric_names as m;
use contrail_protocol::{ErrorCode, FrameCodec, FrameMeta};
use futures::FutureExt;

use super::context::SessionCtx;
use super::credit::{self, Accepted, CreditState, Window};
use crate::core::{End, RelayCore};
use crate::sink::SinkBatch;

pub(crate) enum ReadEnd {
    Closed(End),
    Violation(End),
}

impl ReadEnd {
    /// Why the session ends.
    pub(crate) fn into_end(self) -> End {
        match self {
            ReadEnd::Closed(e) | ReadEnd::Violation(e) => e,
        }
    }
}

/// Per-session reader state that survives across batches.
struct ReadState {
    /// Quota and rewind state of [`credit::check_batch`].
    credit: CreditState,
    /// The QUIC max ACK delay asked of this agent, adapted to its batch interval.
    ack_delay: AckDelayAdapter,
}

/// Follows an agent's interval between telemetry batches and picks the QUIC max ACK delay to
/// ask of it: 1.5 × the interval (smoothed), within `[base, cap]`. A slow agent then ACKs the
/// relay's packets (acks, pongs) inside its next frame instead of in a packet of its own. The
/// connection is told only when the pick moves by more than a quarter, so a steady agent costs
/// one call, not one per batch.
#[derive(Debug)]
pub(crate) struct AckDelayAdapter {
    base_us: u64,
    cap_us: u64,
    last: Option<Instant>,
    /// Smoothed batch interval (EWMA, weight 1/2: a new rate shows within three batches),
    /// µs; 0 until two batches were seen. Tracked even when adapting is off (ack coalescing
    /// uses it).
    interval_us: u64,
    /// What the connection was last asked for, µs (`base_us`: the endpoint's default).
    requested_us: u64,
}

impl AckDelayAdapter {
    /// Asks between `base` (the endpoint's default) and `cap`; with no `cap` above `base` it never
    /// asks anything.
    pub(crate) fn new(base: Duration, cap: Option<Duration>) -> Self {
        let base_us = base.as_micros() as u64;
        let cap_us = cap.map_or(base_us, |c| (c.as_micros() as u64).max(base_us));
        Self {
            base_us,
            cap_us,
            last: None,
            interval_us: 0,
            requested_us: base_us,
        }
    }

    /// Records a batch received at `now`; returns the delay to ask for when it should change
    /// (`None` inside the result: back to the endpoint's default).
    pub(crate) fn on_batch(&mut self, now: Instant) -> Option<Option<Duration>> {
        let last = self.last.replace(now)?;
        let gap = (now.saturating_duration_since(last).as_micros() as u64).max(1);
        self.interval_us = if self.interval_us == 0 {
            gap
        } else {
            (self.interval_us / 2 + gap / 2).max(1)
        };
        if self.cap_us <= self.base_us {
            return None;
        }
        let want = (self.interval_us.saturating_mul(3) / 2).clamp(self.base_us, self.cap_us);
        // Moves of a quarter or more, and to either bound, change the request.
        let moved = want != self.requested_us
            && (want == self.base_us
                || want == self.cap_us
                || want.abs_diff(self.requested_us) > self.requested_us / 4);
        if !moved {
            return None;
        }
        self.requested_us = want;
        Some((want > self.base_us).then(|| Duration::from_micros(want)))
    }
}

/// Chunks taken per wake-up (more wait for the next batch).
const READ_CHUNKS: usize = 32;

/// Where the reader gets the agent's telemetry streams.
pub(crate) enum Streams<'a> {
    /// It accepts them itself (a session without a command side).
    Accept,
    /// The session's command side accepts them, keeps the command output stream and hands
    /// telemetry streams over.
    Handed(&'a mut tokio::sync::mpsc::Receiver<super::commands::UniStream>),
}

impl Streams<'_> {
    async fn next(&mut self, conn: &quinn::Connection) -> Result<quinn::RecvStream, End> {
        match self {
            Streams::Accept => conn.accept_uni().await.map_err(closed),
            Streams::Handed(rx) => match rx.recv().await {
                Some(Ok(s)) => Ok(s),
                Some(Err(e)) => Err(closed(e)),
                None => Err(closed(quinn::ConnectionError::LocallyClosed)),
            },
        }
    }
}

pub(crate) async fn run(ctx: &SessionCtx, mut streams: Streams<'_>) -> ReadEnd {
    let core = ctx.core();
    let limits = &core.config.limits;
    let mut state = ReadState {
        credit: CreditState::new(crate::quota::SessionQuota::new(
            &core.config.quotas,
            Instant::now(),
        )),
        // 0 asks QUIC's default of 25 ms.
        ack_delay: AckDelayAdapter::new(
            limits.quic_max_ack_delay().max(Duration::from_millis(25)),
            limits.quic_max_ack_delay_cap(),
        ),
    };
    let codec = FrameCodec::new(limits.max_frame_bytes);
    let cap = limits.read_buffer_bytes;
    let mut metas: Vec<FrameMeta> = Vec::new();
    loop {
        let mut stream = match streams.next(&ctx.conn).await {
            Ok(s) => s,
            Err(end) => return ReadEnd::Closed(end),
        };
        // Allocated on the first data, so idle sessions hold no read buffer.
        let mut buf = BytesMut::new();
        loop {
            // Wait for one chunk, then take everything else already received without
            // waiting: one batch per wake-up, not per packet (bounded by the stream's receive
            // window, `read_buffer_bytes`). Only the single-chunk read is awaited, so the
            // chunk array below lives on the stack, not in every idle session's task.
            let first = match stream.read_chunk(usize::MAX, true).await {
                Ok(Some(c)) => c.bytes,
                Ok(None) => {
                    if buf.is_empty() {
                        break;
                    }
                    return ReadEnd::Violation(End::new(
                        ErrorCode::ProtocolViolation,
                        "telemetry stream ended inside a frame",
                    ));
                }
                Err(quinn::ReadError::ConnectionLost(e)) => return ReadEnd::Closed(closed(e)),
                Err(e) => {
                    return ReadEnd::Closed(End::new(ErrorCode::Normal, format!("stream: {e}")))
                }
            };
            {
                let mut chunks: [bytes::Bytes; READ_CHUNKS] = Default::default();
                chunks[0] = first;
                let mut n = 1;
                // An end of stream or error found here shows again on the next awaited read.
                while n < READ_CHUNKS {
                    let room = READ_CHUNKS - n;
                    match stream.read_chunks(&mut chunks[n..]).now_or_never() {
                        Some(Ok(Some(k))) if k > 0 => {
                            n += k;
                            if k < room {
                                break; // nothing more is buffered
                            }
                        }
                        _ => break,
                    }
                }
                let received: usize = chunks[..n].iter().map(bytes::Bytes::len).sum();
                if buf.capacity() - buf.len() < received {
                    // The previous buffer is still shared with batches in sink queues: start a
                    // new one (one allocation per buffer, not per frame).
                    buf.reserve(received.max(cap.min(64 * 1024)));
                }
                for chunk in &chunks[..n] {
                    buf.extend_from_slice(chunk);
                }
            }
            // The batch takes the metadata vector; size the next one up front (frames are at
            // least ~16 bytes) instead of letting it regrow frame by frame.
            metas.reserve(buf.len() / 64 + 8);
            let batch = match codec.decode_telemetry_batch(&mut buf, &mut metas) {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    if e.code() == ErrorCode::FrameTooLarge {
                        metrics::counter!(m::LIMIT_HITS, "limit" => "max_frame_bytes").increment(1);
                    }
                    return ReadEnd::Violation(End::new(e.code(), e.to_string()));
                }
            };
            if let Err(end) = process(ctx, &mut state, batch).await {
                return ReadEnd::Violation(end);
            }
        }
    }
}

fn count_dropped(core: &RelayCore, discarded: usize, duplicates: usize) {
    if discarded > 0 {
        core.frames_discarded.increment(discarded as u64);
    }
    if duplicates > 0 {
        core.frames_duplicate.increment(duplicates as u64);
    }
}

fn closed(e: quinn::ConnectionError) -> End {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => End::new(
            ErrorCode::Normal,
            format!("agent closed (code {})", c.error_code),
        ),
        quinn::ConnectionError::LocallyClosed => End::new(ErrorCode::Normal, "closed by relay"),
        quinn::ConnectionError::TimedOut => End::new(ErrorCode::Normal, "idle timeout"),
        other => End::new(ErrorCode::Normal, format!("connection lost: {other}")),
    }
}

async fn process(
    ctx: &SessionCtx,
    state: &mut ReadState,
    mut batch: contrail_protocol::TelemetryBatch,
) -> Result<(), End> {
    let SessionCtx {
        ingest,
        conn,
        reg,
        origin,
        stats,
        signal,
        ..
    } = ctx;
    let core = &*ingest.core;
    let cursor = &reg.cursor;
    if let Some(hook) = &core.hooks.on_batch {
        hook(&origin.agent_id);
    }
    let now = Instant::now();
    let window = Window {
        forwarded: cursor.forwarded(),
        acked: cursor.acked(),
        max_inflight: u64::from(core.config.limits.max_inflight),
    };
    let last = match credit::check_batch(&mut state.credit, &mut batch, window, now) {
        Ok(Accepted::Forward {
            last,
            discarded,
            duplicates,
            window_full,
            ..
        }) => {
            count_dropped(core, discarded, duplicates);
            if window_full {
                core.credits_exhausted.increment(1);
            }
            last
        }
        Ok(Accepted::Dropped {
            discarded,
            duplicates,
        }) => {
            count_dropped(core, discarded, duplicates);
            return Ok(());
        }
        Ok(Accepted::Nack {
            seq,
            discarded,
            duplicates,
        }) => {
            metrics::counter!(m::LIMIT_HITS, "limit" => "agent_rate").increment(1);
            metrics::counter!(m::NACKS_SENT, "status" => "retry_with_backoff").increment(1);
            count_dropped(core, discarded, duplicates);
            signal.raise(seq);
            return Ok(());
        }
        Err(e) => return Err(End::new(e.code(), e.to_string())),
    };
    let n = batch.len() as u64;
    let bytes = batch.data().len() as u64;
    stats.frames.fetch_add(n, Relaxed);
    stats.bytes.fetch_add(bytes, Relaxed);
    core.frames_received.increment(n);
    core.bytes_received.increment(bytes);
    let flight = batch.view(batch.len() - 1).flight_id();
    if !flight.is_empty() {
        let mut current = stats.flight_id.lock();
        if current.as_deref() != Some(flight) {
            *current = Some(flight.to_string());
        }
    }
    let now_ns = crate::clock::unix_ns();
    // Telemetry is a sign of life as good as a ping (agents skip pings while they stream).
    stats
        .last_heartbeat_unix_ms
        .store(now_ns / 1_000_000, Relaxed);
    if let Some(delay) = state.ack_delay.on_batch(now) {
        conn.set_requested_max_ack_delay(delay);
    }
    signal.set_batch_interval_us(state.ack_delay.interval_us);
    core.latency
        .frame_ages(now, now_ns, batch.metas().iter().map(|m| m.sent_at_unix_ns));
    if ingest.fanout.required() == 0 {
        core.latency.committed_on_arrival(n);
    }
    let sb = Arc::new(SinkBatch::new(
        origin.clone(),
        batch,
        now,
        now_ns,
        ingest.fanout.required(),
        cursor.clone(),
    ));
    ingest.fanout.dispatch(&sb).await;
    cursor.set_forwarded(last);
    stats
        .inflight
        .store(last.saturating_sub(cursor.acked()), Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds batches `every` apart from `t` on; returns every request made.
    fn feed(
        a: &mut AckDelayAdapter,
        t: &mut Instant,
        every: Duration,
        n: usize,
    ) -> Vec<Option<Duration>> {
        let mut asked = Vec::new();
        for _ in 0..n {
            *t += every;
            if let Some(r) = a.on_batch(*t) {
                asked.push(r);
            }
        }
        asked
    }

    #[test]
    fn a_slow_agent_is_asked_for_one_and_a_half_intervals_once() {
        let mut a = AckDelayAdapter::new(ms(125), Some(ms(1_500)));
        let mut t = Instant::now();
        let asked = feed(&mut a, &mut t, ms(500), 50);
        assert_eq!(
            asked,
            vec![Some(ms(750))],
            "one request for a steady 2 Hz agent"
        );
    }

    #[test]
    fn a_busy_agent_keeps_the_default_and_the_cap_holds() {
        let mut a = AckDelayAdapter::new(ms(125), Some(ms(1_500)));
        let mut t = Instant::now();
        assert!(
            feed(&mut a, &mut t, ms(20), 100).is_empty(),
            "50 Hz: default kept"
        );
        let asked = feed(&mut a, &mut t, ms(5_000), 10);
        assert_eq!(asked.last(), Some(&Some(ms(1_500))), "0.2 Hz: capped");
        // Speeding up again moves the request back to the default (None).
        let asked = feed(&mut a, &mut t, ms(10), 50);
        assert_eq!(asked.last(), Some(&None), "back to the default when busy");
    }

    #[test]
    fn adapting_is_off_without_a_cap_above_the_default() {
        for cap in [None, Some(ms(125)), Some(ms(50))] {
            let mut a = AckDelayAdapter::new(ms(125), cap);
            let mut t = Instant::now();
            assert!(feed(&mut a, &mut t, ms(500), 20).is_empty(), "cap {cap:?}");
            assert_eq!(
                a.interval_us, 500_000,
                "the interval is tracked all the same (ack coalescing reads it)"
            );
        }
    }
}
