//! Faults: the link drops mid-flight, the agent starts with no relay, the spool fills up, and
//! the serial/UDP input carries garbage. Outages here last seconds, not the 30 s: the
//! agent's behaviour (spool, reconnect backoff capped at `reconnect_max_ms`, resume) is the
//! same whatever the length, only the spool depth grows.

use std::time::Duration;

use crate::common::*;
use contrail_agent::stats::DropCause;
use contrail_testsupport::{corrupt_crc, garbage, poll_until_async, SimVehicle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_drops_mid_flight_and_comes_back_nothing_lost_and_the_spool_drains() {
    let rig = Rig::start().await;
    let spool = rig.dir.path().join("spool");
    let agent = rig
        .agent(&rig.agent_toml("drone-outage", &["udpin:127.0.0.1:0"], &spool, ""))
        .await;
    let to = agent.source_addrs()[0].expect("udpin");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut vehicle = SimVehicle::new(1);
    let before = vehicle.advance(3_000);
    let during = vehicle.advance(5_000);
    let after = vehicle.advance(3_000);
    let dgrams = |p: &[contrail_testsupport::SimPacket]| -> Vec<Vec<u8>> {
        p.iter().map(|p| p.raw.clone()).collect()
    };
    send_udp(&socket, to, &dgrams(&before), || taken(&agent), |_| 1).await;
    wait_records(
        &rig.sink,
        "drone-outage",
        before.len(),
        Duration::from_secs(20),
    )
    .await;

    rig.proxy.blackhole(true);
    let mut link = agent.agent().link_watch();
    send_udp(
        &socket,
        to,
        &dgrams(&during),
        || taken(&agent) - before.len() as u64,
        |_| 1,
    )
    .await;
    // The link goes down (idle timeout), the spool holds what the relay has not acked.
    tokio::time::timeout(Duration::from_secs(15), link.wait_for(|up| !*up))
        .await
        .expect("link down within the idle timeout")
        .expect("watch");
    assert!(
        agent.agent().stats().spool_frames > 0,
        "frames wait in the spool"
    );

    rig.proxy.blackhole(false);
    send_udp(
        &socket,
        to,
        &dgrams(&after),
        || taken(&agent) - (before.len() + during.len()) as u64,
        |_| 1,
    )
    .await;
    let all: Vec<_> = before
        .iter()
        .chain(&during)
        .chain(&after)
        .cloned()
        .collect();
    let recs = wait_records(
        &rig.sink,
        "drone-outage",
        all.len(),
        Duration::from_secs(30),
    )
    .await;
    assert_exactly(&recs, &all);
    poll_until_async(Duration::from_secs(10), "the spool drains", async || {
        agent.agent().stats().spool_frames == 0
    })
    .await;
    assert!(agent.agent().stats().reconnects >= 1);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_with_no_relay_delivers_everything_from_its_first_second() {
    let rig = Rig::start().await;
    rig.proxy.blackhole(true);
    let spool = rig.dir.path().join("spool");
    let agent = rig
        .agent(&rig.agent_toml("drone-offline", &["udpin:127.0.0.1:0"], &spool, ""))
        .await;
    assert!(!*agent.agent().link_watch().borrow(), "no relay reachable");
    let to = agent.source_addrs()[0].expect("udpin");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let packets = SimVehicle::new(1).advance(3_000);
    let dgrams: Vec<Vec<u8>> = packets.iter().map(|p| p.raw.clone()).collect();
    send_udp(&socket, to, &dgrams, || taken(&agent), |_| 1).await;
    assert_eq!(
        agent.agent().stats().spool_frames,
        packets.len() as u64,
        "everything spooled while offline"
    );
    rig.proxy.blackhole(false);
    let recs = wait_records(
        &rig.sink,
        "drone-offline",
        packets.len(),
        Duration::from_secs(30),
    )
    .await;
    assert_exactly(&recs, &packets);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_the_oldest_counted_and_the_newest_still_arrives() {
    let rig = Rig::start().await;
    rig.proxy.blackhole(true);
    let spool = rig.dir.path().join("spool");
    let extra = "";
    let toml = rig
        .agent_toml("drone-full", &["udpin:127.0.0.1:0"], &spool, extra)
        .replace("fsync = \"never\"", "fsync = \"never\"\nmax_bytes = 65536");
    let agent = rig.agent(&toml).await;
    let to = agent.source_addrs()[0].expect("udpin");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // About 200 KiB of frames into a 64 KiB spool.
    let packets = SimVehicle::new(1).advance(30_000);
    let dgrams: Vec<Vec<u8>> = packets.iter().map(|p| p.raw.clone()).collect();
    send_udp(&socket, to, &dgrams, || taken(&agent), |_| 1).await;
    let stats = agent.agent().stats();
    assert_eq!(agent.stats().dropped(DropCause::QueueFull), 0);
    assert!(
        stats.dropped > 0,
        "the oldest frames were dropped: {stats:?}"
    );
    assert!(stats.spool_bytes <= 65_536, "{stats:?}");
    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        agent.http_addr().expect("http")
    ))
    .await
    .expect("GET")
    .text()
    .await
    .expect("body");
    assert!(
        metrics.contains(&format!(
            "contrail_agent_dropped_total{{cause=\"spool_full\"}} {}",
            stats.dropped
        )),
        "{metrics}"
    );
    rig.proxy.blackhole(false);
    let kept = packets.len() - stats.dropped as usize;
    let recs = wait_records(&rig.sink, "drone-full", kept, Duration::from_secs(30)).await;
    assert_eq!(recs.len(), kept, "every frame not dropped arrives once");
    // What arrives is the newest part of the flight, in order, byte for byte.
    let newest = &packets[packets.len() - kept..];
    for (i, (r, p)) in recs.iter().zip(newest).enumerate() {
        assert_eq!(r.seq, stats.dropped + 1 + i as u64);
        let at = packets.iter().position(|q| q.raw == r.payload);
        assert!(
            r.payload == p.raw,
            "record {i} (seq {}) is packet {at:?}, not {}; {stats:?}",
            r.seq,
            packets.len() - kept + i
        );
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_bad_checksums_are_counted_and_every_good_packet_arrives() {
    let rig = Rig::start().await;
    let spool = rig.dir.path().join("spool");
    let agent = rig
        .agent(&rig.agent_toml("drone-noisy", &["udpin:127.0.0.1:0"], &spool, ""))
        .await;
    let to = agent.source_addrs()[0].expect("udpin");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let packets = SimVehicle::new(1).advance(5_000);
    // Datagrams of a few packets, with junk between them and every 9th packet corrupted.
    let mut good = Vec::new();
    let mut dgrams = Vec::new();
    let mut counts = Vec::new();
    let mut corrupted = 0u64;
    for (i, chunk) in packets.chunks(3).enumerate() {
        let mut d = garbage(25, i as u64 + 7);
        let mut n = 0;
        for (j, p) in chunk.iter().enumerate() {
            if (i * 3 + j) % 9 == 4 {
                d.extend_from_slice(&corrupt_crc(&p.raw));
                corrupted += 1;
            } else {
                d.extend_from_slice(&p.raw);
                good.push(p.clone());
                n += 1;
            }
            d.extend_from_slice(&garbage(11, (i * 3 + j) as u64));
        }
        dgrams.push(d);
        counts.push(n);
    }
    // Wait after each batch for the frames the batch's good packets make.
    let mut sent = 0u64;
    for (chunk, ns) in dgrams.chunks(32).zip(counts.chunks(32)) {
        for d in chunk {
            socket.send_to(d, to).await.expect("send");
        }
        sent += ns.iter().sum::<u64>();
        poll_until_async(Duration::from_secs(10), "good packets taken", async || {
            taken(&agent) >= sent
        })
        .await;
    }
    let recs = wait_records(
        &rig.sink,
        "drone-noisy",
        good.len(),
        Duration::from_secs(20),
    )
    .await;
    assert_exactly(&recs, &good);
    let s = agent.stats();
    assert!(
        s.dropped(DropCause::BadCrc) >= corrupted,
        "bad checksums counted: {} of {corrupted}",
        s.dropped(DropCause::BadCrc)
    );
    assert!(s.junk_bytes() > 0);
    agent.stop().await;
}
