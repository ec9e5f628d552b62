//! `mavlink_command_long` through contrail-agent: submitted over the relay's HTTP API, written
//! to a simulated vehicle (testsupport's `SimVehicle`) over UDP and TCP sources, its
//! `COMMAND_ACK` read back as the result.

use std::sync::Arc;
use std::time::Duration;

use contrail_testsupport::{poll_until_async, SimVehicle};
use serde_json::json;

use crate::commands_support::*;
use crate::common::*;

/// The simulated vehicle's end: answers the agent's packets (COMMAND_LONG → COMMAND_ACK) and,
/// on the agent's first heartbeat, sends a second of its own telemetry so the agent learns
/// that system 1 is on this link.
async fn serve_vehicle(
    socket: Arc<tokio::net::UdpSocket>,
    vehicle: Arc<parking_lot::Mutex<SimVehicle>>,
) {
    let mut buf = vec![0u8; 2048];
    let mut introduced = false;
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let replies = {
            let mut v = vehicle.lock();
            let mut out = v.receive(&buf[..n]);
            if !introduced {
                introduced = true;
                out.extend(v.advance(1_000));
            }
            out
        };
        for p in replies {
            let _ = socket.send_to(&p.raw, from).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_long_reaches_the_vehicle_and_its_ack_is_the_result() {
    use mavlink::dialects::ardupilotmega::{MavCmd, MavResult};
    let rig = Rig::start_with(&relay_commands_toml()).await;
    let socket = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let mut sim = SimVehicle::new(1);
    sim.command_acks
        .insert(20, Some(MavResult::MAV_RESULT_DENIED)); // RTL
    sim.command_acks.insert(21, None); // LAND: never answered
    let sim = Arc::new(parking_lot::Mutex::new(sim));
    let server = tokio::spawn(serve_vehicle(socket.clone(), sim.clone()));
    let a = agent(
        &rig,
        "drone-mav",
        socket.local_addr().expect("addr"),
        "[commands]\nenabled = true\n[commands.mavlink]\nack_timeout_ms = 300\n",
    )
    .await;
    poll_until_async(
        Duration::from_secs(10),
        "the agent heard the vehicle",
        async || a.stats().received_of("HEARTBEAT") > 0,
    )
    .await;
    let api = Api::new(&rig);

    let v = api
        .run(
            "drone-mav",
            "mavlink_command_long",
            json!({"target_system": 1, "target_component": 1, "command": 400,
                   "params": [1, 21196, 0, 0, 0, 0, 0]}),
        )
        .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(message(&v), "MAV_RESULT_ACCEPTED (0)");
    {
        let got = &sim.lock().commands_received;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].command, MavCmd::MAV_CMD_COMPONENT_ARM_DISARM);
        assert_eq!((got[0].param1, got[0].param2), (1.0, 21196.0));
        assert_eq!((got[0].target_system, got[0].target_component), (1, 1));
    }

    let v = api
        .run(
            "drone-mav",
            "mavlink_command_long",
            json!({"target_system": 1, "command": 20}),
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["exit"]["code"], 2);
    assert_eq!(message(&v), "MAV_RESULT_DENIED (2)");

    let v = api
        .run(
            "drone-mav",
            "mavlink_command_long",
            json!({"target_system": 1, "command": 21}),
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(message(&v), "no COMMAND_ACK within 300 ms");
    assert_eq!(
        sim.lock().commands_received.len(),
        3,
        "the LAND reached the vehicle"
    );

    // A system no link has heard, and a malformed payload.
    let v = api
        .run(
            "drone-mav",
            "mavlink_command_long",
            json!({"target_system": 9, "command": 400}),
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        message(&v).contains("no MAVLink link has heard system 9"),
        "{v}"
    );
    let v = api
        .run(
            "drone-mav",
            "mavlink_command_long",
            json!({"target_system": 1, "command": "arm"}),
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(message(&v).starts_with("payload"), "{v}");

    assert_eq!(
        a.stats().commands_of("mavlink_command_long", "succeeded"),
        1
    );
    assert_eq!(a.stats().commands_of("mavlink_command_long", "failed"), 3);
    assert_eq!(
        a.stats()
            .limit_hits(contrail_agent::stats::CommandLimit::AckTimeout),
        1
    );
    a.stop().await;
    server.abort();
}

/// The write path on the other source kinds: the agent answers a `udpin:` vehicle at the address
/// it sent from, and writes on a `tcpout:` connection. Each vehicle acks ARM (accepted) and
/// denies RTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_long_goes_back_over_udpin_and_tcp_sources() {
    use mavlink::dialects::ardupilotmega::MavResult;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rig = Rig::start_with(&relay_commands_toml()).await;
    let api = Api::new(&rig);
    let new_sim = |sys: u8| {
        let mut sim = SimVehicle::new(sys);
        sim.command_acks
            .insert(20, Some(MavResult::MAV_RESULT_DENIED));
        Arc::new(parking_lot::Mutex::new(sim))
    };

    // udpin: the vehicle (system 2) speaks first; the agent answers where it came from.
    let spool = rig.dir.path().join("spool-udpin");
    let toml = rig.agent_toml(
        "drone-udpin",
        &["udpin:127.0.0.1:0"],
        &spool,
        "[commands]\nenabled = true\n",
    );
    let a = rig.agent(&toml).await;
    let agent_addr = a.source_addrs()[0].expect("udpin address");
    let sim_udp = new_sim(2);
    let sock = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let udp_task = {
        let (sock, sim) = (sock.clone(), sim_udp.clone());
        tokio::spawn(async move {
            let intro = sim.lock().advance(1_000);
            for p in intro {
                let _ = sock.send_to(&p.raw, agent_addr).await;
            }
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let replies = sim.lock().receive(&buf[..n]);
                for p in replies {
                    let _ = sock.send_to(&p.raw, from).await;
                }
            }
        })
    };

    // tcpout: the vehicle (system 3) listens; the agent connects.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tcp_url = format!("tcpout:{}", listener.local_addr().expect("addr"));
    let sim_tcp = new_sim(3);
    let tcp_task = {
        let sim = sim_tcp.clone();
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let intro: Vec<u8> = sim
                .lock()
                .advance(1_000)
                .into_iter()
                .flat_map(|p| p.raw)
                .collect();
            let _ = s.write_all(&intro).await;
            let mut buf = vec![0u8; 4096];
            // Packets may arrive split or joined on a stream: keep what is not whole yet.
            let mut pending: Vec<u8> = Vec::new();
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&buf[..n]);
                let replies = sim.lock().receive_stream(&mut pending);
                for p in replies {
                    let _ = s.write_all(&p.raw).await;
                }
            }
        })
    };
    let spool = rig.dir.path().join("spool-tcp");
    let toml = rig.agent_toml(
        "drone-tcp",
        &[tcp_url.as_str()],
        &spool,
        "[commands]\nenabled = true\n",
    );
    let b = rig.agent(&toml).await;
    wait_registered(&rig, "drone-udpin").await;
    wait_registered(&rig, "drone-tcp").await;

    for (agent, drone, sys, sim) in [
        (&a, "drone-udpin", 2u8, &sim_udp),
        (&b, "drone-tcp", 3u8, &sim_tcp),
    ] {
        poll_until_async(
            Duration::from_secs(10),
            "the agent heard the vehicle",
            async || agent.stats().received_of("HEARTBEAT") > 0,
        )
        .await;
        let v = api
            .run(
                drone,
                "mavlink_command_long",
                json!({"target_system": sys, "command": 400, "params": [1]}),
            )
            .await;
        assert_eq!(v["status"], "succeeded", "{drone}: {v}");
        let v = api
            .run(
                drone,
                "mavlink_command_long",
                json!({"target_system": sys, "command": 20}),
            )
            .await;
        assert_eq!(message(&v), "MAV_RESULT_DENIED (2)", "{drone}: {v}");
        assert_eq!(sim.lock().commands_received.len(), 2, "{drone}");
    }
    a.stop().await;
    b.stop().await;
    udp_task.abort();
    tcp_task.abort();
}
