//! MAVLink sources: the endpoints the autopilot talks on, in the connection-string form the
//! `mavlink` crate and mavlink-router users know. Each source reads bytes, frames packets
//! ([`Framer`]) and queues them for the pipeline.
//!
//! * `udpin:HOST:PORT`: listen; packets from any sender.
//! * `udpout:HOST:PORT`: send a heartbeat to the vehicle every second (so it learns where to
//!   send) and read what comes back.
//! * `tcpin:HOST:PORT`: listen; up to [`MAX_TCP_CLIENTS`] connections at once.
//! * `tcpout:HOST:PORT`: connect, and reconnect with capped backoff.
//! * `serial:PATH:BAUD`: a serial device in raw mode at that speed; reopened after errors.
//!
//! Every source is also a write path to the vehicles it hears ([`crate::links`]): a UDP source
//! answers the address a system last sent from (`udpout:` its target), a stream source writes on
//! its connection. Commands (`mavlink_command_long`) use it.
//!
//! Datagram sources never wait: a packet that finds the queue full is dropped and counted
//! (`queue_full`). Stream sources (TCP, serial) wait for room, so the vehicle's link backs up
//! instead (with `spool.when_full = "pause"` that is what pausing a source means).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::framer::{Framer, Packet, SkipCounts};
use crate::links::{LinkHandle, Links};
use crate::stats::{DropCause, Stats};

/// Most simultaneous connections a `tcpin:` source accepts.
pub const MAX_TCP_CLIENTS: usize = 8;

/// A parsed source URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Listen for datagrams.
    UdpIn(String),
    /// Send heartbeats to, and read from, this address.
    UdpOut(String),
    /// Accept TCP connections.
    TcpIn(String),
    /// Connect over TCP.
    TcpOut(String),
    /// A serial device and its baud rate.
    Serial(PathBuf, u32),
}

impl Endpoint {
    /// Parses `udpin:`, `udpout:`, `tcpin:`, `tcpout:` or `serial:` URLs.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (scheme, rest) = url
            .split_once(':')
            .ok_or_else(|| format!("{url:?}: expected SCHEME:ADDRESS"))?;
        let host_port = |rest: &str| -> Result<String, String> {
            match rest.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(rest.to_string())
                }
                _ => Err(format!("{url:?}: expected {scheme}:HOST:PORT")),
            }
        };
        match scheme {
            "udpin" => Ok(Endpoint::UdpIn(host_port(rest)?)),
            "udpout" | "udp" => Ok(Endpoint::UdpOut(host_port(rest)?)),
            "tcpin" => Ok(Endpoint::TcpIn(host_port(rest)?)),
            "tcpout" | "tcp" => Ok(Endpoint::TcpOut(host_port(rest)?)),
            "serial" => {
                let (path, baud) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| format!("{url:?}: expected serial:PATH:BAUD"))?;
                let baud: u32 = baud
                    .parse()
                    .map_err(|_| format!("{url:?}: baud rate {baud:?} is not a number"))?;
                if path.is_empty() || baud == 0 {
                    return Err(format!("{url:?}: expected serial:PATH:BAUD"));
                }
                Ok(Endpoint::Serial(PathBuf::from(path), baud))
            }
            _ => Err(format!(
                "{url:?}: unknown scheme {scheme:?} (udpin, udpout, tcpin, tcpout, serial)"
            )),
        }
    }

    /// A short label for logs and metrics.
    pub fn label(&self) -> String {
        match self {
            Endpoint::UdpIn(a) => format!("udpin:{a}"),
            Endpoint::UdpOut(a) => format!("udpout:{a}"),
            Endpoint::TcpIn(a) => format!("tcpin:{a}"),
            Endpoint::TcpOut(a) => format!("tcpout:{a}"),
            Endpoint::Serial(p, b) => format!("serial:{}:{b}", p.display()),
        }
    }
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Binding or resolving the address failed.
    #[error("{endpoint}: {source}")]
    Bind {
        /// The source.
        endpoint: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A packet and the source it came from.
pub type Queued = Packet;

/// What every source task shares.
#[derive(Clone)]
pub struct SourceCtx {
    /// Into the pipeline.
    pub tx: mpsc::Sender<Queued>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// System id of `udpout:` heartbeats.
    pub heartbeat_system_id: u8,
    /// The write path: which link heard which system.
    pub links: Arc<Links>,
}

impl SourceCtx {
    /// Queues a datagram source's packet, dropping (counted) when the queue is full.
    fn offer(&self, p: Packet, link: u32) -> bool {
        self.links.heard(p.system_id, link);
        self.links.observe(&p);
        match self.tx.try_send(p) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.count_drop(DropCause::QueueFull, 1);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Moves a framer's new skip counts into the stats.
    fn account(&self, framer: &mut Framer) {
        let s = std::mem::take(&mut framer.skipped);
        if s != SkipCounts::default() {
            self.stats.skipped(&s);
        }
    }
}

/// A bound source, ready to run.
pub enum Bound {
    /// UDP socket (in or out).
    Udp(tokio::net::UdpSocket, Option<SocketAddr>),
    /// TCP listener.
    TcpIn(tokio::net::TcpListener),
    /// TCP target.
    TcpOut(String),
    /// Serial device.
    Serial(PathBuf, u32),
}

impl Bound {
    /// The local address of a listening or UDP source.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Bound::Udp(s, _) => s.local_addr().ok(),
            Bound::TcpIn(l) => l.local_addr().ok(),
            _ => None,
        }
    }
}

/// Binds what must be bound now (so a bad address fails at start, and tests learn ports).
pub async fn bind(endpoint: &Endpoint) -> Result<Bound, SourceError> {
    let err = |source| SourceError::Bind {
        endpoint: endpoint.label(),
        source,
    };
    Ok(match endpoint {
        Endpoint::UdpIn(addr) => Bound::Udp(
            tokio::net::UdpSocket::bind(addr.as_str())
                .await
                .map_err(err)?,
            None,
        ),
        Endpoint::UdpOut(addr) => {
            let target = tokio::net::lookup_host(addr.as_str())
                .await
                .map_err(err)?
                .next()
                .ok_or_else(|| err(std::io::Error::other("no address")))?;
            let local: SocketAddr = if target.is_ipv6() {
                "[::]:0"
                    .parse()
                    .map_err(|_| err(std::io::Error::other("addr")))?
            } else {
                "0.0.0.0:0"
                    .parse()
                    .map_err(|_| err(std::io::Error::other("addr")))?
            };
            Bound::Udp(
                tokio::net::UdpSocket::bind(local).await.map_err(err)?,
                Some(target),
            )
        }
        Endpoint::TcpIn(addr) => Bound::TcpIn(
            tokio::net::TcpListener::bind(addr.as_str())
                .await
                .map_err(err)?,
        ),
        Endpoint::TcpOut(addr) => Bound::TcpOut(addr.clone()),
        Endpoint::Serial(path, baud) => Bound::Serial(path.clone(), *baud),
    })
}

/// Runs a bound source until the pipeline's queue closes.
pub async fn run(bound: Bound, label: String, ctx: SourceCtx) {
    match bound {
        Bound::Udp(socket, target) => run_udp(socket, target, ctx).await,
        Bound::TcpIn(listener) => run_tcp_in(listener, label, ctx).await,
        Bound::TcpOut(addr) => {
            reconnecting(label, ctx, move || {
                let addr = addr.clone();
                async move {
                    tokio::net::TcpStream::connect(addr.as_str())
                        .await
                        .map(tokio::net::TcpStream::into_split)
                }
            })
            .await
        }
        Bound::Serial(path, baud) => {
            reconnecting(label, ctx, move || {
                let path = path.clone();
                async move { open_serial(&path, baud) }
            })
            .await
        }
    }
}

/// Kernel receive buffer asked for on UDP sources (best effort: capped by `net.core.rmem_max`),
/// so an autopilot's burst (a parameter or log download) is not lost in the kernel.
const UDP_RECV_BUFFER: usize = 4 << 20;

async fn run_udp(socket: tokio::net::UdpSocket, target: Option<SocketAddr>, ctx: SourceCtx) {
    if let Err(e) = socket2::SockRef::from(&socket).set_recv_buffer_size(UDP_RECV_BUFFER) {
        tracing::debug!(error = %e, "could not size the UDP receive buffer");
    }
    let mut buf = vec![0u8; 65_536];
    let mut framer = Framer::new();
    let mut beat = tokio::time::interval(Duration::from_secs(1));
    let heartbeat = gcs_heartbeat(ctx.heartbeat_system_id);
    let mut link = ctx.links.register();
    // Where each system last sent from (at most 256 entries: one per system id).
    let mut peers: std::collections::HashMap<u8, SocketAddr> = std::collections::HashMap::new();
    loop {
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                framer.push(&buf[..n]);
                while let Some(p) = framer.next_in_datagram() {
                    if peers.get(&p.system_id) != Some(&from) {
                        peers.insert(p.system_id, from);
                    }
                    if !ctx.offer(p, link.id) {
                        return;
                    }
                }
                ctx.account(&mut framer);
            }
            Some(out) = link.rx.recv() => {
                match target.or_else(|| peers.get(&out.system).copied()) {
                    Some(to) => {
                        if let Err(e) = socket.send_to(&out.packet, to).await {
                            tracing::warn!(system = out.system, %to, error = %e, "MAVLink write failed");
                        }
                    }
                    None => tracing::warn!(system = out.system, "no address for the system; packet not sent"),
                }
            }
            _ = beat.tick(), if target.is_some() => {
                if let Some(t) = target {
                    let _ = socket.send_to(&heartbeat, t).await;
                }
            }
            _ = ctx.tx.closed() => return,
        }
    }
}

async fn run_tcp_in(listener: tokio::net::TcpListener, label: String, ctx: SourceCtx) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, peer)) = r else { continue };
                if conns.len() >= MAX_TCP_CLIENTS {
                    tracing::warn!(source = %label, %peer, "too many TCP clients; refused");
                    continue;
                }
                tracing::info!(source = %label, %peer, "MAVLink TCP client connected");
                let ctx = ctx.clone();
                conns.spawn(async move {
                    let (r, w) = stream.into_split();
                    let _ = read_stream(r, w, &ctx).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = ctx.tx.closed() => break,
        }
    }
    conns.shutdown().await;
}

/// Reads packets from a byte stream until it ends or fails, and writes the packets queued for
/// its link on `w`; `Ok(false)` when the pipeline is gone.
async fn read_stream<R, W>(mut r: R, mut w: W, ctx: &SourceCtx) -> std::io::Result<bool>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut framer = Framer::new();
    let mut link: LinkHandle = ctx.links.register();
    loop {
        let n = tokio::select! {
            n = r.read(&mut buf) => n?,
            Some(out) = link.rx.recv() => {
                w.write_all(&out.packet).await?;
                w.flush().await?;
                continue;
            }
            _ = ctx.tx.closed() => return Ok(false),
        };
        if n == 0 {
            return Ok(true);
        }
        framer.push(&buf[..n]);
        while let Some(p) = framer.next_packet() {
            ctx.links.heard(p.system_id, link.id);
            ctx.links.observe(&p);
            if ctx.tx.send(p).await.is_err() {
                return Ok(false);
            }
        }
        ctx.account(&mut framer);
    }
}

/// Opens a stream with `open`, reads it, and opens it again after it ends or fails (1 s
/// backoff, doubling to 10 s).
async fn reconnecting<R, W, F, Fut>(label: String, ctx: SourceCtx, open: F)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(R, W)>>,
{
    let mut backoff = Duration::from_secs(1);
    loop {
        match open().await {
            Ok((r, w)) => {
                tracing::info!(source = %label, "MAVLink source open");
                backoff = Duration::from_secs(1);
                match read_stream(r, w, &ctx).await {
                    Ok(false) => return,
                    Ok(true) => tracing::warn!(source = %label, "MAVLink source closed"),
                    Err(e) => tracing::warn!(source = %label, error = %e, "MAVLink source failed"),
                }
            }
            Err(e) => {
                tracing::debug!(source = %label, error = %e, "MAVLink source not available");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = ctx.tx.closed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Opens a serial device (or pty) in raw mode at `baud`, as two async files on the same device
/// (reading and writing, so a write never waits behind a blocked read).
fn open_serial(
    path: &std::path::Path,
    baud: u32,
) -> std::io::Result<(tokio::fs::File, tokio::fs::File)> {
    use rustix::termios;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open(path)?;
    let mut t = termios::tcgetattr(&file)?;
    t.make_raw();
    t.set_speed(baud)?;
    termios::tcsetattr(&file, termios::OptionalActions::Now, &t)?;
    let writer = file.try_clone()?;
    Ok((
        tokio::fs::File::from_std(file),
        tokio::fs::File::from_std(writer),
    ))
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for std::fs::OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
    }
}

/// A MAVLink 2 HEARTBEAT from an onboard controller (component 191), for `udpout:`.
fn gcs_heartbeat(system_id: u8) -> Vec<u8> {
    use mavlink::dialects::ardupilotmega::{
        MavAutopilot, MavMessage, MavModeFlag, MavState, MavType, HEARTBEAT_DATA,
    };
    let msg = MavMessage::HEARTBEAT(HEARTBEAT_DATA {
        custom_mode: 0,
        mavtype: MavType::MAV_TYPE_ONBOARD_CONTROLLER,
        autopilot: MavAutopilot::MAV_AUTOPILOT_INVALID,
        base_mode: MavModeFlag::empty(),
        system_status: MavState::MAV_STATE_ACTIVE,
        mavlink_version: 3,
    });
    let header = mavlink::MavHeader {
        system_id: u32::from(system_id),
        component_id: 191,
        sequence: 0,
    };
    let mut out = Vec::new();
    let _ = mavlink::write_v2_msg(&mut out, header, &msg);
    out
}
