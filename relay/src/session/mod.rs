//! Agent sessions: one ractor actor per QUIC connection, under the [`supervisor`].
//!
//! The actor owns its IO task (the [`driver`]): it spawns it in `pre_start`, hears when it
//! ends, and on a panic closes the connection with `INTERNAL` and stops. Cleanup (fleet,
//! routing, resume cursor, session count) runs when the actor's state is dropped, so it happens
//! however the session ends, and never touches other sessions.

mod commands;
pub mod credit;
pub mod driver;
mod reader;
pub mod supervisor;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use contrail_protocol::{AgentId, ErrorCode, SessionId};
use futures::FutureExt;
use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::cursor::AgentCursor;
use crate::server::RelayCore;

/// What a registered session is, for cleanup and supersede.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Agent id.
    pub agent_id: AgentId,
    /// Session id.
    pub session_id: SessionId,
    /// Resume cursor.
    pub cursor: Arc<AgentCursor>,
    /// The agent named the `commands` capability.
    pub commands: bool,
}

/// State shared between a session actor, its driver task and the supervisor's registry.
#[derive(Debug, Default)]
pub struct SessionShared {
    conn: Mutex<Option<quinn::Connection>>,
    registration: Mutex<Option<Registration>>,
    closed: AtomicBool,
}

impl SessionShared {
    pub(crate) fn set_conn(&self, conn: quinn::Connection) {
        *self.conn.lock() = Some(conn);
    }

    pub(crate) fn conn(&self) -> Option<quinn::Connection> {
        self.conn.lock().clone()
    }

    pub(crate) fn set_registration(&self, r: Registration) {
        *self.registration.lock() = Some(r);
    }

    /// The registration, once registered.
    pub fn registration(&self) -> Option<Registration> {
        self.registration.lock().clone()
    }

    /// Closes the connection with `code` (first close wins).
    pub fn close(&self, code: ErrorCode, reason: &str) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(conn) = self.conn.lock().as_ref() {
            conn.close(
                quinn::VarInt::from_u32(code.close_code()),
                reason.as_bytes(),
            );
        }
    }

    /// Whether a close was issued.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Messages of a session actor.
pub enum SessionMsg {
    /// The driver task finished.
    DriverEnded {
        /// It panicked.
        panicked: bool,
    },
}

/// Arguments of a session actor.
pub struct SessionArgs {
    /// The relay.
    pub core: Arc<RelayCore>,
    /// The connection attempt.
    pub incoming: quinn::Incoming,
}

/// A session actor's state.
pub struct SessionState {
    core: Arc<RelayCore>,
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
        if let Some(r) = self.shared.registration.lock().take() {
            self.core.session_ended(&r, Instant::now());
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
            args.core.clone(),
            args.incoming,
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
            core: args.core,
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
                    metrics::counter!("contrail_session_panics_total").increment(1);
                    state.core.count_session_error();
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

/// Registered sessions by agent id, as the supervisor keeps them.
pub type SessionEntry = (ActorRef<SessionMsg>, Arc<SessionShared>);

/// Spawns a session actor linked to `supervisor`.
pub async fn spawn(
    core: Arc<RelayCore>,
    incoming: quinn::Incoming,
    supervisor: ractor::ActorCell,
) -> Result<(), ractor::SpawnErr> {
    Actor::spawn_linked(
        None,
        SessionActor,
        SessionArgs { core, incoming },
        supervisor,
    )
    .await
    .map(|_| ())
}
