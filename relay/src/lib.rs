//! Contrail relay: QUIC ingest with session actors, credit backpressure and sink fan-out.
//!
//! Start one with [`RelayBuilder`] from a [`Config`]; add sinks built in code with
//! [`RelayBuilder::sink`] (a [`sink::SinkSpec`] around your [`sink::Sink`]). See `README.md`
//! for the module layers and the supervision tree.

// What embedders use: the builder and its handle (re-exported below), the configuration tree
// (with the auth and quota sections it holds), the CLI the binary shares, and the sink API.
pub mod auth;
pub mod cli;
pub mod config;
/// The command downlink's relay side (configuration, store wiring).
pub mod downlink;
/// MAVLink decoding where JSON is written (sinks, `contrail-tail`) and the lab UDP endpoint.
pub mod mavlink;
/// Placement: where a full or draining relay sends agents (from the relay registry).
pub mod placement;
pub mod quota;
pub mod sink;

// The relay's inside.
mod core;
mod identity;
#[cfg(test)]
mod import_graph;
mod root;
mod server;
mod session;
mod tls;

// Public only for the relay's own benches and tests (not a stable API).
#[doc(hidden)]
pub mod clock;
#[doc(hidden)]
pub mod cursor;
#[doc(hidden)]
pub mod fanout;
#[doc(hidden)]
pub mod latency;

/// Pure parts of the hot path, for benches and tests (not a stable API).
#[doc(hidden)]
pub mod testing {
    pub use crate::session::credit;
}

pub use crate::core::{BatchHook, ClaimHook, Hooks, RelayCore};
pub use config::Config;
pub use root::RelayChild;
pub use server::{DrainReport, RelayBuilder, RelayError, RunningRelay};
pub use session::supervisor::ClaimError;
pub use tls::TlsError;
