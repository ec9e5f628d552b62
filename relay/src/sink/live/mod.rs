//! `live` sink: backends subscribe over QUIC (ALPN `contrail-sub/1`) and receive frames as they
//! pass. See `LIVE.md` in this folder for the operator's view.
//!
//! * [`SubscriberRegistry`] (shared by this sink and the accept path) holds the current
//!   subscribers, bounds them by `max_subscribers`, and owns one task per subscriber connection
//!   ([`conn`]): the Subscribe handshake, then a writer that moves the subscriber's queue to its
//!   data stream in coalesced writes, and a periodic status sender.
//! * [`LiveSink::write`] fans each batch out to every subscriber's own bounded
//!   [`SubscriberQueue`] (filtered by agent glob, kind and flight id; a shared batch plus the
//!   selected frame indices, never a copy). A `drop_oldest` subscriber evicts and counts; a
//!   `block` subscriber makes `write` wait for room, so on a `required` live sink a subscriber
//!   that must not miss frames throttles agents through credits, like any required sink.
//!
//! Supervision: the subscriber tasks belong to the registry's `JoinSet`; the relay's drain calls
//! [`SubscriberRegistry::shutdown`] (close with `DRAINING`, join) after the sinks flushed, and
//! dropping the relay aborts them. A subscriber's slot and registration are released by a guard
//! however its task ends.

pub mod config;
mod conn;
pub mod queue;
pub mod registry;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

pub use queue::{SubscriberPolicy, SubscriberQueue};
pub use registry::{SubscriberInfo, SubscriberRegistry};

use super::{Filter, Sink, SinkBatch, SinkError, SinkFactory};
use crate::config::Config;
pub use config::{
    LiveConfig, DEFAULT_MAX_SUBSCRIBERS, DEFAULT_SUBSCRIBER_QUEUE_FRAMES,
    MAX_SUBSCRIBER_QUEUE_FRAMES,
};

/// How long `flush` waits for subscriber queues to empty.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Settings of the live sink and its subscribers.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// Subscriber connections served at once (more are refused with `TOO_MANY_SESSIONS`).
    pub max_subscribers: usize,
    /// Largest queue a subscriber may ask for, in frames; also what it gets when it asks for 0.
    pub max_queue_frames: usize,
    /// Token `Subscribe.auth_token` must match; `None`: no authentication.
    pub token: Option<String>,
    /// Time allowed from connection to Subscribe.
    pub handshake_timeout: Duration,
    /// Largest control message accepted.
    pub max_frame_bytes: usize,
}

impl Default for LiveSettings {
    fn default() -> Self {
        LiveSettings {
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS,
            max_queue_frames: DEFAULT_SUBSCRIBER_QUEUE_FRAMES,
            token: None,
            handshake_timeout: Duration::from_secs(5),
            max_frame_bytes: 64 * 1024,
        }
    }
}

/// Settings of the configured live sink: its keys, the token (`subscriber_token`, else
/// `http.admin_token`), the relay's handshake timeout.
pub fn settings(cfg: &LiveConfig, config: &Config) -> LiveSettings {
    LiveSettings {
        max_subscribers: cfg.max_subscribers,
        max_queue_frames: cfg.subscriber_queue_frames,
        token: cfg
            .subscriber_token
            .clone()
            .or_else(|| config.http.admin_token.clone()),
        handshake_timeout: config.limits.handshake_timeout(),
        max_frame_bytes: 64 * 1024,
    }
}

/// The live sink: fans batches out to the registry's current subscribers.
pub struct LiveSink {
    registry: Arc<SubscriberRegistry>,
}

/// Factory for the live sink over `registry`.
pub fn factory(registry: Arc<SubscriberRegistry>) -> SinkFactory {
    Arc::new(move || {
        let registry = registry.clone();
        async move { Ok(Box::new(LiveSink { registry }) as Box<dyn Sink>) }.boxed()
    })
}

impl Sink for LiveSink {
    fn write<'a>(
        &'a mut self,
        batches: &'a [Arc<SinkBatch>],
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<usize, SinkError>> {
        async move {
            let subscribers = self.registry.snapshot();
            let pass_all = filter.is_pass_all();
            let mut accepted = 0usize;
            for b in batches {
                if !pass_all && !filter.admits_agent(&b.origin.agent_id) {
                    continue;
                }
                accepted += if pass_all {
                    b.frames.len()
                } else {
                    b.frames
                        .iter()
                        .filter(|f| filter.admits_frame(f.kind(), f.flight_id()))
                        .count()
                };
                for s in subscribers.iter() {
                    // Block subscribers wait here for room: this is what throttles agents.
                    s.offer(b, filter).await;
                }
            }
            Ok(accepted)
        }
        .boxed()
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        async move {
            self.registry.wait_drained(FLUSH_WAIT).await;
            Ok(())
        }
        .boxed()
    }
}

/// Whether `conn` negotiated the live subscriber ALPN (`contrail-sub/1`).
pub fn is_subscriber(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == contrail_protocol::ALPN_SUBSCRIBER)
}

/// Hands a subscriber connection to the live sink's registry (the accept path calls this right
/// after the QUIC handshake). Refused with `DRAINING` while the relay drains.
pub(crate) fn hand_over(core: &crate::server::RelayCore, conn: quinn::Connection) {
    use contrail_protocol::ErrorCode;
    let refuse = |code: ErrorCode, reason: &str| {
        core.count_rejection(code);
        conn.close(
            quinn::VarInt::from_u32(code.close_code()),
            reason.as_bytes(),
        );
    };
    match &core.live {
        _ if core.is_draining() => refuse(ErrorCode::Draining, "relay is draining"),
        Some(live) => live.accept(conn),
        None => refuse(ErrorCode::ProtocolViolation, "no live sink on this relay"),
    }
}
