//! The Redis Streams `Sink`: one pipeline of `XADD`s per write over a multiplexed connection.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo};

use super::RedisStreamsSettings;
use crate::sink::{Filter, Sink, SinkBatch, SinkError};

/// Why a Redis Streams write or connect failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStreamsError {
    /// The URL or credentials could not be turned into connection settings.
    #[error("redis connection settings: {0}")]
    Settings(#[source] redis::RedisError),
    /// The TLS CA file could not be read.
    #[error("reading redis TLS CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Connecting (TCP, AUTH, handshake) failed or timed out.
    #[error("connecting to redis: {0}")]
    Connect(#[source] redis::RedisError),
    /// The pipeline failed: IO error, server error reply, or response timeout.
    #[error("redis XADD pipeline: {0}")]
    Pipeline(#[source] redis::RedisError),
    /// The pipeline did not complete within the timeout.
    #[error("redis XADD pipeline timed out after {0:?}")]
    Timeout(Duration),
    /// Fewer (or more) replies than commands came back.
    #[error("redis answered {got} replies to {sent} XADDs")]
    ReplyCount {
        /// Commands sent.
        sent: usize,
        /// Replies received.
        got: usize,
    },
}

impl From<RedisStreamsError> for SinkError {
    fn from(e: RedisStreamsError) -> Self {
        SinkError::Backend(e.to_string())
    }
}

/// Writes frames to Redis Streams. Holds one multiplexed connection; after any failure the
/// connection is dropped and the next write reconnects (the worker retries with backoff).
pub struct RedisStreamsSink {
    settings: Arc<RedisStreamsSettings>,
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    pipe: redis::Pipeline,
    key: String,
}

fn open_client(settings: &RedisStreamsSettings) -> Result<redis::Client, RedisStreamsError> {
    let mut info = settings
        .url
        .as_str()
        .into_connection_info()
        .map_err(RedisStreamsError::Settings)?;
    if let Some(pw) = &settings.password {
        let redis = info.redis_settings().clone().set_password(pw);
        info = info.set_redis_settings(redis);
    }
    if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return redis::Client::open(info).map_err(RedisStreamsError::Settings);
    }
    // redis builds its rustls config with `ClientConfig::builder()`: give it a process default.
    contrail_protocol::client::config::install_default_crypto_provider();
    match &settings.tls_ca_file {
        None => redis::Client::open(info).map_err(RedisStreamsError::Settings),
        Some(path) => {
            let root_cert = std::fs::read(path).map_err(|source| RedisStreamsError::CaFile {
                path: path.clone(),
                source,
            })?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            redis::Client::build_with_tls(info, certs).map_err(RedisStreamsError::Settings)
        }
    }
}

async fn connect(
    client: &redis::Client,
    timeout: Duration,
) -> Result<MultiplexedConnection, RedisStreamsError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(RedisStreamsError::Connect)
}

impl RedisStreamsSink {
    /// Connects (bounded by the configured timeout).
    pub async fn connect(settings: Arc<RedisStreamsSettings>) -> Result<Self, RedisStreamsError> {
        let client = open_client(&settings)?;
        let conn = connect(&client, settings.timeout).await?;
        Ok(RedisStreamsSink {
            settings,
            client,
            conn: Some(conn),
            pipe: redis::pipe(),
            key: String::with_capacity(64),
        })
    }

    /// Fills `self.pipe` with one `XADD` per admitted frame; returns how many.
    fn build_pipeline(&mut self, batches: &[Arc<SinkBatch>], filter: &Filter) -> usize {
        self.pipe.clear();
        let maxlen = self.settings.maxlen;
        let mut n = 0;
        let mut key_of = usize::MAX;
        for (i, b, f) in filter.admitted(batches) {
            let agent = b.origin.agent_id.as_str();
            if i != key_of {
                // The stream key is rendered once per batch (one agent per batch).
                self.settings.key.render_into(&mut self.key, agent);
                key_of = i;
            }
            let cmd = self.pipe.cmd("XADD").arg(&self.key);
            if maxlen > 0 {
                cmd.arg("MAXLEN").arg("~").arg(maxlen);
            }
            cmd.arg("*")
                .arg("agent")
                .arg(agent)
                .arg("seq")
                .arg(f.seq())
                .arg("kind")
                .arg(f.kind())
                .arg("flight")
                .arg(f.flight_id())
                .arg("sent_at")
                .arg(f.sent_at_unix_ns())
                .arg("device_time")
                .arg(f.device_time())
                .arg("received_at")
                .arg(b.received_unix_ns)
                .arg("content_type")
                .arg(f.content_type())
                .arg("payload")
                .arg(f.payload());
            n += 1;
        }
        n
    }

    async fn send_pipeline(&mut self, sent: usize) -> Result<(), RedisStreamsError> {
        let timeout = self.settings.timeout;
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self.conn.insert(connect(&self.client, timeout).await?),
        };
        // The connection's response timeout bounds the round trip; this outer bound also
        // covers a connection stuck before the request is even written.
        let replies: Vec<redis::Value> =
            match tokio::time::timeout(timeout * 2, self.pipe.query_async(conn)).await {
                Err(_) => return Err(RedisStreamsError::Timeout(timeout * 2)),
                Ok(r) => r.map_err(RedisStreamsError::Pipeline)?,
            };
        if replies.len() != sent {
            return Err(RedisStreamsError::ReplyCount {
                sent,
                got: replies.len(),
            });
        }
        Ok(())
    }
}

impl Sink for RedisStreamsSink {
    fn write<'a>(
        &'a mut self,
        batches: &'a [Arc<SinkBatch>],
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<usize, SinkError>> {
        async move {
            let n = self.build_pipeline(batches, filter);
            if n == 0 {
                return Ok(0);
            }
            if let Err(e) = self.send_pipeline(n).await {
                // Whatever state the connection is in, start from a fresh one next time.
                self.conn = None;
                return Err(e.into());
            }
            Ok(n)
        }
        .boxed()
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        // Nothing is buffered between writes: a write returns only after Redis replied.
        async { Ok(()) }.boxed()
    }
}
