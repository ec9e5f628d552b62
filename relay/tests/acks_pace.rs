//! Ack pacing: an agent whose frames come further apart than `limits.ack_delay_ms` is acked
//! without waiting for the delay (`contrail_acks_sent_total{trigger="pace"}`). A test binary of
//! its own (not a module of `tests/it`): the counter is process-wide, and no other relay may count
//! paced acks meanwhile.

#[path = "it/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;

/// `contrail_acks_sent_total{trigger="pace"}`.
fn paced_acks() -> f64 {
    metric_sum("contrail_acks_sent_total", "trigger=\"pace\"")
}

/// An agent whose frames come further apart than `ack_delay_ms` is acked at once (waiting
/// could never cover a second frame; it would only cost a timer and ack latency), counted as
/// `trigger="pace"`; an agent sending faster than the delay keeps coalescing. Every frame is
/// acked either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_further_apart_than_the_delay_are_acked_without_waiting() {
    metrics(); // the recorder exists before the relay creates its counters
    let (relay, _rx) = relay_with_ack_delay(150).await;
    let payload = [7u8; 64];

    // 1 frame per 600 ms (four times the delay): from the third frame on, the relay knows the
    // pace and acks without waiting.
    let agent = relay.agent("drone-sparse").await;
    let before = paced_acks();
    let mut tick = tokio::time::interval(Duration::from_millis(600));
    for seq in 1..=5u64 {
        tick.tick().await;
        agent.send(&frame(&payload)).await.expect("send");
        tokio::time::timeout(Duration::from_secs(5), agent.wait_acked(seq))
            .await
            .expect("acked")
            .expect("acked");
    }
    let paced = paced_acks() - before;
    assert!(
        (2.0..=5.0).contains(&paced),
        "frames 3..=5 (at least two of them) acked by pace, got {paced}"
    );
    agent.close().await.expect("close");

    // Bursts every 600 ms but 20 ms apart inside: the pace is faster than the delay, the
    // acks wait and cover several frames, none is paced.
    let agent = relay.agent("drone-dense").await;
    let before = paced_acks();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..10 {
        tick.tick().await;
        agent.send(&frame(&payload)).await.expect("send");
    }
    agent.flush().await.expect("all acked");
    assert_eq!(paced_acks(), before, "a fast agent is never acked by pace");
}
