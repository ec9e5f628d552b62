//! Fault: the agent process is killed (SIGKILL) mid-stream and started again with the same
//! spool directory (issue 6, item 5). Every frame reaches the file sink exactly once, in order.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{start_with, test_config};
use crate::faults_support::*;
use contrail_relay::Hooks;
use contrail_testsupport::{poll_until_async, Impairment, ImpairmentProxy, ProcessGuard};

const AGENT: &str = "drone-spool";
const TOTAL: u64 = 20_000;

fn agent_cmd(
    bin: &std::path::Path,
    addr: std::net::SocketAddr,
    cert: &std::path::Path,
    spool: &std::path::Path,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .arg(addr.to_string())
        .arg(cert)
        .arg(AGENT)
        .arg(TOTAL.to_string())
        .arg(spool)
        // 100 frames every 10 ms: about 2 s for the whole stream, so a kill lands mid-stream.
        .args(["100", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

fn count_lines(path: &std::path::Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// Reads an agent's stdout lines on a thread (so the pipe never fills).
fn stdout_lines(guard: &mut ProcessGuard) -> std::sync::mpsc::Receiver<String> {
    let stdout = guard.child_mut().stdout.take().expect("agent stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// The agent streams through a proxy; once a quarter of the stream is in the sink the proxy
/// black-holes the path, so the agent keeps spooling frames the relay never acks (some it may
/// have received and written: their acks are lost). The agent is SIGKILLed with hundreds of
/// unacked frames in its spool, the path heals, and a new agent process on the same spool
/// resends them and finishes: the sink holds every frame exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_stream_resumes_from_its_spool_exactly_once() {
    let bin = tokio::task::spawn_blocking(|| example_binary("contrail-protocol", "spool_agent"))
        .await
        .expect("build example");
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = dir.path().join("out/telemetry.ndjson");
    let spool = dir.path().join("spool");
    let mut config = test_config(dir.path());
    config.limits.idle_timeout_ms = 2_000;
    config.limits.heartbeat_interval_ms = 500;
    config.sinks = vec![file_sink(&sink)];
    let relay = start_with(
        config,
        tempfile::tempdir().expect("tempdir"),
        vec![],
        Hooks::default(),
    )
    .await;
    let cert = relay
        .relay
        .dev_cert_path()
        .expect("dev certificate")
        .to_path_buf();
    let proxy = ImpairmentProxy::start(relay.relay.local_addr(), Impairment::none()).await;

    let started = std::time::Instant::now();
    let mut first = ProcessGuard::spawn(
        "spool_agent#1",
        &mut agent_cmd(&bin, proxy.local_addr(), &cert, &spool),
    )
    .expect("spawn agent");
    let lines = stdout_lines(&mut first);
    poll_until_async(
        Duration::from_secs(15),
        "a quarter of the stream in the sink",
        async || count_lines(&sink) as u64 >= TOTAL / 4,
    )
    .await;
    proxy.blackhole(true);
    // Only lines printed from now on count: earlier ones (still queued here) describe the
    // stream before the path went dark, when a lag of 500 is only acks in flight.
    let _stale = lines.try_iter().count();
    let (last, acked) = tokio::task::spawn_blocking(move || {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let line = lines
                .recv_timeout(left)
                .expect("agent reports 500+ unacked frames while the path is black-holed");
            if let (Some(last), Some(acked)) = (field(&line, "last"), field(&line, "acked")) {
                if last - acked >= 500 {
                    return (last, acked);
                }
            }
        }
    })
    .await
    .expect("progress");
    first.kill_hard();
    let in_sink_at_kill = count_lines(&sink) as u64;
    assert!(last < TOTAL, "killed mid-stream");
    proxy.blackhole(false);

    let mut second = ProcessGuard::spawn(
        "spool_agent#2",
        &mut agent_cmd(&bin, proxy.local_addr(), &cert, &spool),
    )
    .expect("spawn agent again");
    let lines = stdout_lines(&mut second);
    let (status, out) = tokio::task::spawn_blocking(move || {
        let status = second.wait_exit(Duration::from_secs(15));
        // The process has exited: read until its stdout's reader thread hits EOF (bounded), so
        // the last line is not lost to a race with that thread.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(_) => break,
            }
        }
        (status, out)
    })
    .await
    .expect("wait");
    let registered = out
        .iter()
        .find(|l| l.starts_with("registered"))
        .cloned()
        .unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "restarted agent finished: {status:?}, output {:?}",
        out.last()
    );
    assert_eq!(
        out.last().map(String::as_str),
        Some(format!("done acked={TOTAL}").as_str())
    );
    let resume_from = field(&registered, "resume_from").expect("resume_from");
    let next = field(&registered, "next").expect("next");
    assert!(
        next > last,
        "the restarted agent continued after its last spooled frame: {registered} (last seen {last})"
    );
    assert!(
        resume_from < last,
        "frames were still unacked at the kill and came from the spool: {registered}"
    );

    let (lines, partial) = read_ndjson(&sink);
    assert_eq!(partial, 0);
    let by_agent = seqs_by_agent(&lines);
    assert_exactly_once_in_order(AGENT, &by_agent[AGENT], TOTAL);
    assert!(
        lines.iter().all(|l| l.device_time == l.seq),
        "each seq carries the frame built for it"
    );
    let leftover: Vec<_> = std::fs::read_dir(&spool)
        .expect("spool dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .collect();
    assert!(leftover.is_empty(), "a fully acked spool holds no segment");
    eprintln!(
        "spool kill test: killed at last={last} acked={acked} ({in_sink_at_kill} in the sink); \
         restart: `{registered}`; total {:?}",
        started.elapsed()
    );
}

/// The spool is bounded: with the path black-holed, `send` stops returning once the spool holds
/// `max_bytes` (well before the 1024-frame credit window would stop it), the directory never
/// exceeds the bound, and everything flows again once acks return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_makes_send_wait_for_acks() {
    use contrail_protocol::client::{Agent, ClientConfig, SpoolConfig, Trust};
    use contrail_protocol::AgentId;
    const MAX: u64 = 16 * 1024;
    const N: u64 = 3_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = dir.path().join("out/telemetry.ndjson");
    let mut config = test_config(dir.path());
    config.sinks = vec![file_sink(&sink)];
    let relay = start_with(
        config,
        tempfile::tempdir().expect("tempdir"),
        vec![],
        Hooks::default(),
    )
    .await;
    let proxy = ImpairmentProxy::start(relay.relay.local_addr(), Impairment::none()).await;
    let spool = dir.path().join("spool");
    let mut c = ClientConfig::new(
        proxy.local_addr(),
        AgentId::new("drone-bounded").expect("id"),
        Trust::CaDer(vec![relay.relay.certificate()]),
    );
    c.spool = Some(SpoolConfig::new(&spool, MAX));
    let agent = std::sync::Arc::new(Agent::connect(c).await.expect("connect"));
    agent.send(&crate::common::frame(b"x")).await.expect("send");
    agent.flush().await.expect("acked");

    proxy.blackhole(true);
    let waits_before = agent.stats().credit_waits;
    let sender = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut left = N;
            while left > 0 {
                let (_, n) = agent
                    .send_many(left as usize, |_| crate::common::frame(b"bounded"))
                    .await
                    .expect("send");
                left -= n as u64;
            }
            agent.flush().await.expect("acked after the path heals");
        })
    };
    poll_until_async(
        Duration::from_secs(10),
        "send to block on the full spool",
        async || agent.stats().credit_waits > waits_before,
    )
    .await;
    let spool_bytes: u64 = std::fs::read_dir(&spool)
        .expect("spool dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let inflight = agent.last_seq() - agent.acked_seq();
    assert!(spool_bytes <= MAX, "spool within its bound: {spool_bytes}");
    assert!(
        inflight < 1024,
        "the spool, not the credit window, stopped send ({inflight} unacked)"
    );
    assert!(!sender.is_finished());
    proxy.blackhole(false);
    tokio::time::timeout(Duration::from_secs(15), sender)
        .await
        .expect("stream finished after the path healed")
        .expect("sender");
    assert_eq!(agent.acked_seq(), N + 1);
    let (lines, _) = read_ndjson(&sink);
    assert_exactly_once_in_order(
        "drone-bounded",
        &seqs_by_agent(&lines)["drone-bounded"],
        N + 1,
    );
    eprintln!("bounded spool: blocked at {inflight} unacked frames, {spool_bytes} bytes on disk");
}
