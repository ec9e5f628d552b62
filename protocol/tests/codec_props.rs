//! Hostile input (issue 6, item 10): property tests of the IO-free codec over arbitrary bytes,
//! truncations and re-chunkings.
//!
//! * Nothing panics, whatever the bytes.
//! * The input buffer never grows, and an error leaves it untouched.
//! * Every error maps to `FRAME_TOO_LARGE` (the prefix announced more than the limit) or
//!   `PROTOCOL_VIOLATION` (a complete body that is not a valid message), and the former is
//!   reported from the 4-byte prefix alone, before the body arrives (bounded memory).
//! * A truncated stream of valid frames decodes to exactly the complete frames, never an error.
//! * `encode_telemetry` → `decode_telemetry_batch` round-trips every field, however the stream
//!   is split into chunks.

use bytes::{BufMut, Bytes, BytesMut};
use contrail_protocol::codec::{encode_telemetry, CodecError, FrameCodec, LEN_PREFIX};
use contrail_protocol::proto::{ControlMessage, TelemetryFrame};
use contrail_protocol::ErrorCode;
use proptest::prelude::*;
use prost::Message;

/// A small limit so that oversized prefixes are common in random input.
const MAX: usize = 512;

fn codec() -> FrameCodec {
    FrameCodec::new(MAX)
}

fn allowed_code(e: CodecError) -> bool {
    matches!(
        e.code(),
        ErrorCode::FrameTooLarge | ErrorCode::ProtocolViolation
    )
}

/// The announced length at the front of `buf`, if a prefix is there.
fn announced(buf: &[u8]) -> Option<usize> {
    buf.get(..LEN_PREFIX)
        .map(|p| u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize)
}

/// Checks one decode error against the bytes it came from.
fn check_error(e: CodecError, buf: &[u8]) {
    assert!(allowed_code(e), "unexpected code for {e:?}");
    if let CodecError::FrameTooLarge { len, max } = e {
        assert_eq!(max, MAX);
        assert!(len > MAX);
        assert_eq!(Some(len), announced(buf), "reported the announced length");
    }
}

#[derive(Debug, Clone)]
struct Fields {
    seq: u64,
    sent_at: u64,
    device_time: u64,
    kind: u32,
    flight_id: String,
    payload: Vec<u8>,
    content_type: String,
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        "[a-z0-9-]{0,12}",
        proptest::collection::vec(any::<u8>(), 0..200),
        "(|mavlink|application/json|\\PC{0,6})",
    )
        .prop_map(
            |(seq, sent_at, device_time, kind, flight_id, payload, content_type)| Fields {
                seq,
                sent_at,
                device_time,
                kind,
                flight_id,
                payload,
                content_type,
            },
        )
}

fn encode(dst: &mut BytesMut, f: &Fields) {
    encode_telemetry(
        dst,
        f.seq,
        f.sent_at,
        f.device_time,
        f.kind,
        &f.flight_id,
        &f.payload,
        &f.content_type,
    );
}

/// Bytes that are often almost valid: random bytes, sometimes behind a plausible prefix.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1200),
        (0u32..600, proptest::collection::vec(any::<u8>(), 0..700)).prop_map(|(len, body)| {
            let mut v = len.to_be_bytes().to_vec();
            v.extend_from_slice(&body);
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// `decode` over arbitrary bytes: no panic, the buffer only shrinks, errors are typed and
    /// leave the buffer as it was.
    #[test]
    fn decode_arbitrary_bytes(bytes in hostile_bytes()) {
        let codec = codec();
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            let before = buf.clone();
            match codec.decode(&mut buf) {
                Ok(Some(body)) => {
                    prop_assert!(body.len() <= MAX);
                    prop_assert_eq!(buf.len() + LEN_PREFIX + body.len(), before.len());
                }
                Ok(None) => {
                    prop_assert_eq!(&buf, &before, "needing more bytes consumes nothing");
                    break;
                }
                Err(e) => {
                    check_error(e, &before);
                    let too_large = matches!(e, CodecError::FrameTooLarge { .. });
                    prop_assert!(too_large, "decode only fails on the prefix");
                    prop_assert_eq!(&buf, &before, "an error consumes nothing");
                    break;
                }
            }
        }
    }

    /// `decode_message::<ControlMessage>` over arbitrary bytes.
    #[test]
    fn decode_control_arbitrary_bytes(bytes in hostile_bytes()) {
        let codec = codec();
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..bytes.len() + 1 {
            let before = buf.len();
            let snapshot = buf.clone();
            match codec.decode_message::<ControlMessage>(&mut buf) {
                Ok(Some(_)) => prop_assert!(buf.len() < before),
                Ok(None) => { prop_assert_eq!(buf.len(), before); break; }
                Err(e) => { check_error(e, &snapshot); break; }
            }
        }
    }

    /// `decode_telemetry_batch` over arbitrary bytes: every reported frame is inside the split
    /// data and its views can be read; on error the buffer is untouched.
    #[test]
    fn decode_batch_arbitrary_bytes(bytes in hostile_bytes()) {
        let codec = codec();
        let mut buf = BytesMut::from(&bytes[..]);
        let mut metas = Vec::new();
        let before = buf.clone();
        match codec.decode_telemetry_batch(&mut buf, &mut metas) {
            Ok(Some(batch)) => {
                prop_assert_eq!(batch.data().len() + buf.len(), before.len());
                for (i, view) in batch.iter().enumerate() {
                    let m = batch.metas()[i];
                    prop_assert!((m.start + m.len) as usize <= batch.data().len());
                    let _ = (view.seq(), view.kind(), view.payload(), view.flight_id(), view.content_type());
                    // The zero-copy parser agrees with prost on what it accepted.
                    let decoded = TelemetryFrame::decode(batch.frame_body(i));
                    prop_assert!(decoded.is_ok(), "prost rejects a body the parser accepted");
                    let decoded = decoded.unwrap_or_default();
                    prop_assert_eq!(decoded.seq, view.seq());
                    prop_assert_eq!(&decoded.payload[..], view.payload());
                }
            }
            Ok(None) => prop_assert_eq!(&buf, &before),
            Err(e) => {
                prop_assert!(allowed_code(e));
                prop_assert_eq!(&buf, &before, "an error leaves the buffer as it was");
            }
        }
    }

    /// A stream of valid frames cut anywhere decodes to exactly the complete frames.
    #[test]
    fn truncated_stream_yields_complete_frames_only(
        frames in proptest::collection::vec(fields(), 1..8),
        cut_frac in 0.0f64..=1.0,
    ) {
        let codec = FrameCodec::default();
        let mut full = BytesMut::new();
        let mut ends = Vec::new();
        for f in &frames {
            encode(&mut full, f);
            ends.push(full.len());
        }
        let cut = ((full.len() as f64) * cut_frac) as usize;
        let mut buf = BytesMut::from(&full[..cut]);
        let mut metas = Vec::new();
        let complete = ends.iter().filter(|e| **e <= cut).count();
        match codec.decode_telemetry_batch(&mut buf, &mut metas) {
            Ok(Some(batch)) => {
                prop_assert_eq!(batch.len(), complete);
                prop_assert_eq!(buf.len(), cut - ends[complete - 1]);
            }
            Ok(None) => {
                prop_assert_eq!(complete, 0);
                prop_assert_eq!(buf.len(), cut);
            }
            Err(e) => prop_assert!(false, "valid prefix gave {e:?}"),
        }
    }

    /// encode_telemetry → decode_telemetry_batch round-trips every field, fed in random chunks.
    #[test]
    fn telemetry_round_trips_in_any_chunking(
        frames in proptest::collection::vec(fields(), 1..12),
        chunk in 1usize..300,
    ) {
        let codec = FrameCodec::default();
        let mut wire = BytesMut::new();
        for f in &frames {
            encode(&mut wire, f);
        }
        let wire: Bytes = wire.freeze();
        let mut buf = BytesMut::new();
        let mut metas = Vec::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            if let Some(batch) = codec.decode_telemetry_batch(&mut buf, &mut metas).expect("valid") {
                for (i, v) in batch.iter().enumerate() {
                    got.push((
                        v.seq(), v.sent_at_unix_ns(), v.device_time(), v.kind(),
                        v.flight_id().to_string(), v.payload().to_vec(), v.content_type().to_string(),
                    ));
                    let p = TelemetryFrame::decode(batch.frame_body(i)).expect("prost agrees");
                    prop_assert_eq!(p.seq, v.seq());
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got.len(), frames.len());
        for (g, f) in got.iter().zip(&frames) {
            prop_assert_eq!(g, &(
                f.seq, f.sent_at, f.device_time, f.kind,
                f.flight_id.clone(), f.payload.clone(), f.content_type.clone(),
            ));
        }
    }

    /// A hostile body behind a valid prefix is a protocol violation (or a frame), never a
    /// panic, and never reported as too large.
    #[test]
    fn garbage_body_is_a_protocol_violation(body in proptest::collection::vec(any::<u8>(), 0..MAX)) {
        let codec = codec();
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.put_slice(&body);
        let mut metas = Vec::new();
        match codec.decode_telemetry_batch(&mut buf, &mut metas) {
            Ok(Some(b)) => prop_assert_eq!(b.len(), 1),
            Ok(None) => prop_assert!(false, "a complete frame was not decoded"),
            Err(e) => {
                prop_assert_eq!(e.code(), ErrorCode::ProtocolViolation);
                prop_assert_eq!(buf.len(), LEN_PREFIX + body.len());
            }
        }
    }

    /// An oversized prefix is refused from the prefix alone: memory stays bounded by the limit.
    #[test]
    fn oversized_prefix_refused_before_the_body(len in (MAX as u32 + 1)..=u32::MAX, tail in proptest::collection::vec(any::<u8>(), 0..16)) {
        let codec = codec();
        let mut buf = BytesMut::new();
        buf.put_u32(len);
        buf.put_slice(&tail);
        let mut metas = Vec::new();
        let e = codec.decode_telemetry_batch(&mut buf, &mut metas).expect_err("too large");
        prop_assert_eq!(e, CodecError::FrameTooLarge { len: len as usize, max: MAX });
        prop_assert_eq!(e.code(), ErrorCode::FrameTooLarge);
        let e = codec.decode_message::<ControlMessage>(&mut buf).expect_err("too large");
        prop_assert_eq!(e.code(), ErrorCode::FrameTooLarge);
    }
}

/// Found by the `decode` fuzz target (fuzz/regressions/): a frame whose key varint is above
/// `u32::MAX` (a field number beyond 2^29 - 1) passes the zero-copy parser, so the relay forwards
/// a body that prost, and every conformant protobuf decoder downstream, rejects.
#[test]
fn parser_rejects_keys_prost_rejects() {
    let mut buf = BytesMut::new();
    let body = [0xd0, 0xf9, 0xf5, 0xf9, 0xb3, 0x00, 0xff, 0xf5, 0x9c, 0x00];
    buf.put_u32(body.len() as u32);
    buf.put_slice(&body);
    assert!(
        TelemetryFrame::decode(&body[..]).is_err(),
        "prost rejects it"
    );
    let mut metas = Vec::new();
    let got = FrameCodec::default().decode_telemetry_batch(&mut buf, &mut metas);
    assert!(
        got.as_ref()
            .is_err_and(|e| e.code() == ErrorCode::ProtocolViolation),
        "the relay must refuse what downstream decoders cannot read: {got:?}"
    );
}

/// Same class: a 10-byte varint whose last byte is above 1 overflows u64; prost rejects it, the
/// zero-copy parser silently drops the high bits.
#[test]
fn parser_rejects_overflowing_varints() {
    let body = [
        0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ];
    assert!(
        TelemetryFrame::decode(&body[..]).is_err(),
        "prost rejects it"
    );
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.put_slice(&body);
    let mut metas = Vec::new();
    let got = FrameCodec::default().decode_telemetry_batch(&mut buf, &mut metas);
    assert!(got.is_err(), "got {got:?}");
}
