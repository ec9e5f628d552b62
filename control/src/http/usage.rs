//! `GET /v1/usage`: without parameters (or with `offset`/`limit`) the running totals per agent
//! since start; with `agent`, `from`, `to` (ms since the Unix epoch) or `format=csv`, the hourly
//! buckets of [`crate::usage::UsageLedger`] (from PostgreSQL, summed over every relay, when a
//! database is configured), as JSON or CSV. Behind the viewer token.

use std::fmt::Write as _;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::api::{AppState, DEFAULT_LIMIT, MAX_LIMIT};
use super::error::ApiError;
use crate::fleet::AgentUsage;
use crate::usage::HourUsage;

/// Most hourly rows one request returns.
pub const MAX_ROWS: usize = 10_000;

/// Query of `GET /v1/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    offset: Option<usize>,
    limit: Option<usize>,
    agent: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    format: Option<String>,
}

#[derive(Serialize)]
struct UsageList {
    total: usize,
    offset: usize,
    limit: usize,
    agents: Vec<AgentUsage>,
}

#[derive(Serialize)]
struct Hourly {
    /// Where buckets live: `postgres` (every relay, survives restarts) or `memory` (this
    /// relay since it started).
    storage: &'static str,
    /// Whether the totals survive a restart.
    persistent: bool,
    agent: Option<String>,
    from: u64,
    to: u64,
    total_frames: u64,
    total_bytes: u64,
    /// Whether `limit` cut the rows short.
    truncated: bool,
    hours: Vec<HourUsage>,
}

pub(crate) async fn usage(
    State(s): State<AppState>,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let hourly = q.agent.is_some() || q.from.is_some() || q.to.is_some() || q.format.is_some();
    if !hourly {
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::BadRequest(format!(
                "limit must be 1..={MAX_LIMIT}"
            )));
        }
        let offset = q.offset.unwrap_or(0);
        return Ok(Json(UsageList {
            total: s.fleet.usage_len(),
            offset,
            limit,
            agents: s.fleet.usage_list(offset, limit),
        })
        .into_response());
    }
    let from = q.from.unwrap_or(0);
    let to = q.to.unwrap_or(u64::MAX);
    if from >= to {
        return Err(ApiError::BadRequest("from must be before to".into()));
    }
    let limit = q.limit.unwrap_or(MAX_ROWS);
    if limit == 0 || limit > MAX_ROWS {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1..={MAX_ROWS}"
        )));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::BadRequest("format must be json or csv".into())),
    };
    let agent = q.agent.filter(|a| !a.is_empty());
    let mut hours = s
        .usage
        .query(agent.as_deref(), from, to, limit + 1)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "usage query failed");
            ApiError::StoreUnavailable(e.to_string())
        })?;
    let truncated = hours.len() > limit;
    hours.truncate(limit);
    if csv {
        let mut out = String::from("agent_id,hour_start_unix_ms,frames,bytes\n");
        for h in &hours {
            let id = if h.agent_id.contains([',', '"', '\n']) {
                format!("\"{}\"", h.agent_id.replace('"', "\"\""))
            } else {
                h.agent_id.clone()
            };
            let _ = writeln!(
                out,
                "{id},{},{},{}",
                h.hour_start_unix_ms, h.frames, h.bytes
            );
        }
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response());
    }
    Ok(Json(Hourly {
        storage: s.usage.storage(),
        persistent: s.usage.storage() == "postgres",
        agent,
        from,
        to,
        total_frames: hours.iter().map(|h| h.frames).sum(),
        total_bytes: hours.iter().map(|h| h.bytes).sum(),
        truncated,
        hours,
    })
    .into_response())
}
