//! Redis Streams sink against a real `redis-server`: frames from several agents through the
//! in-process relay, read back with XRANGE, every frame exactly once, in order, fields intact.

use std::time::Duration;

use crate::sink_support::{
    blocking, check_exactly_once_in_order, payloads, redis_stream, send_numbered, sink_entry,
};
use contrail_relay::Hooks;
use contrail_testsupport::{RedisOptions, RedisServer};

/// Connects every agent, then sends from all of them at once and waits until all is acked.
async fn send_from_agents(relay: &crate::common::TestRelay, agents: &[(&str, u64)]) {
    let mut senders = Vec::new();
    for &(id, count) in agents {
        let agent = relay.agent(id).await;
        let id = id.to_owned();
        senders.push(tokio::spawn(async move {
            let p = payloads(&id, count);
            send_numbered(&agent, &p, count).await;
            tokio::time::timeout(Duration::from_secs(10), agent.flush())
                .await
                .expect("acked in time")
                .expect("flush");
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_to_per_agent_streams_exactly_once_in_order() {
    let redis = blocking(RedisServer::start);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::common::test_config(dir.path());
    config.limits.max_inflight = 64;
    config.sinks.push(sink_entry(&format!(
        "name = \"redis\"\ntype = \"redis_streams\"\nrequired = true\nurl = \"{}\"\ntimeout_ms = 2000",
        redis.url()
    )));
    let relay = crate::common::start_with(config, dir, vec![], Hooks::default()).await;

    let agents = [
        ("drone-a", 700u64),
        ("drone-b", 500),
        ("fleet.drone-c", 300),
    ];
    send_from_agents(&relay, &agents).await;

    let mut all = Vec::new();
    for (id, count) in agents {
        let stored = blocking(|| redis_stream(&redis, &format!("contrail:telemetry:{id}")));
        assert_eq!(stored.len() as u64, count, "{id}");
        all.extend(stored);
    }
    check_exactly_once_in_order(&all, &agents);
    let keys: Vec<String> = blocking(|| redis.cmd(&["KEYS", "*"]));
    assert_eq!(keys.len(), 3, "{keys:?}");
    let handle = &relay.relay.sinks()[0];
    assert_eq!(handle.frames_written(), 1500);
    assert!(handle.is_healthy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_for_all_and_maxlen_trimming() {
    let redis = blocking(RedisServer::start);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::common::test_config(dir.path());
    config.limits.max_inflight = 64;
    config.sinks.push(sink_entry(&format!(
        "name = \"all\"\ntype = \"redis_streams\"\nrequired = true\nurl = \"{}\"\nkey = \"contrail:all\"\nmaxlen = 0",
        redis.url()
    )));
    config.sinks.push(sink_entry(&format!(
        "name = \"trimmed\"\ntype = \"redis_streams\"\nrequired = true\nurl = \"{}\"\nkey = \"trim:{{agent_id}}\"\nmaxlen = 100",
        redis.url()
    )));
    let relay = crate::common::start_with(config, dir, vec![], Hooks::default()).await;

    let agents = [("drone-1", 600u64), ("drone-2", 600)];
    send_from_agents(&relay, &agents).await;

    let all = blocking(|| redis_stream(&redis, "contrail:all"));
    assert_eq!(all.len(), 1200);
    check_exactly_once_in_order(&all, &agents);
    for (id, count) in agents {
        let len: i64 = blocking(|| redis.cmd(&["XLEN", &format!("trim:{id}")]));
        // `MAXLEN ~ 100` trims whole macro nodes: at least 100 stay, far fewer than sent.
        assert!((100..count as i64).contains(&len), "{id}: XLEN {len}");
        let tail = blocking(|| redis_stream(&redis, &format!("trim:{id}")));
        let seqs: Vec<u64> = tail.iter().map(|s| s.seq).collect();
        let want: Vec<u64> = (count - tail.len() as u64 + 1..=count).collect();
        assert_eq!(seqs, want, "{id}: the newest entries survive, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_tls_verified_by_the_ca_file() {
    let redis = blocking(|| {
        RedisServer::start_with(RedisOptions {
            tls: true,
            ..RedisOptions::default()
        })
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::common::test_config(dir.path());
    config.limits.max_inflight = 64;
    config.sinks.push(sink_entry(&format!(
        "name = \"tls\"\ntype = \"redis_streams\"\nrequired = true\nurl = \"{}\"\ntls_ca_file = {:?}\ntimeout_ms = 2000",
        redis.tls_url().expect("tls url"),
        redis.tls_ca_file().expect("ca").display().to_string(),
    )));
    let relay = crate::common::start_with(config, dir, vec![], Hooks::default()).await;
    let agents = [("drone-tls", 300u64)];
    send_from_agents(&relay, &agents).await;
    let stored = blocking(|| redis_stream(&redis, "contrail:telemetry:drone-tls"));
    check_exactly_once_in_order(&stored, &agents);
    let tls_port = redis.tls_addr().expect("tls").port();
    let clients: String = blocking(|| redis.cmd(&["CLIENT", "LIST"]));
    assert!(
        clients.contains(&format!("laddr=127.0.0.1:{tls_port}")),
        "the sink is not on the TLS port: {clients:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_with_a_password_into_a_nonzero_db() {
    let redis = blocking(|| {
        RedisServer::start_with(RedisOptions {
            password: Some("pw-streams".into()),
            ..RedisOptions::default()
        })
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::common::test_config(dir.path());
    config.limits.max_inflight = 64;
    config.sinks.push(sink_entry(&format!(
        "name = \"db2\"\ntype = \"redis_streams\"\nrequired = true\nurl = \"redis://127.0.0.1:{}/2\"\npassword = \"pw-streams\"\ntimeout_ms = 2000",
        redis.addr().port()
    )));
    let relay = crate::common::start_with(config, dir, vec![], Hooks::default()).await;
    let agents = [("drone-db", 250u64)];
    send_from_agents(&relay, &agents).await;
    let key = "contrail:telemetry:drone-db";
    let len: i64 = blocking(|| redis.cmd_in_db(2, &["XLEN", key]));
    assert_eq!(len, 250);
    let in_db0: i64 = blocking(|| redis.cmd(&["XLEN", key]));
    assert_eq!(in_db0, 0, "written to db 0");
}

/// Sustained frames/s into Redis Streams, end to end and sink alone. Run with
/// `cargo test --release -p contrail-relay --test sink_redis_streams -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn benchmark_sustained_frames_per_second() {
    use crate::sink_support::bench;
    use contrail_relay::sink::redis_streams;

    let redis = blocking(RedisServer::start);
    let (e2e, batches) = bench::end_to_end(sink_entry(&format!(
        "name = \"redis\"\ntype = \"redis_streams\"\nrequired = true\nurl = \"{}\"",
        redis.url()
    )))
    .await;
    let entry = sink_entry(&format!(
        "name = \"redis2\"\ntype = \"redis_streams\"\nurl = \"{}\"\nkey = \"replay:{{agent_id}}\"",
        redis.url()
    ));
    let factory = redis_streams::factory(crate::sink_support::redis_settings(&entry));
    let alone = bench::sink_only(factory, &batches).await;
    println!(
        "redis_streams: {} agents x {} frames of {} B: end to end {e2e:.0} frames/s; sink alone {alone:.0} frames/s",
        bench::AGENTS,
        bench::PER_AGENT,
        bench::PAYLOAD
    );
}
