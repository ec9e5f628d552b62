//! Ack coalescing (`limits.ack_delay_ms`): a slow agent's acks wait to cover several frames, a
//! busy agent is acked as soon as a quarter of its window waits, and nothing is ever left
//! unacked. Also what else agent and relay send besides frames and acks: QUIC ACKs (asked for
//! with the ACK-frequency extension, adapted to a slow agent's frame interval) and heartbeats
//! (skipped while telemetry flows).

use std::time::Duration;

use crate::common::*;
use contrail_relay::Hooks;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarter_of_the_window_is_acked_without_waiting_for_the_delay() {
    // The delay (10 s) is longer than the test waits (5 s): only the threshold can ack.
    let (relay, _rx) = relay_with_ack_delay(10_000).await;
    let agent = relay.agent("drone-busy").await;
    let payload = [7u8; 64];
    let (last, n) = agent
        .send_many(16, |_| frame(&payload))
        .await
        .expect("send");
    assert_eq!((last, n), (16, 16));
    tokio::time::timeout(Duration::from_secs(5), agent.wait_acked(16))
        .await
        .expect("16 waiting frames (max_inflight / 4) are acked before the 10 s delay")
        .expect("acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agents_frames_wait_for_the_delay_and_are_then_acked_together() {
    let (relay, mut rx) = relay_with_ack_delay(10_000).await;
    let agent = relay.agent("drone-slow").await;
    let payload = [7u8; 64];
    for _ in 0..3 {
        agent.send(&frame(&payload)).await.expect("send");
    }
    // Every frame reached the required sink (so the relay could ack it) ...
    let mut seen = 0;
    while seen < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("batch within 5 s")
            .expect("sink open");
        seen += batch.frames.len();
    }
    // ... and the ack is still held back: 3 frames are below the threshold of 16.
    assert_eq!(agent.acked_seq(), 0, "ack coalesced, not sent per frame");
    drop(agent);

    // With a short delay the same frames are acked once it passes.
    let (relay, _rx) = relay_with_ack_delay(200).await;
    let agent = relay.agent("drone-slow-2").await;
    for _ in 0..3 {
        agent.send(&frame(&payload)).await.expect("send");
    }
    tokio::time::timeout(Duration::from_secs(5), agent.wait_acked(3))
        .await
        .expect("acked after the 200 ms delay")
        .expect("acked");
    agent.close().await.expect("close flushes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_delay_acks_every_batch_at_once() {
    let (relay, _rx) = relay_with_ack_delay(0).await;
    let agent = relay.agent("drone-eager").await;
    let payload = [7u8; 64];
    let seq = agent.send(&frame(&payload)).await.expect("send");
    tokio::time::timeout(Duration::from_secs(5), agent.wait_acked(seq))
        .await
        .expect("a single frame is acked at once")
        .expect("acked");
    agent.close().await.expect("close");
}

/// Streams `n` frames at 20 Hz from a fresh agent (after registering) and returns the QUIC
/// statistics of its connection for that stretch only: (ACK frames it received, datagrams it
/// sent), both per frame.
async fn paced_ack_traffic(relay: &TestRelay, id: &str, max_ack_delay: Duration) -> (f64, f64) {
    paced_traffic(relay, id, max_ack_delay, Duration::from_millis(50), 0, 30).await
}

/// [`paced_ack_traffic`] with the frame interval, frames sent before the measured stretch
/// (`warmup`, paced too) and frames measured (`n`) as parameters.
async fn paced_traffic(
    relay: &TestRelay,
    id: &str,
    max_ack_delay: Duration,
    interval: Duration,
    warmup: u64,
    n: u64,
) -> (f64, f64) {
    let mut config = relay.client_config(id);
    config.max_ack_delay = max_ack_delay;
    let agent = contrail_protocol::client::Agent::connect(config)
        .await
        .expect("agent connects");
    let payload = [7u8; 64];
    // One frame acked first, so the handshake's and registration's packets are behind us.
    let seq = agent.send(&frame(&payload)).await.expect("send");
    agent.wait_acked(seq).await.expect("acked");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..warmup {
        tick.tick().await;
        agent.send(&frame(&payload)).await.expect("send");
    }
    let before = agent.transport_stats().expect("connected");
    let mut last = seq;
    for _ in 0..n {
        tick.tick().await;
        last = agent.send(&frame(&payload)).await.expect("send");
    }
    tokio::time::timeout(Duration::from_secs(10), agent.wait_acked(last))
        .await
        .expect("all acked")
        .expect("acked");
    let after = agent.transport_stats().expect("still connected");
    agent.close().await.expect("close");
    // Far below its congestion window a paced agent asks for an immediate ACK rarely if ever
    // (the window can dip after a probe or timeout; seen: 2 in 30 frames).
    let immediate = after.frame_tx.immediate_ack - before.frame_tx.immediate_ack;
    assert!(
        immediate <= n / 5,
        "{id}: {immediate} IMMEDIATE_ACK frames in {n} paced frames"
    );
    let acks = (after.frame_rx.acks - before.frame_rx.acks) as f64 / n as f64;
    let sent = (after.udp_tx.datagrams - before.udp_tx.datagrams) as f64 / n as f64;
    eprintln!("{id} (agent max ACK delay {max_ack_delay:?}, every {interval:?}): {acks:.2} ACK frames received, {sent:.2} datagrams sent per frame");
    (acks, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agent_gets_the_relays_quic_acks_inside_its_contrail_acks() {
    // The agent asks the relay to hold QUIC ACKs up to 125 ms (longer than the relay's 100 ms
    // ack delay), so they ride in the packets carrying Contrail acks (one per 2-3 frames at
    // 20 Hz). With QUIC's 25 ms every 50 ms frame draws an ACK packet of its own.
    let (relay, _rx) = relay_with_ack_delay(100).await;
    let (held, _) = paced_ack_traffic(&relay, "drone-held", Duration::from_millis(125)).await;
    let (quic_default, _) = paced_ack_traffic(&relay, "drone-default", Duration::ZERO).await;
    assert!(
        held <= 0.75,
        "relay ACK frames per frame with a 125 ms max ACK delay: {held:.2}"
    );
    assert!(
        quic_default >= 0.8,
        "relay ACK frames per frame with QUIC's 25 ms: {quic_default:.2}"
    );
}

/// A relay that acks every frame at once (`ack_delay_ms = 0`: one packet to the agent per
/// frame), asking peers for `quic_max_ack_delay_ms` and slow agents for up to `cap_ms`.
async fn relay_acking_every_frame(quic_max_ack_delay_ms: u64, cap_ms: u64) -> TestRelay {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.limits.ack_delay_ms = 0;
    config.limits.quic_max_ack_delay_ms = quic_max_ack_delay_ms;
    config.limits.quic_max_ack_delay_cap_ms = cap_ms;
    let (spec, _rx) = channel_sink("chan", false, 1024);
    start_with(config, dir, vec![spec], Hooks::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agent_acks_the_relays_packets_inside_its_next_frame() {
    // The relay acks every frame at once (ack_delay_ms = 0), one packet per frame. Asked to
    // hold QUIC ACKs 125 ms (`limits.quic_max_ack_delay_ms`), the agent's ACK of that packet
    // rides in its next frame 50 ms later: one datagram per frame. With QUIC's 25 ms it sends
    // an ACK packet in between: two.
    let mut datagrams = Vec::new();
    for quic_max_ack_delay_ms in [125, 0] {
        // Not adapted to the agent's interval (cap 0: that is a later test's subject).
        let relay = relay_acking_every_frame(quic_max_ack_delay_ms, 0).await;
        let (_, sent) = paced_ack_traffic(&relay, "drone-acking", Duration::ZERO).await;
        datagrams.push(sent);
    }
    assert!(
        datagrams[0] <= 1.3,
        "agent datagrams per frame, relay asking 125 ms: {:.2}",
        datagrams[0]
    );
    assert!(
        datagrams[1] >= 1.5,
        "agent datagrams per frame, QUIC's 25 ms: {:.2}",
        datagrams[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_fills_the_congestion_window_asks_for_an_immediate_ack() {
    // A fresh connection starts with a congestion window of about ten packets, below the
    // ack-eliciting threshold of 16, and the relay may hold ACKs 125 ms: without IMMEDIATE_ACK
    // (third_party/quinn-proto) slow start would wait that long for every window.
    let (relay, _rx) = relay_with_ack_delay(100).await;
    let agent = relay.agent("drone-burst").await;
    let payload = vec![7u8; 1024];
    let mut last = 0;
    let mut left = 2_000usize;
    while left > 0 {
        let (seq, n) = agent
            .send_many(left, |_| frame(&payload))
            .await
            .expect("send");
        last = seq;
        left -= n;
    }
    tokio::time::timeout(Duration::from_secs(10), agent.wait_acked(last))
        .await
        .expect("the burst is acked")
        .expect("acked");
    let stats = agent.transport_stats().expect("connected");
    assert!(
        stats.frame_tx.immediate_ack >= 1,
        "2 MB in a fresh window asked for an immediate ACK at least once: {:?}",
        stats.frame_tx
    );
    agent.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agent_is_asked_to_hold_its_quic_acks_past_its_next_frame() {
    // A 5 Hz agent: 200 ms between frames, longer than the 125 ms the relay asks of every
    // peer. The relay acks every frame at once (ack_delay_ms = 0), and the agent must QUIC-ACK
    // that packet: within 125 ms it is a packet of its own (two datagrams per frame). Adapted
    // to the agent's interval (`limits.quic_max_ack_delay_cap_ms`), the relay asks it for
    // 1.5 x 200 ms and the ACK rides in the next frame (one datagram per frame).
    let mut datagrams = Vec::new();
    for cap_ms in [1_500, 0] {
        let relay = relay_acking_every_frame(125, cap_ms).await;
        // Six paced frames first: the relay learns the interval and its new request
        // reaches the agent before the measured stretch.
        let (_, sent) = paced_traffic(
            &relay,
            &format!("drone-5hz-cap-{cap_ms}"),
            Duration::ZERO,
            Duration::from_millis(200),
            6,
            20,
        )
        .await;
        datagrams.push(sent);
    }
    assert!(
        datagrams[0] <= 1.3,
        "agent datagrams per frame, adapted: {:.2}",
        datagrams[0]
    );
    assert!(
        datagrams[1] >= 1.6,
        "agent datagrams per frame, not adapted: {:.2}",
        datagrams[1]
    );
}

/// `last_heartbeat` of `id` in the relay's fleet status (ms since the Unix epoch).
async fn last_heartbeat(relay: &TestRelay, id: &str) -> u64 {
    let v: serde_json::Value = reqwest::get(format!("{}/v1/drones/{id}", relay.http()))
        .await
        .expect("status request")
        .json()
        .await
        .expect("status json");
    v["last_heartbeat"].as_u64().expect("last_heartbeat set")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_agent_skips_heartbeats_and_its_frames_count_as_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.limits.heartbeat_interval_ms = 300;
    let (spec, _rx) = channel_sink("chan", false, 1024);
    let relay = start_with(config, dir, vec![spec], Hooks::default()).await;

    // An idle agent pings every heartbeat interval.
    let idle = relay.agent("drone-idle").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    while idle.stats().pings < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an idle agent sent {} pings in 10 s",
            idle.stats().pings
        );
        poll.tick().await;
    }

    // A streaming agent (20 Hz for 1.5 s, five heartbeat intervals) sends none: its frames
    // tell the relay it lives, and the relay's status shows them as heartbeats.
    let busy = relay.agent("drone-busy").await;
    let payload = [7u8; 64];
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = 0;
    let mut sent_last_at = 0;
    for _ in 0..30 {
        tick.tick().await;
        sent_last_at = unix_ms();
        last = busy.send(&frame(&payload)).await.expect("send");
    }
    tokio::time::timeout(Duration::from_secs(10), busy.wait_acked(last))
        .await
        .expect("all acked")
        .expect("acked");
    // A scheduling stall of a whole interval without a write may let one ping through.
    assert!(
        busy.stats().pings <= 1,
        "a streaming agent sent {} pings",
        busy.stats().pings
    );
    let seen = last_heartbeat(&relay, "drone-busy").await;
    assert!(
        seen >= sent_last_at,
        "last heartbeat {seen} is older than the last frame (sent at {sent_last_at})"
    );
    busy.close().await.expect("close");
    idle.close().await.expect("close");
}

/// The agent library sends no QUIC keep-alive: its pings are the only keep-alive, so they come
/// at least every third of the agent's own idle timeout even when the relay's heartbeat is
/// longer. Here the heartbeat (3 s) exceeds the agent's idle timeout (900 ms): with pings only
/// at the heartbeat the connection would idle out and reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_pings_often_enough_for_its_own_idle_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.limits.heartbeat_interval_ms = 3_000;
    config.limits.idle_timeout_ms = 10_000;
    let (spec, _rx) = channel_sink("chan", false, 1024);
    let relay = start_with(config, dir, vec![spec], Hooks::default()).await;

    let mut cfg = relay.client_config("drone-short-idle");
    cfg.idle_timeout = Duration::from_millis(900);
    let agent = contrail_protocol::client::Agent::connect(cfg)
        .await
        .expect("connect");
    let session = agent.session().expect("registered").session_id;
    // Ten of the agent's pings (every 300 ms) span more than three of its idle timeouts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    while agent.stats().pings < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} pings in 20 s",
            agent.stats().pings
        );
        poll.tick().await;
    }
    assert_eq!(agent.stats().reconnects, 0, "the connection idled out");
    assert_eq!(
        agent.session().expect("registered").session_id,
        session,
        "the session changed"
    );
    agent.close().await.expect("close");
}
