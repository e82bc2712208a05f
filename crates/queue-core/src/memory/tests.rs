//! Unit tests of the memory backend's wake-ups and maximum length.

use std::time::Duration;

use tokio::time::Instant;

use super::state::lock;
use super::*;
use crate::error::ErrorKind;
use crate::message::{Message, QueueName};
use crate::stats::{ConsumerOptions, QueueOptions};
use crate::traits::{Admin, Backend, Consumer, Producer};

fn queue(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

/// Wait until `n` consumers are registered as waiting on `q`, so a test
/// exercises the wake-up path rather than racing it.
async fn until_waiting(backend: &MemoryBackend, q: &QueueName, n: usize) {
    let registered = || -> usize {
        let queues = lock(&backend.shared.queues);
        queues
            .get(q)
            .map_or(0, |queue| lock(&queue.state).waiting.values().sum())
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while registered() < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("consumers start waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_refuses_with_a_typed_error_and_frees_up() {
    let backend = MemoryBackend::new();
    let q = queue("bounded");
    backend
        .ensure_queue(&q, &QueueOptions::default().with_max_length(3))
        .await
        .unwrap();
    let producer = backend.memory_producer(&q).unwrap();
    producer.send(Message::new("1")).await.unwrap();
    let err = producer
        .send_batch(vec![
            Message::new("2"),
            Message::new("3"),
            Message::new("4"),
        ])
        .await
        .unwrap_err();
    assert!(!err.is_partial(), "all or nothing");
    let err = err.into_error();
    assert_eq!(err.kind(), ErrorKind::QueueFull);
    assert!(err.is_retryable());
    assert!(err.message().contains("at most 3"), "{err}");
    assert_eq!(
        backend.stats(&q).await.unwrap().ready,
        1,
        "a refused batch queues nothing"
    );
    producer
        .send_batch(vec![Message::new("2"), Message::new("3")])
        .await
        .unwrap();
    assert_eq!(
        producer.send(Message::new("4")).await.unwrap_err().kind(),
        ErrorKind::QueueFull
    );
    let consumer = backend
        .memory_consumer(&q, ConsumerOptions::default())
        .unwrap();
    let deliveries = consumer.receive(1, Duration::ZERO).await.unwrap();
    // In flight still counts against the length; acked does not.
    assert_eq!(
        producer.send(Message::new("4")).await.unwrap_err().kind(),
        ErrorKind::QueueFull
    );
    consumer.ack_batch(deliveries).await.unwrap();
    producer.send(Message::new("4")).await.unwrap();
    let err = backend
        .ensure_queue(&q, &QueueOptions::default().with_max_length(0))
        .await
        .unwrap_err();
    assert!(err.message().contains("max_length"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_consumer_wakes_on_send_not_on_its_timer() {
    let backend = MemoryBackend::new();
    let q = queue("wake");
    let consumer = backend
        .memory_consumer(&q, ConsumerOptions::default())
        .unwrap();
    let producer = backend.memory_producer(&q).unwrap();
    let started = Instant::now();
    let waiting = tokio::spawn(async move { consumer.receive(10, Duration::from_secs(30)).await });
    until_waiting(&backend, &q, 1).await;
    producer.send(Message::new("wake up")).await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woke after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waiting_ends_this_consumers_wait_only() {
    let backend = MemoryBackend::new();
    let q = queue("stop-waiting");
    let stopping = std::sync::Arc::new(
        backend
            .memory_consumer(&q, ConsumerOptions::default())
            .unwrap(),
    );
    let other = backend
        .memory_consumer(&q, ConsumerOptions::default())
        .unwrap();
    let started = Instant::now();
    let waiting = {
        let stopping = stopping.clone();
        tokio::spawn(async move { stopping.receive(10, Duration::from_secs(30)).await })
    };
    let other_waiting = tokio::spawn(async move {
        let got = other.receive(10, Duration::from_secs(30)).await;
        (got, other)
    });
    until_waiting(&backend, &q, 2).await;
    stopping.stop_waiting();
    assert!(waiting.await.unwrap().unwrap().is_empty());
    // Sticky: a later receive looks once (taking what is ready) and
    // returns without waiting.
    let producer = backend.memory_producer(&q).unwrap();
    assert!(stopping
        .receive(10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    // The other consumer still waits, and gets the next message.
    assert!(!other_waiting.is_finished());
    producer.send(Message::new("for the other")).await.unwrap();
    let (got, _other) = other_waiting.await.unwrap();
    assert_eq!(got.unwrap().len(), 1);
    producer.send(Message::new("ready")).await.unwrap();
    assert_eq!(
        stopping
            .receive(10, Duration::from_secs(30))
            .await
            .unwrap()
            .len(),
        1
    );
    // No receive above waited out its 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiting_consumer_gets_a_share_of_a_large_batch() {
    let backend = MemoryBackend::new();
    let q = queue("share");
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let consumer = backend
            .memory_consumer(&q, ConsumerOptions::default())
            .unwrap();
        waiting.push(tokio::spawn(async move {
            consumer
                .receive(10, Duration::from_secs(30))
                .await
                .unwrap()
                .len()
        }));
    }
    until_waiting(&backend, &q, 4).await;
    let producer = backend.memory_producer(&q).unwrap();
    let started = Instant::now();
    producer
        .send_batch((0..40).map(|i| Message::new(format!("{i}"))).collect())
        .await
        .unwrap();
    let mut total = 0;
    for task in waiting {
        let n = task.await.unwrap();
        assert!(n > 0, "a waiter was left asleep");
        total += n;
    }
    assert_eq!(total, 40);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_waiter_does_not_swallow_the_wake_up() {
    let backend = MemoryBackend::new();
    let q = queue("cancel");
    let first = backend
        .memory_consumer(&q, ConsumerOptions::default())
        .unwrap();
    let second = backend
        .memory_consumer(&q, ConsumerOptions::default())
        .unwrap();
    let cancelled = tokio::spawn(async move { first.receive(1, Duration::from_secs(30)).await });
    let survivor = tokio::spawn(async move { second.receive(1, Duration::from_secs(30)).await });
    until_waiting(&backend, &q, 2).await;
    cancelled.abort();
    let _ = cancelled.await;
    backend
        .memory_producer(&q)
        .unwrap()
        .send(Message::new("x"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), survivor)
        .await
        .expect("the surviving waiter wakes")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(lock(&backend.shared.queues)[&q]
        .state
        .lock()
        .unwrap()
        .waiting
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_earlier_due_time_re_arms_a_sleeping_consumer() {
    let backend = MemoryBackend::new();
    let q = queue("rearm");
    let consumer = backend
        .memory_consumer(&q, ConsumerOptions::default())
        .unwrap();
    let started = Instant::now();
    let waiting = tokio::spawn(async move { consumer.receive(1, Duration::from_secs(30)).await });
    until_waiting(&backend, &q, 1).await;
    let delay = Duration::from_millis(300);
    backend
        .memory_producer(&q)
        .unwrap()
        .send(Message::new("soon").with_delay(delay))
        .await
        .unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    let elapsed = started.elapsed();
    assert!(elapsed >= delay, "early: {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(10),
        "the consumer slept through: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_and_deleted_queues_release_waiters_with_typed_errors() {
    let backend = MemoryBackend::new();
    let q = queue("gone");
    let consumer = backend
        .memory_consumer(&q, ConsumerOptions::default())
        .unwrap();
    let waiting = tokio::spawn(async move { consumer.receive(1, Duration::from_secs(30)).await });
    until_waiting(&backend, &q, 1).await;
    backend.delete_queue(&q).await.unwrap();
    let err = waiting.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    let consumer = backend
        .memory_consumer(&q, ConsumerOptions::default())
        .unwrap();
    let waiting = tokio::spawn(async move { consumer.receive(1, Duration::from_secs(30)).await });
    until_waiting(&backend, &q, 1).await;
    backend.close().await.unwrap();
    assert_eq!(
        waiting.await.unwrap().unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[test]
fn a_shared_backend_keeps_its_job_store() {
    use crate::traits::Backend;
    let backend = std::sync::Arc::new(MemoryBackend::new());
    assert!(Backend::default_job_store(&backend).is_some());
    let boxed: Box<MemoryBackend> = Box::default();
    assert!(Backend::default_job_store(&boxed).is_some());
}
