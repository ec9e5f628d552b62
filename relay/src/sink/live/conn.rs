//! One subscriber connection: Subscribe handshake, then the writer (queue → data stream, many
//! frames per write) and the status sender, until the subscriber leaves or the relay stops.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use contrail_protocol::codec::encode_stored_frame;
use contrail_protocol::proto::{
    subscriber_control::Msg, Subscribe, Subscribed, SubscriberControl, SubscriberStatus,
};
use contrail_protocol::{ErrorCode, FrameCodec};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use super::queue::{Entry, SubscriberPolicy, SubscriberQueue};
use super::settings::LiveSettings;
use crate::sink::Filter;

/// Frames taken from the queue per write (one coalesced buffer).
const FRAMES_PER_WRITE: usize = 4096;
/// How often status is considered; it is sent when it changed, or every `STATUS_IDLE`.
const STATUS_TICK: Duration = Duration::from_millis(250);
const STATUS_IDLE: Duration = Duration::from_secs(5);

struct Refusal {
    code: ErrorCode,
    message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

async fn send_control(send: &mut quinn::SendStream, codec: &FrameCodec, msg: Msg) -> bool {
    let mut buf = BytesMut::new();
    if codec
        .encode(&SubscriberControl { msg: Some(msg) }, &mut buf)
        .is_err()
    {
        return false;
    }
    send.write_all(&buf).await.is_ok()
}

async fn read_subscribe(
    recv: &mut quinn::RecvStream,
    codec: &FrameCodec,
) -> Result<Subscribe, Refusal> {
    let mut buf = BytesMut::new();
    loop {
        match codec.decode_message::<SubscriberControl>(&mut buf) {
            Ok(Some(SubscriberControl {
                msg: Some(Msg::Subscribe(s)),
            })) => return Ok(s),
            Ok(Some(_)) => {
                return Err(refuse(
                    ErrorCode::ProtocolViolation,
                    "first message must be Subscribe",
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(refuse(e.code(), format!("control stream: {e}"))),
        }
        match recv.read_chunk(codec.max_frame_bytes() + 4, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            _ => return Err(refuse(ErrorCode::Normal, "subscriber left")),
        }
    }
}

/// Checks a Subscribe and builds the subscriber's queue.
fn admit(
    settings: &LiveSettings,
    sub: &Subscribe,
    id: &str,
    m_dropped: metrics::Counter,
) -> Result<SubscriberQueue, Refusal> {
    if let Some(token) = settings.token.as_deref() {
        let ok: bool = token.as_bytes().ct_eq(sub.auth_token.as_bytes()).into();
        if !ok {
            return Err(refuse(ErrorCode::Unauthenticated, "authentication failed"));
        }
    }
    if sub.agent_patterns.len() > 64 || sub.kinds.len() > 1024 || sub.flight_id.len() > 256 {
        return Err(refuse(ErrorCode::ProtocolViolation, "filter too large"));
    }
    let policy = match contrail_protocol::proto::SubscriberPolicy::try_from(sub.policy) {
        Ok(contrail_protocol::proto::SubscriberPolicy::DropOldest) => SubscriberPolicy::DropOldest,
        Ok(contrail_protocol::proto::SubscriberPolicy::Block) => SubscriberPolicy::Block,
        Err(_) => return Err(refuse(ErrorCode::ProtocolViolation, "unknown policy")),
    };
    let flight = (!sub.flight_id.is_empty()).then(|| sub.flight_id.clone());
    let filter = Filter::new(&sub.kinds, &[], &sub.agent_patterns, &[], flight)
        .map_err(|e| refuse(ErrorCode::ProtocolViolation, e.to_string()))?;
    let capacity = match sub.queue_frames as usize {
        0 => settings.max_queue_frames,
        n => n,
    }
    .min(settings.max_queue_frames);
    let frame_pass_all = sub.kinds.is_empty() && sub.flight_id.is_empty();
    Ok(SubscriberQueue::new(
        id.to_string(),
        filter,
        frame_pass_all,
        policy,
        capacity,
        m_dropped,
    ))
}

/// What a subscriber's task needs from the registry that owns it. The registry implements it
/// on its slot guard, so this file does not import the registry (which spawns [`serve`]).
pub(crate) trait Slot: Send + 'static {
    /// The live sink's settings.
    fn settings(&self) -> &LiveSettings;
    /// Counts a refused subscriber.
    fn rejected(&self);
    /// `contrail_subscriber_dropped_total`.
    fn dropped_counter(&self) -> metrics::Counter;
    /// Registers `queue`: from now on the live sink fans batches out to it.
    fn register(&mut self, queue: Arc<SubscriberQueue>);
}

/// Serves one subscriber connection until it ends. Owned by the registry's task set; `guard`
/// releases the slot and unregisters the subscriber when this returns or is aborted.
pub(crate) async fn serve<S: Slot>(
    mut guard: S,
    conn: quinn::Connection,
    id: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = guard.settings().clone();
    let codec = FrameCodec::new(settings.max_frame_bytes);
    let setup = tokio::time::timeout(settings.handshake_timeout, async {
        let (send, mut recv) = conn.accept_bi().await.ok()?;
        let sub = read_subscribe(&mut recv, &codec).await;
        Some((send, recv, sub))
    })
    .await;
    let (mut send, mut recv, sub) = match setup {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(_) => {
            guard.rejected();
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::Timeout.close_code()),
                b"no Subscribe in time",
            );
            return;
        }
    };
    let queue = match sub.and_then(|s| admit(&settings, &s, &id, guard.dropped_counter())) {
        Ok(q) => Arc::new(q),
        Err(r) => {
            if r.code != ErrorCode::Normal {
                guard.rejected();
                tracing::info!(subscriber = %id, code = %r.code, reason = %r.message, "subscriber refused");
                let error = Msg::Error(contrail_protocol::proto::Error {
                    code: r.code as i32,
                    message: r.message.clone(),
                });
                let _ = tokio::time::timeout(
                    Duration::from_millis(200),
                    send_control(&mut send, &codec, error),
                )
                .await;
            }
            conn.close(
                quinn::VarInt::from_u32(r.code.close_code()),
                r.message.as_bytes(),
            );
            return;
        }
    };
    guard.register(queue.clone());
    let subscribed = Msg::Subscribed(Subscribed {
        subscriber_id: id.clone(),
        queue_frames: u32::try_from(queue.capacity()).unwrap_or(u32::MAX),
    });
    if !send_control(&mut send, &codec, subscribed).await {
        return;
    }
    tracing::info!(subscriber = %id, remote = %conn.remote_address(), policy = ?queue.policy(), queue_frames = queue.capacity(), "subscriber joined");
    let Ok(mut data) = conn.open_uni().await else {
        return;
    };
    let end = tokio::select! {
        r = writer(&queue, &mut data) => r,
        r = status_loop(&queue, &mut send, &codec) => r,
        r = watch_control(&mut recv) => r,
        _ = shutdown.wait_for(|stop| *stop) => (ErrorCode::Draining, "relay is draining"),
    };
    tracing::info!(subscriber = %id, code = %end.0, reason = end.1, dropped = queue.dropped(), sent = queue.sent(), "subscriber left");
    queue.close();
    if end.0 == ErrorCode::Draining {
        // Whatever was queued and written is on its way; tell the subscriber why it ends.
        let _ = data.finish();
        let status = status_msg(&queue);
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            send_control(&mut send, &codec, status),
        )
        .await;
    }
    conn.close(
        quinn::VarInt::from_u32(end.0.close_code()),
        end.1.as_bytes(),
    );
}

/// Moves queued frames to the data stream, encoding each as a length-prefixed `StoredFrame`
/// into one buffer per write.
async fn writer(
    queue: &SubscriberQueue,
    data: &mut quinn::SendStream,
) -> (ErrorCode, &'static str) {
    let mut entries: Vec<Entry> = Vec::with_capacity(64);
    let mut buf = BytesMut::with_capacity(256 * 1024);
    loop {
        if !queue.wait_non_empty().await {
            return (ErrorCode::Normal, "subscriber closed");
        }
        // Let the tasks that are ready (readers handing over batches) run first, so one write,
        // and one packet, carries frames from many agents instead of one.
        tokio::task::yield_now().await;
        let n = queue.pop_into(&mut entries, FRAMES_PER_WRITE);
        // One allocation for the whole write (an upper bound: every batch's bytes plus each
        // frame's StoredFrame header), instead of regrowing and copying while encoding.
        let need: usize = entries
            .iter()
            .map(|e| {
                let o = &e.batch.origin;
                e.batch.frames.data().len()
                    + e.frames * (o.agent_id.as_str().len() + o.session_hex.len() + 32)
            })
            .sum();
        buf.reserve(need);
        for e in entries.drain(..) {
            let b = &e.batch;
            let agent = b.origin.agent_id.as_str();
            let session = b.origin.session_hex.as_str();
            e.for_each_index(|i| {
                encode_stored_frame(
                    &mut buf,
                    agent,
                    session,
                    b.received_unix_ns,
                    b.frames.view(i).body(),
                );
            });
        }
        let mut chunk = [buf.split().freeze()];
        if data.write_all_chunks(&mut chunk).await.is_err() {
            return (ErrorCode::Normal, "data stream closed");
        }
        queue.add_sent(n);
    }
}

fn status_msg(queue: &SubscriberQueue) -> Msg {
    Msg::Status(SubscriberStatus {
        dropped: queue.dropped(),
        lag: queue.lag() as u64,
        sent: queue.sent(),
    })
}

/// Sends status when it changed (checked every `STATUS_TICK`), and at least every `STATUS_IDLE`.
async fn status_loop(
    queue: &SubscriberQueue,
    send: &mut quinn::SendStream,
    codec: &FrameCodec,
) -> (ErrorCode, &'static str) {
    let mut tick = tokio::time::interval(STATUS_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (u64::MAX, u64::MAX, u64::MAX);
    let mut last_sent_at = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let now = (queue.dropped(), queue.lag() as u64, queue.sent());
        if now == last && last_sent_at.elapsed() < STATUS_IDLE {
            continue;
        }
        last = now;
        last_sent_at = tokio::time::Instant::now();
        if !send_control(send, codec, status_msg(queue)).await {
            return (ErrorCode::Normal, "control stream closed");
        }
    }
}

/// Ends when the subscriber closes its control stream or the connection.
async fn watch_control(recv: &mut quinn::RecvStream) -> (ErrorCode, &'static str) {
    loop {
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(_)) => {} // nothing is expected after Subscribe; ignore
            Ok(None) => return (ErrorCode::Normal, "subscriber finished its control stream"),
            Err(_) => return (ErrorCode::Normal, "subscriber left"),
        }
    }
}
