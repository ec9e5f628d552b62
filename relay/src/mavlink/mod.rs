//! MAVLink in the relay: decoded messages in the JSON outputs, name filters, and the optional
//! lab/SITL UDP endpoint.
//!
//! - [`packet`]: checks and decodes one packet (v1 and v2, dialects `common` and
//!   `ardupilotmega`); names ↔ message ids.
//! - [`json`]: what the JSON outputs add for a frame of content type [`CONTENT_TYPE`]. Decoding
//!   happens only there, never on the session reader's hot path nor in binary outputs; a payload
//!   that does not decode is written raw (base64) as any other and counted.
//! - [`udp`]: `mavlink.udp_listen`, where each MAVLink system id becomes a best-effort session.

pub mod config;
pub mod json;
pub mod packet;
pub mod udp;

pub use config::MavlinkConfig;
pub use json::JsonDecoder;
pub use packet::{DecodeError, Decoded};

/// The content type of a frame whose payload is one raw MAVLink packet.
pub const CONTENT_TYPE: &str = "application/x-mavlink";
