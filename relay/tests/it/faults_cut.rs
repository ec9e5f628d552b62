//! Fault: the connection is cut mid-stream (issue 6, item 7), twice: once closed abruptly by the
//! agent (`drop_connection`, as a dying modem would), once by dropping every packet for longer
//! than the idle timeout. The agent resumes each time; the file sink holds every frame exactly
//! once, in order.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{frame, start_with, test_config};
use crate::faults_support::*;
use contrail_protocol::client::{Agent, ClientConfig, Trust};
use contrail_protocol::AgentId;
use contrail_relay::Hooks;
use contrail_testsupport::{poll_until_async, Impairment, ImpairmentProxy};

const TOTAL: u64 = 30_000;
const AGENT: &str = "drone-cut";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_stream_resumes_exactly_once_into_the_file_sink() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = dir.path().join("out/telemetry.ndjson");
    let mut config = test_config(dir.path());
    config.limits.idle_timeout_ms = 1_000;
    config.limits.heartbeat_interval_ms = 200;
    config.sinks = vec![file_sink(&sink)];
    let relay = start_with(
        config,
        tempfile::tempdir().expect("tempdir"),
        vec![],
        Hooks::default(),
    )
    .await;
    let proxy = ImpairmentProxy::start(relay.relay.local_addr(), Impairment::none()).await;
    let mut c = ClientConfig::new(
        proxy.local_addr(),
        AgentId::new(AGENT).expect("id"),
        Trust::CaDer(vec![relay.relay.certificate()]),
    );
    c.idle_timeout = Duration::from_millis(1_000);
    c.connect_timeout = Duration::from_secs(2);
    c.reconnect_min = Duration::from_millis(20);
    c.reconnect_max = Duration::from_millis(200);
    let agent = Arc::new(Agent::connect(c).await.expect("connect"));

    let sender = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while sent < TOTAL {
                let (_, n) = agent
                    .send_many((TOTAL - sent).min(64) as usize, |_| frame(&[7u8; 100]))
                    .await
                    .expect("send");
                sent += n as u64;
                // Pace a little so the cuts land mid-stream.
                tokio::task::yield_now().await;
            }
            agent.flush().await.expect("all acked");
        })
    };

    // Cut 1: abrupt close by the agent side.
    let mut acks = agent.ack_watch();
    tokio::time::timeout(Duration::from_secs(10), acks.wait_for(|a| *a >= TOTAL / 4))
        .await
        .expect("a quarter acked")
        .expect("watch");
    let session_before = agent.session().expect("session").session_id;
    agent.drop_connection();
    poll_until_async(
        Duration::from_secs(5),
        "a new session after the cut",
        async || {
            agent
                .session()
                .is_some_and(|s| s.session_id != session_before)
        },
    )
    .await;

    // Cut 2: every packet dropped for longer than the idle timeouts.
    tokio::time::timeout(Duration::from_secs(10), acks.wait_for(|a| *a >= TOTAL / 2))
        .await
        .expect("half acked")
        .expect("watch");
    assert!(
        agent.acked_seq() < TOTAL,
        "still mid-stream at the second cut"
    );
    proxy.blackhole(true);
    poll_until_async(
        Duration::from_secs(5),
        "the relay to drop the silent session",
        async || relay.relay.core().session_count() == 0,
    )
    .await;
    proxy.blackhole(false);

    tokio::time::timeout(Duration::from_secs(15), sender)
        .await
        .expect("stream finished in time")
        .expect("sender task");
    let stats = agent.stats();
    assert_eq!(agent.acked_seq(), TOTAL);
    assert!(stats.reconnects >= 2, "two cuts, two resumes: {stats:?}");

    let (lines, partial) = read_ndjson(&sink);
    assert_eq!(partial, 0);
    let by_agent = seqs_by_agent(&lines);
    assert_exactly_once_in_order(AGENT, &by_agent[AGENT], TOTAL);
    eprintln!(
        "connection cut: {:?}, agent stats {stats:?}",
        started.elapsed()
    );
    if let Ok(agent) = Arc::try_unwrap(agent) {
        agent.close().await.expect("close");
    }
}
