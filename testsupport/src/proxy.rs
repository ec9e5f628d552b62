//! A seeded userspace UDP proxy that impairs traffic between a QUIC client and server on loopback.
//!
//! Each datagram goes through, per direction and with that direction's own seeded RNG:
//! blackhole check, loss, duplication, then per copy a delay of `delay + U(0..=jitter)`; a
//! "reordered" copy is held back an extra `max(jitter, 10ms)` so later datagrams overtake it.
//! Delayed datagrams wait in a bounded queue ordered by release instant; overflow is dropped and
//! counted. Given the same datagram sequence and seed, the decisions are the same.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

mod engine;

/// Most client source addresses (flows) the proxy tracks; datagrams from further clients are dropped.
pub const MAX_FLOWS: usize = 1024;
/// Default cap on datagrams waiting in the delay queue.
pub const DEFAULT_QUEUE_LIMIT: usize = 4096;

/// Impairments applied independently to each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// RNG seed; the client-to-server and server-to-client streams are derived from it.
    pub seed: u64,
    /// Probability in `[0, 1]` that a datagram is dropped.
    pub loss: f64,
    /// Probability in `[0, 1]` that a datagram is sent twice.
    pub duplicate: f64,
    /// Probability in `[0, 1]` that a datagram is held back so later ones overtake it.
    pub reorder: f64,
    /// One-way base delay.
    pub delay: Duration,
    /// Extra uniformly distributed delay in `[0, jitter]`.
    pub jitter: Duration,
    /// Most datagrams (both directions) waiting in the delay queue; excess is dropped.
    pub queue_limit: usize,
}

impl Default for Impairment {
    fn default() -> Self {
        Self::none()
    }
}

impl Impairment {
    /// No impairment at all (seed 0): a plain relay.
    pub fn none() -> Self {
        Self::seeded(0)
    }

    /// No impairment, with the given seed; set the fields you need afterwards.
    pub fn seeded(seed: u64) -> Self {
        Self {
            seed,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            queue_limit: DEFAULT_QUEUE_LIMIT,
        }
    }
}

/// Counters since the proxy started, summed over both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Datagrams received from either side.
    pub received: u64,
    /// Datagrams sent on (duplicates count twice).
    pub forwarded: u64,
    /// Datagrams dropped: random loss, delay-queue overflow, or the flow limit.
    pub dropped: u64,
    /// Datagrams that were duplicated.
    pub duplicated: u64,
    /// Datagram copies held back for reordering.
    pub reordered: u64,
    /// Datagrams dropped because the blackhole was on.
    pub blackholed: u64,
    /// Of `dropped`, those dropped because the delay queue was full.
    pub queue_overflow: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    blackholed: AtomicU64,
    queue_overflow: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    local_addr: SocketAddr,
    cfg: Mutex<Impairment>,
    blackhole: AtomicBool,
    counters: Counters,
}

/// A cloneable control handle for a running [`ImpairmentProxy`].
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

impl ProxyHandle {
    /// The address clients should send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Replaces the impairment; applies to datagrams received from now on. A changed seed
    /// reseeds both directions' RNGs.
    pub fn set_impairment(&self, cfg: Impairment) {
        *self
            .shared
            .cfg
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = cfg;
    }

    /// The impairment currently applied.
    pub fn impairment(&self) -> Impairment {
        *self
            .shared
            .cfg
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// While on, every datagram in both directions (including those already delayed) is dropped.
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        ProxyStats {
            received: get(&c.received),
            forwarded: get(&c.forwarded),
            dropped: get(&c.dropped),
            duplicated: get(&c.duplicated),
            reordered: get(&c.reordered),
            blackholed: get(&c.blackholed),
            queue_overflow: get(&c.queue_overflow),
        }
    }
}

/// A UDP proxy between clients and one `upstream` server; stopped on drop or
/// [`ImpairmentProxy::shutdown`].
#[derive(Debug)]
pub struct ImpairmentProxy {
    handle: ProxyHandle,
    task: Option<JoinHandle<()>>,
}

impl ImpairmentProxy {
    /// Binds `127.0.0.1:0` and relays to `upstream` with `cfg`.
    ///
    /// # Panics
    /// When the socket cannot be bound.
    pub async fn start(upstream: SocketAddr, cfg: Impairment) -> ImpairmentProxy {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("impairment proxy cannot bind 127.0.0.1:0: {e}"));
        Self::with_socket(socket, upstream, cfg)
    }

    /// Relays datagrams arriving on an already bound `socket` to `upstream` with `cfg`.
    ///
    /// # Panics
    /// When called outside a tokio runtime or the socket has no local address.
    pub fn with_socket(
        socket: UdpSocket,
        upstream: SocketAddr,
        cfg: Impairment,
    ) -> ImpairmentProxy {
        let local_addr = socket
            .local_addr()
            .unwrap_or_else(|e| panic!("impairment proxy socket has no local address: {e}"));
        let shared = Arc::new(Shared {
            local_addr,
            cfg: Mutex::new(cfg),
            blackhole: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let task = tokio::spawn(engine::run(socket, upstream, shared.clone()));
        ImpairmentProxy {
            handle: ProxyHandle { shared },
            task: Some(task),
        }
    }

    /// A cloneable control handle.
    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    /// The address clients should send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// See [`ProxyHandle::set_impairment`].
    pub fn set_impairment(&self, cfg: Impairment) {
        self.handle.set_impairment(cfg);
    }

    /// See [`ProxyHandle::blackhole`].
    pub fn blackhole(&self, on: bool) {
        self.handle.blackhole(on);
    }

    /// See [`ProxyHandle::stats`].
    pub fn stats(&self) -> ProxyStats {
        self.handle.stats()
    }

    /// Stops the proxy and waits until its task (and with it every socket) is gone.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::warn!(error = %e, "impairment proxy task panicked");
                }
            }
        }
    }
}

impl Drop for ImpairmentProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests;
