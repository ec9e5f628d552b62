//! Scenario `commands` (issue 21): N agents take commands; commands are submitted through a
//! relay's HTTP API at a fixed rate to random agents; the report gives submit → agent accepted and
//! submit → result stored (from the queue's own timestamps), the API's submit round trip, and
//! relay CPU per command.
//!
//! The agents share a few UDP sockets ([`SharedEndpoint`]) and connect with bounded
//! concurrency, as the telemetry scenarios' do; each is still its own QUIC connection, TLS
//! handshake and session, with its own command ledger. `rate = 0` connects them and submits
//! nothing: the A side of an A/B against telemetry running beside it in another process
//! (`benches/scripts/commands-bench.sh`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use contrail_protocol::client::commands::{CommandOptions, Commands, Outcome, OutputKind};
use contrail_protocol::client::{Agent, ClientConfig, SharedEndpoint, Trust};
use contrail_protocol::AgentId;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Settings of the scenario.
pub struct Opts {
    pub relays: Vec<SocketAddr>,
    pub trust: Trust,
    pub server_name: String,
    pub token: String,
    pub agents: usize,
    /// Commands per second (0: connect the agents and submit nothing).
    pub rate: f64,
    pub duration: Duration,
    pub api: String,
    pub api_token: String,
    pub relay_pids: Vec<u32>,
    pub json: Option<PathBuf>,
    /// Connects in flight at once.
    pub connect_concurrency: usize,
    /// UDP sockets the agents share.
    pub sockets: usize,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures are valid"))
    })
}

/// Percentiles of a histogram of milliseconds.
pub fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_ms": h.value_at_quantile(0.5),
        "p90_ms": h.value_at_quantile(0.9),
        "p99_ms": h.value_at_quantile(0.99),
        "max_ms": h.max(),
    })
}

/// The queue's timestamps of one finished command, ms since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamps {
    /// Submit accepted by the API.
    pub created: u64,
    /// The agent accepted it.
    pub accepted: u64,
    /// Its result was stored.
    pub finished: u64,
}

/// The stamps of a `GET /v1/commands/{id}` answer once the command succeeded; `None` while it
/// has not (or the answer is not a command).
pub fn succeeded_stamps(v: &Value) -> Option<Stamps> {
    if v["status"] != "succeeded" {
        return None;
    }
    let created = v["created_unix_ms"].as_u64()?;
    Some(Stamps {
        created,
        accepted: v["accepted_unix_ms"].as_u64().unwrap_or(created),
        finished: v["finished_unix_ms"].as_u64().unwrap_or(created),
    })
}

/// Connects agent `i` with its command stream and runs its handler (echo the payload as
/// output, then succeed) until the stream ends.
async fn connect_one(
    o: &Opts,
    ep: &SharedEndpoint,
    prefix: &str,
    state: &std::path::Path,
    i: usize,
) -> anyhow::Result<(Agent, Commands)> {
    let mut cfg = ClientConfig::new(
        o.relays[i % o.relays.len()],
        AgentId::new(format!("{prefix}-{i}"))?,
        o.trust.clone(),
    );
    cfg.relays = o.relays.clone();
    cfg.server_name = o.server_name.clone();
    cfg.auth_token = o.token.clone();
    cfg.platform = "contrail-loadgen".into();
    Agent::connect_shared_with_commands(cfg, ep, CommandOptions::new(state.join(i.to_string())))
        .await
        .with_context(|| format!("agent {i} connects"))
}

/// Runs the scenario; true when every command succeeded.
pub async fn run(o: Opts) -> anyhow::Result<bool> {
    let state =
        std::env::temp_dir().join(format!("contrail-loadgen-commands-{}", std::process::id()));
    let prefix = format!("cmd{:08x}", rand::random::<u32>());
    let endpoints = crate::contrail::Target::bind_endpoints(
        &o.relays,
        &o.trust,
        o.sockets.max(1),
        crate::contrail::EndpointOptions::default(),
    )?;
    let o = Arc::new(o);
    let gate = Arc::new(tokio::sync::Semaphore::new(o.connect_concurrency.max(1)));
    let executed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut connecting = tokio::task::JoinSet::new();
    for i in 0..o.agents {
        let (o, ep, gate, prefix, state) = (
            o.clone(),
            endpoints[i % endpoints.len()].clone(),
            gate.clone(),
            prefix.clone(),
            state.clone(),
        );
        connecting.spawn(async move {
            let _permit = gate.acquire().await.ok()?;
            connect_one(&o, &ep, &prefix, &state, i)
                .await
                .map_err(|e| tracing::warn!("{e:#}"))
                .ok()
        });
    }
    let mut agents = Vec::with_capacity(o.agents);
    let mut handlers = tokio::task::JoinSet::new();
    let mut connect_failures = 0u64;
    while let Some(r) = connecting.join_next().await {
        let Some((agent, mut commands)) = r.ok().flatten() else {
            connect_failures += 1;
            continue;
        };
        agents.push(agent);
        let executed = executed.clone();
        handlers.spawn(async move {
            while let Some(c) = commands.next().await {
                let mut h = c.handle;
                let _ = h.output(OutputKind::Stdout, &c.payload).await;
                if h.finish(Outcome::succeeded(0)).await.is_ok() {
                    executed.fetch_add(1, Relaxed);
                }
            }
        });
    }
    let connect_s = started.elapsed().as_secs_f64();
    eprintln!(
        "{} agents connected in {connect_s:.1}s ({connect_failures} failed); submitting {}/s for {:?}",
        agents.len(),
        o.rate,
        o.duration
    );
    let http = reqwest::Client::new();
    let cpu_before: Vec<Option<u64>> = o
        .relay_pids
        .iter()
        .map(|p| crate::procfs::cpu_ns(*p))
        .collect();
    let window = Instant::now();
    let mut submits = tokio::task::JoinSet::new();
    let mut n = 0u64;
    if o.rate > 0.0 {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = Instant::now() + o.duration;
        while Instant::now() < end {
            tick.tick().await;
            n += 1;
            let drone = format!("{prefix}-{}", rand::random_range(0..o.agents));
            let url = format!("{}/v1/drones/{drone}/commands", o.api);
            let req = http
                .post(url)
                .bearer_auth(&o.api_token)
                .json(&json!({"type": "bench", "payload": {"n": n}, "timeout_ms": 60_000}));
            submits.spawn(async move {
                let t0 = Instant::now();
                let resp = req.send().await.ok()?;
                let v: Value = resp.json().await.ok()?;
                let rtt = t0.elapsed().as_millis() as u64;
                v["id"].as_str().map(|id| (id.to_owned(), rtt))
            });
        }
    } else {
        tokio::time::sleep(o.duration).await;
    }
    let submit_window_s = window.elapsed().as_secs_f64();
    let mut ids = Vec::new();
    let mut submit_rtt = hist();
    let mut errors = 0u64;
    while let Some(r) = submits.join_next().await {
        match r.ok().flatten() {
            Some((id, rtt)) => {
                let _ = submit_rtt.record(rtt.max(1));
                ids.push(id);
            }
            None => errors += 1,
        }
    }
    // Relay CPU over the submit window (and the tail of the last commands).
    let cpu_ns: u64 = o
        .relay_pids
        .iter()
        .zip(cpu_before)
        .filter_map(|(p, b)| Some(crate::procfs::cpu_ns(*p)?.saturating_sub(b?)))
        .sum();
    // Collect the queue's timestamps once every command finished (bounded wait).
    let mut accepted = hist();
    let mut finished = hist();
    let mut not_done = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        loop {
            let v: Value = http
                .get(format!("{}/v1/commands/{id}", o.api))
                .bearer_auth(&o.api_token)
                .send()
                .await?
                .json()
                .await?;
            if let Some(s) = succeeded_stamps(&v) {
                let _ = accepted.record(s.accepted.saturating_sub(s.created).max(1));
                let _ = finished.record(s.finished.saturating_sub(s.created).max(1));
                break;
            }
            if Instant::now() >= deadline {
                not_done += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let report = json!({
        "scenario": "commands",
        "agents": o.agents,
        "agents_connected": agents.len(),
        "connect_s": connect_s,
        "rate_per_s": o.rate,
        "duration_s": submit_window_s,
        "submitted": ids.len(),
        "submit_errors": errors,
        "executed_by_agents": executed.load(Relaxed),
        "not_finished": not_done,
        "submit_http_rtt": summary(&submit_rtt),
        "submit_to_accepted": summary(&accepted),
        "submit_to_result": summary(&finished),
        "relay_cpu_cores": if o.relay_pids.is_empty() {
            Value::Null
        } else {
            json!(cpu_ns as f64 / 1e9 / submit_window_s)
        },
        "relay_cpu_us_per_command": if ids.is_empty() || o.relay_pids.is_empty() {
            Value::Null
        } else {
            json!(cpu_ns as f64 / 1000.0 / ids.len() as f64)
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for a in agents {
        let _ = tokio::time::timeout(Duration::from_secs(2), a.close()).await;
    }
    handlers.abort_all();
    let _ = std::fs::remove_dir_all(&state);
    Ok(errors == 0 && not_done == 0 && connect_failures == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_succeeded_command_gives_stamps() {
        let v = json!({"status": "succeeded", "created_unix_ms": 100,
            "accepted_unix_ms": 112, "finished_unix_ms": 130});
        assert_eq!(
            succeeded_stamps(&v),
            Some(Stamps {
                created: 100,
                accepted: 112,
                finished: 130
            })
        );
        assert_eq!(succeeded_stamps(&json!({"status": "running"})), None);
        assert_eq!(succeeded_stamps(&json!({"status": "succeeded"})), None);
    }
}
