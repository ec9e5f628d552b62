//! Errors of the control crate.

/// Starting or stopping the control tree failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// An actor of the tree could not be spawned.
    #[error("spawning control actor failed: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    /// The HTTP listener could not be prepared.
    #[error("http listener: {0}")]
    Listener(#[source] std::io::Error),
    /// The routing configuration is invalid.
    #[error("routing config: {0}")]
    Routing(#[from] RoutingError),
    /// The global metrics recorder could not be installed.
    #[error("installing metrics recorder: {0}")]
    Metrics(String),
    /// A setting is invalid.
    #[error("invalid config {field}: {reason}")]
    Config {
        /// Offending field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The command store's database could not be opened or migrated.
    #[error("command store: {0}")]
    Database(#[from] crate::db::DbError),
    /// The control root did not answer during shutdown.
    #[error("control root unavailable during shutdown")]
    RootGone,
}

/// A Redis routing operation failed (counted, never fatal).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoutingError {
    /// No `REDIS_ADDR` configured.
    #[error("routing disabled: no redis address")]
    Disabled,
    /// The address is neither `host:port` nor a redis URL.
    #[error("invalid redis address {0:?}")]
    BadAddr(String),
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Connecting or a pipeline round trip exceeded `io_timeout`.
    #[error("redis operation timed out")]
    Timeout,
    /// The CA file for `rediss://` could not be read.
    #[error("reading redis TLS CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
