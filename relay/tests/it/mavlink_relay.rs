//! MAVLink in the relay over real sockets: drone identity from Register and identity updates
//! (raw QUIC client) in `/v1/drones/{id}`; decoded MAVLink in the file sink's NDJSON with
//! fallback to raw (counted) and sink filters by message name; `contrail-tail --mavlink NAME`;
//! and the `mavlink.udp_listen` endpoint fed with real UDP datagrams.

use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use contrail_protocol::client::OutFrame;
use contrail_protocol::proto::{control_message::Msg, ControlMessage, DroneIdentity, Register};
use contrail_protocol::FrameCodec;
use contrail_relay::config::SinkConfig;
use contrail_relay::Hooks;
use contrail_testsupport::poll_until_async;
use mavlink::dialects::ardupilotmega as apm;
use mavlink::{MavHeader, MavlinkVersion};

use crate::common::*;

const DEADLINE: Duration = Duration::from_secs(30);
const MAV: &str = "application/x-mavlink";

/// One packet of `msg` from system `sysid`, component 1, MAVLink sequence `seq`.
fn packet(version: MavlinkVersion, sysid: u8, seq: u8, msg: &apm::MavMessage) -> Vec<u8> {
    let mut out = Vec::new();
    let h = MavHeader {
        system_id: u32::from(sysid),
        component_id: 1,
        sequence: seq,
    };
    mavlink::write_versioned_msg(&mut out, version, h, msg).expect("encode");
    out
}

fn attitude(t: u32) -> apm::MavMessage {
    apm::MavMessage::ATTITUDE(apm::ATTITUDE_DATA {
        time_boot_ms: t,
        roll: 0.5,
        pitch: -0.25,
        yaw: 1.5,
        ..Default::default()
    })
}

fn heartbeat() -> apm::MavMessage {
    apm::MavMessage::HEARTBEAT(apm::HEARTBEAT_DATA {
        mavtype: apm::MavType::MAV_TYPE_QUADROTOR,
        autopilot: apm::MavAutopilot::MAV_AUTOPILOT_PX4,
        mavlink_version: 3,
        ..Default::default()
    })
}

fn ndjson_sink(name: &str, path: &std::path::Path, extra: &str) -> SinkConfig {
    toml::from_str(&format!(
        "name = \"{name}\"\ntype = \"file\"\nrequired = true\nformat = \"ndjson\"\npath = {:?}\n{extra}",
        path.display().to_string()
    ))
    .expect("file sink entry")
}

fn read_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON object"))
        .collect()
}

async fn wait_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let p = path.to_path_buf();
    poll_until_async(
        DEADLINE,
        &format!("{n} lines in {}", p.display()),
        async || {
            let lines = read_lines(&p);
            (lines.len() >= n).then_some(lines)
        },
    )
    .await
}

async fn drone_status(http: &str, id: &str) -> Option<serde_json::Value> {
    let r = reqwest::get(format!("{http}/v1/drones/{id}"))
        .await
        .expect("GET drone");
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    Some(r.json().await.expect("drone JSON"))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn write_control(send: &mut quinn::SendStream, msg: Msg) {
    let mut buf = BytesMut::new();
    FrameCodec::default()
        .encode(&ControlMessage { msg: Some(msg) }, &mut buf)
        .expect("encode");
    send.write_all(&buf).await.expect("write control message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_from_register_and_its_updates_show_in_drone_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.limits.max_identity_field_bytes = 16;
    let relay = start_with(config, dir, vec![], Hooks::default()).await;
    let (ep, cfg) = relay.raw_client(contrail_protocol::ALPN_AGENT);
    let conn = contrail_protocol_connect(&ep, cfg, relay.relay.local_addr()).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    write_control(
        &mut send,
        Msg::Register(Register {
            agent_id: "drone-id-1".into(),
            agent_version: "contrail-agent 0.3.0".into(),
            identity: Some(DroneIdentity {
                vehicle_type: "MAV_TYPE_QUADROTOR".into(),
                autopilot: "MAV_AUTOPILOT_PX4".into(),
                firmware_version: "1.14.3".into(),
                mavlink_system_id: 7,
                hardware_uid: "0123456789abcdef0123456789abcdef".into(),
                serial_number: "SN-42".into(),
            }),
            ..Default::default()
        }),
    )
    .await;
    crate::common::raw::read_registered(&mut recv).await;
    let http = relay.http();
    let v = drone_status(&http, "drone-id-1")
        .await
        .expect("the drone is listed");
    let id = &v["identity"];
    assert_eq!(
        id["vehicle_type"], "MAV_TYPE_QUADROT",
        "capped at 16 bytes: {v}"
    );
    assert_eq!(id["autopilot"], "MAV_AUTOPILOT_PX");
    assert_eq!(id["firmware_version"], "1.14.3");
    assert_eq!(id["mavlink_system_id"], 7);
    assert_eq!(id["hardware_uid"], "0123456789abcdef");
    assert_eq!(id["serial_number"], "SN-42");
    assert_eq!(id["agent_version"], "contrail-agent 0");

    // AUTOPILOT_VERSION arrived later: the agent sends an identity update on the control stream.
    write_control(
        &mut send,
        Msg::Identity(DroneIdentity {
            vehicle_type: "MAV_TYPE_HEXAROTOR".into(),
            firmware_version: "1.15.0".into(),
            mavlink_system_id: 7,
            ..Default::default()
        }),
    )
    .await;
    let v = poll_until_async(DEADLINE, "the identity update in /v1/drones", async || {
        let v = drone_status(&http, "drone-id-1").await?;
        (v["identity"]["firmware_version"] == "1.15.0").then_some(v)
    })
    .await;
    let id = &v["identity"];
    assert_eq!(id["vehicle_type"], "MAV_TYPE_HEXAROT", "capped too");
    assert_eq!(id["autopilot"], "", "an update replaces the identity");
    assert_eq!(
        id["agent_version"], "contrail-agent 0",
        "kept from Register"
    );
    // The session is still up: an identity update is not a protocol violation.
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
}

async fn contrail_protocol_connect(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: std::net::SocketAddr,
) -> quinn::Connection {
    raw::connect(ep, cfg, addr).await
}

/// What the agent sends in the NDJSON test, in order: (kind, payload, content type).
fn ndjson_frames() -> Vec<(u32, Vec<u8>, &'static str)> {
    let ahrs2 = apm::MavMessage::AHRS2(apm::AHRS2_DATA {
        roll: 0.1,
        altitude: 12.5,
        lat: 473_977_420,
        ..Default::default()
    });
    let mut crc_bad = packet(MavlinkVersion::V2, 1, 9, &attitude(9));
    let at = crc_bad.len() - 1;
    crc_bad[at] ^= 0xFF;
    vec![
        (30, packet(MavlinkVersion::V2, 1, 0, &attitude(100)), MAV),
        (0, packet(MavlinkVersion::V1, 1, 1, &heartbeat()), MAV),
        (178, packet(MavlinkVersion::V2, 1, 2, &ahrs2), MAV),
        (30, b"not a mavlink packet".to_vec(), MAV),
        (30, crc_bad, MAV),
        (
            30,
            packet(MavlinkVersion::V2, 1, 3, &attitude(120)),
            "application/octet-stream",
        ),
        (30, packet(MavlinkVersion::V1, 1, 4, &attitude(140)), MAV),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_ndjson_carries_decoded_mavlink_falls_back_to_raw_and_filters_by_name() {
    metrics();
    let failures = || metric_sum("contrail_mavlink_decode_failures_total", "output=\"file\"");
    let before = failures();
    let dir = tempfile::tempdir().expect("tempdir");
    let all = dir.path().join("all.ndjson");
    let attitude_only = dir.path().join("attitude.ndjson");
    let no_heartbeat = dir.path().join("no-heartbeat.ndjson");
    let mut config = test_config(dir.path());
    config.sinks = vec![
        ndjson_sink("all", &all, ""),
        ndjson_sink(
            "attitude",
            &attitude_only,
            "include_mavlink = [\"ATTITUDE\"]",
        ),
        ndjson_sink("nohb", &no_heartbeat, "exclude_mavlink = [\"HEARTBEAT\"]"),
    ];
    let relay = start_with(config, dir, vec![], Hooks::default()).await;
    let agent = relay.agent("drone-mav-1").await;
    let frames = ndjson_frames();
    for (kind, payload, content_type) in &frames {
        agent
            .send_many(1, |_| OutFrame {
                kind: *kind,
                flight_id: "f1",
                payload,
                content_type,
                device_time: 0,
            })
            .await
            .expect("send");
    }
    agent.flush().await.expect("every frame acked");
    let lines = wait_lines(&all, frames.len()).await;
    assert_eq!(lines.len(), frames.len());
    for (v, (kind, payload, ct)) in lines.iter().zip(&frames) {
        assert_eq!(v["kind"], *kind);
        assert_eq!(v["content_type"], *ct);
        assert_eq!(
            v["payload_b64"],
            b64(payload),
            "the raw packet is always there"
        );
    }
    // Decoded: name, ids, sequence, fields; v1 and v2; common and ardupilotmega.
    let m = &lines[0]["mavlink"];
    assert_eq!(m["name"], "ATTITUDE");
    assert_eq!(
        (m["version"].as_u64(), m["system_id"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        (m["component_id"].as_u64(), m["sequence"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(m["fields"]["time_boot_ms"], 100);
    assert_eq!(m["fields"]["roll"], 0.5);
    assert_eq!(m["fields"]["pitch"], -0.25);
    let m = &lines[1]["mavlink"];
    assert_eq!(
        (m["name"].as_str(), m["version"].as_u64()),
        (Some("HEARTBEAT"), Some(1))
    );
    assert!(
        m["fields"].to_string().contains("MAV_TYPE_QUADROTOR"),
        "{m}"
    );
    assert_eq!(lines[2]["mavlink"]["name"], "AHRS2");
    assert_eq!(lines[2]["mavlink"]["fields"]["altitude"], 12.5);
    assert_eq!(lines[6]["mavlink"]["fields"]["time_boot_ms"], 140);
    // Garbage and a bad checksum fall back to raw; another content type is never decoded.
    for i in [3, 4, 5] {
        assert!(lines[i].get("mavlink").is_none(), "line {i}: {}", lines[i]);
    }
    // Each file sink decodes what it writes and counts its own failures: "all" the garbage and
    // the CRC-bad packet, "attitude" the CRC-bad packet (its header says ATTITUDE; the garbage
    // has no header), "nohb" both.
    let counted = poll_until_async(DEADLINE, "decode failures counted", async || {
        let d = failures() - before;
        (d >= 5.0).then_some(d)
    })
    .await;
    assert_eq!(counted, 5.0, "each failure counted once per output");

    // Filters by message name read the packet header: only MAVLink ATTITUDE passes the include
    // list (not the octet-stream frame with kind 30, not garbage); the exclude list drops only
    // the HEARTBEAT.
    let att = wait_lines(&attitude_only, 3).await;
    let seqs: Vec<u64> = att.iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 5, 7], "{att:?}");
    let nohb = wait_lines(&no_heartbeat, frames.len() - 1).await;
    let seqs: Vec<u64> = nohb.iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 3, 4, 5, 6, 7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contrail_tail_selects_mavlink_frames_by_name_and_shows_them_decoded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.sinks = vec![
        toml::from_str("name = \"live\"\ntype = \"live\"\nrequired = false").expect("live sink"),
    ];
    let relay = start_with(config, dir, vec![], Hooks::default()).await;
    let ca = relay
        .relay
        .dev_cert_path()
        .expect("test relays use a generated dev certificate")
        .to_path_buf();
    const N: usize = 20;
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_contrail-tail"))
        .arg("--relay")
        .arg(relay.relay.local_addr().to_string())
        .arg("--ca")
        .arg(&ca)
        .args(["--mavlink", "ATTITUDE", "--count", &N.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn contrail-tail");
    let registry = relay.relay.subscribers().expect("live sink").clone();
    poll_until_async(DEADLINE, "contrail-tail subscribed", async || {
        registry.active() == 1
    })
    .await;
    let agent = relay.agent("drone-tail-mav").await;
    // Per round: a HEARTBEAT, an octet-stream frame of kind 30 (passes the relay's kind
    // filter, not the name check), then an ATTITUDE.
    let hb = packet(MavlinkVersion::V2, 3, 0, &heartbeat());
    for i in 0..N as u32 {
        let att = packet(MavlinkVersion::V2, 3, i as u8, &attitude(i));
        let round: [(u32, &[u8], &str); 3] = [
            (0, &hb, MAV),
            (30, b"kind 30 but not MAVLink", "application/octet-stream"),
            (30, &att, MAV),
        ];
        for (kind, payload, content_type) in round {
            agent
                .send_many(1, |_| OutFrame {
                    kind,
                    flight_id: "",
                    payload,
                    content_type,
                    device_time: 0,
                })
                .await
                .expect("send");
        }
    }
    agent.flush().await.expect("flush");
    let mut stdout = tail.stdout.take().expect("stdout");
    let mut stderr = tail.stderr.take().expect("stderr");
    let (out, err, status) = tokio::time::timeout(DEADLINE, async {
        let mut out = String::new();
        let mut err = String::new();
        let (a, b, status) = tokio::join!(
            tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut out),
            tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err),
            tail.wait()
        );
        a.expect("read stdout");
        b.expect("read stderr");
        (out, err, status)
    })
    .await
    .expect("contrail-tail exits after --count frames");
    assert!(
        status.expect("wait").success(),
        "contrail-tail failed: {err}"
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON object"))
        .collect();
    assert_eq!(lines.len(), N, "stderr: {err}");
    for (i, v) in lines.iter().enumerate() {
        assert_eq!(v["seq"], 3 * (i as u64 + 1), "{v}");
        assert_eq!(v["mavlink"]["name"], "ATTITUDE", "{v}");
        assert_eq!(v["mavlink"]["system_id"], 3);
        assert_eq!(v["mavlink"]["fields"]["time_boot_ms"], i as u64);
    }
    // A name that is no MAVLink message is refused up front.
    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_contrail-tail"))
        .args(["--relay", "127.0.0.1:9", "--mavlink", "ATTITUDEE"])
        .arg("--ca")
        .arg(&ca)
        .output()
        .await
        .expect("run contrail-tail");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("ATTITUDEE"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_endpoint_makes_each_system_a_session_counts_losses_and_ends_idle_ones() {
    metrics();
    let lost = || metric_sum("contrail_mavlink_udp_lost_total", "");
    let over = || metric_sum("contrail_limit_hits_total", "limit=\"mavlink_max_systems\"");
    let (lost_before, over_before) = (lost(), over());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("udp.ndjson");
    let mut config = test_config(dir.path());
    config.sinks = vec![ndjson_sink("file", &out, "")];
    config.mavlink.udp_listen = Some("127.0.0.1:0".parse().expect("addr"));
    config.mavlink.max_systems = 2;
    config.mavlink.idle_timeout_ms = 2_000;
    let relay = start_with(config, dir, vec![], Hooks::default()).await;
    let target = relay.relay.mavlink_udp_addr().expect("endpoint is on");
    let vehicle = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind vehicle socket");
    let send = async |bytes: &[u8]| {
        vehicle.send_to(bytes, target).await.expect("send datagram");
    };
    // System 1: sequences 0..=9 without 5 (one lost), one packet per datagram, v2 and v1.
    let mut sent1 = Vec::new();
    for seq in (0u8..10).filter(|s| *s != 5) {
        let v = if seq % 2 == 0 {
            MavlinkVersion::V2
        } else {
            MavlinkVersion::V1
        };
        let p = packet(v, 1, seq, &attitude(u32::from(seq)));
        send(&p).await;
        sent1.push(p);
    }
    // System 2: two packets in one datagram with garbage between them, then a heartbeat.
    let a = packet(MavlinkVersion::V2, 2, 0, &attitude(1));
    let b = packet(MavlinkVersion::V2, 2, 1, &attitude(2));
    let mut dgram = a.clone();
    dgram.extend_from_slice(b"\x00\x01junk");
    dgram.extend_from_slice(&b);
    send(&dgram).await;
    send(&packet(MavlinkVersion::V2, 2, 2, &heartbeat())).await;
    // A third system is over max_systems = 2: dropped and counted.
    send(&packet(MavlinkVersion::V2, 3, 0, &heartbeat())).await;
    send(b"garbage datagram").await;

    let lines = wait_lines(&out, 12).await;
    let of = |agent: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|v| v["agent_id"] == agent).collect()
    };
    let s1 = of("mavlink-sys-1");
    assert_eq!(s1.len(), 9);
    for (i, (v, p)) in s1.iter().zip(&sent1).enumerate() {
        assert_eq!(
            v["seq"],
            i as u64 + 1,
            "the relay numbers frames per system"
        );
        assert_eq!(v["kind"], 30);
        assert_eq!(v["content_type"], MAV);
        assert_eq!(v["payload_b64"], b64(p), "the packet byte for byte");
        assert_eq!(v["mavlink"]["name"], "ATTITUDE");
    }
    let s2 = of("mavlink-sys-2");
    let names: Vec<&str> = s2
        .iter()
        .filter_map(|v| v["mavlink"]["name"].as_str())
        .collect();
    assert_eq!(names, ["ATTITUDE", "ATTITUDE", "HEARTBEAT"]);
    assert_eq!(s2[1]["payload_b64"], b64(&b));
    assert!(of("mavlink-sys-3").is_empty());
    let http = relay.http();
    let v = drone_status(&http, "mavlink-sys-1")
        .await
        .expect("system 1 has a session");
    assert_eq!(v["frames"], 9);
    poll_until_async(
        DEADLINE,
        "one lost packet and one refused system counted",
        async || lost() - lost_before >= 1.0 && over() - over_before >= 1.0,
    )
    .await;
    assert_eq!(lost() - lost_before, 1.0, "the one sequence gap");

    // Silent systems end their sessions after idle_timeout_ms.
    poll_until_async(DEADLINE, "idle systems' sessions ended", async || {
        drone_status(&http, "mavlink-sys-1").await.is_none()
            && drone_status(&http, "mavlink-sys-2").await.is_none()
    })
    .await;
}

/// Fields of every entry of a Redis stream, in order.
fn redis_entries(
    redis: &contrail_testsupport::RedisServer,
    key: &str,
) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
    let page: Vec<(String, std::collections::HashMap<String, Vec<u8>>)> =
        redis.cmd(&["XRANGE", key, "-", "+"]);
    page.into_iter().map(|(_, fields)| fields).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_entries_carry_decoded_mavlink_fields() {
    let redis = tokio::task::block_in_place(contrail_testsupport::RedisServer::start);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.sinks = vec![toml::from_str(&format!(
        "name = \"redis\"\ntype = \"redis_streams\"\nrequired = true\nurl = \"{}\"\ntimeout_ms = 2000",
        redis.url()
    ))
    .expect("redis sink")];
    let relay = start_with(config, dir, vec![], Hooks::default()).await;
    let agent = relay.agent("drone-redis-mav").await;
    let good = packet(MavlinkVersion::V2, 5, 17, &attitude(4242));
    for (payload, content_type) in [(&good[..], MAV), (b"garbage".as_slice(), MAV)] {
        agent
            .send_many(1, |_| OutFrame {
                kind: 30,
                flight_id: "",
                payload,
                content_type,
                device_time: 0,
            })
            .await
            .expect("send");
    }
    agent.flush().await.expect("acked: both written to Redis");
    let entries =
        tokio::task::block_in_place(|| redis_entries(&redis, "contrail:telemetry:drone-redis-mav"));
    assert_eq!(entries.len(), 2);
    let e = &entries[0];
    let text = |k: &str| String::from_utf8_lossy(&e[k]).into_owned();
    assert_eq!(e["payload"], good, "the raw packet");
    assert_eq!(text("mavlink_name"), "ATTITUDE");
    assert_eq!(text("mavlink_system_id"), "5");
    assert_eq!(text("mavlink_component_id"), "1");
    assert_eq!(text("mavlink_sequence"), "17");
    let fields: serde_json::Value =
        serde_json::from_slice(&e["mavlink_fields"]).expect("fields are JSON");
    assert_eq!(fields["time_boot_ms"], 4242);
    assert_eq!(fields["roll"], 0.5);
    // Garbage: raw only.
    assert_eq!(entries[1]["payload"], b"garbage");
    assert!(
        !entries[1].contains_key("mavlink_name"),
        "{:?}",
        entries[1].keys()
    );
}
