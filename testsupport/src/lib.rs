//! Test support for Contrail integration tests.
//!
//! * [`poll_until`] / [`poll_until_async`]: wait for a condition with a deadline instead of sleeping.
//! * [`RedisServer`] and [`NatsServer`]: real `redis-server` / `nats-server` child processes on free
//!   loopback ports, each in its own temporary directory, killed on drop.
//! * [`ImpairmentProxy`]: a seeded userspace UDP proxy that adds loss, duplication, reordering, delay
//!   and jitter between a QUIC client and server.
//! * [`ProcessGuard`]: a child process that is killed on drop, with `SIGTERM` / `SIGKILL` helpers.
//! * [`Browser`]: headless Chromium over WebDriver (Debian's `chromium` + `chromium-driver`).
//! * [`RespValue`]: a tiny RESP client used to inspect Redis state without a Redis crate.

#![warn(missing_docs)]

mod browser;
mod launch;
mod nats;
mod poll;
mod process;
mod proxy;
mod redis;
mod resp;

pub use browser::{Browser, BrowserError, CHROMIUM};
pub use nats::NatsServer;
pub use poll::{poll_until, poll_until_async, Ready, POLL_INTERVAL};
pub use process::ProcessGuard;
pub use proxy::{Impairment, ImpairmentProxy, ProxyHandle, ProxyStats, MAX_FLOWS};
pub use redis::{RedisOptions, RedisServer};
pub use resp::RespValue;
