//! Graceful drain, end to end: SIGTERM on the real binary loses no acked frame; the admin drain
//! endpoint turns readiness off at once and refuses new sessions with DRAINING.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use contrail_protocol::client::{Agent, ClientConfig, Trust};
use contrail_protocol::{AgentId, ErrorCode};
use contrail_relay::cli::http_request;
use contrail_relay::Hooks;
use contrail_testsupport::{poll_until_async, ProcessGuard};

struct Spawned {
    guard: ProcessGuard,
    quic: std::net::SocketAddr,
    cert: std::path::PathBuf,
}

/// Starts the `contrail-relay` binary and reads its addresses from its first lines of stdout.
fn spawn_relay(dir: &std::path::Path, extra: &[&str]) -> Spawned {
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[[sinks]]\nname = \"file\"\ntype = \"file\"\nrequired = true\npath = \"{}\"\n",
            dir.join("out.ndjson").display()
        ),
    )
    .expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_contrail-relay"));
    cmd.arg("--config")
        .arg(&config)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .arg("--dev-cert-dir")
        .arg(dir.join("certs"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut guard = ProcessGuard::spawn("contrail-relay", &mut cmd).expect("spawn relay");
    let stdout = guard.child_mut().stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut cert = None;
    loop {
        let line = lines
            .next()
            .expect("relay printed its addresses")
            .expect("utf8 line");
        if let Some(path) = line.strip_prefix("development certificate (trust this in agents): ") {
            cert = Some(std::path::PathBuf::from(path));
        }
        if let Some(rest) = line.strip_prefix("contrail-relay listening on ") {
            let quic = rest
                .split_whitespace()
                .next()
                .expect("addr")
                .parse()
                .expect("socket addr");
            return Spawned {
                guard,
                quic,
                cert: cert.expect("dev cert line comes first"),
            };
        }
    }
}

fn seqs_in(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .expect("read file sink")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["seq"]
                .as_u64()
                .expect("seq")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_every_acked_frame_reaches_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = spawn_relay(dir.path(), &["--drain-deadline-ms", "5000"]);
    let mut cfg = ClientConfig::new(
        relay.quic,
        AgentId::new("drone-drain").expect("id"),
        Trust::CaFile(relay.cert.clone()),
    );
    cfg.reconnect_min = Duration::from_millis(200);
    let agent = Arc::new(Agent::connect(cfg).await.expect("agent connects"));
    let sender = agent.clone();
    let streaming = tokio::spawn(async move {
        let payload = [9u8; 200];
        // Streams until the relay goes away.
        while sender.send_many(256, |_| frame(&payload)).await.is_ok() {}
    });
    poll_until_async(Duration::from_secs(20), "5,000 frames acked", || async {
        agent.acked_seq() >= 5_000
    })
    .await;
    relay.guard.terminate().expect("SIGTERM");
    let acked_at_term = agent.acked_seq();
    poll_until_async(Duration::from_secs(10), "agent got Drain", || async {
        agent.stats().drains >= 1
    })
    .await;
    let status =
        tokio::task::spawn_blocking(move || relay.guard.wait_exit(Duration::from_secs(10)))
            .await
            .expect("join")
            .expect("relay exited within the drain deadline");
    assert!(status.success(), "clean exit after drain: {status:?}");
    let acked_final = agent.acked_seq();
    streaming.abort();

    let seqs = seqs_in(&dir.path().join("out.ndjson"));
    assert!(acked_final >= acked_at_term);
    assert!(
        seqs.len() as u64 >= acked_final,
        "every acked frame is in the file ({} lines, {acked_final} acked)",
        seqs.len()
    );
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "in order, exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_endpoint_needs_the_token_and_refuses_new_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.http.admin_token = Some("let-me-drain".into());
    let (spec, _rx) = channel_sink("chan", true, 1024);
    let relay = start_with(config, dir, vec![spec], Hooks::default()).await;
    let base = relay.http();
    let agent = relay.agent("drone-before").await;
    let req = |method: &'static str, path: &'static str, token: Option<&'static str>| {
        let base = base.clone();
        async move {
            tokio::task::spawn_blocking(move || http_request(&base, method, path, token))
                .await
                .expect("join")
                .expect("http")
        }
    };
    assert_eq!(req("GET", "/readyz", None).await, 200);
    assert_eq!(req("POST", "/v1/admin/drain", None).await, 401);
    assert_eq!(req("POST", "/v1/admin/drain", Some("wrong")).await, 401);
    assert_eq!(
        req("GET", "/readyz", None).await,
        200,
        "bad tokens change nothing"
    );
    assert!((200..300).contains(&req("POST", "/v1/admin/drain", Some("let-me-drain")).await));
    assert_eq!(
        req("GET", "/readyz", None).await,
        503,
        "readiness fails at once"
    );
    poll_until_async(
        Duration::from_secs(5),
        "connected agent told to drain",
        || async { agent.stats().drains >= 1 },
    )
    .await;
    let (ep, cfg) = relay.raw_client(contrail_protocol::ALPN_AGENT);
    let conn = raw::connect(&ep, cfg, relay.relay.local_addr()).await;
    assert_eq!(raw::close_code(&conn).await, Some(ErrorCode::Draining));
    let report = relay.relay.drain("test").await;
    assert!(report.within_deadline);
    assert!(report.sinks_not_flushed.is_empty());
}
