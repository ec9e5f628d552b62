//! Spool write cost per message, per fsync policy: what one `send` of a 40-byte MAVLink
//! ATTITUDE frame costs an offline agent (encode + append + flush, and the sync the policy
//! asks for), one message per call as the agent's pipeline does at low rates, and in batches of
//! 64 as it does under load. The relay is unreachable, so nothing is acked and every frame stays
//! in the spool.
//!
//! `cargo bench -p contrail-agent --bench spool_write` (the spool lives in `$TMPDIR`: put it on
//! the disk you care about).

use std::time::{Duration, Instant};

use contrail_protocol::client::{Agent, ClientConfig, FsyncPolicy, OutFrame, SpoolConfig, Trust};
use contrail_protocol::AgentId;

const PACKET: [u8; 40] = [0xFD; 40];

/// A certificate to trust (the agent needs one to start; it never connects).
fn cert() -> rustls_pki_types::CertificateDer<'static> {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    c.cert.der().clone()
}

async fn run(policy: FsyncPolicy, batch: usize, n: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nobody listens on the discard port: the agent stays offline.
    let mut c = ClientConfig::new(
        "127.0.0.1:9".parse().expect("addr"),
        AgentId::new("bench").expect("id"),
        Trust::CaDer(vec![cert()]),
    );
    let mut spool = SpoolConfig::new(dir.path().join("spool"), 1 << 30);
    spool.fsync = policy;
    c.spool = Some(spool);
    let agent = match Agent::spawn(c) {
        Ok(a) => a,
        Err(e) => panic!("agent: {e}"),
    };
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let want = batch.min(left);
        let (_, sent) = agent
            .send_many(want, |seq| OutFrame {
                kind: 30,
                flight_id: "drone-1-1-1764000000000",
                payload: &PACKET,
                content_type: "application/x-mavlink",
                device_time: seq,
            })
            .await
            .expect("send");
        left -= sent;
    }
    start.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("policy              batch  messages  µs/message");
    for (name, policy, n) in [
        ("never", FsyncPolicy::Never, 100_000),
        (
            "interval(1s)",
            FsyncPolicy::Interval(Duration::from_secs(1)),
            100_000,
        ),
        ("always", FsyncPolicy::Always, 2_000),
    ] {
        for batch in [1usize, 64] {
            let n = if batch == 1 { n } else { n * 4 };
            let took = rt.block_on(run(policy, batch, n));
            println!(
                "{name:<18} {batch:>6} {n:>9} {:>11.2}",
                took.as_secs_f64() * 1e6 / n as f64
            );
        }
    }
}
