//! Fixtures shared by the criterion benchmarks under `benches/benches/` (see `README.md`).

use bytes::BytesMut;
use contrail_protocol::codec::encode_telemetry;
use contrail_protocol::{FrameCodec, TelemetryBatch};

/// Payload size of every benchmark frame (the `max` and `fleet` scenarios use 256 bytes).
pub const PAYLOAD: usize = 256;

/// `n` length-prefixed telemetry frames with consecutive seqs from `first_seq`, as an agent
/// writes them (256-byte payload, kind, flight id, content type, timestamps).
pub fn frames_buffer(first_seq: u64, n: usize) -> BytesMut {
    let payload = [0xa5u8; PAYLOAD];
    let mut buf = BytesMut::with_capacity(n * (PAYLOAD + 64));
    for i in 0..n as u64 {
        encode_telemetry(
            &mut buf,
            first_seq + i,
            1_700_000_000_000_000_000 + i,
            i,
            33,
            "flight-0001",
            &payload,
            "mavlink",
        );
    }
    buf
}

/// The batch a relay reader decodes from [`frames_buffer`].
pub fn telemetry_batch(first_seq: u64, n: usize) -> TelemetryBatch {
    let mut buf = frames_buffer(first_seq, n);
    let mut metas = Vec::with_capacity(n);
    match FrameCodec::default().decode_telemetry_batch(&mut buf, &mut metas) {
        Ok(Some(b)) => b,
        other => panic!("fixture frames must decode: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_decode_to_the_requested_frames() {
        let b = telemetry_batch(5, 10);
        assert_eq!((b.len(), b.first_seq(), b.last_seq()), (10, 5, 14));
    }
}
