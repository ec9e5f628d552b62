//! The sender the relay reports session up/down events on.
//!
//! Nothing here blocks or grows without bound: the [`Fleet`] is updated in place (bounded by the
//! relay's `max_sessions` plus the capped usage map) and the routing change is folded into the
//! bounded [`RoutingQueue`]; a change that does not fit is dropped and counted in
//! `contrail_routing_events_dropped_total` (the periodic refresh repairs it). No actor mailbox is
//! involved, so event bursts never queue behind a slow Redis.

use std::sync::Arc;

use crate::fleet::{Fleet, SessionInfo};
use crate::metric_names as m;
use crate::routing::RoutingQueue;

/// Metric counting routing changes dropped because the routing queue was full.
pub const ROUTING_EVENTS_DROPPED: &str = m::ROUTING_EVENTS_DROPPED;

/// Cloneable, non-blocking sender of session events.
#[derive(Debug, Clone)]
pub struct ControlEvents {
    fleet: Arc<Fleet>,
    routing: Option<Arc<RoutingQueue>>,
}

impl ControlEvents {
    /// Events feeding `fleet` and, when routing is enabled, `routing`.
    pub fn new(fleet: Arc<Fleet>, routing: Option<Arc<RoutingQueue>>) -> Self {
        Self { fleet, routing }
    }

    /// A session registered. Supersedes an older session of the same agent in the fleet.
    pub fn session_up(&self, info: Arc<SessionInfo>) {
        let agent = info.agent_id.clone();
        self.fleet.session_up(info);
        if let Some(q) = &self.routing {
            if !q.mark_up(&agent) {
                metrics::counter!(ROUTING_EVENTS_DROPPED).increment(1);
            }
        }
    }

    /// A session ended. Its routing key is compare-and-deleted (only if it still names it).
    pub fn session_down(&self, agent_id: &str, session_id: &str) {
        self.fleet.session_down(agent_id, session_id);
        if let Some(q) = &self.routing {
            if !q.mark_down(agent_id, session_id) {
                metrics::counter!(ROUTING_EVENTS_DROPPED).increment(1);
            }
        }
    }

    /// The fleet these events feed.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }
}
