//! Agent sessions: one ractor actor per QUIC connection, under the [`supervisor`].
//!
//! Files, each importing only those listed before it: [`shared`] (what the actor, its driver
//! and the registry share about one session), [`supervisor`] (the registry: one live session
//! per agent id), [`context`] (what every session shares, and one registered session's
//! context), [`credit`] (the pure sequence/credit/quota check), `reader` (the telemetry hot
//! path), [`driver`] (handshake, Register, control
//! loop), [`actor`] (the session actor that owns the driver task).

pub mod actor;
mod commands;
pub mod context;
pub mod credit;
pub mod driver;
mod reader;
pub mod shared;
pub mod supervisor;
