//! Live subscriptions over real QUIC on loopback: delivery exactly once and in order, filters,
//! drop-oldest and block policies (and what they do to acks), removal on disconnect, auth, the
//! subscriber limit, and the `contrail-tail` binary.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use contrail_protocol::client::subscriber::{
    Policy, Subscriber, SubscriberConfig, SubscriberError,
};
use contrail_protocol::client::{Agent, OutFrame, Trust};
use contrail_protocol::ErrorCode;
use contrail_relay::config::SinkConfig;
use contrail_relay::sink::live::SubscriberRegistry;
use contrail_relay::{Config, Hooks};
use contrail_testsupport::poll_until_async;

const DEADLINE: Duration = Duration::from_secs(30);

fn live_sink(required: bool, extra: &str) -> SinkConfig {
    toml::from_str(&format!(
        "name = \"live\"\ntype = \"live\"\nrequired = {required}\n{extra}"
    ))
    .expect("live sink entry")
}

async fn start_live(required: bool, extra: &str, tweak: impl FnOnce(&mut Config)) -> TestRelay {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.sinks = vec![live_sink(required, extra)];
    tweak(&mut config);
    start_with(config, dir, vec![], Hooks::default()).await
}

fn registry(t: &TestRelay) -> &Arc<SubscriberRegistry> {
    t.relay.subscribers().expect("a live sink is configured")
}

fn sub_config(t: &TestRelay) -> SubscriberConfig {
    let mut c = SubscriberConfig::new(
        t.relay.local_addr(),
        Trust::CaDer(vec![t.relay.certificate()]),
    );
    c.connect_timeout = Duration::from_secs(5);
    c
}

async fn subscribe(t: &TestRelay, edit: impl FnOnce(&mut SubscriberConfig)) -> Subscriber {
    let mut c = sub_config(t);
    edit(&mut c);
    Subscriber::connect(c).await.expect("subscribes")
}

async fn wait_active(t: &TestRelay, n: usize) {
    let reg = registry(t).clone();
    poll_until_async(DEADLINE, &format!("{n} active subscribers"), async || {
        reg.active() == n
    })
    .await;
}

/// One received frame: (agent, seq, kind, flight).
type Got = (String, u64, u32, String);

/// Reads until `want` frames arrived (panics at the deadline).
async fn read_frames(sub: &mut Subscriber, want: usize) -> Vec<Got> {
    let mut out = Vec::with_capacity(want);
    let end = tokio::time::Instant::now() + DEADLINE;
    while out.len() < want {
        let batch = tokio::time::timeout_at(end, sub.next_batch())
            .await
            .unwrap_or_else(|_| panic!("only {} of {want} frames arrived", out.len()))
            .expect("read")
            .expect("subscription open");
        for v in batch.iter() {
            let f = v.frame();
            out.push((
                v.agent_id().to_string(),
                f.seq(),
                f.kind(),
                f.flight_id().to_string(),
            ));
        }
    }
    out
}

fn kind_of(seq: u64) -> u32 {
    (seq % 3) as u32
}

fn flight_of(seq: u64) -> &'static str {
    if seq.is_multiple_of(2) {
        "f-1"
    } else {
        "f-2"
    }
}

/// Sends `count` frames whose kind and flight depend on seq ([`kind_of`], [`flight_of`]).
async fn send_varied(agent: &Agent, count: u64, payload: &[u8]) {
    let mut sent = 0u64;
    while sent < count {
        let want = (count - sent).min(512) as usize;
        let (_, n) = agent
            .send_many(want, |seq| OutFrame {
                kind: kind_of(seq),
                flight_id: flight_of(seq),
                payload,
                content_type: "application/octet-stream",
                device_time: seq,
            })
            .await
            .expect("send");
        sent += n as u64;
    }
}

fn by_agent(frames: &[Got]) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (a, s, _, _) in frames {
        m.entry(a.clone()).or_default().push(*s);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_of_every_agent_arrives_exactly_once_in_order() {
    let relay = start_live(true, "subscriber_queue_frames = 100000", |_| {}).await;
    let mut sub = subscribe(&relay, |c| c.queue_frames = 50_000).await;
    assert_eq!(sub.queue_frames(), 50_000);
    wait_active(&relay, 1).await;
    const PER_AGENT: u64 = 3_000;
    let agents = ["drone-1", "drone-2", "drone-3"];
    let payload = [7u8; 200];
    let senders = agents.map(|id| {
        let relay = &relay;
        async move {
            let agent = relay.agent(id).await;
            send_n(&agent, PER_AGENT, &payload).await;
            agent.flush().await.expect("flush");
            agent
        }
    });
    let (got, _agents) = tokio::join!(
        read_frames(&mut sub, 3 * PER_AGENT as usize),
        futures::future::join_all(senders)
    );
    let got = by_agent(&got);
    assert_eq!(got.len(), 3);
    for id in agents {
        let seqs = &got[id];
        assert_eq!(
            seqs.len() as u64,
            PER_AGENT,
            "{id}: every frame exactly once"
        );
        assert!(
            seqs.iter().zip(1..).all(|(s, want)| *s == want),
            "{id}: frames in seq order"
        );
    }
    let info = registry(&relay).subscribers();
    assert_eq!(info[0].dropped, 0);
    assert_eq!(sub.stats().dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_exactly_the_matching_frames() {
    let relay = start_live(true, "", |_| {}).await;
    let mut subs = [
        subscribe(&relay, |c| c.agent_patterns = vec!["drone-*".into()]).await,
        subscribe(&relay, |c| c.kinds = vec![1]).await,
        subscribe(&relay, |c| c.flight_id = "f-2".into()).await,
        subscribe(&relay, |c| {
            c.agent_patterns = vec!["*-2".into(), "rover-*".into()];
            c.kinds = vec![0, 2];
            c.flight_id = "f-1".into();
        })
        .await,
    ];
    let admits: [fn(&str, u64) -> bool; 4] = [
        |a, _| a.starts_with("drone-"),
        |_, s| kind_of(s) == 1,
        |_, s| flight_of(s) == "f-2",
        |a, s| {
            (a.ends_with("-2") || a.starts_with("rover-"))
                && kind_of(s) != 1
                && flight_of(s) == "f-1"
        },
    ];
    wait_active(&relay, subs.len()).await;
    const N: u64 = 600;
    let ids = ["drone-1", "drone-2", "rover-1"];
    for id in ids {
        let agent = relay.agent(id).await;
        send_varied(&agent, N, &[1u8; 64]).await;
        // Required live sink: once acked, every frame is in every matching subscriber's queue.
        agent.flush().await.expect("flush");
    }
    let info: HashMap<String, u64> = {
        let reg = registry(&relay).clone();
        poll_until_async(DEADLINE, "subscriber queues written out", async || {
            let info = reg.subscribers();
            info.iter()
                .all(|s| s.lag == 0)
                .then(|| info.into_iter().map(|s| (s.id, s.sent)).collect())
        })
        .await
    };
    for (i, (sub, admit)) in subs.iter_mut().zip(admits).enumerate() {
        let mut want: Vec<Got> = Vec::new();
        for id in ids {
            for seq in 1..=N {
                if admit(id, seq) {
                    want.push((
                        id.to_string(),
                        seq,
                        kind_of(seq),
                        flight_of(seq).to_string(),
                    ));
                }
            }
        }
        assert!(
            !want.is_empty() && want.len() < 3 * N as usize,
            "subscriber {i} filters"
        );
        assert_eq!(
            info[sub.subscriber_id()],
            want.len() as u64,
            "subscriber {i}: the relay sent exactly the matching frames, no more"
        );
        let mut got = read_frames(sub, want.len()).await;
        got.sort();
        want.sort();
        assert_eq!(got, want, "subscriber {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_drop_oldest_subscriber_counts_drops_and_acks_are_unaffected() {
    // Required live sink: acks wait for the sink, but a drop_oldest subscriber never holds it.
    let relay = start_live(true, "", |_| {}).await;
    let mut sub = subscribe(&relay, |c| {
        c.queue_frames = 32;
        c.receive_window = 16 * 1024;
    })
    .await;
    wait_active(&relay, 1).await;
    const N: u64 = 5_000;
    let agent = relay.agent("drone-fast").await;
    // The subscriber reads nothing while the agent streams; every frame is still acked.
    send_n(&agent, N, &[3u8; 200]).await;
    tokio::time::timeout(DEADLINE, agent.flush())
        .await
        .expect("acks are not held back by a slow drop_oldest subscriber")
        .expect("flush");
    let dropped = registry(&relay).subscribers()[0].dropped;
    assert!(dropped > 0, "the slow subscriber's queue overflowed");
    // Now it reads: what it receives plus what the relay reports dropped is every frame.
    let mut seqs = Vec::new();
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let s = sub.stats();
        if s.dropped + seqs.len() as u64 == N && s.lag == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "received {} + dropped {} != {N}",
            seqs.len(),
            s.dropped
        );
        // Bounded wait so status updates (which arrive without data) are picked up.
        if let Ok(batch) = tokio::time::timeout(Duration::from_millis(300), sub.next_batch()).await
        {
            let batch = batch.expect("read").expect("open");
            seqs.extend(batch.iter().map(|v| v.frame().seq()));
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "what arrives is in order, without duplicates"
    );
    assert_eq!(
        seqs.last().copied(),
        Some(N),
        "drop_oldest keeps the newest frames"
    );
    assert!(sub.stats().dropped >= dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_subscriber_on_required_live_sink_loses_nothing_and_throttles_the_agent() {
    const WINDOW: u32 = 128;
    const QUEUE: u32 = 64;
    const RECV_WINDOW: u32 = 16 * 1024;
    const N: u64 = 4_000;
    const PAYLOAD: usize = 200;
    let relay = start_live(true, "", |c| c.limits.max_inflight = WINDOW).await;
    let mut sub = subscribe(&relay, |c| {
        c.policy = Policy::Block;
        c.queue_frames = QUEUE;
        c.receive_window = RECV_WINDOW;
    })
    .await;
    wait_active(&relay, 1).await;
    let agent = Arc::new(relay.agent("drone-held").await);
    let sender = {
        let agent = agent.clone();
        tokio::spawn(async move {
            send_n(&agent, N, &[9u8; PAYLOAD]).await;
            agent.flush().await.expect("flush");
        })
    };
    // Without the subscriber reading, the relay can accept at most: its queue, one writer
    // buffer taken from it, what fits in the subscriber's QUIC receive window (each frame
    // encodes to more than PAYLOAD bytes), and the agent's credit window in flight.
    let bound = 2 * u64::from(QUEUE) + u64::from(RECV_WINDOW) / PAYLOAD as u64 + u64::from(WINDOW);
    assert!(
        bound * 4 < N,
        "the test sends far more than can pass without the subscriber"
    );
    let reg = registry(&relay).clone();
    // Steady blocked state: the live sink's write waits for room in the subscriber's queue,
    // and the agent has used its whole credit window.
    poll_until_async(DEADLINE, "the agent to be held by credits", async || {
        reg.subscribers()[0].blocking && agent.last_seq() >= agent.acked_seq() + u64::from(WINDOW)
    })
    .await;
    let acked = agent.acked_seq();
    assert!(
        acked <= bound,
        "acked {acked} > {bound}: acks passed a blocked subscriber"
    );
    // And they stay there. This is the one bounded wait for something *not* to happen: were
    // acks not held (e.g. the same test on an optional live sink), they pass the bound within
    // milliseconds, so the check fails reliably then.
    let mut acks = agent.ack_watch();
    let passed =
        tokio::time::timeout(Duration::from_millis(500), acks.wait_for(|a| *a > bound)).await;
    assert!(
        passed.is_err(),
        "acks passed {bound} while the subscriber read nothing"
    );
    assert!(!sender.is_finished());
    // The subscriber reads: everything arrives, in order, exactly once; the agent finishes.
    let got = read_frames(&mut sub, N as usize).await;
    assert!(
        got.iter().zip(1..).all(|(g, want)| g.1 == want),
        "every frame, in order"
    );
    tokio::time::timeout(DEADLINE, sender)
        .await
        .expect("agent finishes once the subscriber reads")
        .expect("sender task");
    assert_eq!(agent.acked_seq(), N);
    assert_eq!(registry(&relay).subscribers()[0].dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_subscribers_are_removed_and_release_blocked_agents() {
    let relay = start_live(true, "", |c| c.limits.max_inflight = 64).await;
    let idle = subscribe(&relay, |_| {}).await;
    let blocker = subscribe(&relay, |c| {
        c.policy = Policy::Block;
        c.queue_frames = 16;
        c.receive_window = 16 * 1024;
    })
    .await;
    wait_active(&relay, 2).await;
    let agent = relay.agent("drone-x").await;
    let sends = async {
        send_n(&agent, 3_000, &[1u8; 200]).await;
        agent.flush().await.expect("flush");
    };
    tokio::pin!(sends);
    let reg = registry(&relay).clone();
    tokio::select! {
        _ = &mut sends => panic!("a blocked subscriber must hold the agent back"),
        _ = poll_until_async(DEADLINE, "agent held by the blocking subscriber", async || {
            agent.last_seq() >= agent.acked_seq() + 64 && reg.subscribers().iter().any(|s| s.blocking)
        }) => {}
    }
    drop(blocker);
    wait_active(&relay, 1).await;
    tokio::time::timeout(DEADLINE, &mut sends)
        .await
        .expect("the agent resumes once the blocking subscriber left");
    idle.close().await;
    wait_active(&relay, 0).await;
    // A fresh subscriber still works after the others left.
    let _again = subscribe(&relay, |_| {}).await;
    wait_active(&relay, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_is_unauthenticated_and_the_limit_is_enforced() {
    let relay = start_live(false, "max_subscribers = 1", |c| {
        c.http.admin_token = Some("s3cret".into());
    })
    .await;
    for token in ["", "wrong", "s3cret-but-longer"] {
        let mut c = sub_config(&relay);
        c.auth_token = token.into();
        match Subscriber::connect(c).await {
            Err(SubscriberError::Rejected { code, .. }) => {
                assert_eq!(code, ErrorCode::Unauthenticated, "token {token:?}")
            }
            Err(e) => panic!("token {token:?}: unexpected error {e}"),
            Ok(_) => panic!("token {token:?} was accepted"),
        }
    }
    let _ok = subscribe(&relay, |c| c.auth_token = "s3cret".into()).await;
    wait_active(&relay, 1).await;
    let mut c = sub_config(&relay);
    c.auth_token = "s3cret".into();
    match Subscriber::connect(c).await {
        Err(SubscriberError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::TooManySessions),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("max_subscribers = 1 let a second subscriber in"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contrail_tail_prints_the_stream_as_ndjson() {
    let relay = start_live(false, "", |_| {}).await;
    let ca = relay
        .relay
        .dev_cert_path()
        .expect("test relays use a generated dev certificate")
        .to_path_buf();
    const N: u64 = 50;
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_contrail-tail"))
        .arg("--relay")
        .arg(relay.relay.local_addr().to_string())
        .arg("--ca")
        .arg(&ca)
        .args(["--agent", "drone-*", "--kind", "0", "--kind", "2"])
        .args(["--format", "ndjson", "--count", &N.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn contrail-tail");
    wait_active(&relay, 1).await;
    let other = relay.agent("rover-1").await;
    send_varied(&other, 20, b"rover").await;
    other.flush().await.expect("flush");
    let agent = relay.agent("drone-tail").await;
    let session = agent.session().expect("registered").session_id;
    // Kinds 0 and 2 are two of every three frames.
    send_varied(&agent, N * 3 / 2 + 3, b"hello tail").await;
    agent.flush().await.expect("flush");
    let stdout = tail.stdout.take().expect("stdout");
    let stderr = tail.stderr.take().expect("stderr");
    let read_all = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>| async move {
        let mut s = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut r, &mut s)
            .await
            .expect("read");
        s
    };
    let (out, err, status) = tokio::time::timeout(DEADLINE, async {
        tokio::join!(
            read_all(Box::new(stdout)),
            read_all(Box::new(stderr)),
            tail.wait()
        )
    })
    .await
    .expect("contrail-tail exits after --count frames");
    assert!(
        status.expect("wait").success(),
        "contrail-tail failed: {err}"
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON object"))
        .collect();
    assert_eq!(lines.len() as u64, N, "stderr: {err}");
    let want_seqs: Vec<u64> = (1..)
        .filter(|s| kind_of(*s) != 1)
        .take(N as usize)
        .collect();
    for (v, seq) in lines.iter().zip(want_seqs) {
        assert_eq!(v["agent_id"], "drone-tail");
        assert_eq!(v["session_id"], session.as_str());
        assert_eq!(v["seq"], seq);
        assert_eq!(v["kind"], kind_of(seq));
        assert_eq!(v["flight_id"], flight_of(seq));
        assert_eq!(v["device_time"], seq);
        assert_eq!(v["content_type"], "application/octet-stream");
        assert_eq!(v["payload_b64"], "aGVsbG8gdGFpbA==");
        assert!(v["sent_at_unix_ns"].as_u64().is_some_and(|t| t > 0));
        assert!(v["received_at_unix_ns"].as_u64().is_some_and(|t| t > 0));
    }
    assert!(err.contains("subscribed"), "stderr: {err}");
}
