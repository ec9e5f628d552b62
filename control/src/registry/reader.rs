//! Fleet-wide view: every relay record and every drone route, read from Redis with `SCAN` and
//! pipelined `MGET`, cached for [`RegistryConfig::cache_for`] so a page or API under load costs
//! Redis at most one scan per period. Without Redis the view is this relay alone.

use std::sync::Arc;
use std::time::Instant;

use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

use super::publisher::connect;
use super::{unix_ms, LocalRelay, RegistryConfig, RelayRecord, RELAY_KEY_PREFIX};
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

/// One fleet-wide read.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSnapshot {
    /// `redis` (the whole fleet) or `local` (this relay only: no Redis configured or reachable).
    pub source: &'static str,
    /// Relays ordered by id.
    pub relays: Vec<RelayRecord>,
    /// Drones ordered by agent id, from the Redis routing keys (empty without Redis: this
    /// relay's own drones are in its [`crate::Fleet`], which callers merge in).
    pub drones: Vec<DroneRoute>,
    /// Whether `max_scan_keys` cut the drone list short.
    pub truncated: bool,
    /// When it was read, ms since the Unix epoch.
    pub taken_unix_ms: u64,
    /// Why Redis could not be read, if it could not.
    pub error: Option<String>,
}

/// Cached reader of the fleet.
pub struct FleetReader {
    local: Arc<LocalRelay>,
    routing: Option<RoutingConfig>,
    cfg: RegistryConfig,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    cache: tokio::sync::Mutex<Option<(Instant, Arc<FleetSnapshot>)>>,
}

impl std::fmt::Debug for FleetReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetReader").finish_non_exhaustive()
    }
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
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether the view covers the fleet (Redis configured).
    pub fn fleet_wide(&self) -> bool {
        self.routing.is_some()
    }

    /// The fleet, at most `cache_for` old. Concurrent callers share one read.
    pub async fn snapshot(&self) -> Arc<FleetSnapshot> {
        let mut cache = self.cache.lock().await;
        if let Some((at, snap)) = cache.as_ref() {
            if at.elapsed() < self.cfg.cache_for {
                return snap.clone();
            }
        }
        let snap = Arc::new(self.read().await);
        *cache = Some((Instant::now(), snap.clone()));
        snap
    }

    /// Every relay record (placement reads this).
    pub async fn relays(&self) -> Vec<RelayRecord> {
        self.snapshot().await.relays.clone()
    }

    /// This relay alone. Its drones are not copied here: callers read them from the [`crate::Fleet`]
    /// (which is authoritative for this relay's sessions) and use `drones` for other relays'.
    fn local_only(&self, error: Option<String>) -> FleetSnapshot {
        FleetSnapshot {
            source: "local",
            relays: vec![self.local.record()],
            drones: Vec::new(),
            truncated: false,
            taken_unix_ms: unix_ms(),
            error,
        }
    }

    async fn read(&self) -> FleetSnapshot {
        let Some(routing) = &self.routing else {
            return self.local_only(None);
        };
        let mut conn = self.conn.lock().await;
        let res = async {
            if conn.is_none() {
                *conn = Some(connect(routing).await?);
            }
            let c = conn.as_mut().ok_or(RoutingError::Disabled)?;
            let deadline = routing.io_timeout.saturating_mul(4);
            tokio::time::timeout(deadline, scan_fleet(c, &self.cfg))
                .await
                .map_err(|_| RoutingError::Timeout)?
        }
        .await;
        match res {
            Ok((relays, drones, truncated)) => FleetSnapshot {
                source: "redis",
                relays,
                drones,
                truncated,
                taken_unix_ms: unix_ms(),
                error: None,
            },
            Err(e) => {
                *conn = None;
                metrics::counter!("contrail_registry_errors_total").increment(1);
                self.local_only(Some(e.to_string()))
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

async fn scan_fleet(
    c: &mut MultiplexedConnection,
    cfg: &RegistryConfig,
) -> Result<(Vec<RelayRecord>, Vec<DroneRoute>, bool), RoutingError> {
    let (rkeys, _) = scan_keys(c, &format!("{RELAY_KEY_PREFIX}*"), cfg.scan_chunk, 10_000).await?;
    let mut relays: Vec<RelayRecord> = mget(c, &rkeys, cfg.scan_chunk)
        .await?
        .into_iter()
        .flatten()
        .filter_map(|v| serde_json::from_str(&v).ok())
        .collect();
    relays.sort_by(|a, b| a.relay_id.cmp(&b.relay_id));
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
    Ok((relays, drones, truncated))
}
