//! Scenario `commands` (issue 21): N agents take commands; commands are submitted through a
//! relay's HTTP API at a fixed rate to random agents; the report gives submit → agent accepted and
//! submit → result stored (from the queue's own timestamps), and relay CPU per command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use contrail_protocol::client::commands::{CommandOptions, Outcome, OutputKind};
use contrail_protocol::client::{Agent, ClientConfig, Trust};
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
    pub rate: f64,
    pub duration: Duration,
    pub api: String,
    pub api_token: String,
    pub relay_pids: Vec<u32>,
    pub json: Option<PathBuf>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures are valid"))
    })
}

fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_ms": h.value_at_quantile(0.5),
        "p90_ms": h.value_at_quantile(0.9),
        "p99_ms": h.value_at_quantile(0.99),
        "max_ms": h.max(),
    })
}

/// Runs the scenario; true when every command succeeded.
pub async fn run(o: Opts) -> anyhow::Result<bool> {
    let state =
        std::env::temp_dir().join(format!("contrail-loadgen-commands-{}", std::process::id()));
    let prefix = format!("cmd{:08x}", rand::random::<u32>());
    let mut agents = Vec::with_capacity(o.agents);
    let mut handlers = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..o.agents {
        let mut cfg = ClientConfig::new(
            o.relays[i % o.relays.len()],
            AgentId::new(format!("{prefix}-{i}"))?,
            o.trust.clone(),
        );
        cfg.server_name = o.server_name.clone();
        cfg.auth_token = o.token.clone();
        let (agent, mut commands) =
            Agent::connect_with_commands(cfg, CommandOptions::new(state.join(i.to_string())))
                .await
                .with_context(|| format!("agent {i} connects"))?;
        agents.push(agent);
        handlers.spawn(async move {
            while let Some(c) = commands.next().await {
                let mut h = c.handle;
                let _ = h.output(OutputKind::Stdout, &c.payload).await;
                let _ = h.finish(Outcome::succeeded(0)).await;
            }
        });
    }
    eprintln!(
        "{} agents connected in {:.1}s; submitting {}/s for {:?}",
        o.agents,
        started.elapsed().as_secs_f64(),
        o.rate,
        o.duration
    );
    let http = reqwest::Client::new();
    let cpu_before: Vec<Option<u64>> = o
        .relay_pids
        .iter()
        .map(|p| crate::procfs::cpu_ns(*p))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate.max(0.1)));
    let end = Instant::now() + o.duration;
    let mut submits = tokio::task::JoinSet::new();
    let mut n = 0u64;
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
            let resp = req.send().await.ok()?;
            let v: Value = resp.json().await.ok()?;
            v["id"].as_str().map(str::to_owned)
        });
    }
    let mut ids = Vec::new();
    let mut errors = 0u64;
    while let Some(r) = submits.join_next().await {
        match r.ok().flatten() {
            Some(id) => ids.push(id),
            None => errors += 1,
        }
    }
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
            let created = v["created_unix_ms"].as_u64().unwrap_or(0);
            if v["status"] == "succeeded" {
                let a = v["accepted_unix_ms"].as_u64().unwrap_or(created);
                let f = v["finished_unix_ms"].as_u64().unwrap_or(created);
                let _ = accepted.record(a.saturating_sub(created).max(1));
                let _ = finished.record(f.saturating_sub(created).max(1));
                break;
            }
            if Instant::now() >= deadline {
                not_done += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let cpu_ns: u64 = o
        .relay_pids
        .iter()
        .zip(cpu_before)
        .filter_map(|(p, b)| Some(crate::procfs::cpu_ns(*p)?.saturating_sub(b?)))
        .sum();
    let report = json!({
        "scenario": "commands",
        "agents": o.agents,
        "rate_per_s": o.rate,
        "duration_s": o.duration.as_secs_f64(),
        "submitted": ids.len(),
        "submit_errors": errors,
        "not_finished": not_done,
        "submit_to_accepted": summary(&accepted),
        "submit_to_result": summary(&finished),
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
        let _ = a.close().await;
    }
    handlers.abort_all();
    let _ = std::fs::remove_dir_all(&state);
    Ok(errors == 0 && not_done == 0)
}
