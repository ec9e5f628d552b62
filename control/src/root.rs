//! The control root: spawns its children linked in `pre_start`, restarts a failed child by kind,
//! and runs the ordered shutdown. See `control/README.md` for the tree.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use crate::http::{HttpArgs, HttpMsg, HttpServer};
use crate::lifecycle::Lifecycle;
use crate::metric_names as m;
use crate::routing::publisher::{PublisherArgs, PublisherMsg, RemoveReport, RoutingPublisher};
use crate::watchers::{AccountantArgs, LifecycleActor, LifecycleArgs, TickMsg, UsageAccountant};

/// The children of the control root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildKind {
    /// [`LifecycleActor`].
    Lifecycle,
    /// [`RoutingPublisher`] (only when routing is enabled).
    Routing,
    /// [`UsageAccountant`].
    Accountant,
    /// [`HttpServer`].
    Http,
}

/// What the ordered shutdown did.
#[derive(Debug, Clone, Default)]
pub struct ShutdownReport {
    /// Routing key removal, when routing is enabled.
    pub routing: Option<RemoveReport>,
}

/// Messages of the root.
#[derive(Debug)]
pub enum RootMsg {
    /// Ordered shutdown; replies when every child has stopped.
    Shutdown(RpcReplyPort<ShutdownReport>),
    /// Spawn a child again (delayed restart).
    Respawn(ChildKind),
    /// How often each child has been restarted.
    Restarts(RpcReplyPort<HashMap<ChildKind, u32>>),
    /// Make a child fail (supervision tests).
    #[doc(hidden)]
    Crash(ChildKind),
}

/// Arguments of the root.
#[derive(Clone)]
pub struct RootArgs {
    /// Lifecycle latch (marked stopped during shutdown).
    pub lifecycle: Lifecycle,
    /// Lifecycle actor arguments.
    pub lifecycle_args: LifecycleArgs,
    /// Routing publisher arguments; `None` when routing is disabled.
    pub routing: Option<PublisherArgs>,
    /// Accountant arguments.
    pub accountant: AccountantArgs,
    /// HTTP server arguments.
    pub http: HttpArgs,
    /// Bound on removing routing keys at shutdown.
    pub drain_deadline: Duration,
}

struct Child {
    cell: ActorCell,
    join: JoinHandle<()>,
    started: Instant,
}

/// Root state.
pub struct RootState {
    args: RootArgs,
    children: HashMap<ChildKind, Child>,
    by_id: HashMap<ActorId, ChildKind>,
    restarts: HashMap<ChildKind, u32>,
    stopping: bool,
}

/// A child that fails again within this time of starting is restarted after this delay.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
const STOP_WAIT: Duration = Duration::from_secs(10);

/// The control root actor.
#[derive(Debug, Default)]
pub struct ControlRoot;

impl RootState {
    async fn spawn(
        &mut self,
        kind: ChildKind,
        me: &ActorRef<RootMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let sup = me.get_cell();
        let (cell, join) = match kind {
            ChildKind::Lifecycle => {
                let (r, j) = Actor::spawn_linked(
                    None,
                    LifecycleActor,
                    self.args.lifecycle_args.clone(),
                    sup,
                )
                .await?;
                (r.get_cell(), j)
            }
            ChildKind::Accountant => {
                let (r, j) =
                    Actor::spawn_linked(None, UsageAccountant, self.args.accountant.clone(), sup)
                        .await?;
                (r.get_cell(), j)
            }
            ChildKind::Http => {
                let (r, j) =
                    Actor::spawn_linked(None, HttpServer, self.args.http.clone(), sup).await?;
                (r.get_cell(), j)
            }
            ChildKind::Routing => {
                let Some(args) = self.args.routing.clone() else {
                    return Ok(());
                };
                let (r, j) = Actor::spawn_linked(None, RoutingPublisher, args, sup).await?;
                (r.get_cell(), j)
            }
        };
        self.by_id.insert(cell.get_id(), kind);
        self.children.insert(
            kind,
            Child {
                cell,
                join,
                started: Instant::now(),
            },
        );
        Ok(())
    }

    async fn on_child_exit(&mut self, me: &ActorRef<RootMsg>, id: ActorId, why: String) {
        let Some(kind) = self.by_id.remove(&id) else {
            return;
        };
        let Some(child) = self.children.remove(&kind) else {
            return;
        };
        if self.stopping {
            return;
        }
        *self.restarts.entry(kind).or_default() += 1;
        tracing::warn!(child = ?kind, reason = %why, "control child exited; restarting");
        metrics::counter!(m::CONTROL_RESTARTS, "child" => kind_label(kind)).increment(1);
        if child.started.elapsed() < RESTART_BACKOFF {
            // Dropping the JoinHandle of a finished task is fine; the delayed respawn is owned by
            // the root's mailbox and ignored once stopping.
            drop(me.send_after(RESTART_BACKOFF, move || RootMsg::Respawn(kind)));
        } else {
            self.respawn(me, kind).await;
        }
    }

    async fn respawn(&mut self, me: &ActorRef<RootMsg>, kind: ChildKind) {
        if self.stopping || self.children.contains_key(&kind) {
            return;
        }
        if let Err(e) = self.spawn(kind, me).await {
            tracing::error!(child = ?kind, error = %e, "restarting control child failed; retrying");
            drop(me.send_after(RESTART_BACKOFF, move || RootMsg::Respawn(kind)));
        }
    }

    async fn stop_child(&mut self, kind: ChildKind) {
        let Some(child) = self.children.remove(&kind) else {
            return;
        };
        self.by_id.remove(&child.cell.get_id());
        if child
            .cell
            .stop_and_wait(None, Some(STOP_WAIT))
            .await
            .is_err()
        {
            child.cell.kill();
        }
        let _ = child.join.await;
    }

    async fn shutdown(&mut self) -> ShutdownReport {
        self.stopping = true;
        let mut report = ShutdownReport::default();
        if let Some(child) = self.children.get(&ChildKind::Routing) {
            let routing: ActorRef<PublisherMsg> = child.cell.clone().into();
            let res = routing
                .call(PublisherMsg::RemoveAll, Some(self.args.drain_deadline))
                .await;
            report.routing = Some(match res {
                Ok(ractor::rpc::CallResult::Success(r)) => r,
                _ => RemoveReport {
                    error: Some("routing removal timed out".into()),
                    ..RemoveReport::default()
                },
            });
        }
        for kind in [
            ChildKind::Routing,
            ChildKind::Accountant,
            ChildKind::Lifecycle,
        ] {
            self.stop_child(kind).await;
        }
        self.args.lifecycle.mark_stopped();
        self.stop_child(ChildKind::Http).await;
        report
    }
}

fn kind_label(k: ChildKind) -> &'static str {
    match k {
        ChildKind::Lifecycle => "lifecycle",
        ChildKind::Routing => "routing",
        ChildKind::Accountant => "accountant",
        ChildKind::Http => "http",
    }
}

impl Actor for ControlRoot {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut state = RootState {
            args,
            children: HashMap::new(),
            by_id: HashMap::new(),
            restarts: HashMap::new(),
            stopping: false,
        };
        for kind in [
            ChildKind::Lifecycle,
            ChildKind::Accountant,
            ChildKind::Routing,
            ChildKind::Http,
        ] {
            state.spawn(kind, &myself).await?;
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
            RootMsg::Shutdown(reply) => {
                let report = state.shutdown().await;
                let _ = reply.send(report);
            }
            RootMsg::Respawn(kind) => state.respawn(&myself, kind).await,
            RootMsg::Restarts(reply) => {
                let _ = reply.send(state.restarts.clone());
            }
            RootMsg::Crash(kind) => {
                if let Some(c) = state.children.get(&kind) {
                    let sent = match kind {
                        ChildKind::Routing => c.cell.send_message(PublisherMsg::Fail).is_ok(),
                        ChildKind::Http => c.cell.send_message(HttpMsg::Fail).is_ok(),
                        ChildKind::Lifecycle | ChildKind::Accountant => {
                            c.cell.send_message(TickMsg::Fail).is_ok()
                        }
                    };
                    tracing::debug!(child = ?kind, sent, "injected child failure");
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        evt: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                state
                    .on_child_exit(&myself, cell.get_id(), err.to_string())
                    .await;
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                state
                    .on_child_exit(&myself, cell.get_id(), reason.unwrap_or_default())
                    .await;
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
        if !state.stopping {
            let _ = state.shutdown().await;
        }
        Ok(())
    }
}
