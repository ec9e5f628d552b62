//! The relay root: parent of the session supervisor and of every sink actor. It spawns them
//! linked in `pre_start`, handles each child's failure by name, and stops them in order. See
//! `relay/README.md` ("Supervision tree") for the tree, what restarts and the shutdown order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use contrail_control::metric_names as m;
use contrail_control::Lifecycle;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::core::ClaimHook;
use crate::session::supervisor::{SessionSupervisor, SupervisorMsg, SupervisorSlot};
use crate::sink::actor::{SinkActor, SinkArgs, SinkMsg};
use crate::sink::{SinkFactory, SinkHandle};

/// Bound on each child's stop during the ordered shutdown.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// A child that fails again within this time of starting is restarted after this delay (no
/// hot restart loop).
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// A child of the root, by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RelayChild {
    /// The session supervisor (and, linked under it, every session actor).
    Sessions,
    /// The sink actor of the sink with this name.
    Sink(String),
}

impl std::fmt::Display for RelayChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayChild::Sessions => f.write_str("sessions"),
            RelayChild::Sink(name) => write!(f, "sink:{name}"),
        }
    }
}

/// Messages of the root.
pub enum RootMsg {
    /// The slot holding the session supervisor in service.
    Supervisor(RpcReplyPort<SupervisorSlot>),
    /// How often each child was restarted after a failure (counted once the new one runs).
    Restarts(RpcReplyPort<HashMap<RelayChild, u32>>),
    /// Spawn a child again (delayed restart).
    Respawn(RelayChild),
    /// Make a child fail (supervision tests).
    #[doc(hidden)]
    Crash(RelayChild),
}

/// Arguments of the root.
pub struct RootArgs {
    /// Every sink: its shared handle (queue, metrics) and how to build it.
    pub(crate) sinks: Vec<(Arc<SinkHandle>, SinkFactory)>,
    /// The claim fault hook, in tests.
    pub(crate) fail_claim: Option<ClaimHook>,
    /// The relay's lifecycle (to log restarts during a drain differently).
    pub(crate) lifecycle: Lifecycle,
}

/// Root state.
pub struct RootState {
    sinks: HashMap<String, (Arc<SinkHandle>, SinkFactory)>,
    /// Sink names in configuration order (the shutdown order).
    sink_order: Vec<String>,
    fail_claim: Option<ClaimHook>,
    lifecycle: Lifecycle,
    supervisor: SupervisorSlot,
    sink_actors: HashMap<String, ActorRef<SinkMsg>>,
    by_id: HashMap<ActorId, RelayChild>,
    /// When each child was last started.
    started: HashMap<RelayChild, Instant>,
    restarts: HashMap<RelayChild, u32>,
}

/// The relay root actor.
pub struct RelayRoot;

impl RootState {
    async fn respawn_sessions(&mut self, me: &ActorRef<RootMsg>) -> Result<(), ActorProcessingErr> {
        let r = spawn_sessions(self.fail_claim.clone(), me).await?;
        self.by_id.insert(r.get_id(), RelayChild::Sessions);
        self.started.insert(RelayChild::Sessions, Instant::now());
        self.supervisor.set(r);
        Ok(())
    }

    async fn respawn(&mut self, child: RelayChild, me: &ActorRef<RootMsg>) {
        let res = match &child {
            // Its session actors died with it (ractor kills a failed actor's children); each
            // one's state drop closed its connection with INTERNAL and accounted for it. A new,
            // empty registry matches: no session is live.
            RelayChild::Sessions => self.respawn_sessions(me).await,
            // The queue and its batches live in the handle: the new actor's worker carries on
            // from where the old one stopped, as after a worker restart.
            RelayChild::Sink(name) => self.spawn_sink(name, me).await,
        };
        match res {
            Ok(()) => *self.restarts.entry(child).or_default() += 1,
            Err(e) => {
                tracing::error!(%child, error = %e, "could not restart a relay child; retrying");
                me.send_after(RESTART_BACKOFF, move || RootMsg::Respawn(child));
            }
        }
    }

    async fn spawn_sink(
        &mut self,
        name: &str,
        me: &ActorRef<RootMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let Some((handle, factory)) = self.sinks.get(name) else {
            return Ok(());
        };
        let (r, _join) = Actor::spawn_linked(
            None,
            SinkActor,
            SinkArgs {
                handle: handle.clone(),
                factory: factory.clone(),
            },
            me.get_cell(),
        )
        .await?;
        self.by_id
            .insert(r.get_id(), RelayChild::Sink(name.to_string()));
        self.started
            .insert(RelayChild::Sink(name.to_string()), Instant::now());
        self.sink_actors.insert(name.to_string(), r);
        Ok(())
    }
}

async fn spawn_sessions(
    fail_claim: Option<ClaimHook>,
    me: &ActorRef<RootMsg>,
) -> Result<ActorRef<SupervisorMsg>, ractor::SpawnErr> {
    let (r, _join) =
        Actor::spawn_linked(None, SessionSupervisor, fail_claim, me.get_cell()).await?;
    Ok(r)
}

impl Actor for RelayRoot {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let sink_order: Vec<String> = args
            .sinks
            .iter()
            .map(|(h, _)| h.common.name.clone())
            .collect();
        let sessions = spawn_sessions(args.fail_claim.clone(), &myself).await?;
        let mut state = RootState {
            sinks: args
                .sinks
                .into_iter()
                .map(|(h, f)| (h.common.name.clone(), (h, f)))
                .collect(),
            sink_order,
            fail_claim: args.fail_claim,
            lifecycle: args.lifecycle,
            supervisor: SupervisorSlot::new(sessions.clone()),
            sink_actors: HashMap::new(),
            by_id: HashMap::from([(sessions.get_id(), RelayChild::Sessions)]),
            started: HashMap::from([(RelayChild::Sessions, Instant::now())]),
            restarts: HashMap::new(),
        };
        for name in state.sink_order.clone() {
            state.spawn_sink(&name, &myself).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Supervisor(reply) => {
                let _ = reply.send(state.supervisor.clone());
            }
            RootMsg::Restarts(reply) => {
                let _ = reply.send(state.restarts.clone());
            }
            RootMsg::Respawn(child) => state.respawn(child, &myself).await,
            RootMsg::Crash(RelayChild::Sessions) => {
                let _ = state.supervisor.get().cast(SupervisorMsg::Crash);
            }
            RootMsg::Crash(RelayChild::Sink(name)) => {
                if let Some(a) = state.sink_actors.get(&name) {
                    let _ = a.cast(SinkMsg::Crash);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(child) = state.by_id.remove(&cell.get_id()) else {
                    return Ok(());
                };
                tracing::error!(%child, error = %err, draining = state.lifecycle.is_draining(), "relay child failed; restarting it");
                let label = match &child {
                    RelayChild::Sessions => "sessions",
                    RelayChild::Sink(_) => "sink",
                };
                metrics::counter!(m::RELAY_CHILD_FAILURES, "child" => label).increment(1);
                if let RelayChild::Sink(name) = &child {
                    state.sink_actors.remove(name);
                }
                let hot = state
                    .started
                    .get(&child)
                    .is_some_and(|t| t.elapsed() < RESTART_BACKOFF);
                if hot {
                    myself.send_after(RESTART_BACKOFF, move || RootMsg::Respawn(child));
                } else {
                    state.respawn(child, &myself).await;
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                // A child stopped on request (shutdown): forget it.
                if let Some(RelayChild::Sink(name)) = state.by_id.remove(&cell.get_id()) {
                    state.sink_actors.remove(&name);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RootMsg>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // Ordered: sessions first (nothing new reaches the sinks), then the sinks in
        // configuration order (each closes its queue and stops its worker).
        let _ = state
            .supervisor
            .get()
            .stop_and_wait(None, Some(STOP_WAIT))
            .await;
        for name in &state.sink_order {
            if let Some(a) = state.sink_actors.remove(name) {
                let _ = a.stop_and_wait(None, Some(STOP_WAIT)).await;
            }
        }
        Ok(())
    }
}
