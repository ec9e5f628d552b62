//! PostgreSQL access: a small connection pool that reconnects on demand, and the migration runner.
//!
//! Migrations are the files of `control/migrations/NNNN_name.sql`, embedded at build time (see
//! `build.rs`) and applied in version order at start, each in its own transaction, under an
//! advisory lock so relays starting together apply each one once. Applied versions are kept in
//! `schema_migrations`. Adding a migration is adding a file.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Advisory lock key held while migrating (`'contrail'` as bytes).
const MIGRATION_LOCK: i64 = 0x636f_6e74_7261_696c;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database could not be reached or answered with an error.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Connecting or a query took longer than the configured timeout.
    #[error("postgres: timed out")]
    Timeout,
    /// A stored row holds a value this version does not understand.
    #[error("postgres: unexpected value in column {0}")]
    BadRow(&'static str),
}

/// One pooled connection and the task that drives its socket.
struct Conn {
    client: Client,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fixed number of connection slots, each (re)connected when used while empty or broken.
pub struct Pool {
    url: String,
    timeout: Duration,
    slots: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
}

/// A connection borrowed from the [`Pool`].
pub struct PooledClient<'a> {
    guard: MutexGuard<'a, Option<Conn>>,
}

impl PooledClient<'_> {
    /// The client.
    pub fn client(&mut self) -> Option<&mut Client> {
        self.guard.as_mut().map(|c| &mut c.client)
    }

    /// Drops the connection (after an error that may have broken it).
    pub fn discard(&mut self) {
        *self.guard = None;
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.slots.len())
            .finish()
    }
}

/// Connects once with `timeout`, spawning the connection's driver task.
pub async fn connect(url: &str, timeout: Duration) -> Result<(Client, JoinHandle<()>), DbError> {
    let config: tokio_postgres::Config = url.parse()?;
    connect_config(&config, timeout).await
}

/// Connects a pool connection: commits do not wait for the WAL flush
/// (`synchronous_commit=off`) unless a transaction asks for it with [`DURABLE`]. Relay-side
/// state updates are re-derived by redelivery if a database crash loses them; submits,
/// cancels, results and output are written durably.
pub async fn connect_async_commit(
    url: &str,
    timeout: Duration,
) -> Result<(Client, JoinHandle<()>), DbError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} -c synchronous_commit=off"),
        _ => "-c synchronous_commit=off".to_owned(),
    };
    config.options(&options);
    connect_config(&config, timeout).await
}

/// First statement of a transaction whose commit must be on disk before it returns.
pub const DURABLE: &str = "SET LOCAL synchronous_commit TO on";

async fn connect_config(
    config: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<(Client, JoinHandle<()>), DbError> {
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| DbError::Timeout)??;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok((client, task))
}

impl Pool {
    /// A pool of `size` connections to `url` (none opened yet).
    pub fn new(url: &str, size: usize, timeout: Duration) -> Self {
        Pool {
            url: url.to_owned(),
            timeout,
            slots: (0..size.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Per-operation timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connected client (round robin over the slots; connects when the slot is empty or its
    /// connection closed).
    pub async fn get(&self) -> Result<PooledClient<'_>, DbError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut guard = self.slots[i].lock().await;
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *guard = None;
            let (client, task) = connect_async_commit(&self.url, self.timeout).await?;
            *guard = Some(Conn { client, task });
        }
        Ok(PooledClient { guard })
    }
}

/// Applies every embedded migration not yet in `schema_migrations`; returns the versions applied.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, DbError> {
    // Locked first: relays starting together would otherwise race even on `IF NOT EXISTS`.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let res = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version integer PRIMARY KEY,
                     name text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
        apply_pending(client).await
    }
    .await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let applied = res?;
    unlock?;
    Ok(applied)
}

async fn apply_pending(client: &mut Client) -> Result<Vec<i32>, DbError> {
    let done: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied database migration");
        applied.push(*version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    #[test]
    fn migrations_are_embedded_in_order() {
        assert!(!MIGRATIONS.is_empty());
        assert_eq!(MIGRATIONS[0].0, 1);
        assert_eq!(MIGRATIONS[0].1, "commands");
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
