//! The sink actor: owns its sink's worker task and restarts it if it dies.
//!
//! Data never rides the actor's (unbounded) mailbox: batches go through the sink's bounded
//! [`BatchQueue`](super::BatchQueue); flushing is a direct call on the shared
//! [`SinkHandle`](super::SinkHandle). The mailbox carries only the worker-exit notice, at most
//! one per worker life.

use std::sync::Arc;

use contrail_control::metric_names as m;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::{AbortHandle, JoinHandle};

use super::worker;
use super::{SinkFactory, SinkHandle};

/// Messages of a sink actor.
pub enum SinkMsg {
    /// The worker task ended (it only does so by panicking).
    WorkerExited {
        /// Whether it panicked.
        panicked: bool,
    },
    /// Fail (supervision tests).
    #[doc(hidden)]
    Crash,
}

/// Arguments of a sink actor.
pub struct SinkArgs {
    /// Shared queue and metrics.
    pub handle: Arc<SinkHandle>,
    /// How to (re)build the sink.
    pub factory: SinkFactory,
}

/// State: the running worker and its monitor; both are aborted when the state is dropped
/// (actor stop or actor panic), so no task outlives its owner.
pub struct SinkState {
    handle: Arc<SinkHandle>,
    factory: SinkFactory,
    worker: Option<AbortHandle>,
    monitor: Option<JoinHandle<()>>,
    restarts: u64,
}

impl SinkState {
    fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.abort();
        }
        if let Some(m) = self.monitor.take() {
            m.abort();
        }
    }
}

impl Drop for SinkState {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

/// The sink actor.
pub struct SinkActor;

fn spawn_worker(state: &mut SinkState, myself: &ActorRef<SinkMsg>) {
    let worker = tokio::spawn(worker::run(state.handle.clone(), state.factory.clone()));
    state.worker = Some(worker.abort_handle());
    let me = myself.clone();
    state.monitor = Some(tokio::spawn(async move {
        let res = worker.await;
        let panicked = res.as_ref().err().is_some_and(|e| e.is_panic());
        if !res.as_ref().err().is_some_and(|e| e.is_cancelled()) {
            let _ = me.cast(SinkMsg::WorkerExited { panicked });
        }
    }));
}

impl Actor for SinkActor {
    type Msg = SinkMsg;
    type State = SinkState;
    type Arguments = SinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SinkMsg>,
        args: SinkArgs,
    ) -> Result<SinkState, ActorProcessingErr> {
        let mut state = SinkState {
            handle: args.handle,
            factory: args.factory,
            worker: None,
            monitor: None,
            restarts: 0,
        };
        spawn_worker(&mut state, &myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SinkMsg>,
        msg: SinkMsg,
        state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SinkMsg::WorkerExited { panicked } => {
                state.restarts += 1;
                metrics::counter!(m::SINK_RESTARTS, "sink" => state.handle.common.name.clone())
                    .increment(1);
                tracing::error!(sink = %state.handle.common.name, panicked, restarts = state.restarts, "sink worker died; restarting it");
                state.stop_worker();
                spawn_worker(state, &myself);
            }
            SinkMsg::Crash => return Err("crash requested (test)".into()),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SinkMsg>,
        state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        state.handle.queue.close();
        state.stop_worker();
        Ok(())
    }
}
