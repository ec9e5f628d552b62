//! Length-prefixed framing over `BytesMut`. IO-free: no tokio, no quinn.
//!
//! Every message is preceded by its length as a 4-byte big-endian `u32`. Decoding returns
//! `Ok(None)` when the buffer does not yet hold a complete message, without allocating; an
//! announced length above the configured maximum is refused before its body arrives.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::frame::{parse_frame, FrameMeta, TelemetryBatch};

/// Size of the length prefix in bytes.
pub const LEN_PREFIX: usize = 4;

/// Default max frame size: 64 KiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Why bytes could not be decoded. Never allocates, so it is cheap on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The length prefix announced more bytes than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The body is not a valid protobuf message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// An encoded message would exceed the limit.
    #[error("message of {len} bytes is larger than the limit of {max} bytes")]
    EncodeTooLarge {
        /// Encoded length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
}

impl CodecError {
    /// The wire error code this decoding failure maps to.
    pub fn code(self) -> crate::ErrorCode {
        match self {
            CodecError::FrameTooLarge { .. } | CodecError::EncodeTooLarge { .. } => {
                crate::ErrorCode::FrameTooLarge
            }
            CodecError::Malformed(_) => crate::ErrorCode::ProtocolViolation,
        }
    }
}

/// The framing codec, parameterised by the max frame size.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_bytes: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl FrameCodec {
    /// A codec refusing frames above `max_frame_bytes` (body length, prefix excluded).
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameCodec {
            max_frame_bytes: max_frame_bytes.min(u32::MAX as usize),
        }
    }

    /// The configured limit.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// The body length of the next message if it is complete in `buf`; `Ok(None)` when more
    /// bytes are needed. Fails at once when the prefix announces an oversized body.
    #[inline]
    pub fn next_frame_len(&self, buf: &[u8]) -> Result<Option<usize>, CodecError> {
        let Some(prefix) = buf.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_frame_bytes {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        if buf.len() - LEN_PREFIX < len {
            return Ok(None);
        }
        Ok(Some(len))
    }

    /// Splits the next complete message body off `buf` (zero-copy), or `Ok(None)`.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        match self.next_frame_len(buf)? {
            None => Ok(None),
            Some(len) => {
                buf.advance(LEN_PREFIX);
                Ok(Some(buf.split_to(len).freeze()))
            }
        }
    }

    /// Decodes the next complete message as `M`, or `Ok(None)`.
    pub fn decode_message<M: Message + Default>(
        &self,
        buf: &mut BytesMut,
    ) -> Result<Option<M>, CodecError> {
        match self.decode(buf)? {
            None => Ok(None),
            Some(body) => M::decode(body)
                .map(Some)
                .map_err(|_| CodecError::Malformed("invalid protobuf")),
        }
    }

    /// Appends `msg` with its length prefix to `dst`.
    pub fn encode<M: Message>(&self, msg: &M, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = msg.encoded_len();
        if len > self.max_frame_bytes {
            return Err(CodecError::EncodeTooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        dst.reserve(LEN_PREFIX + len);
        dst.put_u32(len as u32);
        msg.encode(dst)
            .map_err(|_| CodecError::Malformed("buffer too small"))?;
        Ok(())
    }

    /// Decodes every complete telemetry frame in `buf` into one batch.
    ///
    /// The complete prefix of `buf` is split off as one shared `Bytes`; each frame is described
    /// by a [`FrameMeta`] (offsets and header fields) pushed to a reused `metas` vector, so the
    /// per-frame work is parse-and-check with no allocation. Returns `Ok(None)` when no frame is
    /// complete. On error, `buf` is left as it was.
    pub fn decode_telemetry_batch(
        &self,
        buf: &mut BytesMut,
        metas: &mut Vec<FrameMeta>,
    ) -> Result<Option<TelemetryBatch>, CodecError> {
        metas.clear();
        let mut offset = 0usize;
        while let Some(len) = self.next_frame_len(&buf[offset..])? {
            let start = offset + LEN_PREFIX;
            let meta = parse_frame(&buf[start..start + len], start)?;
            metas.push(meta);
            offset = start + len;
        }
        if offset == 0 {
            return Ok(None);
        }
        let data = buf.split_to(offset).freeze();
        Ok(Some(TelemetryBatch::new(data, std::mem::take(metas))))
    }
}

/// Appends a telemetry frame, length-prefixed, to `dst` without building a message struct
/// (no allocation beyond growing `dst`). Field numbers follow `contrail.proto`.
#[allow(clippy::too_many_arguments)]
pub fn encode_telemetry(
    dst: &mut BytesMut,
    seq: u64,
    sent_at_unix_ns: u64,
    device_time: u64,
    kind: u32,
    flight_id: &str,
    payload: &[u8],
    content_type: &str,
) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    fn varint_field_len(tag: u32, v: u64) -> usize {
        if v == 0 {
            0
        } else {
            prost::encoding::key_len(tag) + encoded_len_varint(v)
        }
    }
    fn bytes_field_len(tag: u32, b: &[u8]) -> usize {
        if b.is_empty() {
            0
        } else {
            prost::encoding::key_len(tag) + encoded_len_varint(b.len() as u64) + b.len()
        }
    }
    let len = varint_field_len(1, seq)
        + varint_field_len(2, sent_at_unix_ns)
        + varint_field_len(3, device_time)
        + varint_field_len(4, u64::from(kind))
        + bytes_field_len(5, flight_id.as_bytes())
        + bytes_field_len(6, payload)
        + bytes_field_len(7, content_type.as_bytes());
    dst.reserve(LEN_PREFIX + len);
    dst.put_u32(len as u32);
    for (tag, v) in [
        (1, seq),
        (2, sent_at_unix_ns),
        (3, device_time),
        (4, u64::from(kind)),
    ] {
        if v != 0 {
            encode_key(tag, WireType::Varint, dst);
            encode_varint(v, dst);
        }
    }
    for (tag, b) in [
        (5, flight_id.as_bytes()),
        (6, payload),
        (7, content_type.as_bytes()),
    ] {
        if !b.is_empty() {
            encode_key(tag, WireType::LengthDelimited, dst);
            encode_varint(b.len() as u64, dst);
            dst.put_slice(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ControlMessage, TelemetryFrame};

    fn frame(seq: u64, payload: &[u8]) -> TelemetryFrame {
        TelemetryFrame {
            seq,
            sent_at_unix_ns: 7,
            device_time: 9,
            kind: 33,
            flight_id: "f-1".into(),
            payload: Bytes::copy_from_slice(payload),
            content_type: "mavlink".into(),
        }
    }

    #[test]
    fn needs_more_bytes_without_consuming() {
        let codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(&frame(1, b"abc"), &mut buf).expect("encode");
        let full = buf.clone();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(codec.decode(&mut part), Ok(None), "cut at {cut}");
            assert_eq!(part.len(), cut);
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body() {
        let codec = FrameCodec::new(100);
        let mut buf = BytesMut::new();
        buf.put_u32(101);
        assert_eq!(
            codec.decode(&mut buf),
            Err(CodecError::FrameTooLarge { len: 101, max: 100 })
        );
    }

    #[test]
    fn hand_encoder_matches_prost() {
        let f = frame(42, b"payload");
        let mut a = BytesMut::new();
        FrameCodec::default().encode(&f, &mut a).expect("encode");
        let mut b = BytesMut::new();
        encode_telemetry(&mut b, 42, 7, 9, 33, "f-1", b"payload", "mavlink");
        assert_eq!(a, b);
    }

    #[test]
    fn batch_decodes_all_complete_frames_zero_copy() {
        let codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        for seq in 1..=5 {
            codec
                .encode(&frame(seq, &[seq as u8; 10]), &mut buf)
                .expect("encode");
        }
        let whole = buf.len();
        buf.extend_from_slice(&[0, 0]); // start of a sixth prefix
        let mut metas = Vec::new();
        let batch = codec
            .decode_telemetry_batch(&mut buf, &mut metas)
            .expect("decode")
            .expect("some");
        assert_eq!(batch.len(), 5);
        assert_eq!(batch.first_seq(), 1);
        assert_eq!(batch.last_seq(), 5);
        assert_eq!(batch.data().len(), whole);
        assert_eq!(buf.len(), 2);
        for (i, view) in batch.iter().enumerate() {
            assert_eq!(view.seq(), i as u64 + 1);
            assert_eq!(view.payload(), &[i as u8 + 1; 10]);
            assert_eq!(view.flight_id(), "f-1");
            assert_eq!(view.content_type(), "mavlink");
            assert_eq!(view.kind(), 33);
            let decoded = TelemetryFrame::decode(batch.frame_body(i)).expect("prost decode");
            assert_eq!(decoded, frame(i as u64 + 1, &[i as u8 + 1; 10]));
        }
    }

    #[test]
    fn malformed_body_is_a_protocol_violation() {
        let codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0x0a, 0xff, 0xff]); // field 1 as length-delimited: wrong wire type
        let mut metas = Vec::new();
        let err = codec
            .decode_telemetry_batch(&mut buf, &mut metas)
            .expect_err("malformed");
        assert_eq!(err.code(), crate::ErrorCode::ProtocolViolation);
    }

    #[test]
    fn control_messages_round_trip() {
        use crate::proto::{control_message::Msg, Ack};
        let codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let msg = ControlMessage {
            msg: Some(Msg::Ack(Ack { up_to_seq: 77 })),
        };
        codec.encode(&msg, &mut buf).expect("encode");
        let got: ControlMessage = codec.decode_message(&mut buf).expect("ok").expect("some");
        assert_eq!(got, msg);
    }
}

/// Appends a length-prefixed `StoredFrame` wrapping an already-encoded `TelemetryFrame` body,
/// without decoding it.
pub fn encode_stored_frame(
    dst: &mut BytesMut,
    agent_id: &str,
    session_id: &str,
    received_at_unix_ns: u64,
    frame_body: &[u8],
) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    let str_len = |s: &[u8]| {
        if s.is_empty() {
            0
        } else {
            key_len(1) + encoded_len_varint(s.len() as u64) + s.len()
        }
    };
    let len = str_len(agent_id.as_bytes())
        + str_len(session_id.as_bytes())
        + if received_at_unix_ns == 0 {
            0
        } else {
            key_len(3) + encoded_len_varint(received_at_unix_ns)
        }
        + key_len(4)
        + encoded_len_varint(frame_body.len() as u64)
        + frame_body.len();
    dst.reserve(LEN_PREFIX + len);
    dst.put_u32(len as u32);
    for (tag, b) in [(1, agent_id.as_bytes()), (2, session_id.as_bytes())] {
        if !b.is_empty() {
            encode_key(tag, WireType::LengthDelimited, dst);
            encode_varint(b.len() as u64, dst);
            dst.put_slice(b);
        }
    }
    if received_at_unix_ns != 0 {
        encode_key(3, WireType::Varint, dst);
        encode_varint(received_at_unix_ns, dst);
    }
    encode_key(4, WireType::LengthDelimited, dst);
    encode_varint(frame_body.len() as u64, dst);
    dst.put_slice(frame_body);
}

#[cfg(test)]
mod stored_tests {
    use super::*;
    use crate::proto::{StoredFrame, TelemetryFrame};

    #[test]
    fn stored_frame_wraps_the_body_unchanged() {
        let frame = TelemetryFrame {
            seq: 5,
            payload: Bytes::from_static(b"xyz"),
            ..Default::default()
        };
        let body = frame.encode_to_vec();
        let mut buf = BytesMut::new();
        encode_stored_frame(&mut buf, "drone-1", "abcd", 99, &body);
        let got: StoredFrame = FrameCodec::default()
            .decode_message(&mut buf)
            .expect("ok")
            .expect("some");
        assert_eq!(got.agent_id, "drone-1");
        assert_eq!(got.session_id, "abcd");
        assert_eq!(got.received_at_unix_ns, 99);
        assert_eq!(got.frame, Some(frame));
    }
}
