//! Contrail relay: QUIC ingest with session actors, credit backpressure and sink fan-out.
//!
//! Start one with [`RelayBuilder`]; see `README.md` for the data path and guarantees.

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cursor;
pub mod fanout;
pub mod latency;
pub mod placement;
pub mod quota;
pub mod server;
pub mod session;
pub mod sink;
pub mod tls;

pub use config::Config;
pub use server::{
    ClaimError, DrainReport, Hooks, RelayBuilder, RelayCore, RelayError, RunningRelay,
};
