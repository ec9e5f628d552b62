//! Contrail relay: QUIC ingest with session actors, credit backpressure and sink fan-out.
//!
//! Start one with [`RelayBuilder`]; see `README.md` for the data path and guarantees.

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod cursor;
pub mod fanout;
#[cfg(test)]
mod import_graph;
pub mod latency;
pub mod quota;
pub mod root;
pub mod server;
pub mod session;
pub mod sink;
pub mod tls;

pub use crate::core::{Hooks, RelayCore};
pub use config::Config;
pub use root::RelayChild;
pub use server::{DrainReport, RelayBuilder, RelayError, RunningRelay};
pub use session::supervisor::ClaimError;
