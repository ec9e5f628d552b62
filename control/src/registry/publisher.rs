//! The task that keeps `relay:{relay_id}` fresh and samples the process CPU.
//!
//! Owned by [`crate::Control`]: started with it, stopped (and the key deleted, bounded by the
//! routing `io_timeout`) in [`crate::Control::shutdown`]. Redis is optional: without it the task
//! only samples CPU for the page. Failures are counted (`contrail_registry_errors_total`) and the
//! next refresh reconnects.

use std::sync::Arc;
use std::time::Instant;

use redis::aio::MultiplexedConnection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{relay_key, LocalRelay, RegistryConfig, RELAY_INDEX_KEY};
use crate::error::RoutingError;
use crate::routing::RoutingConfig;

/// Connects to the routing Redis with the routing timeouts.
pub(crate) async fn connect(cfg: &RoutingConfig) -> Result<MultiplexedConnection, RoutingError> {
    let client = redis::Client::open(crate::routing::store_connection_info(cfg)?)?;
    let conf = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(cfg.io_timeout))
        .set_response_timeout(Some(cfg.io_timeout));
    tokio::time::timeout(
        cfg.io_timeout,
        client.get_multiplexed_async_connection_with_config(&conf),
    )
    .await
    .map_err(|_| RoutingError::Timeout)?
    .map_err(RoutingError::from)
}

/// A running publisher.
#[derive(Debug)]
pub struct RegistryPublisher {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Run {
    local: Arc<LocalRelay>,
    routing: Option<RoutingConfig>,
    cfg: RegistryConfig,
    conn: Option<MultiplexedConnection>,
}

impl Run {
    async fn publish(&mut self) -> Result<(), RoutingError> {
        let Some(routing) = &self.routing else {
            return Ok(());
        };
        if self.conn.is_none() {
            self.conn = Some(connect(routing).await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let rec = self.local.record();
        let json = serde_json::to_string(&rec).unwrap_or_default();
        // The record and its index entry in one round trip (MULTI: never one without the other).
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(relay_key(&rec.relay_id))
            .arg(json)
            .arg("EX")
            .arg(self.cfg.ttl.as_secs().max(1))
            .ignore()
            .cmd("ZADD")
            .arg(RELAY_INDEX_KEY)
            .arg(rec.updated_unix_ms)
            .arg(&rec.relay_id)
            .ignore();
        let fut = pipe.query_async::<()>(conn);
        match tokio::time::timeout(routing.io_timeout, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e.into())
            }
            Err(_) => {
                self.conn = None;
                Err(RoutingError::Timeout)
            }
        }
    }

    async fn delete(&mut self) {
        let Some(routing) = &self.routing else { return };
        let io = routing.io_timeout;
        let key = relay_key(&self.local.relay_id);
        let res = tokio::time::timeout(io * 2, async {
            if self.conn.is_none() {
                self.conn = connect(routing).await.ok();
            }
            if let Some(c) = self.conn.as_mut() {
                let _ = redis::pipe()
                    .cmd("DEL")
                    .arg(&key)
                    .ignore()
                    .cmd("ZREM")
                    .arg(RELAY_INDEX_KEY)
                    .arg(&*self.local.relay_id)
                    .ignore()
                    .query_async::<()>(c)
                    .await;
            }
        })
        .await;
        if res.is_err() {
            tracing::warn!(
                key,
                "relay record not deleted in time; it expires with its TTL"
            );
        }
    }
}

impl RegistryPublisher {
    /// Starts the task. `routing` is `None` when Redis is not configured.
    pub fn spawn(
        local: Arc<LocalRelay>,
        routing: Option<RoutingConfig>,
        cfg: RegistryConfig,
    ) -> Self {
        let (tx, mut rx) = oneshot::channel();
        let errors = metrics::counter!("contrail_registry_errors_total");
        let mut lifecycle = local_lifecycle(&local);
        let mut run = Run {
            local,
            routing,
            cfg,
            conn: None,
        };
        let task = tokio::spawn(async move {
            run.local.sample_cpu(Instant::now());
            loop {
                if let Err(e) = run.publish().await {
                    errors.increment(1);
                    tracing::debug!(error = %e, "relay record not published");
                }
                tokio::select! {
                    _ = &mut rx => break,
                    // A drain is published at once, not at the next refresh.
                    _ = lifecycle.changed() => {}
                    _ = tokio::time::sleep(run.cfg.refresh) => {}
                }
                run.local.sample_cpu(Instant::now());
            }
            run.delete().await;
        });
        RegistryPublisher {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the task and deletes the record.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

fn local_lifecycle(local: &LocalRelay) -> tokio::sync::watch::Receiver<crate::LifecycleState> {
    local.lifecycle().subscribe()
}

impl Drop for RegistryPublisher {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
