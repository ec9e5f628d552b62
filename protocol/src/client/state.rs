//! The agent's shared state: the unacked window, credits, counters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::sync::{watch, Notify};

use super::{ClientConfig, ClientError, OutFrame, SessionInfo};
use crate::codec::{encode_telemetry, LEN_PREFIX};

/// Counters of one agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Frames handed to `send` (each seq once).
    pub sent: u64,
    /// Highest cumulative ack.
    pub acked: u64,
    /// Nacks received.
    pub nacks: u64,
    /// Sessions registered after the first one.
    pub reconnects: u64,
    /// Frames written again after a reconnect or nack.
    pub resent: u64,
    /// Times a send had to wait for credit.
    pub credit_waits: u64,
    /// Drain notices received.
    pub drains: u64,
}

#[derive(Debug, Clone)]
pub(super) enum Phase {
    Connecting,
    Registered,
    Failed(ClientError),
}

struct State {
    next_seq: u64,
    acked: u64,
    window: u64,
    max_buffered: u64,
    max_frame_bytes: usize,
    unacked: VecDeque<(u64, Bytes)>,
    written: u64,
    max_written: u64,
    arena: BytesMut,
    terminal: Option<ClientError>,
    closed: bool,
    draining: bool,
    paused_until: Option<tokio::time::Instant>,
    session: Option<SessionInfo>,
    ever_registered: bool,
}

pub(super) struct Shared {
    state: Mutex<State>,
    pub(super) work: Notify,
    pub(super) close_notify: Notify,
    acked_tx: watch::Sender<u64>,
    phase_tx: watch::Sender<Phase>,
    conn: Mutex<Option<quinn::Connection>>,
    nacks: AtomicU64,
    reconnects: AtomicU64,
    resent: AtomicU64,
    credit_waits: AtomicU64,
    drains: AtomicU64,
    sent: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Shared {
    pub(super) fn new(config: &ClientConfig) -> Self {
        let first = config.first_seq.max(1);
        Shared {
            state: Mutex::new(State {
                next_seq: first,
                acked: first - 1,
                window: 1,
                max_buffered: config.max_buffered.max(1) as u64,
                max_frame_bytes: crate::codec::DEFAULT_MAX_FRAME_BYTES,
                unacked: VecDeque::new(),
                written: first - 1,
                max_written: first - 1,
                arena: BytesMut::new(),
                terminal: None,
                closed: false,
                draining: false,
                paused_until: None,
                session: None,
                ever_registered: false,
            }),
            work: Notify::new(),
            close_notify: Notify::new(),
            acked_tx: watch::Sender::new(first - 1),
            phase_tx: watch::Sender::new(Phase::Connecting),
            conn: Mutex::new(None),
            nacks: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            credit_waits: AtomicU64::new(0),
            drains: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    pub(super) async fn wait_first_session(&self) -> Result<(), ClientError> {
        let mut rx = self.phase_tx.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Phase::Registered => return Ok(()),
                Phase::Failed(e) => return Err(e.clone()),
                Phase::Connecting => {}
            }
            if rx.changed().await.is_err() {
                return Err(ClientError::Closed);
            }
        }
    }

    pub(super) async fn send_many<'a>(
        &self,
        count: usize,
        mut make: impl FnMut(u64) -> OutFrame<'a>,
    ) -> Result<(u64, usize), ClientError> {
        if count == 0 {
            return Ok((self.last_seq(), 0));
        }
        loop {
            let mut rx = self.acked_tx.subscribe();
            {
                let mut st = lock(&self.state);
                if let Some(e) = &st.terminal {
                    return Err(e.clone());
                }
                if st.closed {
                    return Err(ClientError::Closed);
                }
                let inflight = st.next_seq - 1 - st.acked;
                let cap = st.window.min(st.max_buffered);
                if inflight < cap {
                    let n = (count as u64).min(cap - inflight) as usize;
                    let now = now_unix_ns();
                    for _ in 0..n {
                        let seq = st.next_seq;
                        let f = make(seq);
                        let need = LEN_PREFIX + 64 + f.payload.len() + f.flight_id.len();
                        if st.arena.capacity() - st.arena.len() < need {
                            st.arena.reserve(need.max(64 * 1024));
                        }
                        encode_telemetry(
                            &mut st.arena,
                            seq,
                            now,
                            f.device_time,
                            f.kind,
                            f.flight_id,
                            f.payload,
                            f.content_type,
                        );
                        let len = st.arena.len() - LEN_PREFIX;
                        if len > st.max_frame_bytes {
                            st.arena.clear();
                            return Err(ClientError::FrameTooLarge {
                                len,
                                max: st.max_frame_bytes,
                            });
                        }
                        let bytes = st.arena.split().freeze();
                        st.unacked.push_back((seq, bytes));
                        st.next_seq += 1;
                    }
                    let last = st.next_seq - 1;
                    drop(st);
                    self.sent.fetch_add(n as u64, Ordering::Relaxed);
                    self.work.notify_one();
                    return Ok((last, n));
                }
            }
            self.credit_waits.fetch_add(1, Ordering::Relaxed);
            if rx.changed().await.is_err() {
                return Err(ClientError::Closed);
            }
        }
    }

    pub(super) async fn wait_acked(&self, seq: u64) -> Result<(), ClientError> {
        let mut rx = self.acked_tx.subscribe();
        loop {
            {
                let st = lock(&self.state);
                if st.acked >= seq {
                    return Ok(());
                }
                if let Some(e) = &st.terminal {
                    return Err(e.clone());
                }
                if st.closed {
                    return Err(ClientError::Closed);
                }
            }
            if rx.changed().await.is_err() {
                return Err(ClientError::Closed);
            }
        }
    }

    pub(super) fn acked(&self) -> u64 {
        lock(&self.state).acked
    }

    pub(super) fn last_seq(&self) -> u64 {
        lock(&self.state).next_seq - 1
    }

    pub(super) fn ack_watch(&self) -> watch::Receiver<u64> {
        self.acked_tx.subscribe()
    }

    pub(super) fn session(&self) -> Option<SessionInfo> {
        lock(&self.state).session.clone()
    }

    pub(super) fn stats(&self) -> AgentStats {
        AgentStats {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked(),
            nacks: self.nacks.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            resent: self.resent.load(Ordering::Relaxed),
            credit_waits: self.credit_waits.load(Ordering::Relaxed),
            drains: self.drains.load(Ordering::Relaxed),
        }
    }

    /// The resume claim for the next Register: `None` for a brand-new stream.
    pub(super) fn resume_claim(&self) -> Option<(u64, String)> {
        let st = lock(&self.state);
        if st.ever_registered || st.acked > 0 {
            let prev = st
                .session
                .as_ref()
                .map(|s| s.session_id.clone())
                .unwrap_or_default();
            Some((st.acked, prev))
        } else {
            None
        }
    }

    pub(super) fn on_registered(&self, info: SessionInfo, max_frame_bytes: u32) {
        let resume = info.resume_from_seq;
        {
            let mut st = lock(&self.state);
            if st.ever_registered {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            st.ever_registered = true;
            st.window = u64::from(info.max_inflight.max(1));
            if max_frame_bytes > 0 {
                st.max_frame_bytes = max_frame_bytes as usize;
            }
            if resume > st.acked && resume < st.next_seq {
                st.acked = resume;
                while st.unacked.front().is_some_and(|(s, _)| *s <= resume) {
                    st.unacked.pop_front();
                }
            }
            st.written = st.acked;
            st.draining = false;
            st.paused_until = None;
            st.session = Some(info);
        }
        self.acked_tx.send_replace(self.acked());
        self.phase_tx.send_replace(Phase::Registered);
        self.work.notify_one();
    }

    pub(super) fn on_ack(&self, up_to: u64) {
        let acked = {
            let mut st = lock(&self.state);
            let up_to = up_to.min(st.next_seq - 1);
            if up_to <= st.acked {
                return;
            }
            st.acked = up_to;
            while st.unacked.front().is_some_and(|(s, _)| *s <= up_to) {
                st.unacked.pop_front();
            }
            up_to
        };
        self.acked_tx.send_replace(acked);
    }

    /// The relay discarded frames from `seq` on: write them again after `after`.
    pub(super) fn on_nack_retry(&self, seq: u64, after: Duration) {
        self.nacks.fetch_add(1, Ordering::Relaxed);
        let mut st = lock(&self.state);
        if seq > st.acked && seq <= st.written + 1 {
            st.written = seq - 1;
        }
        st.paused_until = Some(tokio::time::Instant::now() + after);
    }

    pub(super) fn on_nack_permanent(&self) {
        self.nacks.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn on_drain(&self) {
        self.drains.fetch_add(1, Ordering::Relaxed);
        lock(&self.state).draining = true;
    }

    /// Whether everything written on this connection is acked.
    pub(super) fn written_all_acked(&self) -> bool {
        let st = lock(&self.state);
        st.acked >= st.written
    }

    /// Fills `out` with frames not yet written on this connection. Returns the pause deadline
    /// when writing is paused by a nack.
    pub(super) fn next_chunks(
        &self,
        out: &mut Vec<Bytes>,
        max: usize,
    ) -> Option<tokio::time::Instant> {
        let mut st = lock(&self.state);
        if st.draining {
            return None;
        }
        if let Some(until) = st.paused_until {
            if until > tokio::time::Instant::now() {
                return Some(until);
            }
            st.paused_until = None;
        }
        let Some(&(front, _)) = st.unacked.front() else {
            return None;
        };
        if st.written + 1 < front {
            st.written = front - 1;
        }
        let start = (st.written + 1 - front) as usize;
        let end = st.unacked.len().min(start + max);
        for i in start..end {
            out.push(st.unacked[i].1.clone());
        }
        if end > start {
            let last = st.unacked[end - 1].0;
            if st.written < st.max_written {
                let again = st.max_written.min(last) - st.written;
                self.resent.fetch_add(again, Ordering::Relaxed);
            }
            st.written = last;
            st.max_written = st.max_written.max(last);
        }
        None
    }

    pub(super) fn set_conn(&self, conn: Option<quinn::Connection>) {
        *lock(&self.conn) = conn;
    }

    pub(super) fn drop_connection(&self) {
        if let Some(conn) = lock(&self.conn).as_ref() {
            conn.close(quinn::VarInt::from_u32(0), b"dropped by agent");
        }
    }

    pub(super) fn set_terminal(&self, err: ClientError) {
        lock(&self.state).terminal = Some(err.clone());
        self.phase_tx.send_replace(Phase::Failed(err));
        self.acked_tx.send_modify(|_| {});
    }

    pub(super) fn close(&self) {
        lock(&self.state).closed = true;
        self.close_notify.notify_waiters();
        self.close_notify.notify_one();
        self.acked_tx.send_modify(|_| {});
    }

    pub(super) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }
}
