//! Ack coalescing (`limits.ack_delay_ms`): a slow agent's acks wait to cover several frames, a
//! busy agent is acked as soon as a quarter of its window waits, and nothing is ever left
//! unacked.

mod common;

use std::time::Duration;

use common::*;
use contrail_relay::Hooks;

/// A relay with a required channel sink, `max_inflight = 64` (ack threshold 16) and `delay_ms`.
async fn relay_with_ack_delay(
    delay_ms: u64,
) -> (
    TestRelay,
    tokio::sync::mpsc::Receiver<std::sync::Arc<contrail_relay::sink::SinkBatch>>,
) {
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
