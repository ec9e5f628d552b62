//! Writes a screenshot of the fleet page (README's picture): an in-process relay with a required
//! sink and a few streaming agents, opened in headless Chromium.
//!
//!     cargo run -p contrail-relay --example fleet_page_screenshot -- docs/img/fleet-page.png
//!
//! (scripts/screenshot-fleet-page.sh runs exactly this.)

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use contrail_protocol::client::{Agent, ClientConfig, OutFrame, Trust};
use contrail_protocol::AgentId;
use contrail_relay::sink::{channel, SinkCommon, SinkSpec};
use contrail_relay::{Config, RelayBuilder};
use contrail_testsupport::Browser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "docs/img/fleet-page.png".into());
    let dir = tempfile::tempdir()?;
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        relay_id: Some("relay-eu-1".into()),
        region: Some("eu-west".into()),
        zone: Some("a".into()),
        ..Config::default()
    };
    config.http.listen = "127.0.0.1:0".parse()?;
    config.tls.dev_cert_dir = dir.path().join("certs");
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let sink_task = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let udp = std::net::UdpSocket::bind(config.listen)?;
    let http = tokio::net::TcpListener::bind(config.http.listen).await?;
    let relay = RelayBuilder::new(config)
        .sink(SinkSpec {
            common: SinkCommon::new("nats-main", true),
            factory: channel::factory(tx),
        })
        .start(udp, http)
        .await
        .context("relay starts")?;
    let addr = relay.local_addr();
    let cert = relay.certificate();
    let base = format!("http://{}", relay.http_addr().context("http addr")?);

    let stop = Arc::new(tokio::sync::Notify::new());
    let mut agents = Vec::new();
    for i in 0..12u32 {
        let cfg = ClientConfig::new(
            addr,
            AgentId::new(format!("drone-{:04}", 17 + i * 31))?,
            Trust::CaDer(vec![cert.clone()]),
        );
        let agent = Agent::connect(cfg).await?;
        let stop = stop.clone();
        agents.push(tokio::spawn(async move {
            let payload = vec![0u8; 64 + 16 * i as usize];
            let period = Duration::from_millis(20 + 10 * u64::from(i % 4));
            loop {
                let frame = OutFrame {
                    kind: 33,
                    flight_id: "survey-7",
                    payload: &payload,
                    content_type: "application/x-mavlink",
                    device_time: 0,
                };
                tokio::select! {
                    _ = stop.notified() => break,
                    r = agent.send(&frame) => { if r.is_err() { break; } }
                }
                tokio::time::sleep(period).await;
            }
            let _ = agent.close().await;
        }));
    }
    // Two commands waiting for drones that are not connected: the page's "commands in flight".
    if let Some(control) = relay.control() {
        let now = contrail_control::commands::now_ms();
        for (drone, kind) in [
            ("drone-0500", "update_agent"),
            ("drone-0733", "run_command"),
        ] {
            control
                .commands()
                .submit(contrail_control::commands::NewCommand {
                    drone_id: drone.into(),
                    kind: kind.into(),
                    payload: b"{}".to_vec(),
                    deadline_ms: now + 3_600_000,
                    submitted_by: "ops".into(),
                    idempotency_key: None,
                    body_hash: String::new(),
                    now_ms: now,
                })
                .await
                .context("queue a command")?;
        }
    }
    let browser = Browser::start(1400, 1260).await?;
    browser.goto(&format!("{base}/")).await?;
    // Let rates and charts fill in (a few live updates).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let png = browser.screenshot().await?;
    std::fs::write(&out, &png).with_context(|| format!("writing {out}"))?;
    println!("wrote {out} ({} bytes)", png.len());
    browser.close().await?;
    stop.notify_waiters();
    for a in agents {
        a.abort();
    }
    relay.drain("screenshot done").await;
    sink_task.abort();
    Ok(())
}
