//! Core ingest path over real QUIC on loopback: exactly-once into the file sink, supersede,
//! panic isolation, clean close.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use contrail_protocol::ErrorCode;
use contrail_relay::config::{SinkConfig, SinkKind};
use contrail_relay::sink::file::{FileConfig, FileFormat};
use contrail_relay::Hooks;
use contrail_testsupport::poll_until_async;

fn file_sink(path: &std::path::Path, format: FileFormat, rotate: u64) -> SinkConfig {
    let mut f = FileConfig::new(path);
    f.format = format;
    f.rotate_bytes = rotate;
    let mut s = SinkConfig::new("file", SinkKind::File(f));
    s.required = true;
    s
}

fn read_ndjson_seqs(path: &std::path::Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for f in contrail_relay::sink::file::all_files(path) {
        let text = std::fs::read_to_string(&f).expect("read sink file");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("valid json line");
            out.push((
                v["agent_id"].as_str().expect("agent_id").to_string(),
                v["seq"].as_u64().expect("seq"),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_frames_are_acked_and_written_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out/telemetry.ndjson");
    let mut config = test_config(dir.path());
    // Rotate so the test also covers reading a rotated set back in order.
    config.sinks = vec![file_sink(&path, FileFormat::Ndjson, 8 * 1024 * 1024)];
    let relay = start_with(config, dir, vec![], Hooks::default()).await;
    let agent = relay.agent("drone-100k").await;
    let payload = [42u8; 256];
    send_n(&agent, 100_000, &payload).await;
    agent.flush().await.expect("all acked");
    assert_eq!(agent.acked_seq(), 100_000);
    let stats = agent.stats();
    assert_eq!(stats.sent, 100_000);
    assert_eq!(stats.resent, 0, "no frame was sent twice");
    agent.close().await.expect("close");

    let lines = read_ndjson_seqs(&path);
    assert_eq!(lines.len(), 100_000, "every frame written exactly once");
    for (i, (agent_id, seq)) in lines.iter().enumerate() {
        assert_eq!(agent_id, "drone-100k");
        assert_eq!(*seq, i as u64 + 1, "in order, no gaps or duplicates");
    }
    assert!(
        contrail_relay::sink::file::all_files(&path).len() > 1,
        "the size limit rotated the file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_file_format_round_trips() {
    use contrail_protocol::proto::StoredFrame;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.pb");
    let mut config = test_config(dir.path());
    config.sinks = vec![file_sink(&path, FileFormat::Protobuf, 0)];
    let relay = start_with(config, dir, vec![], Hooks::default()).await;
    let agent = relay.agent("drone-pb").await;
    send_n(&agent, 1000, b"hello").await;
    agent.flush().await.expect("acked");
    let session = agent.session().expect("session").session_id;
    agent.close().await.expect("close");
    let bytes = std::fs::read(&path).expect("read");
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    let codec = contrail_protocol::FrameCodec::default();
    let mut seqs = Vec::new();
    while let Some(f) = codec
        .decode_message::<StoredFrame>(&mut buf)
        .expect("valid record")
    {
        assert_eq!(f.agent_id, "drone-pb");
        assert_eq!(f.session_id, session);
        let frame = f.frame.expect("frame");
        assert_eq!(&frame.payload[..], b"hello");
        seqs.push(frame.seq);
    }
    assert!(buf.is_empty());
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_agents_stream_concurrently_without_loss() {
    let (relay, mut rx) = start_with_channel(1024).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let agent = relay.agent(&format!("drone-{i}")).await;
        tasks.push(tokio::spawn(async move {
            send_n(&agent, 5_000, &[i as u8; 64]).await;
            agent.flush().await.expect("acked");
            agent.close().await.expect("close");
        }));
    }
    let frames = collect_frames(&mut rx, 40_000, Duration::from_secs(30)).await;
    for t in tasks {
        t.await.expect("agent task");
    }
    assert_eq!(frames.len(), 40_000);
    let unique: HashSet<_> = frames.iter().cloned().collect();
    assert_eq!(unique.len(), 40_000, "no duplicates");
    for i in 0..8 {
        let seqs: Vec<u64> = frames
            .iter()
            .filter(|(a, _)| a == &format!("drone-{i}"))
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, (1..=5_000).collect::<Vec<_>>(), "per-agent order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_sharing_one_socket_are_separate_sessions() {
    use contrail_protocol::client::{Agent, SharedEndpoint};
    let (relay, mut rx) = start_with_channel(1024).await;
    let endpoint = SharedEndpoint::new(&relay.client_config("probe")).expect("shared socket");
    let a = Agent::connect_shared(relay.client_config("drone-sa"), &endpoint)
        .await
        .expect("a registers");
    let b = Agent::connect_shared(relay.client_config("drone-sb"), &endpoint)
        .await
        .expect("b registers");
    let (sa, sb) = (a.session().expect("a"), b.session().expect("b"));
    assert_ne!(sa.session_id, sb.session_id, "one session per agent");
    send_n(&a, 2_000, &[1u8; 64]).await;
    a.close().await.expect("a closes");
    // Closing one agent closes its connection only: the other streams on over the same socket.
    send_n(&b, 2_000, &[2u8; 64]).await;
    b.flush().await.expect("b acked");
    let frames = collect_frames(&mut rx, 4_000, Duration::from_secs(30)).await;
    for agent in ["drone-sa", "drone-sb"] {
        let seqs: Vec<u64> = frames
            .iter()
            .filter(|(id, _)| id == agent)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            seqs,
            (1..=2_000).collect::<Vec<_>>(),
            "{agent}: all, once, in order"
        );
    }
    assert_eq!(b.stats().reconnects, 0);
    b.close().await.expect("b closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_register_supersedes_the_first_session() {
    let (relay, mut rx) = start_with_channel(1024).await;
    let first = relay.agent("drone-x").await;
    send_n(&first, 100, b"a").await;
    first.flush().await.expect("acked");
    let first_session = first.session().expect("session").session_id;

    let mut second_cfg = relay.client_config("drone-x");
    second_cfg.first_seq = 1;
    let second = contrail_protocol::client::Agent::connect(second_cfg)
        .await
        .expect("second registers");
    let second_session = second.session().expect("session").session_id;
    assert_ne!(first_session, second_session);
    assert_eq!(second_session.len(), 32, "128-bit hex session id");

    // The first agent learns it was superseded (terminal) and stops.
    let err = poll_until_async(
        Duration::from_secs(5),
        "first agent sees SUPERSEDED",
        || async {
            match first.send(&frame(b"late")).await {
                Err(contrail_protocol::client::ClientError::Rejected { code, .. }) => Some(code),
                _ => None,
            }
        },
    )
    .await;
    assert_eq!(err, ErrorCode::Superseded);
    // A fresh stream from the second session is accepted from seq 1 and forwarded.
    send_n(&second, 10, b"b").await;
    second.flush().await.expect("acked");
    let frames = collect_frames(&mut rx, 110, Duration::from_secs(5)).await;
    assert_eq!(frames.len(), 110);
    assert_eq!(relay.relay.core().session_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_session_is_closed_with_internal_and_others_keep_streaming() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path());
    let (spec, mut rx) = channel_sink("chan", true, 4096);
    let hooks = Hooks {
        on_batch: Some(Arc::new(|agent: &contrail_protocol::AgentId| {
            if agent.as_str() == "drone-buggy" {
                panic!("injected fault in one session");
            }
        })),
        ..Hooks::default()
    };
    let relay = start_with(config, dir, vec![spec], hooks).await;
    let good = relay.agent("drone-good").await;
    send_n(&good, 1_000, b"g").await;
    good.flush().await.expect("good acked before");

    // The buggy agent, raw: register, send one frame, observe the close code.
    let (ep, cfg) = relay.raw_client(contrail_protocol::ALPN_AGENT);
    let conn = raw::register(&ep, cfg, relay.relay.local_addr(), "drone-buggy").await;
    let mut uni = conn.open_uni().await.expect("uni");
    uni.write_all(&raw::frames(1, 1, b"x"))
        .await
        .expect("write");
    assert_eq!(raw::close_code(&conn).await, Some(ErrorCode::Internal));

    // The good agent never noticed.
    send_n(&good, 1_000, b"g").await;
    good.flush().await.expect("good acked after");
    assert_eq!(good.stats().reconnects, 0);
    let frames = collect_frames(&mut rx, 2_000, Duration::from_secs(5)).await;
    assert_eq!(frames.len(), 2_000);
    assert!(frames.iter().all(|(a, _)| a == "drone-good"));
    poll_until_async(
        Duration::from_secs(5),
        "buggy session cleaned up",
        || async { relay.relay.core().session_count() == 1 },
    )
    .await;
    assert_eq!(relay.relay.core().session_errors(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_close_removes_the_session_without_error() {
    let (relay, mut rx) = start_with_channel(1024).await;
    let agent = relay.agent("drone-clean").await;
    send_n(&agent, 100, b"c").await;
    agent.close().await.expect("clean close");
    poll_until_async(Duration::from_secs(5), "session gone", || async {
        relay.relay.core().session_count() == 0
            && relay
                .relay
                .control()
                .is_some_and(|c| c.fleet().get("drone-clean").is_none())
    })
    .await;
    assert_eq!(
        relay.relay.core().session_errors(),
        0,
        "no error on a clean close"
    );
    assert_eq!(
        collect_frames(&mut rx, 100, Duration::from_secs(5))
            .await
            .len(),
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_resumes_without_loss_or_duplicates() {
    let (relay, mut rx) = start_with_channel(4096).await;
    let agent = relay.agent("drone-flaky").await;
    for round in 0..5 {
        send_n(&agent, 2_000, &[round as u8; 32]).await;
        agent.drop_connection();
    }
    agent.flush().await.expect("all acked after reconnects");
    assert!(agent.stats().reconnects >= 1);
    let frames = collect_frames(&mut rx, 10_000, Duration::from_secs(10)).await;
    let seqs: Vec<u64> = frames.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        seqs,
        (1..=10_000).collect::<Vec<_>>(),
        "exactly once, in order"
    );
}
