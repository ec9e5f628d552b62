//! The proxy task: receives datagrams, applies the impairment, and releases the delay queue.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Shared, MAX_FLOWS};

/// Minimum extra hold applied to a reordered datagram.
const REORDER_HOLD: Duration = Duration::from_millis(10);
/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_535;

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    ToServer = 0,
    ToClient = 1,
}

/// A delayed datagram; ordered by release instant, then arrival order.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    at: Instant,
    seq: u64,
    dir: Dir,
    client: SocketAddr,
    data: Vec<u8>,
}

struct Engine {
    shared: Arc<Shared>,
    upstream: SocketAddr,
    flows: HashMap<SocketAddr, Arc<UdpSocket>>,
    readers: JoinSet<()>,
    to_client_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    seed: u64,
    rng: [StdRng; 2],
}

fn rngs(seed: u64) -> [StdRng; 2] {
    [
        StdRng::seed_from_u64(seed),
        StdRng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15),
    ]
}

pub(super) async fn run(client: UdpSocket, upstream: SocketAddr, shared: Arc<Shared>) {
    let (to_client_tx, mut to_client_rx) = mpsc::channel(1024);
    let seed = shared
        .cfg
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .seed;
    let mut engine = Engine {
        shared,
        upstream,
        flows: HashMap::new(),
        readers: JoinSet::new(),
        to_client_tx,
        queue: BinaryHeap::new(),
        seq: 0,
        seed,
        rng: rngs(seed),
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let next = engine.queue.peek().map(|Reverse(q)| q.at);
        tokio::select! {
            r = client.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let data = buf[..n].to_vec();
                    engine.on_client_datagram(&client, from, data).await;
                }
                Err(e) => tracing::debug!(error = %e, "proxy recv from client failed"),
            },
            Some((to, data)) = to_client_rx.recv() => {
                engine.impair(&client, Dir::ToClient, to, data).await;
            }
            () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                engine.release_due(&client).await;
            }
            Some(_) = engine.readers.join_next(), if !engine.readers.is_empty() => {}
        }
    }
}

impl Engine {
    async fn on_client_datagram(&mut self, client: &UdpSocket, from: SocketAddr, data: Vec<u8>) {
        if !self.flows.contains_key(&from) {
            if self.flows.len() >= MAX_FLOWS {
                bump(&self.shared.counters.received);
                bump(&self.shared.counters.dropped);
                return;
            }
            match self.open_flow(from).await {
                Ok(sock) => {
                    self.flows.insert(from, sock);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proxy cannot open upstream socket");
                    bump(&self.shared.counters.received);
                    bump(&self.shared.counters.dropped);
                    return;
                }
            }
        }
        self.impair(client, Dir::ToServer, from, data).await;
    }

    async fn open_flow(&mut self, client: SocketAddr) -> io::Result<Arc<UdpSocket>> {
        let ip = match (self.upstream.ip(), self.upstream.ip().is_loopback()) {
            (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let sock = Arc::new(UdpSocket::bind((ip, 0)).await?);
        sock.connect(self.upstream).await?;
        let reader = sock.clone();
        let tx = self.to_client_tx.clone();
        self.readers.spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                match reader.recv(&mut buf).await {
                    Ok(n) => {
                        if tx.send((client, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    // ICMP errors from an earlier send to a closed port: keep reading.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                        ) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "proxy upstream reader stopped");
                        return;
                    }
                }
            }
        });
        Ok(sock)
    }

    async fn impair(
        &mut self,
        client_sock: &UdpSocket,
        dir: Dir,
        client: SocketAddr,
        data: Vec<u8>,
    ) {
        let c = &self.shared.counters;
        bump(&c.received);
        if self.shared.blackhole.load(Ordering::SeqCst) {
            bump(&c.blackholed);
            return;
        }
        let cfg = *self
            .shared
            .cfg
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cfg.seed != self.seed {
            self.seed = cfg.seed;
            self.rng = rngs(cfg.seed);
        }
        let rng = &mut self.rng[dir as usize];
        if rng.random::<f64>() < cfg.loss {
            bump(&c.dropped);
            return;
        }
        let copies = if rng.random::<f64>() < cfg.duplicate {
            bump(&c.duplicated);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let rng = &mut self.rng[dir as usize];
            let mut delay = cfg.delay;
            if !cfg.jitter.is_zero() {
                let max = u64::try_from(cfg.jitter.as_nanos()).unwrap_or(u64::MAX);
                delay += Duration::from_nanos(rng.random_range(0..=max));
            }
            if rng.random::<f64>() < cfg.reorder {
                bump(&self.shared.counters.reordered);
                delay += cfg.jitter.max(REORDER_HOLD);
            }
            if delay.is_zero() {
                self.send(client_sock, dir, client, &data).await;
            } else if self.queue.len() >= cfg.queue_limit {
                bump(&self.shared.counters.dropped);
                bump(&self.shared.counters.queue_overflow);
            } else {
                self.seq += 1;
                self.queue.push(Reverse(Queued {
                    at: Instant::now() + delay,
                    seq: self.seq,
                    dir,
                    client,
                    data: data.clone(),
                }));
            }
        }
    }

    async fn release_due(&mut self, client_sock: &UdpSocket) {
        let now = Instant::now();
        while self.queue.peek().is_some_and(|Reverse(q)| q.at <= now) {
            let Some(Reverse(q)) = self.queue.pop() else {
                break;
            };
            if self.shared.blackhole.load(Ordering::SeqCst) {
                bump(&self.shared.counters.blackholed);
                continue;
            }
            self.send(client_sock, q.dir, q.client, &q.data).await;
        }
    }

    async fn send(&self, client_sock: &UdpSocket, dir: Dir, client: SocketAddr, data: &[u8]) {
        let res = match dir {
            Dir::ToClient => client_sock.send_to(data, client).await,
            Dir::ToServer => match self.flows.get(&client) {
                Some(sock) => sock.send(data).await,
                None => Err(io::Error::other("no flow for client")),
            },
        };
        match res {
            Ok(_) => bump(&self.shared.counters.forwarded),
            Err(e) => {
                tracing::debug!(error = %e, ?dir, "proxy send failed");
                bump(&self.shared.counters.dropped);
            }
        }
    }
}
