//! Decoded MAVLink for the outputs that write JSON (stdout and file NDJSON, `contrail-tail`,
//! Redis Streams fields). Only these call it: binary outputs (protobuf files, live
//! subscribers, JetStream) pass the raw packet through without looking at it.

use std::io::Write as _;

use metrics::Counter;

use super::packet::{self, DecodeError, Decoded};
use super::CONTENT_TYPE;

/// Decodes MAVLink payloads for one JSON output and counts the outcome:
/// `contrail_mavlink_decoded_total{output}` and
/// `contrail_mavlink_decode_failures_total{output,reason}`.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    decoded: Counter,
    failed: [Counter; DecodeError::LABELS.len()],
}

impl JsonDecoder {
    /// Counters labelled `output` (e.g. `ndjson`, `redis_streams`, `tail`).
    pub fn new(output: &'static str) -> Self {
        JsonDecoder {
            decoded: metrics::counter!("contrail_mavlink_decoded_total", "output" => output),
            failed: DecodeError::LABELS.map(|reason| {
                metrics::counter!("contrail_mavlink_decode_failures_total", "output" => output, "reason" => reason)
            }),
        }
    }

    /// Decodes `payload` when `content_type` is MAVLink; `None` for other content types and,
    /// counted, for payloads that do not decode (the output then carries the raw bytes only).
    pub fn decode(&self, content_type: &str, payload: &[u8]) -> Option<Decoded> {
        if content_type != CONTENT_TYPE {
            return None;
        }
        match packet::decode(payload) {
            Ok(d) => {
                self.decoded.increment(1);
                Some(d)
            }
            Err(e) => {
                let i = DecodeError::LABELS
                    .iter()
                    .position(|l| *l == e.label())
                    .unwrap_or(0);
                self.failed[i].increment(1);
                None
            }
        }
    }

    /// Appends `,"mavlink":{…}` (see [`write_object`]) when the frame is MAVLink and decodes.
    pub fn append_member(&self, out: &mut Vec<u8>, content_type: &str, payload: &[u8]) -> bool {
        match self.decode(content_type, payload) {
            Some(d) => {
                out.extend_from_slice(b",\"mavlink\":");
                write_object(out, &d);
                true
            }
            None => false,
        }
    }
}

/// Appends `{"name":…,"version":…,"system_id":…,"component_id":…,"sequence":…,"signed":…,
/// "fields":{…}}`.
pub fn write_object(out: &mut Vec<u8>, d: &Decoded) {
    use mavlink::Message as _;
    let h = &d.header;
    let _ = write!(
        out,
        "{{\"name\":\"{}\",\"message_id\":{},\"version\":{},\"system_id\":{},\"component_id\":{},\"sequence\":{},\"signed\":{},\"fields\":",
        d.message.message_name(),
        h.message_id,
        h.version,
        h.system_id,
        h.component_id,
        h.sequence,
        h.signed,
    );
    write_fields(out, d);
    out.push(b'}');
}

/// Appends the message's fields as one JSON object (enums by name, bitmasks as their flags,
/// `char[]` fields as strings up to the first NUL, non-finite floats as `null`).
pub fn write_fields(out: &mut Vec<u8>, d: &Decoded) {
    use mavlink::Message as _;
    let start = out.len();
    if serde_json::to_writer(&mut *out, &d.message).is_err() {
        out.truncate(start);
        out.extend_from_slice(b"{}");
        return;
    }
    // The dialect's enum is internally tagged: `{"type":"NAME",…}`. The name is already
    // beside the fields; drop the tag (a move of the bytes after it, no allocation).
    let name = d.message.message_name();
    let tag_len = b"{\"type\":\"".len() + name.len() + 1;
    let written = &out[start..];
    if written.len() > tag_len
        && written.starts_with(b"{\"type\":\"")
        && &written[9..9 + name.len()] == name.as_bytes()
        && written[9 + name.len()] == b'"'
    {
        let after = start + tag_len;
        let cut = if out.get(after) == Some(&b',') {
            after + 1
        } else {
            after
        };
        out.drain(start + 1..cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mavlink::dialects::common;
    use mavlink::{MavHeader, MavlinkVersion};

    fn encode(msg: &common::MavMessage) -> Vec<u8> {
        let mut out = Vec::new();
        let h = MavHeader {
            system_id: 1,
            component_id: 1,
            sequence: 9,
        };
        mavlink::write_versioned_msg(&mut out, MavlinkVersion::V2, h, msg).expect("encode");
        out
    }

    #[test]
    fn fields_are_a_json_object_without_the_tag() {
        let p = encode(&common::MavMessage::ATTITUDE(common::ATTITUDE_DATA {
            time_boot_ms: 77,
            roll: 0.5,
            ..Default::default()
        }));
        let dec = JsonDecoder::new("test");
        let mut out = b"{\"x\":1".to_vec();
        assert!(dec.append_member(&mut out, CONTENT_TYPE, &p));
        out.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        let m = &v["mavlink"];
        assert_eq!(m["name"], "ATTITUDE");
        assert_eq!(m["message_id"], 30);
        assert_eq!(m["sequence"], 9);
        assert_eq!(m["fields"]["time_boot_ms"], 77);
        assert_eq!(m["fields"]["roll"], 0.5);
        assert!(m["fields"].get("type").is_none(), "{m}");
    }

    #[test]
    fn enums_come_out_by_name_and_other_content_types_are_left_alone() {
        let p = encode(&common::MavMessage::HEARTBEAT(common::HEARTBEAT_DATA {
            mavtype: common::MavType::MAV_TYPE_QUADROTOR,
            autopilot: common::MavAutopilot::MAV_AUTOPILOT_PX4,
            ..Default::default()
        }));
        let dec = JsonDecoder::new("test");
        let mut out = Vec::new();
        assert!(!dec.append_member(&mut out, "application/octet-stream", &p));
        assert!(out.is_empty());
        let d = dec.decode(CONTENT_TYPE, &p).expect("decodes");
        write_fields(&mut out, &d);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("MAV_TYPE_QUADROTOR"), "{text}");
        assert!(text.contains("MAV_AUTOPILOT_PX4"), "{text}");
        assert!(dec.decode(CONTENT_TYPE, b"garbage").is_none());
    }
}
