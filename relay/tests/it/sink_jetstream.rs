//! NATS JetStream sink against a real `nats-server -js`: frames from several agents through the
//! in-process relay, read back with a pull consumer, every frame exactly once, in order per
//! agent, headers and `StoredFrame` payload intact; a resend of stored frames is deduplicated.

use std::time::Duration;

use crate::sink_support::{
    blocking, check_exactly_once_in_order, js_read_all, payloads, send_numbered, sink_entry,
};
use contrail_relay::Hooks;
use contrail_testsupport::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_to_jetstream_exactly_once_in_order() {
    let nats = blocking(NatsServer::start);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::common::test_config(dir.path());
    config.limits.max_inflight = 64;
    config.sinks.push(sink_entry(&format!(
        "name = \"jetstream\"\ntype = \"nats_jetstream\"\nrequired = true\nurl = \"{}\"\nsubject = \"contrail.telemetry.{{agent_id}}\"\nmax_pending_acks = 256\ntimeout_ms = 2000",
        nats.url()
    )));
    let relay = crate::common::start_with(config, dir, vec![], Hooks::default()).await;

    let agents = [
        ("drone-a", 700u64),
        ("drone-b", 500),
        ("fleet.drone-c", 300),
    ];
    let mut senders = Vec::new();
    for &(id, count) in &agents {
        let agent = relay.agent(id).await;
        senders.push(tokio::spawn(async move {
            let p = payloads(id, count);
            send_numbered(&agent, &p, count).await;
            tokio::time::timeout(Duration::from_secs(10), agent.flush())
                .await
                .expect("acked in time")
                .expect("flush");
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }

    let stored = js_read_all(&nats.url(), "CONTRAIL", 1500).await;
    check_exactly_once_in_order(&stored, &agents);
    let handle = &relay.relay.sinks()[0];
    assert_eq!(handle.frames_written(), 1500);
    assert!(handle.is_healthy());
}

/// A second sink instance re-publishing the same frames (what a retry after an ambiguous
/// failure does) stores nothing new: the `Nats-Msg-Id` dedup within the duplicate window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republished_frames_are_deduplicated() {
    use contrail_relay::sink::{nats_jetstream, Filter, Sink as _};
    use std::sync::{Arc, Mutex};

    let nats = blocking(NatsServer::start);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::common::test_config(dir.path());
    config.limits.max_inflight = 64;
    let entry = sink_entry(&format!(
        "name = \"js\"\ntype = \"nats_jetstream\"\nrequired = true\nurl = \"{}\"\ntimeout_ms = 2000",
        nats.url()
    ));
    let settings = crate::sink_support::js_settings(&entry);
    config.sinks.push(entry);
    // Keep every batch the relay produced, to publish them again afterwards.
    let (chan, mut rx) = crate::common::channel_sink("copy", true, 1024);
    let relay = crate::common::start_with(config, dir, vec![chan], Hooks::default()).await;
    let kept = Arc::new(Mutex::new(Vec::new()));
    let keeper = {
        let kept = kept.clone();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                kept.lock().expect("lock").push(b);
            }
        })
    };

    let agent = relay.agent("drone-r").await;
    let p = payloads("drone-r", 400);
    send_numbered(&agent, &p, 400).await;
    agent.flush().await.expect("flush");
    let first = js_read_all(&nats.url(), "CONTRAIL", 400).await;
    check_exactly_once_in_order(&first, &[("drone-r", 400)]);

    let batches: Vec<_> = kept.lock().expect("lock").clone();
    let mut again = nats_jetstream::JetStreamSink::connect(Arc::new(settings))
        .await
        .expect("second sink connects");
    let written = again
        .write(&batches, &Filter::default())
        .await
        .expect("re-publish acked");
    assert_eq!(written, 400);
    let after = js_read_all(&nats.url(), "CONTRAIL", 400).await;
    check_exactly_once_in_order(&after, &[("drone-r", 400)]);
    keeper.abort();
}

/// Sustained frames/s into JetStream, end to end and sink alone. Run with
/// `cargo test --release -p contrail-relay --test sink_jetstream -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn benchmark_sustained_frames_per_second() {
    use crate::sink_support::bench;
    use contrail_relay::sink::nats_jetstream;

    let nats = blocking(NatsServer::start);
    let (e2e, batches) = bench::end_to_end(sink_entry(&format!(
        "name = \"js\"\ntype = \"nats_jetstream\"\nrequired = true\nurl = \"{}\"",
        nats.url()
    )))
    .await;
    // A second stream and subject, so the replay is not dropped as duplicates.
    let entry = sink_entry(&format!(
        "name = \"js2\"\ntype = \"nats_jetstream\"\nurl = \"{}\"\nsubject = \"replay.{{agent_id}}\"\nstream = \"REPLAY\"",
        nats.url()
    ));
    let factory = nats_jetstream::factory(crate::sink_support::js_settings(&entry));
    let alone = bench::sink_only(factory, &batches).await;
    println!(
        "nats_jetstream: {} agents x {} frames of {} B: end to end {e2e:.0} frames/s; sink alone {alone:.0} frames/s",
        bench::AGENTS,
        bench::PER_AGENT,
        bench::PAYLOAD
    );
}
