//! Sinks: where batches go after the session reader decoded and checked them.
//!
//! Every sink has the same shape: a [`Sink`] implementation in its own folder, a bounded
//! [`BatchQueue`] of shared batches in front of it, and a worker task owned by a sink actor
//! (see [`actor`]) that pops batches in order, applies the sink's [`Filter`], writes, retries with
//! backoff, and — for a `required` sink — marks each batch complete only after the write was
//! accepted. A batch is acked to its agent once every required sink completed it.
//!
//! Adding a sink: a folder with its `config.rs` (a `deny_unknown_fields` struct that imports
//! nothing above it), its `Sink` impl, a variant of [`crate::config::SinkKind`] and one arm in
//! [`registry::build_with`].

pub mod actor;
pub mod batch;
pub mod channel;
pub mod file;
pub mod filter;
pub mod live;
pub mod nats_jetstream;
pub mod ndjson;
pub mod queue;
pub mod redis_streams;
pub mod registry;
pub mod setting;
pub mod stdout;
pub mod template;
pub mod worker;

use std::sync::Arc;

use futures::future::BoxFuture;

pub use batch::{BatchOrigin, SinkBatch};
pub use filter::Filter;
pub use queue::{BatchQueue, WhenFull};
pub use worker::SinkHandle;

/// Why a sink could not write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// An IO error (file, socket).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The backend refused or failed.
    #[error("backend: {0}")]
    Backend(String),
    /// The sink's configuration is unusable.
    #[error("config: {0}")]
    Config(String),
}

/// A destination for telemetry batches.
///
/// `write` must return only once the backend accepted every admitted frame of every batch
/// given (for a required sink this is what an ack waits for), and must preserve order.
pub trait Sink: Send {
    /// Writes the frames of `batches` that `filter` admits; returns how many were written.
    fn write<'a>(
        &'a mut self,
        batches: &'a [Arc<SinkBatch>],
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<usize, SinkError>>;

    /// Flushes anything buffered (called on drain and before exit).
    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// Builds a sink instance; called at start and again whenever the worker restarts.
pub type SinkFactory =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Box<dyn Sink>, SinkError>> + Send + Sync>;

/// Settings every sink has.
#[derive(Debug, Clone)]
pub struct SinkCommon {
    /// Unique name; the metric label.
    pub name: String,
    /// Whether acks wait for this sink.
    pub required: bool,
    /// Policy of an optional sink's full queue (required sinks always block).
    pub when_full: WhenFull,
    /// Queue capacity, in batches.
    pub queue_batches: usize,
    /// Most batches handed to one `write`.
    pub max_batches_per_write: usize,
    /// Which frames this sink takes.
    pub filter: Filter,
    /// Retries of a failing optional sink before its batch is dropped (required: forever).
    pub optional_retries: u32,
}

impl SinkCommon {
    /// Defaults for a sink called `name`.
    pub fn new(name: impl Into<String>, required: bool) -> Self {
        SinkCommon {
            name: name.into(),
            required,
            when_full: WhenFull::DropOldest,
            queue_batches: 1024,
            max_batches_per_write: 64,
            filter: Filter::default(),
            optional_retries: 3,
        }
    }
}

/// A sink ready to be started: its settings and how to build it.
#[derive(Clone)]
pub struct SinkSpec {
    /// Shared settings.
    pub common: SinkCommon,
    /// Constructor.
    pub factory: SinkFactory,
}

impl std::fmt::Debug for SinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkSpec")
            .field("common", &self.common)
            .finish()
    }
}
