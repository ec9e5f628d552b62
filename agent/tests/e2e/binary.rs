//! The `contrail-agent` binary as a process: killed with SIGKILL mid-flight it loses nothing it
//! had spooled; a 20,000 messages/s burst keeps its memory bounded.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use contrail_testsupport::{poll_until_async, ProcessGuard, SimPacket, SimVehicle};

struct Proc {
    guard: ProcessGuard,
    http: std::net::SocketAddr,
    /// The vehicle's end of the agent's `udpout:` source.
    socket: tokio::net::UdpSocket,
    /// The agent's `udpout:` source address (learnt from its heartbeat).
    mav: std::net::SocketAddr,
}

/// Starts the binary as agent `agent_id` on spool `spool`, with one `udpout:` source pointing
/// at a socket of its own (a restarted agent's heartbeats never mix with its predecessor's);
/// returns once its HTTP address is logged and its first heartbeat arrived.
async fn spawn(rig: &Rig, agent_id: &str, spool: &std::path::Path, name: &str) -> Proc {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("udpout:{}", socket.local_addr().expect("addr"));
    let toml = rig.agent_toml(agent_id, &[url.as_str()], spool, "");
    let path = rig.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, toml).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_contrail-agent"));
    cmd.env_clear()
        .env("RUST_LOG", "info")
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut guard = ProcessGuard::spawn(name, &mut cmd).expect("spawn contrail-agent");
    let stdout = guard.child_mut().stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let http = tokio::task::spawn_blocking(move || loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the agent logs its start");
        if let Some(rest) = line.split("http=Some(").nth(1) {
            let addr = rest.split(')').next().expect("addr");
            return addr.parse::<std::net::SocketAddr>().expect("http addr");
        }
    })
    .await
    .expect("reader");
    let mut buf = [0u8; 300];
    let (_, mav) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .expect("a heartbeat from the agent's udpout source")
        .expect("recv");
    Proc {
        guard,
        http,
        socket,
        mav,
    }
}

async fn metric(http: std::net::SocketAddr, name: &str) -> u64 {
    let Ok(r) = reqwest::get(format!("http://{http}/metrics")).await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Sends packets to the process, `batch` at a time, waiting until it spooled them.
async fn feed(p: &Proc, packets: &[SimPacket], base: u64) {
    let mut sent = base;
    for chunk in packets.chunks(64) {
        for pk in chunk {
            p.socket.send_to(&pk.raw, p.mav).await.expect("send");
        }
        sent += chunk.len() as u64;
        let http = p.http;
        poll_until_async(
            Duration::from_secs(10),
            "the agent spooled the packets",
            async || metric(http, "contrail_agent_frames_total").await >= sent,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_agent_loses_nothing_it_spooled_and_resumes_exactly_once() {
    let rig = Rig::start().await;
    let spool = rig.dir.path().join("spool");
    let mut vehicle = SimVehicle::new(1);
    let first = vehicle.advance(2_000);
    let dark = vehicle.advance(3_000);
    let last = vehicle.advance(2_000);

    let mut p = spawn(&rig, "drone-kill", &spool, "agent#1").await;
    feed(&p, &first, 0).await;
    wait_records(
        &rig.sink,
        "drone-kill",
        first.len(),
        Duration::from_secs(20),
    )
    .await;
    // The link goes dark: frames pile up in the spool, unacked; then SIGKILL.
    rig.proxy.blackhole(true);
    feed(&p, &dark, first.len() as u64).await;
    assert!(
        metric(p.http, "contrail_agent_spool_frames").await > 0,
        "frames wait in the spool when the agent is killed"
    );
    p.guard.kill_hard();
    rig.proxy.blackhole(false);

    // Restarted on the same spool: resends what was not acked, then carries on.
    let p2 = spawn(&rig, "drone-kill", &spool, "agent#2").await;
    feed(&p2, &last, 0).await;
    let all: Vec<_> = first.iter().chain(&dark).chain(&last).cloned().collect();
    let recs = wait_records(&rig.sink, "drone-kill", all.len(), Duration::from_secs(30)).await;
    assert_exactly(&recs, &all);
    drop(p2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_20000_messages_a_second_keeps_memory_bounded() {
    let rig = Rig::start().await;
    let spool = rig.dir.path().join("spool");
    let p = spawn(&rig, "drone-burst", &spool, "agent-burst").await;
    let packets = SimVehicle::new(1).advance(256_000);
    assert!(packets.len() >= 20_000);
    let packets = &packets[..20_000];
    // 200 packets every 10 ms: 20,000 a second, for one second.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for chunk in packets.chunks(200) {
        tick.tick().await;
        for pk in chunk {
            p.socket.send_to(&pk.raw, p.mav).await.expect("send");
        }
    }
    let http = p.http;
    // Everything the agent took (the kernel may drop datagrams in a burst) reaches the relay:
    // wait until what it took, what the relay acked and what the sink holds agree.
    let sink = rig.sink.clone();
    poll_until_async(Duration::from_secs(60), "the agent settles", async || {
        let frames = metric(http, "contrail_agent_frames_total").await;
        let acked = metric(http, "contrail_agent_frames_acked").await;
        let in_sink = read_sink(&sink).len() as u64;
        frames > 0 && acked == frames && in_sink == frames
    })
    .await;
    let frames = metric(http, "contrail_agent_frames_total").await;
    let recs = read_sink(&rig.sink);
    let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=frames).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.guard.id())).expect("status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(
        peak_kib < 64 * 1024,
        "peak RSS {peak_kib} KiB over a 20,000 msg/s burst (bound: 64 MiB)"
    );
    eprintln!("burst: {frames} frames, peak RSS {peak_kib} KiB");
}
