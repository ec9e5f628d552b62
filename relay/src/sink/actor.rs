//! The sink actor: owns its sink's worker task and restarts it if it dies. The new worker
//! first writes the batches the dead one held (they live in the [`SinkHandle`]). A worker that
//! keeps dying is restarted with a growing delay (50 ms doubling to 5 s; the first restart
//! after a quiet minute is immediate), so a batch that crashes the sink every time costs a
//! retry every few seconds, not a busy loop.
//!
//! Data never rides the actor's (unbounded) mailbox: batches go through the sink's bounded
//! [`BatchQueue`](super::BatchQueue); flushing is a direct call on the shared
//! [`SinkHandle`](super::SinkHandle). The mailbox carries only the worker-exit notice, at most
//! one per worker life.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// When the last restart happened, and how many came in a row (each within a minute of
    /// the one before).
    last_restart: Option<Instant>,
    streak: u32,
}

/// No restart in this long resets the backoff.
const QUIET: Duration = Duration::from_secs(60);

/// Delay before the `streak`-th restart in a row (0: the first).
fn restart_delay(streak: u32) -> Duration {
    match streak {
        0 => Duration::ZERO,
        n => (Duration::from_millis(50) * 2u32.saturating_pow((n - 1).min(7)))
            .min(Duration::from_secs(5)),
    }
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

fn spawn_worker(state: &mut SinkState, myself: &ActorRef<SinkMsg>, delay: Duration) {
    let worker = tokio::spawn(worker::run(
        state.handle.clone(),
        state.factory.clone(),
        delay,
    ));
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
            last_restart: None,
            streak: 0,
        };
        spawn_worker(&mut state, &myself, Duration::ZERO);
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
                let now = Instant::now();
                state.streak = match state.last_restart {
                    Some(t) if now.saturating_duration_since(t) < QUIET => state.streak + 1,
                    _ => 0,
                };
                state.last_restart = Some(now);
                let delay = restart_delay(state.streak);
                metrics::counter!("contrail_sink_restarts_total", "sink" => state.handle.common.name.clone())
                    .increment(1);
                tracing::error!(sink = %state.handle.common.name, panicked, restarts = state.restarts, ?delay, "sink worker died; restarting it (it first writes what it held)");
                state.stop_worker();
                spawn_worker(state, &myself, delay);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_in_a_row_back_off_up_to_five_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(restart_delay(0), Duration::ZERO);
        assert_eq!(restart_delay(1), ms(50));
        assert_eq!(restart_delay(2), ms(100));
        assert_eq!(restart_delay(7), ms(3_200));
        assert_eq!(restart_delay(8), ms(5_000));
        assert_eq!(restart_delay(1_000), ms(5_000));
    }
}
