//! Example agent with an on-disk spool: streams frames `1..=N` (payload = the seq as 8 bytes
//! big-endian), paced, and survives being killed: started again with the same spool directory it
//! resends what was not acked and continues after the last spooled frame.
//!
//! ```text
//! cargo run -p contrail-protocol --example spool_agent -- \
//!     127.0.0.1:4433 .contrail/dev/cert.pem drone-1 20000 /tmp/spool [frames-per-tick] [tick-ms]
//! ```
//!
//! Prints `registered resume_from=<seq> next=<seq>` once connected, `progress last=<seq>
//! acked=<seq>` after every tick, and `done acked=<seq>` when every frame up to N is acked.

use std::time::Duration;

use contrail_protocol::client::{Agent, ClientConfig, OutFrame, SpoolConfig, Trust};
use contrail_protocol::AgentId;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        return Err(
            "usage: spool_agent RELAY CA_PEM AGENT_ID N SPOOL_DIR [PER_TICK] [TICK_MS]".into(),
        );
    }
    let relay = args[0].parse()?;
    let agent_id = AgentId::new(args[2].clone())?;
    let total: u64 = args[3].parse()?;
    let per_tick: usize = args.get(5).map_or(Ok(100), |s| s.parse())?;
    let tick = Duration::from_millis(args.get(6).map_or(Ok(10), |s| s.parse())?);
    let mut config = ClientConfig::new(relay, agent_id, Trust::CaFile(args[1].clone().into()));
    config.connect_timeout = Duration::from_secs(5);
    config.spool = Some(SpoolConfig::new(args[4].clone(), 1 << 20));
    let agent = Agent::connect(config).await?;
    let resume = agent.session().map_or(0, |s| s.resume_from_seq);
    println!(
        "registered resume_from={resume} next={}",
        agent.last_seq() + 1
    );
    let mut ticker = tokio::time::interval(tick);
    while agent.last_seq() < total {
        ticker.tick().await;
        let want = ((total - agent.last_seq()) as usize).min(per_tick);
        let mut left = want;
        while left > 0 {
            let (_, n) = agent
                .send_many(left, |seq| OutFrame {
                    kind: 33,
                    flight_id: "flight-1",
                    payload: &[],
                    content_type: "application/octet-stream",
                    device_time: seq,
                })
                .await?;
            left -= n;
        }
        println!(
            "progress last={} acked={}",
            agent.last_seq(),
            agent.acked_seq()
        );
    }
    agent.flush().await?;
    println!("done acked={}", agent.acked_seq());
    agent.close().await?;
    Ok(())
}
