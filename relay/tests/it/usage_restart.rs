//! Usage that survives a relay killed mid-hour (issue 22 item 4, docs/sre.md "Usage"): two
//! `contrail-relay` processes share one real PostgreSQL (usage flushed every 200 ms); agents
//! stream to relay A, which is killed with SIGKILL mid-stream; they reconnect to relay B, resend
//! what A had not acked, and finish. Then `GET /v1/usage` (storage `postgres`, summed over both
//! relays) must hold:
//!
//! - **nothing twice:** the total is at most the frames sent, per agent too; B's share is exactly
//!   the frames above each agent's resume point (`resume_from_seq` B gave it); A's share is at
//!   most what A acked (the agents' ack counts when they left A);
//! - **nothing lost beyond the unflushed delta:** what is missing is at most what the agents had
//!   acked from A after A's last flushed sample (`usage_flushes.sampled_ms` in the database,
//!   against a timeline of the agents' ack counts taken by the test).

use crate::faults_support::{log_tail, spawn_reporting};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contrail_protocol::client::{Agent, ClientConfig, OutFrame, Trust};
use contrail_protocol::AgentId;
use contrail_testsupport::{poll_until_async, PostgresServer, ProcessGuard};
use futures::StreamExt;
use serde_json::Value;

const AGENTS: usize = 20;
/// Frames per agent.
const FRAMES: u64 = 400;
/// One frame per agent every `PACE` (20 agents: 2,000 frames/s).
const PACE: Duration = Duration::from_millis(10);
/// Relay A is killed once every agent has this many frames acked.
const ACKED_BEFORE_KILL: u64 = 100;
const FLUSH_MS: u64 = 200;

fn agent_id(i: usize) -> String {
    format!("usage-drone-{i:02}")
}

struct ChildRelay {
    process: ProcessGuard,
    addr: SocketAddr,
    http: String,
    cert: PathBuf,
    log: PathBuf,
}

/// Starts `contrail-relay` with a required file sink, the usage flush at [`FLUSH_MS`] and the
/// database; reads its addresses from stdout.
fn spawn_relay(dir: &Path, certs: &Path, id: &str, db: &str) -> ChildRelay {
    let own = dir.join(id);
    std::fs::create_dir_all(&own).expect("relay dir");
    let config = own.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[usage]\nflush_interval_ms = {FLUSH_MS}\n\
             [[sinks]]\nname = \"archive\"\ntype = \"file\"\nrequired = true\npath = \"{}\"\n",
            own.join("frames.ndjson").display()
        ),
    )
    .expect("write relay config");
    let log = own.join("relay.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_contrail-relay"));
    cmd.env_clear()
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--dev-cert-dir")
        .arg(certs)
        .args(["--relay-id", id, "--database-url", db, "--log", "info"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("relay log file"));
    let r = spawn_reporting(id, &mut cmd, &log, Duration::from_secs(60));
    ChildRelay {
        process: r.process,
        addr: r.addr,
        http: r.http,
        cert: r.cert,
        log,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn sql_u64(pg: &PostgresServer, sql: &str) -> u64 {
    let out = pg.psql(sql).expect("psql");
    if out.is_empty() {
        0
    } else {
        out.parse()
            .unwrap_or_else(|e| panic!("{sql}: {out:?}: {e}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_hour_usage_counts_every_acked_frame_once_but_its_unflushed_delta() {
    let pg = tokio::task::block_in_place(PostgresServer::start);
    let db = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let mut a = tokio::task::block_in_place(|| spawn_relay(dir.path(), &certs, "usage-a", &db));
    let b = tokio::task::block_in_place(|| spawn_relay(dir.path(), &certs, "usage-b", &db));
    assert_eq!(a.cert, b.cert, "both relays serve the shared certificate");

    // Every agent tries A first, then B.
    let agents: Vec<Arc<Agent>> = futures::stream::iter(0..AGENTS)
        .map(|i| {
            let mut c = ClientConfig::new(
                a.addr,
                AgentId::new(agent_id(i)).expect("agent id"),
                Trust::CaFile(a.cert.clone()),
            );
            c.relays = vec![a.addr, b.addr];
            c.idle_timeout = Duration::from_millis(3_000);
            c.connect_timeout = Duration::from_millis(2_000);
            c.reconnect_min = Duration::from_millis(50);
            c.reconnect_max = Duration::from_millis(500);
            async move { Agent::connect(c).await.expect("agent connects") }
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    for ag in &agents {
        assert_eq!(ag.session().expect("registered").relay_id, "usage-a");
    }

    let senders: Vec<_> = agents
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, agent)| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PACE);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let payload = format!("{}-payload-32-bytes..", agent_id(i)).into_bytes();
                for seq in 1..=FRAMES {
                    tick.tick().await;
                    let sent = agent
                        .send(&OutFrame {
                            kind: 1,
                            flight_id: "usage",
                            payload: &payload,
                            content_type: "application/octet-stream",
                            device_time: seq,
                        })
                        .await
                        .unwrap_or_else(|e| panic!("{} send {seq}: {e}", agent_id(i)));
                    assert_eq!(sent, seq);
                }
                tokio::time::timeout(Duration::from_secs(60), agent.flush())
                    .await
                    .unwrap_or_else(|_| panic!("{} flushed in time", agent_id(i)))
                    .unwrap_or_else(|e| panic!("{} flush: {e}", agent_id(i)));
            })
        })
        .collect();

    // A timeline of the agents' summed ack counts: each value read *before* its timestamp, so
    // "acked by then" holds for it.
    let mut timeline: Vec<(u64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    while !agents.iter().all(|g| g.acked_seq() >= ACKED_BEFORE_KILL) {
        let acked: u64 = agents.iter().map(|g| g.acked_seq()).sum();
        timeline.push((unix_ms(), acked));
        assert!(
            Instant::now() < deadline,
            "agents never reached {ACKED_BEFORE_KILL} acked frames on A; log:\n{}",
            log_tail(&a.log)
        );
        poll.tick().await;
    }
    let acked: u64 = agents.iter().map(|g| g.acked_seq()).sum();
    timeline.push((unix_ms(), acked));
    tokio::task::block_in_place(|| a.process.kill_hard());
    let sent_at_kill: u64 = agents.iter().map(|g| g.last_seq()).sum();

    // Every agent moves to B: its resume point there is what A acked it, exactly.
    let on_b = poll_until_async(
        Duration::from_secs(30),
        "every agent registered with B",
        async || {
            let sessions: Option<Vec<_>> = agents
                .iter()
                .map(|g| g.session().filter(|s| s.relay_id == "usage-b"))
                .collect();
            sessions
        },
    )
    .await;
    let acked_by_a: u64 = on_b.iter().map(|s| s.resume_from_seq).sum();

    for s in senders {
        tokio::time::timeout(Duration::from_secs(90), s)
            .await
            .expect("every agent finishes and flushes")
            .expect("sender task");
    }
    let total_sent = AGENTS as u64 * FRAMES;
    for (g, s) in agents.iter().zip(&on_b) {
        assert_eq!(g.acked_seq(), FRAMES, "every frame acked");
        let now = g.session().expect("still connected");
        assert_eq!(
            now.session_id, s.session_id,
            "one session on B per agent (a second reconnect would blur B's share)"
        );
    }

    // B's share: exactly the frames above each agent's resume point, once B flushed them.
    let b_expected = total_sent - acked_by_a;
    let b_sql = "SELECT coalesce(sum(frames), 0) FROM usage_hourly WHERE relay_id = 'usage-b'";
    let b_counted = poll_until_async(
        Duration::from_secs(20),
        "B flushed every frame it acked",
        async || {
            let n = tokio::task::block_in_place(|| sql_u64(&pg, b_sql));
            (n >= b_expected).then_some(n)
        },
    )
    .await;
    assert_eq!(b_counted, b_expected, "B counts each frame it acked once");

    // A's share: at most what it acked; missing at most what it acked after its last flushed
    // sample.
    let a_counted = tokio::task::block_in_place(|| {
        sql_u64(
            &pg,
            "SELECT coalesce(sum(frames), 0) FROM usage_hourly WHERE relay_id = 'usage-a'",
        )
    });
    let a_sampled_ms = tokio::task::block_in_place(|| {
        sql_u64(
            &pg,
            "SELECT coalesce(max(sampled_ms), 0) FROM usage_flushes WHERE relay_id = 'usage-a'",
        )
    });
    assert!(a_sampled_ms > 0, "A flushed before it was killed");
    let acked_by_sample = timeline
        .iter()
        .rev()
        .find(|(t, _)| *t <= a_sampled_ms)
        .map_or(0, |(_, n)| *n);
    let unflushed_bound = acked_by_a - acked_by_sample;
    assert!(
        a_counted <= acked_by_a,
        "A counted {a_counted} frames but acked {acked_by_a}: counted twice"
    );
    assert!(a_counted <= sent_at_kill);
    let missing = acked_by_a - a_counted;
    assert!(
        missing <= unflushed_bound,
        "{missing} acked frames missing, more than the {unflushed_bound} A acked after its last \
         flushed sample"
    );

    // The API: every relay, summed, from the database.
    let v: Value = reqwest::get(format!("{}/v1/usage?from=0", b.http))
        .await
        .expect("GET /v1/usage")
        .json()
        .await
        .expect("json");
    assert_eq!(v["storage"], "postgres", "{v}");
    assert_eq!(v["persistent"], true);
    let total = v["total_frames"].as_u64().expect("total_frames");
    assert_eq!(total, a_counted + b_counted, "{v}");
    assert!(
        total <= total_sent,
        "nothing counted twice: {total} > {total_sent}"
    );
    assert!(total + unflushed_bound >= total_sent);
    for i in 0..AGENTS {
        let v: Value = reqwest::get(format!("{}/v1/usage?agent={}", b.http, agent_id(i)))
            .await
            .expect("GET /v1/usage?agent")
            .json()
            .await
            .expect("json");
        let n = v["total_frames"].as_u64().expect("total_frames");
        assert!(
            n <= FRAMES,
            "{}: {n} frames counted of {FRAMES}",
            agent_id(i)
        );
    }
    let csv = reqwest::get(format!("{}/v1/usage?from=0&format=csv", b.http))
        .await
        .expect("csv")
        .text()
        .await
        .expect("body");
    let csv_frames: u64 = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(2)?.parse::<u64>().ok())
        .sum();
    assert_eq!(csv_frames, total, "CSV and JSON agree");
    println!(
        "usage after SIGKILL: sent {total_sent}, acked by A {acked_by_a} (counted {a_counted}, \
         missing {missing}, bound {unflushed_bound}), by B {b_counted}; total {total}"
    );
    drop(b);
}
