//! Queue administration: each call one statement on the schema's tables
//! or functions.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use queue_core::{
    envelope, Admin, DeadLetter, DeadLetterCursor, DeadLetterPage, DeadLetterQuery,
    DeadLetterReason, Error, ErrorKind, HealthStatus, Message, MessageId, QueueName, QueueOptions,
    QueueStats, Redrive, Result, WorkerInfo,
};
use sqlx::Row as _;

use crate::backend::PostgresBackend;
use crate::consumer::time_of_ms;
use crate::ctx::missing;

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PostgresBackend {
    /// The mapping of a driver error of an operation on `queue` (a
    /// missing queue is named as such).
    fn queue_error<'a>(
        &'a self,
        queue: &'a QueueName,
        doing: &'a str,
    ) -> impl Fn(sqlx::Error) -> Error + 'a {
        move |e| {
            let error = self.shared.error(e, doing);
            if error.kind() == ErrorKind::NotFound {
                missing(queue)
            } else {
                error
            }
        }
    }

    /// Fail with `NotFound` unless `queue` exists; housekeeping first, so
    /// what is read next is exact.
    async fn maintained(&self, queue: &QueueName, doing: &str) -> Result<()> {
        self.shared.check_open()?;
        let s = &self.shared.schema;
        sqlx::query(&format!(
            "SELECT {s}.maintain(({s}.existing($1)).name, clock_timestamp())"
        ))
        .bind(queue.as_str())
        .execute(&self.shared.pool)
        .await
        .map_err(self.queue_error(queue, doing))?;
        Ok(())
    }
}

#[async_trait]
impl Admin for PostgresBackend {
    async fn ensure_queue(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        options.check()?;
        self.shared.check_open()?;
        let max_length = options
            .max_length
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        sqlx::query(&format!(
            "INSERT INTO {}.queues (name, max_length) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET max_length = excluded.max_length",
            self.shared.schema
        ))
        .bind(queue.as_str())
        .bind(max_length)
        .execute(&self.shared.pool)
        .await
        .map_err(self.queue_error(queue, "creating the queue"))?;
        Ok(())
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.shared.check_open()?;
        let s = &self.shared.schema;
        let error = self.queue_error(queue, "deleting the queue");
        let mut tx = self.shared.pool.begin().await.map_err(&error)?;
        // The queue's row first: it waits for the sends still holding it
        // (a key-share lock), and each later statement, reading afresh,
        // sees what they wrote.
        sqlx::query(&format!("DELETE FROM {s}.queues WHERE name = $1"))
            .bind(queue.as_str())
            .execute(&mut *tx)
            .await
            .map_err(&error)?;
        for table in ["jobs", "dead", "counters", "idempotency"] {
            sqlx::query(&format!("DELETE FROM {s}.{table} WHERE queue = $1"))
                .bind(queue.as_str())
                .execute(&mut *tx)
                .await
                .map_err(&error)?;
        }
        // Waiting consumers look again, and find the queue gone.
        sqlx::query(&format!("SELECT {s}.wake($1)"))
            .bind(queue.as_str())
            .execute(&mut *tx)
            .await
            .map_err(&error)?;
        tx.commit().await.map_err(&error)?;
        Ok(())
    }

    async fn purge(&self, queue: &QueueName) -> Result<u64> {
        self.shared.check_open()?;
        let s = &self.shared.schema;
        let removed = sqlx::query(&format!(
            "WITH q AS (SELECT ({s}.existing($1)).name) \
             DELETE FROM {s}.jobs WHERE queue = (SELECT name FROM q)"
        ))
        .bind(queue.as_str())
        .execute(&self.shared.pool)
        .await
        .map_err(self.queue_error(queue, "purging"))?;
        Ok(removed.rows_affected())
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        self.shared.check_open()?;
        let row = sqlx::query(&format!("SELECT * FROM {}.stats($1)", self.shared.schema))
            .bind(queue.as_str())
            .fetch_one(&self.shared.pool)
            .await
            .map_err(self.queue_error(queue, "reading stats"))?;
        let get = |i: usize| -> Result<i64> {
            row.try_get::<i64, _>(i)
                .map_err(|e| self.shared.error(e, "reading stats"))
        };
        let mut stats = QueueStats::default();
        stats.ready = count(get(0)?);
        stats.delayed = count(get(1)?);
        stats.in_flight = count(get(2)?);
        stats.dead = count(get(3)?);
        stats.enqueued_total = count(get(4)?);
        stats.acked_total = count(get(5)?);
        stats.retried_total = count(get(6)?);
        stats.dead_lettered_total = count(get(7)?);
        stats.expired_total = count(get(8)?);
        stats.deduplicated_total = count(get(9)?);
        stats.paused = row
            .try_get(10)
            .map_err(|e| self.shared.error(e, "reading stats"))?;
        let oldest: Option<i64> = row
            .try_get(11)
            .map_err(|e| self.shared.error(e, "reading stats"))?;
        stats.oldest_ready_age = oldest.map(|ms| Duration::from_millis(count(ms)));
        Ok(stats)
    }

    /// Letters in the order they died, after a cursor that is the last
    /// letter's position (`seq`).
    async fn dead_letter_page(
        &self,
        queue: &QueueName,
        query: &DeadLetterQuery,
    ) -> Result<DeadLetterPage> {
        query.check()?;
        let after: i64 = match &query.after {
            None => 0,
            Some(cursor) => cursor.as_str().parse().map_err(|_| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "{:?} is not a dead-letter cursor of this backend (pass back a page's `next`)",
                        cursor.as_str().chars().take(40).collect::<String>()
                    ),
                )
            })?,
        };
        self.maintained(queue, "reading dead letters").await?;
        let rows = sqlx::query(&format!(
            "SELECT seq, id, reason, attempts, attempt, last_error, {s}.epoch_ms(dead_at), body \
             FROM {s}.dead WHERE queue = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            s = self.shared.schema
        ))
        .bind(queue.as_str())
        .bind(after)
        .bind(i64::try_from(query.limit).unwrap_or(i64::MAX) + 1)
        .fetch_all(&self.shared.pool)
        .await
        .map_err(self.queue_error(queue, "reading dead letters"))?;
        let more = rows.len() > query.limit;
        let mut letters = Vec::with_capacity(rows.len().min(query.limit));
        let mut last = 0;
        for row in rows.into_iter().take(query.limit) {
            let fail = |e| self.shared.error(e, "reading dead letters");
            let seq: i64 = row.try_get(0).map_err(fail)?;
            let id: uuid::Uuid = row.try_get(1).map_err(fail)?;
            let reason: String = row.try_get(2).map_err(fail)?;
            let attempts: i64 = row.try_get(3).map_err(fail)?;
            let attempt: i64 = row.try_get(4).map_err(fail)?;
            let last_error: Option<String> = row.try_get(5).map_err(fail)?;
            let dead_ms: i64 = row.try_get(6).map_err(fail)?;
            let body: Vec<u8> = row.try_get(7).map_err(fail)?;
            let body = Bytes::from(body);
            let mut message = if envelope::looks_like_envelope(&body) {
                match envelope::decode(&body) {
                    Ok(message) => message,
                    // Kept as the bytes it was, as the letter of a decode failure.
                    Err(_) => Message::new(body).with_id(MessageId::from(id)),
                }
            } else {
                Message::new(body).with_id(MessageId::from(id))
            };
            message.attempt = u32::try_from(attempt).unwrap_or(u32::MAX).max(1);
            if last_error.is_some() {
                message.last_error = last_error;
            }
            message.not_before = None;
            let mut letter = DeadLetter::new(
                message,
                DeadLetterReason::parse(&reason),
                u32::try_from(attempts).unwrap_or(u32::MAX),
            );
            letter.dead_lettered_at = time_of_ms(dead_ms);
            if let Some(max) = query.preview {
                letter = letter.preview(max);
            }
            letters.push(letter);
            last = seq;
        }
        let next = more.then(|| DeadLetterCursor::new(last.to_string()));
        Ok(DeadLetterPage::new(letters, next))
    }

    async fn redrive(&self, queue: &QueueName, which: Redrive) -> Result<u64> {
        self.shared.check_open()?;
        let ids: Option<Vec<uuid::Uuid>> = match which {
            Redrive::All => None,
            Redrive::Ids(ids) => Some(ids.iter().map(MessageId::as_uuid).collect()),
            other => {
                return Err(Error::unsupported(format!(
                    "redrive {other:?} of queue {queue}: not known to this backend"
                )))
            }
        };
        let moved: i64 =
            sqlx::query_scalar(&format!("SELECT {}.redrive($1, $2)", self.shared.schema))
                .bind(queue.as_str())
                .bind(ids)
                .fetch_one(&self.shared.pool)
                .await
                .map_err(self.queue_error(queue, "redriving"))?;
        Ok(count(moved))
    }

    async fn health(&self) -> HealthStatus {
        self.health_check().await
    }

    async fn queues(&self) -> Result<Vec<QueueName>> {
        self.shared.check_open()?;
        let names: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT name FROM {}.queues ORDER BY name",
            self.shared.schema
        ))
        .fetch_all(&self.shared.pool)
        .await
        .map_err(|e| self.shared.error(e, "listing queues"))?;
        // A row written by hand with a name no backend accepts is skipped.
        Ok(names
            .into_iter()
            .filter_map(|name| QueueName::new(name).ok())
            .collect())
    }

    async fn pause(&self, queue: &QueueName) -> Result<()> {
        self.set_paused(queue, true).await
    }

    async fn resume(&self, queue: &QueueName) -> Result<()> {
        self.set_paused(queue, false).await
    }

    async fn register_worker(&self, worker: &WorkerInfo) -> Result<()> {
        self.shared.check_open()?;
        let info = serde_json::to_string(worker).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, "worker info does not serialize").with_source(e)
        })?;
        let ttl = i64::try_from(worker.ttl().as_millis()).unwrap_or(i64::MAX / 4);
        sqlx::query(&format!(
            "INSERT INTO {}.workers (id, queue, info, expires_at) \
             VALUES ($1, $2, $3, clock_timestamp() + $4 * interval '1 millisecond') \
             ON CONFLICT (id) DO UPDATE SET queue = excluded.queue, info = excluded.info, \
             expires_at = excluded.expires_at",
            self.shared.schema
        ))
        .bind(&worker.id)
        .bind(worker.queue.as_str())
        .bind(info)
        .bind(ttl)
        .execute(&self.shared.pool)
        .await
        .map_err(|e| self.shared.error(e, "registering a worker"))?;
        Ok(())
    }

    async fn deregister_worker(&self, id: &str) -> Result<()> {
        self.shared.check_open()?;
        sqlx::query(&format!(
            "DELETE FROM {}.workers WHERE id = $1",
            self.shared.schema
        ))
        .bind(id)
        .execute(&self.shared.pool)
        .await
        .map_err(|e| self.shared.error(e, "deregistering a worker"))?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.shared.check_open()?;
        let s = &self.shared.schema;
        // Stale rows go as they are read past.
        sqlx::query(&format!(
            "DELETE FROM {s}.workers WHERE expires_at <= clock_timestamp()"
        ))
        .execute(&self.shared.pool)
        .await
        .map_err(|e| self.shared.error(e, "listing workers"))?;
        let infos: Vec<String> = sqlx::query_scalar(&format!("SELECT info FROM {s}.workers"))
            .fetch_all(&self.shared.pool)
            .await
            .map_err(|e| self.shared.error(e, "listing workers"))?;
        // A row that does not parse (written by another build) is skipped.
        let mut live: Vec<WorkerInfo> = infos
            .iter()
            .filter_map(|info| serde_json::from_str(info).ok())
            .collect();
        queue_core::stats::sort_workers(&mut live);
        Ok(live)
    }
}

impl PostgresBackend {
    async fn set_paused(&self, queue: &QueueName, paused: bool) -> Result<()> {
        self.shared.check_open()?;
        let s = &self.shared.schema;
        let changed = sqlx::query(&format!(
            "WITH u AS (UPDATE {s}.queues SET paused = $2 WHERE name = $1 RETURNING name) \
             SELECT {s}.wake(name) FROM u"
        ))
        .bind(queue.as_str())
        .bind(paused)
        .execute(&self.shared.pool)
        .await
        .map_err(self.queue_error(queue, "pausing"))?;
        if changed.rows_affected() == 0 {
            return Err(missing(queue));
        }
        Ok(())
    }
}
