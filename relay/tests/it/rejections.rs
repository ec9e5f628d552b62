//! Rejections say why, then close (DESIGN "Contract additions"): a raw client reads
//! `Error{code, message}` on its control stream before the connection closes with that code,
//! for refused Registers and for violations after `Registered`.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use contrail_protocol::proto::{control_message::Msg, ControlMessage, Register};
use contrail_protocol::{ErrorCode, FrameCodec};

use crate::common::*;

/// Sends `Register{agent_id, auth_token}` on a new control stream.
async fn send_register(
    conn: &quinn::Connection,
    agent: &str,
    token: &str,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = conn.open_bi().await.expect("bi");
    let mut buf = BytesMut::new();
    FrameCodec::default()
        .encode(
            &ControlMessage {
                msg: Some(Msg::Register(Register {
                    agent_id: agent.into(),
                    auth_token: token.into(),
                    ..Default::default()
                })),
            },
            &mut buf,
        )
        .expect("encode");
    send.write_all(&buf).await.expect("write register");
    (send, recv)
}

/// The next control message, or `None` when the stream ends or the connection closes first.
async fn next_message(recv: &mut quinn::RecvStream, inbuf: &mut BytesMut) -> Option<Msg> {
    loop {
        if let Some(m) = FrameCodec::default()
            .decode_message::<ControlMessage>(inbuf)
            .expect("decode")
        {
            return m.msg;
        }
        match recv.read_chunk(65536, true).await {
            Ok(Some(chunk)) => inbuf.extend_from_slice(&chunk.bytes),
            _ => return None,
        }
    }
}

/// Reads control messages until an `Error` (skipping acks, pongs...); `None` if none came.
async fn read_error(
    recv: &mut quinn::RecvStream,
    inbuf: &mut BytesMut,
) -> Option<contrail_protocol::proto::Error> {
    loop {
        match next_message(recv, inbuf).await? {
            Msg::Error(e) => return Some(e),
            _ => continue,
        }
    }
}

/// A registered raw session that keeps its control stream.
struct RawSession {
    conn: quinn::Connection,
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    inbuf: BytesMut,
}

async fn raw_registered(relay: &TestRelay, agent: &str) -> (quinn::Endpoint, RawSession) {
    let (ep, cfg) = relay.raw_client(contrail_protocol::ALPN_AGENT);
    let conn = raw::connect(&ep, cfg, relay.relay.local_addr()).await;
    let (send, mut recv) = send_register(&conn, agent, "").await;
    let mut inbuf = BytesMut::new();
    match next_message(&mut recv, &mut inbuf).await {
        Some(Msg::Registered(_)) => {}
        other => panic!("expected Registered, got {other:?}"),
    }
    (
        ep,
        RawSession {
            conn,
            _send: send,
            recv,
            inbuf,
        },
    )
}

/// Writes `bytes` on a new telemetry stream and returns when the write was queued.
async fn send_telemetry(conn: &quinn::Connection, bytes: &[u8]) -> quinn::SendStream {
    let mut uni = conn.open_uni().await.expect("uni");
    uni.write_all(bytes).await.expect("write telemetry");
    uni
}

/// After `Registered`: `violation` written on the telemetry stream; the raw client reads the
/// Error with `code`, then the connection closes with it. Returns (time to the Error, time to
/// the close) from the write.
async fn violation_is_explained(
    relay: &TestRelay,
    agent: &str,
    violation: &[u8],
    code: ErrorCode,
) -> (Duration, Duration) {
    let (_ep, mut s) = raw_registered(relay, agent).await;
    let start = Instant::now();
    let _uni = send_telemetry(&s.conn, violation).await;
    let err = read_error(&mut s.recv, &mut s.inbuf)
        .await
        .unwrap_or_else(|| panic!("{agent}: no Error message before the close"));
    let to_error = start.elapsed();
    assert_eq!(err.code, code as i32, "{agent}: {err:?}");
    assert!(!err.message.is_empty(), "{agent}: the Error says why");
    assert_eq!(raw::close_code(&s.conn).await, Some(code), "{agent}");
    (to_error, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violations_after_registered_deliver_the_error_before_the_close() {
    let (relay, _rx) = start_with_channel(1024).await;
    let max = relay.relay.core().config.limits.max_frame_bytes as u32;
    let mut delays = Vec::new();
    for i in 0..5 {
        // A gap: the first frame must be seq 1.
        delays.push(
            violation_is_explained(
                &relay,
                &format!("gap-{i}"),
                &raw::frames(5, 1, b"x"),
                ErrorCode::ProtocolViolation,
            )
            .await,
        );
        // A length prefix above max_frame_bytes.
        delays.push(
            violation_is_explained(
                &relay,
                &format!("big-{i}"),
                &raw::prefix(max + 1, b"xxxx"),
                ErrorCode::FrameTooLarge,
            )
            .await,
        );
    }
    // Measurement only (no timing assertion): see the report of issue 18 item 2.
    eprintln!("violation -> (Error, close): {delays:?}");
}
