//! Usage in PostgreSQL (migration `0002_usage`): hourly rows per (agent, hour, relay) that every
//! relay adds to, and one flush mark per relay process.
//!
//! A flush is one transaction: it advances this process's mark in `usage_flushes` from below
//! `seq` to `seq` (a conditional upsert) and, only if that changed a row, adds the flush's deltas
//! to `usage_hourly`. If the commit's answer is lost, the flush is retried with the same `seq`
//! and the same rows; the mark then already equals `seq`, so nothing is added twice. The process
//! id (`incarnation`) is random per start, so a restarted relay starts a new mark.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;

use super::HourUsage;
use crate::db::{self, DbError, Pool};
use crate::metric_names as m;

/// Deltas of one flush: (hour, agent) → (frames, bytes).
type Rows = BTreeMap<(u64, String), (u64, u64)>;

#[derive(Default)]
struct Staged {
    /// Sequence number of the next flush.
    next_seq: i64,
    /// A flush that failed (or is running): retried as is, with its seq and sample time.
    in_flight: Option<(i64, Rows, u64)>,
    /// Deltas sampled since `in_flight` was cut.
    pending: Rows,
    /// Time of the latest sample in `pending` (Unix ms).
    pending_sampled_ms: u64,
}

/// The PostgreSQL usage store of one relay process.
pub struct PgUsage {
    pool: Pool,
    relay_id: String,
    incarnation: String,
    max_pending: usize,
    staged: Mutex<Staged>,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PgUsage {
    /// A store writing as `relay_id` with a new random incarnation (one connection, opened on
    /// first use). The tables must exist (the command store's migration runs first).
    pub fn new(url: &str, timeout: Duration, relay_id: &str, max_pending: usize) -> Self {
        PgUsage {
            pool: Pool::new(url, 1, timeout),
            relay_id: relay_id.to_owned(),
            incarnation: format!("{:016x}", rand::random::<u64>()),
            max_pending: max_pending.max(1),
            staged: Mutex::new(Staged {
                next_seq: 1,
                ..Staged::default()
            }),
        }
    }

    /// This process's id in `usage_flushes`.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// Adds one sample's deltas to the next flush. Beyond `max_pending` waiting (agent, hour)
    /// rows, deltas of new rows are dropped and counted.
    pub(super) fn stage(&self, now_ms: u64, hour: u64, deltas: BTreeMap<String, (u64, u64)>) {
        let mut g = self.staged.lock();
        g.pending_sampled_ms = g.pending_sampled_ms.max(now_ms);
        let held = g.in_flight.as_ref().map_or(0, |(_, r, _)| r.len());
        let mut dropped = 0u64;
        for (agent, (f, b)) in deltas {
            let len = g.pending.len();
            match g.pending.get_mut(&(hour, agent.clone())) {
                Some(e) => {
                    e.0 += f;
                    e.1 += b;
                }
                None if len + held < self.max_pending => {
                    g.pending.insert((hour, agent), (f, b));
                }
                None => dropped += f,
            }
        }
        if dropped > 0 {
            metrics::counter!(m::LIMIT_HITS, "limit" => "usage_pending").increment(1);
            tracing::warn!(
                frames = dropped,
                max_pending = self.max_pending,
                "usage: too many unflushed buckets (database down?); usage dropped"
            );
        }
    }

    /// Flushes the failed flush if there is one, else everything staged. `Ok(false)`: nothing
    /// to flush.
    pub(super) async fn flush(&self) -> Result<bool, DbError> {
        let (seq, rows, sampled_ms) = {
            let mut g = self.staged.lock();
            if g.in_flight.is_none() {
                if g.pending.is_empty() {
                    return Ok(false);
                }
                let seq = g.next_seq;
                g.next_seq += 1;
                let rows = std::mem::take(&mut g.pending);
                let sampled = g.pending_sampled_ms;
                g.in_flight = Some((seq, rows, sampled));
            }
            match &g.in_flight {
                Some((seq, rows, sampled)) => (*seq, rows.clone(), *sampled),
                None => return Ok(false),
            }
        };
        let timeout = self.pool.timeout();
        let res = match tokio::time::timeout(timeout, self.write(seq, &rows, sampled_ms)).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Timeout),
        };
        match res {
            Ok(applied) => {
                if !applied {
                    tracing::info!(seq, "usage flush was already applied (answer lost before)");
                }
                self.staged.lock().in_flight = None;
                Ok(true)
            }
            Err(e) => {
                metrics::counter!(m::USAGE_FLUSH_ERRORS).increment(1);
                Err(e)
            }
        }
    }

    /// One flush transaction; `Ok(false)` when the mark says it was applied already.
    async fn write(&self, seq: i64, rows: &Rows, sampled_ms: u64) -> Result<bool, DbError> {
        let mut pooled = self.pool.get().await?;
        let res = async {
            let Some(c) = pooled.client() else {
                return Err(DbError::Timeout);
            };
            let tx = c.transaction().await?;
            tx.batch_execute(db::DURABLE).await?;
            let now = i64_of(crate::registry::unix_ms());
            let marked = tx
                .execute(
                    "INSERT INTO usage_flushes \
                     (relay_id, incarnation, flush_seq, sampled_ms, flushed_ms) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (relay_id, incarnation) DO UPDATE \
                     SET flush_seq = EXCLUDED.flush_seq, sampled_ms = EXCLUDED.sampled_ms, \
                         flushed_ms = EXCLUDED.flushed_ms \
                     WHERE usage_flushes.flush_seq < EXCLUDED.flush_seq",
                    &[
                        &self.relay_id,
                        &self.incarnation,
                        &seq,
                        &i64_of(sampled_ms),
                        &now,
                    ],
                )
                .await?;
            if marked == 0 {
                tx.commit().await?;
                return Ok(false);
            }
            let mut agents = Vec::with_capacity(rows.len());
            let mut hours = Vec::with_capacity(rows.len());
            let mut frames = Vec::with_capacity(rows.len());
            let mut bytes = Vec::with_capacity(rows.len());
            for ((h, a), (f, b)) in rows {
                agents.push(a.clone());
                hours.push(i64_of(*h));
                frames.push(i64_of(*f));
                bytes.push(i64_of(*b));
            }
            tx.execute(
                "INSERT INTO usage_hourly (agent_id, hour_ms, relay_id, frames, bytes, updated_ms) \
                 SELECT a, h, $1, f, b, $6 \
                 FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) AS t(a, h, f, b) \
                 ON CONFLICT (agent_id, hour_ms, relay_id) DO UPDATE \
                 SET frames = usage_hourly.frames + EXCLUDED.frames, \
                     bytes = usage_hourly.bytes + EXCLUDED.bytes, \
                     updated_ms = EXCLUDED.updated_ms",
                &[&self.relay_id, &agents, &hours, &frames, &bytes, &now],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        }
        .await;
        if res.is_err() {
            pooled.discard();
        }
        res
    }

    /// Hourly sums over every relay for `[start, to)`, ordered by hour then agent.
    pub(super) async fn query(
        &self,
        agent: Option<&str>,
        start: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<HourUsage>, DbError> {
        let fut = async {
            let mut pooled = self.pool.get().await?;
            let Some(c) = pooled.client() else {
                return Err(DbError::Timeout);
            };
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let res = c
                .query(
                    "SELECT agent_id, hour_ms, sum(frames)::bigint, sum(bytes)::bigint \
                     FROM usage_hourly \
                     WHERE ($1::text IS NULL OR agent_id = $1) AND hour_ms >= $2 AND hour_ms < $3 \
                     GROUP BY hour_ms, agent_id ORDER BY hour_ms, agent_id LIMIT $4",
                    &[&agent, &i64_of(start), &i64_of(to), &limit],
                )
                .await;
            let rows = match res {
                Ok(r) => r,
                Err(e) => {
                    pooled.discard();
                    return Err(DbError::Postgres(e));
                }
            };
            rows.iter()
                .map(|r| {
                    let h: i64 = r.try_get(1)?;
                    let f: i64 = r.try_get(2)?;
                    let b: i64 = r.try_get(3)?;
                    Ok(HourUsage {
                        agent_id: r.try_get(0)?,
                        hour_start_unix_ms: u64::try_from(h).unwrap_or(0),
                        frames: u64::try_from(f).unwrap_or(0),
                        bytes: u64::try_from(b).unwrap_or(0),
                    })
                })
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                .map_err(DbError::Postgres)
        };
        match tokio::time::timeout(self.pool.timeout(), fut).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contrail_testsupport::PostgresServer;

    fn deltas(v: &[(&str, u64, u64)]) -> BTreeMap<String, (u64, u64)> {
        v.iter()
            .map(|(a, f, b)| ((*a).to_owned(), (*f, *b)))
            .collect()
    }

    async fn frames(u: &PgUsage, agent: &str) -> u64 {
        u.query(Some(agent), 0, u64::MAX, 100)
            .await
            .expect("query")
            .iter()
            .map(|h| h.frames)
            .sum()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flushes_apply_once_survive_an_outage_and_restarts() {
        let mut pg = tokio::task::spawn_blocking(PostgresServer::start)
            .await
            .expect("postgres");
        let url = pg.url();
        let (mut c, task) = db::connect(&url, Duration::from_secs(5))
            .await
            .expect("connect");
        db::migrate(&mut c).await.expect("migrate");
        task.abort();
        let h = 500 * super::super::HOUR_MS;
        let u = PgUsage::new(&url, Duration::from_secs(2), "r1", 10);
        u.stage(h + 1, h, deltas(&[("a", 5, 50)]));
        assert!(u.flush().await.expect("flush"));
        assert!(!u.flush().await.expect("nothing staged"), "nothing left");
        assert_eq!(frames(&u, "a").await, 5);

        // The commit went through but its answer was lost: the retry (same seq, same rows)
        // finds the mark and adds nothing.
        u.staged.lock().in_flight = Some((1, [((h, "a".to_owned()), (5, 50))].into(), h + 1));
        assert!(u.flush().await.expect("replayed flush"));
        assert_eq!(frames(&u, "a").await, 5, "a replayed flush is applied once");

        // Database down (a relay starting while it is: no connection yet; a killed
        // postmaster's backends may keep serving open connections a while): the flush fails
        // and is kept; later samples wait beside it.
        tokio::task::block_in_place(|| pg.stop());
        let down = PgUsage::new(&url, Duration::from_secs(2), "r1", 10);
        down.stage(h + 2, h, deltas(&[("a", 2, 20)]));
        assert!(down.flush().await.is_err());
        down.stage(h + 3, h, deltas(&[("a", 1, 10), ("b", 4, 40)]));
        assert!(down.flush().await.is_err(), "still down");
        tokio::task::block_in_place(|| pg.restart());
        assert!(down.flush().await.expect("the kept flush"));
        assert!(down.flush().await.expect("what waited beside it"));
        assert_eq!(frames(&down, "a").await, 8);
        assert_eq!(frames(&down, "b").await, 4);
        let sampled = pg
            .psql(&format!(
                "SELECT sampled_ms FROM usage_flushes WHERE incarnation = '{}'",
                down.incarnation()
            ))
            .expect("psql");
        assert_eq!(sampled, (h + 3).to_string());

        // A restarted relay (same id, new incarnation) adds to the same rows.
        let again = PgUsage::new(&url, Duration::from_secs(2), "r1", 10);
        assert_ne!(again.incarnation(), down.incarnation());
        again.stage(h + 4, h, deltas(&[("a", 10, 100)]));
        assert!(again.flush().await.expect("flush"));
        assert_eq!(frames(&again, "a").await, 18);
        // And another relay's rows are summed in.
        let other = PgUsage::new(&url, Duration::from_secs(2), "r2", 10);
        other.stage(h + 5, h + super::super::HOUR_MS, deltas(&[("a", 1, 1)]));
        assert!(other.flush().await.expect("flush"));
        let hours = other.query(Some("a"), 0, u64::MAX, 100).await.expect("q");
        assert_eq!(
            hours
                .iter()
                .map(|x| (x.hour_start_unix_ms, x.frames, x.bytes))
                .collect::<Vec<_>>(),
            [(h, 18, 180), (h + super::super::HOUR_MS, 1, 1)]
        );
    }

    #[tokio::test]
    async fn staged_rows_are_bounded() {
        // No database needed: staging is in memory.
        let u = PgUsage::new(
            "postgres://127.0.0.1:1/x",
            Duration::from_millis(10),
            "r",
            2,
        );
        u.stage(1, 0, deltas(&[("a", 1, 1), ("b", 1, 1), ("c", 1, 1)]));
        u.stage(2, 0, deltas(&[("a", 1, 1)]));
        let g = u.staged.lock();
        assert_eq!(g.pending.len(), 2, "a third agent-hour is dropped");
        assert_eq!(
            g.pending[&(0, "a".to_owned())],
            (2, 2),
            "known rows still add up"
        );
    }
}
