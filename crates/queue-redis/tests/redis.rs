//! Redis-specific behaviour beyond the shared suite: the inbox, re-sent
//! ids, the idempotency window, cancel-safe waiting, large dead-letter
//! listings, redrive of letters that die again, and the shared job store.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use queue_core::{
    envelope, Backend, Consumer, ConsumerOptions, DeadLetterReason, JobRecord, JobStatus, JobStore,
    JobUpdate, Message, MessageId, Priority, QueueName, Redrive, RetentionPolicy,
};
use queue_redis::RedisBackend;
use queue_testkit::broker_url;

struct Fixture {
    url: String,
    backend: RedisBackend,
    queue: QueueName,
    admin: redis::aio::MultiplexedConnection,
}

/// Whatever a test leaves in the shared Redis (even when it fails
/// half-way) is removed: the queue's keys and the job-store namespace of
/// the same name.
impl Drop for Fixture {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        for prefix in [queue_redis::DEFAULT_PREFIX, self.backend.prefix()] {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:{{{}}}:*", self.queue))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _ = redis::cmd("UNLINK").arg(keys).query::<()>(&mut conn);
            }
        }
    }
}

impl Fixture {
    async fn new(name: &str, query: &str) -> Option<Fixture> {
        let url = broker_url("QUEUE_TEST_REDIS_URL")?;
        let backend = RedisBackend::connect(&format!("{url}{query}"))
            .await
            .expect("connect");
        let tail = MessageId::new().as_uuid().simple().to_string();
        let queue = QueueName::new(format!("qt-{name}-{}", &tail[20..])).expect("queue name");
        let admin = redis::Client::open(url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection");
        Some(Fixture {
            url,
            backend,
            queue,
            admin,
        })
    }

    async fn consumer(&self) -> Box<dyn Consumer> {
        self.backend
            .consumer(&self.queue, ConsumerOptions::default())
            .await
            .expect("consumer")
    }

    async fn lpush(&self, bytes: &[u8]) {
        let mut admin = self.admin.clone();
        redis::cmd("LPUSH")
            .arg(self.backend.inbox_key(&self.queue))
            .arg(bytes)
            .query_async::<()>(&mut admin)
            .await
            .expect("LPUSH");
    }

    /// `RPUSH <notify> 1`: wakes one waiting consumer.
    async fn notify(&self) {
        let mut admin = self.admin.clone();
        let notify = queue_redis::queue_keys(self.backend.prefix(), &self.queue)[14].clone();
        redis::cmd("RPUSH")
            .arg(notify)
            .arg("1")
            .query_async::<()>(&mut admin)
            .await
            .expect("RPUSH");
    }

    async fn cleanup(self) {
        self.backend
            .admin()
            .delete_queue(&self.queue)
            .await
            .expect("delete queue");
    }
}

#[tokio::test]
async fn inbox_push_with_a_token_wakes_a_waiting_consumer_and_keeps_envelope_fields() {
    let Some(f) = Fixture::new("inbox", "").await else {
        return;
    };
    let consumer = f.consumer().await;
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let got = consumer
            .receive(10, Duration::from_secs(20))
            .await
            .expect("receive");
        (consumer, got, started.elapsed())
    });
    // Give the consumer time to block, then push raw bytes as a plain
    // client would, with the documented wake-up token after them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.lpush(b"\x00raw bytes\xff").await;
    f.notify().await;
    let (consumer, got, waited) = waiting.await.expect("task");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload().as_ref(), b"\x00raw bytes\xff");
    assert_eq!(got[0].attempt(), 1);
    assert!(
        waited < Duration::from_secs(10),
        "woken by the push, not the wait: {waited:?}"
    );
    for d in got {
        d.ack().await.expect("ack");
    }

    // A pushed envelope keeps its id, priority and not-before.
    let delayed = Message::new("later")
        .with_priority(Priority::High)
        .with_delay(Duration::from_millis(800));
    let not_before = delayed.not_before.expect("delay");
    f.lpush(&envelope::encode(&delayed)).await;
    let got = consumer
        .receive(10, Duration::from_secs(10))
        .await
        .expect("receive");
    assert!(
        SystemTime::now() >= not_before,
        "delivered before its not-before"
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message().id, delayed.id);
    assert_eq!(got[0].message().priority, Priority::High);
    for d in got {
        d.ack().await.expect("ack");
    }
    // The same envelope pushed again while queued is a duplicate.
    let once = Message::new("once");
    f.lpush(&envelope::encode(&once)).await;
    f.lpush(&envelope::encode(&once)).await;
    let stats = f.backend.admin().stats(&f.queue).await.expect("stats");
    assert_eq!((stats.ready, stats.deduplicated_total), (1, 1), "{stats:?}");
    drop(consumer);
    f.cleanup().await;
}

#[tokio::test]
async fn a_group_place_comes_back_when_a_lease_expires_and_its_bookkeeping_is_cleared() {
    let Some(f) = Fixture::new("group-expiry", "").await else {
        return;
    };
    let producer = f.backend.producer(&f.queue).await.expect("producer");
    for i in 0..3 {
        producer
            .send(Message::new(format!("a {i}")).with_group("a"))
            .await
            .expect("send");
    }
    let options = ConsumerOptions::default()
        .with_lease(Duration::from_millis(300))
        .with_group_limit(1);
    let consumer = f
        .backend
        .consumer(&f.queue, options)
        .await
        .expect("consumer");
    let first = consumer
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(first.len(), 1, "one of a at a time");
    let held = consumer
        .receive(10, Duration::from_millis(100))
        .await
        .expect("receive");
    assert!(held.is_empty(), "a is at its limit");
    // Its lease runs out unsettled: the place comes back (the expired
    // delivery is the one handed out again, its attempt spent).
    let began = Instant::now();
    let again = consumer
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(again.len(), 1, "one again after the lease expired");
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    drop(first);
    let gof = format!("{}:{{{}}}:gof", f.backend.prefix(), f.queue);
    let mut admin = f.admin.clone();
    let grouped: u64 = redis::cmd("HLEN")
        .arg(&gof)
        .query_async(&mut admin)
        .await
        .expect("HLEN");
    assert_eq!(grouped, 3, "each queued message's group is kept");
    let mut rest = again;
    while !rest.is_empty() {
        for d in rest {
            d.ack().await.expect("ack");
        }
        rest = consumer
            .receive(10, Duration::from_millis(500))
            .await
            .expect("receive");
    }
    // Every message settled: no group bookkeeping is left behind.
    for suffix in ["gof", "gact"] {
        let len: u64 = redis::cmd("HLEN")
            .arg(format!("{}:{{{}}}:{suffix}", f.backend.prefix(), f.queue))
            .query_async(&mut admin)
            .await
            .expect("HLEN");
        assert_eq!(len, 0, "{suffix} is empty");
    }
    f.cleanup().await;
}

#[tokio::test]
async fn the_first_group_on_a_queue_with_a_released_head_keeps_priorities() {
    let Some(f) = Fixture::new("group-front", "").await else {
        return;
    };
    let producer = f.backend.producer(&f.queue).await.expect("producer");
    for i in 0..3 {
        producer
            .send(Message::new(format!("normal {i}")))
            .await
            .expect("send");
    }
    let consumer = f.consumer().await;
    let first = consumer
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive");
    // Handed back: it sits in front of its priority.
    for d in first {
        d.release().await.expect("release");
    }
    // The queue's first group starts its clock with that head.
    producer
        .send(Message::new("grouped").with_group("a"))
        .await
        .expect("send");
    for i in 0..20 {
        producer
            .send(Message::new(format!("high {i}")).with_priority(Priority::High))
            .await
            .expect("send");
    }
    let got = queue_testkit::receive_n(&*consumer, 24, Duration::from_secs(5)).await;
    let order: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8_lossy(d.payload()).into_owned())
        .collect();
    assert_eq!(order.len(), 24, "{order:?}");
    assert!(
        order[..20].iter().all(|p| p.starts_with("high ")),
        "every High before the Normal backlog: {order:?}"
    );
    for d in got {
        d.ack().await.expect("ack");
    }
    f.cleanup().await;
}

#[tokio::test]
async fn sending_the_same_id_again_is_a_duplicate() {
    let Some(f) = Fixture::new("same-id", "").await else {
        return;
    };
    let producer = f.backend.producer(&f.queue).await.expect("producer");
    let message = Message::new("one");
    producer.send(message.clone()).await.expect("send");
    let consumer = f.consumer().await;
    let first = consumer
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(first.len(), 1);
    // A send retried after a lost reply: the message is in flight.
    let id = producer.send(message.clone()).await.expect("send again");
    assert_eq!(id, message.id);
    for d in first {
        d.ack().await.expect("ack");
    }
    let again = consumer
        .receive(10, Duration::from_millis(300))
        .await
        .expect("receive");
    assert!(again.is_empty(), "the re-sent id was queued twice");
    let stats = f.backend.admin().stats(&f.queue).await.expect("stats");
    assert_eq!(
        (
            stats.enqueued_total,
            stats.acked_total,
            stats.deduplicated_total
        ),
        (1, 1, 1)
    );
    f.cleanup().await;
}

#[tokio::test]
async fn an_idempotency_key_is_free_again_after_its_window() {
    let Some(f) = Fixture::new("idem-window", "?idempotency_window=1s").await else {
        return;
    };
    let producer = f.backend.producer(&f.queue).await.expect("producer");
    let first = producer
        .send(Message::new("a").with_idempotency_key("k"))
        .await
        .expect("send");
    let inside = producer
        .send(Message::new("b").with_idempotency_key("k"))
        .await
        .expect("send");
    assert_eq!(inside, first, "inside the window: deduplicated");
    // The window is time itself: wait it out.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let after = Message::new("c").with_idempotency_key("k");
    let id = producer.send(after.clone()).await.expect("send");
    assert_eq!(id, after.id, "after the window the key is free");
    let stats = f.backend.admin().stats(&f.queue).await.expect("stats");
    assert_eq!((stats.ready, stats.deduplicated_total), (2, 1));
    f.cleanup().await;
}

#[tokio::test]
async fn a_cancelled_receive_does_not_swallow_the_wake_up() {
    let Some(f) = Fixture::new("cancel", "").await else {
        return;
    };
    let cancelled = f.consumer().await;
    let waiter = f.consumer().await;
    // One receive is abandoned mid-wait (a select! or timeout around it).
    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        cancelled.receive(10, Duration::from_secs(30)),
    )
    .await;
    assert!(abandoned.is_err(), "nothing to receive yet");
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let got = waiter
            .receive(10, Duration::from_secs(20))
            .await
            .expect("receive");
        (got, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.backend
        .producer(&f.queue)
        .await
        .expect("producer")
        .send(Message::new("wake"))
        .await
        .expect("send");
    let (got, waited) = waiting.await.expect("task");
    assert_eq!(got.len(), 1);
    assert!(
        waited < Duration::from_secs(10),
        "the abandoned wait took the wake-up: {waited:?}"
    );
    for d in got {
        d.ack().await.expect("ack");
    }
    // The abandoned consumer still works.
    f.backend
        .producer(&f.queue)
        .await
        .expect("producer")
        .send(Message::new("again"))
        .await
        .expect("send");
    let got = cancelled
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    f.cleanup().await;
}

#[tokio::test]
async fn large_dead_letter_listings_and_redrive_of_letters_that_die_again() {
    let Some(f) = Fixture::new("dead", "").await else {
        return;
    };
    let producer = f.backend.producer(&f.queue).await.expect("producer");
    let messages: Vec<Message> = (0..2_500).map(|i| Message::new(format!("{i}"))).collect();
    producer.send_batch(messages).await.expect("send");
    let consumer = f.consumer().await;
    let mut buried = 0;
    while buried < 2_500 {
        for d in consumer
            .receive(1000, Duration::from_secs(5))
            .await
            .expect("receive")
        {
            d.dead_letter(DeadLetterReason::Rejected("test".into()))
                .await
                .expect("dead letter");
            buried += 1;
        }
    }
    let all = f
        .backend
        .admin()
        .dead_letters(&f.queue, usize::MAX)
        .await
        .expect("list with no limit");
    assert_eq!(all.len(), 2_500);
    assert!(all
        .iter()
        .all(|d| d.reason == DeadLetterReason::Rejected("test".into())));
    // A consumer kills everything redriven at once; redrive still ends.
    let killer = tokio::spawn(async move {
        let mut killed = 0;
        while killed < 2_500 {
            for d in consumer
                .receive(1000, Duration::from_secs(5))
                .await
                .expect("receive")
            {
                d.dead_letter(DeadLetterReason::Rejected("again".into()))
                    .await
                    .expect("dead letter");
                killed += 1;
            }
        }
    });
    let moved = tokio::time::timeout(
        Duration::from_secs(60),
        f.backend.admin().redrive(&f.queue, Redrive::All),
    )
    .await
    .expect("redrive ends")
    .expect("redrive");
    assert_eq!(moved, 2_500);
    killer.await.expect("killer");
    let stats = f.backend.admin().stats(&f.queue).await.expect("stats");
    assert_eq!((stats.dead, stats.ready, stats.in_flight), (2_500, 0, 0));
    f.cleanup().await;
}

#[tokio::test]
async fn the_job_store_is_shared_between_connections() {
    let Some(f) = Fixture::new("store", "").await else {
        return;
    };
    let namespace = f.queue.as_str().to_owned();
    let one = f
        .backend
        .job_store()
        .with_namespace(&namespace)
        .expect("ns");
    let other_backend = RedisBackend::connect(&f.url).await.expect("connect");
    let other = other_backend
        .job_store()
        .with_namespace(&namespace)
        .expect("ns");
    // A queue named like the namespace is not touched by the store.
    let producer = f.backend.producer(&f.queue).await.expect("producer");
    producer.send(Message::new("keep")).await.expect("send");

    let mut record =
        JobRecord::submitted(MessageId::new(), f.queue.clone(), Priority::High, 3, false);
    record.idempotency_key = Some("order-7".into());
    let id = one.insert(record.clone()).await.expect("insert");
    let mut twin = JobRecord::submitted(MessageId::new(), f.queue.clone(), Priority::Low, 3, false);
    twin.idempotency_key = Some("order-7".into());
    assert_eq!(
        other.insert(twin).await.expect("insert"),
        id,
        "same key, same job"
    );

    assert!(other.start(id, 1).await.expect("start"));
    assert_eq!(
        one.get(id).await.expect("get").expect("kept").status,
        JobStatus::Running
    );
    assert!(
        !one.cancel(id).await.expect("cancel"),
        "running jobs are not cancelled"
    );
    other
        .update(
            id,
            JobUpdate::Completed {
                result: Some(serde_json::json!({"ok": true})),
            },
        )
        .await
        .expect("update");
    let done = one.get(id).await.expect("get").expect("kept");
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.priority, Priority::High);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.result, Some(serde_json::json!({"ok": true})));
    assert!(done.finished_at.is_some());
    // A duplicate delivery of a completed job may start; it stays completed.
    assert!(one.start(id, 2).await.expect("start"));
    assert_eq!(
        one.get(id).await.expect("get").expect("kept").status,
        JobStatus::Completed
    );

    let pending = JobRecord::submitted(
        MessageId::new(),
        f.queue.clone(),
        Priority::Normal,
        1,
        false,
    );
    let pending = one.insert(pending).await.expect("insert");
    assert!(other.cancel(pending).await.expect("cancel"));
    assert!(
        !one.start(pending, 1).await.expect("start"),
        "cancelled jobs never start"
    );
    let stats = other.stats().await.expect("stats");
    assert_eq!((stats.completed, stats.cancelled, stats.total()), (1, 1, 2));

    let removed = one
        .cleanup(&RetentionPolicy::new(None, Some(0)))
        .await
        .expect("cleanup");
    assert_eq!(removed, 2);
    assert_eq!(one.stats().await.expect("stats").total(), 0);
    assert!(one.get(id).await.expect("get").is_none());
    // The key is free once its job is gone.
    let again = JobRecord::submitted(
        MessageId::new(),
        f.queue.clone(),
        Priority::Normal,
        1,
        false,
    );
    let mut again_keyed = again.clone();
    again_keyed.idempotency_key = Some("order-7".into());
    assert_eq!(one.insert(again_keyed).await.expect("insert"), again.id);

    one.clear().await.expect("clear");
    assert_eq!(one.stats().await.expect("stats").total(), 0);
    let stats = f
        .backend
        .admin()
        .stats(&f.queue)
        .await
        .expect("queue stats");
    assert_eq!(stats.ready, 1, "clearing the store left the queue alone");
    drop(Arc::new(other_backend));
    f.cleanup().await;
}

#[tokio::test]
async fn the_prefix_parameter_names_the_keys() {
    let Some(f) = Fixture::new("prefix", "?prefix=qt-alt&request_timeout=5s").await else {
        return;
    };
    assert_eq!(f.backend.prefix(), "qt-alt");
    f.backend
        .producer(&f.queue)
        .await
        .expect("producer")
        .send(Message::new("x"))
        .await
        .expect("send");
    let mut admin = f.admin.clone();
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("qt-alt:{{{}}}:msg", f.queue))
        .query_async(&mut admin)
        .await
        .expect("EXISTS");
    assert!(exists, "messages live under the configured prefix");
    f.cleanup().await;
}

#[tokio::test]
async fn a_manager_and_a_worker_elsewhere_share_job_status_through_redis() {
    let Some(f) = Fixture::new("shared-status", "").await else {
        return;
    };
    let namespace = f.queue.as_str().to_owned();
    // The submitting side: a manager whose job store is in Redis.
    let submit_side: Arc<dyn Backend> = Arc::new(f.backend.clone());
    let manager = queue_worker::QueueManager::builder()
        .backend("redis", submit_side)
        .job_store(Arc::new(
            f.backend
                .job_store()
                .with_namespace(&namespace)
                .expect("ns"),
        ))
        .build()
        .expect("manager");
    let id = manager
        .submit(&f.queue, &21u32, &queue_core::JobOptions::default())
        .await
        .expect("submit");
    assert_eq!(
        manager
            .status(id)
            .await
            .expect("status")
            .expect("tracked")
            .status,
        JobStatus::Pending
    );
    // The working side: another connection, as another process would have.
    let work_backend = RedisBackend::connect(&f.url).await.expect("connect");
    let store = Arc::new(
        work_backend
            .job_store()
            .with_namespace(&namespace)
            .expect("ns"),
    );
    let scheduler = queue_worker::JobScheduler::new(Arc::new(work_backend.clone()), store.clone());
    let worker = scheduler
        .worker(f.queue.clone())
        .handler(
            |job: queue_core::Job<u32>| async move { Ok::<_, std::io::Error>(job.payload * 2) },
        )
        .start()
        .await
        .expect("worker");
    let mut events = worker.subscribe();
    while worker.stats().completed < 1 {
        tokio::time::timeout(Duration::from_secs(15), events.recv())
            .await
            .expect("the job completes")
            .expect("event");
    }
    worker.shutdown().await.expect("shutdown");
    let record = manager.status(id).await.expect("status").expect("tracked");
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(record.result, Some(serde_json::json!(42)));
    assert_eq!(manager.job_stats().await.expect("stats").completed, 1);
    store.clear().await.expect("clear");
    f.cleanup().await;
}

#[tokio::test]
async fn a_lease_expiry_is_the_redelivered_message_s_last_error() {
    let Some(f) = Fixture::new("lease-error", "").await else {
        return;
    };
    // Every optional field before the last error, so the script's parse of
    // the envelope is exercised: not-before, expiry, idempotency key.
    let message = Message::new("payload \u{2713}")
        .with_header("h", "v")
        .with_run_at(SystemTime::now())
        .with_ttl(Duration::from_secs(600))
        .with_idempotency_key("key-1");
    f.backend
        .producer(&f.queue)
        .await
        .expect("producer")
        .send(message.clone())
        .await
        .expect("send");
    let consumer = f
        .backend
        .consumer(
            &f.queue,
            ConsumerOptions::default().with_lease(Duration::from_millis(200)),
        )
        .await
        .expect("consumer");
    let first = consumer
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(first.len(), 1);
    drop(first); // never settled: the lease runs out
    let again = consumer
        .receive(1, Duration::from_secs(10))
        .await
        .expect("receive");
    assert_eq!(again.len(), 1);
    let redelivered = again[0].message();
    assert_eq!(redelivered.attempt, 2);
    assert_eq!(
        redelivered.last_error.as_deref(),
        Some("lease expired before the delivery was settled")
    );
    assert_eq!(redelivered.payload, message.payload);
    assert_eq!(redelivered.headers, message.headers);
    assert_eq!(redelivered.idempotency_key, message.idempotency_key);
    assert!(redelivered.expires_at.is_some());
    // A nack's error replaces it; a later lease expiry replaces that.
    let delivery = again.into_iter().next().expect("one");
    delivery
        .nack_with_error(Duration::ZERO, "boom")
        .await
        .expect("nack");
    let third = consumer
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(third[0].message().attempt, 3);
    assert_eq!(third[0].message().last_error.as_deref(), Some("boom"));
    drop(third);
    let fourth = consumer
        .receive(1, Duration::from_secs(10))
        .await
        .expect("receive");
    assert_eq!(fourth[0].message().attempt, 4);
    assert_eq!(
        fourth[0].message().last_error.as_deref(),
        Some("lease expired before the delivery was settled")
    );
    assert_eq!(fourth[0].message().payload, message.payload);
    assert_eq!(fourth[0].message().headers, message.headers);
    for d in fourth {
        d.ack().await.expect("ack");
    }
    f.cleanup().await;
}

#[tokio::test]
async fn a_deleted_queue_comes_back_with_the_next_send() {
    let Some(f) = Fixture::new("recreate", "").await else {
        return;
    };
    let producer = f.backend.producer(&f.queue).await.expect("producer");
    let consumer = f.consumer().await;
    producer.send(Message::new("before")).await.expect("send");
    // As after a restart of a Redis that kept no data.
    f.backend
        .admin()
        .delete_queue(&f.queue)
        .await
        .expect("delete");
    assert_eq!(
        f.backend.admin().stats(&f.queue).await.unwrap_err().kind(),
        queue_core::ErrorKind::NotFound
    );
    let empty = consumer
        .receive(10, Duration::ZERO)
        .await
        .expect("a missing queue reads as empty");
    assert!(empty.is_empty());
    producer
        .send(Message::new("after"))
        .await
        .expect("send re-creates");
    let got = consumer
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload().as_ref(), b"after");
    for d in got {
        d.ack().await.expect("ack");
    }
    f.cleanup().await;
}

#[tokio::test]
async fn concurrent_settles_are_gathered_and_each_gets_its_own_answer() {
    let Some(f) = Fixture::new("gathered", "").await else {
        return;
    };
    let producer = f.backend.producer(&f.queue).await.expect("producer");
    let messages: Vec<Message> = (0..300).map(|i| Message::new(format!("{i}"))).collect();
    producer.send_batch(messages).await.expect("send");
    // 20 deliveries whose lease runs out and is taken back by a claim: stale.
    let short = f
        .backend
        .consumer(
            &f.queue,
            ConsumerOptions::default().with_lease(Duration::from_millis(150)),
        )
        .await
        .expect("consumer");
    let stale = short
        .receive(20, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(stale.len(), 20);
    tokio::time::sleep(Duration::from_millis(300)).await; // the lease is time itself
    let consumer = f.consumer().await;
    let mut fresh = Vec::new();
    while fresh.len() < 300 {
        fresh.extend(
            consumer
                .receive(1000, Duration::from_secs(5))
                .await
                .expect("receive"),
        );
    }
    // Settle everything at once: stale and fresh, acks and nacks interleaved.
    let mut tasks = Vec::new();
    for (i, d) in fresh.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let id = d.message().id;
            let ok = if i % 2 == 0 {
                d.ack().await.is_ok()
            } else {
                d.nack_with_error(Duration::from_secs(60), "later")
                    .await
                    .is_ok()
            };
            (id, i % 2 == 0, ok)
        }));
    }
    for (i, d) in stale.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let id = d.message().id;
            let result = if i % 2 == 0 {
                d.ack().await.map_err(|e| e.error.kind())
            } else {
                d.nack(Duration::ZERO).await.map_err(|e| e.error.kind())
            };
            assert_eq!(result, Err(queue_core::ErrorKind::LeaseLost), "stale {id}");
            (id, false, false)
        }));
    }
    let mut acked = 0;
    let mut nacked = 0;
    for task in tasks {
        let (_, was_ack, ok) = task.await.expect("task");
        if ok {
            if was_ack {
                acked += 1;
            } else {
                nacked += 1;
            }
        }
    }
    assert_eq!((acked, nacked), (150, 150));
    let stats = f.backend.admin().stats(&f.queue).await.expect("stats");
    assert_eq!(
        (
            stats.acked_total,
            stats.delayed,
            stats.in_flight,
            stats.ready
        ),
        (150, 150, 0, 0),
        "{stats:?}"
    );
    // The nacked ones wait their delay with the error written in.
    f.cleanup().await;
}

#[tokio::test]
async fn a_worker_asking_more_than_max_receive_still_works() {
    let Some(f) = Fixture::new("big-prefetch", "").await else {
        return;
    };
    let producer = f.backend.producer(&f.queue).await.expect("producer");
    let jobs: Vec<Message> = (0..100u32)
        .map(|n| queue_core::Job::encode(&n, &queue_core::JobOptions::default()).expect("encode"))
        .collect();
    producer.send_batch(jobs).await.expect("send");
    // Prefetch above the backend's 1,000 per receive: clamped, not refused.
    let worker = queue_worker::Worker::builder(Arc::new(f.backend.clone()), f.queue.clone())
        .concurrency(3_000)
        .prefetch(5_000)
        .handler(|_job: queue_core::Job<u32>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .expect("start");
    let mut events = worker.subscribe();
    while worker.stats().completed < 100 {
        tokio::time::timeout(Duration::from_secs(15), events.recv())
            .await
            .expect("jobs complete")
            .expect("event");
    }
    worker.shutdown().await.expect("shutdown");
    f.cleanup().await;
}

#[tokio::test]
async fn one_stats_call_moves_a_bounded_number_of_due_jobs_and_still_counts_them() {
    let Some(f) = Fixture::new("stats-bound", "").await else {
        return;
    };
    const DUE: usize = 5_000;
    let producer = f.backend.producer(&f.queue).await.expect("producer");
    let soon = SystemTime::now() + Duration::from_secs(2);
    for chunk in (0..DUE).collect::<Vec<_>>().chunks(1000) {
        let batch = chunk
            .iter()
            .map(|n| Message::new(n.to_string()).with_run_at(soon))
            .collect();
        producer.send_batch(batch).await.expect("send");
    }
    // Until they are due, nothing moves.
    let keys = queue_redis::queue_keys(f.backend.prefix(), &f.queue);
    let mut admin = f.admin.clone();
    let ready_set = |admin: &mut redis::aio::MultiplexedConnection| {
        let key = keys[1].clone();
        let mut admin = admin.clone();
        async move {
            redis::cmd("ZCARD")
                .arg(key)
                .query_async::<u64>(&mut admin)
                .await
                .expect("ZCARD")
        }
    };
    assert_eq!(ready_set(&mut admin).await, 0, "all were sent delayed");
    if let Ok(left) = soon.duration_since(SystemTime::now()) {
        // Each batch's delay counts from when Redis ran it: a little later.
        tokio::time::sleep(left + Duration::from_millis(500)).await;
    }
    let stats = f.backend.admin().stats(&f.queue).await.expect("stats");
    assert_eq!(
        (stats.ready, stats.delayed),
        (DUE as u64, 0),
        "due jobs count as ready"
    );
    let moved = ready_set(&mut admin).await;
    assert!(
        moved <= 1000,
        "one stats call moved {moved} of {DUE} due jobs: its work is bounded"
    );
    // The workers' claims move the rest; every job arrives.
    let consumer = f.consumer().await;
    let mut received = 0;
    while received < DUE {
        let got = consumer
            .receive(1000, Duration::from_secs(5))
            .await
            .expect("receive");
        assert!(!got.is_empty(), "{received} of {DUE} received");
        received += got.len();
        consumer
            .ack_batch(got)
            .await
            .map_err(|e| e.len())
            .expect("ack");
    }
    f.cleanup().await;
}

/// Bytes Redis has sent to its clients since it started.
async fn redis_output_bytes(admin: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(admin)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_net_output_bytes")
}

#[tokio::test]
async fn dead_letter_previews_are_cut_inside_redis_after_every_header_field() {
    let Some(f) = Fixture::new("dead-preview", "").await else {
        return;
    };
    let producer = f.backend.producer(&f.queue).await.expect("producer");
    let message = Message::new(vec![b'p'; 50_000])
        .with_header("x-one", "1".repeat(300))
        .with_header("x-two", "2")
        .with_idempotency_key("key-1")
        .with_ordering_key("order-1")
        .with_trace(queue_core::trace::TraceContext::new_root())
        .with_ttl(Duration::from_secs(3600));
    let id = producer.send(message.clone()).await.expect("send");
    let consumer = f.consumer().await;
    let delivery = consumer
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive")
        .pop()
        .expect("the message");
    delivery
        .nack_with_error(Duration::ZERO, "first failure")
        .await
        .expect("nack");
    let delivery = consumer
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive")
        .pop()
        .expect("the message again");
    delivery
        .dead_letter(DeadLetterReason::Rejected("no".into()))
        .await
        .expect("dead letter");
    // Cut inside Redis: the reply holds the header and 10 bytes of the
    // payload, not the 50,000 (a misread header would fall back to
    // reading the letter whole). Other tests share the server's byte
    // count, so the least of a few reads is the one that counts.
    let mut admin = f.admin.clone();
    let query = queue_core::DeadLetterQuery::new(10).with_preview(10);
    let mut least = u64::MAX;
    let mut page = None;
    for _ in 0..5 {
        let before = redis_output_bytes(&mut admin).await;
        page = Some(
            f.backend
                .admin()
                .dead_letter_page(&f.queue, &query)
                .await
                .expect("a page"),
        );
        least = least.min(redis_output_bytes(&mut admin).await - before);
    }
    assert!(least < 20_000, "Redis sent {least} bytes for one preview");
    let page = page.expect("a page");
    let letter = &page.letters[0];
    assert_eq!(letter.message.id, id);
    assert_eq!(letter.message.payload.as_ref(), b"pppppppppp");
    assert_eq!(letter.payload_len, 50_000);
    assert_eq!(
        letter.message.headers.get("x-one").map(String::len),
        Some(300)
    );
    assert_eq!(letter.message.idempotency_key.as_deref(), Some("key-1"));
    assert_eq!(letter.message.ordering_key.as_deref(), Some("order-1"));
    assert!(letter.message.trace.is_some() && letter.message.expires_at.is_some());
    assert_eq!(letter.message.last_error.as_deref(), Some("first failure"));
    f.cleanup().await;
}

#[tokio::test]
async fn a_preview_drops_a_header_block_over_64_kib() {
    let Some(f) = Fixture::new("dead-big-headers", "").await else {
        return;
    };
    let producer = f.backend.producer(&f.queue).await.expect("producer");
    let message =
        Message::new("payload after big headers").with_header("x-big", "h".repeat(100_000));
    let id = producer.send(message).await.expect("send");
    let consumer = f.consumer().await;
    consumer
        .receive(1, Duration::from_secs(5))
        .await
        .expect("receive")
        .pop()
        .expect("the message")
        .dead_letter(DeadLetterReason::Rejected("no".into()))
        .await
        .expect("dead letter");
    let admin = f.backend.admin();
    let page = admin
        .dead_letter_page(
            &f.queue,
            &queue_core::DeadLetterQuery::new(10).with_preview(7),
        )
        .await
        .expect("a page");
    let letter = &page.letters[0];
    assert_eq!(letter.message.id, id);
    assert_eq!(letter.message.payload.as_ref(), b"payload");
    assert!(
        letter.message.headers.get("x-big").is_none(),
        "headers dropped"
    );
    let whole = admin.dead_letters(&f.queue, 10).await.expect("whole");
    assert_eq!(
        whole[0].message.headers.get("x-big").map(String::len),
        Some(100_000)
    );
    f.cleanup().await;
}
