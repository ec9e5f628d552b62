//! The connection driver: connect, register, write frames, read acks, reconnect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::placement::{Placement, CAPABILITY_REDIRECT};
use super::state::Shared;
use super::{ClientConfig, ClientConfigError, ClientError, SessionInfo};
use crate::codec::FrameCodec;
use crate::proto::{control_message::Msg, ControlMessage, NackStatus, Ping, Register, Resume};
use crate::ErrorCode;

/// Max frames handed to one `write_all_chunks` call.
const WRITE_CHUNKS: usize = 1024;

enum Outcome {
    /// The user closed the agent.
    Closed,
    /// Stop for good.
    Terminal(ClientError),
    /// Try again after `delay` (None: the backoff), possibly on the next relay.
    Retry {
        delay: Option<Duration>,
        next_relay: bool,
        registered: bool,
    },
    /// Go to the relays a `Redirect` (`redirect`) or a `Drain` named, after `delay`.
    Move {
        targets: Vec<crate::proto::RelayEndpoint>,
        delay: Duration,
        redirect: bool,
        registered: bool,
    },
}

/// Runs the agent's sessions until it is closed or stops for good. `owns_endpoint`: the
/// endpoint is this agent's alone (closed at the end); a shared one stays open for the others.
pub(super) async fn run(
    endpoint: quinn::Endpoint,
    owns_endpoint: bool,
    config: ClientConfig,
    shared: Arc<Shared>,
    commands: Option<Arc<super::commands::Hub>>,
) {
    let mut relay_idx = 0usize;
    let mut backoff = config.reconnect_min;
    let mut placement = Placement::default();
    loop {
        if shared.is_closed() {
            break;
        }
        let addr = placement.next(relay_idx, &config.relays);
        let outcome = session(
            &endpoint,
            addr,
            &config,
            &shared,
            commands.as_ref(),
            &mut placement,
        )
        .await;
        shared.set_conn(None);
        shared.on_disconnected();
        match outcome {
            Outcome::Move {
                targets,
                delay,
                redirect,
                registered,
            } => {
                if registered {
                    backoff = config.reconnect_min;
                }
                let targets = super::placement::resolve(&targets).await;
                if redirect {
                    log_redirect(&config, addr, &targets);
                    placement.on_redirect(addr, targets, delay, std::time::Instant::now());
                } else {
                    placement.on_drain(addr, targets);
                    relay_idx += 1;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.close_notify.notified() => break,
                }
            }
            Outcome::Closed => break,
            Outcome::Terminal(err) => {
                tracing::warn!(agent = %config.agent_id, error = %err, "agent stopped");
                shared.set_terminal(err);
                break;
            }
            Outcome::Retry {
                delay,
                next_relay,
                registered,
            } => {
                if registered {
                    backoff = config.reconnect_min;
                }
                if next_relay || !registered {
                    relay_idx += 1;
                }
                let wait = delay.unwrap_or(backoff);
                backoff = (backoff * 2).min(config.reconnect_max);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shared.close_notify.notified() => break,
                }
            }
        }
    }
    if owns_endpoint {
        endpoint.close(quinn::VarInt::from_u32(ErrorCode::Normal.close_code()), b"");
    }
}

fn log_redirect(config: &ClientConfig, from: SocketAddr, to: &[SocketAddr]) {
    tracing::debug!(agent = %config.agent_id, %from, ?to, "redirected");
}

fn close_outcome(err: &quinn::ConnectionError, registered: bool) -> Outcome {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let code = ErrorCode::from_close_code(close.error_code.into_inner())
                .unwrap_or(ErrorCode::Unspecified);
            let message = String::from_utf8_lossy(&close.reason).into_owned();
            retry_or_terminal(code, message, registered)
        }
        quinn::ConnectionError::LocallyClosed => Outcome::Retry {
            delay: None,
            next_relay: false,
            registered,
        },
        _ => Outcome::Retry {
            delay: None,
            next_relay: false,
            registered,
        },
    }
}

fn retry_or_terminal(code: ErrorCode, message: String, registered: bool) -> Outcome {
    match code {
        ErrorCode::Draining => Outcome::Retry {
            delay: None,
            next_relay: true,
            registered,
        },
        ErrorCode::QuotaExceeded => Outcome::Retry {
            delay: Some(Duration::from_secs(1)),
            next_relay: false,
            registered,
        },
        c if c.is_retryable() || c == ErrorCode::Normal => Outcome::Retry {
            delay: None,
            next_relay: false,
            registered,
        },
        _ => Outcome::Terminal(ClientError::Rejected { code, message }),
    }
}

async fn read_control(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    codec: &FrameCodec,
) -> Result<Option<ControlMessage>, Outcome> {
    loop {
        match codec.decode_message::<ControlMessage>(buf) {
            Ok(Some(m)) => return Ok(Some(m)),
            Ok(None) => {}
            Err(e) => {
                return Err(Outcome::Terminal(ClientError::Rejected {
                    code: e.code(),
                    message: format!("relay sent an undecodable control message: {e}"),
                }))
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Ok(None),
            Err(quinn::ReadError::ConnectionLost(e)) => return Err(close_outcome(&e, true)),
            Err(_) => return Ok(None),
        }
    }
}

async fn session(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    config: &ClientConfig,
    shared: &Arc<Shared>,
    commands: Option<&Arc<super::commands::Hub>>,
    placement: &mut Placement,
) -> Outcome {
    let retry = Outcome::Retry {
        delay: None,
        next_relay: false,
        registered: false,
    };
    let connecting = match endpoint.connect(addr, &config.server_name) {
        Ok(c) => c,
        Err(e) => return Outcome::Terminal(ClientConfigError::StartConnect(e).into()),
    };
    let conn = match tokio::time::timeout(config.connect_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "connect failed");
            return match e {
                quinn::ConnectionError::ApplicationClosed(_) => close_outcome(&e, false),
                _ => retry,
            };
        }
        Err(_) => return retry,
    };
    shared.set_conn(Some(conn.clone()));
    let codec = FrameCodec::default();
    let (mut ctl_tx, mut ctl_rx) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return close_outcome(&e, false),
    };
    let resume = shared
        .resume_claim()
        .map(|(last_acked_seq, previous_session_id)| Resume {
            last_acked_seq,
            previous_session_id,
        });
    let (identity, mut identity_sent) = shared.identity();
    let register = ControlMessage {
        msg: Some(Msg::Register(Register {
            agent_id: config.agent_id.as_str().to_string(),
            agent_version: config.agent_version.clone(),
            platform: config.platform.clone(),
            auth_token: config.auth_token.clone(),
            resume,
            identity,
            capabilities: {
                let mut caps = config.capabilities.clone();
                if commands.is_some() && !caps.iter().any(|c| c == super::commands::CAPABILITY) {
                    caps.push(super::commands::CAPABILITY.to_owned());
                }
                if placement.offer_redirect() && !caps.iter().any(|c| c == CAPABILITY_REDIRECT) {
                    caps.push(CAPABILITY_REDIRECT.to_string());
                } else if !placement.offer_redirect() {
                    caps.retain(|c| c != CAPABILITY_REDIRECT);
                }
                caps
            },
        })),
    };
    let mut out = BytesMut::new();
    if let Err(e) = codec.encode(&register, &mut out) {
        return Outcome::Terminal(ClientConfigError::RegisterTooLarge(e).into());
    }
    if ctl_tx.write_all(&out).await.is_err() {
        return match conn.close_reason() {
            Some(e) => close_outcome(&e, false),
            None => retry,
        };
    }
    let mut inbuf = BytesMut::new();
    let first = tokio::time::timeout(
        config.connect_timeout,
        read_control(&mut ctl_rx, &mut inbuf, &codec),
    )
    .await;
    let registered = match first {
        Err(_) => {
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::Timeout.close_code()),
                b"",
            );
            return retry;
        }
        Ok(Err(outcome)) => return outcome,
        Ok(Ok(None)) => return close_outcome(&conn.closed().await, false),
        Ok(Ok(Some(ControlMessage {
            msg: Some(Msg::Registered(r)),
        }))) => r,
        Ok(Ok(Some(ControlMessage {
            msg: Some(Msg::Redirect(r)),
        }))) => {
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::Normal.close_code()),
                b"redirected",
            );
            return Outcome::Move {
                targets: r.relays,
                delay: Duration::from_millis(u64::from(r.reconnect_after_ms)),
                redirect: true,
                registered: false,
            };
        }
        Ok(Ok(Some(ControlMessage {
            msg: Some(Msg::Error(e)),
        }))) => {
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
            return retry_or_terminal(code, e.message, false);
        }
        Ok(Ok(Some(_))) => {
            return Outcome::Terminal(ClientError::Rejected {
                code: ErrorCode::ProtocolViolation,
                message: "relay answered Register with an unexpected message".into(),
            })
        }
    };
    // The pinger is the connection's only keep-alive (no QUIC PINGs, config.rs): at the relay's
    // heartbeat, or every third of our own idle timeout when that is shorter.
    let heartbeat = Duration::from_millis(u64::from(registered.heartbeat_interval_ms.max(100)))
        .min(config.idle_timeout / 3)
        .max(Duration::from_millis(100));
    if !registered.fleet.is_empty() {
        let fleet = super::placement::resolve(&registered.fleet).await;
        placement.on_fleet(&config.relays, fleet);
    }
    shared.on_registered(
        SessionInfo {
            session_id: registered.session_id,
            relay_id: registered.relay_id,
            max_inflight: registered.max_inflight,
            resume_from_seq: registered.resume_from_seq,
            heartbeat_interval_ms: registered.heartbeat_interval_ms,
        },
        registered.max_frame_bytes,
    );
    let mut uni = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => return close_outcome(&e, true),
    };

    // Writes of telemetry since the session began: the pinger skips a heartbeat after a
    // period in which frames went out (they tell the relay the agent lives, and keep the
    // connection from idling out), so a streaming agent sends no extra packets for it.
    let writes = std::sync::atomic::AtomicU64::new(0);
    let writer = async {
        // Grown on first use and kept: an idle agent holds none, a busy one a handful of
        // coalesced runs per write (not `WRITE_CHUNKS` slots, 32 KiB, up front).
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut frames: Vec<Bytes> = Vec::new();
        loop {
            let notified = shared.work.notified();
            let paused = shared.next_chunks(&mut frames, &mut chunks, WRITE_CHUNKS);
            if chunks.is_empty() {
                match paused {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => notified.await,
                }
                continue;
            }
            if uni.write_all_chunks(&mut chunks).await.is_err() {
                return;
            }
            writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            chunks.clear();
        }
    };
    let reader = async {
        let mut drain: Option<(tokio::time::Instant, Duration)> = None;
        let mut drain_to: Vec<crate::proto::RelayEndpoint> = Vec::new();
        loop {
            let next = match drain {
                None => read_control(&mut ctl_rx, &mut inbuf, &codec).await,
                Some((deadline, reconnect_after)) => {
                    // Draining: keep reading acks until what was written is acked, then leave.
                    if shared.written_all_acked() || tokio::time::Instant::now() >= deadline {
                        conn.close(
                            quinn::VarInt::from_u32(ErrorCode::Normal.close_code()),
                            b"drained",
                        );
                        return Outcome::Move {
                            targets: std::mem::take(&mut drain_to),
                            delay: reconnect_after,
                            redirect: false,
                            registered: true,
                        };
                    }
                    match tokio::time::timeout_at(
                        deadline,
                        read_control(&mut ctl_rx, &mut inbuf, &codec),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => continue,
                    }
                }
            };
            match next {
                Err(outcome) => return outcome,
                Ok(None) => return close_outcome(&conn.closed().await, true),
                Ok(Some(ControlMessage { msg: Some(m) })) => match m {
                    Msg::Ack(a) => shared.on_ack(a.up_to_seq),
                    Msg::Nack(n) => {
                        if n.status == NackStatus::RetryWithBackoff as i32 {
                            let after = Duration::from_millis(u64::from(n.retry_after_ms.max(10)));
                            shared.on_nack_retry(n.seq, after);
                        } else {
                            shared.on_nack_permanent();
                        }
                    }
                    Msg::Drain(d) => {
                        shared.on_drain();
                        drain_to = d.relays;
                        drain = Some((
                            tokio::time::Instant::now() + Duration::from_secs(2),
                            Duration::from_millis(u64::from(d.reconnect_after_ms)),
                        ));
                    }
                    Msg::Error(e) => {
                        let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                        tracing::warn!(%code, message = %e.message, "relay reported an error");
                    }
                    m @ (Msg::Command(_) | Msg::CommandCancel(_)) => {
                        if let Some(hub) = commands {
                            hub.on_relay_message(m);
                        }
                    }
                    _ => {}
                },
                Ok(Some(ControlMessage { msg: None })) => {}
            }
        }
    };
    // The control stream's send half: the pinger (heartbeats while no telemetry flows, and the
    // vehicle's identity whenever it changes after Register) and the command side both write
    // on it.
    let ctl_tx = tokio::sync::Mutex::new(ctl_tx);
    let command_side = async {
        match commands {
            Some(hub) => hub.session(&conn, &ctl_tx).await,
            None => std::future::pending().await,
        }
    };
    let pinger = async {
        let mut nonce = 0u64;
        let mut tick = tokio::time::interval(heartbeat);
        tick.tick().await;
        let mut seen_writes = 0;
        loop {
            let msg = tokio::select! {
                _ = tick.tick() => {
                    let w = writes.load(std::sync::atomic::Ordering::Relaxed);
                    if w != seen_writes {
                        seen_writes = w;
                        continue;
                    }
                    nonce += 1;
                    shared
                        .pings
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Msg::Ping(Ping {
                        nonce,
                        sent_at_unix_ns: 0,
                    })
                }
                _ = shared.identity_notify.notified() => {
                    let (identity, version) = shared.identity();
                    match identity {
                        Some(identity) if version != identity_sent => {
                            identity_sent = version;
                            Msg::Identity(identity)
                        }
                        _ => continue,
                    }
                }
            };
            let mut b = BytesMut::new();
            let msg = ControlMessage { msg: Some(msg) };
            if codec.encode(&msg, &mut b).is_err()
                || ctl_tx.lock().await.write_all(&b).await.is_err()
            {
                std::future::pending::<()>().await;
            }
        }
    };

    // The reader is polled only when the control stream (or its drain timer) woke the task:
    // the writer wakes it for every frame.
    let reader_gate = super::gate::WakeGate::new();
    let outcome = tokio::select! {
        _ = writer => close_outcome(&conn.closed().await, true),
        o = reader_gate.run(reader) => o,
        _ = pinger => close_outcome(&conn.closed().await, true),
        _ = command_side => close_outcome(&conn.closed().await, true),
        _ = shared.close_notify.notified() => Outcome::Closed,
    };
    match outcome {
        Outcome::Closed => {
            let _ = uni.finish();
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::Normal.close_code()),
                b"bye",
            );
            Outcome::Closed
        }
        other => other,
    }
}
