//! Placement across relays (issue 23, docs/placement.md), with real `contrail-relay` processes
//! and a real redis-server holding the `relay:{id}` registry:
//!
//! * a relay at its soft limit redirects new agents (configured with that relay only) to the
//!   two others, which end within ±20% of each other;
//! * two relays that each think the other is better (planted registry records) cannot bounce an
//!   agent: it is redirected at most once and then placed.

use crate::faults_support::spawn_reporting;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use contrail_protocol::client::{Agent, ClientConfig, Trust};
use contrail_protocol::AgentId;
use contrail_testsupport::{poll_until_async, ProcessGuard, RedisServer};
use futures::StreamExt;

struct Child {
    process: ProcessGuard,
    addr: SocketAddr,
    http: String,
    cert: PathBuf,
}

fn spawn(dir: &Path, certs: &Path, id: &str, redis: SocketAddr, soft: usize) -> Child {
    spawn_with(dir, certs, id, redis, soft, "")
}

/// `extra`: more config (e.g. a file sink).
fn spawn_with(
    dir: &Path,
    certs: &Path,
    id: &str,
    redis: SocketAddr,
    soft: usize,
    extra: &str,
) -> Child {
    let own = dir.join(id);
    std::fs::create_dir_all(&own).expect("relay dir");
    let config = own.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nsoft_max_sessions = {soft}\nhandshake_timeout_ms = 10000\n\
             [drain]\nreconnect_after_ms = 0\n{extra}"
        ),
    )
    .expect("config");
    let log = own.join("relay.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_contrail-relay"));
    cmd.env_clear()
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--dev-cert-dir")
        .arg(certs)
        .args(["--relay-id", id, "--redis-addr", &redis.to_string()])
        .args(["--log", "info"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"));
    let r = spawn_reporting(id, &mut cmd, &log, Duration::from_secs(60));
    Child {
        process: r.process,
        addr: r.addr,
        http: r.http,
        cert: r.cert,
    }
}

/// Waits until Redis holds a `ready` record for every id.
async fn registry_ready(redis: &RedisServer, ids: &[&str]) {
    poll_until_async(
        Duration::from_secs(30),
        "every relay publishes a ready record",
        async || {
            ids.iter().all(|id| {
                let key = format!("relay:{id}");
                tokio::task::block_in_place(|| redis.try_cmd::<Option<String>>(&["GET", &key]))
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.contains("\"state\":\"ready\""))
            })
        },
    )
    .await;
}

fn client(addr: SocketAddr, id: String, cert: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(
        addr,
        AgentId::new(id).expect("agent id"),
        Trust::CaFile(cert.to_path_buf()),
    );
    c.connect_timeout = Duration::from_secs(5);
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(500);
    c
}

/// `contrail_redirects_total` summed over reasons, from a relay's `/metrics`.
async fn redirects(http: &str) -> u64 {
    let text = reqwest::get(format!("{http}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with("contrail_redirects_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_at_soft_limit_redirects_new_agents_and_the_others_balance() {
    const SOFT: usize = 10;
    const AGENTS: usize = 110;
    let redis = tokio::task::block_in_place(RedisServer::start);
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let ids = ["place-a", "place-b", "place-c"];
    let full =
        tokio::task::block_in_place(|| spawn(dir.path(), &certs, ids[0], redis.addr(), SOFT));
    let b = tokio::task::block_in_place(|| spawn(dir.path(), &certs, ids[1], redis.addr(), 0));
    let c = tokio::task::block_in_place(|| spawn(dir.path(), &certs, ids[2], redis.addr(), 0));
    registry_ready(&redis, &ids).await;
    let cert = full.cert.clone();
    // Every agent knows only relay A (one at a time, so A's count is exact).
    let agents: Vec<Arc<Agent>> = futures::stream::iter(0..AGENTS)
        .map(|i| {
            let c = client(full.addr, format!("place-drone-{i:03}"), &cert);
            async move { Arc::new(Agent::connect(c).await.expect("agent connects")) }
        })
        .buffered(1)
        .collect()
        .await;
    let mut on = [0usize; 3];
    for a in &agents {
        let s = a.session().expect("registered");
        let i = ids
            .iter()
            .position(|id| *id == s.relay_id)
            .expect("a known relay");
        on[i] += 1;
    }
    println!("sessions per relay: {on:?}");
    assert_eq!(on[0], SOFT, "A keeps exactly its soft limit");
    let (x, y) = (on[1] as f64, on[2] as f64);
    let mean = (x + y) / 2.0;
    assert!(
        (x - mean).abs() <= 0.2 * mean && (y - mean).abs() <= 0.2 * mean,
        "B and C within ±20%: {on:?}"
    );
    assert_eq!(redirects(&full.http).await, (AGENTS - SOFT) as u64);
    assert_eq!(redirects(&b.http).await + redirects(&c.http).await, 0);
    for a in agents {
        if let Ok(a) = Arc::try_unwrap(a) {
            let _ = a.close().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_that_each_think_the_other_is_better_cannot_bounce_an_agent() {
    let redis = tokio::task::block_in_place(RedisServer::start);
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let ids = ["loop-a", "loop-b"];
    let a = tokio::task::block_in_place(|| spawn(dir.path(), &certs, ids[0], redis.addr(), 1));
    let b = tokio::task::block_in_place(|| spawn(dir.path(), &certs, ids[1], redis.addr(), 1));
    registry_ready(&redis, &ids).await;
    let cert = a.cert.clone();
    // Fill both to their soft limit (1 each).
    let fa = Agent::connect(client(a.addr, "loop-fill-a".into(), &cert))
        .await
        .expect("fill a");
    let fb = Agent::connect(client(b.addr, "loop-fill-b".into(), &cert))
        .await
        .expect("fill b");
    assert_eq!(fa.session().expect("a").relay_id, "loop-a");
    assert_eq!(fb.session().expect("b").relay_id, "loop-b");
    // Planted records (a stale or lying view): each relay's address also appears as an empty
    // relay, so A believes B's address is better and B believes A's is.
    let now = contrail_relay::clock::unix_ms();
    for (ghost, addr) in [("ghost-a", a.addr), ("ghost-b", b.addr)] {
        let rec = serde_json::json!({
            "relay_id": ghost, "address": addr.to_string(), "sessions": 0,
            "soft_max_sessions": 1000, "max_sessions": 1000, "cpu_percent": 0.0,
            "state": "ready", "draining": false, "version": "t", "updated_unix_ms": now,
        })
        .to_string();
        let key = format!("relay:{ghost}");
        tokio::task::block_in_place(|| {
            redis.cmd::<()>(&["SET", &key, &rec]);
            // Readers list relays from the index, as a relay's publisher writes it.
            redis.cmd::<()>(&["ZADD", "contrail:relays", &now.to_string(), ghost]);
        });
    }
    // The relays' cached views expire within a second: wait until A redirects at all.
    let probe = Agent::connect(client(a.addr, "loop-drone".into(), &cert))
        .await
        .expect("the agent is placed");
    let first = probe.session().expect("registered").relay_id;
    let _ = probe.close().await;
    poll_until_async(Duration::from_secs(10), "A redirects", async || {
        let x = Agent::connect(client(a.addr, "loop-drone".into(), &cert))
            .await
            .expect("the agent is placed");
        let on = x.session().expect("registered").relay_id;
        let _ = x.close().await;
        on == "loop-b" || first == "loop-b"
    })
    .await;
    // Now the real check: an agent bounced A -> B is sent back to A by B, which it refuses to
    // follow; it re-registers with B without the capability and B places it.
    let (ra, rb) = (redirects(&a.http).await, redirects(&b.http).await);
    let agent = Agent::connect(client(a.addr, "loop-drone-2".into(), &cert))
        .await
        .expect("the agent is placed");
    assert_eq!(agent.session().expect("registered").relay_id, "loop-b");
    let (da, db) = (redirects(&a.http).await - ra, redirects(&b.http).await - rb);
    assert_eq!((da, db), (1, 1), "one redirect by each relay, then placed");
    let _ = agent.close().await;
    let _ = fa.close().await;
    let _ = fb.close().await;
}

fn file_sink(path: &Path) -> String {
    format!(
        "[[sinks]]\nname = \"file\"\ntype = \"file\"\nrequired = true\npath = \"{}\"\n",
        path.display()
    )
}

/// `(agent_id, seq)` of every frame in an NDJSON file sink.
fn frames_in(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            (
                v["agent_id"].as_str().expect("agent_id").to_string(),
                v["seq"].as_u64().expect("seq"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_relay_moves_all_its_agents_balanced_without_loss_or_duplicates() {
    const AGENTS: usize = 40;
    const FRAMES: u64 = 60;
    let redis = tokio::task::block_in_place(RedisServer::start);
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let ids = ["drain-a", "drain-b", "drain-c"];
    let files: Vec<PathBuf> = ids
        .iter()
        .map(|id| dir.path().join(format!("{id}.ndjson")))
        .collect();
    let mut relays: Vec<Child> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let extra = file_sink(&files[i]);
        relays.push(tokio::task::block_in_place(|| {
            spawn_with(dir.path(), &certs, id, redis.addr(), 0, &extra)
        }));
    }
    registry_ready(&redis, &ids).await;
    let cert = relays[0].cert.clone();
    // Every agent starts on A (the only relay it is configured with).
    let agents: Vec<Arc<Agent>> = futures::stream::iter(0..AGENTS)
        .map(|i| {
            let c = client(relays[0].addr, format!("drain-drone-{i:03}"), &cert);
            async move { Arc::new(Agent::connect(c).await.expect("agent connects")) }
        })
        .buffered(8)
        .collect()
        .await;
    let payload = [7u8; 64];
    let senders: Vec<_> = agents
        .iter()
        .cloned()
        .map(|a| {
            tokio::spawn(async move {
                // Paced at 50 Hz like a slow drone (a rate, not a wait for an event).
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                for _ in 0..FRAMES {
                    tick.tick().await;
                    a.send(&crate::common::frame(&payload)).await.expect("send");
                }
            })
        })
        .collect();
    poll_until_async(
        Duration::from_secs(30),
        "every agent has 10 frames acked",
        async || agents.iter().all(|a| a.acked_seq() >= 10),
    )
    .await;
    relays[0].process.terminate().expect("SIGTERM");
    for s in senders {
        s.await.expect("sender");
    }
    poll_until_async(Duration::from_secs(60), "every frame acked", async || {
        agents.iter().all(|a| a.acked_seq() >= FRAMES)
    })
    .await;
    let mut on = [0usize; 3];
    for a in &agents {
        let s = a.session().expect("registered after the drain");
        on[ids.iter().position(|id| *id == s.relay_id).expect("known")] += 1;
        assert!(a.stats().drains >= 1);
    }
    println!("sessions per relay after the drain: {on:?}");
    assert_eq!(on[0], 0, "all agents left the drained relay");
    let mean = (on[1] + on[2]) as f64 / 2.0;
    assert!(
        (on[1] as f64 - mean).abs() <= 0.2 * mean,
        "B and C within ±20%: {on:?}"
    );
    let a = relays.remove(0);
    let status = tokio::task::spawn_blocking(move || {
        let mut p = a.process;
        p.wait_exit(Duration::from_secs(20))
    })
    .await
    .expect("join")
    .expect("A exits after its drain");
    assert!(status.success(), "clean exit: {status:?}");
    // Every frame of every agent exactly once over the three files.
    poll_until_async(
        Duration::from_secs(20),
        "every frame in the files",
        async || {
            let all: Vec<(String, u64)> = files.iter().flat_map(|f| frames_in(f)).collect();
            all.len() >= AGENTS * FRAMES as usize
        },
    )
    .await;
    let mut all: Vec<(String, u64)> = files.iter().flat_map(|f| frames_in(f)).collect();
    all.sort();
    let mut expected: Vec<(String, u64)> = (0..AGENTS)
        .flat_map(|i| (1..=FRAMES).map(move |s| (format!("drain-drone-{i:03}"), s)))
        .collect();
    expected.sort();
    assert_eq!(all.len(), expected.len(), "no frame lost or duplicated");
    assert!(all == expected, "exactly the frames sent");
    for a in agents {
        if let Ok(a) = Arc::try_unwrap(a) {
            let _ = a.close().await;
        }
    }
}
