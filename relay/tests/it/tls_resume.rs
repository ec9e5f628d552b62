//! TLS session resumption: an agent that reconnects brings back the relay's stateless session
//! ticket and resumes (counted in `contrail_tls_tickets_total{result="resumed"}`); with
//! `tls.session_tickets = 0`, or an agent with `tls_resumption` off, every connect is a full
//! handshake. Frames cross the reconnects exactly once either way.
//!
//! One test function: the counter is process-wide, so the cases run one after the other.

use std::time::Duration;

use crate::common::*;
use contrail_protocol::client::Agent;
use contrail_relay::Hooks;
use contrail_testsupport::poll_until_async;

const DEADLINE: Duration = Duration::from_secs(10);

/// `contrail_tls_tickets_total{result="<result>"}` (0 before the first increment).
fn tickets(result: &str) -> f64 {
    metric_sum(
        "contrail_tls_tickets_total",
        &format!("result=\"{result}\""),
    )
}

/// Cuts the agent's connection `times` times, sending a round of frames before each cut, and
/// waits until it registered again each time; then checks every frame arrived exactly once.
async fn reconnect_rounds(
    agent: &Agent,
    rx: &mut tokio::sync::mpsc::Receiver<std::sync::Arc<contrail_relay::sink::SinkBatch>>,
    times: u64,
) {
    for round in 0..times {
        send_n(agent, 100, &[round as u8; 64]).await;
        agent.flush().await.expect("acked before the cut");
        let before = agent.session().map(|s| s.session_id).unwrap_or_default();
        agent.drop_connection();
        poll_until_async(DEADLINE, "the agent registers a new session", async || {
            agent.session().is_some_and(|s| s.session_id != before)
        })
        .await;
    }
    send_n(agent, 100, &[0xff; 64]).await;
    agent.flush().await.expect("acked after the reconnects");
    let total = 100 * (times + 1);
    let frames = collect_frames(rx, total as usize, DEADLINE).await;
    let seqs: Vec<u64> = frames.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "exactly once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_resume_tls_only_with_tickets_on_both_sides() {
    metrics();

    // Default relay (one stateless ticket per handshake), default agent: each reconnect resumes.
    let (relay, mut rx) = start_with_channel(4096).await;
    let agent = relay.agent("drone-resumes").await;
    let (resumed0, refused0) = (tickets("resumed"), tickets("refused"));
    reconnect_rounds(&agent, &mut rx, 3).await;
    assert!(
        tickets("resumed") - resumed0 >= 3.0,
        "three reconnects, three resumptions (resumed {} → {})",
        resumed0,
        tickets("resumed")
    );
    assert_eq!(tickets("refused"), refused0, "no ticket was refused");

    // The same relay, an agent that keeps no tickets: full handshakes only.
    let mut config = relay.client_config("drone-no-tickets");
    config.tls_resumption = false;
    let agent = Agent::connect(config).await.expect("agent connects");
    let resumed1 = tickets("resumed");
    // Its frames go to the same channel: drain the first agent's leftovers first.
    while rx.try_recv().is_ok() {}
    reconnect_rounds(&agent, &mut rx, 2).await;
    assert_eq!(
        tickets("resumed"),
        resumed1,
        "an agent without tickets never resumes"
    );
    drop(agent);
    drop(relay);

    // A relay that sends no tickets: a default agent has nothing to bring back.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.tls.session_tickets = 0;
    let (spec, mut rx) = channel_sink("chan", true, 4096);
    let relay = start_with(config, dir, vec![spec], Hooks::default()).await;
    let agent = relay.agent("drone-ticketless-relay").await;
    let resumed2 = tickets("resumed");
    reconnect_rounds(&agent, &mut rx, 2).await;
    assert_eq!(tickets("resumed"), resumed2, "no tickets, no resumption");
}
