//! Group fairness on PostgreSQL beyond the conformance cases: a plain
//! backlog takes turns once a group arrives, and every way a job becomes
//! ready in a queue with groups (a nack, a release, a delay falling due,
//! a lease running out, a redrive, a plain SQL `INSERT`) gives it a turn, so none is left
//! where no claim finds it. Against a real PostgreSQL
//! (`QUEUE_TEST_POSTGRES_URL`), in a schema of the test's own.

use std::time::Duration;

use queue_core::{
    Backend, Consumer, ConsumerOptions, DeadLetterReason, Delivery, Message, QueueName, Redrive,
};
use queue_postgres::PostgresBackend;
use queue_testkit::broker_url;

/// A backend on a schema of this test's own; `drop_schema` removes it.
async fn backend(tag: &str) -> Option<PostgresBackend> {
    let base = broker_url("QUEUE_TEST_POSTGRES_URL")?;
    let id = queue_core::MessageId::new().as_uuid().simple().to_string();
    let schema = format!("qt_{tag}_{}", &id[id.len() - 12..]);
    let joiner = if base.contains('?') { '&' } else { '?' };
    let backend = PostgresBackend::connect(&format!("{base}{joiner}schema={schema}"))
        .await
        .expect("connect");
    Some(backend)
}

async fn drop_schema(backend: PostgresBackend) {
    let schema = backend.schema().to_owned();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(backend.pool())
        .await
        .expect("drop the test schema");
}

async fn send(backend: &PostgresBackend, queue: &QueueName, messages: Vec<Message>) {
    let producer = backend.producer(queue).await.expect("producer");
    producer.send_batch(messages).await.expect("send");
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8(delivery.payload().to_vec()).expect("utf-8")
}

/// Receive and ack every job until `n` have come, in delivery order.
async fn drain(consumer: &dyn Consumer, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let batch = consumer
            .receive(n - seen.len(), Duration::from_secs(5))
            .await
            .expect("receive");
        assert!(!batch.is_empty(), "nothing came after {seen:?}");
        for delivery in batch {
            seen.push(text(&delivery));
            delivery.ack().await.expect("ack");
        }
    }
    seen
}

/// Receive exactly one job.
async fn one(consumer: &dyn Consumer) -> Delivery {
    let mut batch = consumer
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(batch.len(), 1, "one job comes");
    batch.remove(0)
}

#[tokio::test]
async fn a_plain_backlog_takes_turns_once_a_group_arrives() {
    let Some(backend) = backend("groups").await else {
        return;
    };
    let queue = QueueName::new("plain-then-grouped").expect("name");
    send(
        &backend,
        &queue,
        (0..100).map(|i| Message::new(format!("p{i:03}"))).collect(),
    )
    .await;
    send(
        &backend,
        &queue,
        (0..5)
            .map(|i| Message::new(format!("b{i}")).with_group("b"))
            .collect(),
    )
    .await;
    let consumer = backend
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    let seen = drain(consumer.as_ref(), 105).await;
    let b_at: Vec<usize> = (0..seen.len())
        .filter(|&i| seen[i].starts_with('b'))
        .collect();
    assert!(
        b_at.iter().all(|&at| at < 12),
        "the group's jobs take turns with the backlog before it: {b_at:?}"
    );
    let plain: Vec<&String> = seen.iter().filter(|s| s.starts_with('p')).collect();
    let mut sorted = plain.clone();
    sorted.sort();
    assert_eq!(plain, sorted, "the plain jobs keep their order");
    drop(consumer);
    drop_schema(backend).await;
}

#[tokio::test]
async fn jobs_ready_again_take_a_turn() {
    let Some(backend) = backend("turns").await else {
        return;
    };
    let queue = QueueName::new("again").expect("name");
    send(
        &backend,
        &queue,
        (0..10)
            .map(|i| Message::new(format!("a{i}")).with_group("a"))
            .collect(),
    )
    .await;
    let consumer = backend
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");

    // A nack: the job goes after the rest of its group.
    let first = one(consumer.as_ref()).await;
    assert_eq!(text(&first), "a0");
    first.nack(Duration::ZERO).await.expect("nack");
    // A release: the job's group has the next turn, the job first in it.
    let next = one(consumer.as_ref()).await;
    assert_eq!(text(&next), "a1");
    next.release().await.expect("release");
    let seen = drain(consumer.as_ref(), 10).await;
    let want: Vec<String> = (1..10).chain([0]).map(|i| format!("a{i}")).collect();
    assert_eq!(seen, want, "released first, nacked last");

    // A delay falling due, and a lease running out, in a queue with groups.
    send(
        &backend,
        &queue,
        vec![Message::new("late")
            .with_group("c")
            .with_delay(Duration::from_millis(300))],
    )
    .await;
    assert_eq!(drain(consumer.as_ref(), 1).await, ["late"]);
    let short = backend
        .consumer(
            &queue,
            ConsumerOptions::default().with_lease(Duration::from_secs(1)),
        )
        .await
        .expect("consumer");
    send(
        &backend,
        &queue,
        vec![Message::new("leased").with_group("d")],
    )
    .await;
    let held = one(short.as_ref()).await;
    assert_eq!(text(&held), "leased");
    // Not settled: the lease runs out and the job comes again.
    let again = one(short.as_ref()).await;
    assert_eq!(text(&again), "leased");
    assert_eq!(again.attempt(), 2);
    drop(held);

    // A redrive brings a dead grouped job back where a claim finds it.
    again
        .dead_letter(DeadLetterReason::Rejected("test".into()))
        .await
        .expect("dead-letter");
    let moved = backend
        .admin()
        .redrive(&queue, Redrive::All)
        .await
        .expect("redrive");
    assert_eq!(moved, 1);
    assert_eq!(drain(consumer.as_ref(), 1).await, ["leased"]);

    // A plain INSERT (enqueueing from SQL) into a queue with groups.
    sqlx::query(&format!(
        "INSERT INTO {}.jobs (queue, body) VALUES ($1, 'from sql')",
        backend.schema()
    ))
    .bind(queue.as_str())
    .execute(backend.pool())
    .await
    .expect("insert");
    assert_eq!(drain(consumer.as_ref(), 1).await, ["from sql"]);
    drop((consumer, short));
    drop_schema(backend).await;
}
