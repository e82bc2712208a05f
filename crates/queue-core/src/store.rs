//! Where job status, attempts, results and errors are kept.
//!
//! [`JobStore`] is the contract; [`MemoryJobStore`] keeps records in
//! process. A backend may provide a shared store (Redis does, in its own
//! issue) so every process sees the same statuses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::job::JobStatus;
use crate::message::{MessageId, Priority, QueueName};

/// Everything known about one submitted job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobRecord {
    /// The job's id (its message id).
    pub id: MessageId,
    /// Its queue.
    pub queue: QueueName,
    /// Where it is in its life.
    pub status: JobStatus,
    /// Priority.
    pub priority: Priority,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The handler's result (JSON) once completed.
    pub result: Option<serde_json::Value>,
    /// The last failure.
    pub last_error: Option<String>,
    /// The failures of its attempts, oldest first: the last
    /// [`JobRecord::MAX_ERRORS`] of them.
    pub errors: Vec<AttemptError>,
    /// The job's idempotency key: a second submission with it returns this job.
    pub idempotency_key: Option<String>,
    /// What kind of job it is: the payload's type name as submitted
    /// (`SendEmail`), shown by tools and matched by a search.
    pub name: Option<String>,
    /// Submitted at.
    pub created_at: SystemTime,
    /// Last status change.
    pub updated_at: SystemTime,
    /// When the latest attempt started.
    pub started_at: Option<SystemTime>,
    /// When it reached a terminal status.
    pub finished_at: Option<SystemTime>,
}

/// One failed attempt of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AttemptError {
    /// The attempt that failed (from 1; 0 when the job never started, as
    /// when it could not be enqueued).
    pub attempt: u32,
    /// When it was recorded (milliseconds since the Unix epoch in JSON).
    #[serde(with = "crate::stats::epoch_millis")]
    pub at: SystemTime,
    /// The error.
    pub error: String,
}

impl AttemptError {
    /// Attempt `attempt` failed with `error` at `at`.
    pub fn new(attempt: u32, at: SystemTime, error: impl Into<String>) -> Self {
        AttemptError {
            attempt,
            at,
            error: error.into(),
        }
    }
}

impl JobRecord {
    /// Failed attempts a record keeps (the newest).
    pub const MAX_ERRORS: usize = 20;

    /// Add a failure of the current attempt, unless it is the one
    /// recorded last (a status put back after a failed retry).
    pub fn remember_error(&mut self, at: SystemTime, error: &str) {
        let repeat = self
            .errors
            .last()
            .is_some_and(|last| last.attempt == self.attempts && last.error == error);
        if !repeat {
            self.errors
                .push(AttemptError::new(self.attempts, at, error));
        }
        let excess = self.errors.len().saturating_sub(JobRecord::MAX_ERRORS);
        self.errors.drain(..excess);
    }

    /// A record for a job just submitted.
    pub fn submitted(
        id: MessageId,
        queue: QueueName,
        priority: Priority,
        max_attempts: u32,
        scheduled: bool,
    ) -> Self {
        let now = SystemTime::now();
        JobRecord {
            id,
            queue,
            status: if scheduled {
                JobStatus::Scheduled
            } else {
                JobStatus::Pending
            },
            priority,
            attempts: 0,
            max_attempts,
            result: None,
            last_error: None,
            errors: Vec::new(),
            idempotency_key: None,
            name: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
        }
    }
}

/// A status change reported by a worker or the scheduler.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum JobUpdate {
    /// Attempt `attempt` started.
    Running {
        /// The attempt number.
        attempt: u32,
    },
    /// Finished with this result.
    Completed {
        /// The handler's result as JSON.
        result: Option<serde_json::Value>,
    },
    /// Failed for good without a dead letter (e.g. it could not be enqueued).
    Failed {
        /// The failure.
        error: String,
    },
    /// The attempt failed; another follows.
    Retry {
        /// The failure.
        error: String,
    },
    /// Dead-lettered.
    Dead {
        /// Why.
        error: String,
    },
    /// Cancelled.
    Cancelled,
    /// Sent back to its queue by hand (a dead job retried now): pending
    /// again, with its attempts and last error kept.
    Requeued,
}

/// Counts of jobs by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct JobStats {
    /// Waiting for a worker.
    pub pending: u64,
    /// Waiting for their time.
    pub scheduled: u64,
    /// Running now.
    pub running: u64,
    /// Completed.
    pub completed: u64,
    /// Failed for good (not dead-lettered).
    pub failed: u64,
    /// Waiting for a retry.
    pub retry: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Dead-lettered.
    pub dead: u64,
}

impl JobStats {
    fn count(&mut self, status: JobStatus) {
        let slot = match status {
            JobStatus::Pending => &mut self.pending,
            JobStatus::Scheduled => &mut self.scheduled,
            JobStatus::Running => &mut self.running,
            JobStatus::Completed => &mut self.completed,
            JobStatus::Failed => &mut self.failed,
            JobStatus::Retry => &mut self.retry,
            JobStatus::Cancelled => &mut self.cancelled,
            JobStatus::Dead => &mut self.dead,
        };
        *slot += 1;
    }

    /// Jobs tracked in all.
    pub fn total(&self) -> u64 {
        self.pending
            + self.scheduled
            + self.running
            + self.completed
            + self.failed
            + self.retry
            + self.cancelled
            + self.dead
    }
}

/// How long finished jobs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionPolicy {
    /// Remove finished jobs older than this (by finish time).
    pub max_age: Option<Duration>,
    /// Keep at most this many finished jobs (the newest).
    pub max_count: Option<usize>,
}

impl RetentionPolicy {
    /// Keep finished jobs for `max_age` and at most `max_count` of them.
    pub fn new(max_age: Option<Duration>, max_count: Option<usize>) -> Self {
        RetentionPolicy { max_age, max_count }
    }
}

/// Which jobs [`JobStore::list`] returns: newest first (by creation time),
/// optionally of one status and one queue, optionally matching a search,
/// a page at a time.
///
/// ```
/// use queue_core::{JobQuery, JobStatus};
/// let query = JobQuery::new().with_status(JobStatus::Dead).with_search("timeout").with_limit(20);
/// assert_eq!(query.limit, 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobQuery {
    /// Only jobs with this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this queue.
    pub queue: Option<QueueName>,
    /// Only jobs whose name, last error or id contains this text, ignoring
    /// ASCII case.
    pub search: Option<String>,
    /// Continue after this cursor (a previous page's [`JobPage::next`]).
    pub cursor: Option<JobCursor>,
    /// Most jobs in the page (1 to [`JobQuery::MAX_LIMIT`]; default 50).
    pub limit: usize,
}

impl Default for JobQuery {
    fn default() -> Self {
        JobQuery::new()
    }
}

impl JobQuery {
    /// The largest page.
    pub const MAX_LIMIT: usize = 1000;

    /// The longest search text, in characters: every listing compares it
    /// with each record it looks at.
    pub const MAX_SEARCH_CHARS: usize = 256;

    /// Every job, newest first, 50 a page.
    pub fn new() -> Self {
        JobQuery {
            status: None,
            queue: None,
            search: None,
            cursor: None,
            limit: 50,
        }
    }

    /// Only jobs with `status`.
    pub fn with_status(mut self, status: JobStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only jobs of `queue`.
    pub fn with_queue(mut self, queue: QueueName) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Only jobs whose name, last error or id contains `text` (ASCII case
    /// ignored); an empty text matches every job.
    pub fn with_search(mut self, text: impl Into<String>) -> Self {
        let text = text.into();
        self.search = (!text.is_empty()).then_some(text);
        self
    }

    /// The page after `cursor`.
    pub fn after(mut self, cursor: JobCursor) -> Self {
        self.cursor = Some(cursor);
        self
    }

    /// At most `limit` jobs a page.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Refuse a limit outside 1 to [`MAX_LIMIT`](JobQuery::MAX_LIMIT), or
    /// a search longer than [`MAX_SEARCH_CHARS`](JobQuery::MAX_SEARCH_CHARS).
    ///
    /// ```
    /// use queue_core::{ErrorKind, JobQuery};
    /// let long = JobQuery::new().with_search("x".repeat(257));
    /// assert_eq!(long.check().unwrap_err().kind(), ErrorKind::InvalidInput);
    /// assert!(JobQuery::new().with_search("x".repeat(256)).check().is_ok());
    /// ```
    pub fn check(&self) -> Result<()> {
        if let Some(search) = &self.search {
            let chars = search.chars().count();
            if chars > JobQuery::MAX_SEARCH_CHARS {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "search: at most {} characters, got {chars}",
                        JobQuery::MAX_SEARCH_CHARS
                    ),
                ));
            }
        }
        if !(1..=JobQuery::MAX_LIMIT).contains(&self.limit) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "limit: must be 1 to {}, got {}",
                    JobQuery::MAX_LIMIT,
                    self.limit
                ),
            ));
        }
        Ok(())
    }

    /// Whether `record` passes the status, queue and search filters.
    pub fn matches(&self, record: &JobRecord) -> bool {
        self.status.is_none_or(|s| s == record.status)
            && self.queue.as_ref().is_none_or(|q| *q == record.queue)
            && self.search.as_deref().is_none_or(|text| {
                let text = text.to_ascii_lowercase();
                let contains = |s: &str| s.to_ascii_lowercase().contains(&text);
                record.name.as_deref().is_some_and(contains)
                    || record.last_error.as_deref().is_some_and(contains)
                    || contains(&record.id.to_string())
            })
    }
}

/// A place in the newest-first order of jobs: a creation time in
/// milliseconds and an id. Its text form (`Display`, `FromStr`) is what
/// tools pass around as an opaque cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobCursor {
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The job's id.
    pub id: MessageId,
}

impl JobCursor {
    /// The cursor of `record` (the next page starts after it).
    pub fn of(record: &JobRecord) -> Self {
        JobCursor {
            created_ms: millis_since_epoch(record.created_at),
            id: record.id,
        }
    }
}

impl std::fmt::Display for JobCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.created_ms, self.id.as_uuid().simple())
    }
}

impl std::str::FromStr for JobCursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || {
            Error::new(
                ErrorKind::InvalidInput,
                format!("cursor: {s:?} is not a job cursor"),
            )
        };
        let (ms, id) = s.split_once('-').ok_or_else(invalid)?;
        let created_ms = ms.parse::<u64>().map_err(|_| invalid())?;
        let id = id.parse::<MessageId>().map_err(|_| invalid())?;
        Ok(JobCursor { created_ms, id })
    }
}

/// The error for a job id the store holds no record of (`NotFound`).
pub fn not_tracked(id: MessageId) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("job {id} is not in the job store"),
    )
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn millis_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One page of [`JobStore::list`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobPage {
    /// The jobs, newest first.
    pub jobs: Vec<JobRecord>,
    /// Where the next page starts; `None` on the last page. A page can
    /// hold fewer than `limit` jobs and still have a next one (a store may
    /// bound how far one call looks for matches).
    #[serde(serialize_with = "cursor_text")]
    pub next: Option<JobCursor>,
}

fn cursor_text<S: serde::Serializer>(
    cursor: &Option<JobCursor>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    match cursor {
        Some(c) => serializer.collect_str(c),
        None => serializer.serialize_none(),
    }
}

impl JobPage {
    /// A page of `jobs` followed by `next`.
    pub fn new(jobs: Vec<JobRecord>, next: Option<JobCursor>) -> Self {
        JobPage { jobs, next }
    }
}

/// Storage of job records.
#[async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Record a submitted job. If a kept record has the same idempotency
    /// key, nothing is inserted and that record's id is returned instead.
    async fn insert(&self, record: JobRecord) -> Result<MessageId>;
    /// The record of `id`, if kept.
    async fn get(&self, id: MessageId) -> Result<Option<JobRecord>>;
    /// Apply a status change; unknown ids are ignored (the job may have been
    /// submitted without tracking, or cleaned up). A `Failed` job (never
    /// enqueued) releases its idempotency key, so a retry can submit again.
    async fn update(&self, id: MessageId, update: JobUpdate) -> Result<()>;
    /// Atomically mark attempt `attempt` of `id` running, unless the job was
    /// cancelled: `false` then, and the worker settles it without running.
    /// Unknown ids are `true` (untracked jobs run).
    async fn start(&self, id: MessageId, attempt: u32) -> Result<bool>;
    /// Mark `id` cancelled if it has not started; `true` if it was.
    async fn cancel(&self, id: MessageId) -> Result<bool>;
    /// Counts by status.
    async fn stats(&self) -> Result<JobStats>;
    /// Remove finished jobs the policy no longer keeps; returns how many.
    async fn cleanup(&self, policy: &RetentionPolicy) -> Result<u64>;

    /// A page of jobs, newest first, that match `query` (see
    /// [`JobQuery`]). The default refuses with `Unsupported`, for a store
    /// that cannot list.
    async fn list(&self, query: &JobQuery) -> Result<JobPage> {
        query.check()?;
        Err(Error::unsupported("this job store cannot list jobs"))
    }

    /// Remove the record of `id` (its message, if still queued, stays);
    /// `true` if there was one. The default refuses with `Unsupported`.
    async fn delete(&self, id: MessageId) -> Result<bool> {
        Err(Error::unsupported(format!(
            "this job store cannot delete jobs ({id})"
        )))
    }
}

/// An in-process [`JobStore`].
#[derive(Debug, Default)]
pub struct MemoryJobStore {
    records: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    by_id: HashMap<MessageId, JobRecord>,
    by_key: HashMap<String, MessageId>,
}

impl Records {
    fn remove(&mut self, id: &MessageId) {
        if let Some(record) = self.by_id.remove(id) {
            if let Some(key) = record.idempotency_key {
                self.by_key.remove(&key);
            }
        }
    }
}

impl MemoryJobStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryJobStore::default()
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Apply `update` to `record`. `Cancelled` and `Completed` are final: a
/// late update (a duplicate delivery, a worker racing a cancel) leaves them
/// as they are. `Dead` is not, since a redriven job runs again.
pub fn apply_update(record: &mut JobRecord, update: JobUpdate) {
    if matches!(record.status, JobStatus::Cancelled | JobStatus::Completed) {
        return;
    }
    let now = SystemTime::now();
    record.updated_at = now;
    match update {
        JobUpdate::Running { attempt } => {
            record.status = JobStatus::Running;
            record.attempts = record.attempts.max(attempt);
            record.started_at = Some(now);
        }
        JobUpdate::Completed { result } => {
            record.status = JobStatus::Completed;
            record.result = result;
            record.finished_at = Some(now);
        }
        JobUpdate::Failed { error } => {
            record.status = JobStatus::Failed;
            record.remember_error(now, &error);
            record.last_error = Some(error);
            record.finished_at = Some(now);
        }
        JobUpdate::Retry { error } => {
            record.status = JobStatus::Retry;
            record.remember_error(now, &error);
            record.last_error = Some(error);
        }
        JobUpdate::Dead { error } => {
            record.status = JobStatus::Dead;
            record.remember_error(now, &error);
            record.last_error = Some(error);
            record.finished_at = Some(now);
        }
        JobUpdate::Cancelled => {
            record.status = JobStatus::Cancelled;
            record.finished_at = Some(now);
        }
        JobUpdate::Requeued => {
            record.status = JobStatus::Pending;
            record.finished_at = None;
        }
    }
}

#[async_trait]
impl JobStore for MemoryJobStore {
    async fn insert(&self, record: JobRecord) -> Result<MessageId> {
        let mut records = self.records();
        if let Some(key) = &record.idempotency_key {
            if let Some(existing) = records.by_key.get(key) {
                return Ok(*existing);
            }
            records.by_key.insert(key.clone(), record.id);
        }
        let id = record.id;
        records.by_id.insert(id, record);
        Ok(id)
    }

    async fn get(&self, id: MessageId) -> Result<Option<JobRecord>> {
        Ok(self.records().by_id.get(&id).cloned())
    }

    async fn update(&self, id: MessageId, update: JobUpdate) -> Result<()> {
        let mut records = self.records();
        let release_key = matches!(update, JobUpdate::Failed { .. });
        let Some(record) = records.by_id.get_mut(&id) else {
            return Ok(());
        };
        apply_update(record, update);
        let key = record.idempotency_key.clone();
        if let (true, Some(key)) = (release_key, key) {
            if records.by_key.get(&key) == Some(&id) {
                records.by_key.remove(&key);
            }
        }
        Ok(())
    }

    async fn start(&self, id: MessageId, attempt: u32) -> Result<bool> {
        let mut records = self.records();
        match records.by_id.get_mut(&id) {
            Some(record) if record.status == JobStatus::Cancelled => Ok(false),
            Some(record) => {
                apply_update(record, JobUpdate::Running { attempt });
                Ok(true)
            }
            None => Ok(true),
        }
    }

    async fn cancel(&self, id: MessageId) -> Result<bool> {
        let mut records = self.records();
        match records.by_id.get_mut(&id) {
            Some(record) if matches!(record.status, JobStatus::Pending | JobStatus::Scheduled) => {
                apply_update(record, JobUpdate::Cancelled);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn stats(&self) -> Result<JobStats> {
        let mut stats = JobStats::default();
        for record in self.records().by_id.values() {
            stats.count(record.status);
        }
        Ok(stats)
    }

    async fn list(&self, query: &JobQuery) -> Result<JobPage> {
        query.check()?;
        let records = self.records();
        let mut matched: Vec<(JobCursor, &JobRecord)> = records
            .by_id
            .values()
            .map(|r| (JobCursor::of(r), r))
            .filter(|(at, r)| query.cursor.is_none_or(|c| *at < c) && query.matches(r))
            .collect();
        // Newest first: the largest (created, id) first.
        matched.sort_unstable_by_key(|(at, _)| std::cmp::Reverse(*at));
        let more = matched.len() > query.limit;
        matched.truncate(query.limit);
        let next = more.then(|| matched.last().map(|(at, _)| *at)).flatten();
        let jobs = matched.into_iter().map(|(_, r)| r.clone()).collect();
        Ok(JobPage::new(jobs, next))
    }

    async fn delete(&self, id: MessageId) -> Result<bool> {
        let mut records = self.records();
        let found = records.by_id.contains_key(&id);
        records.remove(&id);
        Ok(found)
    }

    async fn cleanup(&self, policy: &RetentionPolicy) -> Result<u64> {
        let mut records = self.records();
        let now = SystemTime::now();
        let mut finished: Vec<(SystemTime, MessageId)> = records
            .by_id
            .values()
            .filter_map(|r| r.finished_at.map(|at| (at, r.id)))
            .collect();
        finished.sort_unstable();
        let too_old = |at: SystemTime| {
            policy
                .max_age
                .is_some_and(|max_age| now.duration_since(at).unwrap_or_default() > max_age)
        };
        let excess = policy
            .max_count
            .map_or(0, |max_count| finished.len().saturating_sub(max_count));
        let mut removed = 0u64;
        for (index, (at, id)) in finished.into_iter().enumerate() {
            if index < excess || too_old(at) {
                records.remove(&id);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: JobStatus) -> JobRecord {
        let mut r = JobRecord::submitted(
            MessageId::new(),
            QueueName::new("q").unwrap(),
            Priority::Normal,
            3,
            false,
        );
        r.status = status;
        if status.is_terminal() {
            r.finished_at = Some(SystemTime::now());
        }
        r
    }

    #[tokio::test]
    async fn cancel_only_before_start_and_cleanup_by_count() {
        let store = MemoryJobStore::new();
        let pending = record(JobStatus::Pending);
        let running = record(JobStatus::Running);
        store.insert(pending.clone()).await.unwrap();
        store.insert(running.clone()).await.unwrap();
        assert!(store.cancel(pending.id).await.unwrap());
        assert!(!store.cancel(running.id).await.unwrap());
        assert!(!store.cancel(MessageId::new()).await.unwrap());
        for _ in 0..5 {
            store.insert(record(JobStatus::Completed)).await.unwrap();
        }
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.completed, stats.cancelled, stats.running), (5, 1, 1));
        // 6 finished (5 completed + 1 cancelled); keep 2.
        let removed = store
            .cleanup(&RetentionPolicy::new(None, Some(2)))
            .await
            .unwrap();
        assert_eq!(removed, 4);
        assert_eq!(store.stats().await.unwrap().total(), 3);
        assert!(
            store.get(running.id).await.unwrap().is_some(),
            "unfinished jobs stay"
        );
        std::thread::sleep(Duration::from_millis(5));
        let removed = store
            .cleanup(&RetentionPolicy::new(Some(Duration::from_millis(1)), None))
            .await
            .unwrap();
        assert_eq!(removed, 2);
        let mut keyed = record(JobStatus::Pending);
        keyed.idempotency_key = Some("k".into());
        let first = store.insert(keyed.clone()).await.unwrap();
        keyed.id = MessageId::new();
        assert_eq!(
            store.insert(keyed.clone()).await.unwrap(),
            first,
            "same key, same job"
        );
        // A job that was never enqueued gives its key back.
        let failed = JobUpdate::Failed {
            error: "not enqueued".into(),
        };
        store.update(first, failed).await.unwrap();
        assert_eq!(store.insert(keyed.clone()).await.unwrap(), keyed.id);
        // Cancelled is final; a worker racing the cancel cannot start it.
        let pending = record(JobStatus::Pending);
        store.insert(pending.clone()).await.unwrap();
        assert!(store.cancel(pending.id).await.unwrap());
        assert!(!store.start(pending.id, 1).await.unwrap());
        let late = JobUpdate::Completed { result: None };
        store.update(pending.id, late).await.unwrap();
        let status = store.get(pending.id).await.unwrap().unwrap().status;
        assert_eq!(status, JobStatus::Cancelled);
    }
}
