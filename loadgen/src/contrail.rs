//! The Contrail target: agents on the agent client library, the live subscriber for e2e.
//!
//! Ack latency: after each `send_many` the agent task logs `(first seq, last seq, time)` in its
//! [`SendLog`]; every change of the ack watch then records, for **every newly acked frame**, one
//! sample of `now - send time` (one `record_n` per logged run). For fixed-rate runs the logged
//! time is the frame's *intended* send time on the agent's schedule, so a stall (credits,
//! scheduling) shows up in the latency of every frame it delayed (coordinated-omission
//! correction); the intended time also travels in the frame's `device_time` field so that the
//! subscriber corrects e2e latency the same way. For `max` runs the time is taken right after
//! `send_many` returned (the frames were stamped within that call).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use contrail_protocol::client::subscriber::{Policy, Subscriber, SubscriberConfig};
use contrail_protocol::client::{
    Agent, ClientConfig, ClientError, OutFrame, SharedEndpoint, Trust,
};
use contrail_protocol::AgentId;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::ctx::{AgentEnd, RunCtx};
use crate::deliveries::{Delivery, DeliveryBook};
use crate::hist;
use crate::scenario::Rate;
use crate::track::SendLog;

/// Most frames asked of one `send_many` call in `max` mode (the window caps it further).
const MAX_BATCH: usize = 4096;

/// Connection settings shared by all agents.
#[derive(Clone)]
pub struct Target {
    /// Relays, tried in order.
    pub relays: Vec<std::net::SocketAddr>,
    /// Certificate name.
    pub server_name: String,
    /// Trust roots (loaded once, shared).
    pub trust: Trust,
    /// Auth token for the agents.
    pub token: String,
    /// UDP sockets the agents share, agent `i` on `endpoints[i % len]` (each agent still has
    /// its own QUIC connection and session).
    /// (Their transport settings, ACK frequency and UDP payload ceiling, are the endpoints'.)
    pub endpoints: Arc<[SharedEndpoint]>,
    /// Largest UDP payload for the subscriber (see `SubscriberConfig::max_udp_payload_bytes`).
    pub max_udp_payload_bytes: u16,
    /// The agents' QUIC idle timeout (as their endpoints'): their pings' upper interval.
    pub idle_timeout: std::time::Duration,
}

/// Kernel buffer size asked for each shared agent socket (hundreds of connections per socket).
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// The agents' transport settings, which belong to the sockets they share.
#[derive(Debug, Clone, Copy)]
pub struct EndpointOptions {
    /// Packets the relay may receive before it must ACK (QUIC ACK-frequency).
    pub ack_eliciting_threshold: u32,
    /// Longest the relay may hold back an ACK.
    pub max_ack_delay: std::time::Duration,
    /// Largest UDP payload.
    pub max_udp_payload_bytes: u16,
    /// Share TLS session tickets between the agents of one socket.
    pub tls_resumption: bool,
    /// QUIC idle timeout of every agent (an idle agent pings every third of it at least).
    pub idle_timeout: std::time::Duration,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        use contrail_protocol::client::config as c;
        EndpointOptions {
            ack_eliciting_threshold: c::DEFAULT_ACK_ELICITING_THRESHOLD,
            max_ack_delay: c::DEFAULT_MAX_ACK_DELAY,
            max_udp_payload_bytes: c::DEFAULT_MAX_UDP_PAYLOAD,
            tls_resumption: false,
            idle_timeout: std::time::Duration::from_secs(30),
        }
    }
}

impl Target {
    /// Binds `n` shared agent sockets for `relays` (inside a tokio runtime).
    pub fn bind_endpoints(
        relays: &[std::net::SocketAddr],
        trust: &Trust,
        n: usize,
        o: EndpointOptions,
    ) -> anyhow::Result<Arc<[SharedEndpoint]>> {
        let first = *relays.first().context("no relay address")?;
        let mut probe = ClientConfig::new(
            first,
            AgentId::new("loadgen").context("agent id")?,
            trust.clone(),
        );
        probe.ack_eliciting_threshold = o.ack_eliciting_threshold;
        probe.max_ack_delay = o.max_ack_delay;
        probe.max_udp_payload_bytes = o.max_udp_payload_bytes;
        probe.tls_resumption = o.tls_resumption;
        probe.idle_timeout = o.idle_timeout;
        let bind = contrail_protocol::client::config::bind_addr(first);
        (0..n.max(1))
            .map(|_| {
                let socket = std::net::UdpSocket::bind(bind).context("binding an agent socket")?;
                contrail_protocol::client::config::size_socket_buffers(
                    &socket,
                    SOCKET_BUFFER_BYTES,
                );
                SharedEndpoint::from_socket(&probe, socket).context("agent endpoint")
            })
            .collect()
    }
}

fn error_code(e: &ClientError) -> String {
    match e {
        ClientError::Rejected { code, .. } => code.to_string(),
        ClientError::Connect(_) => "CONNECT_FAILED".into(),
        ClientError::FrameTooLarge { .. } => "FRAME_TOO_LARGE".into(),
        ClientError::Closed => "CLOSED".into(),
        ClientError::Config(_) => "CONFIG".into(),
        _ => "CLIENT_ERROR".into(),
    }
}

/// Connects agent `idx` (recording connect time) and runs it until `stop` turns true, then
/// flushes (bounded) and closes.
pub async fn run_agent(
    target: Target,
    ctx: Arc<RunCtx>,
    idx: usize,
    payload: Arc<[u8]>,
    gate: Arc<tokio::sync::Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> AgentEnd {
    let id = match AgentId::new(ctx.agent_id(idx)) {
        Ok(id) => id,
        Err(_) => {
            ctx.error("BAD_AGENT_ID");
            return AgentEnd::default();
        }
    };
    let mut config = ClientConfig::new(target.relays[0], id, target.trust.clone());
    config.relays = target.relays.clone();
    config.server_name = target.server_name.clone();
    config.auth_token = target.token.clone();
    config.platform = "contrail-loadgen".into();
    config.idle_timeout = target.idle_timeout;
    let Ok(permit) = gate.acquire().await else {
        return AgentEnd::default();
    };
    let t0 = ctx.now_ns();
    let agent = tokio::select! {
        r = Agent::connect_shared(config, &target.endpoints[idx % target.endpoints.len()]) => match r {
            Ok(a) => a,
            Err(e) => {
                ctx.error(error_code(&e));
                ctx.connect_finished(false);
                return AgentEnd::default();
            }
        },
        _ = stop.wait_for(|s| *s) => return AgentEnd::default(),
    };
    drop(permit);
    ctx.connect_hist.record_n(idx, ctx.now_ns() - t0, 1);
    ctx.sessions_up.fetch_add(1, Relaxed);
    ctx.connect_finished(true);

    let mut log = SendLog::default();
    let rate = if ctx.plan.streams(idx) {
        // Streaming agents wait out the plan's idle phase (idle agents only heartbeat).
        let mut go = ctx.go.subscribe();
        tokio::select! {
            _ = go.wait_for(|g| *g) => ctx.plan.rate,
            _ = stop.wait_for(|s| *s) => Rate::Idle,
        }
    } else {
        Rate::Idle
    };
    let result = match rate {
        Rate::Max => send_max(&agent, &ctx, idx, &payload, &mut log, &mut stop).await,
        Rate::Hz(hz) => send_fixed(&agent, &ctx, idx, hz, &payload, &mut log, &mut stop).await,
        Rate::Idle => {
            let _ = stop.wait_for(|s| *s).await;
            Ok(())
        }
    };
    if let Err(e) = &result {
        ctx.error(error_code(e));
    }
    // Drain: wait (bounded) for every sent frame to be acked, still recording ack latency.
    let mut acks = agent.ack_watch();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last_acked = agent.acked_seq();
    while agent.acked_seq() < agent.last_seq() {
        match tokio::time::timeout_at(deadline, acks.changed()).await {
            Ok(Ok(())) => {
                let a = *acks.borrow_and_update();
                on_ack(&ctx, idx, &mut log, &mut last_acked, a);
            }
            _ => break,
        }
    }
    let a = agent.acked_seq();
    on_ack(&ctx, idx, &mut log, &mut last_acked, a);
    let stats = agent.stats();
    ctx.nacks.fetch_add(stats.nacks, Relaxed);
    ctx.reconnects.fetch_add(stats.reconnects, Relaxed);
    let end = AgentEnd {
        sent: agent.last_seq(),
        acked: agent.acked_seq(),
    };
    ctx.sessions_up.fetch_sub(1, Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(2), agent.close()).await;
    end
}

/// Records ack latency for every frame newly acked up to `up_to`.
fn on_ack(ctx: &RunCtx, idx: usize, log: &mut SendLog, last_acked: &mut u64, up_to: u64) {
    if up_to <= *last_acked {
        return;
    }
    let now = ctx.now_ns();
    let mut shard = ctx.ack_hist.shard(idx);
    log.acked(up_to, |at, n| {
        if ctx.measured(at) {
            hist::record_n(&mut shard, now.saturating_sub(at), n);
        }
    });
    drop(shard);
    ctx.acked.fetch_add(up_to - *last_acked, Relaxed);
    *last_acked = up_to;
}

/// An ack-watch event of a fixed-rate agent: records the newly acked frames, or ends the run
/// when the agent is gone.
fn ack_event(
    ctx: &RunCtx,
    idx: usize,
    log: &mut SendLog,
    last_acked: &mut u64,
    event: Option<u64>,
) -> Result<(), ClientError> {
    let up_to = event.ok_or(ClientError::Closed)?;
    on_ack(ctx, idx, log, last_acked, up_to);
    Ok(())
}

async fn send_max(
    agent: &Agent,
    ctx: &RunCtx,
    idx: usize,
    payload: &[u8],
    log: &mut SendLog,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ClientError> {
    let mut acks = agent.ack_watch();
    let mut last_acked = agent.acked_seq();
    let frame = OutFrame {
        kind: 1,
        payload,
        ..OutFrame::default()
    };
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ok(()),
            r = acks.changed() => {
                if r.is_err() {
                    return Err(ClientError::Closed);
                }
                let a = *acks.borrow_and_update();
                on_ack(ctx, idx, log, &mut last_acked, a);
            }
            r = agent.send_many(MAX_BATCH, |seq| match &ctx.mix {
                Some(mix) => mix.frame(seq, 0),
                None => frame,
            }) => {
                let (last, n) = r?;
                let n = n as u64;
                log.sent(last + 1 - n, last, ctx.now_ns());
                ctx.sent.fetch_add(n, Relaxed);
            }
        }
    }
}

async fn send_fixed(
    agent: &Agent,
    ctx: &RunCtx,
    idx: usize,
    hz: f64,
    payload: &[u8],
    log: &mut SendLog,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ClientError> {
    // The stop signal, the ack watch and the send timer live across iterations: a frame's
    // timer or an ack wakes the task without re-registering the other two (re-creating them on
    // every wake-up was a waiter-list lock and unlock each, per frame and per ack).
    let mut acks = WatchStream::from_changes(agent.ack_watch());
    let mut last_acked = agent.acked_seq();
    let period = (1e9 / hz) as u64;
    // Spread agents' phases over one period so that the fleet does not send in lockstep.
    let phase = (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % period.max(1);
    let mut due = ctx.now_ns() + phase;
    // (The watch's `Ref` is dropped inside: it must not live across the awaits below.)
    let mut stopped = std::pin::pin!(async {
        let _ = stop.wait_for(|s| *s).await;
    });
    let mut timer = std::pin::pin!(tokio::time::sleep_until(ctx.at(due).into()));
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => return Ok(()),
            a = acks.next() => ack_event(ctx, idx, log, &mut last_acked, a)?,
            () = &mut timer => {
                if ctx.measured(due) {
                    ctx.send_lag_hist.record_n(idx, ctx.now_ns().saturating_sub(due), 1);
                }
                let intended_unix = ctx.epoch_unix_ns + due;
                let send = agent.send_many(1, |seq| match &ctx.mix {
                    Some(mix) => mix.frame(seq, intended_unix),
                    None => OutFrame {
                        kind: 1,
                        payload,
                        device_time: intended_unix,
                        ..OutFrame::default()
                    },
                });
                let mut send = std::pin::pin!(send);
                // With credits (the usual case) the frame is queued at once; without, keep
                // recording acks while waiting for them.
                let r = match (&mut send).now_or_never() {
                    Some(r) => r,
                    None => loop {
                        tokio::select! {
                            biased;
                            _ = &mut stopped => return Ok(()),
                            a = acks.next() => ack_event(ctx, idx, log, &mut last_acked, a)?,
                            r = &mut send => break r,
                        }
                    },
                };
                let (last, n) = r?;
                log.sent(last + 1 - n as u64, last, due);
                ctx.sent.fetch_add(n as u64, Relaxed);
                due += period;
                timer.as_mut().reset(ctx.at(due).into());
            }
        }
    }
}

/// Subscribes to the relay's live output and feeds every frame to `book` until `stop` turns
/// true and the stream has been quiet for `settle`, or the deadline passes.
pub async fn run_subscriber(
    target: Target,
    ctx: Arc<RunCtx>,
    ready: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
    mut done: watch::Receiver<bool>,
) -> anyhow::Result<DeliveryBook> {
    let mut config = SubscriberConfig::new(target.relays[0], target.trust.clone());
    config.server_name = target.server_name.clone();
    config.auth_token = target.token.clone();
    config.agent_patterns = vec![format!("{}*", ctx.id_prefix)];
    config.policy = Policy::Block;
    config.receive_window = 16 * 1024 * 1024;
    config.max_udp_payload_bytes = target.max_udp_payload_bytes;
    let mut sub = match Subscriber::connect(config).await.context("live subscriber") {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e));
            anyhow::bail!(msg);
        }
    };
    let mut book = DeliveryBook::new(ctx.clone());
    loop {
        let next = tokio::select! {
            biased;
            n = sub.next_batch() => n,
            _ = done.wait_for(|d| *d) => break,
        };
        match next {
            Ok(Some(batch)) => book.record(batch.iter().map(|v| {
                let f = v.frame();
                // `device_time` carries the intended send time (fixed-rate runs), `sent_at`
                // the agent library's stamp when the frame was handed to it.
                let stamp = match f.device_time() {
                    0 => f.sent_at_unix_ns(),
                    t => t,
                };
                Delivery {
                    idx: ctx.agent_index(v.agent_id()),
                    seq: f.seq(),
                    stamp,
                    handed: f.sent_at_unix_ns(),
                    relay_rx: v.received_at_unix_ns(),
                }
            })),
            Ok(None) => break,
            Err(e) => {
                ctx.error("SUBSCRIBER_LOST");
                tracing::warn!(error = %e, "live subscriber ended");
                break;
            }
        }
    }
    let dropped = sub.stats().dropped;
    if dropped > 0 {
        tracing::warn!(dropped, "the relay dropped frames for the live subscriber");
    }
    sub.close().await;
    Ok(book)
}
