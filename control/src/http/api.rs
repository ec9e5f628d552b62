//! Routes and handlers of the admin/metrics HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::fleet::{AgentUsage, Fleet, SessionInfo};
use crate::health::Health;
use crate::latency::LatencyRecorder;
use crate::lifecycle::{readiness, Lifecycle};

/// Default page size of the list endpoints.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size of the list endpoints.
pub const MAX_LIMIT: usize = 1000;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Live sessions and usage.
    pub fleet: Arc<Fleet>,
    /// Lifecycle latch.
    pub lifecycle: Lifecycle,
    /// Health components.
    pub health: Health,
    /// Latency histograms appended to `/metrics`.
    pub latency: LatencyRecorder,
    /// This relay's id.
    pub relay_id: Arc<str>,
    /// Bearer token of the admin endpoints; `None` disables them.
    pub admin_token: Option<Arc<str>>,
    /// Prometheus recorder handle, if the binary installed one.
    pub metrics: Option<PrometheusHandle>,
    /// Token of the page and read API (`None`: open).
    pub viewer_token: Option<Arc<str>>,
    /// This relay (sinks, CPU, facts).
    pub local: Arc<crate::registry::LocalRelay>,
    /// Fleet-wide view.
    pub fleet_reader: Arc<crate::registry::FleetReader>,
    /// Period of the page's live updates.
    pub page_interval: std::time::Duration,
    /// Hourly usage buckets.
    pub usage: Arc<crate::usage::UsageLedger>,
    /// Event streams open (bounded by [`super::page::MAX_PAGE_STREAMS`]).
    pub page_streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    // Reads: behind the viewer token when one is configured.
    let reads = Router::new()
        .route("/v1/drones", get(list_drones))
        .route("/v1/drones/{id}", get(get_drone))
        .route("/v1/usage", get(super::usage::usage))
        .route("/v1/usage/{agent_id}", get(get_usage))
        .merge(super::page::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::viewer::require_viewer,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/admin/drain", post(drain))
        .merge(reads)
        .merge(super::viewer::login_routes())
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut text = s
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    text.push_str(&s.latency.render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(s): State<AppState>) -> Response {
    let r = readiness(&s.lifecycle, &s.health);
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r)).into_response()
}

/// `offset`/`limit` query parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
}

fn page(q: Result<Query<Page>, QueryRejection>) -> Result<(usize, usize), ApiError> {
    let Query(p) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1..={MAX_LIMIT}"
        )));
    }
    Ok((p.offset.unwrap_or(0), limit))
}

/// Status of one drone as served by the API.
#[derive(Debug, Serialize)]
pub struct DroneStatus {
    pub(crate) session_id: String,
    pub(crate) agent_id: String,
    pub(crate) relay_id: String,
    flight_id: Option<String>,
    /// Registration time, ms since the Unix epoch.
    connected_since: u64,
    /// Last sign of life (a ping or a telemetry batch), ms since the Unix epoch (`null` before
    /// the first).
    last_heartbeat: Option<u64>,
    frames: u64,
    bytes: u64,
    inflight: u64,
    remote_addr: SocketAddr,
}

pub(crate) fn status(s: &SessionInfo, relay_id: &str) -> DroneStatus {
    let snap = s.snapshot();
    DroneStatus {
        session_id: snap.session_id,
        agent_id: snap.agent_id,
        relay_id: relay_id.to_owned(),
        flight_id: snap.flight_id,
        connected_since: snap.connected_since_unix_ms,
        last_heartbeat: snap.last_heartbeat_unix_ms,
        frames: snap.frames,
        bytes: snap.bytes,
        inflight: snap.inflight,
        remote_addr: snap.remote_addr,
    }
}

#[derive(Serialize)]
struct DroneList {
    total: usize,
    offset: usize,
    limit: usize,
    drones: Vec<DroneStatus>,
}

async fn list_drones(
    State(s): State<AppState>,
    q: Result<Query<Page>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let (offset, limit) = page(q)?;
    let drones = s
        .fleet
        .list(offset, limit)
        .iter()
        .map(|d| status(d, &s.relay_id))
        .collect();
    Ok(Json(DroneList {
        total: s.fleet.len(),
        offset,
        limit,
        drones,
    }))
}

async fn get_drone(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DroneStatus>, ApiError> {
    match s.fleet.get(&id) {
        Some(d) => Ok(Json(status(&d, &s.relay_id))),
        None => Err(ApiError::NotFound { what: "drone", id }),
    }
}

async fn get_usage(
    State(s): State<AppState>,
    Path(agent_id): Path<String>,
) -> Result<Json<AgentUsage>, ApiError> {
    s.fleet
        .usage(&agent_id)
        .map(Json)
        .ok_or(ApiError::NotFound {
            what: "agent",
            id: agent_id,
        })
}

/// `?reason=` of the drain endpoint.
#[derive(Debug, Deserialize)]
pub struct DrainQuery {
    reason: Option<String>,
}

#[derive(Serialize)]
struct DrainAnswer {
    state: &'static str,
    /// `false` when a drain was already running.
    started: bool,
    reason: Option<String>,
}

pub(crate) fn authorize(expected: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let expected = expected.ok_or(ApiError::Disabled)?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

async fn drain(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<DrainQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(s.admin_token.as_deref(), &headers)?;
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let reason = q.reason.unwrap_or_else(|| "admin api".to_owned());
    let reason: String = reason.chars().take(200).collect();
    let started = s.lifecycle.begin_drain(&reason);
    let answer = DrainAnswer {
        state: s.lifecycle.state().as_str(),
        started,
        reason: s.lifecycle.drain_reason(),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_checks() {
        let mut h = HeaderMap::new();
        assert!(matches!(authorize(None, &h), Err(ApiError::Disabled)));
        assert!(matches!(
            authorize(Some("t"), &h),
            Err(ApiError::Unauthorized)
        ));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert!(matches!(
            authorize(Some("t"), &h),
            Err(ApiError::Unauthorized)
        ));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert!(authorize(Some("t"), &h).is_ok());
    }
}
