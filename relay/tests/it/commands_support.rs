//! Helpers of the command downlink tests: relays with a real PostgreSQL (and Redis), an HTTP
//! client for the command API, and an agent that runs allowlisted executables.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use contrail_control::commands::{ApiToken, Role};
use contrail_protocol::client::commands::{
    CommandOptions, Commands, IncomingCommand, Outcome, OutputKind,
};
use contrail_protocol::client::Agent;
use contrail_relay::{Config, Hooks};
use contrail_testsupport::poll_until_async;
use serde_json::{json, Value};

use crate::common::{start_with, test_config, TestRelay};

pub const OPERATOR: &str = "operator-token-1";
pub const VIEWER: &str = "viewer-token-1";

/// A relay config with the command API (an operator and a viewer token) and, when given, the
/// PostgreSQL queue and Redis routing.
pub fn config(dir: &Path, relay_id: &str, db: Option<&str>, redis: Option<&str>) -> Config {
    let mut c = test_config(dir);
    c.relay_id = Some(relay_id.into());
    c.commands.database_url = db.map(str::to_owned);
    c.commands.sweep_interval_ms = 100;
    c.commands.max_payload_bytes = 1024;
    c.commands.tokens = vec![
        ApiToken {
            name: "ops".into(),
            token: OPERATOR.into(),
            role: Role::Operator,
        },
        ApiToken {
            name: "watcher".into(),
            token: VIEWER.into(),
            role: Role::Viewer,
        },
    ];
    if let Some(r) = redis {
        c.redis.addr = Some(r.to_owned());
    }
    c
}

pub async fn relay(relay_id: &str, db: Option<&str>, redis: Option<&str>) -> TestRelay {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), relay_id, db, redis);
    start_with(c, dir, Vec::new(), Hooks::default()).await
}

/// An agent taking commands, its ledger in `state`.
pub async fn command_agent(relay: &TestRelay, id: &str, state: &Path) -> (Agent, Commands) {
    Agent::connect_with_commands(relay.client_config(id), CommandOptions::new(state))
        .await
        .expect("agent connects with commands")
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(relay: &TestRelay) -> Api {
        Api {
            base: relay.http(),
            http: reqwest::Client::new(),
        }
    }

    /// `POST /v1/drones/{drone}/commands` → (status, body).
    pub async fn submit(
        &self,
        token: &str,
        drone: &str,
        body: Value,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/drones/{drone}/commands", self.base))
            .bearer_auth(token)
            .json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.expect("submit request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("json body"))
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("get request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("json body"))
    }

    pub async fn post(&self, token: &str, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("post request");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("json body"))
    }

    pub async fn command(&self, id: &str) -> Value {
        let (status, v) = self.get(VIEWER, &format!("/v1/commands/{id}")).await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Waits until the command reaches `status`; returns its view.
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        poll_until_async(
            Duration::from_secs(15),
            &format!("command {status}"),
            || async {
                let v = self.command(id).await;
                (v["status"] == status).then_some(v)
            },
        )
        .await
    }
}

impl Api {
    /// Waits until the command's stdout reads `text` (output travels on its own stream and may
    /// trail the result by a moment).
    pub async fn wait_stdout(&self, id: &str, text: &str) -> Value {
        poll_until_async(
            Duration::from_secs(15),
            &format!("stdout {text:?}"),
            || async {
                let v = self.command(id).await;
                (v["output"]["stdout"] == text).then_some(v)
            },
        )
        .await
    }
}

/// Waits until the drone is in the queue's `drones` table (it registered with commands).
pub async fn wait_recorded(pg: &contrail_testsupport::PostgresServer, drone: &str) {
    poll_until_async(Duration::from_secs(10), "drone recorded", || async {
        pg.psql(&format!("SELECT count(*) FROM drones WHERE id = '{drone}'"))
            .ok()
            .as_deref()
            == Some("1")
    })
    .await;
}

pub fn echo(args: &[&str]) -> Value {
    json!({"type": "run_command", "payload": {"argv": args}, "timeout_ms": 60_000})
}

/// Runs one command the way an edge agent would: `run_command` with an allowlist of
/// executables (here `echo`), output streamed, result reported; anything else refused.
pub async fn run_allowlisted(cmd: IncomingCommand) {
    let mut handle = cmd.handle;
    let argv: Vec<String> = serde_json::from_slice::<Value>(&cmd.payload)
        .ok()
        .and_then(|v| serde_json::from_value(v["argv"].clone()).ok())
        .unwrap_or_default();
    if cmd.kind != "run_command" || argv.first().map(String::as_str) != Some("echo") {
        handle
            .finish(Outcome::refused("not allowlisted"))
            .await
            .expect("report");
        return;
    }
    let out = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .await
        .expect("run echo");
    handle
        .output(OutputKind::Stdout, &out.stdout)
        .await
        .expect("output");
    let code = out.status.code().unwrap_or(-1);
    let outcome = if out.status.success() {
        Outcome::succeeded(code)
    } else {
        Outcome::failed(code, "non-zero exit")
    };
    handle.finish(outcome).await.expect("report");
}
