//! Jobs sent through the caller's own transaction, with a worker running
//! against a real PostgreSQL (`QUEUE_TEST_POSTGRES_URL`): a rolled-back
//! job never exists and never runs; a job not yet committed is invisible
//! to a running worker; a committed one runs exactly once.

use std::collections::HashMap;
use std::time::Duration;

use queue_core::{Backend, ConsumerOptions, Job, JobOptions, Message, QueueName};
use queue_postgres::PostgresBackend;
use queue_testkit::broker_url;
use queue_worker::Worker;
use tokio::sync::mpsc;

/// A backend on a schema of this test's own, dropped at the end.
struct Schema {
    backend: PostgresBackend,
}

impl Schema {
    async fn new() -> Option<Schema> {
        let base = broker_url("QUEUE_TEST_POSTGRES_URL")?;
        let id = queue_core::MessageId::new().as_uuid().simple().to_string();
        let schema = format!("qt_tx_{}", &id[id.len() - 12..]);
        let joiner = if base.contains('?') { '&' } else { '?' };
        let backend = PostgresBackend::connect(&format!("{base}{joiner}schema={schema}"))
            .await
            .expect("connect");
        Some(Schema { backend })
    }

    async fn drop_schema(self) {
        let schema = self.backend.schema().to_owned();
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(self.backend.pool())
            .await
            .expect("drop the test schema");
    }
}

/// A worker on `queue` whose handler reports every payload it runs.
async fn worker(
    backend: &PostgresBackend,
    queue: &QueueName,
) -> (queue_worker::WorkerHandle, mpsc::UnboundedReceiver<String>) {
    let (ran, runs) = mpsc::unbounded_channel();
    let worker = Worker::builder(std::sync::Arc::new(backend.clone()), queue.clone())
        .concurrency(4)
        .handler(move |job: Job<String>| {
            let ran = ran.clone();
            async move {
                ran.send(job.payload).expect("the test listens");
                Ok::<_, std::convert::Infallible>(())
            }
        })
        .start()
        .await
        .expect("worker starts");
    (worker, runs)
}

fn job(name: &str) -> Message {
    Job::encode(&name, &JobOptions::default()).expect("encode")
}

/// Wait until the worker ran `marker`, counting what else it ran first.
async fn run_until(
    runs: &mut mpsc::UnboundedReceiver<String>,
    marker: &str,
) -> HashMap<String, u32> {
    let mut seen = HashMap::new();
    loop {
        let payload = tokio::time::timeout(Duration::from_secs(20), runs.recv())
            .await
            .unwrap_or_else(|_| panic!("{marker} ran within 20 s"))
            .expect("the worker runs");
        *seen.entry(payload.clone()).or_default() += 1;
        if payload == marker {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_belongs_to_its_transaction() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let backend = &schema.backend;
    // Its Debug form names no credentials (and no connect options).
    let shown = format!("{backend:?} {:?}", backend.job_store());
    assert!(!shown.contains("password"), "{shown}");
    let queue = QueueName::new("orders").expect("name");
    let producer = backend.postgres_producer(&queue).await.expect("producer");
    let (worker, mut runs) = worker(backend, &queue).await;

    // Rolled back: the job never exists.
    let mut tx = backend.pool().begin().await.expect("begin");
    producer
        .send_in(&mut tx, job("rolled back"))
        .await
        .expect("send in the transaction");
    producer
        .send_batch_in(&mut tx, vec![job("rolled back too"), job("and this")])
        .await
        .expect("batch in the transaction");
    tx.rollback().await.expect("rollback");

    // Not yet committed: a job sent later, outside, runs; this one does not.
    let mut tx = backend.pool().begin().await.expect("begin");
    producer
        .send_in(&mut tx, job("committed"))
        .await
        .expect("send in the transaction");
    producer
        .send_in(
            &mut backend.pool().acquire().await.expect("conn"),
            job("marker 1"),
        )
        .await
        .expect("send outside");
    let before = run_until(&mut runs, "marker 1").await;
    assert_eq!(
        before.len(),
        1,
        "only the marker ran before the commit: {before:?}"
    );

    // Committed: it runs, once.
    tx.commit().await.expect("commit");
    let after = run_until(&mut runs, "committed").await;
    assert_eq!(after.get("committed"), Some(&1));
    let producer_outside = backend.producer(&queue).await.expect("producer");
    producer_outside.send(job("marker 2")).await.expect("send");
    let rest = run_until(&mut runs, "marker 2").await;
    assert_eq!(
        rest.len(),
        1,
        "nothing ran twice, nothing rolled back ran: {rest:?}"
    );
    worker.shutdown().await.expect("shutdown");

    let stats = backend.admin().stats(&queue).await.expect("stats");
    assert_eq!(
        (
            stats.enqueued_total,
            stats.acked_total,
            stats.ready + stats.in_flight
        ),
        (3, 3, 0),
        "three jobs were ever queued, all done: {stats:?}"
    );
    drop(runs);
    schema.drop_schema().await;
}

#[tokio::test]
async fn a_schema_named_like_a_keyword_is_refused() {
    let Some(base) = broker_url("QUEUE_TEST_POSTGRES_URL") else {
        return;
    };
    let joiner = if base.contains('?') { '&' } else { '?' };
    let error = PostgresBackend::connect(&format!("{base}{joiner}schema=user"))
        .await
        .expect_err("a keyword");
    assert_eq!(error.kind(), queue_core::ErrorKind::Config, "{error}");
    assert!(error.message().contains("keyword"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_consumer_is_woken_by_the_commit() {
    let Some(schema) = Schema::new().await else {
        return;
    };
    let backend = schema.backend.clone();
    let queue = QueueName::new("wake").expect("name");
    let producer = backend.postgres_producer(&queue).await.expect("producer");
    let consumer = backend
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    let waiting = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let got = consumer
            .receive(10, Duration::from_secs(30))
            .await
            .expect("receive");
        (got.len(), started.elapsed())
    });
    let mut tx = backend.pool().begin().await.expect("begin");
    producer
        .send_in(&mut tx, Message::new("in a transaction"))
        .await
        .expect("send");
    tx.commit().await.expect("commit");
    let (got, waited) = waiting.await.expect("the receive ends");
    assert_eq!(got, 1);
    // Woken by the commit's notification, not by the 5 s safety poll.
    assert!(waited < Duration::from_secs(4), "waited {waited:?}");
    schema.drop_schema().await;
}
