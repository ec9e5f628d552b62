//! Migrations against a real PostgreSQL: relays starting together apply each migration once.

use std::time::Duration;

use contrail_control::db::{self, MIGRATIONS};
use contrail_testsupport::PostgresServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_each_version_once() {
    let pg = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .expect("postgres");
    let url = pg.url();
    let mut runs = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        runs.push(tokio::spawn(async move {
            let (mut client, task) = db::connect(&url, Duration::from_secs(5))
                .await
                .expect("connect");
            let applied = db::migrate(&mut client).await.expect("migrate");
            task.abort();
            applied
        }));
    }
    let mut applied = Vec::new();
    for r in runs {
        applied.extend(r.await.expect("join"));
    }
    applied.sort();
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(applied, all, "each version applied by exactly one relay");
    let n = pg
        .psql("SELECT count(*) FROM schema_migrations")
        .expect("psql");
    assert_eq!(n, MIGRATIONS.len().to_string());
    assert_eq!(
        pg.psql("SELECT count(*) FROM commands")
            .expect("table exists"),
        "0"
    );
}
