//! Contrail wire contract.
//!
//! * [`proto`]: the prost messages generated from `proto/contrail.proto` (the contract for agents in
//!   other languages).
//! * [`codec`]: the length-prefixed framing codec over `BytesMut`, IO-free (no tokio, no quinn).
//! * [`frame`]: a zero-allocation view of a `TelemetryFrame` for the relay's hot path.
//! * [`error`]: the one error-code enum shared by `Error` messages and QUIC close codes.
//! * [`ids`]: identity newtypes.
//! * [`stored`]: zero-allocation views of the `StoredFrame`s live subscribers receive.
//! * `client` (feature `client`, on by default): the agent client library over quinn, and the
//!   live subscriber client (`client::subscriber`).

pub mod codec;
pub mod error;
pub mod frame;
pub mod ids;
pub mod stored;

#[cfg(feature = "client")]
pub mod client;

/// Generated protobuf messages (package `contrail.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/contrail.v1.rs"));
}

/// ALPN protocol id of agent sessions.
pub const ALPN_AGENT: &[u8] = b"contrail/1";
/// ALPN protocol id of live subscribers.
pub const ALPN_SUBSCRIBER: &[u8] = b"contrail-sub/1";

pub use codec::{CodecError, FrameCodec, LEN_PREFIX};
pub use error::ErrorCode;
pub use frame::{FrameMeta, FrameView, TelemetryBatch};
pub use ids::{AgentId, IdError, SessionId};
pub use stored::{StoredBatch, StoredMeta, StoredView};
