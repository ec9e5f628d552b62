//! A vehicle's stream, over UDP and over a serial line, reaches the sink exactly once, in order,
//! byte for byte; flight ids follow the arming cycles and device times the vehicle's clock.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use crate::common::*;
use contrail_testsupport::{poll_until_async, Pty, SimVehicle};

/// Flight ids: empty while disarmed, one per arming cycle; device time from SYSTEM_TIME.
fn assert_flights_and_clock(
    recs: &[Rec],
    packets: &[contrail_testsupport::SimPacket],
    v: &SimVehicle,
) {
    let mut ids = BTreeSet::new();
    let mut transitions = 0;
    let mut was_armed = false;
    for (r, p) in recs.iter().zip(packets) {
        assert_eq!(
            !r.flight_id.is_empty(),
            p.armed,
            "flight id {:?} of {} at t={} ms (armed: {})",
            r.flight_id,
            p.name,
            p.t_ms,
            p.armed
        );
        if p.armed {
            ids.insert(r.flight_id.clone());
            if !was_armed {
                transitions += 1;
            }
        }
        was_armed = p.armed;
        if p.name == "ATTITUDE" {
            assert_eq!(
                r.device_time,
                v.boot_unix_us + p.t_ms * 1000,
                "device time of ATTITUDE at t={} ms",
                p.t_ms
            );
        }
    }
    assert!(transitions >= 2, "the flight armed more than once");
    assert_eq!(ids.len(), transitions, "a new flight id per arming cycle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_over_udp_arrives_exactly_once_in_order_byte_for_byte() {
    let rig = Rig::start().await;
    let spool = rig.dir.path().join("spool");
    let agent = rig
        .agent(&rig.agent_toml("drone-udp", &["udpin:127.0.0.1:0"], &spool, ""))
        .await;
    let to = agent.source_addrs()[0].expect("udpin address");
    let mut vehicle = SimVehicle::new(1);
    let packets = vehicle.advance(10_000);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let datagrams: Vec<Vec<u8>> = packets.iter().map(|p| p.raw.clone()).collect();
    send_udp(&socket, to, &datagrams, || taken(&agent), |_| 1).await;
    let recs = wait_records(
        &rig.sink,
        "drone-udp",
        packets.len(),
        Duration::from_secs(20),
    )
    .await;
    assert_exactly(&recs, &packets);
    assert_flights_and_clock(&recs, &packets, &vehicle);
    assert_eq!(agent.stats().received_of("ATTITUDE"), 500);
    // The identity updates the agent sent (HEARTBEAT, AUTOPILOT_VERSION) kept the session up.
    assert_eq!(agent.agent().stats().reconnects, 0);
    // Local observability: link up, nothing dropped.
    let http = agent.http_addr().expect("http");
    let metrics = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    assert!(metrics.contains("contrail_agent_link_up 1"), "{metrics}");
    assert!(
        metrics.contains("contrail_agent_messages_total{name=\"ATTITUDE\"} 500"),
        "{metrics}"
    );
    assert!(metrics.contains("contrail_agent_dropped_total{cause=\"bad_crc\"} 0"));
    let health: serde_json::Value = reqwest::get(format!("http://{http}/healthz"))
        .await
        .expect("GET /healthz")
        .json()
        .await
        .expect("json");
    assert_eq!(health["link"], "up");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_over_a_serial_line_arrives_exactly_once_in_order_byte_for_byte() {
    let rig = Rig::start().await;
    let spool = rig.dir.path().join("spool");
    let pty = Pty::open().expect("pty pair");
    let url = format!("serial:{}:57600", pty.path.display());
    let agent = rig
        .agent(&rig.agent_toml("drone-serial", &[url.as_str()], &spool, ""))
        .await;
    let mut vehicle = SimVehicle::new(7);
    let packets = vehicle.advance(10_000);
    let bytes: Vec<u8> = packets.iter().flat_map(|p| p.raw.clone()).collect();
    let mut master = pty.master.try_clone().expect("clone master");
    let total = packets.len() as u64;
    // Written in odd-sized pieces, each once the agent has taken what came before (a pty holds
    // a few KiB).
    let mut off = 0;
    let mut packets_before = Vec::new();
    let mut acc = 0;
    for p in &packets {
        acc += p.raw.len();
        packets_before.push(acc);
    }
    while off < bytes.len() {
        let end = (off + 1_000).min(bytes.len());
        let piece = bytes[off..end].to_vec();
        master = tokio::task::spawn_blocking(move || {
            master.write_all(&piece).expect("write pty");
            master
        })
        .await
        .expect("writer");
        let whole = packets_before.iter().filter(|b| **b <= end).count() as u64;
        poll_until_async(
            Duration::from_secs(10),
            "the agent read the serial bytes",
            async || taken(&agent) >= whole,
        )
        .await;
        off = end;
    }
    assert_eq!(taken(&agent), total);
    let recs = wait_records(
        &rig.sink,
        "drone-serial",
        packets.len(),
        Duration::from_secs(20),
    )
    .await;
    assert_exactly(&recs, &packets);
    assert_flights_and_clock(&recs, &packets, &vehicle);
    agent.stop().await;
    drop(pty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_rate_limits_apply_by_message_name() {
    let rig = Rig::start().await;
    let spool = rig.dir.path().join("spool");
    let extra = "[mavlink]\nexclude = [\"VFR_HUD\"]\n[mavlink.rate_limits]\nATTITUDE = 10.0\n";
    let agent = rig
        .agent(&rig.agent_toml("drone-filter", &["udpin:127.0.0.1:0"], &spool, extra))
        .await;
    let to = agent.source_addrs()[0].expect("udpin address");
    let packets = SimVehicle::new(1).advance(2_000);
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // Real time matters for the rate limit: 50 Hz ATTITUDE sent over ~1 s of wall clock.
    let mut sent = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for chunk in packets.chunks(packets.len() / 50 + 1) {
        tick.tick().await;
        for p in chunk {
            socket.send_to(&p.raw, to).await.expect("send");
            sent += 1;
        }
        poll_until_async(Duration::from_secs(5), "taken", async || {
            taken(&agent) >= sent
        })
        .await;
    }
    let attitude = packets.iter().filter(|p| p.name == "ATTITUDE").count() as u64;
    let vfr = packets.iter().filter(|p| p.name == "VFR_HUD").count() as u64;
    let s = agent.stats();
    use contrail_agent::stats::DropCause;
    assert_eq!(s.dropped(DropCause::Filtered), vfr);
    let limited = s.dropped(DropCause::RateLimited);
    assert!(
        limited >= attitude / 2 && limited < attitude,
        "ATTITUDE at 50 Hz limited to 10 Hz: {limited} of {attitude} dropped"
    );
    let expect = packets.len() as u64 - vfr - limited;
    let recs = wait_records(
        &rig.sink,
        "drone-filter",
        expect as usize,
        Duration::from_secs(20),
    )
    .await;
    assert!(
        recs.iter().all(|r| r.kind != 74),
        "no VFR_HUD (id 74) in the sink"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vehicles_over_tcpin_and_tcpout_at_once_each_arrive_in_order() {
    use tokio::io::AsyncWriteExt;
    let rig = Rig::start().await;
    let spool = rig.dir.path().join("spool");
    // tcpout: the agent connects to a "vehicle" listening here.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let out_url = format!("tcpout:{}", listener.local_addr().expect("addr"));
    let agent = rig
        .agent(&rig.agent_toml(
            "drone-tcp",
            &["tcpin:127.0.0.1:0", out_url.as_str()],
            &spool,
            "",
        ))
        .await;
    let tcpin = agent.source_addrs()[0].expect("tcpin address");
    let (mut to_agent, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the agent connects out")
        .expect("accept");
    let mut into_agent = tokio::net::TcpStream::connect(tcpin)
        .await
        .expect("connect in");
    let a = SimVehicle::new(1).advance(3_000);
    let b = SimVehicle::new(2).advance(3_000);
    for (pa, pb) in a.chunks(50).zip(b.chunks(50)) {
        let bytes_a: Vec<u8> = pa.iter().flat_map(|p| p.raw.clone()).collect();
        let bytes_b: Vec<u8> = pb.iter().flat_map(|p| p.raw.clone()).collect();
        into_agent.write_all(&bytes_a).await.expect("write in");
        to_agent.write_all(&bytes_b).await.expect("write out");
    }
    let total = a.len() + b.len();
    let recs = wait_records(&rig.sink, "drone-tcp", total, Duration::from_secs(20)).await;
    assert_eq!(recs.len(), total);
    let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
    // Each vehicle's packets, in its own order (system id is byte 5 of MAVLink 2, 3 of v1).
    let sys = |r: &Rec| {
        if r.payload[0] == 0xFD {
            r.payload[5]
        } else {
            r.payload[3]
        }
    };
    for (id, v) in [(1u8, &a), (2u8, &b)] {
        let got: Vec<&Vec<u8>> = recs
            .iter()
            .filter(|r| sys(r) == id)
            .map(|r| &r.payload)
            .collect();
        let want: Vec<&Vec<u8>> = v.iter().map(|p| &p.raw).collect();
        assert!(got == want, "vehicle {id}: every packet once, in order");
    }
    agent.stop().await;
}
