//! The command API: submit, read, list and cancel commands for drones (issue 21).
//!
//! Authenticated with bearer tokens carrying a role (`operator`: submit and cancel, `viewer`:
//! read). Errors are JSON `{"code", "error", "message"}` with a stable `code` per failure.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::commands::hint::{Hint, RouteHint};
use crate::commands::{
    now_ms, CancelOutcome, CommandId, CommandRecord, CommandService, CommandStatus, NewCommand,
    Role, StoreError, Stream,
};
use crate::fleet::Fleet;

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;
/// Longest command type.
pub const MAX_TYPE_LEN: usize = 64;

/// State of the command routes.
#[derive(Clone)]
pub struct CommandApi {
    /// The queue.
    pub svc: Arc<CommandService>,
    /// Drones connected to this relay.
    pub fleet: Arc<Fleet>,
    /// Redis routing hint reader, when Redis is configured.
    pub hint: Option<Arc<RouteHint>>,
}

/// A failure of the command API, each with its own status and code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandApiError {
    /// No or unknown bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The token's role may not do this.
    #[error("this token's role may not {0}")]
    Forbidden(&'static str),
    /// No API tokens configured.
    #[error("command API disabled: no command API tokens configured")]
    Disabled,
    /// Body or query malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Payload larger than the configured maximum.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// Size given.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Deadline already passed.
    #[error("deadline is in the past")]
    DeadlineInPast,
    /// Deadline further than allowed.
    #[error("deadline is further away than the maximum of {0} s")]
    DeadlineTooFar(u64),
    /// The drone never registered (with the commands capability).
    #[error("unknown drone {0:?}")]
    UnknownDrone(String),
    /// In-memory store: the drone is held by another relay, which this relay cannot reach.
    #[error("drone is connected to relay {0:?} and this relay keeps commands in memory (no database): submit there, or configure PostgreSQL")]
    DroneOnOtherRelay(String),
    /// In-memory store: Redis could not say where the drone is.
    #[error("cannot tell which relay holds the drone (Redis unavailable) and commands are kept in memory")]
    RoutingUnavailable,
    /// Same idempotency key, different body.
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    /// Too many open commands for the drone.
    #[error("too many open commands for this drone")]
    DroneQueueFull,
    /// The in-memory store is full.
    #[error("command store is full")]
    StoreFull,
    /// The database is unreachable: nothing was written.
    #[error("command store unavailable: {0}")]
    StoreUnavailable(String),
    /// No such command.
    #[error("command {0:?} not found")]
    CommandNotFound(String),
    /// Cancel of a command in a final state.
    #[error("command is already {0}")]
    AlreadyFinal(&'static str),
}

impl CommandApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use CommandApiError as E;
        match self {
            E::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            E::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            E::Disabled => (StatusCode::NOT_FOUND, "disabled"),
            E::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            E::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            E::DeadlineInPast => (StatusCode::UNPROCESSABLE_ENTITY, "deadline_in_past"),
            E::DeadlineTooFar(_) => (StatusCode::UNPROCESSABLE_ENTITY, "deadline_too_far"),
            E::UnknownDrone(_) => (StatusCode::NOT_FOUND, "unknown_drone"),
            E::DroneOnOtherRelay(_) => (StatusCode::CONFLICT, "drone_on_other_relay"),
            E::RoutingUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "routing_unavailable"),
            E::IdempotencyConflict => (StatusCode::CONFLICT, "idempotency_conflict"),
            E::DroneQueueFull => (StatusCode::TOO_MANY_REQUESTS, "drone_queue_full"),
            E::StoreFull => (StatusCode::SERVICE_UNAVAILABLE, "store_full"),
            E::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            E::CommandNotFound(_) => (StatusCode::NOT_FOUND, "command_not_found"),
            E::AlreadyFinal(_) => (StatusCode::CONFLICT, "already_final"),
        }
    }
}

impl From<StoreError> for CommandApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::IdempotencyConflict => CommandApiError::IdempotencyConflict,
            StoreError::DroneQueueFull => CommandApiError::DroneQueueFull,
            StoreError::Full => CommandApiError::StoreFull,
            other => CommandApiError::StoreUnavailable(other.to_string()),
        }
    }
}

#[derive(Serialize)]
struct ErrBody<'a> {
    code: &'a str,
    error: &'a str,
    message: String,
}

impl IntoResponse for CommandApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        metrics::counter!("contrail_command_api_errors_total", "code" => code).increment(1);
        let body = Json(ErrBody {
            code,
            error: code,
            message: self.to_string(),
        });
        let mut resp = (status, body).into_response();
        if matches!(self, CommandApiError::Unauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// Builds the command routes.
pub fn router(api: CommandApi) -> Router {
    Router::new()
        .route("/v1/drones/{id}/commands", post(submit).get(list))
        .route("/v1/commands/{cid}", get(get_one))
        .route("/v1/commands/{cid}/cancel", post(cancel))
        .with_state(api)
}

/// Who is calling: the token's name and role.
fn caller(api: &CommandApi, headers: &HeaderMap) -> Result<(String, Role), CommandApiError> {
    let tokens = &api.svc.config().tokens;
    if tokens.is_empty() {
        return Err(CommandApiError::Disabled);
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(CommandApiError::Unauthorized)?;
    // Every token is compared (constant time each) so timing does not tell which one matched.
    let mut found = None;
    for t in tokens {
        if bool::from(given.as_bytes().ct_eq(t.token.as_bytes())) {
            found = Some((t.name.clone(), t.role));
        }
    }
    found.ok_or(CommandApiError::Unauthorized)
}

fn operator(
    api: &CommandApi,
    headers: &HeaderMap,
    what: &'static str,
) -> Result<String, CommandApiError> {
    match caller(api, headers)? {
        (name, Role::Operator) => Ok(name),
        (_, Role::Viewer) => Err(CommandApiError::Forbidden(what)),
    }
}

/// Body of `POST /v1/drones/{id}/commands`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: serde_json::Value,
    /// Absolute deadline, Unix ms.
    deadline_unix_ms: Option<u64>,
    /// Relative deadline, ms from now.
    timeout_ms: Option<u64>,
}

/// JSON view of a command.
#[derive(Debug, Serialize)]
pub struct CommandView {
    id: String,
    drone_id: String,
    #[serde(rename = "type")]
    kind: String,
    payload: serde_json::Value,
    status: CommandStatus,
    deadline_unix_ms: u64,
    submitted_by: String,
    created_unix_ms: u64,
    delivered_unix_ms: Option<u64>,
    accepted_unix_ms: Option<u64>,
    finished_unix_ms: Option<u64>,
    exit: Option<ExitView>,
    /// Relay that delivered it last.
    delivered_by_relay: Option<String>,
    /// Relay that holds the drone now (Redis routing hint; absent: not connected anywhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    drone_relay_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<OutputView>,
}

#[derive(Debug, Serialize)]
struct ExitView {
    code: Option<i32>,
    message: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct OutputView {
    /// Contiguous output from offset 0, UTF-8 (lossy).
    stdout: String,
    stderr: String,
    /// Stored bytes in all (including any after a gap).
    bytes: u64,
    /// A chunk is missing (not yet arrived): the text stops at the gap.
    gap: bool,
}

fn view(r: &CommandRecord) -> CommandView {
    CommandView {
        id: r.id.to_string(),
        drone_id: r.drone_id.clone(),
        kind: r.kind.clone(),
        payload: serde_json::from_slice(&r.payload).unwrap_or(serde_json::Value::Null),
        status: r.status,
        deadline_unix_ms: r.deadline_ms,
        submitted_by: r.submitted_by.clone(),
        created_unix_ms: r.created_ms,
        delivered_unix_ms: r.delivered_ms,
        accepted_unix_ms: r.accepted_ms,
        finished_unix_ms: r.finished_ms,
        exit: (r.exit_code.is_some() || r.message.is_some()).then(|| ExitView {
            code: r.exit_code,
            message: r.message.clone(),
        }),
        delivered_by_relay: r.relay_id.clone(),
        drone_relay_id: None,
        output: None,
    }
}

fn body_hash(drone: &str, b: &SubmitBody, payload: &[u8]) -> String {
    let mut h = Sha256::new();
    for part in [drone.as_bytes(), b.kind.as_bytes(), payload] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(b.deadline_unix_ms.unwrap_or(0).to_be_bytes());
    h.update(b.timeout_ms.unwrap_or(0).to_be_bytes());
    hex::encode(h.finalize())
}

/// Which relay holds the drone now, per Redis, else per the store (the relay it last
/// registered on), else this relay if it is connected here.
async fn holder(api: &CommandApi, drone: &str) -> (Hint, Option<String>) {
    let hint = match &api.hint {
        Some(h) => h.lookup(drone).await,
        None => Hint::Unavailable,
    };
    let relay = match &hint {
        Hint::Held(r) => Some(r.clone()),
        _ if api.fleet.get(drone).is_some() => Some(api.svc.relay_id().to_owned()),
        _ => None,
    };
    (hint, relay)
}

async fn submit(
    State(api): State<CommandApi>,
    Path(drone): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, CommandApiError> {
    let who = operator(&api, &headers, "submit commands")?;
    let cfg = api.svc.config();
    let b: SubmitBody = serde_json::from_slice(&body)
        .map_err(|e| CommandApiError::BadRequest(format!("body: {e}")))?;
    if b.kind.is_empty() || b.kind.len() > MAX_TYPE_LEN {
        return Err(CommandApiError::BadRequest(format!(
            "type must be 1..={MAX_TYPE_LEN} bytes"
        )));
    }
    if contrail_agent_id_invalid(&drone) {
        return Err(CommandApiError::BadRequest("invalid drone id".into()));
    }
    let payload = serde_json::to_vec(&b.payload)
        .map_err(|e| CommandApiError::BadRequest(format!("payload: {e}")))?;
    if payload.len() > cfg.max_payload_bytes {
        return Err(CommandApiError::PayloadTooLarge {
            len: payload.len(),
            max: cfg.max_payload_bytes,
        });
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
                .ok_or_else(|| {
                    CommandApiError::BadRequest(format!(
                        "Idempotency-Key must be 1..={MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                    ))
                })?;
            Some(k.to_owned())
        }
    };
    let now = now_ms();
    let deadline = match (b.deadline_unix_ms, b.timeout_ms) {
        (Some(_), Some(_)) => {
            return Err(CommandApiError::BadRequest(
                "give deadline_unix_ms or timeout_ms, not both".into(),
            ))
        }
        (Some(d), None) => d,
        (None, Some(t)) => now.saturating_add(t),
        (None, None) => now.saturating_add(cfg.default_deadline.as_millis() as u64),
    };
    if deadline <= now {
        return Err(CommandApiError::DeadlineInPast);
    }
    if deadline - now > cfg.max_deadline.as_millis() as u64 {
        return Err(CommandApiError::DeadlineTooFar(cfg.max_deadline.as_secs()));
    }
    check_drone(&api, &drone).await?;
    let hash = body_hash(&drone, &b, &payload);
    let res = api
        .svc
        .submit(NewCommand {
            drone_id: drone.clone(),
            kind: b.kind.clone(),
            payload,
            deadline_ms: deadline,
            submitted_by: who,
            idempotency_key: key,
            body_hash: hash,
            now_ms: now,
        })
        .await?;
    let (_, relay) = holder(&api, &drone).await;
    let mut v = view(&res.record);
    v.drone_relay_id = relay;
    let status = if res.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(v)).into_response())
}

fn contrail_agent_id_invalid(id: &str) -> bool {
    id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control() || c == ' ')
}

/// Unknown drones are refused; with commands in memory, so are drones held by another relay.
async fn check_drone(api: &CommandApi, drone: &str) -> Result<(), CommandApiError> {
    let local = api.fleet.get(drone).is_some();
    if api.svc.is_memory() {
        if let Some(h) = &api.hint {
            match h.lookup(drone).await {
                Hint::Held(r) if r != api.svc.relay_id() => {
                    return Err(CommandApiError::DroneOnOtherRelay(r))
                }
                Hint::Unavailable if !local => return Err(CommandApiError::RoutingUnavailable),
                _ => {}
            }
        }
    }
    if local {
        return Ok(());
    }
    match api.svc.drone_relay(drone).await? {
        Some(_) => Ok(()),
        None => Err(CommandApiError::UnknownDrone(drone.to_owned())),
    }
}

fn parse_cid(cid: &str) -> Result<CommandId, CommandApiError> {
    CommandId::parse(cid).ok_or_else(|| CommandApiError::CommandNotFound(cid.to_owned()))
}

async fn get_one(
    State(api): State<CommandApi>,
    Path(cid): Path<String>,
    headers: HeaderMap,
) -> Result<Json<CommandView>, CommandApiError> {
    caller(&api, &headers)?;
    let id = parse_cid(&cid)?;
    let r = api
        .svc
        .get(&id)
        .await?
        .ok_or(CommandApiError::CommandNotFound(cid))?;
    let chunks = api.svc.output(&id).await?;
    let mut out = OutputView::default();
    let mut next = [0u64; 2];
    let mut bufs: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    for c in chunks {
        let i = c.stream as usize;
        out.bytes += c.data.len() as u64;
        if c.offset == next[i] {
            next[i] += c.data.len() as u64;
            bufs[i].extend_from_slice(&c.data);
        } else if c.offset > next[i] {
            out.gap = true;
        }
    }
    out.stdout = String::from_utf8_lossy(&bufs[Stream::Stdout as usize]).into_owned();
    out.stderr = String::from_utf8_lossy(&bufs[Stream::Stderr as usize]).into_owned();
    let (_, relay) = holder(&api, &r.drone_id).await;
    let mut v = view(&r);
    v.drone_relay_id = relay;
    v.output = Some(out);
    Ok(Json(v))
}

/// `?offset=&limit=&status=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    offset: Option<usize>,
    limit: Option<usize>,
    status: Option<String>,
}

#[derive(Serialize)]
struct ListView {
    total: usize,
    offset: usize,
    limit: usize,
    commands: Vec<CommandView>,
}

async fn list(
    State(api): State<CommandApi>,
    Path(drone): Path<String>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ListView>, CommandApiError> {
    caller(&api, &headers)?;
    let Query(q) = q.map_err(|e| CommandApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(super::api::DEFAULT_LIMIT);
    if limit == 0 || limit > super::api::MAX_LIMIT {
        return Err(CommandApiError::BadRequest(format!(
            "limit must be 1..={}",
            super::api::MAX_LIMIT
        )));
    }
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            CommandStatus::parse(s)
                .ok_or_else(|| CommandApiError::BadRequest(format!("unknown status {s:?}")))?,
        ),
    };
    let offset = q.offset.unwrap_or(0);
    let (rows, total) = api.svc.list(&drone, status, offset, limit).await?;
    Ok(Json(ListView {
        total,
        offset,
        limit,
        commands: rows.iter().map(view).collect(),
    }))
}

async fn cancel(
    State(api): State<CommandApi>,
    Path(cid): Path<String>,
    headers: HeaderMap,
) -> Result<Json<CommandView>, CommandApiError> {
    let who = operator(&api, &headers, "cancel commands")?;
    let id = parse_cid(&cid)?;
    match api.svc.cancel(&id, &who).await? {
        CancelOutcome::NotFound => Err(CommandApiError::CommandNotFound(cid)),
        CancelOutcome::AlreadyFinal(r) => Err(CommandApiError::AlreadyFinal(r.status.as_str())),
        CancelOutcome::Cancelled { record, .. } => Ok(Json(view(&record))),
    }
}
