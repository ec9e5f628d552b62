//! `contrail-loadgen --target nats` against a real `nats-server` on a free loopback port, at a
//! fixed rate, with the subscriber on a thread of its own (the default) and on the agents'
//! runtime (`--shared-subscriber`): every message is accounted for, and the report splits e2e
//! latency at the hand-over to the client (send lag, handed → subscriber) but not at a server
//! stamp, which NATS does not give.

use std::time::Duration;

use contrail_testsupport::NatsServer;

fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut x = v;
    for k in path {
        x = &x[*k];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("report has no number at {path:?}: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_runs_account_for_every_message_and_split_e2e_at_the_hand_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start();
    for (name, extra) in [("own", None), ("shared", Some("--shared-subscriber"))] {
        let json = dir.path().join(format!("{name}.json"));
        let out = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_contrail-loadgen"))
                .args(["--target", "nats", "--relay", &nats.addr().to_string()])
                .args([
                    "--agents",
                    "4",
                    "--rate",
                    "50",
                    "--payload",
                    "64",
                    "--quiet",
                ])
                .args(["--duration", "1s", "--warmup", "0s", "--ramp-up", "0s"])
                .args(extra)
                .arg("--json")
                .arg(&json)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("loadgen finishes")
        .expect("loadgen runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: loadgen failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("json");
        assert_eq!(r["target"], "nats", "{name}");
        let sent = num(&r, &["totals", "sent"]);
        assert!(sent > 0.0, "{name}: nothing sent: {r}");
        assert_eq!(num(&r, &["totals", "delivered"]), sent, "{name}: {r}");
        assert_eq!(num(&r, &["totals", "lost"]), 0.0, "{name}: {r}");
        assert_eq!(num(&r, &["totals", "duplicates"]), 0.0, "{name}: {r}");
        let e2e = num(&r, &["e2e_latency", "count"]);
        assert!(e2e > 0.0, "{name}: {r}");
        let split = &r["e2e_split"];
        assert_eq!(
            num(split, &["handoff_to_subscriber", "count"]),
            e2e,
            "{name}: {r}"
        );
        assert!(num(split, &["send_lag", "count"]) >= e2e, "{name}: {r}");
        assert!(
            split["to_relay"].is_null() && split["relay_to_subscriber"].is_null(),
            "{name}: a broker gives no receive stamp: {r}"
        );
        assert!(
            num(split, &["handoff_to_subscriber", "p50_us"]) <= num(&r, &["e2e_latency", "p50_us"]),
            "{name}: e2e from the hand-over cannot exceed e2e from the intended time: {r}"
        );
    }
}
