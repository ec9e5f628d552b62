//! What a session actor, its driver task and the supervisor's registry share about one session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use contrail_protocol::{AgentId, ErrorCode, SessionId};
use parking_lot::Mutex;
use ractor::ActorRef;

use crate::cursor::AgentCursor;

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

    /// Takes the registration (the actor's state drop does, to account for the session once).
    pub(crate) fn take_registration(&self) -> Option<Registration> {
        self.registration.lock().take()
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
}

/// Messages of a session actor.
pub enum SessionMsg {
    /// The driver task finished.
    DriverEnded {
        /// It panicked.
        panicked: bool,
    },
}

/// Registered sessions by agent id, as the supervisor keeps them.
pub type SessionEntry = (ActorRef<SessionMsg>, Arc<SessionShared>);
