//! One MAVLink packet (v1 or v2) checked and decoded with the `ardupilotmega` dialect (which
//! includes `common`). Pure functions over byte slices: no IO, no allocation.

use mavlink::dialects::ardupilotmega::MavMessage;
use mavlink::{MavlinkVersion, Message as _};

/// MAVLink 1 start byte.
pub const STX_V1: u8 = 0xFE;
/// MAVLink 2 start byte.
pub const STX_V2: u8 = 0xFD;
/// MAVLink 2 incompatibility flag: the packet carries a 13-byte signature.
const IFLAG_SIGNED: u8 = 0x01;
const SIGNATURE_LEN: usize = 13;

/// Why a payload is not a MAVLink packet this relay can decode (the metric label says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The first byte is not a MAVLink start byte.
    #[error("not a MAVLink packet (bad start byte)")]
    BadMagic,
    /// Shorter than its header says.
    #[error("truncated MAVLink packet")]
    Truncated,
    /// Bytes after the packet (one frame carries one packet).
    #[error("bytes after the MAVLink packet")]
    TrailingBytes,
    /// MAVLink 2 incompatibility flags this relay does not know.
    #[error("unsupported MAVLink 2 incompatibility flags {0:#04x}")]
    UnsupportedFlags(u8),
    /// The message id is in neither `common` nor `ardupilotmega`.
    #[error("unknown MAVLink message id {0}")]
    UnknownMessage(u32),
    /// The checksum does not match.
    #[error("MAVLink checksum mismatch")]
    Crc,
    /// The payload does not parse (bad enum value, oversize payload).
    #[error("MAVLink payload does not parse")]
    Invalid,
}

impl DecodeError {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::BadMagic => "bad_magic",
            DecodeError::Truncated => "truncated",
            DecodeError::TrailingBytes => "trailing_bytes",
            DecodeError::UnsupportedFlags(_) => "unsupported_flags",
            DecodeError::UnknownMessage(_) => "unknown_message",
            DecodeError::Crc => "crc",
            DecodeError::Invalid => "invalid",
        }
    }

    /// Every label, for pre-registering counters.
    pub const LABELS: [&'static str; 7] = [
        "bad_magic",
        "truncated",
        "trailing_bytes",
        "unsupported_flags",
        "unknown_message",
        "crc",
        "invalid",
    ];
}

/// The header of a packet, read without checking its checksum (filters and the UDP endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u8,
    /// Sender system id.
    pub system_id: u8,
    /// Sender component id.
    pub component_id: u8,
    /// Packet sequence number (per sender, wraps at 256).
    pub sequence: u8,
    /// Message id.
    pub message_id: u32,
    /// Payload length.
    pub payload_len: usize,
    /// Whether a MAVLink 2 signature follows the checksum.
    pub signed: bool,
    /// Length of the whole packet (header, payload, checksum, signature).
    pub packet_len: usize,
}

impl Header {
    fn header_len(&self) -> usize {
        if self.version == 1 {
            6
        } else {
            10
        }
    }
}

/// Reads the header of the packet at the start of `buf`; `buf` may hold more after it.
pub fn header(buf: &[u8]) -> Result<Header, DecodeError> {
    match buf.first() {
        Some(&STX_V1) => {
            if buf.len() < 6 {
                return Err(DecodeError::Truncated);
            }
            let len = usize::from(buf[1]);
            Ok(Header {
                version: 1,
                payload_len: len,
                sequence: buf[2],
                system_id: buf[3],
                component_id: buf[4],
                message_id: u32::from(buf[5]),
                signed: false,
                packet_len: 6 + len + 2,
            })
        }
        Some(&STX_V2) => {
            if buf.len() < 10 {
                return Err(DecodeError::Truncated);
            }
            let len = usize::from(buf[1]);
            let flags = buf[2];
            if flags & !IFLAG_SIGNED != 0 {
                return Err(DecodeError::UnsupportedFlags(flags));
            }
            let signed = flags & IFLAG_SIGNED != 0;
            Ok(Header {
                version: 2,
                payload_len: len,
                sequence: buf[4],
                system_id: buf[5],
                component_id: buf[6],
                message_id: u32::from_le_bytes([buf[7], buf[8], buf[9], 0]),
                signed,
                packet_len: 10 + len + 2 + if signed { SIGNATURE_LEN } else { 0 },
            })
        }
        Some(_) => Err(DecodeError::BadMagic),
        None => Err(DecodeError::Truncated),
    }
}

/// Checks the packet at the start of `buf` (length and checksum); returns its header.
pub fn check(buf: &[u8]) -> Result<Header, DecodeError> {
    let h = header(buf)?;
    if buf.len() < h.packet_len {
        return Err(DecodeError::Truncated);
    }
    let crc_at = h.header_len() + h.payload_len;
    let got = u16::from_le_bytes([buf[crc_at], buf[crc_at + 1]]);
    let extra = MavMessage::extra_crc(h.message_id);
    if mavlink::calculate_crc(&buf[1..crc_at], extra) != got {
        if MavMessage::default_message_from_id(h.message_id).is_none() {
            return Err(DecodeError::UnknownMessage(h.message_id));
        }
        return Err(DecodeError::Crc);
    }
    Ok(h)
}

/// A decoded packet.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Its header.
    pub header: Header,
    /// The message (`common` and `ardupilotmega` messages).
    pub message: MavMessage,
}

/// Decodes `packet`, which must hold exactly one packet. A signature is passed over, not
/// verified (the relay holds no signing keys).
pub fn decode(packet: &[u8]) -> Result<Decoded, DecodeError> {
    let header = check(packet)?;
    if packet.len() != header.packet_len {
        return Err(DecodeError::TrailingBytes);
    }
    let start = header.header_len();
    let payload = &packet[start..start + header.payload_len];
    let version = if header.version == 1 {
        MavlinkVersion::V1
    } else {
        MavlinkVersion::V2
    };
    let message = MavMessage::parse(version, header.message_id, payload).map_err(|e| match e {
        mavlink::error::ParserError::UnknownMessage { id } => DecodeError::UnknownMessage(id),
        _ => DecodeError::Invalid,
    })?;
    Ok(Decoded { header, message })
}

/// The message id of a name in `common` / `ardupilotmega` (`"ATTITUDE"` → 30).
pub fn message_id(name: &str) -> Option<u32> {
    MavMessage::message_id_from_name(name)
}

/// The name of a message id in `common` / `ardupilotmega`.
pub fn message_name(id: u32) -> Option<&'static str> {
    MavMessage::default_message_from_id(id).map(|m| m.message_name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mavlink::dialects::common;
    use mavlink::MavHeader;

    fn packet(version: MavlinkVersion, seq: u8) -> Vec<u8> {
        let msg = common::MavMessage::ATTITUDE(common::ATTITUDE_DATA {
            time_boot_ms: 1234,
            roll: 0.5,
            pitch: -0.25,
            yaw: 1.0,
            rollspeed: 0.0,
            pitchspeed: 0.0,
            yawspeed: 0.0,
        });
        let mut out = Vec::new();
        let h = MavHeader {
            system_id: 7,
            component_id: 1,
            sequence: seq,
        };
        mavlink::write_versioned_msg(&mut out, version, h, &msg).expect("encode");
        out
    }

    #[test]
    fn v1_and_v2_packets_decode_with_their_header() {
        for (v, n) in [(MavlinkVersion::V1, 1), (MavlinkVersion::V2, 2)] {
            let p = packet(v, 42);
            let d = decode(&p).expect("decodes");
            assert_eq!(d.header.version, n);
            assert_eq!(
                (d.header.system_id, d.header.component_id, d.header.sequence),
                (7, 1, 42)
            );
            assert_eq!(d.header.message_id, 30);
            assert_eq!(d.message.message_name(), "ATTITUDE");
        }
    }

    #[test]
    fn damaged_packets_say_why() {
        let p = packet(MavlinkVersion::V2, 1);
        let mut bad = p.clone();
        let last = bad.len() - 3;
        bad[last] ^= 0x55;
        assert_eq!(decode(&bad).err(), Some(DecodeError::Crc));
        assert_eq!(
            decode(&p[..p.len() - 1]).err(),
            Some(DecodeError::Truncated)
        );
        let mut long = p.clone();
        long.push(0);
        assert_eq!(decode(&long).err(), Some(DecodeError::TrailingBytes));
        assert_eq!(decode(b"hello").err(), Some(DecodeError::BadMagic));
        assert_eq!(decode(&[]).err(), Some(DecodeError::Truncated));
        let mut unknown = p;
        unknown[7] = 0xEE;
        unknown[8] = 0xEE;
        assert_eq!(
            decode(&unknown).err(),
            Some(DecodeError::UnknownMessage(0xEEEE))
        );
    }

    #[test]
    fn names_map_to_ids_and_back() {
        assert_eq!(message_id("ATTITUDE"), Some(30));
        assert_eq!(message_id("HEARTBEAT"), Some(0));
        // ardupilotmega-only messages are known too.
        assert_eq!(message_id("AHRS2"), Some(178));
        assert_eq!(message_name(33), Some("GLOBAL_POSITION_INT"));
        assert_eq!(message_id("NOT_A_MESSAGE"), None);
    }
}
