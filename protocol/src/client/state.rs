//! The agent's shared state: the unacked window, credits, counters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::sync::{watch, Notify};

use super::spool::{Recovered, Spool, WhenFull};
use super::{ClientConfig, ClientError, OutFrame, SessionInfo, SpoolError};
use crate::codec::{encode_telemetry, LEN_PREFIX};
use crate::proto::DroneIdentity;

/// Largest chunk the writer hands to quinn at once (see `Shared::next_chunks`).
const COALESCE_BYTES: usize = 64 * 1024;

/// Appends `frames` to `out` as runs of up to [`COALESCE_BYTES`], copied outside the state lock.
///
/// Frames are stored one `Bytes` each (acks and resends are per frame), but quinn looks data up
/// by scanning its send buffer's segments from the oldest unacked one, so thousands of 300-byte
/// segments in flight cost O(n) per packet (the loadgen profile showed 14% in
/// `write_stream_frames`). One copy of each frame here buys a segment per ~200 frames there.
fn coalesce(frames: &mut Vec<Bytes>, out: &mut Vec<Bytes>) {
    if frames.len() == 1 {
        out.append(frames);
        return;
    }
    let mut left: usize = frames.iter().map(Bytes::len).sum();
    let mut run = BytesMut::new();
    for frame in frames.drain(..) {
        if !run.is_empty() && run.len() + frame.len() > COALESCE_BYTES {
            out.push(run.split().freeze());
        }
        if run.capacity() - run.len() < frame.len() {
            run.reserve(left.min(COALESCE_BYTES).max(frame.len()));
        }
        left -= frame.len();
        run.extend_from_slice(&frame);
    }
    if !run.is_empty() {
        out.push(run.freeze());
    }
}

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
    /// Heartbeat pings sent (none while telemetry flows: frames are the heartbeat then).
    pub pings: u64,
    /// Frames dropped unacked because the spool was full (`WhenFull::DropOldest`).
    pub dropped: u64,
    /// Frames in the spool not yet acked (0 without a spool).
    pub spool_frames: u64,
    /// Bytes of the spool's segment files (0 without a spool).
    pub spool_bytes: u64,
}

#[derive(Debug, Clone)]
pub(super) enum Phase {
    Connecting,
    Registered,
    Failed(ClientError),
}

struct State {
    next_seq: u64,
    /// Highest seq acked by the relay, or dropped by the spool (everything up to it is settled).
    acked: u64,
    /// Highest seq the writer may put on the wire: appended to the spool (without a spool,
    /// every frame handed out).
    spooled: u64,
    /// The writer stopped at the credit window with frames left (an ack must wake it).
    window_blocked: bool,
    /// Frames were dropped while a connection was up: write nothing more on it; the next
    /// session resumes after them.
    need_reconnect: bool,
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
    /// The stream continues one from before a process restart (spool state was found).
    resumed_from_spool: bool,
    /// The identity sent at Register, and a version bumped by every update.
    identity: Option<DroneIdentity>,
    identity_version: u64,
}

/// The spool, behind a lock of its own: appends and syncs never hold the state lock.
pub(super) struct SpoolCell {
    pub(super) spool: tokio::sync::Mutex<Spool>,
    when_full: WhenFull,
    /// Copies of the spool's depth for `stats` (which never waits on the spool's lock).
    frames: AtomicU64,
    bytes: AtomicU64,
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
    pub(super) pings: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    pub(super) spool: Option<SpoolCell>,
    /// Woken when the identity changes (the session's control writer sends it).
    pub(super) identity_notify: Notify,
    link_tx: watch::Sender<bool>,
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
    pub(super) fn new(config: &ClientConfig, spool: Option<(Spool, Recovered)>) -> Self {
        let mut first = config.first_seq.max(1);
        let mut acked = first - 1;
        let mut unacked = VecDeque::new();
        let when_full = config
            .spool
            .as_ref()
            .map_or(WhenFull::Block, |s| s.when_full);
        let (spool, resumed_from_spool) = match spool {
            Some((spool, rec)) if rec.existed => {
                // Continue the stream the spool holds: resume after its ack mark, resend the rest.
                acked = rec.acked;
                first = rec.frames.last().map_or(rec.acked, |(s, _)| *s) + 1;
                unacked.extend(rec.frames);
                (Some(spool), true)
            }
            Some((spool, _)) => (Some(spool), false),
            None => (None, false),
        };
        let spool = spool.map(|sp| SpoolCell {
            frames: AtomicU64::new(sp.frames()),
            bytes: AtomicU64::new(sp.bytes()),
            spool: tokio::sync::Mutex::new(sp),
            when_full,
        });
        Shared {
            state: Mutex::new(State {
                next_seq: first,
                acked,
                spooled: first - 1,
                window_blocked: false,
                need_reconnect: false,
                window: 1,
                max_buffered: config.max_buffered.max(1) as u64,
                max_frame_bytes: crate::codec::DEFAULT_MAX_FRAME_BYTES,
                unacked,
                written: acked,
                max_written: first - 1,
                arena: BytesMut::new(),
                terminal: None,
                closed: false,
                draining: false,
                paused_until: None,
                session: None,
                ever_registered: false,
                resumed_from_spool,
                identity: config.identity.clone(),
                identity_version: 0,
            }),
            work: Notify::new(),
            close_notify: Notify::new(),
            acked_tx: watch::Sender::new(acked),
            phase_tx: watch::Sender::new(Phase::Connecting),
            conn: Mutex::new(None),
            nacks: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            credit_waits: AtomicU64::new(0),
            drains: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            spool,
            identity_notify: Notify::new(),
            link_tx: watch::Sender::new(false),
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
        make: impl FnMut(u64) -> OutFrame<'a>,
    ) -> Result<(u64, usize), ClientError> {
        if count == 0 {
            return Ok((self.last_seq(), 0));
        }
        match &self.spool {
            None => self.send_in_memory(count, make).await,
            Some(cell) => self.send_spooled(cell, count, make).await,
        }
    }

    /// Checks that the agent can still send.
    fn check_open(st: &State) -> Result<(), ClientError> {
        if let Some(e) = &st.terminal {
            return Err(e.clone());
        }
        if st.closed {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// Encodes the frame for `seq` at the end of the arena; returns its length with prefix.
    fn encode(st: &mut State, seq: u64, f: &OutFrame<'_>, now: u64) -> Result<usize, ClientError> {
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
        Ok(st.arena.len())
    }

    /// Without a spool: at most `min(window, max_buffered)` frames unacked; waits for credit.
    async fn send_in_memory<'a>(
        &self,
        count: usize,
        mut make: impl FnMut(u64) -> OutFrame<'a>,
    ) -> Result<(u64, usize), ClientError> {
        loop {
            let mut rx = self.acked_tx.subscribe();
            {
                let mut st = lock(&self.state);
                Self::check_open(&st)?;
                let inflight = st.next_seq - 1 - st.acked;
                let cap = st.window.min(st.max_buffered);
                if inflight < cap {
                    let want = (count as u64).min(cap - inflight) as usize;
                    let now = now_unix_ns();
                    for _ in 0..want {
                        let seq = st.next_seq;
                        Self::encode(&mut st, seq, &make(seq), now)?;
                        let bytes = st.arena.split().freeze();
                        st.unacked.push_back((seq, bytes));
                        st.next_seq += 1;
                    }
                    let last = st.next_seq - 1;
                    st.spooled = last;
                    drop(st);
                    self.sent.fetch_add(want as u64, Ordering::Relaxed);
                    self.work.notify_one();
                    return Ok((last, want));
                }
            }
            self.credit_waits.fetch_add(1, Ordering::Relaxed);
            if rx.changed().await.is_err() {
                return Err(ClientError::Closed);
            }
        }
    }

    /// With a spool: never waits for the credit window, only for spool room (`Block`), or
    /// drops the oldest frames to make room (`DropOldest`). The frames are encoded under the
    /// state lock, appended and synced under the spool's lock only, and become writable once
    /// appended.
    async fn send_spooled<'a>(
        &self,
        cell: &SpoolCell,
        count: usize,
        mut make: impl FnMut(u64) -> OutFrame<'a>,
    ) -> Result<(u64, usize), ClientError> {
        let mut batch: Vec<(u64, Bytes)> = Vec::new();
        loop {
            let mut rx = self.acked_tx.subscribe();
            let mut sp = cell.spool.lock().await;
            // Acks free room: persist them before judging it.
            let acked = self.acked();
            if let Err(e) = sp.ack(acked) {
                tracing::warn!(error = %e, seq = acked, "spool: could not persist the ack mark");
            }
            {
                let mut st = lock(&self.state);
                Self::check_open(&st)?;
                let now = now_unix_ns();
                let mut pending = 0u64;
                for _ in 0..count {
                    let seq = st.next_seq;
                    let len = Self::encode(&mut st, seq, &make(seq), now)?;
                    let rec = super::spool::record_len(len);
                    if sp.bytes() + pending + rec > sp.max_bytes() {
                        st.arena.clear();
                        if sp.bytes() == 0 && pending == 0 {
                            return Err(SpoolError::FrameTooLarge {
                                len,
                                max: sp.max_bytes() as u64,
                            }
                            .into());
                        }
                        break;
                    }
                    pending += rec;
                    let bytes = st.arena.split().freeze();
                    st.unacked.push_back((seq, bytes.clone()));
                    batch.push((seq, bytes));
                    st.next_seq += 1;
                }
            }
            if batch.is_empty() {
                // Full.
                match cell.when_full {
                    WhenFull::DropOldest => {
                        let dropped = sp
                            .drop_oldest()
                            .map_err(|e| ClientError::from(SpoolError::DropOldest(Arc::new(e))))?;
                        if let Some(through) = dropped {
                            self.on_dropped(through);
                        }
                        self.publish_spool_depth(cell, &sp);
                        continue;
                    }
                    WhenFull::Block => {
                        drop(sp);
                        self.credit_waits.fetch_add(1, Ordering::Relaxed);
                        if rx.changed().await.is_err() {
                            return Err(ClientError::Closed);
                        }
                        continue;
                    }
                }
            }
            // The disk work, outside the state lock.
            let mut res = Ok(());
            for (seq, data) in &batch {
                res = sp.append(*seq, data);
                if res.is_err() {
                    break;
                }
            }
            let res = res.and_then(|()| sp.flush());
            let last = batch.last().map_or(0, |(s, _)| *s);
            let n = batch.len();
            self.publish_spool_depth(cell, &sp);
            drop(sp);
            self.sent.fetch_add(n as u64, Ordering::Relaxed);
            if let Err(e) = res {
                return Err(SpoolError::Flush {
                    last,
                    source: Arc::new(e),
                }
                .into());
            }
            lock(&self.state).spooled = last;
            self.work.notify_one();
            return Ok((last, n));
        }
    }

    fn publish_spool_depth(&self, cell: &SpoolCell, sp: &Spool) {
        cell.frames.store(sp.frames(), Ordering::Relaxed);
        cell.bytes.store(sp.bytes(), Ordering::Relaxed);
    }

    /// The spool dropped every frame up to `through` to make room: they are settled (not
    /// acked); a connection that is up is closed so the next Register resumes after them.
    fn on_dropped(&self, through: u64) {
        let reconnect = {
            let mut st = lock(&self.state);
            if through <= st.acked {
                return;
            }
            let n = through.min(st.next_seq - 1) - st.acked;
            self.dropped.fetch_add(n, Ordering::Relaxed);
            st.acked = through;
            while st.unacked.front().is_some_and(|(s, _)| *s <= through) {
                st.unacked.pop_front();
            }
            st.written = st.written.max(through);
            st.max_written = st.max_written.max(through);
            st.spooled = st.spooled.max(through);
            let up = lock(&self.conn).is_some();
            if up {
                st.need_reconnect = true;
            }
            up
        };
        tracing::warn!(through, "spool full: dropped the oldest unacked frames");
        self.acked_tx.send_replace(through);
        if reconnect {
            self.drop_connection();
        }
    }

    /// The spool keeper: persists acks (mark + segment deletion) off the ack path, syncs with
    /// `FsyncPolicy::Interval`, and persists and syncs once more when the agent closes.
    pub(super) async fn keep_spool(self: std::sync::Arc<Self>) {
        let Some(cell) = &self.spool else { return };
        let mut rx = self.acked_tx.subscribe();
        let every = cell.spool.lock().await.sync_interval();
        let mut tick = tokio::time::interval(every.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Woken by acks, the tick, and `close` (which touches the ack watch; the close
            // notify's single permit is the driver's).
            let closing = tokio::select! {
                r = rx.changed() => r.is_err(),
                _ = tick.tick() => false,
            };
            let closing = closing || self.is_closed();
            let acked = self.acked();
            let mut sp = cell.spool.lock().await;
            if let Err(e) = sp.ack(acked) {
                tracing::warn!(error = %e, seq = acked, "spool: could not persist the ack mark");
            }
            if every.is_some() || closing {
                if let Err(e) = sp.sync() {
                    tracing::warn!(error = %e, "spool: sync failed");
                }
            }
            self.publish_spool_depth(cell, &sp);
            if closing {
                return;
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
            pings: self.pings.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            spool_frames: self
                .spool
                .as_ref()
                .map_or(0, |c| c.frames.load(Ordering::Relaxed)),
            spool_bytes: self
                .spool
                .as_ref()
                .map_or(0, |c| c.bytes.load(Ordering::Relaxed)),
        }
    }

    /// Whether a session is registered now.
    pub(super) fn link_watch(&self) -> watch::Receiver<bool> {
        self.link_tx.subscribe()
    }

    /// The connection ended: the link is down until the next Register.
    pub(super) fn on_disconnected(&self) {
        self.link_tx
            .send_if_modified(|up| std::mem::replace(up, false));
    }

    /// The identity for the next Register, and its version.
    pub(super) fn identity(&self) -> (Option<DroneIdentity>, u64) {
        let st = lock(&self.state);
        (st.identity.clone(), st.identity_version)
    }

    /// Replaces the identity; a live session sends it at once (`ControlMessage.identity`).
    pub(super) fn set_identity(&self, identity: DroneIdentity) {
        {
            let mut st = lock(&self.state);
            if st.identity.as_ref() == Some(&identity) {
                return;
            }
            st.identity = Some(identity);
            st.identity_version += 1;
        }
        self.identity_notify.notify_one();
    }

    /// The resume claim for the next Register: `None` for a brand-new stream.
    pub(super) fn resume_claim(&self) -> Option<(u64, String)> {
        let st = lock(&self.state);
        if st.ever_registered || st.acked > 0 || st.resumed_from_spool {
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
            st.need_reconnect = false;
            st.window_blocked = false;
            st.draining = false;
            st.paused_until = None;
            st.session = Some(info);
        }
        self.acked_tx.send_replace(self.acked());
        self.phase_tx.send_replace(Phase::Registered);
        self.link_tx.send_replace(true);
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
            (up_to, std::mem::take(&mut st.window_blocked))
        };
        let (acked, wake_writer) = acked;
        // The spool keeper persists the mark: this path never waits on the disk.
        self.acked_tx.send_replace(acked);
        if wake_writer {
            self.work.notify_one();
        }
    }

    /// The relay discarded frames from `seq` on: write them again after `after`.
    pub(super) fn on_nack_retry(&self, seq: u64, after: Duration) {
        self.nacks.fetch_add(1, Ordering::Relaxed);
        let mut st = lock(&self.state);
        if seq > st.acked && seq <= st.written + 1 {
            st.written = seq - 1;
        }
        st.paused_until = Some(tokio::time::Instant::now() + after);
        drop(st);
        // Wake the writer so it sleeps until the pause ends and then resends from `seq`.
        self.work.notify_one();
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

    /// Fills `out` with frames not yet written on this connection (at most `max`, coalesced),
    /// using `frames` (left empty) to take them out of the lock: both vectors are the writer's
    /// and keep their capacity, so a write allocates nothing but its coalesced runs. Returns
    /// the pause deadline when writing is paused by a nack.
    pub(super) fn next_chunks(
        &self,
        frames: &mut Vec<Bytes>,
        out: &mut Vec<Bytes>,
        max: usize,
    ) -> Option<tokio::time::Instant> {
        let mut st = lock(&self.state);
        if st.draining || st.need_reconnect {
            return None;
        }
        if let Some(until) = st.paused_until {
            if until > tokio::time::Instant::now() {
                return Some(until);
            }
            st.paused_until = None;
        }
        let &(front, _) = st.unacked.front()?;
        if st.written + 1 < front {
            st.written = front - 1;
        }
        let start = (st.written + 1 - front) as usize;
        // Only what the spool holds, and within the credit window counted from the acks.
        let limit = st.spooled.min(st.acked + st.window);
        let allowed = limit.saturating_sub(st.written) as usize;
        let end = st.unacked.len().min(start + max.min(allowed));
        if end < st.unacked.len() && st.written + (end - start) as u64 >= st.acked + st.window {
            st.window_blocked = true;
        }
        frames.clear();
        frames.extend(st.unacked.range(start..end).map(|(_, b)| b.clone()));
        if end > start {
            let last = st.unacked[end - 1].0;
            if st.written < st.max_written {
                let again = st.max_written.min(last) - st.written;
                self.resent.fetch_add(again, Ordering::Relaxed);
            }
            st.written = last;
            st.max_written = st.max_written.max(last);
        }
        drop(st);
        coalesce(frames, out);
        None
    }

    pub(super) fn set_conn(&self, conn: Option<quinn::Connection>) {
        *lock(&self.conn) = conn;
    }

    pub(super) fn transport_stats(&self) -> Option<quinn::ConnectionStats> {
        lock(&self.conn).as_ref().map(quinn::Connection::stats)
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
