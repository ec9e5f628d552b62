//! An IO-free MAVLink framer: bytes in, whole packets out, byte for byte as received.
//!
//! The `mavlink` crate's connections hand out parsed messages; the agent forwards the raw
//! packet (a backend re-parses it or passes it to a ground station, and MAVLink 2 signatures
//! stay verifiable), so it finds packets itself: a start byte (0xFE for MAVLink 1, 0xFD for
//! MAVLink 2), the header's payload length, the checksum with the message's CRC_EXTRA from the
//! dialect (common + ardupilotmega), and for a signed MAVLink 2 packet the 13-byte signature
//! trailer, which is kept and never checked (the agent has no key; the packet passes through
//! unchanged).
//!
//! Junk between packets, packets whose checksum fails, and packets of message ids the dialect
//! does not know are counted and skipped; the framer resynchronises on the next start byte. A
//! stream source (TCP, serial) keeps an incomplete packet for the next read; a datagram source
//! calls [`Framer::next_in_datagram`], which counts what is left as truncated.

use bytes::{Buf, Bytes, BytesMut};
use mavlink::Message;

/// The dialect the agent checks and parses with (it includes common).
pub type Dialect = mavlink::dialects::ardupilotmega::MavMessage;

const STX_V1: u8 = 0xFE;
const STX_V2: u8 = 0xFD;
const V1_HEADER: usize = 6;
const V2_HEADER: usize = 10;
const CHECKSUM: usize = 2;
const SIGNATURE: usize = 13;
const IFLAG_SIGNED: u8 = 0x01;
/// Largest packet: MAVLink 2 header, 255 payload bytes, checksum and signature.
pub const MAX_PACKET: usize = V2_HEADER + 255 + CHECKSUM + SIGNATURE;

/// Why bytes were skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Bytes outside any packet (before a start byte).
    Junk,
    /// A packet whose checksum did not match.
    BadCrc,
    /// A packet cut short (datagram ended inside it).
    Truncated,
    /// A packet of a message id the dialect does not know.
    UnknownMessage,
}

/// Counts of skipped input, by cause.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SkipCounts {
    /// Junk bytes.
    pub junk_bytes: u64,
    /// Packets with a bad checksum.
    pub bad_crc: u64,
    /// Truncated packets.
    pub truncated: u64,
    /// Packets of unknown message ids.
    pub unknown_message: u64,
}

impl SkipCounts {
    fn count(&mut self, skip: Skip, bytes: usize) {
        match skip {
            Skip::Junk => self.junk_bytes += bytes as u64,
            Skip::BadCrc => self.bad_crc += 1,
            Skip::Truncated => self.truncated += 1,
            Skip::UnknownMessage => self.unknown_message += 1,
        }
    }
}

/// One MAVLink packet as received, with its header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The whole packet: start byte to checksum (and signature), unchanged.
    pub raw: Bytes,
    /// MAVLink 2 (else 1).
    pub v2: bool,
    /// Message id.
    pub msg_id: u32,
    /// Sender system id.
    pub system_id: u8,
    /// Sender component id.
    pub component_id: u8,
    /// Packet sequence number.
    pub sequence: u8,
    /// Whether a MAVLink 2 signature trailer is attached.
    pub signed: bool,
}

impl Packet {
    /// The payload bytes (as sent: MAVLink 2 trims trailing zeros).
    pub fn payload(&self) -> &[u8] {
        let (start, len) = if self.v2 {
            (V2_HEADER, usize::from(self.raw[1]))
        } else {
            (V1_HEADER, usize::from(self.raw[1]))
        };
        &self.raw[start..start + len]
    }

    /// Parses the message with the dialect.
    pub fn parse(&self) -> Option<Dialect> {
        let version = if self.v2 {
            mavlink::MavlinkVersion::V2
        } else {
            mavlink::MavlinkVersion::V1
        };
        Dialect::parse(version, self.msg_id, self.payload()).ok()
    }
}

/// Which message ids the dialect knows: a bitmap over ids below 65,536 (every id the
/// dialects define), filled once.
fn known(id: u32) -> bool {
    static KNOWN: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    let bits = KNOWN.get_or_init(|| {
        let mut bits = vec![0u64; 1024];
        for id in 0..65_536u32 {
            if Dialect::default_message_from_id(id).is_some() {
                bits[(id / 64) as usize] |= 1 << (id % 64);
            }
        }
        bits
    });
    id < 65_536 && bits[(id / 64) as usize] & (1 << (id % 64)) != 0
}

/// The CRC-16/MCRF4XX (X.25) MAVLink uses, over `data` then `extra`.
pub fn crc(data: &[u8], extra: u8) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data.iter().chain(std::iter::once(&extra)) {
        let mut tmp = b ^ (crc & 0xFF) as u8;
        tmp ^= tmp << 4;
        crc = (crc >> 8) ^ (u16::from(tmp) << 8) ^ (u16::from(tmp) << 3) ^ (u16::from(tmp) >> 4);
    }
    crc
}

/// Incremental framer (one per byte stream or datagram source).
#[derive(Debug, Default)]
pub struct Framer {
    buf: BytesMut,
    /// What was skipped so far.
    pub skipped: SkipCounts,
}

enum Step {
    Packet(Packet),
    Skip(Skip, usize),
    NeedMore,
}

impl Framer {
    /// A framer with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet, skipping (and counting) whatever is not one; `None` when more
    /// bytes are needed (a stream source reads more and calls again).
    pub fn next_packet(&mut self) -> Option<Packet> {
        self.next(false)
    }

    /// Like [`next_packet`](Self::next_packet) for a datagram source, whose datagram holds
    /// all it will ever hold: a packet cut short is counted as truncated and skipped, and `None`
    /// means the datagram is used up (the buffer is then empty).
    pub fn next_in_datagram(&mut self) -> Option<Packet> {
        self.next(true)
    }

    fn next(&mut self, datagram: bool) -> Option<Packet> {
        loop {
            match self.step() {
                Step::Packet(p) => return Some(p),
                Step::Skip(why, n) => {
                    self.skipped.count(why, n);
                    self.buf.advance(n);
                }
                Step::NeedMore if datagram && !self.buf.is_empty() => {
                    // Skip the start byte only: a whole packet may follow inside the rest.
                    self.skipped.count(Skip::Truncated, 1);
                    self.buf.advance(1);
                }
                Step::NeedMore => return None,
            }
        }
    }

    /// Bytes held waiting for the rest of a packet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn step(&mut self) -> Step {
        let buf = &self.buf[..];
        let Some(first) = buf.first() else {
            return Step::NeedMore;
        };
        if !matches!(*first, STX_V1 | STX_V2) {
            let junk = buf
                .iter()
                .position(|b| matches!(*b, STX_V1 | STX_V2))
                .unwrap_or(buf.len());
            return Step::Skip(Skip::Junk, junk);
        }
        let v2 = *first == STX_V2;
        let header = if v2 { V2_HEADER } else { V1_HEADER };
        if buf.len() < header {
            return Step::NeedMore;
        }
        let len = usize::from(buf[1]);
        let signed = v2 && buf[2] & IFLAG_SIGNED != 0;
        let total = header + len + CHECKSUM + if signed { SIGNATURE } else { 0 };
        if buf.len() < total {
            return Step::NeedMore;
        }
        let (sequence, system_id, component_id, msg_id) = if v2 {
            (
                buf[4],
                buf[5],
                buf[6],
                u32::from(buf[7]) | u32::from(buf[8]) << 8 | u32::from(buf[9]) << 16,
            )
        } else {
            (buf[2], buf[3], buf[4], u32::from(buf[5]))
        };
        if !known(msg_id) {
            // Unverifiable: skip just the start byte, so a good packet inside is not lost.
            // It is counted once here; the bytes after it resynchronise as junk.
            return Step::Skip(Skip::UnknownMessage, 1);
        }
        let body_end = header + len;
        let want = crc(&buf[1..body_end], Dialect::extra_crc(msg_id));
        let got = u16::from_le_bytes([buf[body_end], buf[body_end + 1]]);
        if want != got {
            return Step::Skip(Skip::BadCrc, 1);
        }
        let raw = self.buf.split_to(total).freeze();
        Step::Packet(Packet {
            raw,
            v2,
            msg_id,
            system_id,
            component_id,
            sequence,
            signed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contrail_testsupport::{corrupt_crc, garbage, SimVehicle};

    #[test]
    fn the_crc_matches_the_mavlink_crate() {
        let data = b"\x09\x00\x00\x07\x01\x01\x00\x00\x00abcdefghi";
        assert_eq!(crc(data, 50), mavlink::calculate_crc(data, 50));
    }

    #[test]
    fn a_stream_in_odd_chunks_yields_every_packet_byte_for_byte() {
        let pkts = SimVehicle::new(1).advance(3_000);
        let stream: Vec<u8> = pkts.iter().flat_map(|p| p.raw.clone()).collect();
        let mut f = Framer::new();
        let mut out = Vec::new();
        for chunk in stream.chunks(37) {
            f.push(chunk);
            while let Some(p) = f.next_packet() {
                out.push(p);
            }
        }
        assert_eq!(out.len(), pkts.len());
        for (got, want) in out.iter().zip(&pkts) {
            assert_eq!(&got.raw[..], &want.raw[..]);
            assert_eq!(got.msg_id, want.msg_id);
            let name = got.parse().map(|m| m.message_name());
            assert_eq!(name, Some(want.name));
        }
        assert!(out.iter().any(|p| p.signed), "signed packets pass");
        assert!(out.iter().any(|p| !p.v2), "MAVLink 1 packets pass");
        assert_eq!(f.skipped, SkipCounts::default());
    }

    #[test]
    fn junk_bad_checksums_and_unknown_ids_are_counted_and_good_packets_survive() {
        let pkts = SimVehicle::new(1).advance(2_000);
        let mut stream = Vec::new();
        let mut good = Vec::new();
        let mut bad = 0;
        for (i, p) in pkts.iter().enumerate() {
            stream.extend_from_slice(&garbage(40, i as u64 + 1));
            if i % 10 == 0 {
                stream.extend_from_slice(&corrupt_crc(&p.raw));
                bad += 1;
            } else {
                stream.extend_from_slice(&p.raw);
                good.push(p.raw.clone());
            }
        }
        // An id no dialect here defines (v2 id 0xABCDEF), with a plausible layout.
        stream.extend_from_slice(&[0xFD, 1, 0, 0, 9, 1, 1, 0xEF, 0xCD, 0xAB, 7, 0, 0]);
        stream.extend_from_slice(&pkts[1].raw);
        good.push(pkts[1].raw.clone());
        // A start byte in the junk can claim a length that runs past the end of what has
        // arrived: a stream framer waits for more bytes before it can tell. More bytes come.
        stream.extend_from_slice(&[0u8; MAX_PACKET]);
        let mut f = Framer::new();
        f.push(&stream);
        let mut out = Vec::new();
        while let Some(p) = f.next_packet() {
            out.push(p.raw.to_vec());
        }
        let first_diff = out.iter().zip(&good).position(|(a, b)| a != b);
        assert!(
            out.len() == good.len() && first_diff.is_none(),
            "got {} packets, want {}; first difference at {first_diff:?}",
            out.len(),
            good.len()
        );
        assert!(f.skipped.bad_crc >= bad, "{:?} (>= {bad})", f.skipped);
        assert!(f.skipped.unknown_message >= 1, "{:?}", f.skipped);
        assert!(f.skipped.junk_bytes > 0);
    }

    #[test]
    fn a_datagram_cut_short_counts_as_truncated_and_keeps_what_follows() {
        let pkts = SimVehicle::new(1).advance(1_000);
        let mut dgram = pkts[0].raw[..pkts[0].raw.len() - 3].to_vec();
        dgram.extend_from_slice(&pkts[1].raw);
        let mut f = Framer::new();
        f.push(&dgram);
        let mut out = Vec::new();
        while let Some(p) = f.next_in_datagram() {
            out.push(p.raw.to_vec());
        }
        assert_eq!(out, vec![pkts[1].raw.clone()]);
        assert!(
            f.skipped.truncated + f.skipped.bad_crc >= 1,
            "{:?}",
            f.skipped
        );
        assert_eq!(f.buffered(), 0);
    }
}
