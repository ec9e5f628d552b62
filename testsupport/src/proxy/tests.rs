use std::collections::HashSet;

use super::*;
use crate::poll::poll_until_async;

const WAIT: Duration = Duration::from_secs(10);

async fn bind() -> UdpSocket {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind 127.0.0.1:0")
}

/// Receives one datagram within `WAIT`.
async fn recv(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("datagram within deadline")
        .expect("recv");
    buf.truncate(n);
    buf
}

/// Spawns an echo server; returns its socket address and the task.
async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    let sock = bind().await;
    let addr = sock.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if sock.send_to(&buf[..n], from).await.is_err() {
                return;
            }
        }
    });
    (addr, task)
}

async fn send_numbered(client: &UdpSocket, to: SocketAddr, n: u32) {
    for i in 0..n {
        client.send_to(&i.to_be_bytes(), to).await.expect("send");
    }
}

fn number(d: &[u8]) -> u32 {
    u32::from_be_bytes(d.try_into().expect("4-byte datagram"))
}

async fn wait_settled(proxy: &ImpairmentProxy, received: u64) -> ProxyStats {
    let h = proxy.handle();
    poll_until_async(WAIT, "proxy to process every datagram", async || {
        let s = h.stats();
        (s.received == received
            && s.forwarded + s.dropped + s.blackholed == received + s.duplicated)
            .then_some(s)
    })
    .await
}

#[tokio::test]
async fn passes_everything_through_both_ways_without_impairment() {
    let (upstream, echo) = echo_server().await;
    let proxy = ImpairmentProxy::start(upstream, Impairment::none()).await;
    let client = bind().await;
    send_numbered(&client, proxy.local_addr(), 50).await;
    let mut got = Vec::new();
    for _ in 0..50 {
        got.push(number(&recv(&client).await));
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>(), "order kept with no delay");
    let s = wait_settled(&proxy, 100).await;
    assert_eq!((s.forwarded, s.dropped, s.duplicated), (100, 0, 0));
    proxy.shutdown().await;
    echo.abort();
}

/// Sends `n` numbered datagrams in chunks, waiting for the proxy to take each chunk so the
/// kernel's receive buffer never overflows (which would make the counts nondeterministic).
async fn send_paced(client: &UdpSocket, proxy: &ImpairmentProxy, n: u32) {
    let h = proxy.handle();
    let base = h.stats().received;
    for i in 0..n {
        client
            .send_to(&i.to_be_bytes(), proxy.local_addr())
            .await
            .expect("send");
        if i % 32 == 31 || i + 1 == n {
            let want = base + u64::from(i) + 1;
            poll_until_async(WAIT, "proxy to take the chunk", async || {
                h.stats().received >= want
            })
            .await;
        }
    }
}

/// Counts datagrams arriving on `sock` in a background task.
fn count_arrivals(sock: UdpSocket) -> (Arc<AtomicU64>, JoinHandle<()>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while sock.recv_from(&mut buf).await.is_ok() {
            c.fetch_add(1, Ordering::SeqCst);
        }
    });
    (count, task)
}

async fn loss_run(seed: u64) -> ProxyStats {
    let server = bind().await;
    let mut cfg = Impairment::seeded(seed);
    cfg.loss = 0.5;
    let proxy = ImpairmentProxy::start(server.local_addr().expect("addr"), cfg).await;
    let (arrived, counter) = count_arrivals(server);
    let client = bind().await;
    send_paced(&client, &proxy, 400).await;
    let s = wait_settled(&proxy, 400).await;
    poll_until_async(WAIT, "forwarded datagrams to arrive", async || {
        arrived.load(Ordering::SeqCst) == s.forwarded
    })
    .await;
    proxy.shutdown().await;
    counter.abort();
    s
}

#[tokio::test]
async fn seeded_loss_is_reproducible_and_near_half() {
    let a = loss_run(7).await;
    let b = loss_run(7).await;
    assert!((140..=260).contains(&a.dropped), "dropped {}", a.dropped);
    assert_eq!(a.dropped + a.forwarded, 400);
    assert_eq!(a, b, "same seed, same decisions");
    let c = loss_run(8).await;
    assert_ne!(
        a.dropped, c.dropped,
        "a different seed should (almost surely) differ"
    );
}

#[tokio::test]
async fn blackhole_drops_everything_until_lifted() {
    let (upstream, echo) = echo_server().await;
    let proxy = ImpairmentProxy::start(upstream, Impairment::none()).await;
    let client = bind().await;
    send_numbered(&client, proxy.local_addr(), 1).await;
    recv(&client).await;
    proxy.blackhole(true);
    send_numbered(&client, proxy.local_addr(), 30).await;
    let s = wait_settled(&proxy, 32).await;
    assert_eq!((s.blackholed, s.forwarded), (30, 2));
    let mut buf = [0u8; 16];
    assert!(
        client.try_recv_from(&mut buf).is_err(),
        "nothing got through"
    );
    proxy.handle().blackhole(false);
    send_numbered(&client, proxy.local_addr(), 1).await;
    assert_eq!(number(&recv(&client).await), 0);
    proxy.shutdown().await;
    echo.abort();
}

#[tokio::test]
async fn duplicates_produce_extra_datagrams() {
    let server = bind().await;
    let mut cfg = Impairment::seeded(1);
    cfg.duplicate = 1.0;
    let proxy = ImpairmentProxy::start(server.local_addr().expect("addr"), cfg).await;
    let client = bind().await;
    send_numbered(&client, proxy.local_addr(), 20).await;
    let mut counts = [0u32; 20];
    for _ in 0..40 {
        counts[number(&recv(&server).await) as usize] += 1;
    }
    assert!(counts.iter().all(|&c| c == 2), "{counts:?}");
    let s = wait_settled(&proxy, 20).await;
    assert_eq!((s.duplicated, s.forwarded), (20, 40));
}

#[tokio::test]
async fn delay_applies_each_way() {
    let (upstream, echo) = echo_server().await;
    let mut cfg = Impairment::seeded(3);
    cfg.delay = Duration::from_millis(60);
    cfg.jitter = Duration::from_millis(5);
    let proxy = ImpairmentProxy::start(upstream, cfg).await;
    let client = bind().await;
    let t0 = std::time::Instant::now();
    send_numbered(&client, proxy.local_addr(), 1).await;
    recv(&client).await;
    let rtt = t0.elapsed();
    assert!(rtt >= Duration::from_millis(120), "rtt {rtt:?}");
    // Lifting the impairment at runtime takes effect.
    proxy.set_impairment(Impairment::seeded(3));
    let t1 = std::time::Instant::now();
    send_numbered(&client, proxy.local_addr(), 1).await;
    recv(&client).await;
    assert!(
        t1.elapsed() < Duration::from_millis(120),
        "{:?}",
        t1.elapsed()
    );
    proxy.shutdown().await;
    echo.abort();
}

#[tokio::test]
async fn reorder_changes_arrival_order_but_loses_nothing() {
    let server = bind().await;
    let mut cfg = Impairment::seeded(11);
    cfg.reorder = 0.3;
    let proxy = ImpairmentProxy::start(server.local_addr().expect("addr"), cfg).await;
    let client = bind().await;
    send_numbered(&client, proxy.local_addr(), 100).await;
    let mut got = Vec::new();
    for _ in 0..100 {
        got.push(number(&recv(&server).await));
    }
    let s = wait_settled(&proxy, 100).await;
    assert!(s.reordered > 0);
    assert_eq!(got.iter().copied().collect::<HashSet<_>>().len(), 100);
    assert_ne!(got, (0..100).collect::<Vec<_>>(), "arrival order unchanged");
}

#[tokio::test]
async fn delay_queue_is_bounded() {
    let server = bind().await;
    let mut cfg = Impairment::seeded(5);
    cfg.delay = Duration::from_secs(3600);
    cfg.queue_limit = 10;
    let proxy = ImpairmentProxy::start(server.local_addr().expect("addr"), cfg).await;
    let client = bind().await;
    send_numbered(&client, proxy.local_addr(), 25).await;
    let h = proxy.handle();
    let s = poll_until_async(WAIT, "25 datagrams received", async || {
        let s = h.stats();
        (s.received == 25).then_some(s)
    })
    .await;
    assert_eq!((s.queue_overflow, s.dropped, s.forwarded), (15, 15, 0));
}

#[tokio::test]
async fn shutdown_releases_the_socket() {
    let server = bind().await;
    let proxy =
        ImpairmentProxy::start(server.local_addr().expect("addr"), Impairment::none()).await;
    let addr = proxy.local_addr();
    assert!(
        UdpSocket::bind(addr).await.is_err(),
        "proxy should hold its port"
    );
    proxy.shutdown().await;
    UdpSocket::bind(addr)
        .await
        .expect("port free after shutdown");
}

#[tokio::test]
async fn separate_flows_per_client() {
    let (upstream, echo) = echo_server().await;
    let proxy = ImpairmentProxy::start(upstream, Impairment::none()).await;
    let a = bind().await;
    let b = bind().await;
    a.send_to(b"a", proxy.local_addr()).await.expect("send");
    b.send_to(b"b", proxy.local_addr()).await.expect("send");
    assert_eq!(recv(&a).await, b"a");
    assert_eq!(recv(&b).await, b"b");
    drop(proxy);
    echo.abort();
}
