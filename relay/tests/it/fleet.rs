//! Multi-relay fleet (issue 7, item 7): three `contrail-relay` processes on loopback share one
//! Redis (routing directory) and one NATS JetStream (required sink, same stream and subject
//! template); 300 agents are spread over them; one relay is killed with SIGKILL mid-stream; its
//! agents reconnect to the two survivors and resend what was not acked.
//!
//! What is checked once every agent flushed all its frames:
//!
//! 1. **Routing.** For every drone, Redis `drone:{id}` names one of the two *live* relays and the
//!    session the agent holds right now (`Agent::session()`), and exactly one live relay lists the
//!    drone in `GET /v1/drones` (with that same session).
//! 2. **Output.** A pull consumer over the whole JetStream stream reads every frame of every agent
//!    exactly once (decoded `StoredFrame`: agent id + seq; headers agree; payload as sent), in
//!    `seq` order per agent, and the stream holds nothing else. Frames the killed relay had
//!    already stored in JetStream but not yet acked are resent by their agents through another
//!    relay; JetStream drops those republished copies by `Nats-Msg-Id = {agent}:{seq}` (its
//!    duplicate window), which is what keeps the stream exactly once. How many such frames the run
//!    produced is printed (`stored via the killed relay but unacked`).

use crate::faults_support::{log_tail, spawn_reporting};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contrail_protocol::client::{Agent, ClientConfig, OutFrame, Trust};
use contrail_protocol::AgentId;
use contrail_testsupport::{NatsServer, ProcessGuard, RedisServer};
use futures::StreamExt;

const RELAY_IDS: [&str; 3] = ["fleet-a", "fleet-b", "fleet-c"];
/// The relay that is killed (index into `RELAY_IDS`).
const VICTIM: usize = 0;
const AGENTS: usize = 300;
/// Frames per agent.
const FRAMES: u64 = 40;
/// No agent sends beyond this seq before the kill (so every agent still has frames to send after).
const HOLD_AT: u64 = 20;
/// The kill happens once every agent has at least this many frames acked.
const ACKED_BEFORE_KILL: u64 = 5;
/// One frame per agent every `PACE` (300 agents: 6,000 frames/s over the fleet).
const PACE: Duration = Duration::from_millis(50);
const STREAM: &str = "CONTRAIL_FLEET";
const SUBJECT_PREFIX: &str = "contrail.fleet";

fn agent_id(i: usize) -> String {
    format!("fleet-drone-{i:03}")
}

/// Payload of frame `seq` of agent `i` (unique per agent and seq, 32 bytes).
fn payload_for(i: usize, seq: u64) -> Vec<u8> {
    let mut p = format!("{}/{seq}/", agent_id(i)).into_bytes();
    p.resize(32, b'.');
    p
}

/// The relay list of agent `i`: a different relay first for each agent (round robin), the other
/// two in alternating order, so the victim's agents spread over both survivors.
fn relay_order(i: usize) -> [usize; 3] {
    let first = i % 3;
    let (x, y) = ((first + 1) % 3, (first + 2) % 3);
    if (i / 3).is_multiple_of(2) {
        [first, x, y]
    } else {
        [first, y, x]
    }
}

struct ChildRelay {
    process: ProcessGuard,
    id: &'static str,
    addr: SocketAddr,
    http: String,
    cert: PathBuf,
    log: PathBuf,
}

/// Starts `contrail-relay` (the real binary) with a required JetStream sink, Redis routing and the
/// shared development certificate directory; reads its addresses from stdout.
fn spawn_relay(
    dir: &Path,
    certs: &Path,
    id: &'static str,
    redis: SocketAddr,
    nats_url: &str,
) -> ChildRelay {
    let own = dir.join(id);
    std::fs::create_dir_all(&own).expect("relay dir");
    let config = own.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nhandshake_timeout_ms = 10000\n\
             [[sinks]]\nname = \"jetstream\"\ntype = \"nats_jetstream\"\nrequired = true\n\
             url = \"{nats_url}\"\nsubject = \"{SUBJECT_PREFIX}.{{agent_id}}\"\nstream = \"{STREAM}\"\n\
             timeout_ms = 5000\n"
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
        .args(["--relay-id", id, "--redis-addr", &redis.to_string()])
        .args(["--log", "info"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("relay log file"));
    let r = spawn_reporting(id, &mut cmd, &log, Duration::from_secs(60));
    ChildRelay {
        process: r.process,
        id,
        addr: r.addr,
        http: r.http,
        cert: r.cert,
        log,
    }
}

/// `relay_id` and `session_id` of every drone's routing key (None: key missing or unreadable).
fn routes(redis: &RedisServer) -> Vec<Option<(String, String)>> {
    let keys: Vec<String> = (0..AGENTS)
        .map(|i| format!("drone:{}", agent_id(i)))
        .collect();
    let mut args = vec!["MGET"];
    args.extend(keys.iter().map(String::as_str));
    let Ok(values) = redis.try_cmd::<Vec<Option<String>>>(&args) else {
        return vec![None; AGENTS];
    };
    values
        .iter()
        .map(|v| {
            let json: serde_json::Value = serde_json::from_str(v.as_deref()?).ok()?;
            Some((
                json["relay_id"].as_str()?.to_string(),
                json["session_id"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// `agent_id -> session_id` of every drone a relay lists in `GET /v1/drones`.
async fn listed(http: &str) -> Option<HashMap<String, String>> {
    let v: serde_json::Value = reqwest::get(format!("{http}/v1/drones?limit=1000"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    assert!(v["total"].as_u64()? <= 1000, "more than one page of drones");
    v["drones"]
        .as_array()?
        .iter()
        .map(|d| {
            Some((
                d["agent_id"].as_str()?.to_string(),
                d["session_id"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Problems with the routing picture right now (empty: every drone on exactly one live relay,
/// Redis and the relays' own session lists agreeing with the agent's current session).
async fn routing_problems(
    redis: &RedisServer,
    agents: &[Arc<Agent>],
    survivors: &[&ChildRelay],
) -> Vec<String> {
    let mut problems = Vec::new();
    let live: HashSet<&str> = survivors.iter().map(|r| r.id).collect();
    let redis_routes = tokio::task::block_in_place(|| routes(redis));
    let mut lists = Vec::new();
    for r in survivors {
        match listed(&r.http).await {
            Some(l) => lists.push((r.id, l)),
            None => problems.push(format!("{}: /v1/drones unreadable", r.id)),
        }
    }
    for (i, agent) in agents.iter().enumerate() {
        let id = agent_id(i);
        let Some(session) = agent.session() else {
            problems.push(format!("{id}: agent not connected"));
            continue;
        };
        match &redis_routes[i] {
            None => problems.push(format!("{id}: no routing key")),
            Some((relay, sid)) => {
                if !live.contains(relay.as_str()) {
                    problems.push(format!("{id}: routing key names {relay}, not a live relay"));
                } else if *sid != session.session_id || *relay != session.relay_id {
                    problems.push(format!(
                        "{id}: routing key {relay}/{sid}, agent holds {}/{}",
                        session.relay_id, session.session_id
                    ));
                }
            }
        }
        let holders: Vec<(&str, &String)> = lists
            .iter()
            .filter_map(|(relay, l)| l.get(&id).map(|sid| (*relay, sid)))
            .collect();
        if holders.len() != 1
            || holders[0].0 != session.relay_id
            || *holders[0].1 != session.session_id
        {
            problems.push(format!(
                "{id}: listed by {holders:?}, agent holds {}/{}",
                session.relay_id, session.session_id
            ));
        }
    }
    problems
}

/// One stored frame as read from JetStream.
struct Stored {
    agent: String,
    seq: u64,
    session_id: String,
}

fn decode(msg: &async_nats::Message) -> Stored {
    use prost::Message as _;
    let stored = contrail_protocol::proto::StoredFrame::decode(msg.payload.as_ref())
        .expect("payload is a StoredFrame");
    let frame = stored.frame.expect("frame present");
    let headers = msg.headers.as_ref().expect("headers");
    let msg_id = headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_string())
        .expect("Nats-Msg-Id header");
    assert_eq!(msg_id, format!("{}:{}", stored.agent_id, frame.seq));
    assert_eq!(
        msg.subject.as_str(),
        format!("{SUBJECT_PREFIX}.{}", stored.agent_id)
    );
    let i: usize = stored
        .agent_id
        .strip_prefix("fleet-drone-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected agent {}", stored.agent_id));
    assert_eq!(
        frame.payload.as_ref(),
        payload_for(i, frame.seq).as_slice(),
        "{msg_id}: payload as sent"
    );
    assert_eq!(frame.device_time, frame.seq, "{msg_id}: device_time");
    Stored {
        agent: stored.agent_id,
        seq: frame.seq,
        session_id: stored.session_id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_one_killed_routing_moves_and_jetstream_holds_every_frame_once() {
    let started = Instant::now();
    let redis = tokio::task::block_in_place(RedisServer::start);
    let nats = tokio::task::block_in_place(NatsServer::start);
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    // A first: it generates the development certificate; B and C start after it exists and
    // load the same one, so agents trust one certificate for the whole fleet.
    let mut relays: Vec<ChildRelay> = Vec::new();
    for id in RELAY_IDS {
        let r = tokio::task::block_in_place(|| {
            spawn_relay(dir.path(), &certs, id, redis.addr(), &nats.url())
        });
        relays.push(r);
    }
    let cert = relays[0].cert.clone();
    assert!(
        relays.iter().all(|r| r.cert == cert),
        "all relays serve the shared certificate"
    );
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    let relays_up = started.elapsed();

    // 300 agents, a different relay first in each one's list.
    let connecting = futures::stream::iter(0..AGENTS)
        .map(|i| {
            let mut c = ClientConfig::new(
                addrs[relay_order(i)[0]],
                AgentId::new(agent_id(i)).expect("agent id"),
                Trust::CaFile(cert.clone()),
            );
            c.relays = relay_order(i).iter().map(|&r| addrs[r]).collect();
            c.idle_timeout = Duration::from_millis(3_000);
            c.connect_timeout = Duration::from_millis(5_000);
            c.reconnect_min = Duration::from_millis(100);
            c.reconnect_max = Duration::from_millis(1_000);
            async move {
                Agent::connect(c)
                    .await
                    .unwrap_or_else(|e| panic!("{} connects: {e}", agent_id(i)))
            }
        })
        .buffered(32);
    let agents: Vec<Arc<Agent>> = connecting.map(Arc::new).collect().await;
    let connected = started.elapsed();

    let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
    let senders: Vec<_> = agents
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, agent)| {
            let mut killed = killed_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PACE);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for seq in 1..=FRAMES {
                    if seq == HOLD_AT + 1 {
                        killed.wait_for(|k| *k).await.expect("kill signal");
                    }
                    tick.tick().await;
                    let payload = payload_for(i, seq);
                    let sent = agent
                        .send(&OutFrame {
                            kind: 33,
                            flight_id: "fleet",
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

    // Every agent has frames acked; then SIGKILL the victim.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    while !agents.iter().all(|a| a.acked_seq() >= ACKED_BEFORE_KILL) {
        let behind = agents
            .iter()
            .filter(|a| a.acked_seq() < ACKED_BEFORE_KILL)
            .count();
        assert!(
            Instant::now() < deadline,
            "{behind} agents still have fewer than {ACKED_BEFORE_KILL} frames acked"
        );
        poll.tick().await;
    }
    let victim_id = relays[VICTIM].id;
    let mut per_relay_before: BTreeMap<String, usize> = BTreeMap::new();
    let mut on_victim: HashMap<usize, String> = HashMap::new();
    for (i, a) in agents.iter().enumerate() {
        let s = a.session().expect("connected before the kill");
        if s.relay_id == victim_id {
            on_victim.insert(i, s.session_id.clone());
        }
        *per_relay_before.entry(s.relay_id).or_default() += 1;
    }
    for id in RELAY_IDS {
        let n = per_relay_before.get(id).copied().unwrap_or(0);
        assert!(
            n >= AGENTS / 6,
            "agents spread over the three relays: {per_relay_before:?}"
        );
    }
    tokio::task::block_in_place(|| relays[VICTIM].process.kill_hard());
    let killed_at = started.elapsed();
    let acked_at_kill: Vec<u64> = agents.iter().map(|a| a.acked_seq()).collect();
    let sent_at_kill: Vec<u64> = agents.iter().map(|a| a.last_seq()).collect();
    killed_tx.send(true).expect("senders listen");

    for s in senders {
        tokio::time::timeout(Duration::from_secs(90), s)
            .await
            .expect("every agent finishes and flushes")
            .expect("sender task");
    }
    let flushed = started.elapsed();

    let survivors: Vec<&ChildRelay> = relays
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != VICTIM)
        .map(|(_, r)| r)
        .collect();
    let mut per_relay_after: BTreeMap<String, usize> = BTreeMap::new();
    for (i, a) in agents.iter().enumerate() {
        assert_eq!(a.acked_seq(), FRAMES, "{}: every frame acked", agent_id(i));
        let s = a.session().expect("connected after the flush");
        assert_ne!(s.relay_id, victim_id, "{}: on a live relay", agent_id(i));
        *per_relay_after.entry(s.relay_id).or_default() += 1;
    }

    // (1) Routing: every drone on exactly one live relay, naming its current session.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        let problems = routing_problems(&redis, &agents, &survivors).await;
        if problems.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = survivors
                .iter()
                .map(|r| format!("--- {} ---\n{}", r.id, log_tail(&r.log)))
                .collect();
            panic!(
                "routing never settled: {} problems, first {:?}\n{}",
                problems.len(),
                &problems[..problems.len().min(10)],
                logs.join("\n")
            );
        }
        poll.tick().await;
    }
    let routed = started.elapsed();

    // (2) JetStream: every frame of every agent exactly once, nothing else in the stream.
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let expected = AGENTS * FRAMES as usize;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let mut stream = js.get_stream(STREAM).await.expect("stream exists");
    let info = stream.info().await.expect("stream info").clone();
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("pull consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut stored = Vec::with_capacity(expected);
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    while (stored.len() as u64) < info.state.messages {
        match tokio::time::timeout_at(end, messages.next()).await {
            Ok(Some(Ok(m))) => stored.push(decode(&m)),
            Ok(Some(Err(e))) => panic!("pull consumer: {e}"),
            Ok(None) | Err(_) => panic!(
                "read {} of the {} messages the stream holds",
                stored.len(),
                info.state.messages
            ),
        }
    }
    let mut by_agent: BTreeMap<&str, Vec<&Stored>> = BTreeMap::new();
    for s in &stored {
        by_agent.entry(s.agent.as_str()).or_default().push(s);
    }
    let mut failures = Vec::new();
    for i in 0..AGENTS {
        let id = agent_id(i);
        let got: Vec<u64> = by_agent
            .get(id.as_str())
            .map(|v| v.iter().map(|s| s.seq).collect())
            .unwrap_or_default();
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        for &s in &got {
            *count.entry(s).or_default() += 1;
        }
        let dups: Vec<(u64, usize)> = count
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(s, n)| (*s, *n))
            .collect();
        let missing: Vec<u64> = (1..=FRAMES).filter(|s| !count.contains_key(s)).collect();
        let extra: Vec<u64> = count
            .keys()
            .copied()
            .filter(|s| *s == 0 || *s > FRAMES)
            .collect();
        if !dups.is_empty() || !missing.is_empty() || !extra.is_empty() {
            let first_on: Vec<String> = by_agent
                .get(id.as_str())
                .map(|v| {
                    v.iter()
                        .filter(|s| count[&s.seq] > 1)
                        .map(|s| format!("{}@{}", s.seq, s.session_id))
                        .collect()
                })
                .unwrap_or_default();
            failures.push(format!(
                "{id} (on victim: {}, acked at kill {}, sent at kill {}): duplicates {dups:?} \
                 (seq@session {first_on:?}), missing {missing:?}, unexpected {extra:?}",
                on_victim.get(&i).map_or("no", String::as_str),
                acked_at_kill[i],
                sent_at_kill[i],
            ));
        } else if !got.windows(2).all(|w| w[0] < w[1]) {
            failures.push(format!("{id}: stored out of seq order: {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "JetStream is not exactly once ({} agents wrong, stream holds {} of {expected}):\n{}",
        failures.len(),
        stored.len(),
        failures[..failures.len().min(20)].join("\n")
    );
    assert_eq!(
        by_agent.len(),
        AGENTS,
        "no agents other than the fleet's in the stream"
    );
    assert_eq!(
        stored.len(),
        expected,
        "stream holds exactly the fleet's frames"
    );
    let after = stream.info().await.expect("stream info").state.messages;
    assert_eq!(after, expected as u64, "nothing arrived after the read");
    let checked = started.elapsed();

    // What the kill did: frames the victim had stored in JetStream without the agent seeing the
    // ack were resent through a survivor and dropped by JetStream's Nats-Msg-Id dedup.
    let mut stored_unacked_by_victim = 0usize;
    for s in &stored {
        let i: usize = s.agent["fleet-drone-".len()..].parse().expect("index");
        if on_victim.get(&i) == Some(&s.session_id) && s.seq > acked_at_kill[i] {
            stored_unacked_by_victim += 1;
        }
    }
    let resent: u64 = agents.iter().map(|a| a.stats().resent).sum();
    let reconnects: u64 = agents.iter().map(|a| a.stats().reconnects).sum();
    let moved = on_victim.len();
    let unacked_at_kill: u64 = on_victim
        .keys()
        .map(|&i| sent_at_kill[i] - acked_at_kill[i])
        .sum();
    eprintln!(
        "fleet: {AGENTS} agents x {FRAMES} frames over {:?}; killed {victim_id} (SIGKILL) with {moved} agents on it\n  \
         agents per relay before {per_relay_before:?}, after {per_relay_after:?}\n  \
         victim's agents had {unacked_at_kill} frames sent and unacked at the kill; agents resent {resent} frames in all \
         ({reconnects} reconnects); {stored_unacked_by_victim} frames were stored via the killed relay but unacked \
         (their resends were dropped by the JetStream duplicate window of {:?})\n  \
         timings: relays up {relays_up:?}, agents connected {connected:?}, kill {killed_at:?}, all flushed {flushed:?}, \
         routing settled {routed:?}, JetStream checked {checked:?}",
        RELAY_IDS,
        info.config.duplicate_window,
    );
}
