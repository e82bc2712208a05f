//! The PostgreSQL job store against a real PostgreSQL
//! (`QUEUE_TEST_POSTGRES_URL`), in a schema of the test's own: the
//! memory store's behaviour, status by status, plus listing a page at a
//! time and a search.

use std::time::{Duration, SystemTime};

use queue_core::store::{JobQuery, JobUpdate, RetentionPolicy};
use queue_core::{JobRecord, JobStatus, JobStore, MessageId, Priority, QueueName};
use queue_postgres::{PostgresBackend, PostgresJobStore};
use queue_testkit::broker_url;

async fn store() -> Option<(PostgresBackend, PostgresJobStore)> {
    let base = broker_url("QUEUE_TEST_POSTGRES_URL")?;
    let id = MessageId::new().as_uuid().simple().to_string();
    let schema = format!("qt_store_{}", &id[id.len() - 12..]);
    let joiner = if base.contains('?') { '&' } else { '?' };
    let backend = PostgresBackend::connect(&format!("{base}{joiner}schema={schema}"))
        .await
        .expect("connect");
    let store = backend.job_store();
    Some((backend, store))
}

async fn drop_schema(backend: &PostgresBackend) {
    sqlx::query(&format!("DROP SCHEMA {} CASCADE", backend.schema()))
        .execute(backend.pool())
        .await
        .expect("drop the test schema");
}

fn record(status: JobStatus) -> JobRecord {
    let mut r = JobRecord::submitted(
        MessageId::new(),
        QueueName::new("q").unwrap(),
        Priority::High,
        3,
        false,
    );
    r.status = status;
    r
}

#[tokio::test]
async fn statuses_cancel_retention_and_keys() {
    let Some((backend, store)) = store().await else {
        return;
    };
    let pending = record(JobStatus::Pending);
    let running = record(JobStatus::Running);
    store.insert(pending.clone()).await.unwrap();
    store.insert(running.clone()).await.unwrap();
    let read = store.get(pending.id).await.unwrap().expect("kept");
    assert_eq!(
        (
            read.queue.as_str(),
            read.priority,
            read.max_attempts,
            read.status
        ),
        ("q", Priority::High, 3, JobStatus::Pending)
    );
    assert!(store.cancel(pending.id).await.unwrap());
    assert!(!store.cancel(running.id).await.unwrap());
    assert!(!store.cancel(MessageId::new()).await.unwrap());
    for _ in 0..5 {
        let done = record(JobStatus::Pending);
        store.insert(done.clone()).await.unwrap();
        let result = Some(serde_json::json!({"ok": true}));
        store
            .update(done.id, JobUpdate::Completed { result })
            .await
            .unwrap();
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
    tokio::time::sleep(Duration::from_millis(5)).await;
    let removed = store
        .cleanup(&RetentionPolicy::new(Some(Duration::from_millis(1)), None))
        .await
        .unwrap();
    assert_eq!(removed, 2);

    // One job per idempotency key, until a job that was never enqueued
    // gives its key back.
    let mut keyed = record(JobStatus::Pending);
    keyed.idempotency_key = Some("k".into());
    let first = store.insert(keyed.clone()).await.unwrap();
    keyed.id = MessageId::new();
    assert_eq!(
        store.insert(keyed.clone()).await.unwrap(),
        first,
        "same key, same job"
    );
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
    store
        .update(pending.id, JobUpdate::Completed { result: None })
        .await
        .unwrap();
    let status = store.get(pending.id).await.unwrap().unwrap().status;
    assert_eq!(status, JobStatus::Cancelled);
    // Unknown ids start (untracked jobs run) and ignore updates.
    assert!(store.start(MessageId::new(), 1).await.unwrap());
    store
        .update(MessageId::new(), JobUpdate::Cancelled)
        .await
        .unwrap();
    drop_schema(&backend).await;
}

#[tokio::test]
async fn attempts_and_errors_are_kept_in_order() {
    let Some((backend, store)) = store().await else {
        return;
    };
    let job = record(JobStatus::Pending);
    store.insert(job.clone()).await.unwrap();
    for attempt in 1..=25 {
        assert!(store.start(job.id, attempt).await.unwrap());
        let error = format!("boom {attempt}");
        store
            .update(
                job.id,
                JobUpdate::Retry {
                    error: error.clone(),
                },
            )
            .await
            .unwrap();
        // The same failure reported twice is kept once.
        store
            .update(job.id, JobUpdate::Retry { error })
            .await
            .unwrap();
    }
    let read = store.get(job.id).await.unwrap().unwrap();
    assert_eq!((read.status, read.attempts), (JobStatus::Retry, 25));
    assert_eq!(read.errors.len(), JobRecord::MAX_ERRORS);
    assert_eq!(read.errors[0].attempt, 6, "the oldest kept");
    assert_eq!(read.errors[19].error, "boom 25");
    assert_eq!(read.last_error.as_deref(), Some("boom 25"));
    assert!(read.started_at.is_some() && read.finished_at.is_none());
    store
        .update(
            job.id,
            JobUpdate::Dead {
                error: "gave up".into(),
            },
        )
        .await
        .unwrap();
    store.update(job.id, JobUpdate::Requeued).await.unwrap();
    let read = store.get(job.id).await.unwrap().unwrap();
    assert_eq!(read.status, JobStatus::Pending);
    assert!(read.finished_at.is_none());
    assert!(store.delete(job.id).await.unwrap());
    assert!(!store.delete(job.id).await.unwrap());
    drop_schema(&backend).await;
}

#[tokio::test]
async fn listing_pages_newest_first_with_filters() {
    let Some((backend, store)) = store().await else {
        return;
    };
    let start = SystemTime::now() - Duration::from_secs(100);
    let mut ids = Vec::new();
    for i in 0..7u64 {
        let mut r = record(if i % 2 == 0 {
            JobStatus::Pending
        } else {
            JobStatus::Dead
        });
        r.created_at = start + Duration::from_secs(i);
        r.name = Some(if i == 3 {
            "SendEmail".into()
        } else {
            "Resize".into()
        });
        store.insert(r.clone()).await.unwrap();
        ids.push(r.id);
    }
    let mut seen = Vec::new();
    let mut query = JobQuery::new().with_limit(3);
    loop {
        let page = store.list(&query).await.unwrap();
        seen.extend(page.jobs.iter().map(|r| r.id));
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    let newest_first: Vec<MessageId> = ids.iter().rev().copied().collect();
    assert_eq!(seen, newest_first);
    let dead = store
        .list(&JobQuery::new().with_status(JobStatus::Dead))
        .await
        .unwrap();
    assert_eq!(dead.jobs.len(), 3);
    let search = store
        .list(&JobQuery::new().with_search("sendemail"))
        .await
        .unwrap();
    assert_eq!(
        search.jobs.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[3]]
    );
    let by_id = store
        .list(&JobQuery::new().with_search(ids[5].to_string()))
        .await
        .unwrap();
    assert_eq!(by_id.jobs.len(), 1);
    let other_queue = store
        .list(&JobQuery::new().with_queue(QueueName::new("other").unwrap()))
        .await
        .unwrap();
    assert!(other_queue.jobs.is_empty());
    drop_schema(&backend).await;
}
