//! The live subscriber client: what a backend (or `contrail-tail`, or `contrail-loadgen`) uses to
//! receive the frames passing through a relay, as they pass.
//!
//! A [`Subscriber`] owns one QUIC connection (ALPN `contrail-sub/1`). It subscribes with filters
//! (agent-id globs, kinds, flight id), a queue size and a policy, then reads batches: every call
//! to [`Subscriber::next_batch`] returns all complete frames that arrived, as one
//! [`StoredBatch`] over a shared buffer (no allocation per frame; read fields through
//! [`StoredView`](crate::StoredView), or decode owned prost messages with
//! [`StoredBatch::to_messages`]). Status from the relay (frames dropped for this subscriber,
//! frames queued) is picked up while reading and returned by [`Subscriber::stats`].
//!
//! The subscriber does not reconnect: when the connection ends, `next_batch` returns `Ok(None)`
//! (clean close) or an error, and the caller decides.
//!
//! ```no_run
//! use contrail_protocol::client::subscriber::{Policy, Subscriber, SubscriberConfig};
//! use contrail_protocol::client::Trust;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = SubscriberConfig::new(
//!     "127.0.0.1:4433".parse()?,
//!     Trust::CaFile(".contrail/dev/cert.pem".into()),
//! );
//! config.agent_patterns = vec!["drone-*".into()];
//! config.kinds = vec![33]; // e.g. MAVLink GLOBAL_POSITION_INT
//! config.policy = Policy::DropOldest;
//! let mut sub = Subscriber::connect(config).await?;
//! while let Some(batch) = sub.next_batch().await? {
//!     for frame in batch.iter() {
//!         let f = frame.frame();
//!         println!("{} seq={} kind={} {} bytes", frame.agent_id(), f.seq(), f.kind(), f.payload().len());
//!     }
//!     let stats = sub.stats();
//!     if stats.dropped > 0 {
//!         eprintln!("relay dropped {} frames for us", stats.dropped);
//!     }
//! }
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::config::{rustls_client_config, ClientAuth, Trust};
use crate::codec::{CodecError, FrameCodec};
use crate::proto::{
    subscriber_control::Msg, Subscribe, SubscriberControl, SubscriberPolicy, SubscriberStatus,
};
use crate::stored::{StoredBatch, StoredMeta};
use crate::ErrorCode;

/// Most chunks taken from the data stream per read call. A chunk is about one QUIC packet's
/// worth of frames; a subscriber task sharing its runtime with thousands of others may be
/// polled only every few milliseconds, so one call must be able to take all that arrived
/// meanwhile (64 chunks capped a busy process at ~25k frames/s).
const READ_CHUNKS: usize = 1024;

/// What the relay does when this subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Evict the oldest queued frames (counted in [`SubscriberStats::dropped`]).
    #[default]
    DropOldest,
    /// Wait for room: nothing is lost, and a required live sink throttles agents meanwhile.
    Block,
}

/// Everything a subscriber needs.
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// Relay address.
    pub relay: SocketAddr,
    /// Name the relay's certificate must carry.
    pub server_name: String,
    /// Trust roots.
    pub trust: Trust,
    /// Optional client certificate (mTLS).
    pub client_auth: Option<ClientAuth>,
    /// Bearer token, when the relay requires one.
    pub auth_token: String,
    /// Agent id globs (`drone-*`); empty: all agents.
    pub agent_patterns: Vec<String>,
    /// Frame kinds; empty: all kinds.
    pub kinds: Vec<u32>,
    /// Only this flight id; empty: any.
    pub flight_id: String,
    /// Full-queue policy.
    pub policy: Policy,
    /// Requested queue capacity in frames (0: the relay's default; the relay caps it).
    pub queue_frames: u32,
    /// Time allowed for connect + subscribe.
    pub connect_timeout: Duration,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// QUIC receive window of the data stream, bytes: how much the relay may send ahead of
    /// what this process has read.
    pub receive_window: u32,
    /// Largest `StoredFrame` accepted.
    pub max_frame_bytes: usize,
    /// Largest UDP payload (see [`ClientConfig::max_udp_payload_bytes`](super::ClientConfig)).
    pub max_udp_payload_bytes: u16,
    /// Kernel receive (and send) buffer asked for the subscriber's UDP socket (the kernel caps
    /// it at `net.core.rmem_max`). A subscriber receives every frame the relay forwards: with
    /// the default buffer (~200 KiB) a process busy for a millisecond overflows it at high
    /// rates, and every dropped datagram costs a QUIC loss recovery and a smaller window.
    pub socket_buffer_bytes: usize,
}

impl SubscriberConfig {
    /// Defaults for one relay: every frame, drop-oldest, the relay's default queue.
    pub fn new(relay: SocketAddr, trust: Trust) -> Self {
        SubscriberConfig {
            relay,
            server_name: "localhost".to_string(),
            trust,
            client_auth: None,
            auth_token: String::new(),
            agent_patterns: Vec::new(),
            kinds: Vec::new(),
            flight_id: String::new(),
            policy: Policy::DropOldest,
            queue_frames: 0,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            receive_window: 4 * 1024 * 1024,
            max_frame_bytes: 16 * 1024 * 1024,
            max_udp_payload_bytes: super::config::DEFAULT_MAX_UDP_PAYLOAD,
            socket_buffer_bytes: 8 << 20,
        }
    }
}

/// Why subscribing or reading failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriberError {
    /// The TLS or QUIC configuration is unusable.
    #[error("subscriber configuration: {0}")]
    Config(String),
    /// The relay could not be reached in time.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The relay refused the subscription or closed the connection with an error code.
    #[error("relay closed the subscription: {code} ({message})")]
    Rejected {
        /// The code the relay sent.
        code: ErrorCode,
        /// The relay's message.
        message: String,
    },
    /// The connection was lost without a close code (timeout, reset).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The relay sent bytes that do not decode.
    #[error("undecodable data from the relay: {0}")]
    Protocol(#[from] CodecError),
}

/// Counters of one subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Frames received and decoded.
    pub frames_received: u64,
    /// Batches returned by `next_batch`.
    pub batches_received: u64,
    /// Frames the relay dropped for this subscriber (latest status).
    pub dropped: u64,
    /// Frames queued for this subscriber at the relay (latest status).
    pub lag: u64,
    /// Frames the relay had written to the data stream (latest status).
    pub relay_sent: u64,
    /// Status messages received.
    pub status_updates: u64,
}

/// A live subscription to one relay.
pub struct Subscriber {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    _ctl_send: quinn::SendStream,
    ctl_recv: quinn::RecvStream,
    ctl_buf: BytesMut,
    ctl_open: bool,
    data: Option<quinn::RecvStream>,
    buf: BytesMut,
    chunks: Vec<Bytes>,
    metas: Vec<StoredMeta>,
    codec: FrameCodec,
    subscriber_id: String,
    queue_frames: u32,
    stats: SubscriberStats,
    finished: bool,
}

fn close_error(err: &quinn::ConnectionError) -> Option<SubscriberError> {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            let code = ErrorCode::from_close_code(close.error_code.into_inner())
                .unwrap_or(ErrorCode::Unspecified);
            if code == ErrorCode::Normal {
                return None;
            }
            Some(SubscriberError::Rejected {
                code,
                message: String::from_utf8_lossy(&close.reason).into_owned(),
            })
        }
        quinn::ConnectionError::LocallyClosed => None,
        other => Some(SubscriberError::ConnectionLost(other.to_string())),
    }
}

fn lost(conn: &quinn::Connection) -> SubscriberError {
    match conn.close_reason() {
        Some(e) => close_error(&e).unwrap_or_else(|| SubscriberError::Rejected {
            code: ErrorCode::Normal,
            message: "relay closed the connection".into(),
        }),
        None => SubscriberError::ConnectionLost("stream ended".into()),
    }
}

fn build_endpoint(config: &SubscriberConfig) -> Result<quinn::Endpoint, SubscriberError> {
    let tls = rustls_client_config(
        &config.trust,
        config.client_auth.as_ref(),
        crate::ALPN_SUBSCRIBER,
    )
    .map_err(|e| SubscriberError::Config(e.to_string()))?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| SubscriberError::Config(e.to_string()))?;
    let mut quic = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(config.idle_timeout).ok());
    transport.keep_alive_interval(Some(config.idle_timeout / 3));
    let window = quinn::VarInt::from_u32(config.receive_window.max(16 * 1024));
    transport.stream_receive_window(window);
    transport.receive_window(window);
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(1));
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
    transport.mtu_discovery_config(Some(super::config::mtu_discovery(
        config.max_udp_payload_bytes,
    )));
    quic.transport_config(std::sync::Arc::new(transport));
    let socket = std::net::UdpSocket::bind(super::config::bind_addr(config.relay))
        .map_err(|e| SubscriberError::Config(format!("binding UDP socket: {e}")))?;
    super::config::size_socket_buffers(&socket, config.socket_buffer_bytes);
    super::config::client_endpoint(socket, config.max_udp_payload_bytes, quic)
        .map_err(|e| SubscriberError::Config(e.to_string()))
}

async fn read_control(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    codec: &FrameCodec,
) -> Result<Option<SubscriberControl>, SubscriberError> {
    loop {
        if let Some(m) = codec.decode_message::<SubscriberControl>(buf)? {
            return Ok(Some(m));
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Ok(None),
            Err(quinn::ReadError::ConnectionLost(e)) => {
                return match close_error(&e) {
                    Some(err) => Err(err),
                    None => Ok(None),
                }
            }
            Err(e) => return Err(SubscriberError::ConnectionLost(e.to_string())),
        }
    }
}

impl Subscriber {
    /// Connects and subscribes; returns once the relay confirmed the subscription.
    ///
    /// A refused subscription is [`SubscriberError::Rejected`] with the relay's code:
    /// `UNAUTHENTICATED` (bad token), `TOO_MANY_SESSIONS` (relay at `max_subscribers`),
    /// `PROTOCOL_VIOLATION` (bad pattern), `DRAINING`; a relay without a live sink refuses the
    /// ALPN during the TLS handshake ([`SubscriberError::Connect`]).
    pub async fn connect(config: SubscriberConfig) -> Result<Subscriber, SubscriberError> {
        let endpoint = build_endpoint(&config)?;
        let timeout = config.connect_timeout;
        match tokio::time::timeout(timeout, Self::subscribe(endpoint.clone(), &config)).await {
            Ok(res) => res,
            Err(_) => {
                endpoint.close(
                    quinn::VarInt::from_u32(ErrorCode::Timeout.close_code()),
                    b"",
                );
                Err(SubscriberError::Connect(format!(
                    "no subscription within {timeout:?}"
                )))
            }
        }
    }

    async fn subscribe(
        endpoint: quinn::Endpoint,
        config: &SubscriberConfig,
    ) -> Result<Subscriber, SubscriberError> {
        let conn = endpoint
            .connect(config.relay, &config.server_name)
            .map_err(|e| SubscriberError::Config(e.to_string()))?
            .await
            .map_err(|e| match close_error(&e) {
                Some(SubscriberError::Rejected { code, message }) => {
                    SubscriberError::Rejected { code, message }
                }
                _ => SubscriberError::Connect(e.to_string()),
            })?;
        let codec = FrameCodec::new(config.max_frame_bytes);
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| {
            close_error(&e).unwrap_or_else(|| SubscriberError::Connect(e.to_string()))
        })?;
        let policy = match config.policy {
            Policy::DropOldest => SubscriberPolicy::DropOldest,
            Policy::Block => SubscriberPolicy::Block,
        };
        let subscribe = SubscriberControl {
            msg: Some(Msg::Subscribe(Subscribe {
                auth_token: config.auth_token.clone(),
                agent_patterns: config.agent_patterns.clone(),
                kinds: config.kinds.clone(),
                flight_id: config.flight_id.clone(),
                policy: policy as i32,
                queue_frames: config.queue_frames,
            })),
        };
        let mut out = BytesMut::new();
        codec.encode(&subscribe, &mut out)?;
        if send.write_all(&out).await.is_err() {
            return Err(lost(&conn));
        }
        let mut ctl_buf = BytesMut::new();
        let subscribed = match read_control(&mut recv, &mut ctl_buf, &codec).await? {
            Some(SubscriberControl {
                msg: Some(Msg::Subscribed(s)),
            }) => s,
            Some(SubscriberControl {
                msg: Some(Msg::Error(e)),
            }) => {
                return Err(SubscriberError::Rejected {
                    code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                    message: e.message,
                })
            }
            Some(_) => {
                return Err(SubscriberError::Rejected {
                    code: ErrorCode::ProtocolViolation,
                    message: "relay answered Subscribe with an unexpected message".into(),
                })
            }
            None => return Err(lost(&conn)),
        };
        Ok(Subscriber {
            endpoint,
            conn,
            _ctl_send: send,
            ctl_recv: recv,
            ctl_buf,
            ctl_open: true,
            data: None,
            buf: BytesMut::with_capacity(256 * 1024),
            chunks: Vec::with_capacity(READ_CHUNKS),
            metas: Vec::new(),
            codec,
            subscriber_id: subscribed.subscriber_id,
            queue_frames: subscribed.queue_frames,
            stats: SubscriberStats::default(),
            finished: false,
        })
    }

    /// The id the relay gave this subscription (appears in relay logs).
    pub fn subscriber_id(&self) -> &str {
        &self.subscriber_id
    }

    /// The queue capacity, in frames, the relay granted.
    pub fn queue_frames(&self) -> u32 {
        self.queue_frames
    }

    /// QUIC statistics of the subscription's connection (packets, datagrams, frames by type,
    /// RTT, congestion window).
    pub fn transport_stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    /// Counters, including the relay's latest drop and lag figures.
    pub fn stats(&self) -> SubscriberStats {
        self.stats
    }

    /// The next batch: every complete frame received since the last call (at least one).
    ///
    /// Waits until a frame arrives. Returns `Ok(None)` when the relay ended the subscription
    /// cleanly; an error when it closed with an error code (e.g. `DRAINING`) or the
    /// connection was lost. Cancel-safe: dropping the future loses no data.
    pub async fn next_batch(&mut self) -> Result<Option<StoredBatch>, SubscriberError> {
        loop {
            if let Some(batch) = self
                .codec
                .decode_stored_batch(&mut self.buf, &mut self.metas)?
            {
                self.stats.frames_received += batch.len() as u64;
                self.stats.batches_received += 1;
                return Ok(Some(batch));
            }
            if self.finished {
                return Ok(None);
            }
            let Subscriber {
                conn,
                ctl_recv,
                ctl_buf,
                ctl_open,
                data,
                chunks,
                codec,
                ..
            } = self;
            enum Event {
                Control(Result<Option<SubscriberControl>, SubscriberError>),
                Accepted(Result<quinn::RecvStream, quinn::ConnectionError>),
                Read(Result<Option<usize>, quinn::ReadError>),
            }
            let data_event = async {
                match data {
                    None => Event::Accepted(conn.accept_uni().await),
                    Some(stream) => {
                        chunks.resize(READ_CHUNKS, Bytes::new());
                        Event::Read(stream.read_chunks(chunks).await)
                    }
                }
            };
            let event = tokio::select! {
                biased;
                c = read_control(ctl_recv, ctl_buf, codec), if *ctl_open => Event::Control(c),
                d = data_event => d,
            };
            match event {
                Event::Control(Ok(Some(SubscriberControl {
                    msg: Some(Msg::Status(s)),
                }))) => self.on_status(&s),
                Event::Control(Ok(Some(SubscriberControl {
                    msg: Some(Msg::Error(e)),
                }))) => {
                    return Err(SubscriberError::Rejected {
                        code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                        message: e.message,
                    })
                }
                Event::Control(Ok(Some(_))) => {}
                Event::Control(Ok(None)) => self.ctl_open = false,
                Event::Control(Err(e)) => return Err(e),
                Event::Accepted(Ok(stream)) => self.data = Some(stream),
                Event::Accepted(Err(e)) => match close_error(&e) {
                    Some(err) => return Err(err),
                    None => self.finished = true,
                },
                Event::Read(Ok(Some(n))) => {
                    for chunk in self.chunks.drain(..n) {
                        self.buf.extend_from_slice(&chunk);
                    }
                    self.chunks.clear();
                }
                Event::Read(Ok(None)) => self.finished = true,
                Event::Read(Err(quinn::ReadError::ConnectionLost(e))) => match close_error(&e) {
                    Some(err) => return Err(err),
                    None => self.finished = true,
                },
                Event::Read(Err(e)) => return Err(SubscriberError::ConnectionLost(e.to_string())),
            }
        }
    }

    fn on_status(&mut self, s: &SubscriberStatus) {
        self.stats.dropped = s.dropped;
        self.stats.lag = s.lag;
        self.stats.relay_sent = s.sent;
        self.stats.status_updates += 1;
    }

    /// Closes the subscription cleanly (the relay removes it at once).
    pub async fn close(self) {
        self.conn.close(
            quinn::VarInt::from_u32(ErrorCode::Normal.close_code()),
            b"bye",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.conn.close(
            quinn::VarInt::from_u32(ErrorCode::Normal.close_code()),
            b"dropped",
        );
    }
}
