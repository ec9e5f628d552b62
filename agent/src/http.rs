//! `/healthz` and `/metrics` on a local port.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use contrail_protocol::client::Agent;

use crate::stats::Stats;

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// The agent library.
    pub agent: Arc<Agent>,
    /// The agent's counters.
    pub stats: Arc<Stats>,
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    let lib = s.agent.stats();
    let link_up = *s.agent.link_watch().borrow();
    Json(serde_json::json!({
        "status": "ok",
        "link": if link_up { "up" } else { "down" },
        "relay_id": s.agent.session().map(|x| x.relay_id),
        "spool_frames": lib.spool_frames,
        "spool_bytes": lib.spool_bytes,
        "frames": s.stats.frames.load(std::sync::atomic::Ordering::Relaxed),
        "acked_seq": lib.acked,
        "dropped_spool_full": lib.dropped,
    }))
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    let link_up = *s.agent.link_watch().borrow();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.stats.render(&s.agent.stats(), link_up),
    )
}
