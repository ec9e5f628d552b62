//! The live fleet page (`/`, embedded in the binary) and the JSON it reads: `/v1/latency`,
//! `/v1/relays`, `/v1/fleet/drones`, `/v1/page/state` and the event stream `/v1/page/events`
//! (server-sent events, one state per `page_interval`, only the requested page of drones, so
//! the browser's load does not grow with the fleet).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::api::{AppState, DEFAULT_LIMIT, MAX_LIMIT};
use super::error::ApiError;
use crate::fleet::SessionSnapshot;
use crate::latency::LatencyViews;
use crate::lifecycle::LifecycleState;
use crate::registry::{RelayRecord, SinkStatus};

const PAGE_HTML: &str = include_str!("../../assets/fleet.html");
const PAGE_JS: &str = include_str!("../../assets/fleet.js");
const PAGE_CSS: &str = include_str!("../../assets/fleet.css");

/// Most event streams open at once (`contrail_limit_hits_total{limit="page_streams"}` when hit).
pub const MAX_PAGE_STREAMS: usize = 32;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/assets/fleet.js", get(js))
        .route("/assets/fleet.css", get(css))
        .route("/v1/latency", get(latency))
        .route("/v1/relays", get(relays))
        .route("/v1/fleet/drones", get(fleet_drones))
        .route("/v1/page/state", get(state))
        .route("/v1/page/events", get(events))
}

async fn page() -> Html<&'static str> {
    Html(PAGE_HTML)
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        PAGE_JS,
    )
        .into_response()
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        PAGE_CSS,
    )
        .into_response()
}

async fn latency(State(s): State<AppState>) -> Json<LatencyViews> {
    Json(s.latency.views())
}

#[derive(Serialize)]
struct Relays {
    source: &'static str,
    error: Option<String>,
    relays: Vec<RelayRecord>,
}

async fn relays(State(s): State<AppState>) -> Json<Relays> {
    let view = s.fleet_reader.relay_view().await;
    Json(Relays {
        source: view.source,
        error: view.error.clone(),
        relays: view.relays.clone(),
    })
}

/// `offset`, `limit` and the search `q` (substring of the agent id).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DroneQuery {
    offset: Option<usize>,
    limit: Option<usize>,
    q: Option<String>,
}

struct Paging {
    offset: usize,
    limit: usize,
    q: String,
}

fn paging(q: Result<Query<DroneQuery>, QueryRejection>) -> Result<Paging, ApiError> {
    let Query(p) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1..={MAX_LIMIT}"
        )));
    }
    let q: String = p.q.unwrap_or_default().chars().take(128).collect();
    Ok(Paging {
        offset: p.offset.unwrap_or(0),
        limit,
        q,
    })
}

/// One drone row: where it is, and its live status when this relay holds it.
#[derive(Debug, Serialize)]
struct DroneRow {
    agent_id: String,
    relay_id: String,
    session_id: String,
    /// Full status when the drone is on this relay.
    local: Option<SessionSnapshot>,
    /// Frames per second since the previous update of this stream (event stream only).
    frames_per_s: Option<f64>,
    /// Bytes per second, likewise.
    bytes_per_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct DronePage {
    total: usize,
    offset: usize,
    limit: usize,
    q: String,
    drones: Vec<DroneRow>,
}

/// The page's whole state.
#[derive(Serialize)]
struct PageState {
    relay_id: String,
    /// `redis` (every relay) or `local`.
    source: &'static str,
    error: Option<String>,
    now_unix_ms: u64,
    relays: Vec<RelayRecord>,
    sinks: Vec<SinkStatus>,
    latency: LatencyViews,
    drones: DronePage,
    /// Commands in flight: counts per open status and the most recent.
    commands: crate::registry::CommandsView,
}

/// Rates need the previous counters of the rows on the page.
type Prev = HashMap<String, (String, u64, u64, Instant)>;

/// Whether `hay` contains `needle_lower` (already lower case), ignoring case, without
/// allocating for ASCII needles (one call per drone of the fleet per listing).
fn contains_ci(hay: &str, needle_lower: &str) -> bool {
    if needle_lower.is_empty() {
        return true;
    }
    if !needle_lower.is_ascii() {
        return hay.to_lowercase().contains(needle_lower);
    }
    let (h, n) = (hay.as_bytes(), needle_lower.as_bytes());
    h.len() >= n.len() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// A drone on this relay (full status) or on another one (its route).
enum Entry {
    Local(Arc<crate::fleet::SessionInfo>),
    Remote(crate::registry::DroneRoute),
}

impl Entry {
    fn agent(&self) -> &str {
        match self {
            Entry::Local(i) => &i.agent_id,
            Entry::Remote(d) => &d.agent_id,
        }
    }
}

/// An entry of the merged walk, borrowed until it lands on the page.
enum Ref<'a> {
    Local(&'a Arc<crate::fleet::SessionInfo>),
    Remote(&'a crate::registry::DroneRoute),
}

impl Ref<'_> {
    fn agent(&self) -> &str {
        match self {
            Ref::Local(i) => &i.agent_id,
            Ref::Remote(d) => &d.agent_id,
        }
    }

    fn to_entry(&self) -> Entry {
        match self {
            Ref::Local(i) => Entry::Local(Arc::clone(i)),
            Ref::Remote(d) => Entry::Remote((*d).clone()),
        }
    }
}

/// The requested page of the merged listing and its total: this relay's live sessions (its
/// Fleet, ordered by agent id: authoritative for its own drones) merged with the registry's
/// routes of other relays' drones (ordered by agent id too). One pass, no sort, no copy of the
/// fleet: only the page's entries are cloned.
fn merged_page(
    s: &AppState,
    remote: &[crate::registry::DroneRoute],
    me: &str,
    p: &Paging,
) -> (usize, Vec<Entry>) {
    let needle = p.q.to_lowercase();
    let end = p.offset.saturating_add(p.limit);
    let mut page = Vec::with_capacity(p.limit.min(MAX_LIMIT));
    let mut total = 0usize;
    let mut remote = remote.iter().filter(|d| d.relay_id != me).peekable();
    if needle.is_empty() && remote.peek().is_none() {
        let total = s.fleet.len();
        let rows = s.fleet.list(p.offset, p.limit);
        return (total, rows.into_iter().map(Entry::Local).collect());
    }
    s.fleet.with_live(|live| {
        let mut live = live.peekable();
        loop {
            // A drone listed by this relay and (stale) by another keeps the local entry.
            let local_first = match (live.peek(), remote.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(l), Some(r)) => match l.agent_id.as_str().cmp(r.agent_id.as_str()) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    std::cmp::Ordering::Equal => {
                        remote.next();
                        true
                    }
                },
            };
            let next = if local_first {
                live.next().map(Ref::Local)
            } else {
                remote.next().map(Ref::Remote)
            };
            let Some(next) = next else { break };
            if !contains_ci(next.agent(), &needle) {
                continue;
            }
            if total >= p.offset && total < end {
                page.push(next.to_entry());
            }
            total += 1;
        }
    });
    (total, page)
}

async fn drone_page(
    s: &AppState,
    p: &Paging,
    prev: Option<&mut Prev>,
) -> (DronePage, crate::registry::FleetSnapshot) {
    let snap = s.fleet_reader.snapshot().await;
    let me = &*s.local.relay_id;
    let (total, page) = merged_page(s, &snap.drones.drones, me, p);
    let now = Instant::now();
    let mut next_prev = Prev::new();
    let rows = page
        .iter()
        .map(|e| {
            let (local, relay, sid) = match e {
                Entry::Local(i) => {
                    let snap = i.snapshot();
                    let sid = snap.session_id.clone();
                    (Some(snap), me.to_owned(), sid)
                }
                Entry::Remote(d) => (None, d.relay_id.clone(), d.session_id.clone()),
            };
            let agent = e.agent();
            let mut fps = None;
            let mut bps = None;
            if let (Some(l), Some(prev)) = (&local, prev.as_ref()) {
                if let Some((psid, pf, pb, pt)) = prev.get(agent) {
                    let dt = now.saturating_duration_since(*pt).as_secs_f64();
                    if psid == &l.session_id && dt > 0.0 {
                        fps = Some(l.frames.saturating_sub(*pf) as f64 / dt);
                        bps = Some(l.bytes.saturating_sub(*pb) as f64 / dt);
                    }
                }
                next_prev.insert(
                    agent.to_owned(),
                    (l.session_id.clone(), l.frames, l.bytes, now),
                );
            }
            DroneRow {
                agent_id: agent.to_owned(),
                relay_id: relay,
                session_id: sid,
                local,
                frames_per_s: fps,
                bytes_per_s: bps,
            }
        })
        .collect();
    if let Some(prev) = prev {
        *prev = next_prev;
    }
    let page = DronePage {
        total,
        offset: p.offset,
        limit: p.limit,
        q: p.q.clone(),
        drones: rows,
    };
    (page, snap)
}

async fn fleet_drones(
    State(s): State<AppState>,
    q: Result<Query<DroneQuery>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let p = paging(q)?;
    Ok(Json(drone_page(&s, &p, None).await.0))
}

async fn build_state(s: &AppState, p: &Paging, prev: Option<&mut Prev>) -> PageState {
    let (drones, snap) = drone_page(s, p, prev).await;
    // This relay's own record is always current (the registry's copy may be a refresh old).
    let me = s.local.record();
    let mut relays: Vec<RelayRecord> = snap
        .relays
        .iter()
        .filter(|r| r.relay_id != me.relay_id)
        .cloned()
        .collect();
    relays.push(me);
    relays.sort_by(|a, b| a.relay_id.cmp(&b.relay_id));
    PageState {
        relay_id: s.local.relay_id.to_string(),
        source: snap.source,
        error: snap.error.clone(),
        now_unix_ms: crate::registry::unix_ms(),
        relays,
        sinks: s.local.sinks(),
        latency: s.latency.views(),
        drones,
        commands: s.local.commands().await,
    }
}

async fn state(
    State(s): State<AppState>,
    q: Result<Query<DroneQuery>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let p = paging(q)?;
    Ok(Json(build_state(&s, &p, None).await))
}

/// Releases an event-stream slot when the stream is dropped.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);
impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn events(
    State(s): State<AppState>,
    q: Result<Query<DroneQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = paging(q)?;
    let streams = s.page_streams.clone();
    if streams.fetch_add(1, Ordering::AcqRel) >= MAX_PAGE_STREAMS {
        streams.fetch_sub(1, Ordering::AcqRel);
        metrics::counter!("contrail_limit_hits_total", "limit" => "page_streams").increment(1);
        return Err(ApiError::TooMany("page event streams"));
    }
    let slot = Slot(streams);
    let mut interval = tokio::time::interval(s.page_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let init = (s, p, interval, Prev::new(), slot);
    let stream = futures::stream::unfold(init, |(s, p, mut interval, mut prev, slot)| async move {
        interval.tick().await;
        if s.lifecycle.state() == LifecycleState::Stopped {
            return None;
        }
        let st = build_state(&s, &p, Some(&mut prev)).await;
        let ev = Event::default()
            .event("state")
            .json_data(&st)
            .unwrap_or_else(|_| Event::default().comment("encode failed"));
        Some((Ok::<_, Infallible>(ev), (s, p, interval, prev, slot)))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
