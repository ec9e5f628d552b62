//! The session supervisor: parent of every session actor, keeper of the agent → session
//! registry (one live session per agent id), and the place where a failed session is closed
//! with `INTERNAL` without touching the others.
//!
//! Its mailbox carries one `Claim` per registration and one supervision event per session
//! start/stop, so it is bounded by `max_sessions` plus `max_pending_handshakes`.

use std::collections::HashMap;

use contrail_protocol::{AgentId, ErrorCode};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::SessionEntry;
use crate::server::ClaimHook;

/// Messages of the supervisor.
pub enum SupervisorMsg {
    /// A session registered `agent`; reply with the session it replaces, if any.
    Claim {
        /// Agent id.
        agent: AgentId,
        /// The new session.
        entry: SessionEntry,
        /// The replaced session.
        reply: RpcReplyPort<Option<SessionEntry>>,
    },
}

/// Registry state.
#[derive(Default)]
pub struct SupervisorState {
    by_agent: HashMap<AgentId, SessionEntry>,
    agent_of: HashMap<ActorId, AgentId>,
    fail_claim: Option<ClaimHook>,
}

impl SupervisorState {
    fn forget(&mut self, id: ActorId) -> Option<SessionEntry> {
        let agent = self.agent_of.remove(&id)?;
        match self.by_agent.get(&agent) {
            Some((actor, _)) if actor.get_id() == id => self.by_agent.remove(&agent),
            _ => None,
        }
    }
}

/// The session supervisor actor.
pub struct SessionSupervisor;

impl Actor for SessionSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    /// The claim fault hook ([`crate::Hooks::fail_claim`]), in tests.
    type Arguments = Option<ClaimHook>;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        fail_claim: Option<ClaimHook>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            fail_claim,
            ..SupervisorState::default()
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Claim {
                agent,
                entry,
                reply,
            } => {
                if state.fail_claim.as_ref().is_some_and(|f| f(&agent)) {
                    // Injected failure: the claim is dropped unanswered.
                    drop(reply);
                    return Ok(());
                }
                state.agent_of.insert(entry.0.get_id(), agent.clone());
                let old = state.by_agent.insert(agent, entry);
                if let Some((old_actor, _)) = &old {
                    state.agent_of.remove(&old_actor.get_id());
                }
                let _ = reply.send(old);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.forget(cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                // A session actor itself failed: close that session with INTERNAL. Its state
                // drop already cleaned up; other sessions are untouched.
                tracing::error!(error = %err, "session actor failed");
                metrics::counter!("contrail_session_panics_total").increment(1);
                if let Some((_, shared)) = state.forget(cell.get_id()) {
                    shared.close(ErrorCode::Internal, "internal error");
                }
            }
            _ => {}
        }
        Ok(())
    }
}
