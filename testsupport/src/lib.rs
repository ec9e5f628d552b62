//! Test support for Contrail integration tests.
//!
//! * [`poll_until`] / [`poll_until_async`]: wait for a condition with a deadline instead of sleeping.
//! * [`RedisServer`] and [`NatsServer`]: real `redis-server` / `nats-server` child processes on free
//!   loopback ports, each in its own temporary directory, killed on drop. [`RedisServer::cmd`]
//!   inspects Redis state through the `redis` crate's blocking client.
//! * [`PostgresServer`]: a real PostgreSQL (`initdb` in a temp dir, run as the `postgres` user
//!   when root) on a free loopback port, killed on drop.
//! * [`ImpairmentProxy`]: a seeded userspace UDP proxy that adds loss, duplication, reordering, delay
//!   and jitter between a QUIC client and server.
//! * [`ProcessGuard`]: a child process that is killed on drop, with `SIGTERM` / `SIGKILL` helpers.
//! * [`Browser`]: headless Chromium over WebDriver (Debian's `chromium` + `chromium-driver`).
//! * [`SimVehicle`]: a simulated MAVLink vehicle (a realistic message mix, arming cycles), and
//!   [`Pty`], a pseudo-terminal pair standing in for a serial port.

#![warn(missing_docs)]

mod browser;
mod launch;
mod mavlink_sim;
mod nats;
mod poll;
mod postgres;
mod process;
mod proxy;
mod redis;

pub use browser::{Browser, BrowserError, CHROMIUM};
pub use mavlink_sim::{corrupt_crc, garbage, x25, Pty, SimPacket, SimVehicle};
pub use nats::NatsServer;
pub use poll::{poll_until, poll_until_async, Ready, POLL_INTERVAL};
pub use postgres::PostgresServer;
pub use process::ProcessGuard;
pub use proxy::{Impairment, ImpairmentProxy, ProxyHandle, ProxyStats, MAX_FLOWS};
pub use redis::{RedisOptions, RedisServer};
