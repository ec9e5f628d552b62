//! One stream from several agents into all four outputs at once — live subscriber (block
//! policy), Redis Streams, NATS JetStream and the file sink, all required — and every frame
//! arrives exactly once, in order per agent, in each of them.

use std::collections::HashMap;
use std::time::Duration;

use crate::sink_support::{
    blocking, check_exactly_once_in_order, js_read_all, payloads, redis_stream, send_numbered,
    sink_entry,
};
use contrail_protocol::client::subscriber::{Policy, Subscriber, SubscriberConfig};
use contrail_protocol::client::Trust;
use contrail_relay::Hooks;
use contrail_testsupport::{NatsServer, RedisServer};

fn assert_once_in_order(what: &str, got: &[(String, u64)], agents: &[(&str, u64)]) {
    let mut by_agent: HashMap<&str, Vec<u64>> = HashMap::new();
    for (a, s) in got {
        by_agent.entry(a.as_str()).or_default().push(*s);
    }
    assert_eq!(by_agent.len(), agents.len(), "{what}: agents");
    for (agent, count) in agents {
        assert_eq!(
            by_agent.get(agent).cloned().unwrap_or_default(),
            (1..=*count).collect::<Vec<_>>(),
            "{what}: {agent} exactly once, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_reaches_live_redis_jetstream_and_file_exactly_once() {
    let redis = blocking(RedisServer::start);
    let nats = blocking(NatsServer::start);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("all.ndjson");
    let mut config = crate::common::test_config(dir.path());
    config.limits.max_inflight = 128;
    config.sinks.push(sink_entry(&format!(
        "name = \"file\"\ntype = \"file\"\nrequired = true\npath = \"{}\"",
        file.display()
    )));
    config.sinks.push(sink_entry(&format!(
        "name = \"redis\"\ntype = \"redis_streams\"\nrequired = true\nurl = \"{}\"\nkey = \"contrail:telemetry:{{agent_id}}\"",
        redis.url()
    )));
    config.sinks.push(sink_entry(&format!(
        "name = \"jetstream\"\ntype = \"nats_jetstream\"\nrequired = true\nurl = \"{}\"\nsubject = \"contrail.telemetry.{{agent_id}}\"",
        nats.url()
    )));
    config.sinks.push(sink_entry(
        "name = \"live\"\ntype = \"live\"\nrequired = true",
    ));
    let relay = crate::common::start_with(config, dir, vec![], Hooks::default()).await;

    // The backend subscriber must not miss a frame: block policy on a required live sink.
    let mut sub_cfg = SubscriberConfig::new(
        relay.relay.local_addr(),
        Trust::CaDer(vec![relay.relay.certificate()]),
    );
    sub_cfg.policy = Policy::Block;
    sub_cfg.agent_patterns = vec!["drone-*".into()];
    let mut sub = Subscriber::connect(sub_cfg).await.expect("subscriber");
    let agents = [("drone-a", 600u64), ("drone-b", 400), ("drone-c", 250)];
    let total: u64 = agents.iter().map(|(_, n)| n).sum();
    let live = tokio::spawn(async move {
        let mut seen = Vec::new();
        while (seen.len() as u64) < total {
            match tokio::time::timeout(Duration::from_secs(20), sub.next_batch()).await {
                Ok(Ok(Some(batch))) => {
                    for v in batch.iter() {
                        seen.push((v.agent_id().to_string(), v.frame().seq()));
                    }
                }
                other => panic!(
                    "subscriber stopped early: {:?}",
                    other.map(|r| r.map(|b| b.map(|b| b.len())))
                ),
            }
        }
        (seen, sub.stats().dropped)
    });

    let mut senders = Vec::new();
    for &(id, count) in &agents {
        let agent = relay.agent(id).await;
        senders.push(tokio::spawn(async move {
            send_numbered(&agent, &payloads(id, count), count).await;
            agent
                .flush()
                .await
                .expect("acked by all four required outputs");
            agent.close().await.expect("close");
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }

    let (seen, dropped) = live.await.expect("live subscriber");
    assert_eq!(dropped, 0, "block subscriber never loses a frame");
    assert_once_in_order("live", &seen, &agents);

    let mut in_redis = Vec::new();
    for (id, _) in &agents {
        in_redis.extend(blocking(|| {
            redis_stream(&redis, &format!("contrail:telemetry:{id}"))
        }));
    }
    check_exactly_once_in_order(&in_redis, &agents);

    let in_js = js_read_all(&nats.url(), "CONTRAIL", total as usize).await;
    check_exactly_once_in_order(&in_js, &agents);

    let in_file: Vec<(String, u64)> = std::fs::read_to_string(&file)
        .expect("file sink")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            (
                v["agent_id"].as_str().expect("agent").to_string(),
                v["seq"].as_u64().expect("seq"),
            )
        })
        .collect();
    assert_once_in_order("file", &in_file, &agents);
}
