//! Comparison targets: an MQTT broker (QoS 0 or 1, MQTT 3.1.1 spoken directly over TCP with
//! no allocation per message) and a NATS server (plain or TLS, through `async-nats`).
//!
//! The harness logic is the one used for Contrail: N publishers, each its own connection and
//! topic/subject; one subscriber matching every message by publisher and seq (loss and
//! duplicates exact, e2e latency from the intended send time); the same credit window: a
//! publisher has at most [`WINDOW`] messages outstanding. "Outstanding" means not yet PUBACKed
//! for MQTT QoS 1, and not yet seen by the subscriber for QoS 0 and NATS (which have no
//! publisher acks), so `max` runs measure what the broker sustains without dropping.
//!
//! Every message carries a 24-byte header in its payload: publisher index (u32), reserved
//! (u32), seq (u64), intended send time (Unix ns, u64), all big-endian.
//!
//! ## Why MQTT is spoken by hand here (and rumqttc kept beside it)
//!
//! The harness measures the broker, so its own MQTT client must cost as little per message as
//! possible: the hand-written MQTT 3.1.1 below (CONNECT, SUBSCRIBE, PUBLISH, PUBACK, ~150
//! lines) encodes up to 256 PUBLISH packets into one buffer and writes it with one syscall,
//! and parses a whole read at once with no allocation per message. `--mqtt-client rumqttc`
//! runs the same publishers and subscriber through rumqttc 0.25 (`AsyncClient` +
//! `EventLoop`): one request through a channel, one owned topic and payload, and one flush per
//! message. Measured with `benches/scripts/mqtt-clients.sh` (`max`: 64 publishers, one
//! subscriber, 256-byte payloads, a Mosquitto on loopback, alternating runs, medians of 6 runs;
//! loadgen CPU per message counts one publish and one delivery):
//!
//! | | hand-written | rumqttc | rumqttc costs the harness |
//! |---|---|---|---|
//! | QoS 0 | 2.4 µs/msg, 62k msg/s | 3.0 µs/msg, 45k msg/s | +0.6 µs/msg (+26%); −28% msg/s |
//! | QoS 1 | 2.7 µs/msg, 35k msg/s | 4.5 µs/msg, 20k msg/s | +1.8 µs/msg (+69%); −42% msg/s |
//!
//! With rumqttc at QoS 1 Mosquitto sat idler (0.12 vs 0.21 cores): the harness, not the broker,
//! set the rate, which is what a comparison must not measure. Figures from a VM shared with
//! other builds (load average ~20 on 2 cores), so absolute rates are far below a quiet
//! machine's; the runs alternate, so the ratios compare like with like
//! (`benches/results/mqtt-clients-20261203.md`).
//!
//! So the comparison keeps the hand-written client as the default, and rumqttc as a
//! cross-check: `loadgen/tests/mqtt.rs` runs both against a real Mosquitto at QoS 0 and 1 and
//! both must account for every message the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, Notify, Semaphore};

use crate::ctx::{AgentEnd, RunCtx};
use crate::deliveries::{Delivery, DeliveryBook};
use crate::hist;
use crate::scenario::Rate;
use crate::track::SendLog;

/// Messages a publisher may have outstanding (Contrail's default `max_inflight`).
pub const WINDOW: u64 = 1024;
/// Payload header length.
pub const HEADER: usize = 24;

/// Which broker protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// MQTT 3.1.1, QoS 0.
    MqttQos0,
    /// MQTT 3.1.1, QoS 1.
    MqttQos1,
    /// NATS core.
    Nats,
}

/// Which MQTT client code speaks to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttClient {
    /// The hand-written MQTT 3.1.1 code in this module (the default; see the module doc).
    #[default]
    Raw,
    /// `rumqttc`'s `AsyncClient` and `EventLoop`.
    Rumqttc,
}

/// A broker to drive.
#[derive(Clone)]
pub struct Target {
    /// Protocol.
    pub kind: Kind,
    /// MQTT client implementation (MQTT kinds only).
    pub mqtt_client: MqttClient,
    /// Broker address.
    pub addr: SocketAddr,
    /// NATS over TLS with this CA file.
    pub tls_ca: Option<PathBuf>,
    /// Per-publisher credit: highest seq the subscriber has seen in order (QoS 0 / NATS).
    pub credit: Arc<[AtomicU64]>,
    /// Woken (at most every few hundred µs) when credits move.
    pub credit_notify: Arc<Notify>,
}

impl Target {
    /// A target for `agents` publishers.
    pub fn new(kind: Kind, addr: SocketAddr, tls_ca: Option<PathBuf>, agents: usize) -> Self {
        Target {
            kind,
            mqtt_client: MqttClient::Raw,
            addr,
            tls_ca,
            credit: (0..agents).map(|_| AtomicU64::new(0)).collect(),
            credit_notify: Arc::new(Notify::new()),
        }
    }

    /// The same target, spoken to with `client` (MQTT kinds).
    pub fn with_mqtt_client(mut self, client: MqttClient) -> Self {
        self.mqtt_client = client;
        self
    }

    /// Report name.
    pub fn name(&self) -> String {
        let name = match (self.kind, self.tls_ca.is_some()) {
            (Kind::MqttQos0, _) => "mqtt-qos0",
            (Kind::MqttQos1, _) => "mqtt-qos1",
            (Kind::Nats, false) => "nats",
            (Kind::Nats, true) => "nats-tls",
        };
        match (self.kind, self.mqtt_client) {
            (Kind::Nats, _) | (_, MqttClient::Raw) => name.into(),
            (_, MqttClient::Rumqttc) => format!("{name}-rumqttc"),
        }
    }

    /// Whether publishers get acks.
    pub fn has_acks(&self) -> bool {
        self.kind == Kind::MqttQos1
    }

    fn topic(&self, ctx: &RunCtx, idx: usize) -> String {
        let p = ctx.id_prefix.trim_end_matches('-');
        match self.kind {
            Kind::Nats => format!("lg.{p}.{idx}"),
            _ => format!("lg/{p}/{idx}"),
        }
    }

    fn topic_filter(&self, ctx: &RunCtx) -> String {
        let p = ctx.id_prefix.trim_end_matches('-');
        match self.kind {
            Kind::Nats => format!("lg.{p}.*"),
            _ => format!("lg/{p}/+"),
        }
    }
}

/// Writes the payload header.
fn put_header(dst: &mut [u8], idx: usize, seq: u64, stamp: u64, lag_us: u32) {
    dst[0..4].copy_from_slice(&(idx as u32).to_be_bytes());
    dst[4..8].copy_from_slice(&lag_us.to_be_bytes());
    dst[8..16].copy_from_slice(&seq.to_be_bytes());
    dst[16..24].copy_from_slice(&stamp.to_be_bytes());
}

/// A message's payload header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Publisher index.
    pub idx: usize,
    /// Publisher's seq.
    pub seq: u64,
    /// Intended send time (Unix ns; the actual one for `max` runs).
    pub stamp: u64,
    /// How late the publisher handed the message to its client, µs after `stamp`.
    pub lag_us: u32,
}

/// Reads the payload header.
pub fn parse_header(p: &[u8]) -> Option<Header> {
    let h = p.get(..HEADER)?;
    Some(Header {
        idx: u32::from_be_bytes(h[0..4].try_into().ok()?) as usize,
        lag_us: u32::from_be_bytes(h[4..8].try_into().ok()?),
        seq: u64::from_be_bytes(h[8..16].try_into().ok()?),
        stamp: u64::from_be_bytes(h[16..24].try_into().ok()?),
    })
}

/// What the subscriber books for a payload: a message without a readable header is foreign.
fn delivery_of(payload: &[u8]) -> Delivery {
    match parse_header(payload) {
        Some(h) => Delivery {
            idx: Some(h.idx),
            seq: h.seq,
            stamp: h.stamp,
            handed: h.stamp + u64::from(h.lag_us) * 1_000,
            relay_rx: 0,
        },
        None => Delivery::default(),
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1 packets (just what the harness needs).

fn put_remaining_len(dst: &mut BytesMut, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        dst.put_u8(b);
        if len == 0 {
            break;
        }
    }
}

fn put_str(dst: &mut BytesMut, s: &str) {
    dst.put_u16(s.len() as u16);
    dst.put_slice(s.as_bytes());
}

fn mqtt_connect(dst: &mut BytesMut, client_id: &str) {
    let body = 10 + 2 + client_id.len();
    dst.put_u8(0x10);
    put_remaining_len(dst, body);
    put_str(dst, "MQTT");
    dst.put_u8(4); // protocol level 3.1.1
    dst.put_u8(0x02); // clean session
    dst.put_u16(60); // keep alive, s
    put_str(dst, client_id);
}

fn mqtt_subscribe(dst: &mut BytesMut, filter: &str, qos: u8) {
    dst.put_u8(0x82);
    put_remaining_len(dst, 2 + 2 + filter.len() + 1);
    dst.put_u16(1);
    put_str(dst, filter);
    dst.put_u8(qos);
}

fn mqtt_publish(dst: &mut BytesMut, topic: &str, qos: u8, pid: u16, payload: &[u8]) {
    dst.put_u8(0x30 | (qos << 1));
    let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    put_remaining_len(dst, len);
    put_str(dst, topic);
    if qos > 0 {
        dst.put_u16(pid);
    }
    dst.put_slice(payload);
}

/// One parsed packet: (type nibble, flags, body).
fn mqtt_next(buf: &mut BytesMut) -> anyhow::Result<Option<(u8, u8, BytesMut)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut mul = 1usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len += (b & 0x7f) as usize * mul;
        mul *= 128;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            bail!("malformed MQTT remaining length");
        }
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(i);
    Ok(Some((first >> 4, first & 0x0f, buf.split_to(len))))
}

/// A publish body: (topic, packet id, payload).
fn mqtt_publish_parts(flags: u8, mut body: BytesMut) -> anyhow::Result<(u16, BytesMut)> {
    if body.len() < 2 {
        bail!("short PUBLISH");
    }
    let tlen = body.get_u16() as usize;
    if body.len() < tlen {
        bail!("short PUBLISH topic");
    }
    body.advance(tlen);
    let qos = (flags >> 1) & 3;
    let pid = if qos > 0 {
        if body.len() < 2 {
            bail!("short PUBLISH id");
        }
        body.get_u16()
    } else {
        0
    };
    Ok((pid, body))
}

async fn mqtt_handshake(stream: &mut TcpStream, client_id: &str) -> anyhow::Result<BytesMut> {
    let mut out = BytesMut::new();
    mqtt_connect(&mut out, client_id);
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        if let Some((t, _, body)) = mqtt_next(&mut buf)? {
            if t != 2 || body.len() < 2 || body[1] != 0 {
                bail!("MQTT CONNECT refused");
            }
            return Ok(buf);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("broker closed during CONNECT");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Publishers.

/// Connects publisher `idx` and publishes until `stop`; returns what it sent and got acked.
pub async fn run_agent(
    target: Target,
    ctx: Arc<RunCtx>,
    idx: usize,
    payload: Arc<[u8]>,
    gate: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) -> AgentEnd {
    let res = match target.kind {
        Kind::Nats => nats_publisher(&target, &ctx, idx, &payload, &gate, stop).await,
        _ if target.mqtt_client == MqttClient::Rumqttc => {
            rumqttc_publisher(&target, &ctx, idx, &payload, &gate, stop).await
        }
        _ => mqtt_publisher(&target, &ctx, idx, &payload, &gate, stop).await,
    };
    match res {
        Ok(end) => end,
        Err(e) => {
            tracing::debug!(error = %e, idx, "publisher failed");
            ctx.error(format!("{}_ERROR", target.name().to_uppercase()));
            AgentEnd::default()
        }
    }
}

/// Credits left for publisher `idx` with `sent` frames sent.
fn credit_left(target: &Target, idx: usize, sent: u64, acked: u64) -> u64 {
    let done = match target.kind {
        Kind::MqttQos1 => acked,
        _ => target.credit[idx].load(Relaxed),
    };
    WINDOW.saturating_sub(sent.saturating_sub(done))
}

/// The largest lag a header carries (u32 µs: 71 minutes).
fn lag_us(lag_ns: u64) -> u32 {
    u32::try_from(lag_ns / 1_000).unwrap_or(u32::MAX)
}

/// How a publisher hands messages to its client: the per-target part of [`publish_loop`].
trait Publish {
    /// Hands over seqs `first..first + n` of publisher `idx`, each header stamped
    /// `stamp_unix_ns` (intended send time) and `lag_us` (how late they are handed over).
    async fn publish(
        &mut self,
        idx: usize,
        first: u64,
        n: u64,
        stamp_unix_ns: u64,
        lag_us: u32,
    ) -> anyhow::Result<()>;
}

/// Publisher acks (MQTT QoS 1): the cumulative count, its wake-up and the send log that ack
/// latency is measured from.
struct Acks<'a> {
    acked: &'a AtomicU64,
    notify: &'a Notify,
    log: &'a Mutex<SendLog>,
}

/// The publish loop every broker publisher runs, the same open-loop schedule as Contrail's
/// fixed-rate agents (`contrail::send_fixed`): message `k` is due at `phase + k × period`
/// whatever happened to the ones before it (a late publisher catches up without skipping, so
/// nothing is coordinated away), its header carries that intended time, and the lateness of
/// the hand-over to the client goes into the send-lag histogram and the header. The stop
/// signal and the timer live across iterations (one timer reset per message, no waiter
/// re-registration). `max` runs send batches of up to 256 as credits allow. Counts into
/// `sent` as it goes.
async fn publish_loop(
    target: &Target,
    ctx: &RunCtx,
    idx: usize,
    acks: Option<Acks<'_>>,
    stop: &mut watch::Receiver<bool>,
    out: &mut impl Publish,
    sent: &mut u64,
) -> anyhow::Result<()> {
    let Some(mut sched) = Schedule::new(ctx, idx) else {
        let _ = stop.wait_for(|s| *s).await;
        return Ok(());
    };
    let stop_flag = stop.clone();
    let mut stopped = std::pin::pin!(async {
        let _ = stop.wait_for(|s| *s).await;
    });
    let mut timer = std::pin::pin!(tokio::time::sleep_until(ctx.at(sched.due).into()));
    loop {
        if *stop_flag.borrow() {
            return Ok(());
        }
        let acked = acks.as_ref().map_or(0, |a| a.acked.load(Relaxed));
        let credit = credit_left(target, idx, *sent, acked);
        if credit == 0 {
            match &acks {
                Some(a) => tokio::select! {
                    biased;
                    _ = &mut stopped => return Ok(()),
                    _ = a.notify.notified() => {}
                },
                None => tokio::select! {
                    biased;
                    _ = &mut stopped => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_micros(200)) => {}
                },
            }
            continue;
        }
        let (n, at) = match sched.period {
            None => (credit.min(256), ctx.now_ns()),
            Some(p) => {
                tokio::select! {
                    biased;
                    _ = &mut stopped => return Ok(()),
                    () = &mut timer => {}
                }
                let at = sched.due;
                sched.due += p;
                timer.as_mut().reset(ctx.at(sched.due).into());
                (1, at)
            }
        };
        let lag = ctx.now_ns().saturating_sub(at);
        if sched.period.is_some() && ctx.measured(at) {
            ctx.send_lag_hist.record_n(idx, lag, 1);
        }
        if let Some(a) = &acks {
            a.log.lock().sent(*sent + 1, *sent + n, at);
        }
        out.publish(idx, *sent + 1, n, ctx.epoch_unix_ns + at, lag_us(lag))
            .await?;
        *sent += n;
        ctx.sent.fetch_add(n, Relaxed);
    }
}

struct Schedule {
    period: Option<u64>,
    due: u64,
}

impl Schedule {
    fn new(ctx: &RunCtx, idx: usize) -> Option<Self> {
        match ctx.plan.rate {
            Rate::Idle => None,
            Rate::Max => Some(Schedule {
                period: None,
                due: 0,
            }),
            Rate::Hz(hz) => {
                let period = (1e9 / hz) as u64;
                let phase = (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % period.max(1);
                Some(Schedule {
                    period: Some(period),
                    due: ctx.now_ns() + phase,
                })
            }
        }
    }
}

/// The hand-written MQTT publisher's output: a batch of PUBLISH packets, one write.
struct MqttOut {
    wr: tokio::net::tcp::OwnedWriteHalf,
    out: BytesMut,
    body: Vec<u8>,
    topic: String,
    qos: u8,
}

impl Publish for MqttOut {
    async fn publish(
        &mut self,
        idx: usize,
        first: u64,
        n: u64,
        stamp: u64,
        lag_us: u32,
    ) -> anyhow::Result<()> {
        self.out.clear();
        for seq in first..first + n {
            put_header(&mut self.body, idx, seq, stamp, lag_us);
            let pid = ((seq - 1) % 65_535 + 1) as u16;
            mqtt_publish(&mut self.out, &self.topic, self.qos, pid, &self.body);
        }
        self.wr.write_all(&self.out).await?;
        Ok(())
    }
}

async fn mqtt_publisher(
    target: &Target,
    ctx: &Arc<RunCtx>,
    idx: usize,
    payload: &[u8],
    gate: &Semaphore,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<AgentEnd> {
    let qos = if target.kind == Kind::MqttQos1 { 1 } else { 0 };
    let topic = target.topic(ctx, idx);
    let t0 = ctx.now_ns();
    let permit = gate.acquire().await?;
    let mut stream = match TcpStream::connect(target.addr).await {
        Ok(s) => s,
        Err(e) => {
            ctx.connect_finished(false);
            return Err(e.into());
        }
    };
    stream.set_nodelay(true)?;
    let leftover = match mqtt_handshake(&mut stream, &format!("{}p{idx}", ctx.id_prefix)).await {
        Ok(l) => l,
        Err(e) => {
            ctx.connect_finished(false);
            return Err(e);
        }
    };
    drop(permit);
    ctx.connect_hist.record_n(idx, ctx.now_ns() - t0, 1);
    ctx.sessions_up.fetch_add(1, Relaxed);
    ctx.connect_finished(true);

    let (mut rd, wr) = stream.into_split();
    let log = Arc::new(Mutex::new(SendLog::default()));
    let acked = Arc::new(AtomicU64::new(0));
    let acked_notify = Arc::new(Notify::new());
    // The PUBACK reader (QoS 1): owned by this task, ended below.
    let reader = {
        let (log, acked, notify, ctx) = (
            log.clone(),
            acked.clone(),
            acked_notify.clone(),
            ctx.clone(),
        );
        let mut buf = leftover;
        tokio::spawn(async move {
            loop {
                let mut n = 0u64;
                while let Ok(Some((t, _, _))) = mqtt_next(&mut buf) {
                    if t == 4 {
                        n += 1;
                    }
                }
                if n > 0 {
                    let up_to = acked.fetch_add(n, Relaxed) + n;
                    let now = ctx.now_ns();
                    let mut shard = ctx.ack_hist.shard(idx);
                    log.lock().acked(up_to, |at, k| {
                        if ctx.measured(at) {
                            hist::record_n(&mut shard, now.saturating_sub(at), k);
                        }
                    });
                    drop(shard);
                    ctx.acked.fetch_add(n, Relaxed);
                    notify.notify_one();
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
    };

    let mut body = payload.to_vec();
    if body.len() < HEADER {
        body.resize(HEADER, 0);
    }
    let mut out = MqttOut {
        wr,
        out: BytesMut::with_capacity(256 * 1024),
        body,
        topic,
        qos,
    };
    let mut sent = 0u64;
    let acks = (qos == 1).then_some(Acks {
        acked: &acked,
        notify: &acked_notify,
        log: &log,
    });
    let result = publish_loop(target, ctx, idx, acks, &mut stop, &mut out, &mut sent).await;
    // Drain acks (bounded).
    if qos == 1 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while acked.load(Relaxed) < sent && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(50), acked_notify.notified()).await;
        }
    }
    reader.abort();
    let _ = out.wr.write_all(&[0xe0, 0x00]).await; // DISCONNECT
    ctx.sessions_up.fetch_sub(1, Relaxed);
    result?;
    Ok(AgentEnd {
        sent,
        acked: if qos == 1 { acked.load(Relaxed) } else { sent },
    })
}

async fn nats_connect(target: &Target, name: &str) -> anyhow::Result<async_nats::Client> {
    contrail_protocol::client::config::install_default_crypto_provider();
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .client_capacity(65_536)
        .subscription_capacity(1 << 20);
    if let Some(ca) = &target.tls_ca {
        opts = opts.require_tls(true).add_root_certificates(ca.clone());
    }
    let url = if target.tls_ca.is_some() {
        format!("tls://localhost:{}", target.addr.port())
    } else {
        format!("nats://{}", target.addr)
    };
    opts.connect(url).await.context("NATS connect")
}

/// The NATS publisher's output: async-nats takes an owned `Bytes` per message (one copy of the
/// payload) and hands it to the client's connection task, which writes whatever is queued.
struct NatsOut {
    client: async_nats::Client,
    subject: async_nats::Subject,
    body: BytesMut,
}

impl Publish for NatsOut {
    async fn publish(
        &mut self,
        idx: usize,
        first: u64,
        n: u64,
        stamp: u64,
        lag_us: u32,
    ) -> anyhow::Result<()> {
        for seq in first..first + n {
            put_header(&mut self.body, idx, seq, stamp, lag_us);
            self.client
                .publish(self.subject.clone(), Bytes::copy_from_slice(&self.body))
                .await?;
        }
        Ok(())
    }
}

async fn nats_publisher(
    target: &Target,
    ctx: &Arc<RunCtx>,
    idx: usize,
    payload: &[u8],
    gate: &Semaphore,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<AgentEnd> {
    let subject: async_nats::Subject = target.topic(ctx, idx).into();
    let t0 = ctx.now_ns();
    let permit = gate.acquire().await?;
    let client = match nats_connect(target, &format!("{}p{idx}", ctx.id_prefix)).await {
        Ok(c) => c,
        Err(e) => {
            ctx.connect_finished(false);
            return Err(e);
        }
    };
    drop(permit);
    ctx.connect_hist.record_n(idx, ctx.now_ns() - t0, 1);
    ctx.sessions_up.fetch_add(1, Relaxed);
    ctx.connect_finished(true);
    let mut body = BytesMut::from(payload);
    if body.len() < HEADER {
        body.resize(HEADER, 0);
    }
    let mut out = NatsOut {
        client,
        subject,
        body,
    };
    let mut sent = 0u64;
    let result = publish_loop(target, ctx, idx, None, &mut stop, &mut out, &mut sent).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), out.client.flush()).await;
    ctx.sessions_up.fetch_sub(1, Relaxed);
    result?;
    Ok(AgentEnd { sent, acked: sent })
}

// ---------------------------------------------------------------------------------------------
// Subscriber.

fn publish_credit(target: &Target, book: &DeliveryBook, touched: &[usize]) {
    for &i in touched {
        if let (Some(t), Some(c)) = (book.tracker(i), target.credit.get(i)) {
            c.store(t.next_expected() - 1, Relaxed);
        }
    }
    target.credit_notify.notify_waiters();
}

/// Subscribes to every publisher's topic and feeds the book until `done`.
pub async fn run_subscriber(
    target: Target,
    ctx: Arc<RunCtx>,
    ready: oneshot::Sender<anyhow::Result<()>>,
    done: watch::Receiver<bool>,
) -> anyhow::Result<DeliveryBook> {
    match target.kind {
        Kind::Nats => nats_subscriber(target, ctx, ready, done).await,
        _ if target.mqtt_client == MqttClient::Rumqttc => {
            rumqttc_subscriber(target, ctx, ready, done).await
        }
        _ => mqtt_subscriber(target, ctx, ready, done).await,
    }
}

async fn mqtt_subscriber(
    target: Target,
    ctx: Arc<RunCtx>,
    ready: oneshot::Sender<anyhow::Result<()>>,
    mut done: watch::Receiver<bool>,
) -> anyhow::Result<DeliveryBook> {
    let qos = if target.kind == Kind::MqttQos1 { 1 } else { 0 };
    let setup = async {
        let mut stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let mut buf = mqtt_handshake(&mut stream, &format!("{}sub", ctx.id_prefix)).await?;
        let mut out = BytesMut::new();
        mqtt_subscribe(&mut out, &target.topic_filter(&ctx), qos);
        stream.write_all(&out).await?;
        loop {
            if let Some((t, _, _)) = mqtt_next(&mut buf)? {
                if t == 9 {
                    return anyhow::Ok((stream, buf));
                }
                continue;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("broker closed during SUBSCRIBE");
            }
        }
    };
    let (mut stream, mut buf) = match setup.await {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e));
            bail!(msg);
        }
    };
    let mut book = DeliveryBook::new(ctx.clone());
    let mut acks = BytesMut::new();
    let mut frames: Vec<Delivery> = Vec::with_capacity(4096);
    let mut touched: Vec<usize> = Vec::with_capacity(4096);
    loop {
        frames.clear();
        acks.clear();
        while let Some((t, flags, body)) = mqtt_next(&mut buf)? {
            if t != 3 {
                continue;
            }
            let (pid, payload) = mqtt_publish_parts(flags, body)?;
            if (flags >> 1) & 3 == 1 {
                acks.put_slice(&[0x40, 0x02]);
                acks.put_u16(pid);
            }
            frames.push(delivery_of(&payload));
        }
        if !frames.is_empty() {
            touched.clear();
            touched.extend(frames.iter().filter_map(|f| f.idx));
            touched.dedup();
            book.record(frames.iter().copied());
            publish_credit(&target, &book, &touched);
        }
        if !acks.is_empty() {
            stream.write_all(&acks).await?;
        }
        tokio::select! {
            r = stream.read_buf(&mut buf) => {
                if r? == 0 {
                    break;
                }
            }
            _ = done.wait_for(|d| *d) => break,
        }
    }
    let _ = stream.write_all(&[0xe0, 0x00]).await;
    Ok(book)
}

async fn nats_subscriber(
    target: Target,
    ctx: Arc<RunCtx>,
    ready: oneshot::Sender<anyhow::Result<()>>,
    mut done: watch::Receiver<bool>,
) -> anyhow::Result<DeliveryBook> {
    use futures::StreamExt;
    let setup = async {
        let client = nats_connect(&target, &format!("{}sub", ctx.id_prefix)).await?;
        let sub = client.subscribe(target.topic_filter(&ctx)).await?;
        client.flush().await?;
        anyhow::Ok((client, sub))
    };
    let (_client, mut sub) = match setup.await {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e));
            bail!(msg);
        }
    };
    let mut book = DeliveryBook::new(ctx.clone());
    let mut frames: Vec<Delivery> = Vec::with_capacity(1024);
    let mut touched: Vec<usize> = Vec::with_capacity(1024);
    loop {
        let msg = tokio::select! {
            m = sub.next() => m,
            _ = done.wait_for(|d| *d) => break,
        };
        let Some(msg) = msg else { break };
        frames.clear();
        frames.push(delivery_of(&msg.payload));
        // Take whatever else is ready without waiting, to record in batches.
        while frames.len() < 1024 {
            match futures::FutureExt::now_or_never(sub.next()) {
                Some(Some(m)) => frames.push(delivery_of(&m.payload)),
                _ => break,
            }
        }
        touched.clear();
        touched.extend(frames.iter().filter_map(|f| f.idx));
        touched.dedup();
        book.record(frames.iter().copied());
        publish_credit(&target, &book, &touched);
    }
    Ok(book)
}

// ---------------------------------------------------------------------------------------------
// The same publisher and subscriber through rumqttc (`--mqtt-client rumqttc`), kept to measure
// the hand-written code against (module doc).

fn rumqttc_qos(target: &Target) -> rumqttc::QoS {
    if target.kind == Kind::MqttQos1 {
        rumqttc::QoS::AtLeastOnce
    } else {
        rumqttc::QoS::AtMostOnce
    }
}

/// A client and its event loop, connected (CONNACK received).
async fn rumqttc_connect(
    target: &Target,
    client_id: &str,
) -> anyhow::Result<(rumqttc::AsyncClient, rumqttc::EventLoop)> {
    let mut opts =
        rumqttc::MqttOptions::new(client_id, target.addr.ip().to_string(), target.addr.port());
    opts.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_inflight(WINDOW as u16)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = rumqttc::AsyncClient::new(opts, WINDOW as usize);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    ev.set_network_options(net);
    match ev.poll().await.context("MQTT connect")? {
        rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))
            if ack.code == rumqttc::ConnectReturnCode::Success =>
        {
            Ok((client, ev))
        }
        other => bail!("MQTT CONNECT refused: {other:?}"),
    }
}

/// The rumqttc publisher's output: one request through the client's channel per message.
struct RumqttcOut {
    client: rumqttc::AsyncClient,
    topic: String,
    qos: rumqttc::QoS,
    body: Vec<u8>,
}

impl Publish for RumqttcOut {
    async fn publish(
        &mut self,
        idx: usize,
        first: u64,
        n: u64,
        stamp: u64,
        lag_us: u32,
    ) -> anyhow::Result<()> {
        for seq in first..first + n {
            put_header(&mut self.body, idx, seq, stamp, lag_us);
            // rumqttc takes an owned topic and payload per message.
            self.client
                .publish_bytes(
                    self.topic.clone(),
                    self.qos,
                    false,
                    Bytes::copy_from_slice(&self.body),
                )
                .await?;
        }
        Ok(())
    }
}

async fn rumqttc_publisher(
    target: &Target,
    ctx: &Arc<RunCtx>,
    idx: usize,
    payload: &[u8],
    gate: &Semaphore,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<AgentEnd> {
    let qos = rumqttc_qos(target);
    let topic = target.topic(ctx, idx);
    let t0 = ctx.now_ns();
    let permit = gate.acquire().await?;
    let (client, mut ev) = match rumqttc_connect(target, &format!("{}p{idx}", ctx.id_prefix)).await
    {
        Ok(c) => c,
        Err(e) => {
            ctx.connect_finished(false);
            return Err(e);
        }
    };
    drop(permit);
    ctx.connect_hist.record_n(idx, ctx.now_ns() - t0, 1);
    ctx.sessions_up.fetch_add(1, Relaxed);
    ctx.connect_finished(true);

    let log = Arc::new(Mutex::new(SendLog::default()));
    let acked = Arc::new(AtomicU64::new(0));
    let acked_notify = Arc::new(Notify::new());
    // The event loop: rumqttc sends nothing unless it is polled. Counts PUBACKs (QoS 1), taking
    // every event that is ready before recording, as the raw reader does per read.
    let driver = {
        let (log, acked, notify, ctx) = (
            log.clone(),
            acked.clone(),
            acked_notify.clone(),
            ctx.clone(),
        );
        tokio::spawn(async move {
            use futures::FutureExt;
            let is_ack = |e: &rumqttc::Event| {
                matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))
            };
            loop {
                let Ok(first) = ev.poll().await else { return };
                let mut n = u64::from(is_ack(&first));
                while let Some(next) = ev.poll().now_or_never() {
                    let Ok(e) = next else { return };
                    n += u64::from(is_ack(&e));
                }
                if n > 0 {
                    let up_to = acked.fetch_add(n, Relaxed) + n;
                    let now = ctx.now_ns();
                    let mut shard = ctx.ack_hist.shard(idx);
                    log.lock().acked(up_to, |at, k| {
                        if ctx.measured(at) {
                            hist::record_n(&mut shard, now.saturating_sub(at), k);
                        }
                    });
                    drop(shard);
                    ctx.acked.fetch_add(n, Relaxed);
                    notify.notify_one();
                }
            }
        })
    };

    let mut body = payload.to_vec();
    if body.len() < HEADER {
        body.resize(HEADER, 0);
    }
    let qos1 = target.kind == Kind::MqttQos1;
    let mut out = RumqttcOut {
        client,
        topic,
        qos,
        body,
    };
    let mut sent = 0u64;
    let acks = qos1.then_some(Acks {
        acked: &acked,
        notify: &acked_notify,
        log: &log,
    });
    let result = publish_loop(target, ctx, idx, acks, &mut stop, &mut out, &mut sent).await;
    if qos1 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while acked.load(Relaxed) < sent && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(50), acked_notify.notified()).await;
        }
    }
    let client = out.client;
    // DISCONNECT goes out through the event loop, which then ends.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
    ctx.sessions_up.fetch_sub(1, Relaxed);
    result?;
    Ok(AgentEnd {
        sent,
        acked: if qos1 { acked.load(Relaxed) } else { sent },
    })
}

async fn rumqttc_subscriber(
    target: Target,
    ctx: Arc<RunCtx>,
    ready: oneshot::Sender<anyhow::Result<()>>,
    mut done: watch::Receiver<bool>,
) -> anyhow::Result<DeliveryBook> {
    use futures::FutureExt;
    let setup = async {
        let (client, mut ev) = rumqttc_connect(&target, &format!("{}sub", ctx.id_prefix)).await?;
        client
            .subscribe(target.topic_filter(&ctx), rumqttc_qos(&target))
            .await?;
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = ev.poll().await? {
                return anyhow::Ok((client, ev));
            }
        }
    };
    let (client, mut ev) = match setup.await {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e));
            bail!(msg);
        }
    };
    let mut book = DeliveryBook::new(ctx.clone());
    let mut frames: Vec<Delivery> = Vec::with_capacity(4096);
    let mut touched: Vec<usize> = Vec::with_capacity(4096);
    let frame_of = |e: rumqttc::Event| match e {
        rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(delivery_of(&p.payload)),
        _ => None,
    };
    loop {
        // rumqttc sends the PUBACKs (QoS 1) itself while it is polled.
        let first = tokio::select! {
            e = ev.poll() => e?,
            _ = done.wait_for(|d| *d) => break,
        };
        frames.clear();
        frames.extend(frame_of(first));
        // Take whatever else is ready without waiting, to record in batches.
        while frames.len() < 4096 {
            match ev.poll().now_or_never() {
                Some(e) => frames.extend(frame_of(e?)),
                None => break,
            }
        }
        if !frames.is_empty() {
            touched.clear();
            touched.extend(frames.iter().filter_map(|f| f.idx));
            touched.dedup();
            book.record(frames.iter().copied());
            publish_credit(&target, &book, &touched);
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), ev.poll()).await;
    Ok(book)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_publish_round_trips() {
        let mut payload = vec![0u8; 40];
        put_header(&mut payload, 7, 42, 99, 5);
        let mut buf = BytesMut::new();
        mqtt_publish(&mut buf, "lg/x/7", 1, 42, &payload);
        mqtt_publish(&mut buf, "lg/x/7", 0, 0, &payload);
        let (t, flags, body) = mqtt_next(&mut buf).expect("ok").expect("complete");
        assert_eq!((t, flags), (3, 2));
        let (pid, p) = mqtt_publish_parts(flags, body).expect("parts");
        assert_eq!(pid, 42);
        let h = Header {
            idx: 7,
            seq: 42,
            stamp: 99,
            lag_us: 5,
        };
        assert_eq!(parse_header(&p), Some(h));
        let d = delivery_of(&p);
        assert_eq!((d.idx, d.seq, d.stamp, d.handed), (Some(7), 42, 99, 5_099));
        assert_eq!(
            delivery_of(&p[..HEADER - 1]).idx,
            None,
            "no header: foreign"
        );
        let (t, flags, body) = mqtt_next(&mut buf).expect("ok").expect("complete");
        assert_eq!((t, flags), (3, 0));
        assert_eq!(mqtt_publish_parts(flags, body).expect("parts").0, 0);
        assert!(buf.is_empty());
    }

    /// Records what the loop hands over; the first hand-over stalls (a busy client).
    struct Recorder {
        calls: Vec<(u64, u64, u64, u32)>,
        stall: Duration,
        stop: Option<watch::Sender<bool>>,
    }

    impl Publish for Recorder {
        async fn publish(
            &mut self,
            _idx: usize,
            first: u64,
            n: u64,
            stamp: u64,
            lag_us: u32,
        ) -> anyhow::Result<()> {
            self.calls.push((first, n, stamp, lag_us));
            if self.calls.len() == 1 {
                tokio::time::sleep(self.stall).await;
            }
            if self.calls.len() == 12 {
                if let Some(stop) = self.stop.take() {
                    let _ = stop.send(true);
                }
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stalled_publisher_catches_up_on_its_schedule_and_reports_the_lag() {
        let plan = crate::scenario::Plan::build(
            None,
            &crate::scenario::Overrides {
                agents: Some(1),
                rate: Some(Rate::Hz(200.0)),
                ..Default::default()
            },
        )
        .expect("plan");
        let ctx = RunCtx::new(plan, "t-".into());
        ctx.set_window(0, u64::MAX);
        let target = Target::new(Kind::Nats, "127.0.0.1:1".parse().expect("addr"), None, 1);
        let (stop_tx, mut stop) = watch::channel(false);
        let stall = Duration::from_millis(40);
        let mut rec = Recorder {
            calls: Vec::new(),
            stall,
            stop: Some(stop_tx),
        };
        let mut sent = 0;
        publish_loop(&target, &ctx, 0, None, &mut stop, &mut rec, &mut sent)
            .await
            .expect("loop");
        assert_eq!(sent, 12);
        let period = 5_000_000u64;
        let first_stamp = rec.calls[0].2;
        for (k, &(first, n, stamp, _)) in rec.calls.iter().enumerate() {
            let k = k as u64;
            assert_eq!(
                (first, n),
                (k + 1, 1),
                "one message per due time, none skipped"
            );
            assert_eq!(
                stamp,
                first_stamp + k * period,
                "stamped with its intended time"
            );
        }
        // The message due right after the stall was handed over at least the stall minus its
        // period late, and said so in its header and in the send-lag histogram.
        let late_us = (stall.as_nanos() as u64 - period) / 1_000;
        assert!(rec.calls[1].3 as u64 >= late_us, "{:?}", rec.calls);
        let lag = ctx.send_lag_hist.snapshot();
        assert_eq!(lag.len(), 12);
        assert!(lag.max() >= late_us * 1_000);
    }

    #[test]
    fn partial_packets_wait_for_more_bytes() {
        let mut full = BytesMut::new();
        mqtt_publish(&mut full, "t", 0, 0, &[1u8; 300]);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert!(mqtt_next(&mut part).expect("ok").is_none(), "cut {cut}");
        }
        let mut bad = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(mqtt_next(&mut bad).is_err());
    }
}
