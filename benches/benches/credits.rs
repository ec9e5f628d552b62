//! Credit accounting: the relay reader's per-batch sequence, window and quota check
//! ([`check_batch`], the function `relay/src/session/reader.rs` calls), then moving the
//! agent's `forwarded` mark; plus the sink-side `complete_batch` that moves the ack point.
//!
//! * `credits/check/N`: reader-side check of a batch of N frames, reported per frame.
//! * `credits/complete`: one in-order `complete_batch` (compare-and-swap + notify), per batch.
//! * `credits/complete_out_of_order`: two ranges completed in reverse order (the second parks
//!   until the first closes the gap), per pair.
//! * `credits/usage`: what usage accounting adds per batch: logging the completed batch
//!   (`usage_completed`) and counting it when the ack covering it is written (`usage_acked`).

use std::sync::Arc;
use std::time::Instant;

use contrail_benches::telemetry_batch;
use contrail_relay::cursor::AgentCursor;
use contrail_relay::testing::credit::{check_batch, Accepted, CreditState, Window};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

const MAX_INFLIGHT: u64 = 1024;

fn credits(c: &mut Criterion) {
    let mut g = c.benchmark_group("credits");
    let now = Instant::now();
    for n in [1usize, 64, 1024] {
        // One batch, hot in cache as the reader's just-decoded batch is; a fresh cursor each
        // time, so nothing is a duplicate and the check never trims (mutates) the batch.
        let mut batch = telemetry_batch(1, n);
        let mut state = CreditState::default();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("check/{n}"), |b| {
            b.iter_batched_ref(
                || Arc::new(AgentCursor::starting_at(0)),
                |cursor| {
                    let window = Window {
                        forwarded: cursor.forwarded(),
                        acked: cursor.acked(),
                        max_inflight: MAX_INFLIGHT,
                    };
                    let r = check_batch(&mut state, black_box(&mut batch), window, now);
                    if let Ok(Accepted::Forward { last, .. }) = r {
                        cursor.set_forwarded(last);
                    }
                    black_box(r)
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.throughput(Throughput::Elements(1));
    let cursor = AgentCursor::starting_at(0);
    let mut seq = 0u64;
    g.bench_function("complete", |b| {
        b.iter(|| {
            cursor.complete_batch(black_box(seq + 1), black_box(seq + 64), now);
            seq += 64;
        })
    });
    let cursor = AgentCursor::starting_at(0);
    let mut seq = 0u64;
    g.bench_function("complete_out_of_order", |b| {
        b.iter(|| {
            cursor.complete_batch(black_box(seq + 65), black_box(seq + 128), now);
            cursor.complete_batch(black_box(seq + 1), black_box(seq + 64), now);
            seq += 128;
        })
    });
    let cursor = AgentCursor::starting_at(0);
    let mut seq = 0u64;
    g.bench_function("usage", |b| {
        b.iter(|| {
            cursor.usage_completed(black_box(seq + 64), 64, 64 * 48);
            cursor.usage_acked(black_box(seq + 64));
            seq += 64;
        })
    });
    g.finish();
}

criterion_group!(benches, credits);
criterion_main!(benches);
