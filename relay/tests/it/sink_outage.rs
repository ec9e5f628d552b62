//! Sink outages against real servers that the tests stop (SIGKILL) and restart:
//! * a required sink's server stops → agents are throttled through credits (acks stop, the
//!   window fills, the sender blocks), `/readyz` names the sink unhealthy, the relay keeps
//!   serving (a new agent registers, an optional sink keeps receiving); the server comes back →
//!   the backlog drains and every frame is stored exactly once;
//! * an optional sink's outage never holds acks back; its drops are counted in metrics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sink_support::{
    blocking, check_exactly_once_in_order, js_count, js_read_all, payloads, redis_stream,
    send_numbered, sink_entry, Stored,
};
use contrail_protocol::client::Agent;
use contrail_relay::sink::{SinkBatch, SinkCommon};
use contrail_relay::Hooks;
use contrail_testsupport::{poll_until_async, NatsServer, RedisServer};
use tokio::sync::mpsc;

const WINDOW: u64 = 64;
const DEADLINE: Duration = Duration::from_secs(10);

/// Sum of the series of `metric` labelled `sink="<sink>"`.
fn sink_metric(metric: &str, sink: &str) -> f64 {
    crate::common::metric_sum(metric, &format!("sink=\"{sink}\""))
}

/// `/readyz`: HTTP status and the health of component `name`.
async fn readyz(relay: &crate::common::TestRelay, name: &str) -> (u16, Option<bool>) {
    let resp = reqwest::get(format!("{}/readyz", relay.http()))
        .await
        .expect("GET /readyz");
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("readyz JSON");
    let healthy = body["components"].as_array().and_then(|cs| {
        cs.iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["healthy"].as_bool())
    });
    (status, healthy)
}

/// Collects (agent, seq) of everything an in-process channel sink receives.
fn collect(mut rx: mpsc::Receiver<Arc<SinkBatch>>) -> Arc<Mutex<Vec<(String, u64)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            let mut s = out.lock().expect("lock");
            for f in b.frames.iter() {
                s.push((b.origin.agent_id.to_string(), f.seq()));
            }
        }
    });
    seen
}

fn count_of(seen: &Mutex<Vec<(String, u64)>>, agent: &str) -> usize {
    seen.lock()
        .expect("lock")
        .iter()
        .filter(|(a, _)| a == agent)
        .count()
}

async fn flush(agent: &Agent, what: &str) {
    tokio::time::timeout(DEADLINE, agent.flush())
        .await
        .unwrap_or_else(|_| panic!("{what}: not acked within {DEADLINE:?}"))
        .expect("flush");
}

/// What a backend under test can do.
trait Backend {
    fn stop(&mut self);
    fn restart(&mut self);
}

impl Backend for RedisServer {
    fn stop(&mut self) {
        RedisServer::stop(self)
    }
    fn restart(&mut self) {
        RedisServer::restart(self)
    }
}

impl Backend for NatsServer {
    fn stop(&mut self) {
        NatsServer::stop(self)
    }
    fn restart(&mut self) {
        NatsServer::restart(self)
    }
}

/// The shared outage scenario. `sink` is the required sink under test; phase 1 (300 frames of
/// `drone-a`) is stored and acked before the server is killed.
///
/// Throttling cannot pass by accident: while the server is down we require the agent's window
/// to be exactly full (`last_seq == acked + max_inflight`, so the sender is blocked on credits
/// with 636 more frames to go), then wait for three MORE failed write attempts of the sink (its
/// error counter) and check that neither the ack point nor the last sent seq moved meanwhile.
async fn outage_scenario(
    backend: &mut dyn Backend,
    relay: &crate::common::TestRelay,
    sink: &str,
    seen: &Arc<Mutex<Vec<(String, u64)>>>,
) -> (Arc<Agent>, Agent) {
    let component = format!("sink:{sink}");
    let a = Arc::new(relay.agent("drone-a").await);
    let pa = payloads("drone-a", 1000);
    send_numbered(&a, &pa, 300).await;
    flush(&a, "phase 1").await;
    assert_eq!(readyz(relay, &component).await, (200, Some(true)));

    blocking(|| backend.stop());
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            let pa = payloads("drone-a", 1000);
            send_numbered(&a, &pa, 700).await;
        })
    };
    poll_until_async(DEADLINE, "drone-a's credit window full", async || {
        a.last_seq() == a.acked_seq() + WINDOW
    })
    .await;
    assert_eq!(a.acked_seq(), 300, "nothing acked while the sink is down");
    let errors = sink_metric("contrail_sink_errors_total", sink);
    poll_until_async(DEADLINE, "three more failed sink writes", async || {
        sink_metric("contrail_sink_errors_total", sink) >= errors + 3.0
    })
    .await;
    assert_eq!(a.acked_seq(), 300, "acks advanced while the sink was down");
    assert_eq!(a.last_seq(), 300 + WINDOW, "sender exceeded its window");
    assert!(!sender.is_finished(), "sender finished while throttled");
    poll_until_async(DEADLINE, "/readyz names the sink unhealthy", async || {
        readyz(relay, &component).await == (503, Some(false))
    })
    .await;

    // The relay keeps serving: a new agent registers and its frames reach the optional sink
    // (they wait for the required one like everyone's, so they are not acked yet).
    let b = relay.agent("drone-b").await;
    let pb = payloads("drone-b", 50);
    send_numbered(&b, &pb, 50).await;
    poll_until_async(
        DEADLINE,
        "drone-b's frames at the optional sink",
        async || count_of(seen, "drone-b") == 50,
    )
    .await;
    assert_eq!(
        b.acked_seq(),
        0,
        "drone-b acked while a required sink is down"
    );
    assert_eq!(a.acked_seq(), 300);

    blocking(|| backend.restart());
    tokio::time::timeout(DEADLINE, sender)
        .await
        .expect("sender unblocked after the restart")
        .expect("sender task");
    flush(&a, "backlog of drone-a").await;
    flush(&b, "backlog of drone-b").await;
    poll_until_async(DEADLINE, "/readyz healthy again", async || {
        readyz(relay, &component).await == (200, Some(true))
    })
    .await;
    (a, b)
}

/// Starts a relay with the required sink `entry` plus an optional channel sink.
async fn relay_with(entry: String) -> (crate::common::TestRelay, Arc<Mutex<Vec<(String, u64)>>>) {
    crate::common::metrics();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::common::test_config(dir.path());
    config.limits.max_inflight = WINDOW as u32;
    config.sinks.push(sink_entry(&entry));
    let (tx, rx) = mpsc::channel(4096);
    let side = contrail_relay::sink::SinkSpec {
        common: SinkCommon::new("side", false),
        factory: contrail_relay::sink::channel::factory(tx),
    };
    let relay = crate::common::start_with(config, dir, vec![side], Hooks::default()).await;
    (relay, collect(rx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_throttles_then_backlog_drains_exactly_once() {
    let mut redis = blocking(RedisServer::start);
    let (relay, seen) = relay_with(format!(
        "name = \"redis-out\"\ntype = \"redis_streams\"\nrequired = true\nurl = \"{}\"\ntimeout_ms = 300",
        redis.url()
    ))
    .await;
    // Redis here has no persistence: what phase 1 stored is read before the kill.
    let key_a = "contrail:telemetry:drone-a";
    let mut stored: Vec<Stored> = Vec::new();
    struct Snapshotting<'a> {
        redis: &'a mut RedisServer,
        before_stop: &'a mut Vec<Stored>,
    }
    impl Backend for Snapshotting<'_> {
        fn stop(&mut self) {
            *self.before_stop = redis_stream(self.redis, "contrail:telemetry:drone-a");
            self.redis.stop();
        }
        fn restart(&mut self) {
            self.redis.restart();
        }
    }
    let mut backend = Snapshotting {
        redis: &mut redis,
        before_stop: &mut stored,
    };
    let (_a, _b) = outage_scenario(&mut backend, &relay, "redis-out", &seen).await;
    assert_eq!(stored.len(), 300, "phase 1 stored before the outage");
    stored.extend(blocking(|| redis_stream(&redis, key_a)));
    stored.extend(blocking(|| {
        redis_stream(&redis, "contrail:telemetry:drone-b")
    }));
    check_exactly_once_in_order(&stored, &[("drone-a", 1000), ("drone-b", 50)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_outage_throttles_then_backlog_drains_exactly_once() {
    let mut nats = blocking(NatsServer::start);
    let (relay, seen) = relay_with(format!(
        "name = \"js-out\"\ntype = \"nats_jetstream\"\nrequired = true\nurl = \"{}\"\ntimeout_ms = 300",
        nats.url()
    ))
    .await;
    let (_a, _b) = outage_scenario(&mut nats, &relay, "js-out", &seen).await;
    // The JetStream store survives the restart: the whole history is in the stream.
    let stored = js_read_all(&nats.url(), "CONTRAIL", 1050).await;
    check_exactly_once_in_order(&stored, &[("drone-a", 1000), ("drone-b", 50)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_sink_outage_never_holds_acks_and_counts_drops() {
    crate::common::metrics();
    let mut redis = blocking(RedisServer::start);
    let mut nats = blocking(NatsServer::start);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::common::test_config(dir.path());
    config.limits.max_inflight = WINDOW as u32;
    config.sinks.push(sink_entry(&format!(
        "name = \"redis-opt\"\ntype = \"redis_streams\"\nurl = \"{}\"\nqueue_batches = 4\ntimeout_ms = 200",
        redis.url()
    )));
    config.sinks.push(sink_entry(&format!(
        "name = \"js-opt\"\ntype = \"nats_jetstream\"\nurl = \"{}\"\nqueue_batches = 4\ntimeout_ms = 200",
        nats.url()
    )));
    let (main, rx) = crate::common::channel_sink("main", true, 4096);
    let relay = crate::common::start_with(config, dir, vec![main], Hooks::default()).await;
    let seen = collect(rx);

    let a = relay.agent("drone-o").await;
    let pa = payloads("drone-o", 3000);
    send_numbered(&a, &pa, 100).await;
    flush(&a, "before the outage").await;
    // Both optional sinks work before the outage (with 4-batch queues they may already have
    // dropped some of these under drop_oldest; only that they store is checked here).
    poll_until_async(DEADLINE, "optional sinks storing", async || {
        blocking(|| redis.cmd::<i64>(&["XLEN", "contrail:telemetry:drone-o"])) > 0
            && js_count(&nats.url(), "CONTRAIL").await > 0
    })
    .await;
    let dropped_before = [
        sink_metric("contrail_sink_dropped_total", "redis-opt"),
        sink_metric("contrail_sink_dropped_total", "js-opt"),
    ];

    blocking(|| {
        redis.stop();
        nats.stop();
    });
    send_numbered(&a, &pa, 2900).await;
    flush(&a, "during the optional sinks' outage").await;
    assert_eq!(a.acked_seq(), 3000);
    poll_until_async(DEADLINE, "the required sink got everything", async || {
        count_of(&seen, "drone-o") == 3000
    })
    .await;
    poll_until_async(
        DEADLINE,
        "drops counted for both optional sinks",
        async || {
            sink_metric("contrail_sink_dropped_total", "redis-opt") > dropped_before[0]
                && sink_metric("contrail_sink_dropped_total", "js-opt") > dropped_before[1]
        },
    )
    .await;
    for name in ["sink:redis-opt", "sink:js-opt"] {
        poll_until_async(
            DEADLINE,
            "optional sink unhealthy, relay still ready",
            async || readyz(&relay, name).await == (200, Some(false)),
        )
        .await;
    }
    let written = relay
        .relay
        .sinks()
        .iter()
        .find(|s| s.common.name == "redis-opt")
        .map(|s| s.frames_written())
        .expect("redis-opt handle");
    assert!(
        written < 3000,
        "redis-opt wrote {written} with its server down"
    );
}
