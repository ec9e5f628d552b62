//! Fuzz target: every decoder a peer's bytes reach (framing, control messages, telemetry
//! batches). Invariants checked beyond "no panic": an error leaves the buffer untouched, the
//! buffer never grows, errors map to FRAME_TOO_LARGE or PROTOCOL_VIOLATION, and every frame the
//! zero-copy parser accepts is one prost accepts too.
#![no_main]

use bytes::BytesMut;
use contrail_protocol::proto::{ControlMessage, TelemetryFrame};
use contrail_protocol::{ErrorCode, FrameCodec};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a small or the default limit, so oversized prefixes are exercised.
    let (limit, data) = match data.split_first() {
        Some((b, rest)) if b & 1 == 0 => (256, rest),
        Some((_, rest)) => (64 * 1024, rest),
        None => return,
    };
    let codec = FrameCodec::new(limit);

    let mut buf = BytesMut::from(data);
    let mut metas = Vec::new();
    let before = buf.clone();
    match codec.decode_telemetry_batch(&mut buf, &mut metas) {
        Ok(Some(batch)) => {
            assert_eq!(batch.data().len() + buf.len(), before.len());
            for (i, v) in batch.iter().enumerate() {
                let _ = (
                    v.seq(),
                    v.kind(),
                    v.payload(),
                    v.flight_id(),
                    v.content_type(),
                );
                assert!(TelemetryFrame::decode(batch.frame_body(i)).is_ok());
            }
        }
        Ok(None) => assert_eq!(buf, before),
        Err(e) => {
            assert!(matches!(
                e.code(),
                ErrorCode::FrameTooLarge | ErrorCode::ProtocolViolation
            ));
            assert_eq!(buf, before);
        }
    }

    let mut buf = BytesMut::from(data);
    loop {
        let len = buf.len();
        match codec.decode_message::<ControlMessage>(&mut buf) {
            Ok(Some(_)) => assert!(buf.len() < len),
            Ok(None) => break,
            Err(e) => {
                assert!(matches!(
                    e.code(),
                    ErrorCode::FrameTooLarge | ErrorCode::ProtocolViolation
                ));
                break;
            }
        }
    }
});
