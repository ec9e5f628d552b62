//! Fleet-wide registry of relays in Redis: each relay publishes `relay:{relay_id}` (a JSON
//! [`RelayRecord`] with a TTL, refreshed every [`RegistryConfig::refresh`]) and its id in the
//! sorted set [`RELAY_INDEX_KEY`]. Any relay reads every relay record with `ZRANGE` of the index
//! and one `MGET` (never a keyspace `SCAN`: the keyspace holds the fleet's drones), cached for
//! [`RegistryConfig::cache_for`] ([`reader::FleetReader::relay_view`]: placement, issue 23,
//! reads only this); and, when a fleet-wide drone listing asks, every `drone:{id}` routing key,
//! cached for [`RegistryConfig::drones_cache_for`] ([`reader::FleetReader::drone_view`]).
//!
//! * [`local::LocalRelay`]: what this relay knows about itself (address, region, limits, sinks,
//!   CPU) and turns into its record.
//! * [`publisher`]: the task that writes the record and deletes it on shutdown.
//! * [`reader`]: the cached fleet-wide view.

pub mod cpu;
pub mod local;
pub mod publisher;
pub mod reader;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use local::{CommandsReport, CommandsView, LocalRelay, RelayFacts, SinkReport, SinkStatus};
pub use reader::{DroneRoute, DroneView, FleetReader, FleetSnapshot, RelayView};

/// Key prefix of relay records.
pub const RELAY_KEY_PREFIX: &str = "relay:";

/// Sorted set indexing the relay records: member = relay id, score = the record's
/// `updated_unix_ms`. Readers list relays from it (`ZRANGE`) instead of scanning the keyspace,
/// whose size is the fleet's (`drone:*`); members older than the TTL are pruned by readers.
pub const RELAY_INDEX_KEY: &str = "contrail:relays";

/// Most relays a read lists.
pub const MAX_RELAYS: usize = 10_000;

/// The Redis key of a relay's record.
pub fn relay_key(relay_id: &str) -> String {
    format!("{RELAY_KEY_PREFIX}{relay_id}")
}

/// What a relay publishes about itself in `relay:{relay_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayRecord {
    /// The relay's id.
    pub relay_id: String,
    /// Address agents connect to (QUIC, `host:port`).
    pub address: String,
    /// Address of the admin HTTP API (`host:port`).
    #[serde(default)]
    pub http_address: String,
    /// Region, if configured.
    #[serde(default)]
    pub region: Option<String>,
    /// Zone, if configured.
    #[serde(default)]
    pub zone: Option<String>,
    /// Live sessions.
    pub sessions: u64,
    /// Sessions above which placement prefers other relays (soft limit).
    pub soft_max_sessions: u64,
    /// Hard session limit.
    pub max_sessions: u64,
    /// Process CPU over the last refresh period, percent of one core.
    pub cpu_percent: f64,
    /// Lifecycle: `starting`, `ready`, `draining`, `stopped`.
    pub state: String,
    /// Whether the relay drains (takes no new sessions).
    pub draining: bool,
    /// Relay version.
    pub version: String,
    /// When the record was written, ms since the Unix epoch.
    pub updated_unix_ms: u64,
}

/// Settings of the registry (enabled with the Redis routing address).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Record TTL (as `drone:{id}`'s).
    pub ttl: Duration,
    /// Interval between writes of the record (at most `ttl / 2`).
    pub refresh: Duration,
    /// How long the relay records (`relay:*`) are served from cache.
    pub cache_for: Duration,
    /// How long the drone routes (`drone:*`, a scan of the whole fleet) are served from cache;
    /// they are read only when a fleet-wide drone listing asks.
    pub drones_cache_for: Duration,
    /// Most `drone:*` keys a fleet-wide read collects (beyond: truncated and counted in
    /// `contrail_limit_hits_total{limit="fleet_scan_keys"}`).
    pub max_scan_keys: usize,
    /// Keys per `SCAN` step and per `MGET`.
    pub scan_chunk: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            ttl: crate::routing::DEFAULT_TTL,
            refresh: Duration::from_secs(5),
            cache_for: Duration::from_secs(1),
            drones_cache_for: Duration::from_secs(2),
            max_scan_keys: 200_000,
            scan_chunk: 1000,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_tolerates_missing_optional_fields() {
        let r = RelayRecord {
            relay_id: "r1".into(),
            address: "10.0.0.1:4433".into(),
            http_address: "10.0.0.1:2112".into(),
            region: Some("eu-west".into()),
            zone: None,
            sessions: 3,
            soft_max_sessions: 8000,
            max_sessions: 10_000,
            cpu_percent: 12.5,
            state: "ready".into(),
            draining: false,
            version: "0.1.0".into(),
            updated_unix_ms: 1,
        };
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(serde_json::from_str::<RelayRecord>(&json).ok(), Some(r));
        let old = r#"{"relay_id":"r","address":"a:1","sessions":0,"soft_max_sessions":1,
            "max_sessions":1,"cpu_percent":0,"state":"ready","draining":false,"version":"x",
            "updated_unix_ms":0}"#;
        assert!(serde_json::from_str::<RelayRecord>(old).is_ok());
        assert_eq!(relay_key("r1"), "relay:r1");
    }
}
