//! Relay side of placement (issue 23, docs/placement.md): whether a registering agent is
//! redirected, and the relay lists sent in `Redirect`, `Drain.relays` and `Registered.fleet`.
//! The ranking rule is `contrail_control::placement`; the fleet view is the registry's cached
//! reader of `relay:{id}` records in Redis (relays only: placement never scans `drone:*`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use contrail_control::placement::{rank, PlacementRules};
use contrail_control::registry::{FleetReader, RelayRecord};
use contrail_protocol::proto::RelayEndpoint;

/// The capability an agent offers to be redirected.
pub use contrail_protocol::client::placement::CAPABILITY_REDIRECT;

/// Longest a Register waits for the fleet view (cached; a cold read goes to Redis).
const READ_BUDGET: Duration = Duration::from_millis(500);

/// Placement state of one relay.
pub struct RelayPlacement {
    reader: Arc<FleetReader>,
    rules: PlacementRules,
    soft_max_sessions: usize,
    region: Option<String>,
    /// Agents sent to each relay since its record (written at `.0`, ms) was published.
    sent: parking_lot::Mutex<HashMap<String, (u64, u64)>>,
}

impl std::fmt::Debug for RelayPlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayPlacement")
            .field("soft_max_sessions", &self.soft_max_sessions)
            .field("region", &self.region)
            .finish()
    }
}

/// Why an agent is redirected (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectReason {
    /// The relay is at or above `limits.soft_max_sessions`.
    SoftLimit,
    /// The relay is draining.
    Draining,
}

impl RedirectReason {
    /// Label value and Redirect.reason.
    pub fn label(self) -> &'static str {
        match self {
            RedirectReason::SoftLimit => "soft_limit",
            RedirectReason::Draining => "draining",
        }
    }
}

impl RelayPlacement {
    /// Placement over `reader`'s view.
    pub fn new(reader: Arc<FleetReader>, soft_max_sessions: usize, region: Option<String>) -> Self {
        RelayPlacement {
            reader,
            rules: PlacementRules::default(),
            soft_max_sessions,
            region,
            sent: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// The soft session limit.
    pub fn soft_max_sessions(&self) -> usize {
        self.soft_max_sessions
    }

    /// Whether a Register offering `capabilities` should be redirected, and why. `sessions`
    /// counts live sessions (not this one).
    pub fn should_redirect(
        &self,
        capabilities: &[String],
        sessions: usize,
        draining: bool,
    ) -> Option<RedirectReason> {
        if !capabilities.iter().any(|c| c == CAPABILITY_REDIRECT) {
            return None;
        }
        if draining {
            Some(RedirectReason::Draining)
        } else if sessions >= self.soft_max_sessions {
            Some(RedirectReason::SoftLimit)
        } else {
            None
        }
    }

    /// Better relays than this one (`me`), best first. Empty when the view is local only,
    /// Redis is slow, or no relay qualifies. `commit`: the agent is sent to the first one
    /// (Redirect, Drain), which counts against that relay's room until the view is read again.
    pub async fn targets(&self, me: &str, commit: bool) -> Vec<RelayEndpoint> {
        let snap = match tokio::time::timeout(READ_BUDGET, self.reader.relay_view()).await {
            Ok(s) => s,
            Err(_) => {
                metrics::counter!("contrail_limit_hits_total", "limit" => "placement_read")
                    .increment(1);
                return Vec::new();
            }
        };
        let mut sent = self.sent.lock();
        // A newer record already counts the agents sent before it was written (bounded: one
        // entry per relay in the view).
        sent.retain(|id, (at, _)| {
            snap.relays
                .iter()
                .any(|r| r.relay_id == *id && r.updated_unix_ms == *at)
        });
        let counts: HashMap<String, u64> = sent.iter().map(|(k, v)| (k.clone(), v.1)).collect();
        let out = self.rank(me, &snap.relays, &counts);
        if commit {
            if let Some(first) = out.first() {
                if let Some(r) = snap.relays.iter().find(|r| r.relay_id == first.relay_id) {
                    sent.entry(r.relay_id.clone())
                        .or_insert((r.updated_unix_ms, 0))
                        .1 += 1;
                }
            }
        }
        out
    }

    /// The ranking over given records, `sent` agents already sent to each.
    pub fn rank(
        &self,
        me: &str,
        relays: &[RelayRecord],
        sent: &HashMap<String, u64>,
    ) -> Vec<RelayEndpoint> {
        let now = crate::clock::unix_ms();
        rank(
            me,
            self.region.as_deref(),
            relays,
            now,
            &self.rules,
            |id| sent.get(id).copied().unwrap_or(0),
            rand::random::<f64>,
        )
        .into_iter()
        .map(endpoint)
        .collect()
    }
}

fn endpoint(r: &RelayRecord) -> RelayEndpoint {
    let sat = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    RelayEndpoint {
        relay_id: r.relay_id.clone(),
        address: r.address.clone(),
        server_name: String::new(),
        region: r.region.clone().unwrap_or_default(),
        zone: r.zone.clone().unwrap_or_default(),
        sessions: sat(r.sessions),
        soft_limit: sat(r.soft_max_sessions),
        hard_limit: sat(r.max_sessions),
    }
}
