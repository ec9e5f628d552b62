//! `contrail-loadgen` end to end: the release-shaped binary drives an in-process relay (real
//! QUIC on loopback, a live sink its subscriber reads) and its JSON report must account for
//! every frame; against an address where no relay answers it must fail.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use contrail_relay::config::SinkConfig;
use contrail_relay::{Config, RelayBuilder, RunningRelay};

/// A relay with a required live sink, and the path of the development certificate it wrote.
async fn live_relay(dir: &Path) -> (RunningRelay, PathBuf) {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Config::default()
    };
    config.http.listen = "127.0.0.1:0".parse().expect("addr");
    config.tls.dev_cert_dir = dir.join("certs");
    config.sinks =
        vec![
            toml::from_str::<SinkConfig>("name = \"live\"\ntype = \"live\"\nrequired = true\n")
                .expect("live sink entry"),
        ];
    let udp = std::net::UdpSocket::bind(config.listen).expect("bind udp");
    let http = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .expect("bind http");
    let relay = RelayBuilder::new(config)
        .start(udp, http)
        .await
        .expect("relay starts");
    let ca = relay
        .dev_cert_path()
        .expect("development certificate")
        .to_path_buf();
    (relay, ca)
}

/// Runs the loadgen with `args` plus the relay address, trust file and a JSON report path;
/// returns its output and the parsed report.
async fn loadgen(
    relay: &str,
    ca: &Path,
    json: &Path,
    args: &[&str],
) -> (Output, serde_json::Value) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_contrail-loadgen"))
            .args([
                "--relay",
                relay,
                "--quiet",
                "--warmup",
                "0s",
                "--ramp-up",
                "0s",
            ])
            .arg("--ca")
            .arg(ca)
            .arg("--json")
            .arg(json)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("loadgen finishes")
    .expect("loadgen runs");
    let report = std::fs::read(json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    (out, report)
}

fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut x = v;
    for k in path {
        x = &x[*k];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("report has no number at {path:?}: {v}"))
}

/// Every frame sent is acked and delivered exactly once, latency is measured, and the exit
/// code says so: at a fixed rate (agents on timers) and as fast as credits allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_every_frame_at_fixed_rate_and_max() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, ca) = live_relay(dir.path()).await;
    let addr = relay.local_addr().to_string();
    for (name, args, agents) in [
        (
            "fixed",
            [
                "--agents",
                "6",
                "--rate",
                "40",
                "--payload",
                "64",
                "--duration",
                "2s",
            ],
            6.0,
        ),
        (
            "max",
            [
                "--agents",
                "3",
                "--rate",
                "max",
                "--payload",
                "128",
                "--duration",
                "1s",
            ],
            3.0,
        ),
    ] {
        let json = dir.path().join(format!("{name}.json"));
        let (out, r) = loadgen(&addr, &ca, &json, &args).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: loadgen failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("verdict   PASS"), "{name}: {stdout}");
        let sent = num(&r, &["totals", "sent"]);
        assert!(sent > 0.0, "{name}: nothing sent: {r}");
        if name == "fixed" {
            // 6 agents at 40 Hz for 2 s: at most ~486 frames on schedule (fewer when connecting
            // took a while; a late timer catches up, it never adds frames).
            assert!(sent <= 600.0, "{name}: sent {sent} > the schedule's");
        }
        assert_eq!(num(&r, &["totals", "acked"]), sent, "{name}: {r}");
        assert_eq!(num(&r, &["totals", "delivered"]), sent, "{name}: {r}");
        assert_eq!(num(&r, &["totals", "lost"]), 0.0, "{name}: {r}");
        assert_eq!(num(&r, &["totals", "duplicates"]), 0.0, "{name}: {r}");
        assert_eq!(num(&r, &["sessions_connected"]), agents, "{name}: {r}");
        assert!(num(&r, &["ack_latency", "count"]) > 0.0, "{name}: {r}");
        let e2e = num(&r, &["e2e_latency", "count"]);
        assert!(e2e > 0.0, "{name}: {r}");
        // Every measured frame is split at the hand-over to the agent library and at the
        // relay's receive stamp; fixed-rate runs also report the load generator's send lag.
        let split = &r["e2e_split"];
        for part in ["handoff_to_subscriber", "to_relay", "relay_to_subscriber"] {
            assert_eq!(num(split, &[part, "count"]), e2e, "{name} {part}: {r}");
        }
        assert_eq!(split["send_lag"].is_null(), name == "max", "{name}: {r}");
        assert_eq!(
            r["verdict"]["ok"],
            serde_json::Value::Bool(true),
            "{name}: {r}"
        );
    }
}

/// No relay at the address: no agent connects, the verdict fails and so does the exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_when_no_relay_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A certificate to trust: a relay's, but the address is a bound socket nothing reads.
    let (_relay, ca) = live_relay(dir.path()).await;
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let json = dir.path().join("none.json");
    let (out, r) = loadgen(
        &addr,
        &ca,
        &json,
        &[
            "--agents",
            "2",
            "--rate",
            "10",
            "--payload",
            "16",
            "--duration",
            "1s",
            "--no-e2e",
        ],
    )
    .await;
    assert!(!out.status.success(), "loadgen passed with no relay: {r}");
    assert_eq!(num(&r, &["sessions_connected"]), 0.0, "{r}");
    assert_eq!(r["verdict"]["ok"], serde_json::Value::Bool(false), "{r}");
}

/// `--idle-phase` keeps every agent idle (heartbeats only) and reports the relay's CPU over it;
/// then only the `--streaming` fraction sends (the relay's usage shows which agents did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_phase_then_only_the_streaming_fraction_sends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (relay, ca) = live_relay(dir.path()).await;
    let addr = relay.local_addr().to_string();
    let json = dir.path().join("fraction.json");
    let pid = std::process::id().to_string();
    let (out, r) = loadgen(
        &addr,
        &ca,
        &json,
        &[
            "--agents",
            "8",
            "--streaming",
            "0.25",
            "--idle-phase",
            "1s",
            "--rate",
            "20",
            "--payload",
            "32",
            "--duration",
            "1s",
            "--relay-pid",
            &pid,
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("idle      8 sessions"), "{stdout}");
    assert_eq!(num(&r, &["idle", "sessions"]), 8.0, "{r}");
    assert!(num(&r, &["idle", "seconds"]) >= 0.9, "{r}");
    assert!(num(&r, &["idle", "relay_cpu_cores"]) >= 0.0, "{r}");
    let sent = num(&r, &["totals", "sent"]);
    assert!(sent > 0.0, "nothing sent: {r}");
    assert_eq!(num(&r, &["totals", "delivered"]), sent, "{r}");
    assert_eq!(num(&r, &["totals", "lost"]), 0.0, "{r}");
    // Which agents sent: the relay's usage keeps every agent's totals after it disconnected.
    let http = relay.http_addr().expect("http");
    let usage: serde_json::Value = reqwest::get(format!("http://{http}/v1/usage?limit=100"))
        .await
        .expect("usage")
        .json()
        .await
        .expect("usage json");
    let agents = usage["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 8, "{usage}");
    let mut streamed: Vec<String> = agents
        .iter()
        .filter(|a| a["total_frames"].as_u64().unwrap_or(0) > 0)
        .filter_map(|a| a["agent_id"].as_str().map(str::to_owned))
        .collect();
    streamed.sort();
    assert_eq!(streamed.len(), 2, "2 of 8 agents stream: {usage}");
    assert!(
        streamed[0].ends_with('3') && streamed[1].ends_with('7'),
        "agents 3 and 7 stream: {streamed:?}"
    );
    let frames: u64 = agents
        .iter()
        .map(|a| a["total_frames"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(frames as f64, sent, "{usage}");
}

/// Scenario `commands`: agents on shared sockets take commands submitted through the relay's
/// API; every submitted command is accepted and its result stored, and the report says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_scenario_delivers_every_submitted_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = contrail_relay::Config::from_toml(
        "[commands]\n[[commands.tokens]]\nname = \"bench\"\nrole = \"operator\"\ntoken = \"bench-operator-token\"\n",
    )
    .expect("config");
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.http.listen = "127.0.0.1:0".parse().expect("addr");
    config.tls.dev_cert_dir = dir.path().join("certs");
    config.sinks = vec![toml::from_str::<SinkConfig>(
        "name = \"null\"\ntype = \"file\"\nrequired = true\npath = \"/dev/null\"\n",
    )
    .expect("sink")];
    let udp = std::net::UdpSocket::bind(config.listen).expect("bind udp");
    let http = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .expect("bind http");
    let relay = RelayBuilder::new(config)
        .start(udp, http)
        .await
        .expect("relay starts");
    let ca = relay.dev_cert_path().expect("cert").to_path_buf();
    let api = format!("http://{}", relay.http_addr().expect("http"));
    let json = dir.path().join("commands.json");
    let pid = std::process::id().to_string();
    let (out, r) = loadgen(
        &relay.local_addr().to_string(),
        &ca,
        &json,
        &[
            "--scenario",
            "commands",
            "--agents",
            "20",
            "--commands-rate",
            "20",
            "--duration",
            "1s",
            "--commands-api",
            &api,
            "--commands-token",
            "bench-operator-token",
            "--relay-pid",
            &pid,
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "loadgen failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(num(&r, &["agents_connected"]), 20.0, "{r}");
    let submitted = num(&r, &["submitted"]);
    assert!(submitted > 0.0, "{r}");
    assert_eq!(num(&r, &["submit_errors"]), 0.0, "{r}");
    assert_eq!(num(&r, &["not_finished"]), 0.0, "{r}");
    assert_eq!(num(&r, &["submit_to_accepted", "count"]), submitted, "{r}");
    assert_eq!(num(&r, &["submit_to_result", "count"]), submitted, "{r}");
    assert!(num(&r, &["executed_by_agents"]) >= submitted, "{r}");
    assert!(num(&r, &["relay_cpu_us_per_command"]) > 0.0, "{r}");
}
