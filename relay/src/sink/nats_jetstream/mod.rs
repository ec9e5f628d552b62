//! `nats_jetstream` sink: every admitted frame is published to a subject rendered from a
//! template (default `contrail.telemetry.{agent_id}`), with a `Nats-Msg-Id: {agent_id}:{seq}`
//! header so JetStream drops a resend within the stream's duplicate window. The payload is the
//! frame wrapped as a `contrail.v1.StoredFrame` (protobuf, no length prefix); headers
//! `Contrail-Agent`, `Contrail-Seq` and `Contrail-Kind` let consumers route without decoding.
//!
//! A write publishes all its frames pipelined (at most `max_pending_acks` acks outstanding) and
//! then awaits the publish acks in order; it is accepted only when every ack came back. Any
//! failure fails the whole write; the worker retries it and dedup makes the retry safe.

pub mod config;
mod sink;

use std::sync::Arc;

use futures::FutureExt;

pub use config::{
    subject_token, JetStreamSettings, NatsJetstreamConfig, DEFAULT_STREAM, DEFAULT_SUBJECT,
};
pub use sink::{JetStreamError, JetStreamSink};

use super::{Sink, SinkFactory};

/// Factory for a JetStream sink; building one connects and ensures the stream exists.
pub fn factory(settings: JetStreamSettings) -> SinkFactory {
    let settings = Arc::new(settings);
    Arc::new(move || {
        let settings = settings.clone();
        async move {
            let sink = JetStreamSink::connect(settings).await?;
            Ok(Box::new(sink) as Box<dyn Sink>)
        }
        .boxed()
    })
}
