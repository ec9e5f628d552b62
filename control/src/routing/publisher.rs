//! The routing publisher actor: owns the Redis connection and drives [`Schedule`].
//!
//! Every `flush_interval` it takes up to `max_batch` pending agents from the [`RoutingQueue`] and
//! sends them as one pipeline (`SET … EX` for agents whose session is live in the [`Fleet`],
//! compare-and-delete for ended sessions). Every `ttl / 2`, and right after every (re)connect, it
//! refreshes all live sessions with the conditional refresh script in pipelines of
//! `refresh_chunk` commands. Any failure drops the connection, counts
//! `contrail_redis_publish_errors_total`, and reconnects with capped exponential backoff. All the
//! state it needs survives in the fleet and queue, so a restart by the control root loses nothing.

use std::sync::Arc;
use std::time::Instant;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::schedule::{Action, Schedule};
use super::store::{Applied, Op, Store};
use super::{routing_key, routing_value, RoutingConfig, RoutingQueue};
use crate::error::RoutingError;
use crate::fleet::{Fleet, SessionInfo};
use crate::health::HealthFlag;

/// Everything the publisher needs; shared with the rest of the tree.
#[derive(Debug, Clone)]
pub struct PublisherArgs {
    /// Settings.
    pub config: RoutingConfig,
    /// Live sessions (the source of truth for what to publish).
    pub fleet: Arc<Fleet>,
    /// Pending changes.
    pub queue: Arc<RoutingQueue>,
    /// `redis` health component (not required for readiness).
    pub health: HealthFlag,
}

/// What the shutdown removal did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// Compare-and-delete commands sent.
    pub attempted: usize,
    /// Keys actually deleted (they still named our session).
    pub deleted: usize,
    /// Why removal failed, if it did.
    pub error: Option<String>,
}

/// Messages of the routing publisher.
#[derive(Debug)]
pub enum PublisherMsg {
    /// Timer tick (one outstanding at a time).
    Tick,
    /// Delete the keys of every live session and stop publishing (shutdown).
    RemoveAll(RpcReplyPort<RemoveReport>),
    /// Fail on purpose (supervision tests).
    #[doc(hidden)]
    Fail,
}

/// The actor.
#[derive(Debug, Default)]
pub struct RoutingPublisher;

/// Its state.
pub struct PublisherState {
    args: PublisherArgs,
    schedule: Schedule,
    store: Option<Store>,
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<PublisherMsg>>>>,
    stopped: bool,
    /// Whether a failure to connect was already reported at WARN (the first one is; the
    /// retries after it are at debug until a connection is made and lost again).
    warned: bool,
}

impl Drop for PublisherState {
    fn drop(&mut self) {
        // Failure path (post_stop is not run): do not leave the timer behind.
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }
}

fn record_applied(a: Applied) {
    metrics::counter!("contrail_redis_commands_total").increment(a.commands as u64);
}

impl PublisherState {
    fn fail(&mut self, e: &RoutingError) {
        let delay = self.schedule.on_failure(Instant::now());
        if self.store.take().is_some() {
            self.warned = true;
            tracing::warn!(error = %e, "redis routing connection lost; retrying in {delay:?}");
        } else if !self.warned {
            self.warned = true;
            tracing::warn!(
                error = %e,
                "redis routing unreachable; routing keys are not published until it answers \
                 (retrying in {delay:?})"
            );
        } else {
            tracing::debug!(error = %e, "redis routing connect failed; retrying in {delay:?}");
        }
        metrics::counter!("contrail_redis_publish_errors_total").increment(1);
        metrics::gauge!("contrail_redis_connected").set(0.0);
        self.args.health.set_healthy(false);
    }

    async fn connect(&mut self) -> Result<(), RoutingError> {
        let store = Store::connect(&self.args.config).await?;
        self.store = Some(store);
        self.schedule.on_connected();
        self.warned = false;
        metrics::gauge!("contrail_redis_connected").set(1.0);
        self.args.health.set_healthy(true);
        tracing::info!("redis routing connected");
        Ok(())
    }

    async fn flush_pending(&mut self) -> Result<(), RoutingError> {
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let relay = self.args.config.relay_id.clone();
        loop {
            let batch = self.args.queue.take(self.args.config.max_batch.max(1));
            if batch.is_empty() {
                return Ok(());
            }
            let mut ops = Vec::with_capacity(batch.len());
            for (agent, downs) in &batch {
                let key = routing_key(agent);
                match self.args.fleet.get(agent) {
                    Some(s) => ops.push(Op::Set {
                        key,
                        value: routing_value(&relay, &s.session_id),
                    }),
                    None => ops.extend(downs.iter().map(|d| Op::Delete {
                        key: key.clone(),
                        value: routing_value(&relay, d),
                    })),
                }
            }
            match store.apply(&ops).await {
                Ok(a) => record_applied(a),
                Err(e) => {
                    self.args.queue.restore_downs(batch);
                    return Err(e);
                }
            }
        }
    }

    async fn refresh_all(&mut self, now: Instant) -> Result<(), RoutingError> {
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let sessions = self.args.fleet.all();
        let cfg = &self.args.config;
        refresh_sessions(store, &cfg.relay_id, &sessions, cfg.refresh_chunk, false).await?;
        self.schedule.on_refreshed(now);
        Ok(())
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        if self.schedule.poll(now) == Action::Connect {
            if let Err(e) = self.connect().await {
                self.fail(&e);
                return;
            }
        }
        if let Action::Work { refresh } = self.schedule.poll(now) {
            let mut res = self.flush_pending().await;
            if res.is_ok() && refresh {
                res = self.refresh_all(now).await;
            }
            if let Err(e) = res {
                self.fail(&e);
            }
        }
    }

    async fn remove_all(&mut self) -> RemoveReport {
        self.stopped = true;
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        if self.store.is_none() {
            if let Err(e) = self.connect().await {
                return RemoveReport {
                    error: Some(e.to_string()),
                    ..RemoveReport::default()
                };
            }
        }
        let relay = self.args.config.relay_id.clone();
        let mut ops: Vec<Op> = self
            .args
            .fleet
            .all()
            .iter()
            .map(|s| Op::Delete {
                key: routing_key(&s.agent_id),
                value: routing_value(&relay, &s.session_id),
            })
            .collect();
        for (agent, downs) in self.args.queue.take(usize::MAX) {
            if self.args.fleet.get(&agent).is_none() {
                let key = routing_key(&agent);
                ops.extend(downs.iter().map(|d| Op::Delete {
                    key: key.clone(),
                    value: routing_value(&relay, d),
                }));
            }
        }
        let mut report = RemoveReport {
            attempted: ops.len(),
            ..RemoveReport::default()
        };
        let Some(store) = self.store.as_mut() else {
            return report;
        };
        for chunk in ops.chunks(self.args.config.refresh_chunk.max(1)) {
            match store.apply(chunk).await {
                Ok(a) => {
                    record_applied(a);
                    report.deleted += a.hits;
                }
                Err(e) => {
                    report.error = Some(e.to_string());
                    metrics::counter!("contrail_redis_publish_errors_total").increment(1);
                    break;
                }
            }
        }
        report
    }
}

/// Counts of one refresh pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshStats {
    /// Pipelines (round trips) issued.
    pub pipelines: usize,
    /// Commands sent.
    pub commands: usize,
    /// Keys written (not held by another session).
    pub written: usize,
}

/// Writes every session in pipelines of `chunk` commands: unconditional `SET … EX` when `set`,
/// else the conditional refresh script.
async fn refresh_sessions(
    store: &mut Store,
    relay: &str,
    sessions: &[Arc<SessionInfo>],
    chunk: usize,
    set: bool,
) -> Result<RefreshStats, RoutingError> {
    let mut stats = RefreshStats::default();
    for part in sessions.chunks(chunk.max(1)) {
        let ops: Vec<Op> = part
            .iter()
            .map(|s| {
                let (key, value) = (
                    routing_key(&s.agent_id),
                    routing_value(relay, &s.session_id),
                );
                if set {
                    Op::Set { key, value }
                } else {
                    Op::Refresh { key, value }
                }
            })
            .collect();
        let a = store.apply(&ops).await?;
        record_applied(a);
        stats.pipelines += 1;
        stats.commands += a.commands;
        stats.written += if set { a.commands } else { a.hits };
    }
    Ok(stats)
}

/// One publication pass over every live session of `fleet` on a fresh connection, exactly as the
/// publisher does it (`set = false`: the periodic refresh; `true`: plain `SET … EX`). Used by the
/// `refresh_bench` example.
pub async fn refresh_fleet_once(
    config: &RoutingConfig,
    fleet: &Fleet,
    set: bool,
) -> Result<RefreshStats, RoutingError> {
    let mut store = Store::connect(config).await?;
    let sessions = fleet.all();
    refresh_sessions(
        &mut store,
        &config.relay_id,
        &sessions,
        config.refresh_chunk,
        set,
    )
    .await
}

impl Actor for RoutingPublisher {
    type Msg = PublisherMsg;
    type State = PublisherState;
    type Arguments = PublisherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PublisherArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let c = &args.config;
        let schedule = Schedule::new(Instant::now(), c.ttl, c.backoff_initial, c.backoff_max);
        myself.send_message(PublisherMsg::Tick)?;
        Ok(PublisherState {
            args,
            schedule,
            store: None,
            timer: None,
            stopped: false,
            warned: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: PublisherMsg,
        state: &mut PublisherState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PublisherMsg::Tick => {
                if state.stopped {
                    return Ok(());
                }
                state.tick().await;
                let every = state.args.config.flush_interval;
                state.timer = Some(myself.send_after(every, || PublisherMsg::Tick));
            }
            PublisherMsg::RemoveAll(reply) => {
                let report = state.remove_all().await;
                let _ = reply.send(report);
            }
            PublisherMsg::Fail => return Err("routing publisher failure requested".into()),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut PublisherState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            t.abort();
        }
        state.args.health.set_healthy(false);
        metrics::gauge!("contrail_redis_connected").set(0.0);
        Ok(())
    }
}
