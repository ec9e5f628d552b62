//! Issue 22: latency histograms on `/metrics` against frames sent, frame age only for sane agent
//! clocks (raw frames), and the fleet-wide relay registry with three relays on one real Redis.

use std::collections::BTreeSet;
use std::time::Duration;

use contrail_testsupport::{poll_until_async, RedisServer};
use serde_json::Value;

use crate::common::{self, raw, send_n, start_with, test_config};

const DEADLINE: Duration = Duration::from_secs(15);

async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body")
}

/// Value of the sample line starting with `prefix` (exact series), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Cumulative bucket values of a histogram series (labels before `le`), in exposition order.
fn buckets(text: &str, name: &str, labels: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}_bucket{{{labels}le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, v) = rest.split_once("\"} ")?;
            Some((le.to_owned(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_bucket_counts_match_frames_sent() {
    const N: u64 = 600;
    let (relay, mut rx) = common::start_with_channel(4096).await;
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let agent = relay.agent("hist-1").await;
    send_n(&agent, N, &[7u8; 100]).await;
    agent.wait_acked(N).await.expect("all acked");
    let base = relay.http();
    // The ack may overtake the recording of the last batch's commit latency: poll.
    let text = poll_until_async(DEADLINE, "every frame in the histograms", async || {
        let t = metrics_text(&base).await;
        let done = sample(&t, "contrail_commit_latency_seconds_count") == Some(N as f64)
            && sample(
                &t,
                "contrail_sink_write_latency_seconds_count{sink=\"chan\"}",
            ) == Some(N as f64);
        done.then_some(t)
    })
    .await;
    assert!(text.contains("# TYPE contrail_frame_age_seconds histogram"));
    for (name, labels) in [
        ("contrail_frame_age_seconds", ""),
        ("contrail_commit_latency_seconds", ""),
        ("contrail_sink_write_latency_seconds", "sink=\"chan\","),
    ] {
        let b = buckets(&text, name, labels);
        assert_eq!(b.len(), 19, "{name}: 18 bounds + Inf\n{text}");
        assert_eq!(b[0].0, "0.00005");
        assert_eq!(b[17].0, "30");
        assert_eq!(
            b[18],
            ("+Inf".to_owned(), N as f64),
            "{name}: every frame counted once"
        );
        assert!(
            b.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: cumulative buckets never decrease: {b:?}"
        );
        // Loopback, 600 frames: everything is well under 30 s, and not everything is under 50 µs.
        assert_eq!(b[17].1, N as f64, "{name}: all within 30 s: {b:?}");
        assert!(b[0].1 < N as f64, "{name}: not all under 50 µs: {b:?}");
        let count = if labels.is_empty() {
            sample(&text, &format!("{name}_count"))
        } else {
            sample(&text, &format!("{name}_count{{sink=\"chan\"}}"))
        };
        assert_eq!(count, Some(N as f64), "{name}_count");
    }
    // Acks are counted per ack: at least one, at most one per frame.
    let acks = sample(&text, "contrail_ack_latency_seconds_count").expect("ack count");
    assert!(acks >= 1.0 && acks <= N as f64, "{acks}");
    // The windowed view the page reads agrees.
    let v: Value = reqwest::get(format!("{base}/v1/latency"))
        .await
        .expect("GET /v1/latency")
        .json()
        .await
        .expect("json");
    let commit = v["stages"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["stage"] == "commit"))
        .expect("commit stage");
    assert_eq!(commit["last_1m"]["count"], N);
    assert_eq!(
        commit["last_1m"]["buckets"]
            .as_array()
            .map(|b| b.iter().filter_map(Value::as_u64).sum::<u64>()),
        Some(N)
    );
    agent.close().await.expect("close");
    relay.relay.drain("test").await;
    drain.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_age_counts_only_sane_agent_clocks_raw_frames() {
    let (relay, mut rx) = common::start_with_channel(1024).await;
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let (ep, cfg) = relay.raw_client(contrail_protocol::ALPN_AGENT);
    let conn = raw::register(&ep, cfg, relay.relay.local_addr(), "clock-raw").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let hour = 3_600_000_000_000u64;
    let mut buf = bytes::BytesMut::new();
    // seq 1..=4: sane; 5..=7: an hour ahead; 8..=9: no timestamp; 10: two hours old.
    let sent_at = |seq: u64| match seq {
        1..=4 => now - 1_000_000,
        5..=7 => now + hour,
        8..=9 => 0,
        _ => now - 2 * hour,
    };
    for seq in 1..=10u64 {
        contrail_protocol::codec::encode_telemetry(&mut buf, seq, sent_at(seq), 0, 1, "", b"x", "");
    }
    let mut uni = conn.open_uni().await.expect("uni");
    uni.write_all(&buf).await.expect("write frames");
    let base = relay.http();
    let text = poll_until_async(DEADLINE, "10 frames committed", async || {
        let t = metrics_text(&base).await;
        (sample(&t, "contrail_commit_latency_seconds_count") == Some(10.0)).then_some(t)
    })
    .await;
    assert_eq!(
        sample(&text, "contrail_frame_age_seconds_count"),
        Some(4.0),
        "only the 4 frames with a sane clock: {text}"
    );
    // Their age (≈ 1 ms plus transit) is under 1 s.
    assert_eq!(
        sample(&text, "contrail_frame_age_seconds_bucket{le=\"1\"}"),
        Some(4.0)
    );
    drop(uni);
    conn.close(0u32.into(), b"done");
    relay.relay.drain("test").await;
    drain.abort();
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("GET")
        .json()
        .await
        .unwrap_or(Value::Null)
}

fn ids(v: &Value, list: &str, field: &str) -> BTreeSet<String> {
    v[list]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x[field].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_see_every_relay_and_drone_through_redis() {
    let redis = RedisServer::start();
    let mut relays = Vec::new();
    for (i, id) in ["sre-a", "sre-b", "sre-c"].iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = test_config(dir.path());
        c.relay_id = Some((*id).to_owned());
        c.redis.addr = Some(redis.addr().to_string());
        c.region = Some("eu-test".into());
        c.zone = Some(format!("z{i}"));
        relays.push(start_with(c, dir, Vec::new(), contrail_relay::Hooks::default()).await);
    }
    // Drones: 2 on a, 1 on b, 1 on c.
    let mut agents = Vec::new();
    for (r, agent) in [(0, "d-1"), (0, "d-2"), (1, "d-3"), (2, "d-4")] {
        agents.push((r, relays[r].agent(agent).await));
    }
    let want_relays: BTreeSet<String> = ["sre-a", "sre-b", "sre-c"].map(String::from).into();
    let want_drones: BTreeSet<String> = ["d-1", "d-2", "d-3", "d-4"].map(String::from).into();
    // Any relay's API shows the whole fleet.
    for r in &relays {
        let base = r.http();
        poll_until_async(DEADLINE, "every relay with its sessions", async || {
            let v = get_json(&format!("{base}/v1/relays")).await;
            let sessions: Vec<u64> = v["relays"]
                .as_array()?
                .iter()
                .filter_map(|x| x["sessions"].as_u64())
                .collect();
            (v["source"] == "redis"
                && ids(&v, "relays", "relay_id") == want_relays
                && sessions == [2, 1, 1])
            .then_some(())
        })
        .await;
        poll_until_async(DEADLINE, "every drone", async || {
            let v = get_json(&format!("{base}/v1/fleet/drones?limit=10")).await;
            (ids(&v, "drones", "agent_id") == want_drones).then_some(v)
        })
        .await;
    }
    // Relay records: typed, with TTL, and the drones name their relay.
    let rec: contrail_control::registry::RelayRecord = serde_json::from_str(
        &redis
            .cmd::<Option<String>>(&["GET", "relay:sre-b"])
            .expect("relay:sre-b"),
    )
    .expect("RelayRecord json");
    assert_eq!(rec.relay_id, "sre-b");
    assert_eq!(rec.address, relays[1].relay.local_addr().to_string());
    assert_eq!(
        (rec.region.as_deref(), rec.zone.as_deref()),
        (Some("eu-test"), Some("z1"))
    );
    assert_eq!(rec.state, "ready");
    assert!(!rec.draining);
    let ttl: i64 = redis.cmd(&["TTL", "relay:sre-b"]);
    assert!((1..=45).contains(&ttl), "ttl {ttl}");
    // Readers list relays from the index (no keyspace SCAN): every relay is a member.
    let index: BTreeSet<String> = redis.cmd(&["ZRANGE", "contrail:relays", "0", "-1"]);
    assert_eq!(index, want_relays);
    let v = get_json(&format!("{}/v1/fleet/drones?q=d-3", relays[0].http())).await;
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["drones"][0]["relay_id"], "sre-b");
    // Search and paging are server-side.
    let v = get_json(&format!(
        "{}/v1/fleet/drones?offset=1&limit=2",
        relays[2].http()
    ))
    .await;
    assert_eq!(
        (v["total"].as_u64(), v["drones"].as_array().map(Vec::len)),
        (Some(4), Some(2))
    );
    // A drone that leaves disappears; a relay that stops deletes its record.
    let (_, d4) = agents.pop().expect("d-4");
    d4.close().await.expect("close");
    let c = relays.pop().expect("sre-c");
    c.relay.drain("test").await;
    assert!(
        redis
            .cmd::<Option<String>>(&["GET", "relay:sre-c"])
            .is_none(),
        "record deleted"
    );
    assert!(
        redis
            .cmd::<Option<String>>(&["ZSCORE", "contrail:relays", "sre-c"])
            .is_none(),
        "index entry deleted"
    );
    let base = relays[0].http();
    poll_until_async(DEADLINE, "sre-c and d-4 gone from a's view", async || {
        let r = get_json(&format!("{base}/v1/relays")).await;
        let d = get_json(&format!("{base}/v1/fleet/drones")).await;
        (ids(&r, "relays", "relay_id").len() == 2 && !ids(&d, "drones", "agent_id").contains("d-4"))
            .then_some(())
    })
    .await;
    for (_, a) in agents {
        a.close().await.expect("close");
    }
    for r in relays {
        r.relay.drain("test").await;
    }
}
