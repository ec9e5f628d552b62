//! Credit accounting: the relay reader's per-batch sequence and window check against the
//! agent's [`AgentCursor`] (a faithful copy of the checks in `relay/src/session/reader.rs`
//! `process`: duplicate skip, contiguity of every seq, `last <= completed + max_inflight`, then
//! `set_forwarded`), plus the sink-side `complete_batch` that moves the ack point.
//!
//! * `credits/check/N`: reader-side check of a batch of N frames, reported per frame.
//! * `credits/complete`: one `complete_batch` (atomic max + notify), per batch.

use std::sync::Arc;
use std::time::Instant;

use contrail_benches::telemetry_batch;
use contrail_protocol::TelemetryBatch;
use contrail_relay::cursor::AgentCursor;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

const MAX_INFLIGHT: u64 = 1024;

/// The reader's checks; returns the new forwarded seq or an error position.
fn check(cursor: &AgentCursor, batch: &TelemetryBatch) -> Result<u64, u64> {
    let forwarded = cursor.forwarded();
    let metas = batch.metas();
    let skip = metas.iter().take_while(|m| m.seq <= forwarded).count();
    let metas = &metas[skip..];
    let Some(first) = metas.first().map(|m| m.seq) else {
        return Ok(forwarded);
    };
    if first != forwarded + 1 {
        return Err(first);
    }
    for (i, m) in metas.iter().enumerate() {
        if m.seq != first + i as u64 {
            return Err(m.seq);
        }
    }
    let last = first + metas.len() as u64 - 1;
    if last > cursor.completed() + MAX_INFLIGHT {
        return Err(last);
    }
    cursor.set_forwarded(last);
    Ok(last)
}

fn credits(c: &mut Criterion) {
    let mut g = c.benchmark_group("credits");
    for n in [1usize, 64, 1024] {
        let batch = telemetry_batch(1, n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("check/{n}"), |b| {
            b.iter_batched_ref(
                || Arc::new(AgentCursor::starting_at(0)),
                |cursor| black_box(check(cursor, black_box(&batch))),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.throughput(Throughput::Elements(1));
    let cursor = AgentCursor::starting_at(0);
    let now = Instant::now();
    let mut seq = 0u64;
    g.bench_function("complete", |b| {
        b.iter(|| {
            seq += 64;
            cursor.complete_batch(black_box(seq), now);
        })
    });
    g.finish();
}

criterion_group!(benches, credits);
criterion_main!(benches);
