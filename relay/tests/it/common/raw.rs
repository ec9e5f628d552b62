#![allow(dead_code)]

//! A hand-driven agent for protocol-violation tests.
use bytes::{BufMut, BytesMut};
use contrail_protocol::proto::{control_message::Msg, ControlMessage, Register};
use contrail_protocol::{ErrorCode, FrameCodec};

pub async fn connect(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: std::net::SocketAddr,
) -> quinn::Connection {
    ep.connect_with(cfg, addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake")
}

/// Opens the control stream and sends `Register { agent_id }` without waiting for the answer.
pub async fn send_register(
    conn: &quinn::Connection,
    agent: &str,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = conn.open_bi().await.expect("bi");
    let mut buf = BytesMut::new();
    FrameCodec::default()
        .encode(
            &ControlMessage {
                msg: Some(Msg::Register(Register {
                    agent_id: agent.into(),
                    ..Default::default()
                })),
            },
            &mut buf,
        )
        .expect("encode");
    send.write_all(&buf).await.expect("write register");
    (send, recv)
}

pub async fn register(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: std::net::SocketAddr,
    agent: &str,
) -> quinn::Connection {
    let conn = connect(ep, cfg, addr).await;
    let (send, mut recv) = send_register(&conn, agent).await;
    read_registered(&mut recv).await;
    // Keep the control stream open for the session's life.
    std::mem::forget(send);
    std::mem::forget(recv);
    conn
}

pub fn frames(first: u64, count: u64, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    for seq in first..first + count {
        contrail_protocol::codec::encode_telemetry(&mut b, seq, 1, 0, 1, "", payload, "");
    }
    b
}

pub fn prefix(len: u32, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32(len);
    b.put_slice(body);
    b
}

pub async fn close_code(conn: &quinn::Connection) -> Option<ErrorCode> {
    match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            ErrorCode::from_close_code(c.error_code.into_inner())
        }
        other => panic!("expected an application close, got {other}"),
    }
}

/// Reads the control stream until the relay's first message, which must be `Registered`.
pub async fn read_registered(recv: &mut quinn::RecvStream) {
    let mut inbuf = BytesMut::new();
    loop {
        if let Some(m) = FrameCodec::default()
            .decode_message::<ControlMessage>(&mut inbuf)
            .expect("decode")
        {
            assert!(matches!(m.msg, Some(Msg::Registered(_))), "got {m:?}");
            return;
        }
        let chunk = recv
            .read_chunk(65536, true)
            .await
            .expect("read")
            .expect("registered");
        inbuf.extend_from_slice(&chunk.bytes);
    }
}
