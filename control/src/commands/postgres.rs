//! The PostgreSQL command store: the durable queue and history, and the `LISTEN/NOTIFY`
//! listener that tells every relay about submits and cancels.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, Row};

use super::model::{
    CommandId, CommandRecord, CommandStatus, NewCommand, Notice, OutputChunk, OutputStored, Stream,
};
use super::{CancelOutcome, StoreError, Submitted};
use crate::db::{self, DbError, Pool};

/// The NOTIFY channel. Payloads: `s:<drone>` (submitted), `c:<command id>:<drone>` (cancelled).
pub const CHANNEL: &str = "contrail_commands";

const COLUMNS: &str = "id, drone_id, type, payload, deadline_ms, status, submitted_by, \
    idempotency_key, body_hash, created_ms, delivered_ms, accepted_ms, finished_ms, exit_code, \
    message, relay_id, output_bytes";

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn opt_ms(v: Option<i64>) -> Option<u64> {
    v.map(|x| u64::try_from(x).unwrap_or(0))
}

fn record(row: &Row) -> Result<CommandRecord, StoreError> {
    let id: String = row.try_get(0).map_err(db_err)?;
    let status: String = row.try_get(5).map_err(db_err)?;
    Ok(CommandRecord {
        id: CommandId::parse(&id).ok_or(StoreError::Db(DbError::BadRow("id")))?,
        drone_id: row.try_get(1).map_err(db_err)?,
        kind: row.try_get(2).map_err(db_err)?,
        payload: row.try_get(3).map_err(db_err)?,
        deadline_ms: opt_ms(Some(row.try_get(4).map_err(db_err)?)).unwrap_or(0),
        status: CommandStatus::parse(&status).ok_or(StoreError::Db(DbError::BadRow("status")))?,
        submitted_by: row.try_get(6).map_err(db_err)?,
        idempotency_key: row.try_get(7).map_err(db_err)?,
        body_hash: row.try_get(8).map_err(db_err)?,
        created_ms: opt_ms(Some(row.try_get(9).map_err(db_err)?)).unwrap_or(0),
        delivered_ms: opt_ms(row.try_get(10).map_err(db_err)?),
        accepted_ms: opt_ms(row.try_get(11).map_err(db_err)?),
        finished_ms: opt_ms(row.try_get(12).map_err(db_err)?),
        exit_code: row.try_get(13).map_err(db_err)?,
        message: row.try_get(14).map_err(db_err)?,
        relay_id: row.try_get(15).map_err(db_err)?,
        output_bytes: opt_ms(Some(row.try_get(16).map_err(db_err)?)).unwrap_or(0),
    })
}

fn db_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Db(DbError::Postgres(e))
}

fn records(rows: &[Row]) -> Result<Vec<CommandRecord>, StoreError> {
    rows.iter().map(record).collect()
}

/// Commands in PostgreSQL.
pub struct PgStore {
    pool: Pool,
}

/// Runs `$body` with a pooled client under the pool's timeout; a failed or timed-out operation
/// drops its connection (it may be broken) and maps to [`StoreError`].
macro_rules! with_client {
    ($self:ident, |$c:ident| $body:expr) => {{
        let timeout = $self.pool.timeout();
        let fut = async {
            let mut pooled = $self.pool.get().await.map_err(StoreError::Db)?;
            let res = match pooled.client() {
                Some($c) => $body.await,
                None => Err(StoreError::Db(DbError::Timeout)),
            };
            if matches!(res, Err(StoreError::Db(_))) {
                pooled.discard();
            }
            res
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Db(DbError::Timeout)),
        }
    }};
}

impl PgStore {
    /// Connects and runs the migrations (the relay does not start without them).
    pub async fn open(url: &str, pool_size: usize, timeout: Duration) -> Result<Self, DbError> {
        let (mut client, task) = db::connect(url, timeout).await?;
        let res = tokio::time::timeout(timeout * 10, db::migrate(&mut client)).await;
        task.abort();
        res.map_err(|_| DbError::Timeout)??;
        Ok(PgStore {
            pool: Pool::new(url, pool_size, timeout),
        })
    }

    pub(super) async fn submit(
        &self,
        cmd: NewCommand,
        max_open: usize,
    ) -> Result<Submitted, StoreError> {
        with_client!(self, |c| async move {
            let tx = c.transaction().await.map_err(db_err)?;
            tx.batch_execute(db::DURABLE).await.map_err(db_err)?;
            if let Some(key) = &cmd.idempotency_key {
                let q = format!("SELECT {COLUMNS} FROM commands WHERE idempotency_key = $1");
                if let Some(row) = tx.query_opt(&q, &[key]).await.map_err(db_err)? {
                    let existing = record(&row)?;
                    return if existing.body_hash == cmd.body_hash {
                        Ok(Submitted {
                            record: existing,
                            created: false,
                        })
                    } else {
                        Err(StoreError::IdempotencyConflict)
                    };
                }
            }
            let open: i64 = tx
                .query_one(
                    "SELECT count(*) FROM commands WHERE drone_id = $1 \
                     AND status IN ('queued', 'delivered', 'running')",
                    &[&cmd.drone_id],
                )
                .await
                .map_err(db_err)?
                .get(0);
            if open >= i64::try_from(max_open).unwrap_or(i64::MAX) {
                return Err(StoreError::DroneQueueFull);
            }
            let r = cmd.into_record();
            let inserted = tx
                .execute(
                    "INSERT INTO commands (id, drone_id, type, payload, deadline_ms, status, \
                     submitted_by, idempotency_key, body_hash, created_ms) \
                     VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9) \
                     ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
                    &[
                        &r.id.as_str(),
                        &r.drone_id,
                        &r.kind,
                        &r.payload,
                        &ms(r.deadline_ms),
                        &r.submitted_by,
                        &r.idempotency_key,
                        &r.body_hash,
                        &ms(r.created_ms),
                    ],
                )
                .await
                .map_err(db_err)?;
            if inserted == 0 {
                // A concurrent submit with the same key won the race: the client retries.
                return Err(StoreError::IdempotencyConflict);
            }
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &format!("s:{}", r.drone_id)],
            )
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            Ok(Submitted {
                record: r,
                created: true,
            })
        })
    }

    pub(super) async fn get(&self, id: &CommandId) -> Result<Option<CommandRecord>, StoreError> {
        with_client!(self, |c| async move {
            let q = format!("SELECT {COLUMNS} FROM commands WHERE id = $1");
            c.query_opt(&q, &[&id.as_str()])
                .await
                .map_err(db_err)?
                .as_ref()
                .map(record)
                .transpose()
        })
    }

    pub(super) async fn output(&self, id: &CommandId) -> Result<Vec<OutputChunk>, StoreError> {
        with_client!(self, |c| async move {
            let rows = c
                .query(
                    "SELECT stream, byte_offset, data FROM command_output WHERE command_id = $1 \
                     ORDER BY stream, byte_offset",
                    &[&id.as_str()],
                )
                .await
                .map_err(db_err)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let stream: i16 = r.get(0);
                    let offset: i64 = r.get(1);
                    OutputChunk {
                        stream: if stream == 1 {
                            Stream::Stderr
                        } else {
                            Stream::Stdout
                        },
                        offset: u64::try_from(offset).unwrap_or(0),
                        data: r.get(2),
                    }
                })
                .collect())
        })
    }

    pub(super) async fn list(
        &self,
        drone: &str,
        status: Option<CommandStatus>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<CommandRecord>, usize), StoreError> {
        let st = status.map(CommandStatus::as_str);
        with_client!(self, |c| async move {
            let total: i64 = c
                .query_one(
                    "SELECT count(*) FROM commands WHERE drone_id = $1 \
                     AND ($2::text IS NULL OR status = $2)",
                    &[&drone, &st],
                )
                .await
                .map_err(db_err)?
                .get(0);
            let q = format!(
                "SELECT {COLUMNS} FROM commands WHERE drone_id = $1 \
                 AND ($2::text IS NULL OR status = $2) \
                 ORDER BY created_ms DESC, id OFFSET $3 LIMIT $4"
            );
            let rows = c
                .query(
                    &q,
                    &[
                        &drone,
                        &st,
                        &i64::try_from(offset).unwrap_or(i64::MAX),
                        &i64::try_from(limit).unwrap_or(i64::MAX),
                    ],
                )
                .await
                .map_err(db_err)?;
            Ok((records(&rows)?, usize::try_from(total).unwrap_or(0)))
        })
    }

    /// Open commands by status and the `limit` most recent of them (the fleet page).
    pub(super) async fn in_flight(&self, limit: usize) -> Result<super::InFlight, StoreError> {
        with_client!(self, |c| async move {
            let mut out = super::InFlight::default();
            let counts = c
                .query(
                    "SELECT status, count(*) FROM commands \
                     WHERE status IN ('queued', 'delivered', 'running') GROUP BY status",
                    &[],
                )
                .await
                .map_err(db_err)?;
            for r in &counts {
                let status: String = r.try_get(0).map_err(db_err)?;
                let n: i64 = r.try_get(1).map_err(db_err)?;
                out.count(&status, u64::try_from(n).unwrap_or(0));
            }
            let q = format!(
                "SELECT {COLUMNS} FROM commands \
                 WHERE status IN ('queued', 'delivered', 'running') \
                 ORDER BY created_ms DESC, id LIMIT $1"
            );
            let rows = c
                .query(&q, &[&i64::try_from(limit).unwrap_or(i64::MAX)])
                .await
                .map_err(db_err)?;
            out.recent = records(&rows)?;
            Ok(out)
        })
    }

    pub(super) async fn cancel(
        &self,
        id: &CommandId,
        now_ms: u64,
    ) -> Result<CancelOutcome, StoreError> {
        with_client!(self, |c| async move {
            let tx = c.transaction().await.map_err(db_err)?;
            tx.batch_execute(db::DURABLE).await.map_err(db_err)?;
            let q = format!("SELECT {COLUMNS} FROM commands WHERE id = $1 FOR UPDATE");
            let Some(row) = tx.query_opt(&q, &[&id.as_str()]).await.map_err(db_err)? else {
                return Ok(CancelOutcome::NotFound);
            };
            let mut r = record(&row)?;
            if r.status.is_final() {
                return Ok(CancelOutcome::AlreadyFinal(r));
            }
            let was = r.status;
            r.status = CommandStatus::Cancelled;
            r.finished_ms = Some(now_ms);
            r.message = Some("cancelled by an operator".into());
            tx.execute(
                "UPDATE commands SET status = 'cancelled', finished_ms = $2, message = $3 \
                 WHERE id = $1",
                &[&id.as_str(), &ms(now_ms), &r.message],
            )
            .await
            .map_err(db_err)?;
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &format!("c:{}:{}", id, r.drone_id)],
            )
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            Ok(CancelOutcome::Cancelled { record: r, was })
        })
    }

    pub(super) async fn drone_seen(
        &self,
        drone: &str,
        relay: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        with_client!(self, |c| async move {
            c.execute(
                "INSERT INTO drones (id, relay_id, last_seen_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET relay_id = $2, last_seen_ms = $3",
                &[&drone, &relay, &ms(now_ms)],
            )
            .await
            .map_err(db_err)?;
            Ok(())
        })
    }

    pub(super) async fn drone_relay(&self, drone: &str) -> Result<Option<String>, StoreError> {
        with_client!(self, |c| async move {
            Ok(
                c.query_opt("SELECT relay_id FROM drones WHERE id = $1", &[&drone])
                    .await
                    .map_err(db_err)?
                    .map(|r| r.get(0)),
            )
        })
    }

    pub(super) async fn pending_for(
        &self,
        drone: &str,
        now_ms: u64,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        with_client!(self, |c| async move {
            let q = format!(
                "SELECT {COLUMNS} FROM commands WHERE drone_id = $1 \
                 AND (status = 'running' OR (status IN ('queued', 'delivered') AND deadline_ms >= $2)) \
                 ORDER BY created_ms, id"
            );
            records(&c.query(&q, &[&drone, &ms(now_ms)]).await.map_err(db_err)?)
        })
    }

    pub(super) async fn mark_delivered(
        &self,
        id: &CommandId,
        relay: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        with_client!(self, |c| async move {
            let row = c
                .query_opt(
                    "UPDATE commands SET delivered_ms = $3, relay_id = $2, \
                     status = CASE WHEN status = 'queued' THEN 'delivered' ELSE status END \
                     WHERE id = $1 AND status IN ('queued', 'delivered', 'running') \
                     RETURNING (SELECT status FROM commands WHERE id = $1)",
                    &[&id.as_str(), &relay, &ms(now_ms)],
                )
                .await
                .map_err(db_err)?;
            Ok(row.is_some_and(|r| r.get::<_, String>(0) == "queued"))
        })
    }

    pub(super) async fn accepted(
        &self,
        id: &CommandId,
        now_ms: u64,
    ) -> Result<Option<CommandRecord>, StoreError> {
        with_client!(self, |c| async move {
            let q = format!(
                "UPDATE commands SET status = 'running', accepted_ms = $2 \
                 WHERE id = $1 AND status IN ('queued', 'delivered') RETURNING {COLUMNS}"
            );
            c.query_opt(&q, &[&id.as_str(), &ms(now_ms)])
                .await
                .map_err(db_err)?
                .as_ref()
                .map(record)
                .transpose()
        })
    }

    pub(super) async fn finish(
        &self,
        id: &CommandId,
        status: CommandStatus,
        exit_code: i32,
        message: &str,
        now_ms: u64,
    ) -> Result<Option<CommandRecord>, StoreError> {
        with_client!(self, |c| async move {
            let q = format!(
                "UPDATE commands SET status = $2, exit_code = $3, message = $4, finished_ms = $5, \
                 accepted_ms = COALESCE(accepted_ms, $5) \
                 WHERE id = $1 AND status IN ('queued', 'delivered', 'running') RETURNING {COLUMNS}"
            );
            let tx = c.transaction().await.map_err(db_err)?;
            tx.batch_execute(db::DURABLE).await.map_err(db_err)?;
            let row = tx
                .query_opt(
                    &q,
                    &[
                        &id.as_str(),
                        &status.as_str(),
                        &exit_code,
                        &message,
                        &ms(now_ms),
                    ],
                )
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            row.as_ref().map(record).transpose()
        })
    }

    pub(super) async fn store_output(
        &self,
        id: &CommandId,
        chunk: OutputChunk,
        max_bytes: u64,
        max_chunks: u64,
    ) -> Result<OutputStored, StoreError> {
        with_client!(self, |c| async move {
            let tx = c.transaction().await.map_err(db_err)?;
            tx.batch_execute(db::DURABLE).await.map_err(db_err)?;
            let Some(row) = tx
                .query_opt(
                    "SELECT output_bytes, (SELECT count(*) FROM command_output WHERE command_id = $1) \
                     FROM commands WHERE id = $1 FOR UPDATE",
                    &[&id.as_str()],
                )
                .await
                .map_err(db_err)?
            else {
                return Ok(OutputStored::UnknownCommand);
            };
            let total: i64 = row.get(0);
            let chunks: i64 = row.get(1);
            let len = chunk.data.len() as i64;
            let stream = chunk.stream as i16;
            let exists = tx
                .query_opt(
                    "SELECT 1 FROM command_output WHERE command_id = $1 AND stream = $2 \
                     AND byte_offset = $3",
                    &[&id.as_str(), &stream, &ms(chunk.offset)],
                )
                .await
                .map_err(db_err)?
                .is_some();
            if exists {
                return Ok(OutputStored::Duplicate);
            }
            if total + len > ms(max_bytes) || chunks >= ms(max_chunks) {
                return Ok(OutputStored::OverLimit);
            }
            let n = tx
                .execute(
                    "INSERT INTO command_output (command_id, stream, byte_offset, data) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&id.as_str(), &stream, &ms(chunk.offset), &chunk.data],
                )
                .await
                .map_err(db_err)?;
            if n == 0 {
                return Ok(OutputStored::Duplicate);
            }
            tx.execute(
                "UPDATE commands SET output_bytes = output_bytes + $2 WHERE id = $1",
                &[&id.as_str(), &len],
            )
            .await
            .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            Ok(OutputStored::Inserted)
        })
    }

    pub(super) async fn expire_due(
        &self,
        now_ms: u64,
        limit: i64,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        with_client!(self, |c| async move {
            let q = format!(
                "UPDATE commands SET status = 'expired', finished_ms = $1, \
                 message = 'deadline passed before the agent accepted it' \
                 WHERE id IN (SELECT id FROM commands WHERE status IN ('queued', 'delivered') \
                 AND deadline_ms < $1 ORDER BY deadline_ms LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING {COLUMNS}"
            );
            records(&c.query(&q, &[&ms(now_ms), &limit]).await.map_err(db_err)?)
        })
    }
}

/// Parses a NOTIFY payload.
pub(super) fn parse_notice(payload: &str) -> Option<Notice> {
    if let Some(drone) = payload.strip_prefix("s:") {
        return Some(Notice::Submitted(drone.to_owned()));
    }
    let rest = payload.strip_prefix("c:")?;
    let (id, drone) = rest.split_once(':')?;
    Some(Notice::Cancelled(drone.to_owned(), CommandId::parse(id)?))
}

/// Listens on [`CHANNEL`] with a connection of its own and republishes every notification as a
/// [`Notice`]; reconnects with backoff, and after every (re)connect publishes [`Notice::Resync`]
/// so relays poll for whatever was submitted while it was away. Runs until aborted.
pub(super) async fn listen(
    url: Arc<str>,
    timeout: Duration,
    notices: broadcast::Sender<Notice>,
    healthy: crate::HealthFlag,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match tokio::time::timeout(
            timeout,
            tokio_postgres::connect(&url, tokio_postgres::NoTls),
        )
        .await
        {
            Ok(Ok((client, mut connection))) => {
                let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let sql = format!("LISTEN {CHANNEL}");
                let listen = client.batch_execute(&sql);
                // The connection must be polled for the LISTEN to complete.
                let mut listen = std::pin::pin!(listen);
                let ok = loop {
                    tokio::select! {
                        r = &mut listen => break r.is_ok(),
                        m = stream.next() => if !matches!(m, Some(Ok(_))) { break false },
                    }
                };
                if ok {
                    backoff = Duration::from_millis(100);
                    healthy.set_healthy(true);
                    let _ = notices.send(Notice::Resync);
                    while let Some(Ok(msg)) = stream.next().await {
                        if let AsyncMessage::Notification(n) = msg {
                            if let Some(notice) = parse_notice(n.payload()) {
                                let _ = notices.send(notice);
                            }
                        }
                    }
                }
                healthy.set_healthy(false);
                tracing::warn!("command notification listener lost its connection; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "command listener cannot connect"),
            Err(_) => tracing::debug!("command listener connect timed out"),
        }
        metrics::counter!("contrail_command_listener_reconnects_total").increment(1);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse() {
        assert_eq!(
            parse_notice("s:drone-1"),
            Some(Notice::Submitted("drone-1".into()))
        );
        let id = CommandId::random();
        assert_eq!(
            parse_notice(&format!("c:{id}:drone:x")),
            Some(Notice::Cancelled("drone:x".into(), id))
        );
        assert_eq!(parse_notice("c:nothex:d"), None);
        assert_eq!(parse_notice("x"), None);
    }
}
