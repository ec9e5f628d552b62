//! Measures one routing publication pass over N live sessions against a real redis-server
//! started by contrail-testsupport: pipelines issued, commands/s, wall time, and CPU of this
//! process and of redis-server.
//!
//! `cargo run --release -p contrail-control --example refresh_bench -- 10000 100000`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use contrail_control::routing::publisher::refresh_fleet_once;
use contrail_control::{Fleet, RoutingConfig, SessionInfo};
use contrail_testsupport::RedisServer;

fn own_cpu() -> Duration {
    // utime + stime from /proc/self/stat (fields 14 and 15, in clock ticks of 1/100 s).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // after ')' the fields start at index 3 (state is not numeric and is skipped by parse).
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn redis_cpu(redis: &RedisServer) -> f64 {
    let text: String = redis.cmd(&["INFO", "cpu"]);
    text.lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000]
    } else {
        sizes
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let redis = RedisServer::start();
    let config = RoutingConfig {
        addr: Some(redis.addr().to_string()),
        relay_id: "bench-relay".into(),
        io_timeout: Duration::from_secs(10),
        ..RoutingConfig::default()
    };
    println!("| sessions | pass | pipelines | commands | wall ms | commands/s | bench CPU ms | redis CPU ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        redis.cmd::<()>(&["FLUSHALL"]);
        let fleet = Fleet::default();
        for i in 0..n {
            fleet.session_up(Arc::new(SessionInfo {
                agent_id: format!("drone-{i:07}"),
                session_id: format!("{:032x}", i as u128 * 0x9E37_79B9_7F4A_7C15),
                remote_addr: SocketAddr::from(([10, 0, 0, 1], 5000)),
                connected_since_unix_ms: 0,
                stats: Arc::default(),
            }));
        }
        for (name, set) in [("publish (SET EX)", true), ("refresh (script)", false)] {
            let (cpu0, rcpu0, t0) = (own_cpu(), redis_cpu(&redis), Instant::now());
            let stats = rt.block_on(refresh_fleet_once(&config, &fleet, set))?;
            let wall = t0.elapsed();
            let (cpu, rcpu) = (own_cpu() - cpu0, redis_cpu(&redis) - rcpu0);
            anyhow::ensure!(stats.written == n, "{name}: wrote {} of {n}", stats.written);
            println!(
                "| {n} | {name} | {} | {} | {:.0} | {:.0} | {} | {:.0} |",
                stats.pipelines,
                stats.commands,
                wall.as_secs_f64() * 1e3,
                stats.commands as f64 / wall.as_secs_f64(),
                cpu.as_millis(),
                rcpu * 1e3,
            );
        }
        let dbsize: i64 = redis.cmd(&["DBSIZE"]);
        anyhow::ensure!(dbsize == n as i64, "dbsize {dbsize} != {n}");
    }
    Ok(())
}
