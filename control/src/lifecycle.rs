//! Relay lifecycle latch and readiness.
//!
//! [`Lifecycle`] is a cloneable handle over a `watch` channel: the state only moves forward
//! (`Starting → Ready → Draining → Stopped`, with `Draining`/`Stopped` reachable from any earlier
//! state). Transitions are decided by the pure [`LifecycleState::next`] so they can be unit-tested.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use crate::health::{ComponentStatus, Health};

/// Where the relay is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleState {
    /// Binding endpoints, waiting for required sinks.
    Starting,
    /// Accepting sessions.
    Ready,
    /// Refusing new sessions and moving agents away.
    Draining,
    /// Done.
    Stopped,
}

/// An input to the lifecycle state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// Endpoint bound and required sinks healthy.
    Ready,
    /// Drain requested (signal or admin API).
    Drain,
    /// Shutdown finished.
    Stopped,
}

impl LifecycleState {
    /// The state after `event`, or `None` when the event does not apply (already there, or it
    /// would move backwards).
    pub fn next(self, event: LifecycleEvent) -> Option<LifecycleState> {
        use LifecycleState as S;
        match (self, event) {
            (S::Starting, LifecycleEvent::Ready) => Some(S::Ready),
            (S::Starting | S::Ready, LifecycleEvent::Drain) => Some(S::Draining),
            (S::Starting | S::Ready | S::Draining, LifecycleEvent::Stopped) => Some(S::Stopped),
            _ => None,
        }
    }

    /// Lower-case name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleState::Starting => "starting",
            LifecycleState::Ready => "ready",
            LifecycleState::Draining => "draining",
            LifecycleState::Stopped => "stopped",
        }
    }
}

#[derive(Debug)]
struct Inner {
    tx: watch::Sender<LifecycleState>,
    drain_reason: Mutex<Option<String>>,
}

/// Cloneable handle on the lifecycle latch.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A new lifecycle in `Starting`.
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(LifecycleState::Starting);
        Self {
            inner: Arc::new(Inner {
                tx,
                drain_reason: Mutex::new(None),
            }),
        }
    }

    /// Current state.
    pub fn state(&self) -> LifecycleState {
        *self.inner.tx.borrow()
    }

    /// A receiver that sees every later transition (latest value wins).
    pub fn subscribe(&self) -> watch::Receiver<LifecycleState> {
        self.inner.tx.subscribe()
    }

    fn apply(&self, event: LifecycleEvent) -> bool {
        self.inner.tx.send_if_modified(|s| match s.next(event) {
            Some(n) => {
                tracing::info!(from = s.as_str(), to = n.as_str(), "lifecycle transition");
                *s = n;
                true
            }
            None => false,
        })
    }

    /// `Starting → Ready`; returns whether the state changed.
    pub fn mark_ready(&self) -> bool {
        self.apply(LifecycleEvent::Ready)
    }

    /// Enters `Draining` (idempotent); returns `true` only for the call that started the drain.
    pub fn begin_drain(&self, reason: &str) -> bool {
        let mut r = self.inner.drain_reason.lock();
        let changed = self.apply(LifecycleEvent::Drain);
        if changed {
            tracing::warn!(reason, "drain started");
            *r = Some(reason.to_owned());
        }
        changed
    }

    /// Enters `Stopped`; returns whether the state changed.
    pub fn mark_stopped(&self) -> bool {
        self.apply(LifecycleEvent::Stopped)
    }

    /// Why the drain started, once draining.
    pub fn drain_reason(&self) -> Option<String> {
        self.inner.drain_reason.lock().clone()
    }

    /// Whether the lifecycle has reached `Draining` or later.
    pub fn is_draining(&self) -> bool {
        self.state() >= LifecycleState::Draining
    }
}

/// The `/readyz` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// `true` only in `Ready` with every required component healthy.
    pub ready: bool,
    /// Lifecycle state.
    pub state: LifecycleState,
    /// Drain reason when draining.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_reason: Option<String>,
    /// Every registered component.
    pub components: Vec<ComponentStatus>,
}

/// Combines the lifecycle and the health registry into a readiness answer.
pub fn readiness(lifecycle: &Lifecycle, health: &Health) -> Readiness {
    let state = lifecycle.state();
    let components = health.report();
    let healthy = components.iter().all(|c| c.healthy || !c.required);
    Readiness {
        ready: state == LifecycleState::Ready && healthy,
        state,
        drain_reason: lifecycle.drain_reason(),
        components,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_only_move_forward() {
        use LifecycleEvent as E;
        use LifecycleState as S;
        assert_eq!(S::Starting.next(E::Ready), Some(S::Ready));
        assert_eq!(S::Ready.next(E::Ready), None);
        assert_eq!(S::Draining.next(E::Ready), None);
        assert_eq!(S::Draining.next(E::Drain), None);
        assert_eq!(S::Stopped.next(E::Drain), None);
        assert_eq!(S::Starting.next(E::Drain), Some(S::Draining));
    }

    #[test]
    fn drain_is_idempotent_and_keeps_first_reason() {
        let l = Lifecycle::new();
        let mut rx = l.subscribe();
        assert!(l.mark_ready());
        assert!(l.begin_drain("deploy"));
        assert!(!l.begin_drain("again"));
        assert_eq!(l.drain_reason().as_deref(), Some("deploy"));
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(*rx.borrow_and_update(), LifecycleState::Draining);
        assert!(!l.mark_ready());
    }

    #[test]
    fn readiness_requires_ready_and_required_components() {
        let l = Lifecycle::new();
        let h = Health::default();
        let sink = h.register("file", true);
        let _redis = h.register("redis", false);
        assert!(!readiness(&l, &h).ready);
        l.mark_ready();
        assert!(!readiness(&l, &h).ready);
        sink.set_healthy(true);
        assert!(readiness(&l, &h).ready);
        l.begin_drain("x");
        assert!(!readiness(&l, &h).ready);
    }
}
