//! Commands in flight for the fleet page: a [`CommandsReport`] over the command store, with the
//! counts per open status and the most recent open commands, read at most once per
//! [`CACHE_FOR`] (one request at a time reads the store; the others get the cached view).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::json;

use super::CommandService;
use crate::registry::{CommandsReport, CommandsView};

/// How long one read of the store is served.
pub const CACHE_FOR: Duration = Duration::from_secs(1);
/// Open commands listed by name (the counts cover all).
pub const RECENT: usize = 20;

/// The command store's open commands, cached.
pub struct StoreReport {
    svc: Arc<CommandService>,
    cache: tokio::sync::Mutex<Option<(Instant, CommandsView)>>,
}

impl StoreReport {
    /// A report over `svc`.
    pub fn new(svc: Arc<CommandService>) -> Self {
        StoreReport {
            svc,
            cache: tokio::sync::Mutex::new(None),
        }
    }

    async fn read(&self) -> CommandsView {
        let storage = if self.svc.is_memory() {
            "memory"
        } else {
            "postgres"
        };
        let mut g = self.cache.lock().await;
        if let Some((at, view)) = g.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return view.clone();
            }
        }
        let now = super::now_ms();
        let view = match self.svc.in_flight(RECENT).await {
            Ok(f) => CommandsView {
                storage,
                queued: f.queued,
                delivered: f.delivered,
                running: f.running,
                recent: f
                    .recent
                    .iter()
                    .map(|r| {
                        json!({
                            "id": r.id.to_string(),
                            "agent_id": r.drone_id,
                            "type": r.kind,
                            "status": r.status.as_str(),
                            "age_ms": now.saturating_sub(r.created_ms),
                            "relay_id": r.relay_id,
                        })
                    })
                    .collect(),
                error: None,
            },
            Err(e) => {
                tracing::debug!(error = %e, "commands in flight: store read failed");
                CommandsView {
                    storage,
                    error: Some(e.to_string()),
                    ..CommandsView::default()
                }
            }
        };
        *g = Some((Instant::now(), view.clone()));
        view
    }
}

impl CommandsReport for StoreReport {
    fn in_flight(&self) -> BoxFuture<'_, CommandsView> {
        Box::pin(self.read())
    }
}
