//! Example agent: streams N frames to a relay and waits until all are acked.
//!
//! ```text
//! cargo run -p contrail-protocol --example agent -- 127.0.0.1:4433 .contrail/dev/cert.pem drone-1 100000
//! ```

use std::time::Instant;

use contrail_protocol::client::{Agent, ClientConfig, OutFrame, Trust};
use contrail_protocol::AgentId;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let relay = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:4433".into())
        .parse()?;
    let ca = args
        .next()
        .unwrap_or_else(|| ".contrail/dev/cert.pem".into());
    let agent_id = AgentId::new(args.next().unwrap_or_else(|| "drone-1".into()))?;
    let count: u64 = args.next().unwrap_or_else(|| "100000".into()).parse()?;
    let agent =
        Agent::connect(ClientConfig::new(relay, agent_id, Trust::CaFile(ca.into()))).await?;
    let session = agent.session();
    eprintln!("registered: {session:?}");
    let payload = [7u8; 256];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < count {
        let want = (count - sent).min(1024) as usize;
        let (_, n) = agent
            .send_many(want, |_| OutFrame {
                kind: 33,
                flight_id: "flight-1",
                payload: &payload,
                content_type: "application/octet-stream",
                device_time: 0,
            })
            .await?;
        sent += n as u64;
    }
    agent.flush().await?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "sent and acked {count} frames in {secs:.2}s ({:.0} frames/s); stats {:?}",
        count as f64 / secs,
        agent.stats()
    );
    agent.close().await?;
    Ok(())
}
