//! Unit tests of the worker runtime on the memory backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_core::error::{ErrorKind, HandlerError};
use queue_core::job::{BackoffPolicy, Job, JobOptions};
use queue_core::memory::MemoryBackend;
use queue_core::message::QueueName;
use queue_core::stats::DeadLetterReason;
use queue_core::traits::Producer;

use super::{Worker, WorkerHandle, WorkerStats};

async fn send(backend: &MemoryBackend, queue: &QueueName, payload: &str, options: &JobOptions) {
    let producer = backend.memory_producer(queue).unwrap();
    producer
        .send(Job::encode(&payload.to_owned(), options).unwrap())
        .await
        .unwrap();
}

async fn until(handle: &WorkerHandle, done: impl Fn(WorkerStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut events = handle.subscribe();
    while !done(handle.stats()) {
        assert!(Instant::now() < deadline, "timed out: {:?}", handle.stats());
        let _ = tokio::time::timeout(Duration::from_millis(50), events.recv()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_actions_survive_anyhow_and_are_applied() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("actions").unwrap();
    let handle = Worker::builder(Arc::new(backend.clone()), queue.clone())
        .handler(|job: Job<String>| async move {
            match job.payload.as_str() {
                "permanent" => Err(anyhow::Error::from(HandlerError::permanent("bad input"))),
                "cancel" => Err(HandlerError::cancel("no longer wanted").into()),
                "later" if job.attempt == 1 => Err(anyhow::Error::from(HandlerError::retry_after(
                    "busy",
                    Duration::from_millis(300),
                ))),
                _ => Ok(job.attempt),
            }
        })
        .start()
        .await
        .unwrap();
    let options = JobOptions::default().with_max_retries(5);
    for payload in ["permanent", "cancel", "later"] {
        send(&backend, &queue, payload, &options).await;
    }
    let started = Instant::now();
    until(&handle, |s| {
        s.completed == 1 && s.dead_lettered == 1 && s.cancelled == 1 && s.in_flight == 0
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "retry_after was honoured"
    );
    let stats = handle.stats();
    assert_eq!(
        (stats.failed, stats.retried, stats.in_flight),
        (2, 1, 0),
        "{stats:?}"
    );
    handle.shutdown().await.unwrap();
    let dead = queue_core::traits::Admin::dead_letters(&backend, &queue, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].reason,
        DeadLetterReason::Rejected("bad input".into())
    );
    assert_eq!(dead[0].attempts, 1, "a permanent failure is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_before_the_handler_awaits_fails_only_that_attempt() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("sync-panic").unwrap();
    let handle = Worker::builder(Arc::new(backend.clone()), queue.clone())
        .retry(BackoffPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(10),
            multiplier: 1.0,
            jitter: false,
        })
        .handler(|job: Job<String>| {
            // Synchronous code of the handler, before its future exists.
            assert!(
                job.attempt > 1 || job.payload != "sync",
                "boom before the future"
            );
            async { Ok::<_, std::io::Error>(()) }
        })
        .start()
        .await
        .unwrap();
    send(&backend, &queue, "sync", &JobOptions::default()).await;
    send(&backend, &queue, "fine", &JobOptions::default()).await;
    until(&handle, |s| s.completed == 2 && s.in_flight == 0).await;
    let stats = handle.stats();
    assert_eq!(
        (stats.failed, stats.retried, stats.in_flight),
        (1, 1, 0),
        "{stats:?}"
    );
    assert!(handle.health().healthy);
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_fetch_reports_unhealthy() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("liveness").unwrap();
    let handle = Worker::builder(Arc::new(backend.clone()), queue)
        .liveness_timeout(Duration::from_millis(200))
        .poll_wait(Duration::from_millis(50))
        .handler(|_job: Job<String>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(handle.health().healthy, "{:?}", handle.health());
    queue_core::traits::Backend::close(&backend).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = handle.health();
    assert!(!health.healthy, "{health:?}");
    assert!(health.last_error.unwrap_or_default().contains("closed"));
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_name_the_field() {
    let backend = Arc::new(MemoryBackend::new());
    let err = Worker::builder(backend.clone(), QueueName::new("bad").unwrap())
        .poll_wait(Duration::ZERO)
        .timeout(Duration::MAX)
        .handler(|_job: Job<String>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .unwrap_err();
    assert!(
        err.message().contains("poll_wait: must be between 1ms"),
        "{err}"
    );
    assert!(
        err.message()
            .contains("timeout: must be between 1ms and 24h"),
        "{err}"
    );
    let err = Worker::builder(backend, QueueName::new("bad").unwrap())
        .concurrency(0)
        .handler(|_job: Job<String>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.message().contains("concurrency: must be 1 to 10000"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_jobs_get_their_lease_extended() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("extend").unwrap();
    let handle = Worker::builder(Arc::new(backend.clone()), queue.clone())
        .lease(Duration::from_secs(1))
        .handler(|_job: Job<String>| async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Ok::<_, std::io::Error>(())
        })
        .start()
        .await
        .unwrap();
    send(&backend, &queue, "long", &JobOptions::default()).await;
    until(&handle, |s| s.completed == 1).await;
    let stats = handle.stats();
    handle.shutdown().await.unwrap();
    assert_eq!(
        stats.started, 1,
        "never redelivered while running: {stats:?}"
    );
    let q = queue_core::traits::Admin::stats(&backend, &queue)
        .await
        .unwrap();
    assert_eq!((q.retried_total, q.acked_total), (0, 1), "{q:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_own_timeout_is_clamped_to_the_workers_maximum() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("clamped-timeout").unwrap();
    let handle = Worker::builder(Arc::new(backend.clone()), queue.clone())
        .max_timeout(Duration::from_millis(200))
        .handler(|_: Job<String>| async move {
            // Far longer than the worker allows: only the timeout ends it.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), anyhow::Error>(())
        })
        .start()
        .await
        .unwrap();
    let producer = backend.memory_producer(&queue).unwrap();
    let once = JobOptions::default().with_max_retries(0);
    // A producer asks for an hour, and for more milliseconds than a
    // deadline can hold: both attempts end at the worker's 200 ms.
    for asked in [3_600_000u64, u64::MAX] {
        let message = Job::encode(&"slow".to_owned(), &once)
            .unwrap()
            .with_header(queue_core::job::HEADER_TIMEOUT_MS, asked.to_string());
        producer.send(message).await.unwrap();
    }
    until(&handle, |s| s.dead_lettered == 2 && s.in_flight == 0).await;
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_finishing_in_the_grace_period_are_acked_as_they_finish() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("grace-acks").unwrap();
    // One permit each lets "quick", then "slow", finish.
    let quick = Arc::new(tokio::sync::Semaphore::new(0));
    let slow = Arc::new(tokio::sync::Semaphore::new(0));
    let (quick_gate, slow_gate) = (quick.clone(), slow.clone());
    let handle = Worker::builder(Arc::new(backend.clone()), queue.clone())
        .concurrency(2)
        .lanes(1)
        .poll_wait(Duration::from_secs(30))
        .handler(move |job: Job<String>| {
            let gate = match job.payload.as_str() {
                "quick" => quick_gate.clone(),
                _ => slow_gate.clone(),
            };
            async move {
                gate.acquire().await.expect("gate").forget();
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .unwrap();
    for payload in ["quick", "slow"] {
        send(&backend, &queue, payload, &JobOptions::default()).await;
    }
    until(&handle, |s| s.started == 2).await;
    let acked = || async {
        queue_core::traits::Admin::stats(&backend, &queue)
            .await
            .unwrap()
            .acked_total
    };
    let shutdown = tokio::spawn(handle.shutdown());
    // Not an assertion: lets the lane take the stop before "quick" ends.
    tokio::time::sleep(Duration::from_millis(100)).await;
    quick.add_permits(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked().await < 1 {
        assert!(
            Instant::now() < deadline,
            "the job that finished during the grace period was not acked while another ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!shutdown.is_finished(), "shutdown waits for the slow job");
    slow.add_permits(1);
    let report = shutdown.await.unwrap().unwrap();
    assert_eq!((report.finished_in_grace, report.returned), (2, 0));
    assert_eq!(acked().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_maximum_a_job_may_not_outlast_the_workers_own_timeout() {
    let backend = MemoryBackend::new();
    let queue = QueueName::new("own-timeout-bounds").unwrap();
    let handle = Worker::builder(Arc::new(backend.clone()), queue.clone())
        .timeout(Duration::from_millis(200))
        .handler(|_: Job<String>| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), anyhow::Error>(())
        })
        .start()
        .await
        .unwrap();
    let producer = backend.memory_producer(&queue).unwrap();
    let asks_an_hour = JobOptions::default()
        .with_max_retries(0)
        .with_timeout(Duration::from_secs(3600));
    producer
        .send(Job::encode(&"slow".to_owned(), &asks_an_hour).unwrap())
        .await
        .unwrap();
    until(&handle, |s| s.dead_lettered == 1 && s.in_flight == 0).await;
    handle.shutdown().await.unwrap();
    let zero = Worker::builder(Arc::new(backend.clone()), queue)
        .max_timeout(Duration::ZERO)
        .handler(|_: Job<String>| async move { Ok::<(), anyhow::Error>(()) })
        .start()
        .await;
    let error = zero.expect_err("a zero maximum is refused");
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
}
