//! Codec benchmarks: the per-frame work on both ends of the telemetry stream.
//!
//! * `encode/frame`: what an agent pays to append one 256-byte frame (`encode_telemetry`,
//!   length prefix included) to its write buffer.
//! * `decode/frame`: what the relay pays to split and check one frame (`decode_telemetry_batch`
//!   on a buffer holding exactly one frame: prefix, field walk, UTF-8 checks, batch wrapper).
//! * `decode/batch/N`: the same for a read holding N frames, reported per frame
//!   (throughput in elements), which is how the relay's reader sees the stream.
//! * `decode/batch/N/regrow`: the same with an empty metadata vector, as the relay's reader
//!   has it after its first read (the vector is moved into each batch).
//! * `decode/prost/frame`: a full prost decode of one `TelemetryFrame`, for comparison with the
//!   zero-copy view.

use bytes::BytesMut;
use contrail_benches::{frames_buffer, PAYLOAD};
use contrail_protocol::codec::encode_telemetry;
use contrail_protocol::proto::TelemetryFrame;
use contrail_protocol::{FrameCodec, FrameMeta};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;
use std::hint::black_box;

/// Encoding one frame into a reused buffer.
fn encode(c: &mut Criterion) {
    let payload = [0x5au8; PAYLOAD];
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut seq = 0u64;
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("frame", |b| {
        b.iter(|| {
            if buf.len() > 60 * 1024 {
                buf.clear();
            }
            seq += 1;
            encode_telemetry(
                &mut buf,
                black_box(seq),
                1_700_000_000_000_000_000,
                seq,
                33,
                "flight-0001",
                black_box(&payload),
                "mavlink",
            );
        })
    });
    g.finish();
}

/// Decoding one frame, a batch of N frames, and prost's full decode.
fn decode(c: &mut Criterion) {
    let codec = FrameCodec::default();
    let mut g = c.benchmark_group("decode");
    let one = frames_buffer(1, 1).freeze();
    let mut metas: Vec<FrameMeta> = Vec::with_capacity(1024);
    g.throughput(Throughput::Elements(1));
    g.bench_function("frame", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&one[..]),
            |buf| {
                let batch = codec.decode_telemetry_batch(buf, &mut metas);
                black_box(batch.map(|b| b.map(|b| b.len())))
            },
            BatchSize::SmallInput,
        )
    });
    let body = one.slice(4..);
    g.bench_function("prost/frame", |b| {
        b.iter(|| black_box(TelemetryFrame::decode(black_box(body.clone())).map(|f| f.seq)))
    });
    for n in [16usize, 256, 1024] {
        let data = frames_buffer(1, n).freeze();
        g.throughput(Throughput::Elements(n as u64));
        // As the relay's reader calls it today: `decode_telemetry_batch` moves `metas` into the
        // batch (`mem::take`), so the reader's reused vector is empty again and regrows by
        // doubling on every read.
        g.bench_function(format!("batch/{n}/regrow"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&data[..]),
                |buf| {
                    let mut metas = Vec::new();
                    let batch = codec.decode_telemetry_batch(buf, &mut metas);
                    black_box(batch.map(|b| b.map(|b| b.len())))
                },
                BatchSize::SmallInput,
            )
        });
        // With the metadata vector pre-sized (the change recommended in benches/README.md).
        g.bench_function(format!("batch/{n}"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&data[..]),
                |buf| {
                    let mut metas = Vec::with_capacity(n);
                    let batch = codec.decode_telemetry_batch(buf, &mut metas);
                    black_box(batch.map(|b| b.map(|b| b.len())))
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
