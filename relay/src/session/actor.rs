//! The session actor: owns its IO task (the [`driver`](super::driver)), spawns it in
//! `pre_start`, hears when it ends, and on a panic closes the connection with `INTERNAL` and
//! stops. Cleanup (fleet, routing, resume cursor, session count) runs when the actor's state is
//! dropped, so it happens however the session ends, and never touches other sessions.

use std::sync::Arc;
use std::time::Instant;

use contrail_control::metric_names as m;
use contrail_protocol::ErrorCode;
use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::context::Ingest;
use super::driver;
use super::shared::{SessionMsg, SessionShared};

/// Arguments of a session actor.
pub struct SessionArgs {
    /// What every session shares.
    pub(crate) ingest: Arc<Ingest>,
    /// The connection, its QUIC/TLS handshake under way (the accept loop saw its ALPN).
    pub(crate) connecting: quinn::Connecting,
    /// When the handshake and Register must be done by (`limits.handshake_timeout_ms` from
    /// the connection attempt).
    pub(crate) deadline: tokio::time::Instant,
}

/// A session actor's state.
pub struct SessionState {
    ingest: Arc<Ingest>,
    shared: Arc<SessionShared>,
    driver: Option<JoinHandle<()>>,
}

impl Drop for SessionState {
    fn drop(&mut self) {
        // However the actor ended: make sure the connection is closed, the IO task is gone and
        // the session is accounted for.
        self.shared.close(ErrorCode::Internal, "session ended");
        if let Some(d) = self.driver.take() {
            d.abort();
        }
        if let Some(r) = self.shared.take_registration() {
            self.ingest
                .core
                .session_ended(&r.agent_id, r.session_id, &r.cursor, Instant::now());
        }
    }
}

/// The session actor.
pub struct SessionActor;

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let shared = Arc::new(SessionShared::default());
        let fut = driver::run(
            args.ingest.clone(),
            args.connecting,
            args.deadline,
            shared.clone(),
            myself.clone(),
        );
        // One task: the driver, with its panic caught here so the actor hears how it ended
        // (an aborted task ends without a message; the actor is stopping then anyway).
        let me = myself.clone();
        // Combinators, not an `async move` block: a block would hold `fut` twice (captured,
        // then moved into the awaited future), doubling the task's allocation.
        let task = tokio::spawn(
            std::panic::AssertUnwindSafe(fut)
                .catch_unwind()
                .map(move |res| {
                    let _ = me.cast(SessionMsg::DriverEnded {
                        panicked: res.is_err(),
                    });
                }),
        );
        Ok(SessionState {
            ingest: args.ingest,
            shared,
            driver: Some(task),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::DriverEnded { panicked } => {
                if panicked {
                    let agent = state
                        .shared
                        .registration()
                        .map(|r| r.agent_id.to_string())
                        .unwrap_or_default();
                    tracing::error!(%agent, "session task panicked; closing the session with INTERNAL");
                    metrics::counter!(m::SESSION_PANICS).increment(1);
                    state.ingest.core.count_session_error();
                    state.shared.close(ErrorCode::Internal, "internal error");
                }
                state.driver = None;
                myself.stop(None);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // Stopped from outside (supersede, shutdown): closing the connection makes the driver's
        // IO fail, so it finishes any batch dispatch in progress and returns; wait for that
        // (bounded) before the state drop aborts it.
        state.shared.close(ErrorCode::Normal, "session stopped");
        if let Some(d) = state.driver.as_mut() {
            if !d.is_finished() {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), d).await;
            }
        }
        Ok(())
    }
}

/// Spawns a session actor for `connecting`, linked to the session supervisor.
pub(crate) async fn spawn(
    ingest: Arc<Ingest>,
    connecting: quinn::Connecting,
    deadline: tokio::time::Instant,
) -> Result<(), ractor::SpawnErr> {
    let supervisor = ingest.supervisor.get().get_cell();
    Actor::spawn_linked(
        None,
        SessionActor,
        SessionArgs {
            ingest,
            connecting,
            deadline,
        },
        supervisor,
    )
    .await
    .map(|_| ())
}
