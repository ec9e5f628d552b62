//! NDJSON rendering of frames, shared by the stdout and file sinks and `contrail-tail`. Appends
//! to a reused buffer: no allocation per frame once the buffer has grown.
//!
//! A frame of content type `application/x-mavlink` whose payload decodes also gets a
//! `"mavlink"` member (name, ids, sequence, fields; see [`crate::mavlink::json`]); the raw
//! packet stays in `payload_b64` either way.

use std::io::Write as _;

use base64::Engine as _;
use contrail_protocol::FrameView;

use super::SinkBatch;
use crate::mavlink::JsonDecoder;

/// Appends one JSON object line for `frame` of `batch` to `out`.
pub fn render_frame(
    out: &mut Vec<u8>,
    batch: &SinkBatch,
    frame: &FrameView<'_>,
    mavlink: &JsonDecoder,
) {
    render(
        out,
        batch.origin.agent_id.as_str(),
        &batch.origin.session_hex,
        batch.received_unix_ns,
        frame,
        mavlink,
    );
}

/// Appends one JSON object line for a frame a live subscriber received (same fields as
/// [`render_frame`]; `contrail-tail` prints these).
pub fn render_stored(
    out: &mut Vec<u8>,
    stored: &contrail_protocol::StoredView<'_>,
    mavlink: &JsonDecoder,
) {
    render(
        out,
        stored.agent_id(),
        stored.session_id(),
        stored.received_at_unix_ns(),
        &stored.frame(),
        mavlink,
    );
}

fn render(
    out: &mut Vec<u8>,
    agent_id: &str,
    session_hex: &str,
    received_unix_ns: u64,
    frame: &FrameView<'_>,
    mavlink: &JsonDecoder,
) {
    // Agent ids are validated ([A-Za-z0-9._:-]) by the relay; a subscriber escapes anyway.
    out.extend_from_slice(b"{\"agent_id\":");
    json_string(out, agent_id);
    out.extend_from_slice(b",\"session_id\":");
    json_string(out, session_hex);
    let _ = write!(
        out,
        ",\"seq\":{},\"kind\":{},\"sent_at_unix_ns\":{},\"device_time\":{},\"received_at_unix_ns\":{},\"flight_id\":",
        frame.seq(),
        frame.kind(),
        frame.sent_at_unix_ns(),
        frame.device_time(),
        received_unix_ns,
    );
    json_string(out, frame.flight_id());
    out.extend_from_slice(b",\"content_type\":");
    json_string(out, frame.content_type());
    out.extend_from_slice(b",\"payload_b64\":\"");
    let payload = frame.payload();
    let start = out.len();
    out.resize(
        start + base64::encoded_len(payload.len(), true).unwrap_or(0),
        0,
    );
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(payload, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + n);
    out.push(b'"');
    mavlink.append_member(out, frame.content_type(), payload);
    out.extend_from_slice(b"}\n");
}

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Renders every admitted frame of `batches` into `out`; returns how many.
pub fn render_batches(
    out: &mut Vec<u8>,
    batches: &[std::sync::Arc<SinkBatch>],
    filter: &super::Filter,
    mavlink: &JsonDecoder,
) -> usize {
    let mut n = 0;
    for (_, b, f) in filter.admitted(batches) {
        render_frame(out, b, &f, mavlink);
        n += 1;
    }
    n
}
