//! [`RedisJobStore`]: job records in Redis, shared by every process.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use queue_core::{
    AttemptError, Error, ErrorKind, JobCursor, JobPage, JobQuery, JobRecord, JobStats, JobStatus,
    JobStore, JobUpdate, MessageId, Priority, QueueName, Result, RetentionPolicy,
};
use redis::{Script, Value};

use crate::error::unexpected;
use crate::scripts::{bytes_of, int_of, SCRIPT_BATCH};
use crate::shared::Shared;

struct StoreScripts {
    insert: Script,
    update: Script,
    cleanup: Script,
    delete: Script,
    list: Script,
}

static SCRIPTS: LazyLock<StoreScripts> = LazyLock::new(|| StoreScripts {
    insert: Script::new(include_str!("lua/store/insert.lua")),
    update: Script::new(include_str!("lua/store/update.lua")),
    cleanup: Script::new(include_str!("lua/store/cleanup.lua")),
    delete: Script::new(include_str!("lua/store/delete.lua")),
    list: Script::new(include_str!("lua/store/list.lua")),
});

/// Most index entries one `list` call looks at, so a search over a large
/// store never holds Redis for long; the caller gets a cursor to go on.
const LIST_SCAN_BUDGET: usize = 5_000;

/// A [`JobStore`] kept in Redis, so job status, results and statistics are
/// the same for every process: a worker on one host completes a job and the
/// scheduler on another reads `Completed`.
///
/// Layout, all under the hash tag `{<namespace>}`: one hash per job
/// (`<prefix>:{<namespace>}:store:job:<id>`), the idempotency keys
/// (`...:store:keys`), counts by status (`...:store:counts`), finished
/// jobs by finish time (`...:store:finished`, for retention), and every
/// job by creation time, in all (`...:store:created`) and per status
/// (`...:store:status:<status>`), for listing newest first. Every change is
/// one atomic script, so a cancel and a worker's start never both win.
///
/// Get one from [`RedisBackend::job_store`](crate::RedisBackend::job_store)
/// and hand it to `JobScheduler::new` or the manager builder.
#[derive(Debug, Clone)]
pub struct RedisJobStore {
    shared: Arc<Shared>,
    /// `<prefix>:{<namespace>}:store:`
    base: String,
    keys: String,
    counts: String,
    finished: String,
    created: String,
}

impl RedisJobStore {
    pub(crate) fn new(shared: Arc<Shared>, namespace: &str) -> Self {
        // `store:` keeps these apart from a queue named like the namespace.
        let base = format!("{}:{{{namespace}}}:store:", shared.prefix);
        RedisJobStore {
            keys: format!("{base}keys"),
            counts: format!("{base}counts"),
            finished: format!("{base}finished"),
            created: format!("{base}created"),
            base,
            shared,
        }
    }

    /// The same store under another namespace (1 to 64 of
    /// `[A-Za-z0-9_-]`), for separate applications on one Redis.
    pub fn with_namespace(&self, namespace: &str) -> Result<Self> {
        QueueName::new(namespace).map_err(|_| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("namespace: must be 1 to 64 of [A-Za-z0-9_-], got {namespace:?}"),
            )
        })?;
        Ok(RedisJobStore::new(self.shared.clone(), namespace))
    }

    fn record_prefix(&self) -> String {
        format!("{}job:", self.base)
    }

    fn record_key(&self, id: MessageId) -> String {
        format!("{}job:{}", self.base, id.as_uuid().simple())
    }

    async fn invoke(&self, call: redis::ScriptInvocation<'_>, doing: &str) -> Result<Value> {
        self.shared.check_open()?;
        let mut conn = self.shared.conn.clone();
        call.invoke_async::<Value>(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, doing))
    }

    async fn change(&self, id: MessageId, change: &str, value: &str) -> Result<i64> {
        let mut call = SCRIPTS.update.prepare_invoke();
        call.key(self.record_key(id))
            .key(&self.keys)
            .key(&self.counts)
            .key(&self.finished)
            .arg(id.as_uuid().simple().to_string())
            .arg(change)
            .arg(millis(SystemTime::now()))
            .arg(value)
            .arg(&self.base);
        let reply = self.invoke(call, "updating a job").await?;
        int_of(&reply).ok_or_else(|| unexpected("a job update result"))
    }

    /// Delete every record, key and count of this store's namespace.
    pub async fn clear(&self) -> Result<()> {
        self.shared.check_open()?;
        let mut conn = self.shared.conn.clone();
        let pattern = format!("{}*", self.base.replace('[', "\\[").replace('?', "\\?"));
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCRIPT_BATCH)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.shared.error(e, "listing job keys"))?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(|e| self.shared.error(e, "deleting job keys"))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn time_of(ms: &str) -> Option<SystemTime> {
    ms.parse::<u64>()
        .ok()
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

fn status_of(s: &str) -> Option<JobStatus> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

/// A record from its hash fields.
fn record_of(id: MessageId, fields: &HashMap<String, String>) -> Result<JobRecord> {
    let corrupt = |field: &str| {
        Error::new(
            ErrorKind::Decode,
            format!("job {id}: field {field:?} is missing or invalid in Redis"),
        )
    };
    let get = |field: &str| fields.get(field).map(String::as_str);
    let queue = get("queue")
        .and_then(|q| QueueName::new(q).ok())
        .ok_or_else(|| corrupt("queue"))?;
    let status = get("status")
        .and_then(status_of)
        .ok_or_else(|| corrupt("status"))?;
    let priority = get("priority")
        .and_then(|p| p.parse::<u8>().ok())
        .and_then(Priority::from_level)
        .ok_or_else(|| corrupt("priority"))?;
    let number = |field: &str| get(field).and_then(|n| n.parse::<u32>().ok());
    let max_attempts = number("max_attempts").ok_or_else(|| corrupt("max_attempts"))?;
    let mut record = JobRecord::submitted(id, queue, priority, max_attempts, false);
    record.status = status;
    record.attempts = number("attempts").unwrap_or(0);
    record.result = match get("result") {
        Some(json) => Some(serde_json::from_str(json).map_err(|_| corrupt("result"))?),
        None => None,
    };
    record.last_error = get("last_error").map(str::to_owned);
    if let Some(json) = get("errors") {
        let list: Vec<(u32, u64, String)> =
            serde_json::from_str(json).map_err(|_| corrupt("errors"))?;
        record.errors = list
            .into_iter()
            .map(|(attempt, at, error)| {
                AttemptError::new(attempt, UNIX_EPOCH + Duration::from_millis(at), error)
            })
            .collect();
    }
    record.idempotency_key = get("idem").map(str::to_owned);
    record.name = get("name").map(str::to_owned);
    record.created_at = get("created")
        .and_then(time_of)
        .ok_or_else(|| corrupt("created"))?;
    record.updated_at = get("updated")
        .and_then(time_of)
        .unwrap_or(record.created_at);
    record.started_at = get("started").and_then(time_of);
    record.finished_at = get("finished").and_then(time_of);
    Ok(record)
}

#[async_trait]
impl JobStore for RedisJobStore {
    async fn insert(&self, record: JobRecord) -> Result<MessageId> {
        let id = record.id.as_uuid().simple().to_string();
        let mut call = SCRIPTS.insert.prepare_invoke();
        call.key(self.record_key(record.id))
            .key(&self.keys)
            .key(&self.counts)
            .key(&self.finished)
            .key(&self.created)
            .arg(&id)
            .arg(record.idempotency_key.as_deref().unwrap_or(""))
            .arg(&self.base);
        let mut fields: Vec<(&str, String)> = vec![
            ("queue", record.queue.as_str().to_owned()),
            ("status", record.status.as_str().to_owned()),
            ("priority", record.priority.level().to_string()),
            ("attempts", record.attempts.to_string()),
            ("max_attempts", record.max_attempts.to_string()),
            ("created", millis(record.created_at).to_string()),
            ("updated", millis(record.updated_at).to_string()),
        ];
        if let Some(key) = &record.idempotency_key {
            fields.push(("idem", key.clone()));
        }
        if let Some(name) = &record.name {
            fields.push(("name", name.clone()));
        }
        if let Some(result) = &record.result {
            fields.push(("result", result.to_string()));
        }
        if let Some(error) = &record.last_error {
            fields.push(("last_error", error.clone()));
        }
        if !record.errors.is_empty() {
            let list: Vec<(u32, u64, &str)> = record
                .errors
                .iter()
                .map(|e| (e.attempt, millis(e.at), e.error.as_str()))
                .collect();
            fields.push(("errors", serde_json::to_string(&list).unwrap_or_default()));
        }
        for (name, at) in [
            ("started", record.started_at),
            ("finished", record.finished_at),
        ] {
            if let Some(at) = at {
                fields.push((name, millis(at).to_string()));
            }
        }
        for (name, value) in &fields {
            call.arg(*name).arg(value);
        }
        let reply = self.invoke(call, "inserting a job").await?;
        bytes_of(&reply)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse::<uuid_text::Simple>().ok())
            .map(|u| u.0)
            .ok_or_else(|| unexpected("a job id"))
    }

    async fn get(&self, id: MessageId) -> Result<Option<JobRecord>> {
        self.shared.check_open()?;
        let mut conn = self.shared.conn.clone();
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.record_key(id))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, "reading a job"))?;
        if fields.is_empty() {
            return Ok(None);
        }
        record_of(id, &fields).map(Some)
    }

    async fn update(&self, id: MessageId, update: JobUpdate) -> Result<()> {
        let (change, value) = match update {
            JobUpdate::Running { attempt } => ("running", attempt.to_string()),
            JobUpdate::Completed { result } => (
                "completed",
                result.map(|r| r.to_string()).unwrap_or_default(),
            ),
            JobUpdate::Failed { error } => ("failed", error),
            JobUpdate::Retry { error } => ("retry", error),
            JobUpdate::Dead { error } => ("dead", error),
            JobUpdate::Cancelled => ("cancelled", String::new()),
            JobUpdate::Requeued => ("requeued", String::new()),
            other => {
                return Err(Error::unsupported(format!(
                    "the Redis job store does not know the update {other:?}"
                )))
            }
        };
        self.change(id, change, &value).await.map(drop)
    }

    async fn start(&self, id: MessageId, attempt: u32) -> Result<bool> {
        Ok(self.change(id, "start", &attempt.to_string()).await? != 0)
    }

    async fn cancel(&self, id: MessageId) -> Result<bool> {
        Ok(self.change(id, "cancel", "").await? == 1)
    }

    async fn stats(&self) -> Result<JobStats> {
        self.shared.check_open()?;
        let mut conn = self.shared.conn.clone();
        let counts: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(&self.counts)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.shared.error(e, "reading job counts"))?;
        let mut stats = JobStats::default();
        for (status, count) in counts {
            let count = count.max(0) as u64;
            match status_of(&status) {
                Some(JobStatus::Pending) => stats.pending = count,
                Some(JobStatus::Scheduled) => stats.scheduled = count,
                Some(JobStatus::Running) => stats.running = count,
                Some(JobStatus::Completed) => stats.completed = count,
                Some(JobStatus::Failed) => stats.failed = count,
                Some(JobStatus::Retry) => stats.retry = count,
                Some(JobStatus::Cancelled) => stats.cancelled = count,
                Some(JobStatus::Dead) => stats.dead = count,
                _ => {}
            }
        }
        Ok(stats)
    }

    async fn list(&self, query: &JobQuery) -> Result<JobPage> {
        self.list_page(query).await
    }

    async fn delete(&self, id: MessageId) -> Result<bool> {
        let mut call = SCRIPTS.delete.prepare_invoke();
        call.key(self.record_key(id))
            .key(&self.keys)
            .key(&self.counts)
            .key(&self.finished)
            .key(&self.created)
            .arg(id.as_uuid().simple().to_string())
            .arg(&self.base);
        let reply = self.invoke(call, "deleting a job").await?;
        Ok(int_of(&reply).ok_or_else(|| unexpected("a delete result"))? == 1)
    }

    async fn cleanup(&self, policy: &RetentionPolicy) -> Result<u64> {
        let as_arg = |v: Option<u64>| v.map_or(-1i64, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let mut removed = 0;
        // The script removes at most SCRIPT_BATCH per call, so Redis never stalls.
        loop {
            let mut call = SCRIPTS.cleanup.prepare_invoke();
            call.key(&self.keys)
                .key(&self.counts)
                .key(&self.finished)
                .key(&self.created)
                .arg(millis(SystemTime::now()))
                .arg(as_arg(policy.max_age.map(|d| d.as_millis() as u64)))
                .arg(as_arg(policy.max_count.map(|n| n as u64)))
                .arg(self.record_prefix())
                .arg(&self.base);
            let reply = self.invoke(call, "cleaning up jobs").await?;
            let n = int_of(&reply)
                .map(|n| n.max(0) as u64)
                .ok_or_else(|| unexpected("a count"))?;
            removed += n;
            if n < SCRIPT_BATCH as u64 {
                return Ok(removed);
            }
        }
    }
}

impl RedisJobStore {
    async fn list_page(&self, query: &JobQuery) -> Result<JobPage> {
        query.check()?;
        let index = match query.status {
            Some(status) => format!("{}status:{}", self.base, status.as_str()),
            None => self.created.clone(),
        };
        let mut call = SCRIPTS.list.prepare_invoke();
        call.key(index).arg(&self.base);
        match &query.cursor {
            Some(cursor) => call
                .arg(cursor.created_ms)
                .arg(cursor.id.as_uuid().simple().to_string()),
            None => call.arg("").arg(""),
        };
        call.arg(query.limit)
            .arg(query.queue.as_ref().map_or("", |q| q.as_str()))
            .arg(
                query
                    .search
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_default(),
            )
            .arg(LIST_SCAN_BUDGET);
        let reply = self.invoke(call, "listing jobs").await?;
        let Value::Array(items) = reply else {
            return Err(unexpected("a job page"));
        };
        let text = |v: &Value| {
            bytes_of(v)
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(str::to_owned)
        };
        let mut items = items.iter();
        let (Some(ms), Some(id)) = (items.next().and_then(text), items.next().and_then(text))
        else {
            return Err(unexpected("a job page cursor"));
        };
        let next = if ms.is_empty() {
            None
        } else {
            Some(format!("{ms}-{id}").parse::<JobCursor>()?)
        };
        let mut jobs = Vec::new();
        while let (Some(id), Some(fields)) = (items.next(), items.next()) {
            let id = text(id)
                .and_then(|s| s.parse::<uuid_text::Simple>().ok())
                .ok_or_else(|| unexpected("a job id"))?
                .0;
            let Value::Array(flat) = fields else {
                return Err(unexpected("job fields"));
            };
            let mut map = HashMap::with_capacity(flat.len() / 2);
            for pair in flat.chunks(2) {
                if let [k, v] = pair {
                    if let (Some(k), Some(v)) = (text(k), text(v)) {
                        map.insert(k, v);
                    }
                }
            }
            jobs.push(record_of(id, &map)?);
        }
        Ok(JobPage::new(jobs, next))
    }
}

/// Parsing the simple (32 hex digits) form of a job id.
mod uuid_text {
    use queue_core::MessageId;

    pub(super) struct Simple(pub(super) MessageId);

    impl std::str::FromStr for Simple {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            if s.len() != 32 {
                return Err(());
            }
            let n = u128::from_str_radix(s, 16).map_err(|_| ())?;
            Ok(Simple(MessageId::from_bytes(n.to_be_bytes())))
        }
    }
}
