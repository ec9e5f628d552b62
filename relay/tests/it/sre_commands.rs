//! Commands in flight on the fleet page (issue 22, item 2): `GET /v1/page/state` carries the
//! command store's open commands (counts per status and the most recent), fleet-wide with
//! PostgreSQL; the page in a real headless Chromium renders them.

use std::time::Duration;

use contrail_testsupport::{poll_until_async, Browser, PostgresServer};
use serde_json::{json, Value};

use crate::commands_support::*;
use crate::common::TestRelay;

const DEADLINE: Duration = Duration::from_secs(15);

/// A command for an offline drone: it stays queued for an hour.
fn queued_command() -> Value {
    json!({"type": "run_command", "payload": {"argv": ["true"]}, "timeout_ms": 3_600_000})
}

async fn page_commands(relay: &TestRelay) -> Value {
    let v: Value = reqwest::get(format!("{}/v1/page/state", relay.http()))
        .await
        .expect("page state")
        .json()
        .await
        .expect("json");
    v["commands"].clone()
}

/// Registers `drone` (so the store knows it) and leaves, so commands for it stay queued.
async fn offline_drone(relay: &TestRelay, drone: &str, pg: Option<&PostgresServer>) {
    let state = tempfile::tempdir().expect("state");
    let (agent, _c) = command_agent(relay, drone, state.path()).await;
    if let Some(pg) = pg {
        wait_recorded(pg, drone).await;
    }
    agent.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_state_counts_commands_in_flight_fleet_wide_from_postgres() {
    let pg = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .expect("postgres");
    let a = relay("relay-a", Some(&pg.url()), None).await;
    let b = relay("relay-b", Some(&pg.url()), None).await;
    offline_drone(&a, "drone-q", Some(&pg)).await;
    let api = Api::new(&a);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (s, v) = api
            .submit(OPERATOR, "drone-q", queued_command(), None)
            .await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    // Relay B's page sees the commands submitted through A (one store), within the 1 s cache.
    let c = poll_until_async(DEADLINE, "two queued commands on B's page", async || {
        let c = page_commands(&b).await;
        (c["queued"] == 2).then_some(c)
    })
    .await;
    assert_eq!(c["storage"], "postgres", "{c}");
    assert_eq!(
        (c["delivered"].as_u64(), c["running"].as_u64()),
        (Some(0), Some(0))
    );
    let recent: Vec<&str> = c["recent"]
        .as_array()
        .expect("recent")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(
        recent,
        [ids[1].as_str(), ids[0].as_str()],
        "newest first: {c}"
    );
    assert_eq!(c["recent"][0]["agent_id"], "drone-q");
    assert_eq!(c["recent"][0]["status"], "queued");
    assert!(c["error"].is_null());
    // A cancelled command leaves the count.
    let (s, v) = api
        .post(OPERATOR, &format!("/v1/commands/{}/cancel", ids[0]))
        .await;
    assert_eq!(s, 200, "{v}");
    poll_until_async(DEADLINE, "one queued after the cancel", async || {
        (page_commands(&b).await["queued"] == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_page_renders_commands_in_flight_from_the_memory_store() {
    let r = relay("relay-m", None, None).await;
    offline_drone(&r, "drone-m", None).await;
    let (s, v) = Api::new(&r)
        .submit(OPERATOR, "drone-m", queued_command(), None)
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let c = poll_until_async(DEADLINE, "one queued command", async || {
        let c = page_commands(&r).await;
        (c["queued"] == 1).then_some(c)
    })
    .await;
    assert_eq!(c["storage"], "memory");

    let b = Browser::start(1400, 1000)
        .await
        .expect("headless chromium (apt-get install chromium chromium-driver)");
    b.goto(&format!("{}/", r.http())).await.expect("open page");
    let script = format!(
        "const n = document.getElementById('commands-counts');\
         const row = document.querySelector('tr[data-command=\"{id}\"]');\
         return n && row ? n.dataset.total + '|' + row.textContent : '';"
    );
    let shown = poll_until_async(DEADLINE, "commands rendered", async || {
        let v = b.eval(&script).await.unwrap_or(Value::Null);
        v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
    })
    .await;
    assert!(shown.starts_with("1|"), "{shown}");
    assert!(
        shown.contains("drone-m") && shown.contains("queued"),
        "{shown}"
    );
    b.close().await.expect("close browser");
}
