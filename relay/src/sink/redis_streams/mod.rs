//! `redis_streams` sink: every admitted frame becomes one `XADD` to a stream per agent (or one
//! stream for all), with `MAXLEN ~` trimming. All frames of one `write` go out as ONE pipeline;
//! the write is accepted (and, for a required sink, the batches acked) only after every reply of
//! that pipeline came back without error.
//!
//! Entry fields: `agent`, `seq`, `kind`, `flight`, `sent_at`, `device_time`, `received_at`
//! (Unix ns), `content_type`, `payload` (raw bytes).

pub mod config;
mod sink;

use std::sync::Arc;

use futures::FutureExt;

pub use config::{RedisStreamsConfig, RedisStreamsSettings, DEFAULT_KEY, DEFAULT_MAXLEN};
pub use sink::{RedisStreamsError, RedisStreamsSink};

use super::{Sink, SinkFactory};

/// Factory for a Redis Streams sink; building one connects (so a down server fails the build
/// and the worker retries with backoff, reporting the sink unhealthy).
pub fn factory(settings: RedisStreamsSettings) -> SinkFactory {
    let settings = Arc::new(settings);
    Arc::new(move || {
        let settings = settings.clone();
        async move {
            let sink = RedisStreamsSink::connect(settings).await?;
            Ok(Box::new(sink) as Box<dyn Sink>)
        }
        .boxed()
    })
}
