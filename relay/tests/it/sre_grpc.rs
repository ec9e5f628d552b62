//! Seed 003's gRPC RelayControl, called with a tonic client generated from
//! `protocol/proto/relay_control.proto`: real answers from a relay with live agents, the viewer
//! token enforced as on the HTTP API, fleet-wide answers from the Redis registry.

use std::time::Duration;

use contrail_control::grpc::pb::relay_control_client::RelayControlClient;
use contrail_control::grpc::pb::{GetDroneStatusRequest, ListActiveDronesRequest};
use contrail_testsupport::{poll_until_async, RedisServer};
use tonic::transport::Channel;

use crate::common::{channel_sink, send_n, test_config, TestRelay};

const DEADLINE: Duration = Duration::from_secs(15);

async fn relay_with_grpc(
    id: &str,
    viewer: Option<&str>,
    redis: Option<&RedisServer>,
) -> (TestRelay, std::net::SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.relay_id = Some(id.into());
    c.http.viewer_token = viewer.map(str::to_owned);
    c.redis.addr = redis.map(|r| r.addr().to_string());
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind grpc");
    let addr = grpc.local_addr().expect("addr");
    let udp = std::net::UdpSocket::bind(c.listen).expect("udp");
    let http = tokio::net::TcpListener::bind(c.http.listen)
        .await
        .expect("http");
    // A required in-memory sink (drained), so frames are acked without printing them.
    let (spec, mut rx) = channel_sink("chan", true, 1024);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let relay = contrail_relay::RelayBuilder::new(c)
        .sink(spec)
        .grpc(grpc)
        .start(udp, http)
        .await
        .expect("relay starts");
    (TestRelay { relay, dir }, addr)
}

async fn client(addr: std::net::SocketAddr) -> RelayControlClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("grpc connects");
    RelayControlClient::new(ch)
}

fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_control_answers_with_live_sessions() {
    let (relay, addr) = relay_with_grpc("grpc-a", None, None).await;
    let a = relay.agent("g-2").await;
    let b = relay.agent("g-1").await;
    send_n(&a, 50, &[3u8; 40]).await;
    a.wait_acked(50).await.expect("acked");
    let mut c = client(addr).await;
    let list = c
        .list_active_drones(ListActiveDronesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<_> = list.drones.iter().map(|d| d.agent_id.as_str()).collect();
    assert_eq!(ids, ["g-1", "g-2"], "ordered by agent id");
    assert_eq!(list.total, 2);
    assert!(list.next_page_token.is_empty());
    // Paging.
    let p1 = c
        .list_active_drones(ListActiveDronesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!((p1.drones.len(), p1.next_page_token.as_str()), (1, "1"));
    let p2 = c
        .list_active_drones(ListActiveDronesRequest {
            page_size: 1,
            page_token: p1.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(p2.drones[0].agent_id, "g-2");
    assert!(p2.next_page_token.is_empty());
    let bad = c
        .list_active_drones(ListActiveDronesRequest {
            page_token: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    // Status: the same numbers as the HTTP API.
    let st = c
        .get_drone_status(GetDroneStatusRequest {
            agent_id: "g-2".into(),
            fleet_wide: false,
        })
        .await
        .expect("status")
        .into_inner()
        .status
        .expect("status set");
    let session = a.session().expect("session");
    assert_eq!(st.session_id, session.session_id.to_string());
    assert_eq!(
        (st.relay_id.as_str(), st.local, st.frames),
        ("grpc-a", true, 50)
    );
    assert!(st.bytes >= 50 * 40, "{}", st.bytes);
    assert!(st.connected_since_unix_ms > 0 && st.last_heartbeat_unix_ms > 0);
    let http: serde_json::Value = reqwest::get(format!("{}/v1/drones/g-2", relay.http()))
        .await
        .expect("http")
        .json()
        .await
        .expect("json");
    assert_eq!(http["frames"], st.frames);
    assert_eq!(http["bytes"], st.bytes);
    assert_eq!(http["remote_addr"], st.remote_addr);
    let missing = c
        .get_drone_status(GetDroneStatusRequest {
            agent_id: "nobody".into(),
            fleet_wide: false,
        })
        .await
        .expect_err("absent");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    // A drone that leaves is no longer listed.
    b.close().await.expect("close");
    poll_until_async(DEADLINE, "g-1 gone", async || {
        let l = c
            .list_active_drones(ListActiveDronesRequest::default())
            .await
            .ok()?
            .into_inner();
        (l.total == 1).then_some(())
    })
    .await;
    a.close().await.expect("close");
    relay.relay.drain("test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_control_needs_the_viewer_token_and_reads_the_fleet() {
    let redis = RedisServer::start();
    let (r1, addr1) = relay_with_grpc("grpc-v1", Some("grpc-view"), Some(&redis)).await;
    let (r2, _addr2) = relay_with_grpc("grpc-v2", None, Some(&redis)).await;
    let a = r2.agent("far-drone").await;
    let mut c = client(addr1).await;
    let denied = c
        .list_active_drones(ListActiveDronesRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let denied = c
        .list_active_drones(bearer(ListActiveDronesRequest::default(), "wrong"))
        .await
        .expect_err("wrong token");
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    let local = c
        .list_active_drones(bearer(ListActiveDronesRequest::default(), "grpc-view"))
        .await
        .expect("local list")
        .into_inner();
    assert_eq!(local.total, 0, "no drone on this relay");
    let st = poll_until_async(DEADLINE, "far drone via the registry", async || {
        c.get_drone_status(bearer(
            GetDroneStatusRequest {
                agent_id: "far-drone".into(),
                fleet_wide: true,
            },
            "grpc-view",
        ))
        .await
        .ok()?
        .into_inner()
        .status
    })
    .await;
    assert_eq!((st.relay_id.as_str(), st.local), ("grpc-v2", false));
    assert_eq!(
        st.session_id,
        a.session().expect("session").session_id.to_string()
    );
    let fleet = c
        .list_active_drones(bearer(
            ListActiveDronesRequest {
                fleet_wide: true,
                ..Default::default()
            },
            "grpc-view",
        ))
        .await
        .expect("fleet list")
        .into_inner();
    assert_eq!(fleet.total, 1);
    a.close().await.expect("close");
    r1.relay.drain("test").await;
    r2.relay.drain("test").await;
}
