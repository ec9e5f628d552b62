//! Fault: relay A is killed with SIGKILL mid-stream and agents move to relay B (issue 6, item 8).
//!
//! Both relays run as child processes of the real `contrail-relay` binary, share one Redis for
//! routing, and write to their own NDJSON file sink. Agents list both relays. What is checked,
//! per agent, with `R` = the `resume_from_seq` B answered (= the highest ack the agent got
//! from A, which it claims on Register):
//!
//! * every frame `1..=R` (acked by A) is in A's file: an ack from A means A's required sink had it;
//! * B's file holds exactly `R+1..=N`, once each, in order: nothing the agent saw acked is sent
//!   to B, and everything after is;
//! * A's file holds `1..=a_max` once each, in order (a partial last line from the kill at most);
//! * the only frames in both files are `R+1..=a_max`: frames A wrote but whose ack never reached the
//!   agent before the kill. That window is at most one credit window (`max_inflight`); its size is
//!   printed. This is the documented kill -9 guarantee: at-least-once across relays for the
//!   unacked window, exactly-once for acked frames. (A drain instead waits for acks before the
//!   agent leaves, so the window is empty.)
//! * Redis `drone:{id}` names relay B for every agent afterwards.

use std::sync::Arc;
use std::time::Duration;

use crate::faults_support::*;
use contrail_protocol::client::config::load_ca_file;
use contrail_protocol::client::{Agent, ClientConfig, OutFrame, Trust};
use contrail_protocol::AgentId;
use contrail_testsupport::{poll_until_async, RedisServer};

const AGENTS: usize = 3;
const TOTAL: u64 = 15_000;
const MAX_INFLIGHT: u64 = 1024;

fn route_of(redis: &RedisServer, agent: &str) -> Option<String> {
    let v: String = redis
        .try_cmd::<Option<String>>(&["GET", &format!("drone:{agent}")])
        .ok()??;
    let json: serde_json::Value = serde_json::from_str(&v).ok()?;
    json["relay_id"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_agents_move_to_b_and_nothing_acked_is_lost_or_doubled() {
    let started = std::time::Instant::now();
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = spawn_relay(&dir.path().join("a"), "relay-a", Some(redis.addr()));
    let b = spawn_relay(&dir.path().join("b"), "relay-b", Some(redis.addr()));
    let mut roots = load_ca_file(&a.cert).expect("A cert");
    roots.extend(load_ca_file(&b.cert).expect("B cert"));

    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let mut c = ClientConfig::new(
            a.addr,
            AgentId::new(format!("drone-kill-{i}")).expect("id"),
            Trust::CaDer(roots.clone()),
        );
        c.relays = vec![a.addr, b.addr];
        c.idle_timeout = Duration::from_millis(1_000);
        c.connect_timeout = Duration::from_millis(1_000);
        c.reconnect_min = Duration::from_millis(20);
        c.reconnect_max = Duration::from_millis(200);
        let agent = Agent::connect(c).await.expect("connect to A");
        assert_eq!(agent.session().expect("session").relay_id, "relay-a");
        agents.push(Arc::new(agent));
    }
    let senders: Vec<_> = agents
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, agent)| {
            tokio::spawn(async move {
                // Agent 0 streams as fast as credits allow (so the kill lands with frames in
                // flight); the others are paced at 10 000 frames/s.
                let (per_tick, period) = if i == 0 { (1024, 1) } else { (100, 10) };
                let mut tick = tokio::time::interval(Duration::from_millis(period));
                while agent.last_seq() < TOTAL {
                    tick.tick().await;
                    let mut left = (TOTAL - agent.last_seq()).min(per_tick) as usize;
                    while left > 0 {
                        let (_, n) = agent
                            .send_many(left, |seq| OutFrame {
                                kind: 1,
                                payload: b"kill",
                                device_time: seq,
                                ..OutFrame::default()
                            })
                            .await
                            .expect("send");
                        left -= n;
                    }
                }
                agent.flush().await.expect("all acked in the end");
            })
        })
        .collect();

    poll_until_async(
        Duration::from_secs(10),
        "agent 0 a quarter acked by A, all routed to A",
        async || {
            agents.iter().enumerate().all(|(i, ag)| {
                ag.acked_seq() >= if i == 0 { TOTAL / 4 } else { 200 }
                    && route_of(&redis, &format!("drone-kill-{i}")).as_deref() == Some("relay-a")
            })
        },
    )
    .await;
    a.process.kill_hard();
    let acked_at_kill: Vec<u64> = agents.iter().map(|ag| ag.acked_seq()).collect();

    let resume: Vec<u64> = {
        let mut out = Vec::new();
        for ag in &agents {
            let s = poll_until_async(
                Duration::from_secs(10),
                "agent registered at B",
                async || ag.session().filter(|s| s.relay_id == "relay-b"),
            )
            .await;
            out.push(s.resume_from_seq);
        }
        out
    };
    for s in senders {
        tokio::time::timeout(Duration::from_secs(15), s)
            .await
            .expect("streams finish on B in time")
            .expect("sender");
    }
    poll_until_async(
        Duration::from_secs(10),
        "routing keys name relay B",
        async || {
            (0..AGENTS)
                .all(|i| route_of(&redis, &format!("drone-kill-{i}")).as_deref() == Some("relay-b"))
        },
    )
    .await;

    let (a_lines, a_partial) = read_ndjson(&a.sink_path);
    let (b_lines, b_partial) = read_ndjson(&b.sink_path);
    assert!(
        a_partial <= 1,
        "at most the line being written at the kill is cut"
    );
    assert_eq!(b_partial, 0);
    let a_by = seqs_by_agent(&a_lines);
    let b_by = seqs_by_agent(&b_lines);
    let mut report = Vec::new();
    for (i, ag) in agents.iter().enumerate() {
        let id = format!("drone-kill-{i}");
        assert_eq!(ag.acked_seq(), TOTAL);
        let r = resume[i];
        assert!(
            r >= acked_at_kill[i],
            "{id}: B resumed at the agent's ack claim"
        );
        let in_a = a_by.get(&id).cloned().unwrap_or_default();
        let in_b = b_by.get(&id).cloned().unwrap_or_default();
        let a_max = in_a.last().copied().unwrap_or(0);
        assert_exactly_once_in_order(&format!("{id} in A"), &in_a, a_max);
        assert!(
            a_max >= r,
            "{id}: every frame acked by A ({r}) is in A's file (max {a_max})"
        );
        let expect_b: Vec<u64> = (r + 1..=TOTAL).collect();
        assert_eq!(
            in_b.first(),
            expect_b.first(),
            "{id}: B starts right after the last ack the agent saw from A"
        );
        assert_eq!(
            in_b, expect_b,
            "{id}: B holds R+1..=N exactly once, in order"
        );
        let window = a_max - r;
        assert!(
            window <= MAX_INFLIGHT,
            "{id}: frames in both files ({window}) fit one credit window"
        );
        report.push(format!(
            "{id}: acked at kill {}, B resume_from {r}, A wrote up to {a_max}, in both files {window}",
            acked_at_kill[i]
        ));
    }
    eprintln!(
        "relay kill: {:?}\n  {}",
        started.elapsed(),
        report.join("\n  ")
    );
}
