//! Shared harness for relay integration tests: an in-process relay on loopback port 0 with a
//! generated certificate in a temp dir, and agents that trust exactly that certificate.
#![allow(dead_code)]

pub mod raw;

use std::sync::Arc;
use std::time::Duration;

use contrail_protocol::client::{Agent, ClientConfig, OutFrame, Trust};
use contrail_protocol::AgentId;
use contrail_relay::sink::{channel, SinkBatch, SinkCommon, SinkSpec};
use contrail_relay::{Config, Hooks, RelayBuilder, RunningRelay};
use tokio::sync::mpsc;

/// A relay under test and the temp dir holding its certificate and files.
pub struct TestRelay {
    pub relay: RunningRelay,
    pub dir: tempfile::TempDir,
}

impl TestRelay {
    /// Agent settings for `agent_id` against this relay.
    pub fn client_config(&self, agent_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new(
            self.relay.local_addr(),
            AgentId::new(agent_id).expect("valid agent id"),
            Trust::CaDer(vec![self.relay.certificate()]),
        );
        c.connect_timeout = Duration::from_secs(5);
        c
    }

    /// Connects a registered agent.
    pub async fn agent(&self, agent_id: &str) -> Agent {
        Agent::connect(self.client_config(agent_id))
            .await
            .expect("agent connects and registers")
    }

    /// A raw quinn client endpoint + config trusting the relay, with ALPN `alpn`.
    pub fn raw_client(&self, alpn: &[u8]) -> (quinn::Endpoint, quinn::ClientConfig) {
        let tls = contrail_protocol::client::config::rustls_client_config(
            &Trust::CaDer(vec![self.relay.certificate()]),
            None,
            alpn,
        )
        .expect("tls config");
        let cfg = contrail_protocol::client::config::quinn_client_config(
            tls,
            Duration::from_secs(10),
            Some(Duration::from_secs(3)),
            0,
            Duration::ZERO,
            contrail_protocol::client::config::DEFAULT_MAX_UDP_PAYLOAD,
        )
        .expect("quinn config");
        let ep =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
        (ep, cfg)
    }

    /// The HTTP base URL.
    pub fn http(&self) -> String {
        format!("http://{}", self.relay.http_addr().expect("http addr"))
    }
}

/// Config for tests: loopback port 0, cert in `dir`, quick timeouts.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Config::default()
    };
    c.http.listen = "127.0.0.1:0".parse().expect("addr");
    c.tls.dev_cert_dir = dir.join("certs");
    c.limits.handshake_timeout_ms = 2_000;
    c.drain.deadline_ms = 5_000;
    c
}

/// Starts a relay with `config` plus `sinks` and `hooks`.
pub async fn start_with(
    config: Config,
    dir: tempfile::TempDir,
    sinks: Vec<SinkSpec>,
    hooks: Hooks,
) -> TestRelay {
    let udp = std::net::UdpSocket::bind(config.listen).expect("bind udp");
    let http = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .expect("bind http");
    let mut b = RelayBuilder::new(config).hooks(hooks);
    for s in sinks {
        b = b.sink(s);
    }
    let relay = b.start(udp, http).await.expect("relay starts");
    TestRelay { relay, dir }
}

/// A channel sink spec and its receiver.
pub fn channel_sink(
    name: &str,
    required: bool,
    capacity: usize,
) -> (SinkSpec, mpsc::Receiver<Arc<SinkBatch>>) {
    let (tx, rx) = mpsc::channel(capacity);
    (
        SinkSpec {
            common: SinkCommon::new(name, required),
            factory: channel::factory(tx),
        },
        rx,
    )
}

/// A relay with a required channel sink (its receiver keeps it open), `max_inflight = 64`
/// (ack threshold 16) and `ack_delay_ms = delay_ms`.
pub async fn relay_with_ack_delay(delay_ms: u64) -> (TestRelay, mpsc::Receiver<Arc<SinkBatch>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.limits.max_inflight = 64;
    config.limits.ack_delay_ms = delay_ms;
    let (spec, rx) = channel_sink("chan", true, 1024);
    (
        start_with(config, dir, vec![spec], Hooks::default()).await,
        rx,
    )
}

/// The test binary's process-wide Prometheus recorder (installed on first use: call it before
/// starting a relay whose metrics the test reads).
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install the test binary's metrics recorder")
    })
}

/// Sum of the series of `metric` whose labels contain `label` (e.g. `result="resumed"`);
/// 0 before the first increment.
pub fn metric_sum(metric: &str, label: &str) -> f64 {
    metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0 // an empty float sum is -0.0; report 0 in assertion messages
}

/// Starts a relay whose only sink is a required channel sink.
pub async fn start_with_channel(capacity: usize) -> (TestRelay, mpsc::Receiver<Arc<SinkBatch>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path());
    let (spec, rx) = channel_sink("chan", true, capacity);
    (
        start_with(config, dir, vec![spec], Hooks::default()).await,
        rx,
    )
}

/// A 256-byte test frame.
pub fn frame(payload: &[u8]) -> OutFrame<'_> {
    OutFrame {
        kind: 33,
        flight_id: "flight-1",
        payload,
        content_type: "application/octet-stream",
        device_time: 0,
    }
}

/// Sends `count` frames as fast as credits allow.
pub async fn send_n(agent: &Agent, count: u64, payload: &[u8]) {
    let mut sent = 0u64;
    while sent < count {
        let want = (count - sent).min(512) as usize;
        let (_, n) = agent
            .send_many(want, |_| frame(payload))
            .await
            .expect("send");
        sent += n as u64;
    }
}

/// Drains a channel sink receiver into (agent, seq) pairs until `want` frames were seen or the
/// deadline passes.
pub async fn collect_frames(
    rx: &mut mpsc::Receiver<Arc<SinkBatch>>,
    want: usize,
    deadline: Duration,
) -> Vec<(String, u64)> {
    let mut out = Vec::with_capacity(want);
    let end = tokio::time::Instant::now() + deadline;
    while out.len() < want {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(b)) => {
                for f in b.frames.iter() {
                    out.push((b.origin.agent_id.to_string(), f.seq()));
                }
            }
            _ => break,
        }
    }
    out
}
