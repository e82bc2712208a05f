//! Jobs tracked by the scheduler and the job store: status by id, listing,
//! retry of a dead job.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use queue_core::{
    ErrorKind, Job, JobOptions, JobStatus, JobStore, MemoryJobStore, MessageId, Priority,
};
use queue_worker::JobScheduler;

use super::{assert_kind, test_backoff, until, SOON};
use crate::harness::Ctx;

/// Case 38: a submitted job's status moves Pending -> Running -> Completed
/// (or Retry -> Dead) and is readable by id.
pub async fn job_status(ctx: &Ctx) {
    let queue = ctx.queue();
    let store: Arc<dyn JobStore> = match ctx.harness().job_store().await {
        Some(store) => store.expect("open the backend's job store"),
        None => Arc::new(MemoryJobStore::new()),
    };
    let scheduler = JobScheduler::new(ctx.backend().clone(), store);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let ok = scheduler
        .submit(&queue, &"ok".to_owned(), &JobOptions::default())
        .await
        .expect("submit");
    let bad = scheduler
        .submit(
            &queue,
            &"bad".to_owned(),
            &JobOptions::default().with_max_retries(1),
        )
        .await
        .expect("submit");
    for id in [ok, bad] {
        let record = scheduler
            .status(id)
            .await
            .expect("status")
            .expect("tracked");
        assert_eq!(record.status, JobStatus::Pending);
        assert_eq!(record.queue, queue);
    }
    let open = gate.clone();
    let worker = scheduler
        .worker(queue.clone())
        .concurrency(2)
        .retry(test_backoff(Duration::from_millis(100)))
        .handler(move |job: Job<String>| {
            let open = open.clone();
            async move {
                if job.payload == "bad" {
                    return Err(std::io::Error::other("always fails"));
                }
                let _permit = open.acquire().await.expect("gate");
                Ok(format!("done {}", job.payload))
            }
        })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    let status = |id| {
        let scheduler = &scheduler;
        async move {
            scheduler
                .status(id)
                .await
                .expect("status")
                .expect("tracked")
        }
    };
    // The good job holds at the gate: Running.
    let mut running = false;
    let mut saw_retry = false;
    let deadline = tokio::time::Instant::now() + SOON;
    while tokio::time::Instant::now() < deadline
        && !(running && status(bad).await.status == JobStatus::Dead)
    {
        running |= status(ok).await.status == JobStatus::Running;
        saw_retry |= status(bad).await.status == JobStatus::Retry;
        let _ = tokio::time::timeout(Duration::from_millis(50), events.recv()).await;
    }
    assert!(running, "the gated job was seen Running");
    let bad_record = status(bad).await;
    assert_eq!(bad_record.status, JobStatus::Dead, "{bad_record:?}");
    assert_eq!(bad_record.attempts, 2);
    assert_eq!(bad_record.last_error.as_deref(), Some("always fails"));
    let timeline: Vec<(u32, &str)> = bad_record
        .errors
        .iter()
        .map(|e| (e.attempt, e.error.as_str()))
        .collect();
    assert_eq!(
        timeline,
        [(1, "always fails"), (2, "always fails")],
        "each attempt's failure is kept"
    );
    assert!(
        saw_retry || worker.stats().retried == 1,
        "the failing job went through Retry"
    );
    gate.add_permits(1);
    assert!(until(&mut events, SOON, || worker.stats().completed == 1).await);
    worker.shutdown().await.expect("shutdown");
    let ok_record = status(ok).await;
    assert_eq!(ok_record.status, JobStatus::Completed);
    assert_eq!(ok_record.result, Some(serde_json::json!("done ok")));
    assert_eq!(ok_record.attempts, 1);
    let stats = scheduler.stats().await.expect("stats");
    assert_eq!((stats.completed, stats.dead), (1, 1));
}

/// The harness's job store, or an in-process one.
async fn job_store(ctx: &Ctx) -> Arc<dyn JobStore> {
    match ctx.harness().job_store().await {
        Some(store) => store.expect("open the backend's job store"),
        None => Arc::new(MemoryJobStore::new()),
    }
}

/// Case 52: `JobStore::list` pages jobs newest first with a cursor, filters
/// by status and queue, searches name, last error and id ignoring case,
/// follows status changes, and refuses a bad limit; `JobStore::delete`
/// removes one record.
pub async fn job_listing(ctx: &Ctx) {
    use queue_core::{JobQuery, JobRecord, JobUpdate};
    let store = job_store(ctx).await;
    let queue = ctx.queue_name();
    let other = ctx.queue_name();
    let base = SystemTime::now() - Duration::from_secs(60);
    let mut ids = Vec::new();
    for i in 0..7u64 {
        let mut record =
            JobRecord::submitted(MessageId::new(), queue.clone(), Priority::Normal, 3, false);
        record.created_at = base + Duration::from_secs(i);
        record.name = Some(
            if i % 2 == 0 {
                "SendEmail"
            } else {
                "ChargeCard"
            }
            .into(),
        );
        ids.push(store.insert(record).await.expect("insert"));
    }
    let mut elsewhere =
        JobRecord::submitted(MessageId::new(), other.clone(), Priority::Normal, 3, false);
    elsewhere.name = Some("ChargeCard".into());
    store.insert(elsewhere).await.expect("insert");
    let token = format!("Card declined {}", ctx.queue_name());
    for (i, error) in [(3, token.as_str()), (5, "connection reset")] {
        store
            .update(ids[i], JobUpdate::Running { attempt: 1 })
            .await
            .expect("running");
        let dead = JobUpdate::Dead {
            error: error.into(),
        };
        store.update(ids[i], dead).await.expect("dead");
    }
    let list = |query: JobQuery| {
        let store = store.clone();
        async move { store.list(&query).await.expect("list") }
    };
    let ids_of = |page: &queue_core::JobPage| page.jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    let mine = JobQuery::new().with_queue(queue.clone());
    // Newest first, three a page, until the cursor runs out.
    let first = list(mine.clone().with_limit(3)).await;
    assert_eq!(ids_of(&first), [ids[6], ids[5], ids[4]]);
    let second = list(
        mine.clone()
            .with_limit(3)
            .after(first.next.expect("a next page")),
    )
    .await;
    assert_eq!(ids_of(&second), [ids[3], ids[2], ids[1]]);
    let cursor = second.next.expect("a next page");
    let text = cursor.to_string();
    assert_eq!(
        text.parse::<queue_core::JobCursor>().expect("cursor"),
        cursor
    );
    let third = list(mine.clone().with_limit(3).after(cursor)).await;
    assert_eq!(ids_of(&third), [ids[0]]);
    assert_eq!(third.next, None, "the last page");
    let record = &third.jobs[0];
    assert_eq!(
        (record.queue.clone(), record.name.as_deref()),
        (queue.clone(), Some("SendEmail"))
    );
    // By status; by search over name, error and id.
    let dead = list(mine.clone().with_status(JobStatus::Dead)).await;
    assert_eq!(ids_of(&dead), [ids[5], ids[3]]);
    assert_eq!(dead.jobs[1].last_error.as_deref(), Some(token.as_str()));
    let found = list(mine.clone().with_search(token.to_uppercase())).await;
    assert_eq!(ids_of(&found), [ids[3]], "error text, case ignored");
    let found = list(mine.clone().with_search("chargecard")).await;
    assert_eq!(ids_of(&found), [ids[5], ids[3], ids[1]], "name");
    let found = list(mine.clone().with_search(ids[2].to_string())).await;
    assert_eq!(ids_of(&found), [ids[2]], "id");
    let found = list(JobQuery::new().with_queue(other.clone())).await;
    assert_eq!(found.jobs.len(), 1, "queues are apart");
    assert_kind(
        store.list(&JobQuery::new().with_limit(0)).await,
        ErrorKind::InvalidInput,
        "limit 0",
    );
    // A requeued job moves from dead to pending; a deleted one is gone.
    store
        .update(ids[3], JobUpdate::Requeued)
        .await
        .expect("requeue");
    let dead = list(mine.clone().with_status(JobStatus::Dead)).await;
    assert_eq!(ids_of(&dead), [ids[5]]);
    let pending = list(mine.clone().with_status(JobStatus::Pending)).await;
    assert_eq!(
        ids_of(&pending),
        [ids[6], ids[4], ids[3], ids[2], ids[1], ids[0]]
    );
    let requeued = store.get(ids[3]).await.expect("get").expect("kept");
    assert_eq!(
        (requeued.status, requeued.finished_at),
        (JobStatus::Pending, None)
    );
    assert_eq!(
        requeued.last_error.as_deref(),
        Some(token.as_str()),
        "the last error stays"
    );
    assert!(store.delete(ids[4]).await.expect("delete"));
    assert!(!store.delete(ids[4]).await.expect("delete again"));
    assert_eq!(store.get(ids[4]).await.expect("get"), None);
    let all = list(mine.clone()).await;
    assert_eq!(all.jobs.len(), 6, "{:?}", ids_of(&all));
    assert!(!ids_of(&all).contains(&ids[4]));
}

/// Case 53: a dead job retried by id runs again: its dead letter goes back
/// to the queue, its record turns `Pending` and then `Completed`. Retrying
/// a job that is not dead is `InvalidInput`, an unknown id `NotFound`.
pub async fn job_retry(ctx: &Ctx) {
    let queue = ctx.queue();
    let scheduler = JobScheduler::new(ctx.backend().clone(), job_store(ctx).await);
    assert_kind(
        scheduler.retry(MessageId::new()).await,
        ErrorKind::NotFound,
        "an unknown job",
    );
    let id = scheduler
        .submit(
            &queue,
            &"flaky".to_owned(),
            &JobOptions::default().with_max_retries(0),
        )
        .await
        .expect("submit");
    assert_kind(
        scheduler.retry(id).await,
        ErrorKind::InvalidInput,
        "a pending job",
    );
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let failing = fail.clone();
    let worker = scheduler
        .worker(queue.clone())
        .concurrency(1)
        .handler(move |_: Job<String>| {
            let fail = failing.load(AtomicOrdering::SeqCst);
            async move {
                if fail {
                    return Err(std::io::Error::other("first run fails"));
                }
                Ok("second run")
            }
        })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    assert!(until(&mut events, SOON, || worker.stats().dead_lettered == 1).await);
    let status = scheduler
        .status(id)
        .await
        .expect("status")
        .expect("tracked");
    assert_eq!(status.status, JobStatus::Dead, "{status:?}");
    if !ctx.caps().redrive.is_available() {
        assert_kind(
            scheduler.retry(id).await,
            ErrorKind::Unsupported,
            "retry without redrive",
        );
        let status = scheduler
            .status(id)
            .await
            .expect("status")
            .expect("tracked");
        assert_eq!(status.status, JobStatus::Dead, "still dead: {status:?}");
        worker.shutdown().await.expect("shutdown");
        return;
    }
    fail.store(false, AtomicOrdering::SeqCst);
    scheduler.retry(id).await.expect("retry");
    assert!(until(&mut events, SOON, || worker.stats().completed == 1).await);
    worker.shutdown().await.expect("shutdown");
    let record = scheduler
        .status(id)
        .await
        .expect("status")
        .expect("tracked");
    assert_eq!(record.status, JobStatus::Completed, "{record:?}");
    assert_eq!(record.result, Some(serde_json::json!("second run")));
    assert_eq!(record.last_error.as_deref(), Some("first run fails"));
    assert_kind(
        scheduler.retry(id).await,
        ErrorKind::InvalidInput,
        "a completed job",
    );
}
