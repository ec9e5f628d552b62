//! The state every session shares, below everything else in the import graph: configuration,
//! counters, resume cursors, admission (auth, quotas, `max_sessions`), the lifecycle latch and
//! the control-plane handles. It imports no session, fan-out or sink module; those build on it.
//!
//! Fields are `pub(crate)`: embedders and tests see the accessors only (the configuration holds
//! secrets).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use contrail_control::metric_names as m;
use contrail_control::{ControlEvents, Lifecycle, LifecycleState};
use contrail_protocol::{AgentId, ErrorCode, SessionId};
use metrics::Counter;
use rustls_pki_types::CertificateDer;

use crate::config::{Config, Limits};
use crate::cursor::{AgentCursor, ResumeTable};
use crate::latency::Latency;

/// A per-batch hook (see [`Hooks::on_batch`]).
pub type BatchHook = Arc<dyn Fn(&AgentId) + Send + Sync>;

/// A claim hook (see [`Hooks::fail_claim`]).
pub type ClaimHook = Arc<dyn Fn(&AgentId) -> bool + Send + Sync>;

/// Test and embedding hooks (never reachable from the network or the config file).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called by the reader for every batch before it is checked; a panic here simulates a bug
    /// in one session.
    pub on_batch: Option<BatchHook>,
    /// Asked by the session supervisor for every claim; `true` makes it drop that claim
    /// unanswered, as a failed supervisor would (tests of the refusal that follows).
    pub fail_claim: Option<ClaimHook>,
}

/// Why a session ended (or was refused), with the close code it gets.
#[derive(Debug)]
pub(crate) struct End {
    pub code: ErrorCode,
    pub reason: String,
}

impl End {
    pub(crate) fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        End {
            code,
            reason: reason.into(),
        }
    }
}

/// What every session shares.
pub struct RelayCore {
    /// Configuration (secrets included: never exported).
    pub(crate) config: Config,
    /// This relay's id.
    pub(crate) relay_id: String,
    /// Resume cursors.
    pub(crate) resume: ResumeTable,
    /// Session up/down events to control.
    pub(crate) events: ControlEvents,
    /// Latency histograms.
    pub(crate) latency: Latency,
    /// Lifecycle latch.
    pub(crate) lifecycle: Lifecycle,
    /// Hooks.
    pub(crate) hooks: Hooks,
    /// Command downlink: which local session holds which drone.
    pub(crate) downlink: Option<Arc<crate::downlink::CommandRouter>>,
    /// Placement across the fleet (redirects, drain targets).
    pub(crate) placement: crate::placement::RelayPlacement,
    pub(crate) auth: crate::auth::Authenticator,
    /// Successful registrations per agent id (reconnect storms).
    pub(crate) reconnects: crate::quota::Damper<AgentId>,
    /// Failed authentications per source address.
    pub(crate) auth_failures: crate::quota::Damper<std::net::IpAddr>,
    pub(crate) sessions: AtomicUsize,
    pub(crate) pending: AtomicUsize,
    pub(crate) session_errors: AtomicU64,
    pub(crate) frames_received: Counter,
    pub(crate) bytes_received: Counter,
    pub(crate) frames_duplicate: Counter,
    pub(crate) frames_discarded: Counter,
    pub(crate) acks_sent: AckCounters,
    pub(crate) credits_exhausted: Counter,
    pub(crate) sessions_opened: Counter,
}

/// `contrail_acks_sent_total{trigger}`: why each ack went out.
pub(crate) struct AckCounters {
    /// A quarter of the agent's credit window was waiting (`max_inflight / 4`).
    pub(crate) window: Counter,
    /// The coalescing delay (`limits.ack_delay_ms`) ran out (or is 0).
    pub(crate) delay: Counter,
    /// The agent's batches come further apart than the delay: acked without waiting.
    pub(crate) pace: Counter,
    /// The relay is draining: everything is acked at once.
    pub(crate) drain: Counter,
}

impl AckCounters {
    pub(crate) fn new() -> Self {
        let c = |t: &'static str| metrics::counter!(m::ACKS_SENT, "trigger" => t);
        AckCounters {
            window: c("window"),
            delay: c("delay"),
            pace: c("pace"),
            drain: c("drain"),
        }
    }
}

impl RelayCore {
    /// A core over `config` and the control plane's handles.
    pub(crate) fn new(
        config: Config,
        relay_id: String,
        auth: crate::auth::Authenticator,
        control: &contrail_control::Control,
        latency: Latency,
        hooks: Hooks,
        placement: crate::placement::RelayPlacement,
    ) -> Self {
        let events = control.events();
        let lifecycle = control.lifecycle().clone();
        let limits = &config.limits;
        RelayCore {
            relay_id,
            resume: ResumeTable::new(
                limits.resume_max_agents,
                std::time::Duration::from_secs(limits.resume_ttl_secs),
            ),
            events,
            latency,
            lifecycle,
            hooks,
            downlink: None,
            placement,
            auth,
            reconnects: crate::quota::Damper::new(
                config.quotas.registrations_per_minute,
                config.quotas.max_tracked_agents,
            ),
            auth_failures: crate::quota::Damper::new(
                config.quotas.auth_failures_per_minute,
                config.quotas.max_tracked_sources,
            ),
            sessions: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            session_errors: AtomicU64::new(0),
            frames_received: metrics::counter!(m::FRAMES_RECEIVED),
            bytes_received: metrics::counter!(m::BYTES_RECEIVED),
            frames_duplicate: metrics::counter!(m::FRAMES_DUPLICATE),
            frames_discarded: metrics::counter!(m::FRAMES_DISCARDED),
            acks_sent: AckCounters::new(),
            credits_exhausted: metrics::counter!(m::CREDITS_EXHAUSTED),
            sessions_opened: metrics::counter!(m::SESSIONS_OPENED),
            config,
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        matches!(
            self.lifecycle.state(),
            LifecycleState::Draining | LifecycleState::Stopped
        )
    }

    /// Takes a session slot; false when the relay is at `max_sessions`.
    pub(crate) fn try_reserve_session(&self) -> bool {
        let max = self.config.limits.max_sessions;
        if self.sessions.fetch_add(1, Ordering::AcqRel) >= max {
            self.sessions.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(m::LIMIT_HITS, "limit" => "max_sessions").increment(1);
            return false;
        }
        self.sessions_opened.increment(1);
        true
    }

    /// A registered session ended: its slot, its fleet entry and its resume cursor go.
    pub(crate) fn session_ended(
        &self,
        agent: &AgentId,
        session: SessionId,
        cursor: &Arc<AgentCursor>,
        now: Instant,
    ) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
        self.events.session_down(agent.as_str(), &session.to_hex());
        self.resume.detach(agent, cursor, now);
    }

    /// Takes a `max_pending_handshakes` slot; false (counted) when all are taken.
    pub(crate) fn try_begin_handshake(&self) -> bool {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.config.limits.max_pending_handshakes
        {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(m::LIMIT_HITS, "limit" => "max_pending_handshakes").increment(1);
            return false;
        }
        true
    }

    pub(crate) fn handshake_done(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn count_rejection(&self, code: ErrorCode) {
        metrics::counter!(m::SESSIONS_REJECTED, "code" => code.label()).increment(1);
    }

    /// Admits a registration, or says why not: a source address with too many failed
    /// authentications in the last minute is refused before its credentials are checked; then
    /// token/JWT/mTLS (a failure counts against the source address, never against the agent id
    /// it named); then reconnect-storm damping of the authenticated agent id.
    pub(crate) fn admit(
        &self,
        agent: &AgentId,
        token: &str,
        conn: &quinn::Connection,
    ) -> Result<(), End> {
        let now = Instant::now();
        let source = conn.remote_address().ip().to_canonical();
        if self.auth_failures.over(&source, now) {
            metrics::counter!(m::LIMIT_HITS, "limit" => "auth_failures_per_minute").increment(1);
            return Err(End::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "too many failed authentications from {source} in the last minute (limit {}); retry later",
                    self.auth_failures.limit()
                ),
            ));
        }
        let chain = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok());
        if let Err(code) = self
            .auth
            .check(agent, token, chain.as_deref().map(Vec::as_slice))
        {
            self.auth_failures.allow(&source, now);
            return Err(End::new(code, "authentication failed"));
        }
        if !self.reconnects.allow(agent, now) {
            metrics::counter!(m::LIMIT_HITS, "limit" => "registrations_per_minute").increment(1);
            return Err(End::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "more than {} registrations of agent {agent} in the last minute (reconnect storm); retry later",
                    self.reconnects.limit()
                ),
            ));
        }
        Ok(())
    }

    /// The agent authentication mode in force.
    pub fn auth_mode(&self) -> crate::auth::AuthMode {
        self.auth.mode()
    }

    /// Gives back a slot taken by [`Self::try_reserve_session`] for a session that did not
    /// register after all.
    pub(crate) fn release_session(&self) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn count_session_error(&self) {
        self.session_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Sessions that ended with an error code (not clean closes or supersedes).
    pub fn session_errors(&self) -> u64 {
        self.session_errors.load(Ordering::Relaxed)
    }

    /// Registered sessions right now.
    pub fn session_count(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    /// The limits in force (no secrets in them).
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// The lifecycle latch (drain starts here).
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// This relay's id.
    pub fn relay_id(&self) -> &str {
        &self.relay_id
    }
}
