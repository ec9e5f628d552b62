//! Zero-allocation views of `StoredFrame` messages, as live subscribers receive them.
//!
//! A subscriber's data stream carries length-prefixed `StoredFrame`s back to back.
//! [`FrameCodec::decode_stored_batch`] splits every complete one off a read buffer as one shared
//! `Bytes` and describes each frame by offsets ([`StoredMeta`]); [`StoredView`] reads fields out
//! of the shared buffer without copying. [`StoredBatch::to_message`] gives an owned prost
//! `StoredFrame` when convenience matters more than speed. IO-free.

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::codec::{CodecError, FrameCodec};
use crate::frame::{
    parse_frame, read_key, read_len_delimited, read_varint, skip_fixed, FrameMeta, FrameView,
};
use crate::proto::StoredFrame;

/// Offsets and header fields of one `StoredFrame` inside a [`StoredBatch`]'s buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredMeta {
    /// Start of the `StoredFrame` body in the batch buffer.
    pub start: u32,
    /// Length of the `StoredFrame` body.
    pub len: u32,
    /// When the relay received the frame, Unix ns.
    pub received_at_unix_ns: u64,
    agent_id: (u32, u32),
    session_id: (u32, u32),
    /// The wrapped `TelemetryFrame` (offsets into the same buffer).
    pub frame: FrameMeta,
}

/// Parses a `StoredFrame` body located at `base` in the batch buffer.
fn parse_stored(body: &[u8], base: usize) -> Result<StoredMeta, CodecError> {
    let mut m = StoredMeta {
        start: base as u32,
        len: body.len() as u32,
        ..StoredMeta::default()
    };
    let mut has_frame = false;
    let mut pos = 0usize;
    while pos < body.len() {
        let (field, wire) = read_key(body, &mut pos)?;
        match (field, wire) {
            (3, 0) => m.received_at_unix_ns = read_varint(body, &mut pos)?,
            (1 | 2 | 4, 2) | (5.., 2) => {
                let (start, end) = read_len_delimited(body, &mut pos)?;
                let range = ((base + start) as u32, (base + end) as u32);
                match field {
                    1 | 2 => {
                        std::str::from_utf8(&body[start..end])
                            .map_err(|_| CodecError::Malformed("string is not UTF-8"))?;
                        if field == 1 {
                            m.agent_id = range;
                        } else {
                            m.session_id = range;
                        }
                    }
                    4 => {
                        m.frame = parse_frame(&body[start..end], base + start)?;
                        has_frame = true;
                    }
                    _ => {}
                }
            }
            (5.., 0) => {
                read_varint(body, &mut pos)?;
            }
            (5.., w @ (1 | 5)) => skip_fixed(body, &mut pos, w)?,
            _ => return Err(CodecError::Malformed("wrong wire type")),
        }
    }
    if !has_frame {
        return Err(CodecError::Malformed("stored frame without a frame"));
    }
    Ok(m)
}

/// A batch of `StoredFrame`s decoded from one read: one shared buffer, one [`StoredMeta`] each.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    data: Bytes,
    frames: Vec<StoredMeta>,
}

impl StoredBatch {
    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the batch has no frames.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The whole buffer: length-prefixed `StoredFrame`s back to back, as received.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Per-frame metadata.
    pub fn metas(&self) -> &[StoredMeta] {
        &self.frames
    }

    /// A borrowed view of frame `i`.
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn view(&self, i: usize) -> StoredView<'_> {
        StoredView {
            data: &self.data,
            meta: &self.frames[i],
        }
    }

    /// Iterates borrowed views of all frames, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = StoredView<'_>> + '_ {
        self.frames.iter().map(|meta| StoredView {
            data: &self.data,
            meta,
        })
    }

    /// The `StoredFrame` body of frame `i` (zero-copy).
    pub fn body(&self, i: usize) -> Bytes {
        let m = &self.frames[i];
        self.data
            .slice(m.start as usize..m.start as usize + m.len as usize)
    }

    /// Frame `i` as an owned prost message (its payload stays a zero-copy `Bytes`).
    pub fn to_message(&self, i: usize) -> Result<StoredFrame, CodecError> {
        StoredFrame::decode(self.body(i)).map_err(|_| CodecError::Malformed("invalid protobuf"))
    }

    /// Every frame as owned prost messages.
    pub fn to_messages(&self) -> Result<Vec<StoredFrame>, CodecError> {
        (0..self.len()).map(|i| self.to_message(i)).collect()
    }
}

/// A borrowed view of one `StoredFrame` in a [`StoredBatch`].
#[derive(Debug, Clone, Copy)]
pub struct StoredView<'a> {
    data: &'a Bytes,
    meta: &'a StoredMeta,
}

impl<'a> StoredView<'a> {
    fn str_at(&self, r: (u32, u32)) -> &'a str {
        std::str::from_utf8(&self.data[r.0 as usize..r.1 as usize]).unwrap_or_default()
    }

    /// The frame's metadata.
    pub fn meta(&self) -> &'a StoredMeta {
        self.meta
    }
    /// The sending agent's id (validated UTF-8 at decode).
    pub fn agent_id(&self) -> &'a str {
        self.str_at(self.meta.agent_id)
    }
    /// The session id, 32 hex characters.
    pub fn session_id(&self) -> &'a str {
        self.str_at(self.meta.session_id)
    }
    /// When the relay received the frame, Unix ns.
    pub fn received_at_unix_ns(&self) -> u64 {
        self.meta.received_at_unix_ns
    }
    /// The telemetry frame: seq, kind, flight id, payload, ...
    pub fn frame(&self) -> FrameView<'a> {
        FrameView::from_parts(self.data, &self.meta.frame)
    }
}

impl FrameCodec {
    /// Decodes every complete length-prefixed `StoredFrame` in `buf` into one batch.
    ///
    /// The complete prefix of `buf` is split off as one shared `Bytes`; `metas` is a scratch
    /// vector (its allocation moves into the batch). Returns `Ok(None)` when no frame is
    /// complete. On error, `buf` is left as it was.
    pub fn decode_stored_batch(
        &self,
        buf: &mut BytesMut,
        metas: &mut Vec<StoredMeta>,
    ) -> Result<Option<StoredBatch>, CodecError> {
        metas.clear();
        let mut offset = 0usize;
        while let Some(len) = self.next_frame_len(&buf[offset..])? {
            let start = offset + crate::LEN_PREFIX;
            metas.push(parse_stored(&buf[start..start + len], start)?);
            offset = start + len;
        }
        if offset == 0 {
            return Ok(None);
        }
        let data = buf.split_to(offset).freeze();
        Ok(Some(StoredBatch {
            data,
            frames: std::mem::take(metas),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_stored_frame;
    use crate::proto::TelemetryFrame;

    fn telemetry(seq: u64) -> TelemetryFrame {
        TelemetryFrame {
            seq,
            sent_at_unix_ns: 11,
            device_time: 12,
            kind: 33,
            flight_id: "f-9".into(),
            payload: Bytes::from(vec![seq as u8; 5]),
            content_type: "ct".into(),
        }
    }

    #[test]
    fn views_match_prost_and_partial_frames_wait() {
        let mut buf = BytesMut::new();
        for seq in 1..=4 {
            let body = telemetry(seq).encode_to_vec();
            encode_stored_frame(&mut buf, "drone-1", "abcd", 100 + seq, &body);
        }
        let whole = buf.len();
        buf.extend_from_slice(&[0, 0, 0]); // start of the next prefix
        let codec = FrameCodec::default();
        let mut metas = Vec::new();
        let batch = codec
            .decode_stored_batch(&mut buf, &mut metas)
            .expect("decode")
            .expect("some");
        assert_eq!(batch.len(), 4);
        assert_eq!(batch.data().len(), whole);
        assert_eq!(buf.len(), 3);
        for (i, v) in batch.iter().enumerate() {
            let seq = i as u64 + 1;
            assert_eq!(v.agent_id(), "drone-1");
            assert_eq!(v.session_id(), "abcd");
            assert_eq!(v.received_at_unix_ns(), 100 + seq);
            let f = v.frame();
            assert_eq!(f.seq(), seq);
            assert_eq!(f.kind(), 33);
            assert_eq!(f.flight_id(), "f-9");
            assert_eq!(f.content_type(), "ct");
            assert_eq!(f.payload(), &[seq as u8; 5]);
            let owned = batch.to_message(i).expect("prost");
            assert_eq!(owned.frame, Some(telemetry(seq)));
            assert_eq!(owned.agent_id, "drone-1");
        }
        assert!(
            matches!(codec.decode_stored_batch(&mut buf, &mut metas), Ok(None)),
            "an incomplete prefix needs more bytes"
        );
    }

    #[test]
    fn garbage_is_malformed_and_leaves_the_buffer() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0, 0, 0, 2, 0x0b, 0x01]); // field 1, wire type 3
        let before = buf.clone();
        let err = FrameCodec::default()
            .decode_stored_batch(&mut buf, &mut Vec::new())
            .expect_err("malformed");
        assert_eq!(err.code(), crate::ErrorCode::ProtocolViolation);
        assert_eq!(buf, before);
    }
}
