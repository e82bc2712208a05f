//! The worker runtime: every job processed once, retries with backoff,
//! timeouts that cancel, panics isolated, graceful shutdown, trace context.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_core::trace::{self, TraceContext};
use queue_core::{Job, JobOptions, Message};
use queue_worker::Worker;

use super::{dead_letters, receive_one, send, test_backoff, until, LEASE, QUIET, SOON};
use crate::harness::Ctx;

/// Case 31: 10,000 jobs, concurrency 32: all completed once, statistics match.
pub async fn worker_processes_all(ctx: &Ctx) {
    let queue = ctx.queue();
    let total = 10_000u32;
    let producer = ctx.producer(&queue).await;
    let messages: Vec<Message> = (0..total)
        .map(|i| Job::encode(&i, &JobOptions::default()).expect("encode"))
        .collect();
    for chunk in messages.chunks(ctx.caps().max_batch.clamp(1, 500)) {
        producer
            .send_batch(chunk.to_vec())
            .await
            .expect("send_batch");
    }
    let seen: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let counter = seen.clone();
    let worker = Worker::builder(ctx.backend().clone(), queue.clone())
        .concurrency(32)
        .handler(move |job: Job<u32>| {
            let counter = counter.clone();
            async move {
                *counter
                    .lock()
                    .expect("lock")
                    .entry(job.payload)
                    .or_default() += 1;
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    let finished = until(&mut events, Duration::from_secs(120), || {
        worker.stats().completed >= u64::from(total)
    })
    .await;
    let stats = worker.stats();
    worker.shutdown().await.expect("shutdown");
    assert!(finished, "only {} of {total} completed", stats.completed);
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    assert_eq!(seen.len(), total as usize, "every job ran");
    assert!(seen.values().all(|&n| n == 1), "no job ran twice");
    assert_eq!(
        (stats.started, stats.completed, stats.failed),
        (u64::from(total), u64::from(total), 0)
    );
    if ctx.caps().exact_stats() {
        let q = ctx.backend().admin().stats(&queue).await.expect("stats");
        assert_eq!((q.acked_total, q.depth()), (u64::from(total), 0), "{q:?}");
    }
}

/// Case 32: a handler failing twice then succeeding completes on attempt 3,
/// and the gaps respect the backoff policy.
pub async fn worker_retry_backoff(ctx: &Ctx) {
    let queue = ctx.queue();
    let initial = Duration::from_millis(300);
    let starts: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
    let record = starts.clone();
    let worker = Worker::builder(ctx.backend().clone(), queue.clone())
        .concurrency(2)
        .retry(test_backoff(initial))
        .handler(move |job: Job<String>| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .expect("lock")
                    .push((job.attempt, Instant::now()));
                if job.attempt < 3 {
                    return Err(std::io::Error::other(format!(
                        "flaky on attempt {}",
                        job.attempt
                    )));
                }
                Ok(job.attempt)
            }
        })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    let message = Job::encode(
        &"flaky".to_owned(),
        &JobOptions::default().with_max_retries(5),
    )
    .expect("encode");
    ctx.producer(&queue)
        .await
        .send(message)
        .await
        .expect("send");
    let done = until(&mut events, SOON * 2, || worker.stats().completed == 1).await;
    let stats = worker.stats();
    worker.shutdown().await.expect("shutdown");
    assert!(done, "the job did not complete: {stats:?}");
    assert_eq!((stats.failed, stats.retried, stats.completed), (2, 2, 1));
    let starts = starts.lock().expect("lock").clone();
    let attempts: Vec<u32> = starts.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3], "completed on attempt 3");
    let gap1 = starts[1].1 - starts[0].1;
    let gap2 = starts[2].1 - starts[1].1;
    assert!(
        gap1 >= initial,
        "first retry after {gap1:?}, backoff {initial:?}"
    );
    assert!(
        gap2 >= initial * 2,
        "second retry after {gap2:?}, backoff {:?}",
        initial * 2
    );
}

/// Case 33: a handler over its timeout is cancelled: its future is dropped
/// and the side effect after the await never happens; the attempt fails.
pub async fn worker_timeout_cancels(ctx: &Ctx) {
    let queue = ctx.queue();
    let after_await = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    struct OnDrop(Arc<AtomicUsize>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, AtomicOrdering::SeqCst);
        }
    }
    let (effect, drops) = (after_await.clone(), dropped.clone());
    let worker = Worker::builder(ctx.backend().clone(), queue.clone())
        .concurrency(1)
        .handler(move |_job: Job<String>| {
            let (effect, guard) = (effect.clone(), OnDrop(drops.clone()));
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(2)).await;
                effect.fetch_add(1, AtomicOrdering::SeqCst);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    let options = JobOptions::default()
        .with_timeout(Duration::from_millis(200))
        .with_max_retries(0);
    let id = ctx
        .producer(&queue)
        .await
        .send(Job::encode(&"slow".to_owned(), &options).expect("encode"))
        .await
        .expect("send");
    // Failing counts first; the dead-lettering settles over the network.
    let failed = until(&mut events, SOON, || {
        let stats = worker.stats();
        stats.failed == 1 && stats.dead_lettered == 1
    })
    .await;
    assert!(failed, "the attempt was not failed by its timeout");
    assert_eq!(
        dropped.load(AtomicOrdering::SeqCst),
        1,
        "the handler's future was dropped"
    );
    // The future is gone (dropped above), so it can never resume.
    let stats = worker.stats();
    worker.shutdown().await.expect("shutdown");
    assert_eq!(
        after_await.load(AtomicOrdering::SeqCst),
        0,
        "code after the await ran"
    );
    assert_eq!(
        (stats.completed, stats.failed, stats.dead_lettered),
        (0, 1, 1)
    );
    let dead = dead_letters(ctx, &queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, id);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("timed out"),
        "{:?}",
        dead[0].last_error
    );
}

/// Case 34: a panicking handler fails that attempt only.
pub async fn worker_panic_isolated(ctx: &Ctx) {
    let queue = ctx.queue();
    let worker = Worker::builder(ctx.backend().clone(), queue.clone())
        .concurrency(4)
        .retry(test_backoff(Duration::from_millis(50)))
        .handler(|job: Job<u32>| async move {
            if job.payload == 0 && job.attempt == 1 {
                panic!("boom in job 0");
            }
            Ok::<_, std::io::Error>(job.attempt)
        })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    let producer = ctx.producer(&queue).await;
    for i in 0..10u32 {
        producer
            .send(Job::encode(&i, &JobOptions::default()).expect("encode"))
            .await
            .expect("send");
    }
    let done = until(&mut events, SOON * 2, || worker.stats().completed == 10).await;
    let stats = worker.stats();
    let health = worker.health();
    worker.shutdown().await.expect("shutdown");
    assert!(done, "not all completed: {stats:?}");
    assert_eq!(
        (stats.failed, stats.retried, stats.completed),
        (1, 1, 10),
        "only the panicking attempt failed"
    );
    assert!(health.healthy, "the worker survives a panic: {health:?}");
}

/// Case 35: in-flight jobs finish, prefetched ones return to the queue,
/// nothing lost, nothing run twice.
pub async fn graceful_shutdown(ctx: &Ctx) {
    let queue = ctx.queue();
    let total = 20u32;
    let runs: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let producer = ctx.producer(&queue).await;
    for i in 0..total {
        producer
            .send(Job::encode(&i, &JobOptions::default()).expect("encode"))
            .await
            .expect("send");
    }
    let start_worker = |runs: Arc<Mutex<HashMap<u32, u32>>>| {
        Worker::builder(ctx.backend().clone(), queue.clone())
            .concurrency(4)
            .shutdown_grace(Duration::from_secs(20))
            .handler(move |job: Job<u32>| {
                let runs = runs.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    *runs.lock().expect("lock").entry(job.payload).or_default() += 1;
                    Ok::<_, std::io::Error>(())
                }
            })
            .start()
    };
    let first = start_worker(runs.clone()).await.expect("start worker");
    let mut events = first.subscribe();
    assert!(
        until(&mut events, SOON, || first.stats().started >= 4).await,
        "jobs started"
    );
    let report = first.shutdown().await.expect("shutdown");
    let finished_by_first = runs.lock().expect("lock").len() as u32;
    assert_eq!(
        report.returned, 0,
        "every running job finished within the grace period"
    );
    assert!(
        finished_by_first >= 4 && finished_by_first < total,
        "{finished_by_first} finished before shutdown"
    );
    let second = start_worker(runs.clone())
        .await
        .expect("start second worker");
    let mut events = second.subscribe();
    let rest = u64::from(total - finished_by_first);
    assert!(
        until(&mut events, SOON * 2, || second.stats().completed >= rest).await,
        "the rest completed"
    );
    second.shutdown().await.expect("shutdown");
    let runs = runs.lock().expect("lock");
    assert_eq!(runs.len(), total as usize, "nothing lost");
    assert!(
        runs.values().all(|&n| n == 1),
        "nothing run twice: {runs:?}"
    );
}

/// Case 58: shutdown does not wait out a receive's poll wait. With a 30 s
/// poll wait, an idle worker and one whose last job has just finished
/// (its ack rides with the next receive where the backend fuses them)
/// both shut down well within 5 s; every job ran once and its ack landed,
/// and a message sent after the shutdown goes to the next consumer at
/// once, with attempt 1 (no receive of the stopped worker kept it).
pub async fn shutdown_is_prompt(ctx: &Ctx) {
    // Long enough that waiting it out is unmistakable; the bound is far
    // from both it and a prompt shutdown, so load never decides the case.
    const POLL_WAIT: Duration = Duration::from_secs(30);
    const PROMPT: Duration = Duration::from_secs(5);
    let queue = ctx.queue();
    let runs: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let start_worker = |runs: Arc<Mutex<HashMap<u32, u32>>>| {
        Worker::builder(ctx.backend().clone(), queue.clone())
            .concurrency(1)
            .poll_wait(POLL_WAIT)
            .lease(LEASE)
            .handler(move |job: Job<u32>| {
                let runs = runs.clone();
                async move {
                    *runs.lock().expect("lock").entry(job.payload).or_default() += 1;
                    Ok::<_, std::io::Error>(())
                }
            })
            .start()
    };

    let idle = start_worker(runs.clone()).await.expect("start idle worker");
    // Not a timing assertion: lets the lane's receive reach its wait on
    // the broker, which is what shutdown has to cut short.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    let report = idle.shutdown().await.expect("shutdown of an idle worker");
    let idle_took = began.elapsed();
    eprintln!("{}: idle worker shut down in {idle_took:?}", ctx.case());
    assert!(
        idle_took < PROMPT,
        "an idle worker took {idle_took:?} to shut down (poll wait {POLL_WAIT:?})"
    );
    assert_eq!((report.finished_in_grace, report.returned), (0, 0));

    let total = 3u32;
    let worker = start_worker(runs.clone()).await.expect("start worker");
    let mut events = worker.subscribe();
    let producer = ctx.producer(&queue).await;
    for i in 0..total {
        producer
            .send(Job::encode(&i, &JobOptions::default()).expect("encode"))
            .await
            .expect("send");
    }
    let done = until(&mut events, SOON, || {
        worker.stats().completed == u64::from(total)
    })
    .await;
    let stats = worker.stats();
    let began = Instant::now();
    let report = worker.shutdown().await.expect("shutdown");
    let busy_took = began.elapsed();
    eprintln!(
        "{}: worker shut down {busy_took:?} after its last job",
        ctx.case()
    );
    assert!(done, "not all completed: {stats:?}");
    assert!(
        busy_took < PROMPT,
        "shutdown took {busy_took:?} after the last job (poll wait {POLL_WAIT:?})"
    );
    assert_eq!(report.returned, 0, "{report:?}");
    {
        let runs = runs.lock().expect("lock");
        assert_eq!(runs.len(), total as usize, "every job ran: {runs:?}");
        assert!(runs.values().all(|&n| n == 1), "no job ran twice: {runs:?}");
    }
    if ctx.caps().exact_stats() {
        let q = ctx.backend().admin().stats(&queue).await.expect("stats");
        assert_eq!(
            (q.acked_total, q.in_flight, q.depth()),
            (u64::from(total), 0, 0),
            "every ack landed: {q:?}"
        );
    }

    // Nothing the stopped workers received is held back: a message sent
    // now goes to a new consumer at once, on its first attempt; and no
    // job comes back once its lease (LEASE) has passed: every ack landed.
    let after = send(ctx, &queue, Message::new("after shutdown")).await;
    let consumer = ctx.consumer(&queue, None).await;
    let delivery = receive_one(&*consumer, "message sent after the shutdown").await;
    assert_eq!(
        (delivery.message().id, delivery.attempt()),
        (after, 1),
        "the message sent after the shutdown"
    );
    delivery.ack().await.expect("ack");
    let again = consumer.receive(10, LEASE + QUIET).await.expect("receive");
    assert!(
        again.is_empty(),
        "a job of the stopped workers came back: {:?}",
        again.iter().map(|d| d.payload()).collect::<Vec<_>>()
    );
}

/// Case 37: a `traceparent` set at send is the parent of the handler's span.
pub async fn trace_propagation(ctx: &Ctx) {
    let queue = ctx.queue();
    let root = TraceContext::new_root();
    let message = trace::scope(root, async {
        Job::encode(&"typed".to_owned(), &JobOptions::default())
    })
    .await
    .expect("encode");
    let sent = message.trace.expect("the trace context is set at send");
    assert_eq!(
        sent.trace_id, root.trace_id,
        "the send is part of the caller's trace"
    );
    // A message from another producer carries it as a plain header.
    let foreign_parent = TraceContext::new_root();
    let raw = Message::new(&b"\"raw\""[..])
        .with_header(trace::TRACEPARENT, foreign_parent.to_traceparent());
    // payload -> (the handler's own context, its parent) as the handler saw them
    type Seen = HashMap<String, (Option<TraceContext>, Option<TraceContext>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = seen.clone();
    let worker = Worker::builder(ctx.backend().clone(), queue.clone())
        .handler(move |job: Job<String>| {
            let record = record.clone();
            async move {
                let contexts = (trace::current(), trace::parent());
                record.lock().expect("lock").insert(job.payload, contexts);
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    let producer = ctx.producer(&queue).await;
    producer.send(message).await.expect("send");
    producer.send(raw).await.expect("send raw");
    assert!(until(&mut events, SOON, || worker.stats().completed == 2).await);
    worker.shutdown().await.expect("shutdown");
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    for (payload, parent) in [("typed", sent), ("raw", foreign_parent)] {
        let (current, seen_parent) = seen[payload];
        let current = current.expect("the handler runs inside a trace context");
        assert_eq!(
            seen_parent,
            Some(parent),
            "{payload}: the parent is the sent traceparent"
        );
        assert_eq!(current.trace_id, parent.trace_id, "{payload}: same trace");
        assert_ne!(
            current.span_id, parent.span_id,
            "{payload}: the handler has its own span"
        );
    }
}
