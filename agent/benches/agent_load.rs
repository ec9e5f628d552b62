//! The agent under a vehicle's load: the release `contrail-agent` binary reads a simulated
//! vehicle's mix at 1,000 MAVLink messages/s over UDP for 20 s and streams to an in-process relay
//! (reachable, NDJSON file sink). Reports the agent process's CPU (user + system, from
//! /proc/PID/stat) per message and as a share of one core, and its RSS (current and peak).
//!
//! `cargo bench -p contrail-agent --bench agent_load [-- SECONDS RATE]`

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use contrail_relay::{Config as RelayConfig, RelayBuilder};
use contrail_testsupport::SimVehicle;

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name: state is 3rd; utime 14th, stime 15th (1-based).
    let after = stat.rsplit(')').next().expect("stat format");
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("status field")
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(20);
    let rate: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = dir.path().join("out/t.ndjson");
        let text = format!(
            "listen = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[tls]\ndev_cert_dir = {:?}\n\
             [[sinks]]\nname = \"file\"\ntype = \"file\"\nrequired = true\nformat = \"ndjson\"\npath = {:?}\n",
            dir.path().join("certs").display().to_string(),
            sink.display().to_string()
        );
        let config = RelayConfig::from_toml(&text).expect("relay config");
        let udp = std::net::UdpSocket::bind(config.listen).expect("udp");
        let http = tokio::net::TcpListener::bind(config.http.listen).await.expect("http");
        let relay = RelayBuilder::new(config).start(udp, http).await.expect("relay");
        let cert = relay.dev_cert_path().expect("cert").to_path_buf();
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let toml = format!(
            "agent_id = \"bench-1\"\n[relay]\naddresses = [\"{}\"]\nca_file = {:?}\n\
             [spool]\ndir = {:?}\n[http]\nlisten = \"\"\n[[sources]]\nurl = \"udpout:{}\"\n",
            relay.local_addr(),
            cert.display().to_string(),
            dir.path().join("spool").display().to_string(),
            socket.local_addr().expect("addr"),
        );
        let cfg = dir.path().join("agent.toml");
        std::fs::write(&cfg, toml).expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_contrail-agent"))
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("agent: {l}");
            }
        });
        let mut buf = [0u8; 300];
        let (_, to) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
            .await
            .expect("heartbeat")
            .expect("recv");
        let mut vehicle = SimVehicle::new(1);
        // Warm up 2 s, then measure.
        let tick = Duration::from_millis(10);
        let per_tick = (rate / 100).max(1) as usize;
        let mut pending = Vec::new();
        let mut interval = tokio::time::interval(tick);
        let mut sent = 0u64;
        let mut measure_from: Option<(Instant, u64, u64)> = None;
        let total_ticks = (secs + 2) * 100;
        for i in 0..total_ticks {
            if i == 200 {
                measure_from = Some((Instant::now(), cpu_ticks(pid), sent));
            }
            interval.tick().await;
            while pending.len() < per_tick {
                pending.extend(vehicle.advance(100).into_iter().map(|p| p.raw));
            }
            for p in pending.drain(..per_tick) {
                socket.send_to(&p, to).await.expect("send");
                sent += 1;
            }
        }
        let (t0, c0, s0) = measure_from.expect("measured");
        let wall = t0.elapsed().as_secs_f64();
        let ticks = (cpu_ticks(pid) - c0) as f64;
        let hz = 100.0; // USER_HZ on Linux
        let cpu_s = ticks / hz;
        let msgs = (sent - s0) as f64;
        let rss = status_kib(pid, "VmRSS:");
        let hwm = status_kib(pid, "VmHWM:");
        println!(
            "rate {:.0} msg/s for {wall:.1} s: agent CPU {:.2}% of one core, {:.1} µs/message; RSS {:.1} MiB (peak {:.1} MiB)",
            msgs / wall,
            100.0 * cpu_s / wall,
            cpu_s * 1e6 / msgs,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
        let _ = child.kill();
        let _ = child.wait();
        drop(relay);
    });
}
