//! HTTP API in-process on 127.0.0.1:0.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{session, start, DEADLINE};
use contrail_control::{ChildKind, ControlConfig, Hist, LifecycleState};
use contrail_testsupport::poll_until_async;
use serde_json::Value;

fn url(c: &contrail_control::Control, path: &str) -> String {
    format!("http://{}{path}", c.http_addr())
}

async fn get(c: &contrail_control::Control, path: &str) -> (u16, Value) {
    let resp = reqwest::get(url(c, path)).await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn drain(c: &contrail_control::Control, token: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().post(url(c, "/v1/admin/drain?reason=deploy"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_lifecycle_and_components() {
    let c = start(ControlConfig::default()).await;
    assert_eq!(get(&c, "/healthz").await.0, 200);
    let (status, body) = get(&c, "/readyz").await;
    assert_eq!((status, body["state"].as_str()), (503, Some("starting")));

    let sink = c.health().register("sink:file", true);
    c.lifecycle().mark_ready();
    let (status, body) = get(&c, "/readyz").await;
    assert_eq!(status, 503, "required sink unhealthy: {body}");
    // Components are listed in registration order; the command store registers its own.
    let sink_listed = body["components"].as_array().is_some_and(|c| {
        c.iter()
            .any(|x| x["name"] == "sink:file" && x["healthy"] == false)
    });
    assert!(sink_listed, "{body}");
    sink.set_healthy(true);
    assert_eq!(get(&c, "/readyz").await.0, 200);

    c.lifecycle().begin_drain("test");
    let (status, body) = get(&c, "/readyz").await;
    assert_eq!((status, body["state"].as_str()), (503, Some("draining")));
    assert_eq!(body["drain_reason"], "test");
    c.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drones_list_detail_and_404() {
    let c = start(ControlConfig::default()).await;
    for i in 0..5 {
        c.events()
            .session_up(session(&format!("d{i}"), &format!("s{i}")));
    }
    let s = c.fleet().get("d2").expect("d2 live");
    s.stats.frames.store(10, Ordering::Relaxed);
    s.stats.bytes.store(2000, Ordering::Relaxed);
    s.stats.inflight.store(3, Ordering::Relaxed);
    s.stats
        .last_heartbeat_unix_ms
        .store(1_700_000_000_500, Ordering::Relaxed);
    *s.stats.flight_id.lock() = Some("f-9".into());

    let (status, body) = get(&c, "/v1/drones/d2").await;
    assert_eq!(status, 200);
    assert_eq!(body["agent_id"], "d2");
    assert_eq!(body["session_id"], "s2");
    assert_eq!(body["relay_id"], "relay");
    assert_eq!(body["flight_id"], "f-9");
    assert_eq!(body["connected_since"], 1_700_000_000_000u64);
    assert_eq!(body["last_heartbeat"], 1_700_000_000_500u64);
    assert_eq!(
        (body["frames"].as_u64(), body["bytes"].as_u64()),
        (Some(10), Some(2000))
    );
    assert_eq!(body["inflight"], 3);
    assert_eq!(body["remote_addr"], "10.0.0.7:40000");

    let (status, body) = get(&c, "/v1/drones/nope").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));

    let (status, body) = get(&c, "/v1/drones?offset=1&limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 5);
    let ids: Vec<_> = body["drones"]
        .as_array()
        .expect("array")
        .iter()
        .map(|d| d["agent_id"].clone())
        .collect();
    assert_eq!(ids, ["d1", "d2"]);
    assert_eq!(get(&c, "/v1/drones").await.1["limit"], 100);
    assert_eq!(get(&c, "/v1/drones?limit=1001").await.0, 400);
    assert_eq!(get(&c, "/v1/drones?offset=x").await.0, 400);
    c.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_counts_current_session_and_totals() {
    let c = start(ControlConfig::default()).await;
    let first = session("u1", "a");
    first.stats.frames.store(4, Ordering::Relaxed);
    first.stats.bytes.store(400, Ordering::Relaxed);
    c.events().session_up(first);
    c.events().session_down("u1", "a");
    let second = session("u1", "b");
    second.stats.frames.store(1, Ordering::Relaxed);
    second.stats.bytes.store(100, Ordering::Relaxed);
    c.events().session_up(second);

    let (status, body) = get(&c, "/v1/usage/u1").await;
    assert_eq!(status, 200);
    assert_eq!(body["current"]["session_id"], "b");
    assert_eq!(
        (
            body["current"]["frames"].as_u64(),
            body["current"]["bytes"].as_u64()
        ),
        (Some(1), Some(100))
    );
    assert_eq!(
        (body["total_frames"].as_u64(), body["total_bytes"].as_u64()),
        (Some(5), Some(500))
    );
    assert_eq!(body["sessions"], 2);
    let (status, body) = get(&c, "/v1/usage").await;
    assert_eq!((status, body["total"].as_u64()), (200, Some(1)));
    assert_eq!(get(&c, "/v1/usage/ghost").await.0, 404);
    c.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_endpoint_is_disabled_without_token() {
    let c = start(ControlConfig::default()).await;
    c.lifecycle().mark_ready();
    assert_eq!(drain(&c, None).await, 404);
    assert_eq!(drain(&c, Some("anything")).await, 404);
    assert_eq!(c.lifecycle().state(), LifecycleState::Ready);
    c.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_endpoint_requires_the_bearer_token() {
    let config = ControlConfig {
        admin_token: Some("s3cret".into()),
        ..ControlConfig::default()
    };
    let c = start(config).await;
    c.lifecycle().mark_ready();
    let mut rx = c.lifecycle().subscribe();
    assert_eq!(drain(&c, None).await, 401);
    assert_eq!(drain(&c, Some("wrong")).await, 401);
    assert_eq!(drain(&c, Some("s3cre")).await, 401);
    assert_eq!(c.lifecycle().state(), LifecycleState::Ready);
    assert_eq!(get(&c, "/readyz").await.0, 200);

    assert_eq!(drain(&c, Some("s3cret")).await, 202);
    assert_eq!(c.lifecycle().state(), LifecycleState::Draining);
    assert_eq!(c.lifecycle().drain_reason().as_deref(), Some("deploy"));
    let seen = tokio::time::timeout(DEADLINE, rx.wait_for(|s| *s == LifecycleState::Draining))
        .await
        .map(|r| r.map(|state| *state)); // copy out: the watch guard must not outlive this line
    assert!(
        matches!(seen, Ok(Ok(LifecycleState::Draining))),
        "subscribers see the drain"
    );
    assert_eq!(get(&c, "/readyz").await.0, 503);
    assert_eq!(drain(&c, Some("s3cret")).await, 202, "idempotent");
    c.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_include_latency_histograms() {
    let c = start(ControlConfig::default()).await;
    c.latency()
        .record_many(Hist::AckLatency, [1_000_000, 2_000_000, 3_000_000]);
    c.latency()
        .record_many(Hist::SinkWrite("redis"), [5_000_000]);
    let resp = reqwest::get(url(&c, "/metrics")).await.expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.expect("body");
    assert!(
        text.contains("# TYPE contrail_ack_latency_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("contrail_ack_latency_seconds_bucket{le=\"0.001\"} 1"));
    assert!(text.contains("contrail_ack_latency_seconds_bucket{le=\"0.0025\"} 2"));
    assert!(text.contains("contrail_ack_latency_seconds_bucket{le=\"+Inf\"} 3"));
    assert!(
        text.contains("contrail_ack_latency_seconds_count 3"),
        "{text}"
    );
    assert!(
        text.contains("contrail_sink_write_latency_seconds_bucket{sink=\"redis\",le=\"0.005\"} 1")
    );
    assert!(text.contains("contrail_frame_age_seconds_count 0"));
    // The windowed views for the fleet page.
    let (status, v) = get(&c, "/v1/latency").await;
    assert_eq!(status, 200, "{v}");
    let ack = v["stages"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["stage"] == "ack"))
        .expect("ack stage");
    assert_eq!(ack["last_1m"]["count"], 3);
    c.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_http_server_and_children_are_restarted() {
    let c = start(ControlConfig::default()).await;
    for kind in [ChildKind::Http, ChildKind::Lifecycle, ChildKind::Accountant] {
        c.inject_child_failure(kind);
        poll_until_async(DEADLINE, "child restarted", async || {
            c.restart_counts().await.get(&kind).copied() == Some(1)
        })
        .await;
    }
    // The restarted HTTP server serves on the same listener.
    let (status, _) = poll_until_async(DEADLINE, "http serves again", async || {
        reqwest::get(url(&c, "/healthz"))
            .await
            .ok()
            .map(|r| (r.status().as_u16(), ()))
    })
    .await;
    assert_eq!(status, 200);
    c.events().session_up(session("x", "y"));
    assert_eq!(get(&c, "/v1/drones/x").await.0, 200);
    tokio::time::timeout(Duration::from_secs(20), c.shutdown())
        .await
        .expect("shutdown in time")
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_hourly_buckets_as_json_and_csv_behind_viewer_token() {
    let c = start(ControlConfig {
        viewer_token: Some("v".into()),
        usage: contrail_control::usage::UsageConfig {
            period: Duration::from_millis(20),
            ..Default::default()
        },
        ..ControlConfig::default()
    })
    .await;
    let s = session("u-1", "s-1");
    s.stats.frames.store(7, Ordering::Relaxed);
    s.stats.bytes.store(700, Ordering::Relaxed);
    // Hourly usage counts what the required sinks committed (the relay adds per batch).
    s.stats.committed.add(7, 700);
    c.events().session_up(s);
    let http = reqwest::Client::new();
    let q = url(&c, "/v1/usage?agent=u-1&from=0");
    let denied = http.get(&q).send().await.expect("request");
    assert_eq!(denied.status().as_u16(), 401, "viewer token required");
    let v: Value = poll_until_async(DEADLINE, "usage sampled", async || {
        let v: Value = http
            .get(&q)
            .bearer_auth("v")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["total_frames"] == 7).then_some(v)
    })
    .await;
    assert_eq!(v["storage"], "memory");
    assert_eq!(v["persistent"], false);
    assert_eq!(v["total_bytes"], 700);
    assert_eq!(v["hours"][0]["agent_id"], "u-1");
    let csv = http
        .get(url(&c, "/v1/usage?agent=u-1&format=csv"))
        .bearer_auth("v")
        .send()
        .await
        .expect("csv")
        .text()
        .await
        .expect("body");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "agent_id,hour_start_unix_ms,frames,bytes");
    assert!(
        lines[1].starts_with("u-1,") && lines[1].ends_with(",7,700"),
        "{csv}"
    );
    let bad = http
        .get(url(&c, "/v1/usage?from=5&to=5"))
        .bearer_auth("v")
        .send()
        .await
        .expect("bad");
    assert_eq!(bad.status().as_u16(), 400);
    // Without parameters: the running totals, as before.
    let v: Value = http
        .get(url(&c, "/v1/usage"))
        .bearer_auth("v")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(v["agents"][0]["total_frames"], 7);
    c.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_state_pages_and_searches_ten_thousand_drones_on_the_server() {
    let c = start(ControlConfig::default()).await;
    for i in 0..10_000 {
        c.events()
            .session_up(session(&format!("drone-{i:05}"), &format!("s{i}")));
    }
    poll_until_async(DEADLINE, "10k sessions", async || {
        (c.fleet().len() == 10_000).then_some(())
    })
    .await;
    let (status, v) = get(&c, "/v1/page/state?offset=9990&limit=50").await;
    assert_eq!(status, 200);
    assert_eq!(v["drones"]["total"], 10_000);
    let rows = v["drones"]["drones"].as_array().expect("rows");
    assert_eq!(rows.len(), 10, "only the last page is sent");
    assert_eq!(rows[0]["agent_id"], "drone-09990");
    assert_eq!(rows[0]["local"]["session_id"], "s9990");
    assert_eq!(v["relays"][0]["sessions"], 10_000);
    let (_, v) = get(&c, "/v1/page/state?q=DRONE-0999&limit=50").await;
    assert_eq!(
        v["drones"]["total"], 10,
        "drone-09990..09999, case-insensitive"
    );
    let (status, _) = get(&c, "/v1/page/state?limit=5000").await;
    assert_eq!(status, 400, "page size is bounded");
    c.shutdown().await.expect("shutdown");
}
