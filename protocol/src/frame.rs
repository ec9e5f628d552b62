//! Zero-allocation views of telemetry frames, and the batch the relay hands from reader to sinks.

use bytes::Bytes;

use crate::codec::{CodecError, LEN_PREFIX};

/// Offsets and header fields of one frame inside a [`TelemetryBatch`]'s shared buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// Start of the protobuf body in the batch buffer (the length prefix sits just before it).
    pub start: u32,
    /// Length of the protobuf body.
    pub len: u32,
    /// Sequence number.
    pub seq: u64,
    /// Agent's send time, Unix nanoseconds.
    pub sent_at_unix_ns: u64,
    /// Device time, as the agent reports it.
    pub device_time: u64,
    /// Message kind (e.g. MAVLink message id).
    pub kind: u32,
    flight_id: (u32, u32),
    payload: (u32, u32),
    content_type: (u32, u32),
}

#[inline]
pub(crate) fn read_varint(b: &[u8], pos: &mut usize) -> Result<u64, CodecError> {
    let mut value = 0u64;
    for shift in 0..10 {
        let Some(&byte) = b.get(*pos) else {
            return Err(CodecError::Malformed("truncated varint"));
        };
        *pos += 1;
        if shift == 9 && byte > 1 {
            // A 10th byte above 1 overflows 64 bits (prost rejects it too).
            return Err(CodecError::Malformed("varint overflows 64 bits"));
        }
        value |= u64::from(byte & 0x7f) << (shift * 7);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(CodecError::Malformed("varint too long"))
}

/// Reads a field key, returning `(field number, wire type)`; refuses what prost refuses (keys
/// beyond `u32`, field 0, field numbers above 2^29 - 1).
#[inline]
pub(crate) fn read_key(b: &[u8], pos: &mut usize) -> Result<(u64, u64), CodecError> {
    let key = read_varint(b, pos)?;
    if key > u64::from(u32::MAX) {
        return Err(CodecError::Malformed("key out of range"));
    }
    let field = key >> 3;
    if field == 0 || field > 536_870_911 {
        return Err(CodecError::Malformed("field number out of range"));
    }
    Ok((field, key & 7))
}

/// Reads a length-delimited field's length and returns its `start..end` in `b`.
#[inline]
pub(crate) fn read_len_delimited(b: &[u8], pos: &mut usize) -> Result<(usize, usize), CodecError> {
    let len = read_varint(b, pos)?;
    let len = usize::try_from(len).map_err(|_| CodecError::Malformed("length"))?;
    let start = *pos;
    let end = start
        .checked_add(len)
        .filter(|&e| e <= b.len())
        .ok_or(CodecError::Malformed("truncated field"))?;
    *pos = end;
    Ok((start, end))
}

/// Skips a fixed64 (wire type 1) or fixed32 (wire type 5) field.
#[inline]
pub(crate) fn skip_fixed(b: &[u8], pos: &mut usize, wire: u64) -> Result<(), CodecError> {
    let skip = if wire == 1 { 8 } else { 4 };
    *pos = pos
        .checked_add(skip)
        .filter(|&e| e <= b.len())
        .ok_or(CodecError::Malformed("truncated field"))?;
    Ok(())
}

/// Parses a `TelemetryFrame` body at `base` in the batch buffer, checking wire types and UTF-8.
pub(crate) fn parse_frame(body: &[u8], base: usize) -> Result<FrameMeta, CodecError> {
    let mut m = FrameMeta {
        start: base as u32,
        len: body.len() as u32,
        ..FrameMeta::default()
    };
    let mut pos = 0usize;
    while pos < body.len() {
        let (field, wire) = read_key(body, &mut pos)?;
        match wire {
            0 => {
                let v = read_varint(body, &mut pos)?;
                match field {
                    1 => m.seq = v,
                    2 => m.sent_at_unix_ns = v,
                    3 => m.device_time = v,
                    4 => {
                        m.kind =
                            u32::try_from(v).map_err(|_| CodecError::Malformed("kind overflow"))?
                    }
                    5..=7 => return Err(CodecError::Malformed("wrong wire type")),
                    _ => {}
                }
            }
            2 => {
                let (start, end) = read_len_delimited(body, &mut pos)?;
                let range = ((base + start) as u32, (base + end) as u32);
                match field {
                    5 | 7 => {
                        std::str::from_utf8(&body[start..end])
                            .map_err(|_| CodecError::Malformed("string is not UTF-8"))?;
                        if field == 5 {
                            m.flight_id = range;
                        } else {
                            m.content_type = range;
                        }
                    }
                    6 => m.payload = range,
                    1..=4 => return Err(CodecError::Malformed("wrong wire type")),
                    _ => {}
                }
            }
            1 | 5 => {
                if field <= 7 {
                    return Err(CodecError::Malformed("wrong wire type"));
                }
                skip_fixed(body, &mut pos, wire)?;
            }
            _ => return Err(CodecError::Malformed("unsupported wire type")),
        }
    }
    Ok(m)
}

/// A batch of frames decoded from one read: one shared buffer, one `FrameMeta` per frame.
///
/// Cloning the buffer or slicing a frame out of it never copies the bytes.
#[derive(Debug, Clone)]
pub struct TelemetryBatch {
    data: Bytes,
    frames: Vec<FrameMeta>,
}

impl TelemetryBatch {
    /// Wraps a buffer of length-prefixed frames and their metadata.
    pub fn new(data: Bytes, frames: Vec<FrameMeta>) -> Self {
        TelemetryBatch { data, frames }
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the batch has no frames.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The whole buffer: length-prefixed frames back to back, exactly as received.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Frame metadata.
    pub fn metas(&self) -> &[FrameMeta] {
        &self.frames
    }

    /// Seq of the first frame (0 when empty).
    pub fn first_seq(&self) -> u64 {
        self.frames.first().map_or(0, |m| m.seq)
    }

    /// Seq of the last frame (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.frames.last().map_or(0, |m| m.seq)
    }

    /// The protobuf body of frame `i` (zero-copy).
    pub fn frame_body(&self, i: usize) -> Bytes {
        let m = &self.frames[i];
        self.data
            .slice(m.start as usize..(m.start as usize + m.len as usize))
    }

    /// Frame `i` with its length prefix (zero-copy), as written by the length-delimited file sink.
    pub fn frame_with_prefix(&self, i: usize) -> Bytes {
        let m = &self.frames[i];
        self.data
            .slice(m.start as usize - LEN_PREFIX..(m.start as usize + m.len as usize))
    }

    /// A borrowed view of frame `i`.
    pub fn view(&self, i: usize) -> FrameView<'_> {
        FrameView {
            data: &self.data,
            meta: &self.frames[i],
        }
    }

    /// Iterates borrowed views of all frames.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = FrameView<'_>> + '_ {
        self.frames.iter().map(|meta| FrameView {
            data: &self.data,
            meta,
        })
    }

    /// Drops frames before the first one whose seq is `seq` (all of them when none is).
    pub fn skip_until_seq(&mut self, seq: u64) -> usize {
        let n = self
            .frames
            .iter()
            .position(|m| m.seq == seq)
            .unwrap_or(self.frames.len());
        if n > 0 {
            self.frames.drain(..n);
        }
        n
    }

    /// Drops frames whose seq is `<= seq` from the front (used to skip resent duplicates).
    pub fn skip_through(&mut self, seq: u64) -> usize {
        let n = self.frames.iter().take_while(|m| m.seq <= seq).count();
        if n > 0 {
            self.frames.drain(..n);
        }
        n
    }
}

/// A borrowed view of one frame in a batch.
#[derive(Debug, Clone, Copy)]
pub struct FrameView<'a> {
    data: &'a Bytes,
    meta: &'a FrameMeta,
}

impl<'a> FrameView<'a> {
    /// A view of the frame `meta` describes inside `data` (offsets are into `data`).
    pub(crate) fn from_parts(data: &'a Bytes, meta: &'a FrameMeta) -> Self {
        FrameView { data, meta }
    }

    fn slice(&self, r: (u32, u32)) -> &'a [u8] {
        &self.data[r.0 as usize..r.1 as usize]
    }

    /// The frame's metadata.
    pub fn meta(&self) -> &'a FrameMeta {
        self.meta
    }
    /// Sequence number.
    pub fn seq(&self) -> u64 {
        self.meta.seq
    }
    /// Agent send time, Unix ns.
    pub fn sent_at_unix_ns(&self) -> u64 {
        self.meta.sent_at_unix_ns
    }
    /// Device time.
    pub fn device_time(&self) -> u64 {
        self.meta.device_time
    }
    /// Kind.
    pub fn kind(&self) -> u32 {
        self.meta.kind
    }
    /// Payload bytes.
    pub fn payload(&self) -> &'a [u8] {
        self.slice(self.meta.payload)
    }
    /// Flight id (validated UTF-8 at decode).
    pub fn flight_id(&self) -> &'a str {
        std::str::from_utf8(self.slice(self.meta.flight_id)).unwrap_or_default()
    }
    /// Content type (validated UTF-8 at decode).
    pub fn content_type(&self) -> &'a str {
        std::str::from_utf8(self.slice(self.meta.content_type)).unwrap_or_default()
    }
    /// The protobuf body.
    pub fn body(&self) -> &'a [u8] {
        &self.data[self.meta.start as usize..(self.meta.start + self.meta.len) as usize]
    }
}
