//! The relay's structure, checked from outside: the supervision tree does what
//! `relay/README.md` says (a failed child is seen by the relay root and handled by name), and
//! every metric name `/metrics` exports is one of `contrail_control::metric_names` and is
//! listed in CONTRACTS.md.

use std::time::Duration;

use contrail_control::metric_names;
use contrail_relay::{Hooks, RelayBuilder, RelayChild};
use contrail_testsupport::poll_until_async;

use crate::common::{
    channel_sink, collect_frames, metric_sum, metrics, send_n, start_with_channel, test_config,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sink_actor_is_restarted_by_the_root_and_its_sink_keeps_receiving() {
    metrics();
    let failures_before = metric_sum(metric_names::RELAY_CHILD_FAILURES, "child=\"sink\"");
    let (relay, mut rx) = start_with_channel(1024).await;
    let agent = relay.agent("drone-sup-sink").await;
    send_n(&agent, 10, &[1; 64]).await;
    assert_eq!(
        collect_frames(&mut rx, 10, Duration::from_secs(10))
            .await
            .len(),
        10
    );

    relay.relay.crash_child(RelayChild::Sink("chan".into()));
    poll_until_async(
        Duration::from_secs(10),
        "the root restarted sink:chan",
        || async {
            relay
                .relay
                .restarts()
                .await
                .get(&RelayChild::Sink("chan".into()))
                == Some(&1)
        },
    )
    .await;
    assert!(
        metric_sum(metric_names::RELAY_CHILD_FAILURES, "child=\"sink\"") >= failures_before + 1.0,
        "the failure is counted"
    );
    assert_eq!(
        relay.relay.restarts().await.get(&RelayChild::Sessions),
        None,
        "only the failed child restarts"
    );

    // The same queue under the new actor: frames keep flowing and are acked, and the session
    // was not touched.
    send_n(&agent, 20, &[2; 64]).await;
    let got = collect_frames(&mut rx, 20, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 20, "frames after the restart reach the sink");
    assert_eq!(got.last().map(|(_, s)| *s), Some(30));
    poll_until_async(Duration::from_secs(10), "all 30 acked", || async {
        agent.acked_seq() == 30
    })
    .await;
    assert_eq!(relay.relay.core().session_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_session_supervisor_takes_its_sessions_and_is_restarted_empty() {
    let (relay, mut rx) = start_with_channel(1024).await;
    // A raw agent: it never reconnects, so the count below can only reach 0 if the failed
    // supervisor's session actor is gone (a library agent would re-register at once).
    let (ep, cfg) = relay.raw_client(contrail_protocol::ALPN_AGENT);
    let conn =
        crate::common::raw::register(&ep, cfg, relay.relay.local_addr(), "drone-sup-sessions")
            .await;
    let mut uni = conn.open_uni().await.expect("uni");
    uni.write_all(&crate::common::raw::frames(1, 5, &[1; 64]))
        .await
        .expect("write frames");
    assert_eq!(
        collect_frames(&mut rx, 5, Duration::from_secs(10))
            .await
            .len(),
        5
    );

    relay.relay.crash_child(RelayChild::Sessions);
    poll_until_async(
        Duration::from_secs(10),
        "the root restarted the session supervisor",
        || async { relay.relay.restarts().await.get(&RelayChild::Sessions) == Some(&1) },
    )
    .await;
    // Its session actors died with it, each accounted for once by its state drop, and the
    // connection was closed with INTERNAL.
    poll_until_async(Duration::from_secs(10), "no session left", || async {
        relay.relay.core().session_count() == 0
    })
    .await;
    assert_eq!(
        tokio::time::timeout(
            Duration::from_secs(10),
            crate::common::raw::close_code(&conn)
        )
        .await
        .expect("closed"),
        Some(contrail_protocol::ErrorCode::Internal)
    );
    // The new supervisor registers sessions: an agent connects and its frames arrive.
    let again = relay.agent("drone-sup-sessions-2").await;
    send_n(&again, 5, &[3; 64]).await;
    let got = collect_frames(&mut rx, 5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|(a, _)| a == "drone-sup-sessions-2"));
    assert_eq!(relay.relay.core().session_count(), 1);
}

/// The base name of a Prometheus sample line: `name{labels} value` or `name value`, with a
/// summary's or histogram's `_sum` / `_count` / `_bucket` suffix removed.
fn base_name(line: &str) -> Option<&str> {
    let name = line.split(['{', ' ']).next()?;
    if !name.starts_with("contrail_") {
        return None;
    }
    for suffix in ["_sum", "_count", "_bucket"] {
        if let Some(b) = name.strip_suffix(suffix) {
            if metric_names::ALL.contains(&b) {
                return Some(b);
            }
        }
    }
    Some(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_name_on_metrics_is_a_known_name_listed_in_contracts() {
    let contracts =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../CONTRACTS.md"))
            .expect("read CONTRACTS.md");
    // Every known name is documented (whether or not this run emitted it).
    let undocumented: Vec<&str> = metric_names::ALL
        .iter()
        .copied()
        .filter(|n| !contracts.contains(n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "names missing from CONTRACTS.md: {undocumented:?}"
    );

    // A relay serving the test binary's recorder, with a file sink and a channel sink, and a
    // little traffic: a session, frames, acks, a refused registration.
    let handle = metrics().clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    let file = format!(
        "name = \"file\"\ntype = \"file\"\npath = {:?}",
        dir.path().join("out").display().to_string()
    );
    config
        .sinks
        .push(toml::from_str(&file).expect("file sink entry"));
    let (spec, mut rx) = channel_sink("chan", true, 1024);
    let udp = std::net::UdpSocket::bind(config.listen).expect("bind udp");
    let http = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .expect("bind http");
    let relay = RelayBuilder::new(config)
        .hooks(Hooks::default())
        .sink(spec)
        .metrics(handle)
        .start(udp, http)
        .await
        .expect("relay starts");
    let relay = crate::common::TestRelay { relay, dir };
    let agent = relay.agent("drone-metric-names").await;
    send_n(&agent, 50, &[7; 128]).await;
    assert_eq!(
        collect_frames(&mut rx, 50, Duration::from_secs(10))
            .await
            .len(),
        50
    );
    poll_until_async(Duration::from_secs(10), "50 acked", || async {
        agent.acked_seq() == 50
    })
    .await;
    // A second registration of the same agent supersedes the first.
    let _again = relay.agent("drone-metric-names").await;

    let url = format!("{}/metrics", relay.http());
    let text = poll_until_async(Duration::from_secs(10), "/metrics with latency", || async {
        let t = reqwest::get(&url).await.ok()?.text().await.ok()?;
        t.contains(metric_names::FRAME_AGE).then_some(t)
    })
    .await;
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(base_name)
        .collect();
    for must in [
        metric_names::FRAMES_RECEIVED,
        metric_names::ACKS_SENT,
        metric_names::SESSIONS_OPENED,
        metric_names::SESSIONS_SUPERSEDED,
        metric_names::SINK_ACCEPTED,
        metric_names::FRAME_AGE,
    ] {
        assert!(exported.contains(must), "{must} not exported:\n{text}");
    }
    let unknown: Vec<&str> = exported
        .iter()
        .copied()
        .filter(|n| !metric_names::ALL.contains(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "exported names that are not in contrail_control::metric_names: {unknown:?}"
    );
    let unlisted: Vec<&str> = exported
        .iter()
        .copied()
        .filter(|n| !contracts.contains(n))
        .collect();
    assert!(
        unlisted.is_empty(),
        "exported names missing from CONTRACTS.md: {unlisted:?}"
    );
}
