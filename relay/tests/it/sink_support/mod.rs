//! Helpers shared by the Redis Streams / JetStream sink tests: numbered frames whose fields are
//! derived from (agent, seq) so every stored copy can be checked, sink entries from TOML, and
//! readers for what the backends stored.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use contrail_protocol::client::{Agent, OutFrame};
use contrail_relay::config::SinkConfig;
use contrail_testsupport::RedisServer;
use futures::StreamExt;

/// Flight id of every test frame.
pub const FLIGHT: &str = "flight-7";
/// Content type of every test frame.
pub const CONTENT_TYPE: &str = "application/x-contrail-test";

/// Kind of frame `seq` (varies so a mixed-up field would show).
pub fn kind_for(seq: u64) -> u32 {
    30 + (seq % 5) as u32
}

/// Device time of frame `seq`.
pub fn device_time_for(seq: u64) -> u64 {
    seq * 1_000
}

/// Payload of frame `seq` of `agent` (48 bytes, unique per agent and seq).
pub fn payload_for(agent: &str, seq: u64) -> Vec<u8> {
    let mut p = format!("{agent}/{seq}/").into_bytes();
    p.resize(48, b'x');
    p
}

/// Payloads for seqs `1..=count` of `agent`, indexed by `seq - 1`.
pub fn payloads(agent: &str, count: u64) -> Vec<Vec<u8>> {
    (1..=count).map(|s| payload_for(agent, s)).collect()
}

/// Sends `count` more frames as fast as credits allow; frame `seq` carries `payloads[seq - 1]`.
pub async fn send_numbered(agent: &Agent, payloads: &[Vec<u8>], count: u64) {
    let mut sent = 0u64;
    while sent < count {
        let want = (count - sent).min(256) as usize;
        let (_, n) = agent
            .send_many(want, |seq| OutFrame {
                kind: kind_for(seq),
                flight_id: FLIGHT,
                payload: payloads[(seq - 1) as usize].as_slice(),
                content_type: CONTENT_TYPE,
                device_time: device_time_for(seq),
            })
            .await
            .expect("send");
        sent += n as u64;
    }
}

/// A `[[sinks]]` entry from TOML lines (as an operator would write it).
pub fn sink_entry(toml_lines: &str) -> SinkConfig {
    toml::from_str(toml_lines).expect("sink entry parses")
}

/// The JetStream settings of a `nats_jetstream` entry.
pub fn js_settings(entry: &SinkConfig) -> contrail_relay::sink::nats_jetstream::JetStreamSettings {
    match &entry.kind {
        contrail_relay::config::SinkKind::NatsJetstream(c) => c.settings().expect("settings"),
        other => panic!("not a nats_jetstream entry: {other:?}"),
    }
}

/// The Redis Streams settings of a `redis_streams` entry.
pub fn redis_settings(
    entry: &SinkConfig,
) -> contrail_relay::sink::redis_streams::RedisStreamsSettings {
    match &entry.kind {
        contrail_relay::config::SinkKind::RedisStreams(c) => c.settings().expect("settings"),
        other => panic!("not a redis_streams entry: {other:?}"),
    }
}

/// One stored frame, whatever the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub agent: String,
    pub seq: u64,
    pub kind: u32,
    pub flight: String,
    pub sent_at: u64,
    pub device_time: u64,
    pub received_at: u64,
    pub content_type: String,
    pub payload: Vec<u8>,
}

/// Checks that `stored` holds frames `1..=count` of each agent exactly once, in seq order per
/// agent, with every field as sent.
pub fn check_exactly_once_in_order(stored: &[Stored], agents: &[(&str, u64)]) {
    let mut by_agent: HashMap<&str, Vec<&Stored>> = HashMap::new();
    for s in stored {
        by_agent.entry(s.agent.as_str()).or_default().push(s);
    }
    assert_eq!(
        by_agent.len(),
        agents.len(),
        "agents stored: {:?}",
        by_agent.keys().collect::<Vec<_>>()
    );
    for (agent, count) in agents {
        let got = by_agent.get(agent).map(Vec::as_slice).unwrap_or(&[]);
        let seqs: Vec<u64> = got.iter().map(|s| s.seq).collect();
        let want: Vec<u64> = (1..=*count).collect();
        if seqs != want {
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            panic!(
                "{agent}: {} stored ({} distinct), want 1..={count} once each in order; first seqs {:?}",
                seqs.len(),
                sorted.len(),
                &seqs[..seqs.len().min(20)]
            );
        }
        for s in got {
            assert_eq!(s.kind, kind_for(s.seq), "{agent}/{} kind", s.seq);
            assert_eq!(s.flight, FLIGHT, "{agent}/{} flight", s.seq);
            assert_eq!(
                s.content_type, CONTENT_TYPE,
                "{agent}/{} content_type",
                s.seq
            );
            assert_eq!(
                s.device_time,
                device_time_for(s.seq),
                "{agent}/{} device_time",
                s.seq
            );
            assert_eq!(
                s.payload,
                payload_for(agent, s.seq),
                "{agent}/{} payload",
                s.seq
            );
            assert!(s.sent_at > 0, "{agent}/{} sent_at", s.seq);
            assert!(s.received_at > 0, "{agent}/{} received_at", s.seq);
        }
    }
}

fn field_str(fields: &HashMap<String, Vec<u8>>, k: &str) -> String {
    let v = fields.get(k).unwrap_or_else(|| panic!("field {k} missing"));
    String::from_utf8_lossy(v).into_owned()
}

fn field_u64(fields: &HashMap<String, Vec<u8>>, k: &str) -> u64 {
    field_str(fields, k).parse().expect("numeric field")
}

/// Every entry of stream `key`, in stream order (XRANGE in pages of 1000).
pub fn redis_stream(redis: &RedisServer, key: &str) -> Vec<Stored> {
    let mut out = Vec::new();
    let mut start = "-".to_string();
    loop {
        let entries: Vec<(String, HashMap<String, Vec<u8>>)> =
            redis.cmd(&["XRANGE", key, &start, "+", "COUNT", "1000"]);
        let Some(last_id) = entries.last().map(|(id, _)| id.clone()) else {
            return out;
        };
        let page = entries.len();
        for (_, m) in entries {
            out.push(Stored {
                agent: field_str(&m, "agent"),
                seq: field_u64(&m, "seq"),
                kind: field_u64(&m, "kind") as u32,
                flight: field_str(&m, "flight"),
                sent_at: field_u64(&m, "sent_at"),
                device_time: field_u64(&m, "device_time"),
                received_at: field_u64(&m, "received_at"),
                content_type: field_str(&m, "content_type"),
                payload: m
                    .get("payload")
                    .cloned()
                    .unwrap_or_else(|| panic!("field payload missing")),
            });
        }
        if page < 1000 {
            return out;
        }
        start = format!("({last_id}");
    }
}

/// Decodes one JetStream message (headers + `StoredFrame` payload) and checks that headers and
/// payload agree.
pub fn decode_js(msg: &async_nats::Message) -> Stored {
    use prost::Message as _;
    let stored = contrail_protocol::proto::StoredFrame::decode(msg.payload.as_ref())
        .expect("payload is a StoredFrame");
    let frame = stored.frame.expect("frame present");
    let headers = msg.headers.as_ref().expect("headers");
    let h = |k: &str| {
        headers
            .get(k)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| panic!("header {k} missing"))
    };
    assert_eq!(
        h("Nats-Msg-Id"),
        format!("{}:{}", stored.agent_id, frame.seq)
    );
    assert_eq!(h("Contrail-Agent"), stored.agent_id);
    assert_eq!(h("Contrail-Seq"), frame.seq.to_string());
    assert_eq!(h("Contrail-Kind"), frame.kind.to_string());
    assert_eq!(
        msg.subject.as_str(),
        format!("contrail.telemetry.{}", stored.agent_id.replace('.', "_"))
    );
    assert_eq!(stored.session_id.len(), 32, "session id hex");
    Stored {
        agent: stored.agent_id,
        seq: frame.seq,
        kind: frame.kind,
        flight: frame.flight_id,
        sent_at: frame.sent_at_unix_ns,
        device_time: frame.device_time,
        received_at: stored.received_at_unix_ns,
        content_type: frame.content_type,
        payload: frame.payload.to_vec(),
    }
}

/// Number of messages in JetStream stream `stream` (0 when it does not exist yet).
pub async fn js_count(url: &str, stream: &str) -> u64 {
    let Ok(client) = async_nats::connect(url).await else {
        return 0;
    };
    let js = async_nats::jetstream::new(client);
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every message of JetStream stream `stream`, in stream order, read with an ephemeral pull
/// consumer; waits (with a deadline) until `expected` were read, then checks none follows.
pub async fn js_read_all(url: &str, stream: &str, expected: usize) -> Vec<Stored> {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    let client = async_nats::connect(url).await.expect("nats connect");
    let js = async_nats::jetstream::new(client);
    let s = js.get_stream(stream).await.expect("stream exists");
    let consumer = s
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut out = Vec::with_capacity(expected);
    let mut messages = consumer.messages().await.expect("messages");
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < expected {
        match tokio::time::timeout_at(end, messages.next()).await {
            Ok(Some(Ok(m))) => out.push(decode_js(&m)),
            Ok(Some(Err(e))) => panic!("pull consumer: {e}"),
            Ok(None) | Err(_) => panic!("read {} of {expected} messages", out.len()),
        }
    }
    // Nothing beyond what was expected (a duplicate would show here).
    let total = js_count(url, stream).await;
    assert_eq!(
        total, expected as u64,
        "stream holds {total} messages, expected {expected}"
    );
    out
}

/// Runs blocking test-support calls (server start/stop/commands) off the async workers.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Sustained-throughput measurement shared by the sinks' `#[ignore = "benchmark"]` tests.
pub mod bench {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use contrail_protocol::client::OutFrame;
    use contrail_relay::config::SinkConfig;
    use contrail_relay::sink::{Filter, Sink, SinkBatch, SinkFactory};
    use contrail_relay::Hooks;

    /// Agents sending at once.
    pub const AGENTS: usize = 8;
    /// Frames per agent.
    pub const PER_AGENT: u64 = 25_000;
    /// Payload bytes per frame.
    pub const PAYLOAD: usize = 200;

    /// Frames per second over an interval.
    pub fn rate(frames: u64, took: Duration) -> f64 {
        frames as f64 / took.as_secs_f64()
    }

    /// End to end: `AGENTS` agents send `PER_AGENT` frames each as fast as credits allow
    /// (window 4096) through the relay into the required sink `entry` (plus a required channel
    /// sink keeping the batches); returns frames/s until everything was acked, and the batches.
    pub async fn end_to_end(entry: SinkConfig) -> (f64, Vec<Arc<SinkBatch>>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = crate::common::test_config(dir.path());
        config.limits.max_inflight = 4096;
        config.sinks.push(entry);
        let (chan, mut rx) = crate::common::channel_sink("keep", true, 1 << 16);
        let relay = crate::common::start_with(config, dir, vec![chan], Hooks::default()).await;
        let kept = Arc::new(Mutex::new(Vec::new()));
        let keeper = {
            let kept = kept.clone();
            tokio::spawn(async move {
                while let Some(b) = rx.recv().await {
                    kept.lock().expect("lock").push(b);
                }
            })
        };
        let mut agents = Vec::new();
        for i in 0..AGENTS {
            agents.push(relay.agent(&format!("bench-{i}")).await);
        }
        let payload = vec![0xabu8; PAYLOAD];
        let start = Instant::now();
        let mut tasks = Vec::new();
        for agent in agents {
            let payload = payload.clone();
            tasks.push(tokio::spawn(async move {
                let mut sent = 0u64;
                while sent < PER_AGENT {
                    let want = (PER_AGENT - sent).min(1024) as usize;
                    let (_, n) = agent
                        .send_many(want, |_| OutFrame {
                            kind: 33,
                            flight_id: "bench",
                            payload: &payload,
                            content_type: "application/octet-stream",
                            device_time: 0,
                        })
                        .await
                        .expect("send");
                    sent += n as u64;
                }
                agent.flush().await.expect("flush");
            }));
        }
        for t in tasks {
            t.await.expect("sender");
        }
        let took = start.elapsed();
        keeper.abort();
        let batches = kept.lock().expect("lock").clone();
        (rate(AGENTS as u64 * PER_AGENT, took), batches)
    }

    /// Sink alone: writes `batches` through a fresh sink from `factory` in groups of 64
    /// batches (what the worker hands one `write`); returns frames/s.
    pub async fn sink_only(factory: SinkFactory, batches: &[Arc<SinkBatch>]) -> f64 {
        let mut sink: Box<dyn Sink> = factory().await.expect("sink builds");
        let filter = Filter::default();
        let start = Instant::now();
        let mut frames = 0usize;
        for chunk in batches.chunks(64) {
            frames += sink.write(chunk, &filter).await.expect("write");
        }
        rate(frames as u64, start.elapsed())
    }
}
