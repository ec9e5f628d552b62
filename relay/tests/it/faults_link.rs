//! Fault: a lossy, slow, reordering, duplicating link (issue 6, item 6), then a black hole longer
//! than the idle timeout that kills every connection. Through both, every frame reaches the file
//! sink exactly once and in order per agent.

use std::time::Duration;

use crate::common::{frame, start_with, test_config};
use crate::faults_support::*;
use contrail_protocol::client::{Agent, ClientConfig, Trust};
use contrail_protocol::AgentId;
use contrail_relay::Hooks;
use contrail_testsupport::{poll_until_async, Impairment, ImpairmentProxy};

const AGENTS: usize = 4;
const PHASE1: u64 = 1_000;
const DURING_BLACKHOLE: u64 = 300;
const PHASE3: u64 = 500;

/// Sends `count` frames, payload = the seq, as fast as credits allow.
async fn send(agent: &Agent, count: u64) {
    let mut left = count;
    while left > 0 {
        let (_, n) = agent
            .send_many(left.min(256) as usize, |_| frame(&[0x5a; 64]))
            .await
            .expect("send");
        left -= n as u64;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_link_then_blackhole_delivers_every_frame_once_in_order() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = dir.path().join("out/telemetry.ndjson");
    let mut config = test_config(dir.path());
    config.limits.idle_timeout_ms = 1_500;
    config.limits.heartbeat_interval_ms = 300;
    config.limits.handshake_timeout_ms = 3_000;
    config.sinks = vec![file_sink(&sink)];
    let relay = start_with(
        config,
        tempfile::tempdir().expect("tempdir"),
        vec![],
        Hooks::default(),
    )
    .await;
    let impairment = Impairment {
        loss: 0.05,
        duplicate: 0.02,
        reorder: 0.10,
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(5),
        ..Impairment::seeded(0xC0FFEE)
    };
    let proxy = ImpairmentProxy::start(relay.relay.local_addr(), impairment).await;

    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let mut c = ClientConfig::new(
            proxy.local_addr(),
            AgentId::new(format!("drone-lossy-{i}")).expect("id"),
            Trust::CaDer(vec![relay.relay.certificate()]),
        );
        c.idle_timeout = Duration::from_millis(1_500);
        c.connect_timeout = Duration::from_secs(2);
        c.reconnect_min = Duration::from_millis(50);
        c.reconnect_max = Duration::from_millis(400);
        agents.push(std::sync::Arc::new(
            Agent::connect(c).await.expect("connect through the proxy"),
        ));
    }

    // Phase 1: stream over the lossy link.
    let tasks: Vec<_> = agents
        .iter()
        .cloned()
        .map(|a| {
            tokio::spawn(async move {
                send(&a, PHASE1).await;
                a.flush().await.expect("acked over the lossy link");
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("phase 1");
    }
    let phase1 = started.elapsed();
    let lossy = proxy.stats();
    assert!(
        lossy.dropped > 0 && lossy.duplicated > 0 && lossy.reordered > 0,
        "the link really was impaired: {lossy:?}"
    );

    // Phase 2: black hole longer than both idle timeouts, with frames queued meanwhile.
    proxy.blackhole(true);
    for a in &agents {
        send(a, DURING_BLACKHOLE).await;
    }
    poll_until_async(
        Duration::from_secs(10),
        "the relay to time out every session",
        async || relay.relay.core().session_count() == 0,
    )
    .await;
    proxy.blackhole(false);

    // Phase 3: reconnect, resume, finish.
    let tasks: Vec<_> = agents
        .iter()
        .cloned()
        .map(|a| {
            tokio::spawn(async move {
                send(&a, PHASE3).await;
                a.flush().await.expect("acked after the black hole");
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("phase 3");
    }
    let total = PHASE1 + DURING_BLACKHOLE + PHASE3;
    for (i, a) in agents.iter().enumerate() {
        let s = a.stats();
        assert_eq!(a.acked_seq(), total, "agent {i}");
        assert!(s.reconnects >= 1, "agent {i} reconnected: {s:?}");
    }

    let (lines, partial) = read_ndjson(&sink);
    assert_eq!(partial, 0);
    let by_agent = seqs_by_agent(&lines);
    assert_eq!(by_agent.len(), AGENTS);
    for (agent, seqs) in &by_agent {
        assert_exactly_once_in_order(agent, seqs, total);
    }
    let resent: u64 = agents.iter().map(|a| a.stats().resent).sum();
    eprintln!(
        "lossy link: phase 1 {phase1:?}, total {:?}, proxy {:?}, frames resent after reconnects {resent}",
        started.elapsed(),
        proxy.stats()
    );
    for a in agents {
        if let Ok(a) = std::sync::Arc::try_unwrap(a) {
            a.close().await.expect("close");
        }
    }
}
