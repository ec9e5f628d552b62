//! `mavlink.udp_listen`: MAVLink straight into the relay, for labs and SITL.
//!
//! Every datagram is split into MAVLink packets (several may share one datagram); each packet
//! with a valid checksum becomes one frame of the session of its system id, agent id
//! `{agent_prefix}{sysid}`: `kind` = message id, payload = the packet byte for byte, content
//! type [`CONTENT_TYPE`], `seq` assigned here. Frames go to the sinks like an agent's.
//!
//! Best effort by design: nothing authenticates the sender, nothing is acked or resent, and a
//! datagram lost on the way is gone. Losses are counted from MAVLink sequence gaps per
//! (system, component). Bounded: at most `max_systems` systems (packets of others are dropped
//! and counted); a system silent for `idle_timeout_ms` ends its session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use contrail_control::{SessionInfo, SessionStats};
use contrail_protocol::{AgentId, FrameCodec, SessionId};
use metrics::{Counter, Gauge};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::packet::{self, DecodeError};
use super::CONTENT_TYPE;
use crate::cursor::AgentCursor;
use crate::session::context::Ingest;
use crate::sink::{BatchOrigin, SinkBatch};

/// Datagrams taken per wake-up before the frames are handed to the sinks.
const DATAGRAMS_PER_WAKE: usize = 64;
/// Largest datagram read (UDP's limit).
const DATAGRAM_BYTES: usize = 65_536;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdpError {
    /// Binding the socket failed.
    #[error("binding mavlink.udp_listen {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// The running endpoint, owned by the relay: stopped (sessions ended) on drain, aborted on drop.
pub struct UdpHandle {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

impl UdpHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops reading, hands what was read to the sinks, ends every system's session.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(j) = self.join.take() {
            let _ = j.await;
        }
    }
}

impl Drop for UdpHandle {
    fn drop(&mut self) {
        if let Some(j) = self.join.take() {
            j.abort();
        }
    }
}

/// Binds `addr` and starts the endpoint.
pub fn spawn(ingest: Arc<Ingest>, addr: SocketAddr) -> Result<UdpHandle, UdpError> {
    let bind = |addr| -> std::io::Result<tokio::net::UdpSocket> {
        let s = std::net::UdpSocket::bind(addr)?;
        s.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(s)
    };
    let socket = bind(addr).map_err(|source| UdpError::Bind { addr, source })?;
    let local_addr = socket
        .local_addr()
        .map_err(|source| UdpError::Bind { addr, source })?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let join = tokio::spawn(run(ingest, socket, stop_rx));
    tracing::info!(%local_addr, "MAVLink UDP endpoint listening (best effort: no auth, no acks)");
    Ok(UdpHandle {
        local_addr,
        stop: Some(stop_tx),
        join: Some(join),
    })
}

struct Metrics {
    packets: Counter,
    lost: Counter,
    dropped: [Counter; DecodeError::LABELS.len()],
    dropped_max_systems: Counter,
    dropped_draining: Counter,
    systems: Gauge,
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            packets: metrics::counter!("contrail_mavlink_udp_packets_total"),
            lost: metrics::counter!("contrail_mavlink_udp_lost_total"),
            dropped: DecodeError::LABELS.map(|reason| {
                metrics::counter!("contrail_mavlink_udp_dropped_total", "reason" => reason)
            }),
            dropped_max_systems: metrics::counter!("contrail_limit_hits_total", "limit" => "mavlink_max_systems"),
            dropped_draining: metrics::counter!("contrail_mavlink_udp_dropped_total", "reason" => "draining"),
            systems: metrics::gauge!("contrail_mavlink_udp_systems"),
        }
    }

    fn drop_reason(&self, e: DecodeError) {
        let i = DecodeError::LABELS
            .iter()
            .position(|l| *l == e.label())
            .unwrap_or(0);
        self.dropped[i].increment(1);
    }
}

/// One system id's session.
struct System {
    origin: Arc<BatchOrigin>,
    cursor: Arc<AgentCursor>,
    stats: Arc<SessionStats>,
    /// Next frame seq.
    next_seq: u64,
    last_seen: Instant,
    /// Last MAVLink sequence per component (`u16::MAX`: none yet).
    last_mav_seq: Box<[u16; 256]>,
    /// Frames of this wake-up, encoded, not yet handed to the sinks.
    pending: BytesMut,
}

impl System {
    /// Counts the packets missing between the component's last sequence and `seq`.
    fn gap(&mut self, component: u8, seq: u8) -> u64 {
        let last = std::mem::replace(
            &mut self.last_mav_seq[usize::from(component)],
            u16::from(seq),
        );
        if last == u16::MAX {
            return 0;
        }
        u64::from(seq.wrapping_sub(last as u8).wrapping_sub(1))
    }
}

struct Endpoint {
    ingest: Arc<Ingest>,
    codec: FrameCodec,
    systems: HashMap<u8, System>,
    /// Systems with pending frames, in first-packet order.
    dirty: Vec<u8>,
    metas: Vec<contrail_protocol::FrameMeta>,
    m: Metrics,
}

async fn run(ingest: Arc<Ingest>, socket: tokio::net::UdpSocket, mut stop: oneshot::Receiver<()>) {
    let idle = Duration::from_millis(ingest.core.config.mavlink.idle_timeout_ms);
    let mut ep = Endpoint {
        codec: FrameCodec::new(ingest.core.config.limits.max_frame_bytes),
        ingest,
        systems: HashMap::new(),
        dirty: Vec::new(),
        metas: Vec::new(),
        m: Metrics::new(),
    };
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    let mut sweep = tokio::time::interval((idle / 4).max(Duration::from_millis(25)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = sweep.tick() => ep.expire(Instant::now(), idle),
            r = socket.recv_from(&mut buf) => {
                match r {
                    Ok((n, from)) => ep.datagram(&buf[..n], from),
                    Err(e) => {
                        tracing::debug!(error = %e, "MAVLink UDP receive");
                        continue;
                    }
                }
                for _ in 1..DATAGRAMS_PER_WAKE {
                    match socket.try_recv_from(&mut buf) {
                        Ok((n, from)) => ep.datagram(&buf[..n], from),
                        Err(_) => break,
                    }
                }
                ep.dispatch().await;
            }
        }
    }
    ep.dispatch().await;
    let all: Vec<u8> = ep.systems.keys().copied().collect();
    for sysid in all {
        ep.end(sysid);
    }
}

impl Endpoint {
    fn datagram(&mut self, data: &[u8], from: SocketAddr) {
        let now = Instant::now();
        let mut at = 0;
        while at < data.len() {
            let rest = &data[at..];
            match packet::check(rest) {
                Ok(h) => {
                    self.packet(&rest[..h.packet_len], h, from, now);
                    at += h.packet_len;
                }
                Err(e) => {
                    self.m.drop_reason(e);
                    // Resynchronise on the next start byte.
                    at += 1;
                    match data[at..]
                        .iter()
                        .position(|b| *b == packet::STX_V1 || *b == packet::STX_V2)
                    {
                        Some(p) => at += p,
                        None => break,
                    }
                }
            }
        }
    }

    fn packet(&mut self, bytes: &[u8], h: packet::Header, from: SocketAddr, now: Instant) {
        self.m.packets.increment(1);
        if !self.systems.contains_key(&h.system_id) {
            if self.ingest.core.is_draining() {
                // Like agents: no new sessions once the relay drains.
                self.m.dropped_draining.increment(1);
                return;
            }
            if self.systems.len() >= self.ingest.core.config.mavlink.max_systems {
                self.m.dropped_max_systems.increment(1);
                return;
            }
            let Some(sys) = self.start(h.system_id, from) else {
                return;
            };
            self.systems.insert(h.system_id, sys);
            self.m.systems.set(self.systems.len() as f64);
        }
        let Some(sys) = self.systems.get_mut(&h.system_id) else {
            return;
        };
        let lost = sys.gap(h.component_id, h.sequence);
        if lost > 0 {
            self.m.lost.increment(lost);
        }
        sys.last_seen = now;
        if sys.pending.is_empty() {
            self.dirty.push(h.system_id);
        }
        let seq = sys.next_seq;
        sys.next_seq += 1;
        contrail_protocol::codec::encode_telemetry(
            &mut sys.pending,
            seq,
            crate::clock::unix_ns(),
            0,
            h.message_id,
            "",
            bytes,
            CONTENT_TYPE,
        );
    }

    fn start(&self, sysid: u8, from: SocketAddr) -> Option<System> {
        let prefix = &self.ingest.core.config.mavlink.agent_prefix;
        let agent_id = AgentId::new(format!("{prefix}{sysid}")).ok()?;
        let session_id = SessionId::from_random_bytes(rand::random());
        // No acks on UDP: usage counts what every required sink accepted.
        let cursor = Arc::new(AgentCursor::starting_at(0).usage_on_commit());
        let stats = Arc::new(SessionStats {
            committed: cursor.committed.clone(),
            ..SessionStats::default()
        });
        let now_ms = crate::clock::unix_ms();
        stats.last_heartbeat_unix_ms.store(now_ms, Relaxed);
        self.ingest.core.events.session_up(Arc::new(SessionInfo {
            agent_id: agent_id.as_str().to_string(),
            session_id: session_id.to_hex(),
            remote_addr: from,
            connected_since_unix_ms: now_ms,
            stats: stats.clone(),
        }));
        tracing::info!(agent = %agent_id, %from, "MAVLink system seen on UDP: session started");
        Some(System {
            origin: Arc::new(BatchOrigin {
                agent_id,
                session_id,
                session_hex: session_id.to_hex(),
            }),
            cursor,
            stats,
            next_seq: 1,
            last_seen: Instant::now(),
            last_mav_seq: Box::new([u16::MAX; 256]),
            pending: BytesMut::new(),
        })
    }

    /// Hands every system's pending frames to the sinks, one batch per system.
    async fn dispatch(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for sysid in &dirty {
            let Some(sys) = self.systems.get_mut(sysid) else {
                continue;
            };
            let batch = match self
                .codec
                .decode_telemetry_batch(&mut sys.pending, &mut self.metas)
            {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(e) => {
                    // Frames this endpoint encoded itself: unreachable unless max_frame_bytes
                    // is below a MAVLink packet (280 bytes at most).
                    tracing::warn!(error = %e, "MAVLink UDP frame refused by the codec");
                    sys.pending.clear();
                    continue;
                }
            };
            let n = batch.len() as u64;
            let bytes = batch.data().len() as u64;
            let last = batch.last_seq();
            sys.stats.frames.fetch_add(n, Relaxed);
            sys.stats.bytes.fetch_add(bytes, Relaxed);
            let now_ns = crate::clock::unix_ns();
            sys.stats
                .last_heartbeat_unix_ms
                .store(now_ns / 1_000_000, Relaxed);
            self.ingest.core.frames_received.increment(n);
            self.ingest.core.bytes_received.increment(bytes);
            let sb = Arc::new(SinkBatch::new(
                sys.origin.clone(),
                batch,
                Instant::now(),
                now_ns,
                self.ingest.fanout.required(),
                sys.cursor.clone(),
            ));
            let cursor = sys.cursor.clone();
            self.ingest.fanout.dispatch(&sb).await;
            cursor.set_forwarded(last);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn expire(&mut self, now: Instant, idle: Duration) {
        let old: Vec<u8> = self
            .systems
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_seen) >= idle)
            .map(|(id, _)| *id)
            .collect();
        for sysid in old {
            self.end(sysid);
        }
    }

    fn end(&mut self, sysid: u8) {
        if let Some(sys) = self.systems.remove(&sysid) {
            self.ingest
                .core
                .events
                .session_down(sys.origin.agent_id.as_str(), &sys.origin.session_hex);
            tracing::info!(agent = %sys.origin.agent_id, "MAVLink UDP system idle: session ended");
        }
        self.m.systems.set(self.systems.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_gaps_count_lost_packets_per_component_with_wraparound() {
        let mut s = System {
            origin: Arc::new(BatchOrigin {
                agent_id: AgentId::new("a").expect("id"),
                session_id: SessionId::from_random_bytes([0; 16]),
                session_hex: String::new(),
            }),
            cursor: Arc::new(AgentCursor::starting_at(0)),
            stats: Arc::default(),
            next_seq: 1,
            last_seen: Instant::now(),
            last_mav_seq: Box::new([u16::MAX; 256]),
            pending: BytesMut::new(),
        };
        assert_eq!(s.gap(1, 250), 0, "first packet of a component");
        assert_eq!(s.gap(1, 251), 0);
        assert_eq!(s.gap(1, 255), 3);
        assert_eq!(s.gap(1, 2), 2, "wraps: 0 and 1 missing");
        assert_eq!(s.gap(2, 9), 0, "components are tracked apart");
        assert_eq!(s.gap(1, 3), 0);
    }
}
