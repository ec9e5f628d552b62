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
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

pub use queue::{SubscriberPolicy, SubscriberQueue};
pub use registry::{SubscriberInfo, SubscriberRegistry};
pub use settings::LiveSettings;

use super::{Filter, Sink, SinkBatch, SinkError, SinkFactory};
use crate::config::Config;
pub use config::{
    LiveConfig, DEFAULT_MAX_SUBSCRIBERS, DEFAULT_SUBSCRIBER_QUEUE_FRAMES,
    MAX_SUBSCRIBER_QUEUE_FRAMES,
};

/// How long `flush` waits for subscriber queues to empty.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

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
