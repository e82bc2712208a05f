//! [`PostgresJobStore`]: job records in the backend's schema (table
//! `job_records`), one statement or function call per operation.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use queue_core::store::{AttemptError, JobCursor, JobPage, JobQuery, JobStats};
use queue_core::{
    Error, ErrorKind, JobRecord, JobStatus, JobStore, JobUpdate, MessageId, Priority, QueueName,
    Result, RetentionPolicy,
};
use sqlx::postgres::PgRow;
use sqlx::Row as _;

use crate::consumer::time_of_ms;
use crate::shared::Shared;

/// Job records kept in the backend's schema and shared by every process
/// on the same database: what the worker writes as jobs run, and what
/// `queue jobs` and the dashboard read. Each operation is one statement
/// (a status change is one call that applies it under a row lock).
///
/// [`PostgresBackend::job_store`](crate::PostgresBackend::job_store)
/// hands it out; a separate store is another schema.
#[derive(Clone, Debug)]
pub struct PostgresJobStore {
    shared: Arc<Shared>,
}

const COLUMNS: &str = "id, queue, status, priority, attempts, max_attempts, result, last_error, \
     errors::text, idempotency_key, name, created_ms, updated_ms, started_ms, finished_ms";

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl PostgresJobStore {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        PostgresJobStore { shared }
    }

    fn sql(&self, text: &str) -> String {
        text.replace("{s}", &self.shared.schema)
            .replace("{columns}", COLUMNS)
    }

    fn fail(&self, doing: &'static str) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |e| self.shared.error(e, doing)
    }

    /// A record from a row of [`COLUMNS`].
    fn record_of(&self, row: &PgRow) -> Result<JobRecord> {
        let fail = self.fail("reading a job record");
        let id: uuid::Uuid = row.try_get(0).map_err(&fail)?;
        let id = MessageId::from(id);
        let corrupt = |field: &str| {
            Error::new(
                ErrorKind::Decode,
                format!("job {id}: column {field:?} is invalid in PostgreSQL"),
            )
        };
        let queue: String = row.try_get(1).map_err(&fail)?;
        let queue = QueueName::new(queue).map_err(|_| corrupt("queue"))?;
        let status: String = row.try_get(2).map_err(&fail)?;
        let status = status.parse::<JobStatus>().map_err(|_| corrupt("status"))?;
        let priority: i16 = row.try_get(3).map_err(&fail)?;
        let priority = u8::try_from(priority)
            .ok()
            .and_then(Priority::from_level)
            .ok_or_else(|| corrupt("priority"))?;
        let attempts: i64 = row.try_get(4).map_err(&fail)?;
        let max_attempts: i64 = row.try_get(5).map_err(&fail)?;
        let mut record = JobRecord::submitted(
            id,
            queue,
            priority,
            u32::try_from(max_attempts).unwrap_or(u32::MAX),
            false,
        );
        record.status = status;
        record.attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
        let result: Option<String> = row.try_get(6).map_err(&fail)?;
        record.result = match result {
            Some(json) => Some(serde_json::from_str(&json).map_err(|_| corrupt("result"))?),
            None => None,
        };
        record.last_error = row.try_get(7).map_err(&fail)?;
        let errors: String = row.try_get(8).map_err(&fail)?;
        let errors: Vec<(u32, i64, String)> =
            serde_json::from_str(&errors).map_err(|_| corrupt("errors"))?;
        record.errors = errors
            .into_iter()
            .map(|(attempt, at, error)| AttemptError::new(attempt, time_of_ms(at), error))
            .collect();
        record.idempotency_key = row.try_get(9).map_err(&fail)?;
        record.name = row.try_get(10).map_err(&fail)?;
        record.created_at = time_of_ms(row.try_get(11).map_err(&fail)?);
        record.updated_at = time_of_ms(row.try_get(12).map_err(&fail)?);
        let started: Option<i64> = row.try_get(13).map_err(&fail)?;
        record.started_at = started.map(time_of_ms);
        let finished: Option<i64> = row.try_get(14).map_err(&fail)?;
        record.finished_at = finished.map(time_of_ms);
        Ok(record)
    }

    async fn change(
        &self,
        id: MessageId,
        kind: &str,
        attempt: u32,
        result: Option<String>,
        error: Option<&str>,
    ) -> Result<Option<String>> {
        self.shared.check_open()?;
        sqlx::query_scalar(&self.sql("SELECT {s}.job_update($1, $2, $3, $4, $5)"))
            .bind(id.as_uuid())
            .bind(kind)
            .bind(i64::from(attempt))
            .bind(result)
            .bind(error)
            .fetch_one(&self.shared.pool)
            .await
            .map_err(self.fail("updating a job record"))
    }
}

#[async_trait]
impl JobStore for PostgresJobStore {
    async fn insert(&self, record: JobRecord) -> Result<MessageId> {
        self.shared.check_open()?;
        let first: uuid::Uuid =
            sqlx::query_scalar(&self.sql("SELECT {s}.job_insert($1, $2, $3, $4, $5, $6, $7, $8)"))
                .bind(record.id.as_uuid())
                .bind(record.queue.as_str())
                .bind(record.status.as_str())
                .bind(i16::from(record.priority.level()))
                .bind(i64::from(record.max_attempts))
                .bind(record.idempotency_key.as_deref())
                .bind(record.name.as_deref())
                .bind(millis(record.created_at))
                .fetch_one(&self.shared.pool)
                .await
                .map_err(self.fail("recording a job"))?;
        Ok(MessageId::from(first))
    }

    async fn get(&self, id: MessageId) -> Result<Option<JobRecord>> {
        self.shared.check_open()?;
        let row = sqlx::query(&self.sql("SELECT {columns} FROM {s}.job_records WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.shared.pool)
            .await
            .map_err(self.fail("reading a job record"))?;
        row.as_ref().map(|row| self.record_of(row)).transpose()
    }

    async fn update(&self, id: MessageId, update: JobUpdate) -> Result<()> {
        let (kind, attempt, result, error) = match update {
            JobUpdate::Running { attempt } => ("running", attempt, None, None),
            JobUpdate::Completed { result } => {
                ("completed", 0, result.map(|value| value.to_string()), None)
            }
            JobUpdate::Failed { error } => ("failed", 0, None, Some(error)),
            JobUpdate::Retry { error } => ("retry", 0, None, Some(error)),
            JobUpdate::Dead { error } => ("dead", 0, None, Some(error)),
            JobUpdate::Cancelled => ("cancelled", 0, None, None),
            JobUpdate::Requeued => ("requeued", 0, None, None),
            other => {
                return Err(Error::unsupported(format!(
                    "job update {other:?}: not known to this store"
                )))
            }
        };
        self.change(id, kind, attempt, result, error.as_deref())
            .await
            .map(drop)
    }

    async fn start(&self, id: MessageId, attempt: u32) -> Result<bool> {
        let was = self.change(id, "running", attempt, None, None).await?;
        Ok(was.as_deref() != Some(JobStatus::Cancelled.as_str()))
    }

    async fn cancel(&self, id: MessageId) -> Result<bool> {
        self.shared.check_open()?;
        let cancelled = sqlx::query(&self.sql(
            "UPDATE {s}.job_records SET status = 'cancelled', \
             updated_ms = {s}.epoch_ms(clock_timestamp()), finished_ms = {s}.epoch_ms(clock_timestamp()) \
             WHERE id = $1 AND status IN ('pending', 'scheduled')",
        ))
        .bind(id.as_uuid())
        .execute(&self.shared.pool)
        .await
        .map_err(self.fail("cancelling a job"))?;
        Ok(cancelled.rows_affected() == 1)
    }

    async fn stats(&self) -> Result<JobStats> {
        self.shared.check_open()?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            &self.sql("SELECT status, count(*) FROM {s}.job_records GROUP BY status"),
        )
        .fetch_all(&self.shared.pool)
        .await
        .map_err(self.fail("counting jobs"))?;
        let mut stats = JobStats::default();
        for (status, n) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            match status.parse::<JobStatus>() {
                Ok(JobStatus::Pending) => stats.pending += n,
                Ok(JobStatus::Scheduled) => stats.scheduled += n,
                Ok(JobStatus::Running) => stats.running += n,
                Ok(JobStatus::Completed) => stats.completed += n,
                Ok(JobStatus::Failed) => stats.failed += n,
                Ok(JobStatus::Retry) => stats.retry += n,
                Ok(JobStatus::Cancelled) => stats.cancelled += n,
                Ok(JobStatus::Dead) => stats.dead += n,
                // A status written by a newer build is not counted.
                _ => {}
            }
        }
        Ok(stats)
    }

    async fn cleanup(&self, policy: &RetentionPolicy) -> Result<u64> {
        self.shared.check_open()?;
        let mut removed = 0;
        if let Some(max_age) = policy.max_age {
            let gone = sqlx::query(&self.sql(
                "DELETE FROM {s}.job_records \
                 WHERE finished_ms IS NOT NULL AND finished_ms < {s}.epoch_ms(clock_timestamp()) - $1",
            ))
            .bind(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX))
            .execute(&self.shared.pool)
            .await
            .map_err(self.fail("removing old jobs"))?;
            removed += gone.rows_affected();
        }
        if let Some(max_count) = policy.max_count {
            let gone = sqlx::query(&self.sql(
                "DELETE FROM {s}.job_records WHERE id IN ( \
                   SELECT id FROM {s}.job_records WHERE finished_ms IS NOT NULL \
                   ORDER BY finished_ms DESC, id DESC OFFSET $1)",
            ))
            .bind(i64::try_from(max_count).unwrap_or(i64::MAX))
            .execute(&self.shared.pool)
            .await
            .map_err(self.fail("removing old jobs"))?;
            removed += gone.rows_affected();
        }
        Ok(removed)
    }

    async fn list(&self, query: &JobQuery) -> Result<JobPage> {
        query.check()?;
        self.shared.check_open()?;
        let (after_ms, after_id) = match &query.cursor {
            Some(cursor) => (
                Some(i64::try_from(cursor.created_ms).unwrap_or(i64::MAX)),
                Some(cursor.id.as_uuid()),
            ),
            None => (None, None),
        };
        let rows = sqlx::query(&self.sql(
            "SELECT {columns} FROM {s}.job_records \
             WHERE ($1::text IS NULL OR status = $1) \
               AND ($2::text IS NULL OR queue = $2) \
               AND ($3::text IS NULL OR strpos(lower(coalesce(name, '')), lower($3)) > 0 \
                    OR strpos(lower(coalesce(last_error, '')), lower($3)) > 0 \
                    OR strpos(id::text, lower($3)) > 0) \
               AND ($4::bigint IS NULL OR (created_ms, id) < ($4, $5::uuid)) \
             ORDER BY created_ms DESC, id DESC LIMIT $6",
        ))
        .bind(query.status.map(JobStatus::as_str))
        .bind(query.queue.as_ref().map(QueueName::as_str))
        .bind(query.search.as_deref())
        .bind(after_ms)
        .bind(after_id)
        .bind(i64::try_from(query.limit).unwrap_or(i64::MAX) + 1)
        .fetch_all(&self.shared.pool)
        .await
        .map_err(self.fail("listing jobs"))?;
        let more = rows.len() > query.limit;
        let jobs = rows
            .iter()
            .take(query.limit)
            .map(|row| self.record_of(row))
            .collect::<Result<Vec<_>>>()?;
        let next = if more {
            jobs.last().map(JobCursor::of)
        } else {
            None
        };
        Ok(JobPage::new(jobs, next))
    }

    async fn delete(&self, id: MessageId) -> Result<bool> {
        self.shared.check_open()?;
        let gone = sqlx::query(&self.sql("DELETE FROM {s}.job_records WHERE id = $1"))
            .bind(id.as_uuid())
            .execute(&self.shared.pool)
            .await
            .map_err(self.fail("deleting a job record"))?;
        Ok(gone.rows_affected() == 1)
    }
}
