//! Fleet-wide view: every relay record and every drone route, read from Redis with `SCAN` and
//! pipelined `MGET`. The relays (`relay:*`, one key per relay) are cached for
//! [`RegistryConfig::cache_for`]; the drones (`drone:*`, one key per drone of the fleet) are read
//! only when a listing asks and cached for [`RegistryConfig::drones_cache_for`], so placement
//! never pays for the fleet's size and a page or API under load costs Redis at most one drone
//! scan per period. Without Redis the view is this relay alone.

use std::sync::Arc;
use std::time::Instant;

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

use super::publisher::connect;
use super::{
    relay_key, unix_ms, LocalRelay, RegistryConfig, RelayRecord, MAX_RELAYS, RELAY_INDEX_KEY,
};
use crate::error::RoutingError;
use crate::routing::RoutingConfig;

/// Which relay holds a drone (the value of `drone:{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DroneRoute {
    /// Agent id.
    pub agent_id: String,
    /// Relay holding its session.
    pub relay_id: String,
    /// Its session.
    pub session_id: String,
}

#[derive(Deserialize)]
struct RouteValue {
    relay_id: String,
    session_id: String,
}

/// The relays of the fleet (what placement needs): `relay:*` only, a few keys per relay.
#[derive(Debug, Clone)]
pub struct RelayView {
    /// `redis` (the whole fleet) or `local` (this relay only: no Redis configured or reachable).
    pub source: &'static str,
    /// Relays ordered by id.
    pub relays: Vec<RelayRecord>,
    /// When it was read, ms since the Unix epoch.
    pub taken_unix_ms: u64,
    /// Why Redis could not be read, if it could not.
    pub error: Option<String>,
}

/// Every drone route of the fleet (`drone:*`), read only when a listing asks for it.
#[derive(Debug, Clone, Default)]
pub struct DroneView {
    /// Drones ordered by agent id (empty without Redis).
    pub drones: Vec<DroneRoute>,
    /// Whether `max_scan_keys` cut the list short.
    pub truncated: bool,
    /// Why Redis could not be read, if it could not.
    pub error: Option<String>,
}

impl DroneView {
    /// The route of `agent_id` (binary search: the list is ordered by agent id).
    pub fn find(&self, agent_id: &str) -> Option<&DroneRoute> {
        self.drones
            .binary_search_by(|d| d.agent_id.as_str().cmp(agent_id))
            .ok()
            .map(|i| &self.drones[i])
    }
}

/// One fleet-wide read: the relay view plus the drone view (each cached on its own).
#[derive(Debug, Clone)]
pub struct FleetSnapshot {
    /// `redis` (the whole fleet) or `local` (this relay only: no Redis configured or reachable).
    pub source: &'static str,
    /// Relays ordered by id.
    pub relays: Vec<RelayRecord>,
    /// Drones ordered by agent id, from the Redis routing keys (empty without Redis: this
    /// relay's own drones are in its [`crate::Fleet`], which callers merge in). Shared with
    /// the cache: a listing never copies the fleet.
    pub drones: Arc<DroneView>,
    /// When the relays were read, ms since the Unix epoch.
    pub taken_unix_ms: u64,
    /// Why Redis could not be read, if it could not.
    pub error: Option<String>,
}

type Cache<T> = tokio::sync::Mutex<Option<(Instant, Arc<T>)>>;

/// Cached reader of the fleet. Relays and drones are read and cached separately: placement
/// (every capable Register, every drained agent) reads only `relay:*`, whose size is the
/// number of relays; the `drone:*` scan, whose size is the fleet, runs only when a fleet-wide
/// drone listing (`/v1/fleet/drones`, the page, gRPC `fleet_wide`) asks, at most once per
/// [`RegistryConfig::drones_cache_for`].
pub struct FleetReader {
    local: Arc<LocalRelay>,
    routing: Option<RoutingConfig>,
    cfg: RegistryConfig,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    relays_cache: Cache<RelayView>,
    drones_cache: Cache<DroneView>,
}

impl std::fmt::Debug for FleetReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetReader").finish_non_exhaustive()
    }
}

/// The cached value if younger than `ttl`, else `read()`'s (stored). Concurrent callers share
/// one read: the lock is held across it.
async fn cached<T, F>(cache: &Cache<T>, ttl: std::time::Duration, read: F) -> Arc<T>
where
    F: std::future::Future<Output = T>,
{
    let mut c = cache.lock().await;
    if let Some((at, v)) = c.as_ref() {
        if at.elapsed() < ttl {
            return v.clone();
        }
    }
    let v = Arc::new(read.await);
    *c = Some((Instant::now(), v.clone()));
    v
}

impl FleetReader {
    /// A reader; `routing` is `None` without Redis.
    pub fn new(
        local: Arc<LocalRelay>,
        routing: Option<RoutingConfig>,
        cfg: RegistryConfig,
    ) -> Self {
        FleetReader {
            local,
            routing,
            cfg,
            conn: tokio::sync::Mutex::new(None),
            relays_cache: tokio::sync::Mutex::new(None),
            drones_cache: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether the view covers the fleet (Redis configured).
    pub fn fleet_wide(&self) -> bool {
        self.routing.is_some()
    }

    /// Every relay, at most `cache_for` old (placement and `/v1/relays` read this; it never
    /// touches `drone:*`).
    pub async fn relay_view(&self) -> Arc<RelayView> {
        cached(&self.relays_cache, self.cfg.cache_for, self.read_relays()).await
    }

    /// Every drone route, at most `drones_cache_for` old (empty without Redis).
    pub async fn drone_view(&self) -> Arc<DroneView> {
        if self.routing.is_none() {
            return Arc::default();
        }
        cached(
            &self.drones_cache,
            self.cfg.drones_cache_for,
            self.read_drones(),
        )
        .await
    }

    /// Relays and drones (the fleet-wide listings read this).
    pub async fn snapshot(&self) -> FleetSnapshot {
        let relays = self.relay_view().await;
        let drones = self.drone_view().await;
        FleetSnapshot {
            source: relays.source,
            relays: relays.relays.clone(),
            taken_unix_ms: relays.taken_unix_ms,
            error: relays.error.clone().or_else(|| drones.error.clone()),
            drones,
        }
    }

    /// Every relay record (placement reads this).
    pub async fn relays(&self) -> Vec<RelayRecord> {
        self.relay_view().await.relays.clone()
    }

    /// This relay alone.
    fn local_only(&self, error: Option<String>) -> RelayView {
        RelayView {
            source: "local",
            relays: vec![self.local.record()],
            taken_unix_ms: unix_ms(),
            error,
        }
    }

    /// A connection to the routing Redis (multiplexed: callers use clones concurrently).
    async fn connection(
        &self,
        routing: &RoutingConfig,
    ) -> Result<MultiplexedConnection, RoutingError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(routing).await?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Counts a failed read and forgets the connection.
    async fn failed(&self) {
        *self.conn.lock().await = None;
        metrics::counter!("contrail_registry_errors_total").increment(1);
    }

    async fn read_relays(&self) -> RelayView {
        let Some(routing) = &self.routing else {
            return self.local_only(None);
        };
        let res = async {
            let mut c = self.connection(routing).await?;
            let deadline = routing.io_timeout.saturating_mul(4);
            tokio::time::timeout(deadline, scan_relays(&mut c, &self.cfg))
                .await
                .map_err(|_| RoutingError::Timeout)?
        }
        .await;
        match res {
            Ok(relays) => RelayView {
                source: "redis",
                relays,
                taken_unix_ms: unix_ms(),
                error: None,
            },
            Err(e) => {
                self.failed().await;
                self.local_only(Some(e.to_string()))
            }
        }
    }

    async fn read_drones(&self) -> DroneView {
        let Some(routing) = &self.routing else {
            return DroneView::default();
        };
        let res = async {
            let mut c = self.connection(routing).await?;
            let deadline = routing.io_timeout.saturating_mul(4);
            tokio::time::timeout(deadline, scan_drones(&mut c, &self.cfg))
                .await
                .map_err(|_| RoutingError::Timeout)?
        }
        .await;
        match res {
            Ok((drones, truncated)) => DroneView {
                drones,
                truncated,
                error: None,
            },
            Err(e) => {
                self.failed().await;
                DroneView {
                    error: Some(e.to_string()),
                    ..DroneView::default()
                }
            }
        }
    }
}

impl PartialOrd for DroneRoute {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for DroneRoute {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.agent_id, &self.relay_id, &self.session_id).cmp(&(
            &other.agent_id,
            &other.relay_id,
            &other.session_id,
        ))
    }
}

/// `SCAN MATCH pattern` collecting at most `max` keys; returns (keys, truncated).
async fn scan_keys(
    c: &mut MultiplexedConnection,
    pattern: &str,
    chunk: usize,
    max: usize,
) -> Result<(Vec<String>, bool), RoutingError> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(chunk)
            .query_async(c)
            .await?;
        keys.extend(batch);
        if keys.len() >= max {
            keys.truncate(max);
            return Ok((keys, true));
        }
        if next == 0 {
            return Ok((keys, false));
        }
        cursor = next;
    }
}

/// `MGET` of `keys` in chunks, all chunks in one pipeline.
async fn mget(
    c: &mut MultiplexedConnection,
    keys: &[String],
    chunk: usize,
) -> Result<Vec<Option<String>>, RoutingError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for part in keys.chunks(chunk.max(1)) {
        pipe.cmd("MGET").arg(part);
    }
    let parts: Vec<Vec<Option<String>>> = pipe.query_async(c).await?;
    Ok(parts.into_iter().flatten().collect())
}

/// Every relay record: the ids from the index (pruned of entries older than the TTL, whose
/// records have expired), then one `MGET`. Cost: the number of relays, whatever the fleet.
async fn scan_relays(
    c: &mut MultiplexedConnection,
    cfg: &RegistryConfig,
) -> Result<Vec<RelayRecord>, RoutingError> {
    let stale_before = unix_ms().saturating_sub(cfg.ttl.as_millis() as u64);
    let (ids,): (Vec<String>,) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(RELAY_INDEX_KEY)
        .arg("-inf")
        .arg(format!("({stale_before}"))
        .ignore()
        .cmd("ZRANGE")
        .arg(RELAY_INDEX_KEY)
        .arg(0)
        .arg(MAX_RELAYS as i64 - 1)
        .query_async(c)
        .await?;
    let keys: Vec<String> = ids.iter().map(|id| relay_key(id)).collect();
    let mut relays: Vec<RelayRecord> = mget(c, &keys, cfg.scan_chunk)
        .await?
        .into_iter()
        .flatten()
        .filter_map(|v| serde_json::from_str(&v).ok())
        .collect();
    relays.sort_by(|a, b| a.relay_id.cmp(&b.relay_id));
    relays.dedup_by(|a, b| a.relay_id == b.relay_id);
    Ok(relays)
}

async fn scan_drones(
    c: &mut MultiplexedConnection,
    cfg: &RegistryConfig,
) -> Result<(Vec<DroneRoute>, bool), RoutingError> {
    let (dkeys, truncated) = scan_keys(c, "drone:*", cfg.scan_chunk, cfg.max_scan_keys).await?;
    if truncated {
        metrics::counter!("contrail_limit_hits_total", "limit" => "fleet_scan_keys").increment(1);
    }
    let values = mget(c, &dkeys, cfg.scan_chunk).await?;
    let mut drones: Vec<DroneRoute> = dkeys
        .iter()
        .zip(values)
        .filter_map(|(k, v)| {
            let v: RouteValue = serde_json::from_str(&v?).ok()?;
            Some(DroneRoute {
                agent_id: k.strip_prefix("drone:")?.to_owned(),
                relay_id: v.relay_id,
                session_id: v.session_id,
            })
        })
        .collect();
    // SCAN may return a key twice.
    drones.sort();
    drones.dedup_by(|a, b| a.agent_id == b.agent_id);
    Ok((drones, truncated))
}
