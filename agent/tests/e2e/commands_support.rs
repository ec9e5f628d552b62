//! Helpers of the contrail-agent command tests: a relay with the command API (memory store),
//! an HTTP client for it, agents taking commands, and process lookups.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use contrail_agent::RunningAgent;
use contrail_testsupport::poll_until_async;
use serde_json::{json, Value};

use crate::common::*;

pub const OPERATOR: &str = "operator-token-1";

pub fn relay_commands_toml() -> String {
    format!(
        "[commands]\nsweep_interval_ms = 100\n\
         [[commands.tokens]]\nname = \"ops\"\nrole = \"operator\"\ntoken = \"{OPERATOR}\"\n"
    )
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(rig: &Rig) -> Api {
        Api {
            base: format!("http://{}", rig.relay.http_addr().expect("relay http")),
            http: reqwest::Client::new(),
        }
    }

    /// Submits; returns the command id.
    pub async fn submit(&self, drone: &str, kind: &str, payload: Value) -> String {
        let resp = self
            .http
            .post(format!("{}/v1/drones/{drone}/commands", self.base))
            .bearer_auth(OPERATOR)
            .json(&json!({"type": kind, "payload": payload, "timeout_ms": 60_000}))
            .send()
            .await
            .expect("submit");
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.expect("json");
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().expect("id").to_owned()
    }

    pub async fn get(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/v1/commands/{id}", self.base))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    /// Waits until the command is final (and its output, which travels on its own stream, has
    /// no gap); returns its view.
    pub async fn done(&self, id: &str) -> Value {
        poll_until_async(Duration::from_secs(20), "command final", || async {
            let v = self.get(id).await;
            let fin = matches!(
                v["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled" | "expired")
            );
            (fin && v["output"]["gap"] != true).then_some(v)
        })
        .await
    }

    /// Submits and waits.
    pub async fn run(&self, drone: &str, kind: &str, payload: Value) -> Value {
        let id = self.submit(drone, kind, payload).await;
        self.done(&id).await
    }
}

pub fn message(v: &Value) -> String {
    v["exit"]["message"].as_str().unwrap_or_default().to_owned()
}

/// Starts contrail-agent with `[commands]` (`commands` appended), one `udpout:` source at
/// `vehicle`, and waits until the relay has its session.
pub async fn agent(rig: &Rig, id: &str, vehicle: SocketAddr, commands: &str) -> RunningAgent {
    let spool = rig.dir.path().join(format!("spool-{id}"));
    let url = format!("udpout:{vehicle}");
    let toml = rig.agent_toml(id, &[url.as_str()], &spool, commands);
    let a = rig.agent(&toml).await;
    wait_registered(rig, id).await;
    a
}

/// Waits until the relay has agent `id`'s session.
pub async fn wait_registered(rig: &Rig, id: &str) {
    let relay_http = rig.relay.http_addr().expect("relay http");
    poll_until_async(Duration::from_secs(15), "agent registered", || async {
        let Ok(r) = reqwest::get(format!("http://{relay_http}/v1/drones/{id}")).await else {
            return false;
        };
        r.status().is_success()
    })
    .await;
}

/// Pids of the live processes whose command line (argv joined by spaces) contains `needle`.
pub fn pids_of(needle: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // Zombies (state Z) are gone for our purpose.
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            (text.contains(needle) && !zombie).then_some(pid)
        })
        .collect()
}

/// Whether a process whose command line contains `needle` is alive.
pub fn process_alive(needle: &str) -> bool {
    !pids_of(needle).is_empty()
}
