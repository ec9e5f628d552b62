//! Redis routing publication against a real redis-server.

mod common;

use std::time::Duration;

use common::{get, pttl, session, start_with_redis, value, DEADLINE};
use contrail_testsupport::{poll_until_async, RedisOptions, RedisServer};

const TTL: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_appears_with_json_and_ttl_and_is_deleted_on_down() {
    let redis = RedisServer::start();
    let control = start_with_redis(Some(&redis), TTL).await;
    let events = control.events();
    events.session_up(session("d1", "s1"));
    let v = poll_until_async(DEADLINE, "drone:d1 set", async || get(&redis, "drone:d1")).await;
    assert_eq!(v, value("s1"));
    let json: serde_json::Value = serde_json::from_str(&v).expect("value is JSON");
    assert_eq!(json["relay_id"], "relay-test");
    assert_eq!(json["session_id"], "s1");
    let ttl: i64 = redis.cmd(&["TTL", "drone:d1"]);
    assert!((40..=45).contains(&ttl), "ttl {ttl}");

    events.session_down("d1", "s1");
    poll_until_async(DEADLINE, "drone:d1 deleted", async || {
        get(&redis, "drone:d1").is_none()
    })
    .await;
    control.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_refreshed_while_session_lives() {
    let redis = RedisServer::start();
    let control = start_with_redis(Some(&redis), Duration::from_secs(2)).await;
    control.events().session_up(session("d2", "s2"));
    poll_until_async(DEADLINE, "drone:d2 set", async || get(&redis, "drone:d2")).await;
    // Refreshes happen every ttl/2 = 1 s: the remaining TTL first runs down below 1.5 s, then
    // jumps back up; and the key outlives several TTLs.
    poll_until_async(DEADLINE, "ttl runs down", async || {
        pttl(&redis, "drone:d2") < 1500
    })
    .await;
    poll_until_async(DEADLINE, "ttl refreshed", async || {
        pttl(&redis, "drone:d2") > 1700
    })
    .await;
    let started = tokio::time::Instant::now();
    poll_until_async(DEADLINE, "key outlives 3 TTLs", async || {
        assert_eq!(
            get(&redis, "drone:d2"),
            Some(value("s2")),
            "key lost during refresh"
        );
        started.elapsed() > Duration::from_secs(5)
    })
    .await;
    control.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_taken_over_by_another_session_is_not_deleted() {
    let redis = RedisServer::start();
    let control = start_with_redis(Some(&redis), TTL).await;
    let events = control.events();
    events.session_up(session("d3", "mine"));
    poll_until_async(DEADLINE, "drone:d3 set", async || get(&redis, "drone:d3")).await;
    // The drone reconnected to another relay, which wrote its own value.
    let theirs = r#"{"relay_id":"other-relay","session_id":"theirs"}"#;
    redis.cmd::<()>(&["SET", "drone:d3", theirs, "EX", "45"]);
    events.session_down("d3", "mine");
    // A later change to another agent proves the pipeline holding our delete has been applied.
    events.session_up(session("marker", "m"));
    poll_until_async(DEADLINE, "marker set", async || get(&redis, "drone:marker")).await;
    poll_until_async(DEADLINE, "fleet empty of d3", async || {
        control.fleet().get("d3").is_none()
    })
    .await;
    assert_eq!(get(&redis, "drone:d3").as_deref(), Some(theirs));
    // Nor does the refresh overwrite it while our old session still looks live.
    events.session_up(session("d4", "old"));
    poll_until_async(DEADLINE, "drone:d4 set", async || get(&redis, "drone:d4")).await;
    let theirs4 = r#"{"relay_id":"other-relay","session_id":"new"}"#;
    redis.cmd::<()>(&["SET", "drone:d4", theirs4, "EX", "45"]);
    let report = control.shutdown().await.expect("shutdown");
    let routing = report.routing.expect("routing enabled");
    assert_eq!((routing.attempted, routing.deleted), (2, 1), "{routing:?}");
    assert_eq!(get(&redis, "drone:d4").as_deref(), Some(theirs4));
    assert_eq!(
        get(&redis, "drone:marker"),
        None,
        "shutdown removes keys of live sessions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseding_session_keeps_its_key_when_old_one_goes_down() {
    let redis = RedisServer::start();
    let control = start_with_redis(Some(&redis), TTL).await;
    let events = control.events();
    events.session_up(session("d5", "first"));
    poll_until_async(DEADLINE, "first", async || {
        get(&redis, "drone:d5") == Some(value("first"))
    })
    .await;
    events.session_up(session("d5", "second"));
    events.session_down("d5", "first");
    poll_until_async(DEADLINE, "second", async || {
        get(&redis, "drone:d5") == Some(value("second"))
    })
    .await;
    events.session_up(session("marker", "m"));
    poll_until_async(DEADLINE, "marker", async || get(&redis, "drone:marker")).await;
    assert_eq!(get(&redis, "drone:d5"), Some(value("second")));
    control.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishes_everything_after_redis_restarts() {
    let mut redis = RedisServer::start();
    let control = start_with_redis(Some(&redis), Duration::from_secs(4)).await;
    let events = control.events();
    let redis_healthy = || {
        control
            .health()
            .report()
            .iter()
            .any(|c| c.name == "redis" && c.healthy)
    };
    events.session_up(session("a", "sa"));
    poll_until_async(DEADLINE, "drone:a", async || get(&redis, "drone:a")).await;

    redis.stop();
    // Telemetry-facing calls keep working while Redis is down.
    events.session_up(session("b", "sb"));
    events.session_up(session("c", "sc"));
    events.session_down("c", "sc");
    poll_until_async(DEADLINE, "outage detected", async || !redis_healthy()).await;
    assert_eq!(control.fleet().len(), 2);

    redis.restart(); // no persistence: every key is gone
    poll_until_async(DEADLINE, "republished a and b", async || {
        get(&redis, "drone:a") == Some(value("sa")) && get(&redis, "drone:b") == Some(value("sb"))
    })
    .await;
    assert!(redis_healthy());
    assert_eq!(get(&redis, "drone:c"), None);
    control.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_at_start_is_not_fatal() {
    let mut redis = RedisServer::start();
    redis.stop();
    let control = start_with_redis(Some(&redis), TTL).await;
    control.events().session_up(session("late", "s"));
    control.lifecycle().mark_ready();
    assert_eq!(control.fleet().len(), 1);
    redis.restart();
    poll_until_async(DEADLINE, "published once redis is up", async || {
        get(&redis, "drone:late")
    })
    .await;
    control.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_publisher_is_restarted_and_keeps_publishing() {
    let redis = RedisServer::start();
    let control = start_with_redis(Some(&redis), TTL).await;
    control.events().session_up(session("before", "s"));
    poll_until_async(DEADLINE, "before", async || get(&redis, "drone:before")).await;
    control.inject_child_failure(contrail_control::ChildKind::Routing);
    poll_until_async(DEADLINE, "publisher restarted", async || {
        control
            .restart_counts()
            .await
            .get(&contrail_control::ChildKind::Routing)
            == Some(&1)
    })
    .await;
    redis.cmd::<()>(&["DEL", "drone:before"]);
    control.events().session_up(session("after", "s"));
    // The new incarnation republishes every live session on connect, and flushes new events.
    poll_until_async(DEADLINE, "after and before", async || {
        get(&redis, "drone:after").is_some() && get(&redis, "drone:before").is_some()
    })
    .await;
    control.shutdown().await.expect("shutdown");
}

async fn start_with(routing: contrail_control::RoutingConfig) -> contrail_control::Control {
    common::start(contrail_control::ControlConfig {
        routing,
        export_period: Duration::from_millis(50),
        ..contrail_control::ControlConfig::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_over_tls_verified_by_the_ca_file() {
    let redis = RedisServer::start_with(RedisOptions {
        tls: true,
        ..RedisOptions::default()
    });
    let mut routing = common::routing_config(Some(&redis), TTL);
    routing.addr = redis.tls_url();
    routing.tls_ca_file = redis.tls_ca_file();
    let control = start_with(routing).await;
    control.events().session_up(session("tls-1", "s1"));
    let v = poll_until_async(DEADLINE, "drone:tls-1 over TLS", async || {
        get(&redis, "drone:tls-1")
    })
    .await;
    assert_eq!(v, value("s1"));
    let clients: String = redis.cmd(&["CLIENT", "LIST"]);
    assert!(
        clients.contains(&format!(
            "laddr=127.0.0.1:{}",
            redis.tls_addr().expect("tls").port()
        )),
        "no client on the TLS port: {clients:?}"
    );
    control.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_the_right_ca_publishes_nothing() {
    let redis = RedisServer::start_with(RedisOptions {
        tls: true,
        ..RedisOptions::default()
    });
    let other = RedisServer::start_with(RedisOptions {
        tls: true,
        ..RedisOptions::default()
    });
    let mut routing = common::routing_config(Some(&redis), TTL);
    routing.addr = redis.tls_url();
    // Another server's self-signed certificate: the handshake must fail.
    routing.tls_ca_file = other.tls_ca_file();
    let control = start_with(routing).await;
    control.events().session_up(session("tls-2", "s1"));
    // The server sees handshakes that fail (and logs each), never a working client.
    let log = redis.dir().join("redis.log");
    poll_until_async(
        DEADLINE,
        "a refused TLS handshake in the server log",
        async || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("Error accepting a client connection"))
        },
    )
    .await;
    assert_eq!(get(&redis, "drone:tls-2"), None, "published without trust");
    control.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_with_a_password_into_the_configured_db() {
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("s3cret pw".into()),
        ..RedisOptions::default()
    });
    let mut routing = common::routing_config(Some(&redis), TTL);
    routing.password = Some("s3cret pw".into());
    routing.db = Some(3);
    let control = start_with(routing).await;
    control.events().session_up(session("db-1", "s1"));
    let v = poll_until_async(DEADLINE, "drone:db-1 in db 3", async || {
        redis.cmd_in_db::<Option<String>>(3, &["GET", "drone:db-1"])
    })
    .await;
    assert_eq!(v, value("s1"));
    assert_eq!(get(&redis, "drone:db-1"), None, "written to db 0");
    assert!(
        redis::Client::open(redis.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("GET")
                .arg("drone:db-1")
                .query::<Option<String>>(&mut c))
            .is_err(),
        "the server does not require the password"
    );
    control.shutdown().await.expect("shutdown");
}

/// Log lines written while a test runs (a `MakeWriter` for `tracing_subscriber::fmt`).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn unreachable_redis_at_start_is_logged_once_at_warn() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Thread-local: this current-thread runtime runs the whole control tree on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut redis = RedisServer::start();
    redis.stop();
    let control = start_with_redis(Some(&redis), TTL).await;
    poll_until_async(DEADLINE, "several failed connects", async || {
        let text = logs.text();
        (text.matches("redis routing connect failed").count() >= 2).then_some(())
    })
    .await;
    let text = logs.text();
    let warns: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("redis routing unreachable"))
        .collect();
    assert_eq!(
        warns.len(),
        1,
        "one WARN at start, retries at debug:\n{text}"
    );
    control.shutdown().await.expect("shutdown");
}
