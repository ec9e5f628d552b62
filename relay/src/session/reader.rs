//! The telemetry reader: the relay's hot path.
//!
//! Reads whatever the telemetry stream has into one buffer, decodes every complete frame into
//! one batch (zero-copy slices of that buffer), checks sequence and credits, records stats and
//! frame ages once per batch, and hands the batch to the fan-out. Nothing here allocates per
//! frame or takes a lock per frame.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use contrail_control::SessionStats;
use contrail_protocol::{ErrorCode, FrameCodec, FrameMeta};

use super::driver::End;
use crate::cursor::AgentCursor;
use crate::server::RelayCore;
use crate::sink::{BatchOrigin, SinkBatch};

pub(crate) enum ReadEnd {
    Closed(End),
    Violation(End),
}

pub(crate) async fn run(
    core: &RelayCore,
    conn: &quinn::Connection,
    origin: &Arc<BatchOrigin>,
    cursor: &Arc<AgentCursor>,
    stats: &SessionStats,
) -> ReadEnd {
    let limits = &core.config.limits;
    let codec = FrameCodec::new(limits.max_frame_bytes);
    let cap = limits.read_buffer_bytes;
    let mut metas: Vec<FrameMeta> = Vec::with_capacity(256);
    loop {
        let mut stream = match conn.accept_uni().await {
            Ok(s) => s,
            Err(e) => return ReadEnd::Closed(closed(e)),
        };
        let mut buf = BytesMut::with_capacity(cap.min(64 * 1024));
        loop {
            let room = cap - buf.len();
            if buf.capacity() - buf.len() < room.min(16 * 1024) {
                // The previous buffer is still shared with batches in sink queues: start a new
                // one (one allocation per buffer, not per frame).
                buf.reserve(room.min(64 * 1024));
            }
            let chunk = match stream.read_chunk(room, true).await {
                Ok(Some(chunk)) => chunk,
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
            buf.extend_from_slice(&chunk.bytes);
            let batch = match codec.decode_telemetry_batch(&mut buf, &mut metas) {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    if e.code() == ErrorCode::FrameTooLarge {
                        metrics::counter!("contrail_limit_hits_total", "limit" => "max_frame_bytes")
                            .increment(1);
                    }
                    return ReadEnd::Violation(End::new(e.code(), e.to_string()));
                }
            };
            if let Err(end) = process(core, origin, cursor, stats, batch).await {
                return ReadEnd::Violation(end);
            }
        }
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
    core: &RelayCore,
    origin: &Arc<BatchOrigin>,
    cursor: &Arc<AgentCursor>,
    stats: &SessionStats,
    mut batch: contrail_protocol::TelemetryBatch,
) -> Result<(), End> {
    if let Some(hook) = &core.hooks.on_batch {
        hook(&origin.agent_id);
    }
    let forwarded = cursor.forwarded();
    let dups = batch.skip_through(forwarded);
    if dups > 0 {
        core.frames_duplicate.increment(dups as u64);
    }
    if batch.is_empty() {
        return Ok(());
    }
    let first = batch.first_seq();
    if first != forwarded + 1 {
        return Err(End::new(
            ErrorCode::ProtocolViolation,
            format!("sequence gap: expected seq {}, got {first}", forwarded + 1),
        ));
    }
    for (i, m) in batch.metas().iter().enumerate() {
        if m.seq != first + i as u64 {
            return Err(End::new(
                ErrorCode::ProtocolViolation,
                format!("sequence gap at seq {}", m.seq),
            ));
        }
    }
    let last = batch.last_seq();
    let window_end = cursor.completed() + u64::from(core.config.limits.max_inflight);
    if last > window_end {
        return Err(End::new(
            ErrorCode::ProtocolViolation,
            format!(
                "frame {last} is beyond the credit window (acked + max_inflight = {window_end})"
            ),
        ));
    }
    if last == window_end {
        core.credits_exhausted.increment(1);
    }
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
    let now = Instant::now();
    let now_ns = crate::clock::unix_ns();
    core.latency
        .frame_ages(now_ns, batch.metas().iter().map(|m| m.sent_at_unix_ns));
    let sb = Arc::new(SinkBatch::new(
        origin.clone(),
        batch,
        now,
        now_ns,
        core.fanout.required(),
        cursor.clone(),
    ));
    core.fanout.dispatch(&sb).await;
    cursor.set_forwarded(last);
    stats
        .inflight
        .store(last.saturating_sub(cursor.completed()), Relaxed);
    Ok(())
}
