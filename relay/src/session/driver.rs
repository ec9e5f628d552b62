//! A session's IO: handshake, Register, then the telemetry reader and the control loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use contrail_control::{LifecycleState, SessionInfo, SessionStats};
use contrail_protocol::client::gate::WakeGate;
use contrail_protocol::proto::{control_message::Msg, ControlMessage, Registered};
use contrail_protocol::{AgentId, ErrorCode, FrameCodec, SessionId};
use ractor::ActorRef;

use super::reader::{self, ReadEnd};
use super::{Registration, SessionMsg, SessionShared};
use crate::server::RelayCore;
use crate::sink::BatchOrigin;

/// Why a session ended, with the close code it gets.
#[derive(Debug)]
pub(crate) struct End {
    pub code: ErrorCode,
    pub reason: String,
}

impl End {
    pub(crate) fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        End {
            code,
            reason: reason.into(),
        }
    }
}

async fn send_control(send: &mut quinn::SendStream, codec: &FrameCodec, msg: Msg) -> bool {
    let mut buf = BytesMut::new();
    if codec
        .encode(&ControlMessage { msg: Some(msg) }, &mut buf)
        .is_err()
    {
        return false;
    }
    send.write_all(&buf).await.is_ok()
}

/// Sends `Error{code}` (when a control stream exists) and closes the connection with `code`.
async fn reject(
    core: &RelayCore,
    shared: &SessionShared,
    send: Option<&mut quinn::SendStream>,
    codec: &FrameCodec,
    end: End,
) {
    core.count_rejection(end.code);
    if let Some(send) = send {
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            send_control(
                send,
                codec,
                Msg::Error(contrail_protocol::proto::Error {
                    code: end.code as i32,
                    message: end.reason.clone(),
                }),
            ),
        )
        .await;
    }
    shared.close(end.code, &end.reason);
}

async fn read_control(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    codec: &FrameCodec,
) -> Result<Option<ControlMessage>, End> {
    loop {
        match codec.decode_message::<ControlMessage>(buf) {
            Ok(Some(m)) => return Ok(Some(m)),
            Ok(None) => {}
            Err(e) => return Err(End::new(e.code(), format!("control stream: {e}"))),
        }
        match recv.read_chunk(codec.max_frame_bytes() + 4, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Ok(None),
            Err(_) => return Ok(None),
        }
    }
}

/// Runs one session from connection attempt to end. Returns when the session is over; the
/// actor then stops and its state drop does the cleanup.
pub(crate) async fn run(
    core: Arc<RelayCore>,
    incoming: quinn::Incoming,
    shared: Arc<SessionShared>,
    me: ActorRef<SessionMsg>,
) {
    let codec = FrameCodec::new(core.config.limits.max_frame_bytes);
    let started = Instant::now();
    // Boxed: the handshake's state (TLS accept, Register, supersede) is needed only until the
    // session is set up, and inline it would size this task for the session's whole life.
    let setup = tokio::time::timeout(
        core.config.limits.handshake_timeout(),
        Box::pin(handshake(&core, incoming, &shared, &me, &codec)),
    )
    .await;
    core.handshake_done();
    let (conn, mut send, mut recv, mut inbuf, reg, stats) = match setup {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(_) => {
            metrics::counter!("contrail_limit_hits_total", "limit" => "handshake_timeout")
                .increment(1);
            tracing::debug!(elapsed = ?started.elapsed(), "handshake/register timed out");
            core.count_rejection(ErrorCode::Timeout);
            shared.close(ErrorCode::Timeout, "handshake timeout");
            return;
        }
    };

    let origin = Arc::new(BatchOrigin {
        agent_id: reg.agent_id.clone(),
        session_id: reg.session_id,
        session_hex: reg.session_id.to_hex(),
    });
    let signal = reader::ReaderSignal::default();
    let end = {
        // Pinned in place and polled by reference: `select!` on the futures by value would move
        // them into its own state, and this task would hold both copies for the session's life.
        let mut telemetry = std::pin::pin!(reader::run(
            &core,
            &conn,
            &origin,
            &reg.cursor,
            &stats,
            &signal
        ));
        let mut control = std::pin::pin!(control_loop(
            &core, &mut send, &mut recv, &mut inbuf, &codec, &reg, &stats, &signal,
        ));
        tokio::select! {
            r = &mut telemetry => match r {
                ReadEnd::Closed(e) => e,
                ReadEnd::Violation(e) => e,
            },
            e = &mut control => e,
        }
    };
    if end.code == ErrorCode::Normal {
        tracing::debug!(agent = %reg.agent_id, reason = %end.reason, "session closed");
    } else {
        tracing::warn!(agent = %reg.agent_id, code = %end.code, reason = %end.reason, "session ended with error");
        if end.code != ErrorCode::Superseded {
            core.count_session_error();
            metrics::counter!("contrail_protocol_errors_total", "code" => end.code.label())
                .increment(1);
        }
        if matches!(
            end.code,
            ErrorCode::ProtocolViolation | ErrorCode::FrameTooLarge
        ) {
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                send_control(
                    &mut send,
                    &codec,
                    Msg::Error(contrail_protocol::proto::Error {
                        code: end.code as i32,
                        message: end.reason.clone(),
                    }),
                ),
            )
            .await;
        }
    }
    shared.close(end.code, &end.reason);
}

type Setup = (
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
    BytesMut,
    Registration,
    Arc<SessionStats>,
);

async fn handshake(
    core: &Arc<RelayCore>,
    incoming: quinn::Incoming,
    shared: &Arc<SessionShared>,
    me: &ActorRef<SessionMsg>,
    codec: &FrameCodec,
) -> Option<Setup> {
    let conn = match incoming.accept() {
        Ok(connecting) => match connecting.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "handshake failed");
                metrics::counter!("contrail_handshake_failures_total").increment(1);
                return None;
            }
        },
        Err(e) => {
            tracing::debug!(error = %e, "incoming connection failed");
            return None;
        }
    };
    if crate::sink::live::is_subscriber(&conn) {
        // A live subscriber, not an agent: the live sink's registry takes the connection.
        crate::sink::live::hand_over(core, conn);
        return None;
    }
    shared.set_conn(conn.clone());
    if core.is_draining() {
        reject(
            core,
            shared,
            None,
            codec,
            End::new(ErrorCode::Draining, "relay is draining"),
        )
        .await;
        return None;
    }
    let (mut send, mut recv) = tokio::select! {
        bi = conn.accept_bi() => match bi {
            Ok(s) => s,
            Err(_) => return None,
        },
        uni = conn.accept_uni() => {
            if uni.is_ok() {
                reject(core, shared, None, codec, End::new(ErrorCode::NotRegistered, "telemetry before Register")).await;
            }
            return None;
        }
    };
    let mut inbuf = BytesMut::new();
    let register = match read_control(&mut recv, &mut inbuf, codec).await {
        Ok(Some(ControlMessage {
            msg: Some(Msg::Register(r)),
        })) => r,
        Ok(Some(_)) => {
            reject(
                core,
                shared,
                Some(&mut send),
                codec,
                End::new(
                    ErrorCode::NotRegistered,
                    "first control message must be Register",
                ),
            )
            .await;
            return None;
        }
        Ok(None) => return None,
        Err(end) => {
            reject(core, shared, Some(&mut send), codec, end).await;
            return None;
        }
    };
    let agent_id = match AgentId::new(register.agent_id.clone()) {
        Ok(a) => a,
        Err(e) => {
            reject(
                core,
                shared,
                Some(&mut send),
                codec,
                End::new(ErrorCode::ProtocolViolation, format!("agent_id: {e}")),
            )
            .await;
            return None;
        }
    };
    if let Err(code) = core.authenticate(&agent_id, &register.auth_token, &conn) {
        reject(
            core,
            shared,
            Some(&mut send),
            codec,
            End::new(code, "authentication failed"),
        )
        .await;
        return None;
    }
    if core.is_draining() {
        reject(
            core,
            shared,
            Some(&mut send),
            codec,
            End::new(ErrorCode::Draining, "relay is draining"),
        )
        .await;
        return None;
    }
    if !core.try_reserve_session() {
        reject(
            core,
            shared,
            Some(&mut send),
            codec,
            End::new(ErrorCode::TooManySessions, "relay is at max_sessions"),
        )
        .await;
        return None;
    }
    let session_id = SessionId::from_random_bytes(rand::random());
    // From here the session counts against max_sessions; the registration (set below) makes
    // the actor's state drop release it.
    let claim = register.resume.as_ref().map(|r| r.last_acked_seq);
    let old = core.claim(&agent_id, (me.clone(), shared.clone())).await;
    if let Some((old_actor, old_shared)) = old {
        tracing::info!(agent = %agent_id, "superseding the previous session");
        metrics::counter!("contrail_sessions_superseded_total").increment(1);
        old_shared.close(ErrorCode::Superseded, "superseded by a newer session");
        let _ = old_actor
            .stop_and_wait(Some("superseded".into()), Some(Duration::from_secs(5)))
            .await;
    }
    let cursor = core.resume.attach(&agent_id, claim, Instant::now());
    let reg = Registration {
        agent_id: agent_id.clone(),
        session_id,
        cursor: cursor.clone(),
    };
    shared.set_registration(reg.clone());
    let limits = &core.config.limits;
    let registered = Registered {
        session_id: session_id.to_hex(),
        relay_id: core.relay_id.clone(),
        max_inflight: limits.max_inflight,
        heartbeat_interval_ms: limits.heartbeat_interval_ms,
        resume_from_seq: cursor.completed(),
        max_frame_bytes: limits.max_frame_bytes as u32,
        fleet: Vec::new(),
    };
    if !send_control(&mut send, codec, Msg::Registered(registered)).await {
        return None;
    }
    let stats = Arc::new(SessionStats::default());
    stats.last_heartbeat_unix_ms.store(
        crate::clock::unix_ms(),
        std::sync::atomic::Ordering::Relaxed,
    );
    core.events.session_up(Arc::new(SessionInfo {
        agent_id: agent_id.as_str().to_string(),
        session_id: session_id.to_hex(),
        remote_addr: conn.remote_address(),
        connected_since_unix_ms: crate::clock::unix_ms(),
        stats: stats.clone(),
    }));
    tracing::debug!(agent = %agent_id, session = %session_id, resume_from = cursor.completed(), "session registered");
    Some((conn, send, recv, inbuf, reg, stats))
}

/// Reads pings, writes acks (coalesced: one per wake-up, covering every batch completed since),
/// and tells the agent to leave when the relay drains.
#[allow(clippy::too_many_arguments)]
async fn control_loop(
    core: &RelayCore,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    inbuf: &mut BytesMut,
    codec: &FrameCodec,
    reg: &Registration,
    stats: &SessionStats,
    signal: &reader::ReaderSignal,
) -> End {
    use std::sync::atomic::Ordering::Relaxed;
    let mut lifecycle = core.lifecycle.subscribe();
    let mut acked = reg.cursor.completed();
    let mut drained = false;
    let ack_delay = core.config.limits.ack_delay();
    let ack_now = core.config.limits.ack_now_threshold();
    // Without a delay every completion must wake this loop; with one, only the first and the
    // threshold do (see `AgentCursor::complete_through`).
    let wake_after = if ack_delay.is_zero() { 1 } else { ack_now };
    reg.cursor.set_acked(acked, wake_after);
    // When the oldest frame not yet acked must be acked by (acks are coalesced until then).
    let mut ack_due: Option<tokio::time::Instant> = None;
    // The control stream is read only when it woke the loop (acks wake it far more often).
    let control_gate = WakeGate::new();
    loop {
        if !drained && *lifecycle.borrow_and_update() == LifecycleState::Draining {
            drained = true;
            let drain = Msg::Drain(contrail_protocol::proto::Drain {
                reason: core.lifecycle.drain_reason().unwrap_or_default(),
                reconnect_after_ms: core.config.drain.reconnect_after_ms,
                relays: Vec::new(),
            });
            if !send_control(send, codec, drain).await {
                return End::new(ErrorCode::Normal, "control stream closed");
            }
        }
        let completed = reg.cursor.completed();
        if completed > acked {
            let now = tokio::time::Instant::now();
            let due = *ack_due.get_or_insert(now + ack_delay);
            // Coalesce: acks wait (up to `ack_delay`) to cover several frames, which saves a
            // packet each way per frame; a busy agent (a quarter of its window waiting) is
            // acked at once, and so is an agent whose batches come further apart than
            // `ack_delay`: no second frame would arrive in time, waiting would only cost a
            // timer and latency (its QUIC ACK rides in the ack's packet either way).
            let counters = &core.acks_sent;
            let trigger = if drained {
                Some(&counters.drain)
            } else if completed - acked >= ack_now {
                Some(&counters.window)
            } else if signal.batch_interval().is_some_and(|i| i > ack_delay) {
                Some(&counters.pace)
            } else if now >= due {
                Some(&counters.delay)
            } else {
                None
            };
            if let Some(trigger) = trigger {
                ack_due = None;
                acked = completed;
                reg.cursor.set_acked(acked, wake_after);
                let ack = Msg::Ack(contrail_protocol::proto::Ack { up_to_seq: acked });
                if !send_control(send, codec, ack).await {
                    return End::new(ErrorCode::Normal, "control stream closed");
                }
                trigger.increment(1);
                stats
                    .inflight
                    .store(reg.cursor.forwarded().saturating_sub(acked), Relaxed);
                if let Some(t) = reg.cursor.completed_received_at() {
                    core.latency.ack_sent(t);
                    let us = (t.elapsed().as_micros() as u64).max(1);
                    stats.ack_latency_us.store(us, Relaxed);
                }
                continue;
            }
        }
        let ack_timer = async {
            match ack_due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ack_timer => {}
            _ = reg.cursor.notify.notified() => {}
            _ = signal.notify.notified() => {
                if let Some(seq) = signal.take() {
                    let msg = Msg::Nack(contrail_protocol::proto::Nack {
                        seq,
                        status: contrail_protocol::proto::NackStatus::RetryWithBackoff as i32,
                        reason: "over rate quota".into(),
                        retry_after_ms: core.config.quotas.retry_after_ms,
                    });
                    if !send_control(send, codec, msg).await {
                        return End::new(ErrorCode::Normal, "control stream closed");
                    }
                }
            }
            changed = lifecycle.changed(), if !drained => {
                if changed.is_err() {
                    drained = true;
                }
            }
            msg = control_gate.run(read_control(recv, inbuf, codec)) => match msg {
                Ok(Some(ControlMessage { msg: Some(Msg::Ping(p)) })) => {
                    stats.last_heartbeat_unix_ms.store(crate::clock::unix_ms(), Relaxed);
                    let pong = Msg::Pong(contrail_protocol::proto::Pong {
                        nonce: p.nonce,
                        sent_at_unix_ns: p.sent_at_unix_ns,
                    });
                    if !send_control(send, codec, pong).await {
                        return End::new(ErrorCode::Normal, "control stream closed");
                    }
                }
                Ok(Some(_)) => {
                    return End::new(ErrorCode::ProtocolViolation, "unexpected control message after Register")
                }
                Ok(None) => return End::new(ErrorCode::Normal, "agent closed the control stream"),
                Err(end) => return end,
            }
        }
    }
}
