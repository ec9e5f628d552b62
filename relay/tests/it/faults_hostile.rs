//! Fault: hostile connections (issue 6, item 10) while a good agent streams.
//!
//! * Flood: hundreds of QUIC handshakes that never open a stream. Beyond
//!   `limits.max_pending_handshakes` the relay refuses them at once; the rest are closed with
//!   `TIMEOUT` after `limits.handshake_timeout_ms`. The pending slots come back: a new agent
//!   registers afterwards.
//! * Slowloris: connections that open the control stream and send half a `Register`, then stall.
//!   Each is closed with `TIMEOUT` at the handshake deadline, and while they hang a new agent can
//!   still register (they hold pending slots, not sessions).
//!
//! In both, the good agent streams undisturbed: no reconnect, every frame exactly once in order.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{frame, start_with, test_config, TestRelay};
use crate::faults_support::*;
use bytes::{BufMut, BytesMut};
use contrail_protocol::client::Agent;
use contrail_protocol::proto::{control_message::Msg, ControlMessage, Register};
use contrail_protocol::{ErrorCode, FrameCodec};
use contrail_relay::Hooks;

const TOTAL: u64 = 20_000;
const HANDSHAKE_TIMEOUT_MS: u64 = 1_000;
const MAX_PENDING: usize = 64;

async fn relay_with_file_sink() -> (TestRelay, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = dir.path().join("out/telemetry.ndjson");
    let mut config = test_config(dir.path());
    config.limits.handshake_timeout_ms = HANDSHAKE_TIMEOUT_MS;
    config.limits.max_pending_handshakes = MAX_PENDING;
    config.sinks = vec![file_sink(&sink)];
    let relay = start_with(
        config,
        tempfile::tempdir().expect("tempdir"),
        vec![],
        Hooks::default(),
    )
    .await;
    (relay, sink, dir)
}

/// A good agent streaming `TOTAL` frames at about 10 000 frames/s.
fn stream(agent: Arc<Agent>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while agent.last_seq() < TOTAL {
            tick.tick().await;
            let mut left = (TOTAL - agent.last_seq()).min(50) as usize;
            while left > 0 {
                let (_, n) = agent
                    .send_many(left, |_| frame(b"good"))
                    .await
                    .expect("send");
                left -= n;
            }
        }
        agent.flush().await.expect("acked");
    })
}

async fn finish_good_agent(
    agent: &Arc<Agent>,
    task: tokio::task::JoinHandle<()>,
    sink: &std::path::Path,
    id: &str,
) {
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("good agent finished in time")
        .expect("sender");
    let stats = agent.stats();
    assert_eq!(stats.reconnects, 0, "the good agent was never disturbed");
    assert_eq!(agent.acked_seq(), TOTAL);
    let (lines, partial) = read_ndjson(sink);
    assert_eq!(partial, 0);
    assert_exactly_once_in_order(id, &seqs_by_agent(&lines)[id], TOTAL);
}

#[derive(Debug, Default)]
struct Outcomes {
    refused: usize,
    timed_out: usize,
    timed_out_in_tls: usize,
    other: Vec<String>,
}

fn classify(out: &mut Outcomes, e: &quinn::ConnectionError) {
    match e {
        quinn::ConnectionError::ApplicationClosed(c)
            if ErrorCode::from_close_code(c.error_code.into_inner())
                == Some(ErrorCode::Timeout) =>
        {
            out.timed_out += 1;
        }
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            out.refused += 1;
        }
        // The deadline hit while the TLS handshake itself was still running: QUIC hides the
        // application code during the handshake and reports APPLICATION_ERROR instead.
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::APPLICATION_ERROR =>
        {
            out.timed_out_in_tls += 1;
        }
        other => out.other.push(other.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_flood_is_bounded_and_leaves_sessions_streaming() {
    const FLOOD: usize = 300;
    let started = std::time::Instant::now();
    let (relay, sink, _dir) = relay_with_file_sink().await;
    let good = Arc::new(relay.agent("drone-good").await);
    let task = stream(good.clone());

    let (ep, cfg) = relay.raw_client(contrail_protocol::ALPN_AGENT);
    let addr = relay.relay.local_addr();
    let mut handshakes = Vec::new();
    for _ in 0..FLOOD {
        let connecting = ep
            .connect_with(cfg.clone(), addr, "localhost")
            .expect("connect");
        handshakes.push(tokio::spawn(async move {
            match connecting.await {
                // Handshake done; never open a stream. Wait for the relay's verdict.
                Ok(conn) => conn.closed().await,
                Err(e) => e,
            }
        }));
    }
    let mut out = Outcomes::default();
    for h in handshakes {
        let e = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("every flood connection is ended by the relay")
            .expect("task");
        classify(&mut out, &e);
    }
    let flood_time = started.elapsed();
    assert!(out.other.is_empty(), "unexpected outcomes: {:?}", out.other);
    assert_eq!(out.refused + out.timed_out + out.timed_out_in_tls, FLOOD);
    assert!(
        out.timed_out >= 1,
        "some handshakes completed and were timed out: {out:?}"
    );
    assert!(
        out.refused > 0,
        "more than max_pending_handshakes at once were refused: {out:?}"
    );
    // Every pending slot was released: a new agent registers at once.
    let late = relay.agent("drone-after-flood").await;
    late.send(&frame(b"late")).await.expect("send");
    late.flush().await.expect("acked");
    finish_good_agent(&good, task, &sink, "drone-good").await;
    eprintln!(
        "flood: {FLOOD} handshakes -> {} refused, {} timed out after the TLS handshake, {} during it, in {flood_time:?}; total {:?}",
        out.refused,
        out.timed_out,
        out.timed_out_in_tls,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_half_registers_are_timed_out_and_sessions_keep_streaming() {
    const SLOW: usize = 48;
    let started = std::time::Instant::now();
    let (relay, sink, _dir) = relay_with_file_sink().await;
    let good = Arc::new(relay.agent("drone-good").await);
    let task = stream(good.clone());

    // Half a Register: the prefix announces the whole message, only part of it follows.
    let mut register = BytesMut::new();
    FrameCodec::default()
        .encode(
            &ControlMessage {
                msg: Some(Msg::Register(Register {
                    agent_id: "slowloris".into(),
                    agent_version: "1".into(),
                    platform: "x".repeat(100),
                    ..Default::default()
                })),
            },
            &mut register,
        )
        .expect("encode");
    let half = register.split_to(register.len() / 2).freeze();

    let (ep, cfg) = relay.raw_client(contrail_protocol::ALPN_AGENT);
    let addr = relay.relay.local_addr();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let connecting = ep
            .connect_with(cfg.clone(), addr, "localhost")
            .expect("connect");
        let half = half.clone();
        slow.push(tokio::spawn(async move {
            let conn = match connecting.await {
                Ok(c) => c,
                Err(e) => return (e, None),
            };
            let opened = std::time::Instant::now();
            if let Ok((mut send, _recv)) = conn.open_bi().await {
                let _ = send.write_all(&half).await;
                // Stall with the stream open until the relay gives up.
                let e = conn.closed().await;
                return (e, Some(opened.elapsed()));
            }
            (conn.closed().await, Some(opened.elapsed()))
        }));
    }
    // While they hang, a new agent still registers: they hold handshake slots, not sessions.
    let during = relay.agent("drone-during-slowloris").await;
    during.send(&frame(b"during")).await.expect("send");
    during.flush().await.expect("acked");

    let mut out = Outcomes::default();
    let mut longest = Duration::ZERO;
    for h in slow {
        let (e, held) = tokio::time::timeout(Duration::from_secs(10), h)
            .await
            .expect("every slow connection is ended by the relay")
            .expect("task");
        classify(&mut out, &e);
        longest = longest.max(held.unwrap_or_default());
    }
    assert!(out.other.is_empty(), "unexpected outcomes: {:?}", out.other);
    assert_eq!(
        out.timed_out, SLOW,
        "each half Register hit the deadline: {out:?}"
    );
    assert!(
        longest < Duration::from_millis(HANDSHAKE_TIMEOUT_MS + 2_000),
        "held at most about the handshake timeout: {longest:?}"
    );
    let mut buf = BytesMut::new();
    buf.put_slice(&half);
    assert!(
        FrameCodec::default()
            .decode_message::<ControlMessage>(&mut buf)
            .expect("prefix ok")
            .is_none(),
        "the half Register really was incomplete"
    );
    finish_good_agent(&good, task, &sink, "drone-good").await;
    eprintln!(
        "slowloris: {SLOW} half Registers timed out (longest held {longest:?}); total {:?}",
        started.elapsed()
    );
}
