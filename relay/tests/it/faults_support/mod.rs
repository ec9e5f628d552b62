//! Helpers shared by the `faults_*` tests: file-sink config and read-back, exactly-once checks,
//! relay child processes, and the `spool_agent` example binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use contrail_relay::config::SinkConfig;
use contrail_relay::Config;
use contrail_testsupport::ProcessGuard;

/// A required NDJSON file sink writing to `path` (built from TOML, as an operator writes it).
pub fn file_sink(path: &Path) -> SinkConfig {
    let text = format!(
        "[[sinks]]\nname = \"file\"\ntype = \"file\"\nrequired = true\nformat = \"ndjson\"\npath = {:?}\n",
        path.display().to_string()
    );
    let mut c = Config::from_toml(&text).expect("file sink TOML parses");
    c.sinks.remove(0)
}

/// One NDJSON record's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub agent_id: String,
    pub seq: u64,
    pub device_time: u64,
}

/// Every record of an NDJSON file sink (rotated files first), in file order. A partial last
/// line (a writer killed mid-write) is skipped and reported in the second value.
pub fn read_ndjson(path: &Path) -> (Vec<Line>, usize) {
    let mut out = Vec::new();
    let mut partial = 0;
    for f in contrail_relay::sink::file::all_files(path) {
        let text = std::fs::read_to_string(&f).expect("read sink file");
        for line in text.split_inclusive('\n') {
            if !line.ends_with('\n') {
                partial += 1;
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line).expect("valid json line");
            out.push(Line {
                agent_id: v["agent_id"].as_str().expect("agent_id").to_string(),
                seq: v["seq"].as_u64().expect("seq"),
                device_time: v["device_time"].as_u64().unwrap_or(0),
            });
        }
    }
    (out, partial)
}

/// Seqs per agent, in file order.
pub fn seqs_by_agent(lines: &[Line]) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for l in lines {
        m.entry(l.agent_id.clone()).or_default().push(l.seq);
    }
    m
}

/// Panics unless `seqs` is exactly `1..=n` in order (no loss, no duplicate, no reordering).
pub fn assert_exactly_once_in_order(agent: &str, seqs: &[u64], n: u64) {
    let mut seen = std::collections::HashSet::new();
    let dups: Vec<u64> = seqs.iter().copied().filter(|s| !seen.insert(*s)).collect();
    assert!(
        dups.is_empty(),
        "{agent}: {} duplicate frames, first {:?}",
        dups.len(),
        &dups[..dups.len().min(10)]
    );
    let missing: Vec<u64> = (1..=n).filter(|s| !seen.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{agent}: {} frames missing, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(seqs.len() as u64, n, "{agent}: frame count");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{agent}: frames out of order"
    );
}

/// The profile directory of this test binary (`target/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// Builds (if needed) and returns the path of an example binary of another workspace package.
pub fn example_binary(package: &str, name: &str) -> PathBuf {
    let profile = profile_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--quiet", "-p", package, "--example", name]);
    if profile.file_name().and_then(|n| n.to_str()) == Some("release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build for the example");
    assert!(status.success(), "building example {name} failed");
    let bin = profile.join("examples").join(name);
    assert!(bin.exists(), "{} not found", bin.display());
    bin
}

/// A relay running as a child process (`contrail-relay`), killable with SIGKILL.
pub struct ChildRelay {
    pub process: ProcessGuard,
    pub id: String,
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub sink_path: PathBuf,
    pub log: PathBuf,
}

/// Starts `contrail-relay` with a file sink in `dir`, `relay_id`, and optionally Redis routing.
/// Short idle timeouts so agents notice a dead relay within about a second.
pub fn spawn_relay(dir: &Path, relay_id: &str, redis: Option<SocketAddr>) -> ChildRelay {
    std::fs::create_dir_all(dir).expect("relay dir");
    let sink_path = dir.join("telemetry.ndjson");
    let config_path = dir.join("relay.toml");
    let toml = format!(
        "[limits]\nidle_timeout_ms = 1500\nheartbeat_interval_ms = 300\nhandshake_timeout_ms = 2000\n\
         [redis]\nttl_secs = 10\n\
         [[sinks]]\nname = \"file\"\ntype = \"file\"\nrequired = true\nformat = \"ndjson\"\npath = {:?}\n",
        sink_path.display().to_string()
    );
    std::fs::write(&config_path, toml).expect("write relay config");
    let log = dir.join("relay.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_contrail-relay"));
    cmd.env_clear()
        .arg("--config")
        .arg(&config_path)
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--dev-cert-dir")
        .arg(dir.join("certs"))
        .args(["--relay-id", relay_id, "--log", "info"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("relay log file"));
    if let Some(r) = redis {
        cmd.args(["--redis-addr", &r.to_string()]);
    }
    let r = spawn_reporting(relay_id, &mut cmd, &log, Duration::from_secs(15));
    ChildRelay {
        process: r.process,
        id: relay_id.to_string(),
        addr: r.addr,
        cert: r.cert,
        sink_path,
        log,
    }
}

/// The last 40 lines of a relay's log, for a failure message.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A relay process and what it printed on stdout before serving.
pub struct Reported {
    pub process: ProcessGuard,
    pub addr: SocketAddr,
    /// `http://host:port` of the admin API.
    pub http: String,
    pub cert: PathBuf,
}

/// Spawns `cmd` (`contrail-relay` with `--dev-cert-dir`, stdout piped, stderr to `log`) and waits
/// up to `wait` for the lines that name its development certificate and its addresses. Stdout is
/// drained for the relay's whole life (a closed pipe would fail its prints).
pub fn spawn_reporting(id: &str, cmd: &mut Command, log: &Path, wait: Duration) -> Reported {
    let mut process = ProcessGuard::spawn(id, cmd).expect("spawn contrail-relay");
    let stdout = process.child_mut().stdout.take().expect("relay stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let (mut cert, mut addrs) = (None, None);
    let deadline = std::time::Instant::now() + wait;
    while addrs.is_none() || cert.is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!("{id} did not report its addresses; log:\n{}", log_tail(log))
        });
        if let Some(p) = line.strip_prefix("development certificate (trust this in agents): ") {
            cert = Some(PathBuf::from(p.trim()));
        } else if let Some(rest) = line.strip_prefix("contrail-relay listening on ") {
            let quic: SocketAddr = rest
                .split_whitespace()
                .next()
                .expect("quic address")
                .parse()
                .expect("socket address");
            let http = rest.rsplit(' ').next().expect("http address").to_string();
            addrs = Some((quic, format!("http://{http}")));
        }
    }
    let (addr, http) = addrs.expect("addresses");
    Reported {
        process,
        addr,
        http,
        cert: cert.expect("certificate path"),
    }
}
