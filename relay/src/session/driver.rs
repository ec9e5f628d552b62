//! A session's IO: handshake, Register, then the telemetry reader and the control loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use contrail_control::metric_names as m;
use contrail_control::{LifecycleState, SessionInfo, SessionStats};
use contrail_protocol::client::gate::WakeGate;
use contrail_protocol::proto::{control_message::Msg, ControlMessage, Registered};
use contrail_protocol::{AgentId, ErrorCode, FrameCodec, SessionId};
use ractor::ActorRef;

use super::context::{Ingest, ReaderSignal, SessionCtx};
use super::reader;
use super::shared::{Registration, SessionMsg, SessionShared};
use crate::core::{End, RelayCore};
use crate::sink::BatchOrigin;

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

/// A session refused during set-up: why, and its connection.
pub(crate) struct Refusal {
    end: End,
    conn: quinn::Connection,
    /// Sent instead of `Error` (placement): the agent is told where to go.
    redirect: Option<contrail_protocol::proto::Redirect>,
}

/// Ends a session with `end`: when a control stream is open, sends `Error{code, message}` on
/// it, finishes it and waits (at most `limits.error_linger_ms`) until the agent has
/// acknowledged that data or closed, then closes the connection with the code. Closing at once
/// would discard the unsent message (quinn drops stream data on close).
pub(crate) async fn close_with_error(
    core: &RelayCore,
    shared: &SessionShared,
    conn: Option<&quinn::Connection>,
    send: Option<&mut quinn::SendStream>,
    codec: &FrameCodec,
    end: &End,
) {
    let error = Msg::Error(contrail_protocol::proto::Error {
        code: end.code as i32,
        message: end.reason.clone(),
    });
    close_with_message(core, shared, conn, send, codec, error, end).await;
}

/// [`close_with_error`] with `message` in place of the `Error` (a `Redirect`).
pub(crate) async fn close_with_message(
    core: &RelayCore,
    shared: &SessionShared,
    conn: Option<&quinn::Connection>,
    send: Option<&mut quinn::SendStream>,
    codec: &FrameCodec,
    error: Msg,
    end: &End,
) {
    if let (Some(send), Some(conn)) = (send, conn) {
        let delivered = async {
            if !send_control(send, codec, error).await || send.finish().is_err() {
                return;
            }
            // Ask the agent to ACK at once instead of after its (possibly adapted, up to
            // `quic_max_ack_delay_cap_ms`) ACK delay.
            conn.request_immediate_ack();
            tokio::select! {
                // Acknowledged (or the agent stopped reading the stream: nothing to wait for).
                _ = send.stopped() => {}
                _ = conn.closed() => {}
            }
        };
        if tokio::time::timeout(core.config.limits.error_linger(), delivered)
            .await
            .is_err()
        {
            metrics::counter!(m::LIMIT_HITS, "limit" => "error_linger").increment(1);
            tracing::debug!(code = %end.code, "agent did not acknowledge the Error message in time");
        }
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
    ingest: Arc<Ingest>,
    connecting: quinn::Connecting,
    deadline: tokio::time::Instant,
    shared: Arc<SessionShared>,
    me: ActorRef<SessionMsg>,
) {
    let core = ingest.core.clone();
    let codec = FrameCodec::new(core.config.limits.max_frame_bytes);
    let started = Instant::now();
    // Counted in `max_pending_handshakes` until registered or closed (a refused connection
    // lingering to deliver its Error too), however this task ends.
    let pending = PendingHandshake(&core);
    // Boxed: the handshake's state (TLS accept, Register, supersede) is needed only until the
    // session is set up, and inline it would size this task for the session's whole life.
    // The control stream's send side once the agent opened it: refusals and a handshake
    // timeout say why on it.
    let mut control: Option<quinn::SendStream> = None;
    let setup = tokio::time::timeout_at(
        deadline,
        Box::pin(handshake(
            &ingest,
            connecting,
            &shared,
            &me,
            codec,
            &mut control,
        )),
    )
    .await;
    let (ctx, mut stream) = match setup {
        Ok(Ok(s)) => {
            drop(pending);
            s
        }
        Ok(Err(None)) => return,
        Ok(Err(Some(refusal))) => {
            // Outside the handshake timeout: the wait for the Error to be delivered has its own
            // bound (`limits.error_linger_ms`).
            core.count_rejection(refusal.end.code);
            tracing::debug!(code = %refusal.end.code, reason = %refusal.end.reason, "registration refused");
            match refusal.redirect {
                Some(r) => {
                    Box::pin(close_with_message(
                        &core,
                        &shared,
                        Some(&refusal.conn),
                        control.as_mut(),
                        &codec,
                        Msg::Redirect(r),
                        &refusal.end,
                    ))
                    .await
                }
                None => {
                    Box::pin(close_with_error(
                        &core,
                        &shared,
                        Some(&refusal.conn),
                        control.as_mut(),
                        &codec,
                        &refusal.end,
                    ))
                    .await
                }
            }
            return;
        }
        Err(_) => {
            metrics::counter!(m::LIMIT_HITS, "limit" => "handshake_timeout").increment(1);
            tracing::debug!(elapsed = ?started.elapsed(), "handshake/register timed out");
            core.count_rejection(ErrorCode::Timeout);
            let end = End::new(ErrorCode::Timeout, "handshake/Register timeout");
            let conn = shared.conn();
            Box::pin(close_with_error(
                &core,
                &shared,
                conn.as_ref(),
                control.as_mut(),
                &codec,
                &end,
            ))
            .await;
            return;
        }
    };

    // A session that can receive commands (the agent has the `commands` capability and the
    // relay a downlink) runs a command side beside the reader and the control loop; the others
    // have none: their reader accepts its streams itself and their control loop polls no
    // command link. (Polling a channel on every wake-up of 2,000 cache-cold sessions cost the
    // `fleet` workload ≈ 3% of the relay's CPU.)
    let end = if ctx.core().downlink.is_some() && ctx.reg.commands {
        let (mut link, side, mut uni_streams) = super::commands::channels();
        // Boxed: inline, this branch's three futures would size every session's task (sessions
        // without commands included: a state machine is as large as its largest branch; the
        // session task grew to ≈ 13 KB per idle session in round 10, heaptrack). Polled by
        // reference: `select!` on them by value would move them into its own state.
        let mut telemetry = Box::pin(reader::run(&ctx, reader::Streams::Handed(&mut uni_streams)));
        let mut control = Box::pin(control_loop(&ctx, &mut stream, Some(&mut link)));
        // Gated like the control stream's read: polling it locks the connection (accept_uni),
        // and the task wakes for every telemetry batch.
        let commands_gate = WakeGate::new();
        let mut commands = Box::pin(commands_gate.run(super::commands::run(
            ctx.core(),
            &ctx.conn,
            &ctx.reg,
            side,
        )));
        // Biased: the reader first, so the control loop sees what it just forwarded.
        tokio::select! {
            biased;
            r = &mut telemetry => r.into_end(),
            e = &mut control => e,
            e = &mut commands => e,
        }
    } else {
        let mut telemetry = std::pin::pin!(reader::run(&ctx, reader::Streams::Accept));
        let mut control = std::pin::pin!(control_loop(&ctx, &mut stream, None));
        tokio::select! {
            biased;
            r = &mut telemetry => r.into_end(),
            e = &mut control => e,
        }
    };
    let agent = &ctx.reg.agent_id;
    if end.code == ErrorCode::Normal {
        tracing::debug!(%agent, reason = %end.reason, "session closed");
    } else {
        tracing::warn!(%agent, code = %end.code, reason = %end.reason, "session ended with error");
        if end.code != ErrorCode::Superseded {
            core.count_session_error();
            metrics::counter!(m::PROTOCOL_ERRORS, "code" => end.code.label()).increment(1);
        }
        if end.code != ErrorCode::Superseded {
            // Say why before closing (a superseded session was closed by its successor).
            Box::pin(close_with_error(
                &core,
                &shared,
                Some(&ctx.conn),
                Some(&mut stream.send),
                &ctx.codec,
                &end,
            ))
            .await;
            return;
        }
    }
    shared.close(end.code, &end.reason);
}

/// Releases a `max_pending_handshakes` slot when dropped.
struct PendingHandshake<'a>(&'a RelayCore);

impl Drop for PendingHandshake<'_> {
    fn drop(&mut self) {
        self.0.handshake_done();
    }
}

/// The agent's control stream, once registered.
struct ControlStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Bytes read from `recv` and not yet decoded.
    inbuf: BytesMut,
}

async fn handshake(
    ingest: &Arc<Ingest>,
    connecting: quinn::Connecting,
    shared: &Arc<SessionShared>,
    me: &ActorRef<SessionMsg>,
    codec: FrameCodec,
    control: &mut Option<quinn::SendStream>,
) -> Result<(SessionCtx, ControlStream), Option<Refusal>> {
    let core = &ingest.core;
    let codec = &codec;
    let conn = match connecting.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "handshake failed");
            metrics::counter!(m::HANDSHAKE_FAILURES).increment(1);
            return Err(None);
        }
    };
    shared.set_conn(conn.clone());
    let refuse = |end: End| {
        Err(Some(Refusal {
            end,
            conn: conn.clone(),
            redirect: None,
        }))
    };
    // Waits (at most `error_linger_ms`) for the agent's control stream, to say why on it.
    let control_stream = || async {
        match tokio::time::timeout(core.config.limits.error_linger(), conn.accept_bi()).await {
            Ok(Ok((send, _recv))) => Some(send),
            _ => None,
        }
    };
    // Draining: refused without waiting for Register, unless the fleet has a relay to redirect
    // a capable agent to (placement reads Register's capabilities below).
    if core.is_draining()
        && core
            .placement
            .targets(&core.relay_id, false)
            .await
            .is_empty()
    {
        *control = control_stream().await;
        return refuse(End::new(ErrorCode::Draining, "relay is draining"));
    }
    let not_registered = || End::new(ErrorCode::NotRegistered, "telemetry before Register");
    let mut recv = tokio::select! {
        bi = conn.accept_bi() => match bi {
            Ok((send, recv)) => {
                *control = Some(send);
                recv
            }
            Err(_) => return Err(None),
        },
        uni = conn.accept_uni() => {
            if uni.is_err() {
                return Err(None);
            }
            // Telemetry came first. The agent may have opened its control stream too (streams
            // are seen in the order their data arrives): take it, briefly, to say why.
            *control = control_stream().await;
            return refuse(not_registered());
        }
    };
    let mut inbuf = BytesMut::new();
    // Telemetry before Register is refused the same way whichever stream came first.
    let first = tokio::select! {
        m = read_control(&mut recv, &mut inbuf, codec) => m,
        uni = conn.accept_uni() => match uni {
            Ok(_) => return refuse(not_registered()),
            Err(_) => return Err(None),
        },
    };
    let register = match first {
        Ok(Some(ControlMessage {
            msg: Some(Msg::Register(r)),
        })) => r,
        Ok(Some(_)) => {
            return refuse(End::new(
                ErrorCode::NotRegistered,
                "first control message must be Register",
            ));
        }
        Ok(None) => return Err(None),
        Err(end) => return refuse(end),
    };
    let agent_id = match AgentId::new(register.agent_id.clone()) {
        Ok(a) => a,
        Err(e) => {
            return refuse(End::new(
                ErrorCode::ProtocolViolation,
                format!("agent_id: {e}"),
            ));
        }
    };
    if let Err(end) = core.admit(&agent_id, &register.auth_token, &conn) {
        return refuse(end);
    }
    // Placement (docs/placement.md): past the soft limit or draining, an agent that can follow
    // a Redirect is sent to better relays; with none, it is placed here (or refused below).
    if let Some(why) = core.placement.should_redirect(
        &register.capabilities,
        core.session_count(),
        core.is_draining(),
    ) {
        let relays = core.placement.targets(&core.relay_id, true).await;
        if !relays.is_empty() {
            metrics::counter!("contrail_redirects_total", "reason" => why.label()).increment(1);
            return Err(Some(Refusal {
                end: End::new(ErrorCode::Redirected, why.label()),
                conn: conn.clone(),
                redirect: Some(contrail_protocol::proto::Redirect {
                    relays,
                    reason: why.label().to_string(),
                    reconnect_after_ms: 0,
                }),
            }));
        }
        metrics::counter!("contrail_redirects_none_total", "reason" => why.label()).increment(1);
    }
    if core.is_draining() {
        return refuse(End::new(ErrorCode::Draining, "relay is draining"));
    }
    if !core.try_reserve_session() {
        return refuse(End::new(
            ErrorCode::TooManySessions,
            "relay is at max_sessions",
        ));
    }
    let session_id = SessionId::from_random_bytes(rand::random());
    // From here the session counts against max_sessions; the registration (set below) makes
    // the actor's state drop release it.
    let claim = register.resume.as_ref().map(|r| r.last_acked_seq);
    let old = match ingest.claim(&agent_id, (me.clone(), shared.clone())).await {
        Ok(old) => old,
        Err(e) => {
            // Without the registry's answer a previous session of this agent may still be
            // live: registering now could leave two. Refuse (INTERNAL is retryable).
            core.release_session();
            tracing::error!(agent = %agent_id, error = %e, "session claim failed; refusing the registration");
            metrics::counter!(m::CLAIM_FAILURES).increment(1);
            return refuse(End::new(
                ErrorCode::Internal,
                "the relay could not register this session; retry",
            ));
        }
    };
    if let Some((old_actor, old_shared)) = old {
        tracing::info!(agent = %agent_id, "superseding the previous session");
        metrics::counter!(m::SESSIONS_SUPERSEDED).increment(1);
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
        commands: register.capabilities.iter().any(|c| c == "commands"),
    };
    shared.set_registration(reg.clone());
    let limits = &core.config.limits;
    // The credit window counts from here until the first Ack.
    let resume_from = cursor.start_session();
    let registered = Registered {
        session_id: session_id.to_hex(),
        relay_id: core.relay_id.clone(),
        max_inflight: limits.max_inflight,
        heartbeat_interval_ms: limits.heartbeat_interval_ms,
        resume_from_seq: resume_from,
        max_frame_bytes: limits.max_frame_bytes as u32,
        fleet: if register
            .capabilities
            .iter()
            .any(|c| c == crate::placement::CAPABILITY_REDIRECT)
        {
            core.placement.targets(&core.relay_id, false).await
        } else {
            Vec::new()
        },
    };
    let Some(mut send) = control.take() else {
        return Err(None);
    };
    if !send_control(&mut send, codec, Msg::Registered(registered)).await {
        return Err(None);
    }
    // `resume_from_seq` acks what completed while the agent was away.
    cursor.usage_acked(resume_from);
    let stats = Arc::new(SessionStats {
        committed: cursor.committed.clone(),
        ..SessionStats::default()
    });
    stats.set_identity(crate::identity::from_wire(
        &register.identity.unwrap_or_default(),
        &register.agent_version,
        limits.max_identity_field_bytes,
    ));
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
    let origin = Arc::new(BatchOrigin {
        agent_id: reg.agent_id.clone(),
        session_id: reg.session_id,
        session_hex: reg.session_id.to_hex(),
    });
    let ctx = SessionCtx {
        ingest: ingest.clone(),
        conn,
        reg,
        origin,
        stats,
        signal: ReaderSignal::default(),
        codec: *codec,
    };
    Ok((ctx, ControlStream { send, recv, inbuf }))
}

/// Reads pings, writes acks (coalesced: one per wake-up, covering every batch completed since),
/// and tells the agent to leave when the relay drains.
async fn control_loop(
    ctx: &SessionCtx,
    stream: &mut ControlStream,
    mut link: Option<&mut super::commands::Link>,
) -> End {
    let SessionCtx {
        reg,
        stats,
        signal,
        codec,
        ..
    } = ctx;
    let core = ctx.core();
    let ControlStream { send, recv, inbuf } = stream;
    use std::sync::atomic::Ordering::Relaxed;
    let mut lifecycle = core.lifecycle.subscribe();
    // `resume_from_seq`, what the agent counts its window from (the cursor may have moved on
    // since: the first pass of the loop acks that).
    let mut acked = reg.cursor.acked();
    let mut drained = false;
    let ack_delay = core.config.limits.ack_delay();
    let ack_now = core.config.limits.ack_now_threshold();
    // Without a delay every completion must wake this loop; with one, only the first (and not
    // even that while this loop's own timer is armed: `AgentCursor::set_timer_armed`) and the
    // threshold do (see `AgentCursor::complete_range`).
    let wake_after = if ack_delay.is_zero() { 1 } else { ack_now };
    reg.cursor.set_acked(acked, wake_after);
    // When the oldest frame not yet acked must be acked by (acks are coalesced until then).
    let mut ack_due: Option<tokio::time::Instant> = None;
    // The deadline passed before anything completed: the first completion is acked at once
    // (it wakes this loop: the cursor is disarmed).
    let mut overdue = false;
    // The control stream is read only when it woke the loop (acks wake it far more often).
    let control_gate = WakeGate::new();
    // Likewise the command side's link (sessions without one never poll it).
    let link_gate = WakeGate::new();
    let has_link = link.is_some();
    loop {
        if !drained && *lifecycle.borrow_and_update() == LifecycleState::Draining {
            drained = true;
            let drain = Msg::Drain(contrail_protocol::proto::Drain {
                reason: core.lifecycle.drain_reason().unwrap_or_default(),
                reconnect_after_ms: core.config.drain.reconnect_after_ms,
                // A fresh weighted draw per agent: drained agents spread over the fleet.
                relays: core.placement.targets(&core.relay_id, true).await,
            });
            // Every completion is acked at once from now on: let the first one wake us.
            reg.cursor.set_timer_armed(false);
            if !send_control(send, codec, drain).await {
                return End::new(ErrorCode::Normal, "control stream closed");
            }
        }
        let now = tokio::time::Instant::now();
        // A coalescing agent's frame starts the ack delay when this loop sees it forwarded
        // (the reader runs in this task), not when a sink completes it: the completion then
        // needs no wake-up of its own (one wake-up fewer per ack).
        if ack_due.is_none()
            && !overdue
            && !drained
            && !ack_delay.is_zero()
            && reg.cursor.forwarded() > acked
            && signal.batch_interval().is_none_or(|i| i <= ack_delay)
        {
            ack_due = Some(now + ack_delay);
            reg.cursor.set_timer_armed(true);
        }
        let mut completed = reg.cursor.completed();
        if completed <= acked && ack_due.is_some_and(|due| now >= due) {
            // Nothing completed in time (a slow sink): disarm, so the first completion wakes
            // this loop, and ack it at once.
            ack_due = None;
            overdue = true;
            reg.cursor.set_timer_armed(false);
            completed = reg.cursor.completed();
        }
        if completed > acked {
            let due = if overdue {
                now
            } else {
                *ack_due.get_or_insert(now + ack_delay)
            };
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
                overdue = false;
                reg.cursor.set_timer_armed(false);
                acked = completed;
                reg.cursor.set_acked(acked, wake_after);
                let ack = Msg::Ack(contrail_protocol::proto::Ack { up_to_seq: acked });
                if !send_control(send, codec, ack).await {
                    return End::new(ErrorCode::Normal, "control stream closed");
                }
                reg.cursor.usage_acked(acked);
                trigger.increment(1);
                stats
                    .inflight
                    .store(reg.cursor.forwarded().saturating_sub(acked), Relaxed);
                if let Some(t) = reg.cursor.completed_received_at() {
                    let us = (core.latency.ack_sent(t).as_micros() as u64).max(1);
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
            Some(msg) = link_gate.run(from_command_side(&mut link)), if has_link => {
                if !send_control(send, codec, msg).await {
                    return End::new(ErrorCode::Normal, "control stream closed");
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
                Ok(Some(ControlMessage { msg: Some(Msg::Identity(id)) })) => {
                    crate::identity::update(stats, &id, core.config.limits.max_identity_field_bytes);
                }
                Ok(Some(ControlMessage {
                    msg: Some(m @ (Msg::CommandAccepted(_) | Msg::CommandResult(_))),
                })) if reg.commands => {
                    // Without a command side (no downlink here) they are ignored, as the
                    // command side would ignore them.
                    if let Some(link) = &link {
                        link.hand_over(m);
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

/// The next message the command side has for the agent (never, without a command side).
async fn from_command_side(link: &mut Option<&mut super::commands::Link>) -> Option<Msg> {
    match link {
        Some(l) => l.to_agent.recv().await,
        None => std::future::pending().await,
    }
}
