//! What sessions share: [`Ingest`] (relay-wide: the core, the sinks, the session registry) and
//! [`SessionCtx`] (one registered session, as its reader and control loop see it). One context
//! replaces the long argument lists those functions had.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Relaxed, Release};
use std::sync::Arc;
use std::time::Duration;

use contrail_control::SessionStats;
use contrail_protocol::{AgentId, FrameCodec};

use super::shared::{Registration, SessionEntry};
use super::supervisor::{ClaimError, SupervisorMsg, SupervisorSlot};
use crate::core::RelayCore;
use crate::fanout::FanOut;
use crate::sink::BatchOrigin;

/// Longest a registration waits for the session supervisor's answer.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// What every session of the relay shares.
pub struct Ingest {
    /// Configuration, counters, admission, lifecycle.
    pub(crate) core: Arc<RelayCore>,
    /// The sinks every batch goes to.
    pub(crate) fanout: FanOut,
    /// The session supervisor: parent of every session actor, keeper of the registry.
    pub(crate) supervisor: SupervisorSlot,
}

impl Ingest {
    /// Registers `entry` as `agent`'s session; returns the session it replaces, if any.
    pub(crate) async fn claim(
        &self,
        agent: &AgentId,
        entry: SessionEntry,
    ) -> Result<Option<SessionEntry>, ClaimError> {
        let agent = agent.clone();
        let timeout = CLAIM_TIMEOUT;
        match self
            .supervisor
            .get()
            .call(
                |reply| SupervisorMsg::Claim {
                    agent,
                    entry,
                    reply,
                },
                Some(timeout),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(old)) => Ok(old),
            Ok(ractor::rpc::CallResult::Timeout) => Err(ClaimError::Timeout(timeout)),
            Ok(ractor::rpc::CallResult::SenderError) => Err(ClaimError::Supervisor(
                "the claim was dropped unanswered".into(),
            )),
            Err(e) => Err(ClaimError::Supervisor(e.to_string())),
        }
    }
}

/// One registered session, as its reader and control loop see it.
pub(crate) struct SessionCtx {
    /// What every session shares.
    pub(crate) ingest: Arc<Ingest>,
    /// The agent's connection.
    pub(crate) conn: quinn::Connection,
    /// Agent id, session id, resume cursor.
    pub(crate) reg: Registration,
    /// Stamped on every batch.
    pub(crate) origin: Arc<BatchOrigin>,
    /// Counters the fleet API shows.
    pub(crate) stats: Arc<SessionStats>,
    /// Reader → control loop.
    pub(crate) signal: ReaderSignal,
    /// Frame codec at `limits.max_frame_bytes`.
    pub(crate) codec: FrameCodec,
}

impl SessionCtx {
    /// The relay core.
    pub(crate) fn core(&self) -> &RelayCore {
        &self.ingest.core
    }
}

/// Reader → control loop signals: "send `Nack RETRY_WITH_BACKOFF` for this seq", and the
/// agent's pace (for ack coalescing).
#[derive(Debug, Default)]
pub(crate) struct ReaderSignal {
    seq: AtomicU64,
    pub(crate) notify: tokio::sync::Notify,
    /// The agent's smoothed interval between telemetry batches, µs (0 until two were seen).
    batch_interval_us: AtomicU64,
}

impl ReaderSignal {
    /// The agent's smoothed interval between telemetry batches, if known.
    pub(crate) fn batch_interval(&self) -> Option<Duration> {
        match self.batch_interval_us.load(Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Records the agent's smoothed interval between batches, µs.
    pub(crate) fn set_batch_interval_us(&self, us: u64) {
        self.batch_interval_us.store(us, Relaxed);
    }

    /// Asks the control loop to nack `seq`.
    pub(crate) fn raise(&self, seq: u64) {
        self.seq.store(seq, Release);
        self.notify.notify_one();
    }

    /// The pending nack, if any (taking it).
    pub(crate) fn take(&self) -> Option<u64> {
        match self.seq.swap(0, AcqRel) {
            0 => None,
            s => Some(s),
        }
    }
}
