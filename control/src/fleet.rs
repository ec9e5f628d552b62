//! Registry of live sessions and per-agent usage totals.
//!
//! The relay owns the per-session counters ([`SessionStats`]) and bumps them on its hot path with
//! relaxed atomics; the [`Fleet`] only holds `Arc`s to them, so reading status never touches the
//! relay. The live map is bounded by the relay's `max_sessions` (one entry per agent); the map of
//! totals for agents that are no longer connected is capped by `max_disconnected_usage`, evicting
//! the agent that disconnected longest ago.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;

/// Counters of one session, updated by the relay (relaxed atomics, no lock on the hot path).
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Frames accepted on this session.
    pub frames: AtomicU64,
    /// Payload bytes accepted on this session.
    pub bytes: AtomicU64,
    /// Frames sent by the agent and not yet acked.
    pub inflight: AtomicU64,
    /// Frames and bytes acked, not yet taken by the usage sampler; shared with the agent's
    /// cursor (so every session of one stream shares it). The relay replaces the default with
    /// the cursor's.
    pub committed: Arc<crate::usage::UsageCounters>,
    /// Wall-clock time of the last heartbeat (ms since the Unix epoch); 0 = none yet.
    pub last_heartbeat_unix_ms: AtomicU64,
    /// Flight id of the most recent frame, if any.
    pub flight_id: Mutex<Option<String>>,
    /// Receive → ack of the latest ack, µs (0 = none yet).
    pub ack_latency_us: AtomicU64,
    /// The vehicle's identity (from `Register`, replaced by identity updates); `None` for
    /// sessions that have none (e.g. the MAVLink UDP endpoint's).
    pub identity: Mutex<Option<Arc<DroneIdentity>>>,
}

impl SessionStats {
    /// Replaces the session's identity.
    pub fn set_identity(&self, identity: DroneIdentity) {
        *self.identity.lock() = Some(Arc::new(identity));
    }
}

/// What a fleet operator knows about the vehicle behind a session: `Register.identity` and the
/// agent's later `DroneIdentity` updates, plus `Register.agent_version`. The relay caps every
/// string (see [`cap_field`]) before it lands here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DroneIdentity {
    /// MAV_TYPE name, e.g. `MAV_TYPE_QUADROTOR` (empty: unknown).
    pub vehicle_type: String,
    /// MAV_AUTOPILOT name, e.g. `MAV_AUTOPILOT_PX4`.
    pub autopilot: String,
    /// Flight software version, e.g. `1.14.3`.
    pub firmware_version: String,
    /// MAVLink system id (0: unknown).
    pub mavlink_system_id: u32,
    /// Hardware UID (hex) or board id.
    pub hardware_uid: String,
    /// Serial number.
    pub serial_number: String,
    /// Agent software version from `Register`.
    pub agent_version: String,
}

/// `s` cut to at most `max` bytes on a character boundary; the flag tells whether it was cut.
pub fn cap_field(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_owned(), false);
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_owned(), true)
}

/// A live session as the relay registered it.
#[derive(Debug)]
pub struct SessionInfo {
    /// Agent (drone) id from `Register`.
    pub agent_id: String,
    /// Session id the relay issued (128 random bits, hex).
    pub session_id: String,
    /// Remote address of the QUIC connection.
    pub remote_addr: SocketAddr,
    /// Wall-clock time the session registered (ms since the Unix epoch).
    pub connected_since_unix_ms: u64,
    /// Live counters shared with the relay.
    pub stats: Arc<SessionStats>,
}

/// Point-in-time view of one session, as served by `GET /v1/drones/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionSnapshot {
    /// Agent id.
    pub agent_id: String,
    /// Session id.
    pub session_id: String,
    /// Flight id of the latest frame.
    pub flight_id: Option<String>,
    /// Registration time (ms since the Unix epoch).
    pub connected_since_unix_ms: u64,
    /// Last heartbeat (ms since the Unix epoch), `None` before the first one.
    pub last_heartbeat_unix_ms: Option<u64>,
    /// Frames accepted.
    pub frames: u64,
    /// Bytes accepted.
    pub bytes: u64,
    /// Frames in flight.
    pub inflight: u64,
    /// Remote address.
    pub remote_addr: SocketAddr,
    /// The vehicle's identity, when the agent sent one.
    pub identity: Option<DroneIdentity>,
    /// Receive → ack of the latest ack (µs), `None` before the first.
    pub ack_latency_us: Option<u64>,
}

impl SessionInfo {
    /// Reads the counters into a snapshot.
    pub fn snapshot(&self) -> SessionSnapshot {
        let hb = self.stats.last_heartbeat_unix_ms.load(Ordering::Relaxed);
        SessionSnapshot {
            agent_id: self.agent_id.clone(),
            session_id: self.session_id.clone(),
            flight_id: self.stats.flight_id.lock().clone(),
            connected_since_unix_ms: self.connected_since_unix_ms,
            last_heartbeat_unix_ms: (hb != 0).then_some(hb),
            frames: self.stats.frames.load(Ordering::Relaxed),
            bytes: self.stats.bytes.load(Ordering::Relaxed),
            inflight: self.stats.inflight.load(Ordering::Relaxed),
            remote_addr: self.remote_addr,
            identity: self.stats.identity.lock().as_deref().cloned(),
            ack_latency_us: match self.stats.ack_latency_us.load(Ordering::Relaxed) {
                0 => None,
                v => Some(v),
            },
        }
    }
}

/// Frames and bytes of one agent's current session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CurrentUsage {
    /// Session id.
    pub session_id: String,
    /// Frames in this session.
    pub frames: u64,
    /// Bytes in this session.
    pub bytes: u64,
}

/// Usage of one agent: current session and totals since the relay started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentUsage {
    /// Agent id.
    pub agent_id: String,
    /// The live session, if connected.
    pub current: Option<CurrentUsage>,
    /// Frames over all sessions since start (ended sessions plus the current one).
    pub total_frames: u64,
    /// Bytes over all sessions since start.
    pub total_bytes: u64,
    /// Number of sessions seen since start.
    pub sessions: u64,
}

#[derive(Debug, Default, Clone)]
struct Totals {
    frames: u64,
    bytes: u64,
    sessions: u64,
    /// Position in the eviction order while the agent is disconnected.
    evict_seq: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    live: BTreeMap<String, Arc<SessionInfo>>,
    /// Totals of *ended* sessions, one entry per agent seen (live or not).
    totals: BTreeMap<String, Totals>,
    /// Disconnected agents in disconnect order (oldest first).
    evict_order: BTreeMap<u64, String>,
    next_seq: u64,
    /// Usage counters of sessions that ended since the usage sampler last took them (a session
    /// shorter than a sample period is never seen live).
    ended: VecDeque<(String, Arc<crate::usage::UsageCounters>)>,
}

/// Shared registry of live sessions keyed by agent id, plus bounded usage totals.
#[derive(Debug)]
pub struct Fleet {
    inner: RwLock<Inner>,
    max_disconnected_usage: usize,
}

/// Default cap on usage entries kept for disconnected agents.
pub const DEFAULT_MAX_DISCONNECTED_USAGE: usize = 100_000;

impl Default for Fleet {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_DISCONNECTED_USAGE)
    }
}

impl Fleet {
    /// A fleet that keeps usage totals for at most `max_disconnected_usage` disconnected agents.
    pub fn new(max_disconnected_usage: usize) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            max_disconnected_usage,
        }
    }

    /// Registers a live session. A previous session of the same agent is superseded: its counters
    /// are folded into the agent's totals and it is returned.
    pub fn session_up(&self, info: Arc<SessionInfo>) -> Option<Arc<SessionInfo>> {
        let mut g = self.inner.write();
        let inner = &mut *g;
        let totals = inner.totals.entry(info.agent_id.clone()).or_default();
        if let Some(seq) = totals.evict_seq.take() {
            inner.evict_order.remove(&seq);
        }
        totals.sessions += 1;
        let old = inner.live.insert(info.agent_id.clone(), info);
        if let Some(old) = &old {
            fold(totals, old);
            push_ended(inner, old, self.max_disconnected_usage);
        }
        old
    }

    /// Removes the session if it is still the agent's live one; returns whether it was.
    pub fn session_down(&self, agent_id: &str, session_id: &str) -> bool {
        let mut g = self.inner.write();
        let inner = &mut *g;
        match inner.live.get(agent_id) {
            Some(s) if s.session_id == session_id => {}
            _ => return false,
        }
        let Some(old) = inner.live.remove(agent_id) else {
            return false;
        };
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let totals = inner.totals.entry(agent_id.to_owned()).or_default();
        fold(totals, &old);
        totals.evict_seq = Some(seq);
        push_ended(inner, &old, self.max_disconnected_usage);
        inner.evict_order.insert(seq, agent_id.to_owned());
        while inner.evict_order.len() > self.max_disconnected_usage {
            let Some((_, agent)) = inner.evict_order.pop_first() else {
                break;
            };
            inner.totals.remove(&agent);
        }
        true
    }

    /// Usage counters of the sessions that ended since the last call (for the usage sampler),
    /// with their agent ids.
    pub fn take_ended(&self) -> Vec<(String, Arc<crate::usage::UsageCounters>)> {
        std::mem::take(&mut self.inner.write().ended).into()
    }

    /// The live session of `agent_id`.
    pub fn get(&self, agent_id: &str) -> Option<Arc<SessionInfo>> {
        self.inner.read().live.get(agent_id).cloned()
    }

    /// Live sessions ordered by agent id, skipping `offset`, at most `limit`.
    pub fn list(&self, offset: usize, limit: usize) -> Vec<Arc<SessionInfo>> {
        self.inner
            .read()
            .live
            .values()
            .skip(offset)
            .take(limit)
            .cloned()
            .collect()
    }

    /// Calls `f` with the live sessions in agent-id order while holding the read lock (for
    /// listings that page through the fleet without copying it; keep `f` short, a session
    /// going up or down waits for it).
    pub fn with_live<R>(
        &self,
        f: impl FnOnce(std::collections::btree_map::Values<'_, String, Arc<SessionInfo>>) -> R,
    ) -> R {
        f(self.inner.read().live.values())
    }

    /// All live sessions (used by the routing refresh).
    pub fn all(&self) -> Vec<Arc<SessionInfo>> {
        self.inner.read().live.values().cloned().collect()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.inner.read().live.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of agents with usage entries (live plus retained disconnected ones).
    pub fn usage_len(&self) -> usize {
        self.inner.read().totals.len()
    }

    /// Usage of one agent (live or retained).
    pub fn usage(&self, agent_id: &str) -> Option<AgentUsage> {
        let g = self.inner.read();
        let totals = g.totals.get(agent_id)?;
        Some(usage_of(agent_id, totals, g.live.get(agent_id)))
    }

    /// Usage of all known agents ordered by agent id, paged.
    pub fn usage_list(&self, offset: usize, limit: usize) -> Vec<AgentUsage> {
        let g = self.inner.read();
        g.totals
            .iter()
            .skip(offset)
            .take(limit)
            .map(|(agent, t)| usage_of(agent, t, g.live.get(agent)))
            .collect()
    }

    /// Live sessions keyed by agent id, for callers that need a consistent copy.
    pub fn live_session_ids(&self) -> HashMap<String, String> {
        let g = self.inner.read();
        g.live
            .iter()
            .map(|(a, s)| (a.clone(), s.session_id.clone()))
            .collect()
    }
}

/// Hands an ended session's usage counters to the sampler; at most `max` wait (beyond, the
/// oldest go: counted as `limit="usage_tracked"`).
fn push_ended(inner: &mut Inner, old: &SessionInfo, max: usize) {
    if inner.ended.len() >= max.max(1) {
        inner.ended.pop_front();
        metrics::counter!("contrail_limit_hits_total", "limit" => "usage_tracked").increment(1);
    }
    inner
        .ended
        .push_back((old.agent_id.clone(), old.stats.committed.clone()));
}

fn fold(totals: &mut Totals, s: &SessionInfo) {
    totals.frames += s.stats.frames.load(Ordering::Relaxed);
    totals.bytes += s.stats.bytes.load(Ordering::Relaxed);
}

fn usage_of(agent_id: &str, t: &Totals, live: Option<&Arc<SessionInfo>>) -> AgentUsage {
    let current = live.map(|s| CurrentUsage {
        session_id: s.session_id.clone(),
        frames: s.stats.frames.load(Ordering::Relaxed),
        bytes: s.stats.bytes.load(Ordering::Relaxed),
    });
    let (cf, cb) = current.as_ref().map_or((0, 0), |c| (c.frames, c.bytes));
    AgentUsage {
        agent_id: agent_id.to_owned(),
        total_frames: t.frames + cf,
        total_bytes: t.bytes + cb,
        sessions: t.sessions,
        current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(agent: &str, session: &str) -> Arc<SessionInfo> {
        Arc::new(SessionInfo {
            agent_id: agent.into(),
            session_id: session.into(),
            remote_addr: SocketAddr::from(([127, 0, 0, 1], 9)),
            connected_since_unix_ms: 1,
            stats: Arc::default(),
        })
    }

    #[test]
    fn down_of_superseded_session_keeps_new_one() {
        let f = Fleet::new(10);
        let a = info("a", "s1");
        a.stats.frames.store(5, Ordering::Relaxed);
        f.session_up(a);
        let b = info("a", "s2");
        b.stats.frames.store(2, Ordering::Relaxed);
        assert!(f.session_up(b).is_some());
        assert!(!f.session_down("a", "s1"));
        assert_eq!(f.get("a").map(|s| s.session_id.clone()), Some("s2".into()));
        let u = f.usage("a").expect("usage");
        assert_eq!((u.total_frames, u.sessions), (7, 2));
        assert!(f.session_down("a", "s2"));
        assert!(f.get("a").is_none());
        assert_eq!(
            f.usage("a").map(|u| (u.total_frames, u.current)),
            Some((7, None))
        );
    }

    #[test]
    fn disconnected_usage_is_capped_oldest_first() {
        let f = Fleet::new(2);
        for i in 0..4 {
            let agent = format!("a{i}");
            f.session_up(info(&agent, "s"));
            f.session_down(&agent, "s");
        }
        f.session_up(info("live", "s"));
        assert_eq!(f.usage_len(), 3);
        assert!(f.usage("a0").is_none() && f.usage("a1").is_none());
        assert!(f.usage("a3").is_some() && f.usage("live").is_some());
    }

    #[test]
    fn identity_fields_are_capped_on_char_boundaries_and_show_in_snapshots() {
        assert_eq!(cap_field("px4", 8), ("px4".to_string(), false));
        assert_eq!(cap_field("abcdef", 4), ("abcd".to_string(), true));
        // 'é' is two bytes: a cut inside it backs off to the boundary before.
        assert_eq!(cap_field("aé", 2), ("a".to_string(), true));
        let s = info("a", "s");
        assert_eq!(s.snapshot().identity, None);
        s.stats.set_identity(DroneIdentity {
            autopilot: "MAV_AUTOPILOT_PX4".into(),
            ..DroneIdentity::default()
        });
        assert_eq!(
            s.snapshot().identity.map(|i| i.autopilot),
            Some("MAV_AUTOPILOT_PX4".into())
        );
    }

    #[test]
    fn list_pages_in_agent_order() {
        let f = Fleet::default();
        for a in ["c", "a", "b"] {
            f.session_up(info(a, "s"));
        }
        let ids: Vec<_> = f.list(1, 5).iter().map(|s| s.agent_id.clone()).collect();
        assert_eq!(ids, ["b", "c"]);
    }
}
