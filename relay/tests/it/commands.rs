//! Command downlink (issue 21): real PostgreSQL, real Redis, real relays on loopback QUIC.

use std::time::Duration;

use bytes::BytesMut;
use contrail_protocol::proto::{
    control_message::Msg, CommandAccepted, CommandOutput, CommandResult, CommandStatus,
    ControlMessage, OutputStream, Register,
};
use contrail_protocol::FrameCodec;
use contrail_testsupport::{poll_until_async, PostgresServer, RedisServer};
use serde_json::json;

use crate::commands_support::*;

async fn postgres() -> PostgresServer {
    tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .expect("postgres")
}

/// The "done when": `echo hello` to a drone on relay B, submitted through relay A's
/// API, read back through relay A; GET names relay B as the drone's relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_hello_to_a_drone_on_relay_b_through_relay_a() {
    let pg = postgres().await;
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("redis");
    let a = relay("relay-a", Some(&pg.url()), Some(&redis.addr().to_string())).await;
    let b = relay("relay-b", Some(&pg.url()), Some(&redis.addr().to_string())).await;
    let state = tempfile::tempdir().expect("state");
    let (_agent, mut commands) = command_agent(&b, "drone-7", state.path()).await;
    let runner = tokio::spawn(async move {
        let cmd = commands.next().await.expect("a command");
        run_allowlisted(cmd).await;
        commands
    });
    let api = Api::new(&a);
    poll_until_async(
        Duration::from_secs(10),
        "drone routed to relay-b",
        || async {
            redis
                .try_cmd::<Option<String>>(&["GET", "drone:drone-7"])
                .ok()
                .flatten()
                .is_some_and(|s| s.contains("relay-b"))
        },
    )
    .await;
    // The queue learns the drone when its session records it (after Redis may show it).
    wait_recorded(&pg, "drone-7").await;
    let (status, v) = api
        .submit(OPERATOR, "drone-7", echo(&["echo", "hello"]), None)
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["status"], "queued");
    assert_eq!(v["drone_relay_id"], "relay-b");
    let id = v["id"].as_str().expect("id").to_owned();
    api.wait_status(&id, "succeeded").await;
    let done = api.wait_stdout(&id, "hello\n").await;
    assert_eq!(done["exit"]["code"], 0);
    assert_eq!(done["delivered_by_relay"], "relay-b");
    assert_eq!(done["submitted_by"], "ops");
    assert!(done["accepted_unix_ms"].as_u64().is_some());
    let _ = runner.await.expect("runner");
    // Listed for the drone, and filterable by status.
    let (s, list) = api
        .get(
            VIEWER,
            "/v1/drones/drone-7/commands?status=succeeded&limit=10",
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(list["total"], 1);
    assert_eq!(list["commands"][0]["id"], id.as_str());
    let (_, none) = api
        .get(VIEWER, "/v1/drones/drone-7/commands?status=queued")
        .await;
    assert_eq!(none["total"], 0);
}

/// Every refusal of the submit endpoint has its own status and code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submits_are_refused_with_their_own_codes() {
    let pg = postgres().await;
    let a = relay("relay-a", Some(&pg.url()), None).await;
    let state = tempfile::tempdir().expect("state");
    let (agent, _commands) = command_agent(&a, "drone-1", state.path()).await;
    let api = Api::new(&a);
    let code = |v: &serde_json::Value| v["code"].as_str().unwrap_or_default().to_owned();

    let (s, v) = api
        .submit(OPERATOR, "nobody", echo(&["echo", "x"]), None)
        .await;
    assert_eq!((s, code(&v).as_str()), (404, "unknown_drone"));

    let big = "x".repeat(2000);
    let (s, v) = api
        .submit(
            OPERATOR,
            "drone-1",
            json!({"type": "run_command", "payload": {"argv": ["echo", big]}}),
            None,
        )
        .await;
    assert_eq!((s, code(&v).as_str()), (413, "payload_too_large"));

    let (s, v) = api
        .submit(
            OPERATOR,
            "drone-1",
            json!({"type": "run_command", "payload": {}, "deadline_unix_ms": 1_000}),
            None,
        )
        .await;
    assert_eq!((s, code(&v).as_str()), (422, "deadline_in_past"));

    let (s, v) = api
        .submit(VIEWER, "drone-1", echo(&["echo", "x"]), None)
        .await;
    assert_eq!((s, code(&v).as_str()), (403, "forbidden"));

    let (s, v) = api
        .submit("wrong-token", "drone-1", echo(&["echo", "x"]), None)
        .await;
    assert_eq!((s, code(&v).as_str()), (401, "unauthorized"));

    // Idempotency: same key and body → the same command; a different body → 409.
    let (s1, first) = api
        .submit(OPERATOR, "drone-1", echo(&["echo", "once"]), Some("k-1"))
        .await;
    assert_eq!(s1, 201, "{first}");
    let (s2, again) = api
        .submit(OPERATOR, "drone-1", echo(&["echo", "once"]), Some("k-1"))
        .await;
    assert_eq!(s2, 200, "{again}");
    assert_eq!(first["id"], again["id"]);
    let (s3, v) = api
        .submit(OPERATOR, "drone-1", echo(&["echo", "twice"]), Some("k-1"))
        .await;
    assert_eq!((s3, code(&v).as_str()), (409, "idempotency_conflict"));
    let rows = pg
        .psql("SELECT count(*) FROM commands WHERE idempotency_key = 'k-1'")
        .expect("psql");
    assert_eq!(rows, "1");

    // Reads: unknown command, viewer may read, viewer may not cancel.
    let (s, v) = api
        .get(VIEWER, "/v1/commands/00000000000000000000000000000000")
        .await;
    assert_eq!((s, code(&v).as_str()), (404, "command_not_found"));
    let id = first["id"].as_str().expect("id");
    let (s, v) = api.post(VIEWER, &format!("/v1/commands/{id}/cancel")).await;
    assert_eq!((s, code(&v).as_str()), (403, "forbidden"));
    drop(agent);
}

/// Cancel: an open command becomes cancelled (the agent is told); a final one answers 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_tells_the_agent_and_is_final() {
    let pg = postgres().await;
    let a = relay("relay-a", Some(&pg.url()), None).await;
    let state = tempfile::tempdir().expect("state");
    let (_agent, mut commands) = command_agent(&a, "drone-c", state.path()).await;
    let api = Api::new(&a);
    let (s, v) = api
        .submit(OPERATOR, "drone-c", echo(&["echo", "slow"]), None)
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    let cmd = tokio::time::timeout(Duration::from_secs(10), commands.next())
        .await
        .expect("delivered in time")
        .expect("command");
    api.wait_status(&id, "running").await;
    let mut handle = cmd.handle;
    let (s, v) = api
        .post(OPERATOR, &format!("/v1/commands/{id}/cancel"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "cancelled");
    tokio::time::timeout(Duration::from_secs(10), handle.cancelled())
        .await
        .expect("the agent hears the cancel");
    handle
        .finish(contrail_protocol::client::commands::Outcome::cancelled())
        .await
        .expect("report");
    let (s, v) = api
        .post(OPERATOR, &format!("/v1/commands/{id}/cancel"))
        .await;
    assert_eq!((s, v["code"].as_str()), (409, Some("already_final")));
    assert_eq!(api.command(&id).await["status"], "cancelled");
}

/// A command for an offline drone waits until its deadline, then expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_drone_command_expires_at_its_deadline() {
    let pg = postgres().await;
    let a = relay("relay-a", Some(&pg.url()), None).await;
    let state = tempfile::tempdir().expect("state");
    let (agent, _c) = command_agent(&a, "drone-off", state.path()).await;
    wait_recorded(&pg, "drone-off").await;
    agent.close().await.expect("close");
    let api = Api::new(&a);
    let (s, v) = api
        .submit(
            OPERATOR,
            "drone-off",
            json!({"type": "run_command", "payload": {}, "timeout_ms": 300}),
            None,
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id");
    let v = api.wait_status(id, "expired").await;
    assert!(v["delivered_unix_ms"].is_null());
}

/// PostgreSQL down: submits fail with 503 and nothing is written; back up, submits work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_submit_is_503_and_nothing_half_written() {
    let mut pg = postgres().await;
    let a = relay("relay-a", Some(&pg.url()), None).await;
    let state = tempfile::tempdir().expect("state");
    let (_agent, _c) = command_agent(&a, "drone-pg", state.path()).await;
    let api = Api::new(&a);
    wait_recorded(&pg, "drone-pg").await;
    tokio::task::block_in_place(|| pg.stop());
    let (s, v) = api
        .submit(OPERATOR, "drone-pg", echo(&["echo", "x"]), Some("down-1"))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (503, Some("store_unavailable")),
        "{v}"
    );
    tokio::task::block_in_place(|| pg.restart());
    assert_eq!(pg.psql("SELECT count(*) FROM commands").expect("psql"), "0");
    // The same retry now goes through (the pool reconnects).
    let (s, v) = poll_until_async(Duration::from_secs(10), "submit after restart", || async {
        let (s, v) = api
            .submit(OPERATOR, "drone-pg", echo(&["echo", "x"]), Some("down-1"))
            .await;
        (s != 503).then_some((s, v))
    })
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(pg.psql("SELECT count(*) FROM commands").expect("psql"), "1");
}

/// The relay that took the submit is killed before the drone connects; the drone then connects
/// to another relay, which delivers the command from the durable queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_between_submit_and_delivery_another_relay_delivers() {
    let pg = postgres().await;
    let a = relay("relay-a", Some(&pg.url()), None).await;
    let state = tempfile::tempdir().expect("state");
    {
        let (agent, _c) = command_agent(&a, "drone-k", state.path()).await;
        wait_recorded(&pg, "drone-k").await;
        agent.close().await.expect("close");
    }
    let api = Api::new(&a);
    let (s, v) = api
        .submit(OPERATOR, "drone-k", echo(&["echo", "after-kill"]), None)
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_owned();
    drop(a); // killed: no drain
    let b = relay("relay-b", Some(&pg.url()), None).await;
    let (_agent, mut commands) = command_agent(&b, "drone-k", state.path()).await;
    let cmd = tokio::time::timeout(Duration::from_secs(10), commands.next())
        .await
        .expect("delivered in time")
        .expect("command");
    assert_eq!(cmd.id, id);
    run_allowlisted(cmd).await;
    let api_b = Api::new(&b);
    api_b.wait_status(&id, "succeeded").await;
    let v = api_b.wait_stdout(&id, "after-kill\n").await;
    assert_eq!(v["delivered_by_relay"], "relay-b");
    assert!(commands.try_next().is_none(), "delivered once");
}

/// A drone that moves to another relay mid-command finishes it there; the relay re-sends the
/// running command and the agent does not run it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drone_moving_relays_mid_command_finishes_once() {
    let pg = postgres().await;
    let a = relay("relay-a", Some(&pg.url()), None).await;
    let b = relay("relay-b", Some(&pg.url()), None).await;
    let state = tempfile::tempdir().expect("state");
    let mut cfg = a.client_config("drone-m");
    cfg.relays.push(b.relay.local_addr());
    cfg.trust =
        contrail_protocol::client::Trust::CaDer(vec![a.relay.certificate(), b.relay.certificate()]);
    let (agent, mut commands) = contrail_protocol::client::Agent::connect_with_commands(
        cfg,
        contrail_protocol::client::commands::CommandOptions::new(state.path()),
    )
    .await
    .expect("agent");
    let api = Api::new(&a);
    let (_, v) = api
        .submit(OPERATOR, "drone-m", echo(&["echo", "moved"]), None)
        .await;
    let id = v["id"].as_str().expect("id").to_owned();
    let cmd = tokio::time::timeout(Duration::from_secs(10), commands.next())
        .await
        .expect("in time")
        .expect("command");
    api.wait_status(&id, "running").await;
    // Relay A drains; the agent moves to relay B while the command runs.
    let drained = tokio::spawn(async move { a.relay.drain("deploy").await });
    poll_until_async(Duration::from_secs(15), "agent on relay-b", || async {
        agent.session().is_some_and(|s| s.relay_id == "relay-b")
    })
    .await;
    run_allowlisted(cmd).await;
    let api_b = Api::new(&b);
    api_b.wait_status(&id, "succeeded").await;
    api_b.wait_stdout(&id, "moved\n").await;
    assert!(commands.try_next().is_none(), "not handed out twice");
    drained.await.expect("drain");
}

/// The agent dies while a command runs: after it restarts, the result says so, and the command
/// is not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_while_running_reports_it_and_never_reruns() {
    let pg = postgres().await;
    let a = relay("relay-a", Some(&pg.url()), None).await;
    let state = tempfile::tempdir().expect("state");
    let api = Api::new(&a);
    let id = {
        let (agent, mut commands) = command_agent(&a, "drone-x", state.path()).await;
        let (_, v) = api
            .submit(OPERATOR, "drone-x", echo(&["echo", "never twice"]), None)
            .await;
        let id = v["id"].as_str().expect("id").to_owned();
        let cmd = tokio::time::timeout(Duration::from_secs(10), commands.next())
            .await
            .expect("in time")
            .expect("command");
        api.wait_status(&id, "running").await;
        // Killed: the handle never reports (no drop handler runs in a killed process).
        std::mem::forget(cmd.handle);
        drop(agent);
        drop(commands);
        id
    };
    let (_agent, mut commands) = command_agent(&a, "drone-x", state.path()).await;
    let v = api.wait_status(&id, "failed").await;
    assert!(
        v["exit"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("restarted")),
        "{v}"
    );
    assert!(commands.try_next().is_none(), "not run again");
}

fn encode(m: Msg) -> BytesMut {
    let mut b = BytesMut::new();
    FrameCodec::default()
        .encode(&ControlMessage { msg: Some(m) }, &mut b)
        .expect("encode");
    b
}

async fn read_msg(recv: &mut quinn::RecvStream, buf: &mut BytesMut) -> Msg {
    loop {
        if let Some(m) = FrameCodec::default()
            .decode_message::<ControlMessage>(buf)
            .expect("decode")
        {
            if let Some(msg) = m.msg {
                return msg;
            }
        }
        let c = recv
            .read_chunk(65536, true)
            .await
            .expect("read")
            .expect("open");
        buf.extend_from_slice(&c.bytes);
    }
}

/// A raw agent: registers with the `commands` capability, waits for a `Command`, accepts it,
/// and sends output chunks on the second uni stream.
async fn raw_session(
    relay: &crate::common::TestRelay,
    chunks: &[(u64, &[u8])],
    finish: bool,
) -> (quinn::Connection, String) {
    let (ep, cfg) = relay.raw_client(contrail_protocol::ALPN_AGENT);
    let conn = crate::common::raw::connect(&ep, cfg, relay.relay.local_addr()).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    send.write_all(&encode(Msg::Register(Register {
        agent_id: "drone-raw".into(),
        capabilities: vec!["commands".into()],
        ..Default::default()
    })))
    .await
    .expect("register");
    let mut buf = BytesMut::new();
    assert!(matches!(
        read_msg(&mut recv, &mut buf).await,
        Msg::Registered(_)
    ));
    let mut telemetry = conn.open_uni().await.expect("telemetry");
    telemetry
        .write_all(&crate::common::raw::frames(1, 1, b"t"))
        .await
        .expect("frame");
    let id = loop {
        match tokio::time::timeout(Duration::from_secs(10), read_msg(&mut recv, &mut buf))
            .await
            .expect("command in time")
        {
            Msg::Command(c) => break c.id,
            _ => continue,
        }
    };
    send.write_all(&encode(Msg::CommandAccepted(CommandAccepted {
        id: id.clone(),
    })))
    .await
    .expect("accepted");
    let mut out = conn.open_uni().await.expect("output stream");
    for (offset, data) in chunks {
        out.write_all(&encode(Msg::CommandOutput(CommandOutput {
            id: id.clone(),
            stream: OutputStream::Stdout as i32,
            offset: *offset,
            data: bytes::Bytes::copy_from_slice(data),
        })))
        .await
        .expect("chunk");
    }
    if finish {
        send.write_all(&encode(Msg::CommandResult(CommandResult {
            id: id.clone(),
            status: CommandStatus::Succeeded as i32,
            exit_code: 0,
            message: String::new(),
        })))
        .await
        .expect("result");
    }
    std::mem::forget(send);
    std::mem::forget(recv);
    std::mem::forget(telemetry);
    std::mem::forget(out);
    std::mem::forget(ep);
    (conn, id)
}

/// Raw frames: output chunks resent after a reconnect (and a chunk at a stored offset with
/// other bytes) are stored once; telemetry keeps flowing on its own stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_chunks_resent_after_reconnect_are_stored_once() {
    let pg = postgres().await;
    let a = relay("relay-a", Some(&pg.url()), None).await;
    // The drone must be known before a submit: a first raw session records it.
    let api = Api::new(&a);
    let first = tokio::spawn({
        let (ep, cfg) = a.raw_client(contrail_protocol::ALPN_AGENT);
        let addr = a.relay.local_addr();
        async move {
            let conn = crate::common::raw::connect(&ep, cfg, addr).await;
            let (mut send, mut recv) = conn.open_bi().await.expect("bi");
            send.write_all(&encode(Msg::Register(Register {
                agent_id: "drone-raw".into(),
                capabilities: vec!["commands".into()],
                ..Default::default()
            })))
            .await
            .expect("register");
            let mut buf = BytesMut::new();
            let _ = read_msg(&mut recv, &mut buf).await;
            (conn, send, recv, ep)
        }
    })
    .await
    .expect("first session");
    wait_recorded(&pg, "drone-raw").await;
    first.0.close(0u32.into(), b"bye");
    let (s, v) = api
        .submit(OPERATOR, "drone-raw", echo(&["echo", "hello"]), None)
        .await;
    assert_eq!(s, 201, "{v}");
    let (conn1, id) = raw_session(&a, &[(0, b"hel"), (3, b"lo")], false).await;
    poll_until_async(Duration::from_secs(10), "two chunks stored", || async {
        pg.psql(&format!(
            "SELECT count(*) FROM command_output WHERE command_id = '{id}'"
        ))
        .ok()
        .as_deref()
            == Some("2")
    })
    .await;
    conn1.close(0u32.into(), b"cut");
    // Reconnect: the relay sends the (running) command again; the agent resends everything,
    // plus other bytes at a stored offset.
    let (_conn2, id2) = raw_session(
        &a,
        &[(0, b"hel"), (3, b"lo"), (0, b"XXX"), (5, b"\n")],
        true,
    )
    .await;
    assert_eq!(id, id2, "the open command is delivered again");
    let v = api.wait_status(&id, "succeeded").await;
    poll_until_async(Duration::from_secs(10), "third chunk stored", || async {
        pg.psql(&format!(
            "SELECT count(*) FROM command_output WHERE command_id = '{id}'"
        ))
        .ok()
        .as_deref()
            == Some("3")
    })
    .await;
    let v2 = api.command(&id).await;
    assert_eq!(v2["output"]["stdout"], "hello\n", "{v}");
    assert_eq!(v2["output"]["bytes"], 6);
}

/// Without a database, commands live in memory; a drone that Redis shows on another relay is
/// refused (no pretending), and `/readyz` says commands are lost on restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_refuses_drones_held_by_another_relay() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("redis");
    let addr = redis.addr().to_string();
    let a = relay("relay-a", None, Some(&addr)).await;
    let b = relay("relay-b", None, Some(&addr)).await;
    let state = tempfile::tempdir().expect("state");
    let (_agent, mut commands) = command_agent(&b, "drone-mem", state.path()).await;
    poll_until_async(
        Duration::from_secs(10),
        "drone routed to relay-b",
        || async {
            redis
                .try_cmd::<Option<String>>(&["GET", "drone:drone-mem"])
                .ok()
                .flatten()
                .is_some_and(|s| s.contains("relay-b"))
        },
    )
    .await;
    let (s, v) = Api::new(&a)
        .submit(OPERATOR, "drone-mem", echo(&["echo", "x"]), None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("drone_on_other_relay")),
        "{v}"
    );
    // Relay B holds it and serves it from memory.
    let api_b = Api::new(&b);
    let (s, v) = api_b
        .submit(OPERATOR, "drone-mem", echo(&["echo", "mem"]), None)
        .await;
    assert_eq!(s, 201, "{v}");
    let cmd = tokio::time::timeout(Duration::from_secs(10), commands.next())
        .await
        .expect("in time")
        .expect("command");
    run_allowlisted(cmd).await;
    let id = v["id"].as_str().expect("id");
    api_b.wait_status(id, "succeeded").await;
    api_b.wait_stdout(id, "mem\n").await;
    let ready: serde_json::Value = reqwest::get(format!("{}/readyz", b.http()))
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert!(ready.to_string().contains("lost on restart"), "{ready}");
}
