//! Fan-out of one decoded batch (64 frames of 256 bytes) to 1, 4 and 16 required sinks
//! through `contrail_relay::fanout::FanOut::dispatch` (one `Arc` clone and one bounded-queue
//! push per sink), reported per batch; the difference between sink counts is the marginal
//! cost of a sink.
//!
//! * `fanout/dispatch/N`: dispatch an already-built shared batch, then pop it from every
//!   sink's queue (no completion).
//! * `fanout/dispatch+complete/N`: the whole path from a decoded batch on: build the
//!   `SinkBatch` (here cloning its 64-entry metadata, an allocation the relay's reader does not
//!   pay since it moves its batch), dispatch, and on the sink side pop and `complete()` it in
//!   every sink; the last completion moves the agent's ack point.

use std::sync::Arc;
use std::time::Instant;

use contrail_benches::telemetry_batch;
use contrail_protocol::{AgentId, SessionId};
use contrail_relay::cursor::AgentCursor;
use contrail_relay::fanout::FanOut;
use contrail_relay::latency::Latency;
use contrail_relay::sink::{BatchOrigin, SinkBatch, SinkCommon, SinkHandle};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn fanout(c: &mut Criterion) {
    let origin = Arc::new(BatchOrigin {
        agent_id: AgentId::new("bench-agent").expect("valid id"),
        session_id: SessionId::from_random_bytes([7; 16]),
        session_hex: "07".repeat(16),
    });
    let frames = telemetry_batch(1, 64);
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(1));
    for sinks in [1usize, 4, 16] {
        let handles: Vec<Arc<SinkHandle>> = (0..sinks)
            .map(|i| {
                Arc::new(SinkHandle::new(
                    SinkCommon::new(format!("bench-{i}"), true),
                    Latency::default(),
                    None,
                ))
            })
            .collect();
        let fan = FanOut::new(handles.clone());
        let cursor = Arc::new(AgentCursor::starting_at(0));
        let mut popped = Vec::with_capacity(4);
        let shared = Arc::new(SinkBatch::new(
            origin.clone(),
            frames.clone(),
            Instant::now(),
            0,
            0,
            cursor.clone(),
        ));
        g.bench_function(format!("dispatch/{sinks}"), |b| {
            b.iter(|| {
                futures::executor::block_on(fan.dispatch(&shared));
                for h in &handles {
                    h.queue.pop_many(&mut popped, 4);
                    popped.clear();
                }
            })
        });
        g.bench_function(format!("dispatch+complete/{sinks}"), |b| {
            b.iter(|| {
                let batch = Arc::new(SinkBatch::new(
                    origin.clone(),
                    frames.clone(),
                    Instant::now(),
                    0,
                    fan.required(),
                    cursor.clone(),
                ));
                futures::executor::block_on(fan.dispatch(&batch));
                for h in &handles {
                    h.queue.pop_many(&mut popped, 4);
                    for b in popped.drain(..) {
                        b.complete();
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
