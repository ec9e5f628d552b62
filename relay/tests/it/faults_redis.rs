//! Fault: Redis (routing) goes down for a while and comes back empty (issue 6, item 9). Agents
//! keep streaming and new agents keep registering while it is down; after the restart every live
//! agent's `drone:{id}` key reappears with this relay and its current session; the file sink holds
//! every frame exactly once.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{frame, start_with, test_config};
use crate::faults_support::*;
use contrail_protocol::client::Agent;
use contrail_relay::Hooks;
use contrail_testsupport::{poll_until_async, RedisServer};

const TOTAL: u64 = 12_000;

fn route(redis: &RedisServer, agent: &str) -> Option<(String, String)> {
    let v: String = redis
        .try_cmd::<Option<String>>(&["GET", &format!("drone:{agent}")])
        .ok()??;
    let json: serde_json::Value = serde_json::from_str(&v).ok()?;
    Some((
        json["relay_id"].as_str()?.to_string(),
        json["session_id"].as_str()?.to_string(),
    ))
}

fn routed_here(redis: &RedisServer, agent: &Agent, id: &str) -> bool {
    let session = agent.session().map(|s| s.session_id);
    route(redis, id).is_some_and(|(relay, s)| relay == "relay-r" && Some(s) == session)
}

fn spawn_sender(agent: Arc<Agent>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while agent.last_seq() < TOTAL {
            tick.tick().await;
            let mut left = (TOTAL - agent.last_seq()).min(50) as usize;
            while left > 0 {
                let (_, n) = agent
                    .send_many(left, |_| frame(b"redis-down"))
                    .await
                    .expect("send");
                left -= n;
            }
        }
        agent.flush().await.expect("acked");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_does_not_stop_streaming_and_keys_come_back() {
    let started = std::time::Instant::now();
    let mut redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = dir.path().join("out/telemetry.ndjson");
    let mut config = test_config(dir.path());
    config.relay_id = Some("relay-r".into());
    config.redis.addr = Some(redis.addr().to_string());
    config.redis.ttl_secs = 4;
    config.sinks = vec![file_sink(&sink)];
    let relay = start_with(
        config,
        tempfile::tempdir().expect("tempdir"),
        vec![],
        Hooks::default(),
    )
    .await;

    let ids: Vec<String> = (0..3).map(|i| format!("drone-redis-{i}")).collect();
    let mut agents = Vec::new();
    for id in &ids {
        agents.push(Arc::new(relay.agent(id).await));
    }
    let senders: Vec<_> = agents.iter().cloned().map(spawn_sender).collect();
    poll_until_async(
        Duration::from_secs(10),
        "routing keys published",
        async || {
            ids.iter()
                .zip(&agents)
                .all(|(id, a)| routed_here(&redis, a, id))
        },
    )
    .await;

    redis.stop();
    let acked_at_stop: Vec<u64> = agents.iter().map(|a| a.acked_seq()).collect();
    // A new agent registers while Redis is down.
    let late_id = "drone-redis-late".to_string();
    let late = Arc::new(relay.agent(&late_id).await);
    let late_sender = spawn_sender(late.clone());
    poll_until_async(
        Duration::from_secs(10),
        "streaming continues with Redis down",
        async || {
            agents
                .iter()
                .zip(&acked_at_stop)
                .all(|(a, at)| a.acked_seq() >= (at + 2_000).min(TOTAL))
                && late.acked_seq() >= 1_000
        },
    )
    .await;
    assert!(
        redis.try_cmd::<String>(&["PING"]).is_err(),
        "Redis really was down while they streamed"
    );

    redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .expect("restart redis");
    let mut all_ids = ids.clone();
    all_ids.push(late_id.clone());
    let mut all_agents = agents.clone();
    all_agents.push(late.clone());
    poll_until_async(
        Duration::from_secs(15),
        "every live agent's key republished after the restart",
        async || {
            all_ids
                .iter()
                .zip(&all_agents)
                .all(|(id, a)| routed_here(&redis, a, id))
        },
    )
    .await;

    for s in senders.into_iter().chain([late_sender]) {
        tokio::time::timeout(Duration::from_secs(15), s)
            .await
            .expect("streams finish")
            .expect("sender");
    }
    let (lines, partial) = read_ndjson(&sink);
    assert_eq!(partial, 0);
    let by_agent = seqs_by_agent(&lines);
    for id in &all_ids {
        assert_exactly_once_in_order(id, &by_agent[id], TOTAL);
    }
    for a in &all_agents {
        assert_eq!(a.stats().reconnects, 0, "no session was disturbed");
    }
    eprintln!("redis outage: {:?}", started.elapsed());
}

/// The relay's `[redis]` settings reach the routing publisher: `rediss://` verified with
/// `tls_ca_file`, `password` (AUTH) and a non-zero `db`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_over_tls_with_password_and_db_from_the_relay_config() {
    let redis = tokio::task::spawn_blocking(|| {
        RedisServer::start_with(contrail_testsupport::RedisOptions {
            password: Some("relay-pw".into()),
            tls: true,
        })
    })
    .await
    .expect("redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.relay_id = Some("relay-tls".into());
    config.redis.addr = redis.tls_url();
    config.redis.tls_ca_file = redis.tls_ca_file();
    config.redis.password = Some("relay-pw".into());
    config.redis.db = Some(5);
    config.validate().expect("valid config");
    let relay = start_with(
        config,
        tempfile::tempdir().expect("tempdir"),
        vec![],
        Hooks::default(),
    )
    .await;
    let agent = relay.agent("drone-tls-route").await;
    let session = agent.session().map(|s| s.session_id).expect("session");
    let value = poll_until_async(Duration::from_secs(10), "key in db 5", async || {
        redis.cmd_in_db::<Option<String>>(5, &["GET", "drone:drone-tls-route"])
    })
    .await;
    let json: serde_json::Value = serde_json::from_str(&value).expect("json");
    assert_eq!(json["relay_id"], "relay-tls");
    assert_eq!(json["session_id"].as_str(), Some(session.as_str()));
    assert!(
        redis
            .cmd::<Option<String>>(&["GET", "drone:drone-tls-route"])
            .is_none(),
        "written to db 0"
    );
    agent.close().await.expect("close");
}
