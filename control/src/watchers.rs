//! Two small periodic actors of the control tree.
//!
//! * [`LifecycleActor`] exports the lifecycle latch and readiness as `contrail_ready` and
//!   `contrail_draining` gauges (readiness includes the required health components).
//! * [`UsageAccountant`] exports `contrail_sessions_active` from the fleet and runs the Prometheus
//!   recorder's upkeep.
//!
//! Both keep one self-scheduled timer outstanding (never an interval that could pile up ticks).

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::fleet::Fleet;
use crate::health::Health;
use crate::lifecycle::{readiness, Lifecycle, LifecycleState};
use crate::metric_names as m;

/// Messages of both periodic actors.
#[derive(Debug)]
pub enum TickMsg {
    /// Timer tick.
    Tick,
    /// Fail on purpose (supervision tests).
    #[doc(hidden)]
    Fail,
}

/// Owned timer; aborted when the state is dropped (also on failure, where `post_stop` is skipped).
#[derive(Default)]
pub struct Timer(Option<JoinHandle<Result<(), ractor::MessagingErr<TickMsg>>>>);

impl Timer {
    fn arm(&mut self, me: &ActorRef<TickMsg>, every: Duration) {
        self.0 = Some(me.send_after(every, || TickMsg::Tick));
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// Arguments of [`LifecycleActor`].
#[derive(Clone)]
pub struct LifecycleArgs {
    /// Latch.
    pub lifecycle: Lifecycle,
    /// Components.
    pub health: Health,
    /// Export period.
    pub period: Duration,
}

/// Exports lifecycle gauges.
#[derive(Debug, Default)]
pub struct LifecycleActor;

fn export_lifecycle(a: &LifecycleArgs) {
    let r = readiness(&a.lifecycle, &a.health);
    metrics::gauge!(m::READY).set(if r.ready { 1.0 } else { 0.0 });
    let draining = r.state == LifecycleState::Draining;
    metrics::gauge!(m::DRAINING).set(if draining { 1.0 } else { 0.0 });
}

impl Actor for LifecycleActor {
    type Msg = TickMsg;
    type State = (LifecycleArgs, Timer);
    type Arguments = LifecycleArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TickMsg>,
        args: LifecycleArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(TickMsg::Tick)?;
        Ok((args, Timer::default()))
    }

    async fn handle(
        &self,
        myself: ActorRef<TickMsg>,
        msg: TickMsg,
        (args, timer): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TickMsg::Tick => {
                export_lifecycle(args);
                timer.arm(&myself, args.period);
                Ok(())
            }
            TickMsg::Fail => Err("lifecycle actor failure requested".into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TickMsg>,
        (args, _): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        export_lifecycle(args);
        Ok(())
    }
}

/// Arguments of [`UsageAccountant`].
#[derive(Clone)]
pub struct AccountantArgs {
    /// Fleet to sample.
    pub fleet: Arc<Fleet>,
    /// Recorder handle needing upkeep.
    pub metrics: Option<PrometheusHandle>,
    /// Sampling period.
    pub period: Duration,
}

/// Samples fleet gauges and runs recorder upkeep.
#[derive(Debug, Default)]
pub struct UsageAccountant;

impl Actor for UsageAccountant {
    type Msg = TickMsg;
    type State = (AccountantArgs, Timer);
    type Arguments = AccountantArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TickMsg>,
        args: AccountantArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(TickMsg::Tick)?;
        Ok((args, Timer::default()))
    }

    async fn handle(
        &self,
        myself: ActorRef<TickMsg>,
        msg: TickMsg,
        (args, timer): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TickMsg::Tick => {
                metrics::gauge!(m::SESSIONS_ACTIVE).set(args.fleet.len() as f64);
                if let Some(h) = &args.metrics {
                    h.run_upkeep();
                }
                timer.arm(&myself, args.period);
                Ok(())
            }
            TickMsg::Fail => Err("usage accountant failure requested".into()),
        }
    }
}
