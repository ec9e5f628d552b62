//! Backpressure: a slow required sink throttles the agent through credits, nothing is lost and
//! queues stay bounded; a slow optional sink never holds acks back, its drops are counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use contrail_relay::sink::WhenFull;
use contrail_relay::Hooks;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_required_sink_throttles_the_agent_to_its_pace() {
    const TOTAL: u64 = 4_000;
    const WINDOW: u32 = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.limits.max_inflight = WINDOW;
    let (mut spec, mut rx) = channel_sink("slow", true, 1);
    spec.common.queue_batches = 4;
    spec.common.max_batches_per_write = 1;
    let relay = start_with(config, dir, vec![spec], Hooks::default()).await;
    let agent = Arc::new(relay.agent("drone-throttled").await);

    // The slow consumer: one batch per tick.
    let consumed = Arc::new(AtomicU64::new(0));
    let seen = consumed.clone();
    let consumer = tokio::spawn(async move {
        let mut seqs = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        while (seqs.len() as u64) < TOTAL {
            tick.tick().await;
            match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
                Ok(Some(b)) => {
                    for f in b.frames.iter() {
                        seqs.push(f.seq());
                    }
                    seen.store(seqs.len() as u64, Ordering::SeqCst);
                }
                _ => break,
            }
        }
        seqs
    });

    let sender = agent.clone();
    let producer = tokio::spawn(async move {
        send_n(&sender, TOTAL, &[3u8; 256]).await;
    });
    // Sample while streaming: the agent never gets ahead of the sink by more than the credit
    // window plus what the sink queue and the one batch in the sink's hands can hold, and the
    // sink queue never exceeds its bound.
    let sink = relay.relay.sinks()[0].clone();
    let queue_bound = sink.queue.capacity();
    let mut samples = 0;
    let mut sample_tick = tokio::time::interval(Duration::from_millis(5));
    while !producer.is_finished() {
        sample_tick.tick().await;
        let sent = agent.last_seq();
        let acked = agent.acked_seq();
        let done = consumed.load(Ordering::SeqCst);
        assert!(sink.queue.len() <= queue_bound, "queue within its bound");
        assert!(
            sent <= acked + u64::from(WINDOW),
            "credits enforced: sent {sent}, acked {acked}"
        );
        assert!(
            acked <= done + u64::from(WINDOW),
            "acks follow the sink: acked {acked}, consumed {done}"
        );
        samples += 1;
    }
    producer.await.expect("producer");
    agent.flush().await.expect("all acked eventually");
    let seqs = consumer.await.expect("consumer");
    assert_eq!(
        seqs,
        (1..=TOTAL).collect::<Vec<_>>(),
        "nothing lost, in order"
    );
    assert!(
        samples > 10,
        "the run was long enough to observe throttling ({samples} samples)"
    );
    assert!(
        agent.stats().credit_waits > 0,
        "the agent had to wait for credit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_optional_sink_never_delays_acks_and_counts_drops() {
    const TOTAL: u64 = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.limits.max_inflight = 256;
    let (fast, mut fast_rx) = channel_sink("fast", true, 4096);
    // An optional sink whose consumer never reads: its channel fills, its queue fills, then
    // every further batch is dropped (newest first).
    let (mut stuck, _stuck_rx) = channel_sink("stuck", false, 1);
    stuck.common.queue_batches = 2;
    stuck.common.when_full = WhenFull::DropNewest;
    let relay = start_with(config, dir, vec![fast, stuck], Hooks::default()).await;
    let agent = relay.agent("drone-fast").await;
    send_n(&agent, TOTAL, &[5u8; 128]).await;
    agent
        .flush()
        .await
        .expect("acks unaffected by the stuck optional sink");
    let frames = collect_frames(&mut fast_rx, TOTAL as usize, Duration::from_secs(10)).await;
    assert_eq!(frames.len() as u64, TOTAL);
    let stuck = relay
        .relay
        .sinks()
        .iter()
        .find(|s| s.common.name == "stuck")
        .expect("stuck sink")
        .clone();
    assert!(stuck.frames_dropped() > 0, "drops are counted");
    assert!(
        stuck.queue.len() <= 2,
        "the optional queue stayed within its bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_newest_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config(dir.path());
    let (fast, _fast_rx) = channel_sink("fast", true, 4096);
    let (mut lossy, _lossy_rx) = channel_sink("lossy", false, 1);
    lossy.common.queue_batches = 2;
    lossy.common.when_full = WhenFull::DropOldest;
    let relay = start_with(config, dir, vec![fast, lossy], Hooks::default()).await;
    let agent = relay.agent("drone-lossy").await;
    for _ in 0..200 {
        agent.send(&frame(b"one batch each")).await.expect("send");
        let seq = agent.last_seq();
        agent.wait_acked(seq).await.expect("acked");
    }
    let lossy = relay.relay.sinks()[1].clone();
    assert!(lossy.frames_dropped() > 0);
    // The queue holds the newest batches: its worker is stuck on the first one it took, so the
    // last seq the agent sent must still be queued.
    let mut held = Vec::new();
    lossy.queue.pop_many(&mut held, 10);
    let last = held.last().expect("queued batches").frames.last_seq();
    assert_eq!(
        last, 200,
        "drop_oldest evicted old batches, kept the newest"
    );
}
