//! Helpers shared by the integration tests: a control tree on 127.0.0.1:0, session builders,
//! a real redis-server from contrail-testsupport.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use contrail_control::{Control, ControlConfig, RoutingConfig, SessionInfo};
use contrail_testsupport::RedisServer;

/// Deadline for every poll in these tests.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn routing_config(redis: Option<&RedisServer>, ttl: Duration) -> RoutingConfig {
    RoutingConfig {
        addr: redis.map(|r| r.addr().to_string()),
        ttl,
        relay_id: "relay-test".into(),
        flush_interval: Duration::from_millis(20),
        io_timeout: Duration::from_millis(500),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(300),
        ..RoutingConfig::default()
    }
}

pub async fn start(config: ControlConfig) -> Control {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    Control::start(config, listener, None)
        .await
        .expect("control starts")
}

pub async fn start_with_redis(redis: Option<&RedisServer>, ttl: Duration) -> Control {
    let config = ControlConfig {
        routing: routing_config(redis, ttl),
        export_period: Duration::from_millis(50),
        ..ControlConfig::default()
    };
    start(config).await
}

pub fn session(agent: &str, session: &str) -> Arc<SessionInfo> {
    Arc::new(SessionInfo {
        agent_id: agent.into(),
        session_id: session.into(),
        remote_addr: SocketAddr::from(([10, 0, 0, 7], 40_000)),
        connected_since_unix_ms: 1_700_000_000_000,
        stats: Arc::default(),
    })
}

pub fn value(session: &str) -> String {
    format!(r#"{{"relay_id":"relay-test","session_id":"{session}"}}"#)
}

/// `GET key` as a string, `None` when missing or when redis is unreachable.
pub fn get(redis: &RedisServer, key: &str) -> Option<String> {
    redis.try_cmd::<Option<String>>(&["GET", key]).ok()?
}

pub fn pttl(redis: &RedisServer, key: &str) -> i64 {
    redis.try_cmd::<i64>(&["PTTL", key]).unwrap_or(-3)
}
