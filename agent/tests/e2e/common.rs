//! The harness: a relay with a required NDJSON file sink, reachable through an impairment
//! proxy (so a test can cut the link), and agents configured against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use contrail_agent::{client_config, Config, RunningAgent};
use contrail_relay::{Config as RelayConfig, Hooks, RelayBuilder, RunningRelay};
use contrail_testsupport::{poll_until_async, Impairment, ImpairmentProxy, SimPacket};

/// A relay, its sink file and a proxy in front of it.
pub struct Rig {
    pub relay: RunningRelay,
    pub proxy: ImpairmentProxy,
    pub sink: PathBuf,
    pub cert: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Rig {
    pub async fn start() -> Rig {
        Rig::start_with("").await
    }

    /// Like [`Rig::start`], with `extra` appended to the relay's TOML (e.g. `[commands]`).
    pub async fn start_with(extra: &str) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = dir.path().join("out/telemetry.ndjson");
        let text = format!(
            "listen = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[tls]\ndev_cert_dir = {:?}\n\
             [[sinks]]\nname = \"file\"\ntype = \"file\"\nrequired = true\nformat = \"ndjson\"\npath = {:?}\n{extra}",
            dir.path().join("certs").display().to_string(),
            sink.display().to_string(),
        );
        let mut config = RelayConfig::from_toml(&text).expect("relay config");
        config.limits.idle_timeout_ms = 3_000;
        config.limits.heartbeat_interval_ms = 500;
        let udp = std::net::UdpSocket::bind(config.listen).expect("bind relay udp");
        let http = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .expect("bind http");
        let relay = RelayBuilder::new(config)
            .hooks(Hooks::default())
            .start(udp, http)
            .await
            .expect("relay starts");
        let cert = relay.dev_cert_path().expect("dev cert").to_path_buf();
        let proxy = ImpairmentProxy::start(relay.local_addr(), Impairment::none()).await;
        Rig {
            relay,
            proxy,
            sink,
            cert,
            dir,
        }
    }

    /// An agent configuration (TOML) against this rig's proxy, with `sources` and `extra`
    /// lines appended under the top level.
    pub fn agent_toml(
        &self,
        agent_id: &str,
        sources: &[&str],
        spool: &Path,
        extra: &str,
    ) -> String {
        let mut t = format!(
            "agent_id = {agent_id:?}\n\
             [relay]\naddresses = [\"{}\"]\nca_file = {:?}\nconnect_timeout_ms = 1000\nreconnect_max_ms = 300\n\
             [spool]\ndir = {:?}\nfsync = \"never\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n",
            self.proxy.local_addr(),
            self.cert.display().to_string(),
            spool.display().to_string(),
        );
        for s in sources {
            t.push_str(&format!("[[sources]]\nurl = {s:?}\n"));
        }
        t.push_str(extra);
        t
    }

    /// Starts an in-process agent from TOML.
    pub async fn agent(&self, toml: &str) -> RunningAgent {
        let config = Config::from_toml(toml).expect("agent config parses");
        let v = config.validate().expect("agent config validates");
        let mut client = client_config(&v);
        client.reconnect_min = Duration::from_millis(20);
        RunningAgent::start(&v, client).await.expect("agent starts")
    }
}

/// One NDJSON record.
#[derive(Debug, Clone)]
pub struct Rec {
    pub agent_id: String,
    pub seq: u64,
    pub kind: u32,
    pub device_time: u64,
    pub flight_id: String,
    pub content_type: String,
    pub payload: Vec<u8>,
    /// The relay's decoded MAVLink (`"mavlink"` member of the NDJSON line), when present.
    pub mavlink: serde_json::Value,
}

/// Every complete record of the sink, in file order.
pub fn read_sink(path: &Path) -> Vec<Rec> {
    let mut out = Vec::new();
    for f in contrail_relay::sink::file::all_files(path) {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.split_inclusive('\n') {
            if !line.ends_with('\n') {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            out.push(Rec {
                agent_id: v["agent_id"].as_str().unwrap_or_default().to_string(),
                seq: v["seq"].as_u64().unwrap_or(0),
                kind: v["kind"].as_u64().unwrap_or(0) as u32,
                device_time: v["device_time"].as_u64().unwrap_or(0),
                flight_id: v["flight_id"].as_str().unwrap_or_default().to_string(),
                content_type: v["content_type"].as_str().unwrap_or_default().to_string(),
                payload: base64::engine::general_purpose::STANDARD
                    .decode(v["payload_b64"].as_str().unwrap_or_default())
                    .expect("payload base64"),
                mavlink: v["mavlink"].clone(),
            });
        }
    }
    out
}

/// Waits until the sink holds `n` records of `agent`.
pub async fn wait_records(path: &Path, agent: &str, n: usize, within: Duration) -> Vec<Rec> {
    poll_until_async(within, "records in the sink", async || {
        read_sink(path)
            .iter()
            .filter(|r| r.agent_id == agent)
            .count()
            >= n
    })
    .await;
    read_sink(path)
        .into_iter()
        .filter(|r| r.agent_id == agent)
        .collect()
}

/// Asserts that `recs` are exactly `packets`, in order, as frames 1..=n: raw bytes, kind,
/// content type.
pub fn assert_exactly(recs: &[Rec], packets: &[SimPacket]) {
    assert_eq!(
        recs.len(),
        packets.len(),
        "records in the sink vs packets the vehicle sent"
    );
    for (i, (r, p)) in recs.iter().zip(packets).enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "seq of record {i}");
        assert_eq!(r.kind, p.msg_id, "kind of record {i} ({})", p.name);
        assert_eq!(r.content_type, "application/x-mavlink");
        assert!(
            r.payload == p.raw,
            "raw bytes of record {i} ({}) differ",
            p.name
        );
        // The relay decoded it where it wrote JSON: name, ids, fields.
        assert_eq!(r.mavlink["name"], p.name, "decoded name of record {i}");
        assert_eq!(
            r.mavlink["message_id"], p.msg_id,
            "decoded id of record {i}"
        );
        assert!(
            r.mavlink["fields"].is_object(),
            "decoded fields of record {i} ({}): {}",
            p.name,
            r.mavlink
        );
    }
}

/// Sends packets as UDP datagrams to `to`, each datagram holding up to `per` packets, waiting
/// after every `batch` datagrams until the agent has taken all sent so far (`taken`), so the
/// kernel's socket buffer never overflows.
pub async fn send_udp(
    socket: &tokio::net::UdpSocket,
    to: std::net::SocketAddr,
    datagrams: &[Vec<u8>],
    taken: impl Fn() -> u64,
    per_packet: impl Fn(&[u8]) -> u64,
) {
    let mut sent = 0u64;
    for chunk in datagrams.chunks(64) {
        for d in chunk {
            socket.send_to(d, to).await.expect("udp send");
            sent += per_packet(d);
        }
        poll_until_async(
            Duration::from_secs(10),
            "the agent took the datagrams",
            async || taken() >= sent,
        )
        .await;
    }
}

/// Packets the agent took in (frames + filtered + rate limited + dropped at the queue).
pub fn taken(agent: &RunningAgent) -> u64 {
    use contrail_agent::stats::DropCause;
    let s = agent.stats();
    s.frames.load(std::sync::atomic::Ordering::Relaxed)
        + s.dropped(DropCause::Filtered)
        + s.dropped(DropCause::RateLimited)
        + s.dropped(DropCause::QueueFull)
}
