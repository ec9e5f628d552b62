//! Redis routing publication: `drone:{agent_id}` → `{"relay_id":…,"session_id":…}` with a TTL.
//!
//! * [`RoutingQueue`] collects pending up/down changes, folded per agent and bounded by
//!   `queue_capacity` (changes beyond it are dropped and counted; the periodic refresh repairs
//!   dropped ups within TTL/2, dropped downs expire with the TTL).
//! * [`schedule::Schedule`] decides (from `now`) when to connect, flush, refresh and back off.
//! * [`publisher::RoutingPublisher`] is the actor that owns the Redis connection and runs it.

pub mod publisher;
pub mod schedule;
pub(crate) mod store;

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

pub use store::{CAS_DELETE_LUA, REFRESH_LUA};

/// Parses the Redis address settings (used by config validation).
pub fn store_connection_info(
    cfg: &RoutingConfig,
) -> Result<redis::ConnectionInfo, crate::error::RoutingError> {
    store::connection_info(cfg)
}

/// Redis routing settings (`REDIS_ADDR`, `REDIS_PASSWORD`, `REDIS_DB`, `REDIS_TLS_CA_FILE`,
/// `CONTRAIL_REDIS_TTL_SECS`).
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// `host:port`, a `redis://` URL, or a `rediss://` URL for TLS; `None` disables routing
    /// publication.
    pub addr: Option<String>,
    /// PEM CA file that verifies the server of a `rediss://` address (default: system roots).
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// AUTH password.
    pub password: Option<String>,
    /// Database index.
    pub db: Option<i64>,
    /// Key TTL; keys are refreshed every `ttl / 2`.
    pub ttl: Duration,
    /// Value of `relay_id` in every key.
    pub relay_id: String,
    /// Most commands in one flush pipeline of pending ups/downs.
    pub max_batch: usize,
    /// Most agents with a pending change (see [`RoutingQueue`]).
    pub queue_capacity: usize,
    /// Interval between flushes of pending changes.
    pub flush_interval: Duration,
    /// Commands per pipeline when refreshing or republishing every live session.
    pub refresh_chunk: usize,
    /// Timeout for connecting and for each pipeline round trip.
    pub io_timeout: Duration,
    /// First reconnect delay; doubles per failure up to `backoff_max`.
    pub backoff_initial: Duration,
    /// Cap of the reconnect delay.
    pub backoff_max: Duration,
}

/// Default key TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(45);

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            addr: None,
            tls_ca_file: None,
            password: None,
            db: None,
            ttl: DEFAULT_TTL,
            relay_id: "relay".to_owned(),
            max_batch: 1000,
            queue_capacity: 100_000,
            flush_interval: Duration::from_millis(50),
            refresh_chunk: 1000,
            io_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// The Redis key for an agent.
pub fn routing_key(agent_id: &str) -> String {
    format!("drone:{agent_id}")
}

#[derive(Serialize)]
struct RouteValue<'a> {
    relay_id: &'a str,
    session_id: &'a str,
}

/// The JSON value stored under the key: `{"relay_id":"…","session_id":"…"}`.
pub fn routing_value(relay_id: &str, session_id: &str) -> String {
    serde_json::to_string(&RouteValue {
        relay_id,
        session_id,
    })
    .unwrap_or_else(|_| String::from("{}"))
}

/// Most ended session ids remembered per agent between two flushes.
const MAX_DOWNS_PER_AGENT: usize = 4;

/// Pending routing changes folded per agent: the flush reads the agent's current state from the
/// `Fleet` (live → `SET`), and compare-and-deletes the remembered ended sessions otherwise.
#[derive(Debug)]
pub struct RoutingQueue {
    pending: Mutex<HashMap<String, Vec<String>>>,
    capacity: usize,
}

impl RoutingQueue {
    /// A queue holding at most `capacity` agents.
    pub fn new(capacity: usize) -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// Marks the agent as changed (session up). Returns `false` if dropped because full.
    pub fn mark_up(&self, agent_id: &str) -> bool {
        let mut g = self.pending.lock();
        if g.contains_key(agent_id) {
            return true;
        }
        if g.len() >= self.capacity {
            return false;
        }
        g.insert(agent_id.to_owned(), Vec::new());
        true
    }

    /// Records an ended session. Returns `false` if dropped because full.
    pub fn mark_down(&self, agent_id: &str, session_id: &str) -> bool {
        let mut g = self.pending.lock();
        let len = g.len();
        match g.get_mut(agent_id) {
            Some(downs) => {
                if downs.len() >= MAX_DOWNS_PER_AGENT {
                    downs.remove(0);
                }
                downs.push(session_id.to_owned());
                true
            }
            None if len >= self.capacity => false,
            None => {
                g.insert(agent_id.to_owned(), vec![session_id.to_owned()]);
                true
            }
        }
    }

    /// Removes and returns up to `max` pending agents.
    pub fn take(&self, max: usize) -> Vec<(String, Vec<String>)> {
        let mut g = self.pending.lock();
        if g.len() <= max {
            return g.drain().collect();
        }
        let keys: Vec<String> = g.keys().take(max).cloned().collect();
        keys.into_iter()
            .filter_map(|k| g.remove_entry(&k))
            .collect()
    }

    /// Puts back ended sessions whose deletion failed (best effort, respects capacity).
    pub fn restore_downs(&self, items: Vec<(String, Vec<String>)>) {
        for (agent, downs) in items {
            for d in downs {
                self.mark_down(&agent, &d);
            }
        }
    }

    /// Number of agents with a pending change.
    pub fn len(&self) -> usize {
        self.pending.lock().len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_is_the_compatible_json() {
        assert_eq!(
            routing_value("r1", "abc"),
            r#"{"relay_id":"r1","session_id":"abc"}"#
        );
        assert_eq!(routing_key("d7"), "drone:d7");
    }

    #[test]
    fn queue_folds_per_agent_and_is_bounded() {
        let q = RoutingQueue::new(2);
        assert!(q.mark_up("a"));
        assert!(q.mark_down("a", "s1"));
        assert!(q.mark_up("a"));
        assert!(q.mark_down("b", "s2"));
        assert!(!q.mark_up("c"));
        assert_eq!(q.len(), 2);
        let mut got = q.take(10);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("a".into(), vec!["s1".into()]),
                ("b".into(), vec!["s2".into()])
            ]
        );
        assert!(q.is_empty());
    }
}
