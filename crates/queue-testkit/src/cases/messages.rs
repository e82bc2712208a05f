//! Messages in and out: payloads and headers intact, batches, empty
//! receives, acks, isolated queues, idempotency keys, competing consumers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use queue_core::{ErrorKind, Message, MessageId};

use super::{assert_unsupported, receive_one, send, send_numbered, LEASE, QUIET, SOON};
use crate::harness::{receive_n, Ctx};

/// Case 1: payload bytes and headers arrive exactly as sent; attempt 1.
pub async fn send_receive_ack(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let sent = vec![
        Message::new(Bytes::new()),
        Message::new(vec![0u8, 0xff, 0xfe, 0x00, 0x80, 0x7f])
            .with_header("binary", "yes")
            .with_header("empty", ""),
        Message::new("grüße ✓ 漢字")
            .with_header("note", "välue ✓ 漢字")
            .with_ordering_key("customer-7"),
    ];
    let mut by_id = HashMap::new();
    for message in &sent {
        let id = producer.send(message.clone()).await.expect("send");
        assert_eq!(id, message.id, "send returns the message's id");
        by_id.insert(id, message.clone());
    }
    let consumer = ctx.consumer(&queue, None).await;
    let deliveries = receive_n(&*consumer, sent.len(), SOON).await;
    assert_eq!(deliveries.len(), sent.len(), "every message arrives");
    for delivery in deliveries {
        let original = by_id
            .remove(&delivery.message().id)
            .expect("known id, delivered once");
        assert_eq!(
            delivery.payload(),
            &original.payload,
            "payload bytes intact"
        );
        assert_eq!(
            delivery.message().headers,
            original.headers,
            "headers intact"
        );
        assert_eq!(
            delivery.message().ordering_key,
            original.ordering_key,
            "ordering key intact"
        );
        assert_eq!(delivery.attempt(), 1);
        assert_eq!(delivery.queue(), &queue);
        assert!(delivery.lease_deadline() > SystemTime::now());
        delivery.ack().await.expect("ack");
    }
    let rest = consumer
        .receive(10, Duration::from_millis(300))
        .await
        .expect("receive");
    assert!(rest.is_empty(), "acked messages do not come back");
}

/// Case 2: 1,000 messages by `send_batch`, each received once.
pub async fn batch_round_trip(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let messages: Vec<Message> = (0..1000u32)
        .map(|i| Message::new(i.to_be_bytes().to_vec()))
        .collect();
    let expected: HashSet<MessageId> = messages.iter().map(|m| m.id).collect();
    let mut ids = Vec::new();
    for chunk in messages.chunks(ctx.caps().max_batch.max(1)) {
        ids.extend(
            producer
                .send_batch(chunk.to_vec())
                .await
                .expect("send_batch"),
        );
    }
    assert_eq!(ids.len(), 1000);
    let sent: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, sent, "ids come back in send order");
    let consumer = ctx.consumer(&queue, None).await;
    let deliveries = receive_n(&*consumer, 1000, Duration::from_secs(60)).await;
    let mut seen = HashSet::new();
    for delivery in &deliveries {
        assert!(
            seen.insert(delivery.message().id),
            "each message received once"
        );
    }
    // Settle half one by one and half in one batch call.
    let mut deliveries = deliveries;
    let batch = deliveries.split_off(deliveries.len() / 2);
    for delivery in deliveries {
        delivery.ack().await.expect("ack");
    }
    consumer
        .ack_batch(batch)
        .await
        .map_err(|failed| failed[0].error.to_string())
        .expect("ack_batch");
    let rest = consumer
        .receive(10, Duration::from_millis(500))
        .await
        .expect("receive");
    assert!(rest.is_empty(), "acked messages came back: {rest:?}");
    if ctx.caps().exact_stats() {
        let stats = ctx.backend().admin().stats(&queue).await.expect("stats");
        assert_eq!(
            (stats.acked_total, stats.in_flight, stats.ready),
            (1000, 0, 0),
            "{stats:?}"
        );
    }
    assert_eq!(seen, expected, "all 1,000 received");
}

/// Case 3: an empty queue returns an empty batch no later than the wait.
pub async fn receive_empty_respects_wait(ctx: &Ctx) {
    let queue = ctx.queue();
    let consumer = ctx.consumer(&queue, None).await;
    let wait = Duration::from_secs(1);
    let started = Instant::now();
    let batch = consumer.receive(10, wait).await.expect("receive");
    let elapsed = started.elapsed();
    assert!(batch.is_empty());
    assert!(
        elapsed <= wait + Duration::from_secs(2),
        "returned after {elapsed:?}, wait was {wait:?}"
    );
    // Returning at once would make every caller's loop a busy spin.
    assert!(
        elapsed >= wait / 2,
        "returned after only {elapsed:?}: it did not wait"
    );
    let started = Instant::now();
    let batch = consumer
        .receive(10, Duration::ZERO)
        .await
        .expect("receive without waiting");
    assert!(batch.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "zero wait took {:?}",
        started.elapsed()
    );
}

/// Case 4: after ack, no redelivery even after the lease would expire.
pub async fn ack_is_final(ctx: &Ctx) {
    let queue = ctx.queue();
    send(ctx, &queue, Message::new("once")).await;
    let consumer = ctx.consumer(&queue, Some(LEASE)).await;
    let deliveries = receive_n(&*consumer, 1, SOON).await;
    assert_eq!(deliveries.len(), 1);
    for d in deliveries {
        d.ack().await.expect("ack");
    }
    let again = consumer.receive(10, LEASE + QUIET).await.expect("receive");
    assert!(again.is_empty(), "an acked message came back: {again:?}");
    if ctx.caps().exact_stats() {
        let stats = ctx.backend().admin().stats(&queue).await.expect("stats");
        assert_eq!(
            (stats.ready, stats.in_flight, stats.acked_total),
            (0, 0, 1),
            "{stats:?}"
        );
    }
}

/// Case 10: two queues never see each other's messages.
pub async fn queues_are_isolated(ctx: &Ctx) {
    let a = ctx.queue();
    let b = ctx.queue();
    send(ctx, &a, Message::new("for a")).await;
    send(ctx, &b, Message::new("for b")).await;
    for (queue, expected) in [(&b, "for b"), (&a, "for a")] {
        let consumer = ctx.consumer(queue, None).await;
        let got = receive_n(&*consumer, 1, SOON).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload().as_ref(), expected.as_bytes());
        for d in got {
            d.ack().await.expect("ack");
        }
        let rest = consumer
            .receive(10, Duration::from_millis(500))
            .await
            .expect("receive");
        assert!(rest.is_empty(), "{queue} saw another queue's message");
    }
}

/// Case 20: two sends with the same key inside the window deliver once.
pub async fn idempotency_key(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let first = producer
        .send(Message::new("first").with_idempotency_key("order-42"))
        .await;
    if !ctx.caps().idempotency.is_available() {
        return assert_unsupported(first, "idempotency keys");
    }
    first.expect("send");
    producer
        .send(Message::new("second").with_idempotency_key("order-42"))
        .await
        .expect("duplicate send is not an error");
    producer
        .send(Message::new("other").with_idempotency_key("order-43"))
        .await
        .expect("send");
    let consumer = ctx.consumer(&queue, None).await;
    let got = receive_n(&*consumer, 3, Duration::from_secs(3)).await;
    let payloads: Vec<Bytes> = got.iter().map(|d| d.payload().clone()).collect();
    for d in got {
        d.ack().await.expect("ack");
    }
    assert_eq!(payloads, vec![Bytes::from("first"), Bytes::from("other")]);
}

/// Case 24: 4 consumers, 10,000 messages (fewer on a slow stand-in
/// server: `Harness::competing_messages`): each acked exactly once.
pub async fn competing_consumers(ctx: &Ctx) {
    let queue = ctx.queue();
    let total = ctx.harness().competing_messages();
    let producer = ctx.producer(&queue).await;
    let messages: Vec<Message> = (0..total as u32)
        .map(|i| Message::new(i.to_be_bytes().to_vec()))
        .collect();
    for chunk in messages.chunks(ctx.caps().max_batch.clamp(1, 500)) {
        producer
            .send_batch(chunk.to_vec())
            .await
            .expect("send_batch");
    }
    let seen: Arc<Mutex<HashMap<MessageId, usize>>> = Arc::default();
    let acked = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    // Where a join reassigns work among all consumers (a group rebalance),
    // they join together before any takes work, so no rebalance lands in
    // the middle of the run.
    let mut consumers = Vec::new();
    if ctx.caps().rebalances_on_join {
        let joins = (0..4).map(|_| ctx.consumer(&queue, None));
        consumers = futures_util::future::join_all(joins).await;
    }
    for _ in 0..4 {
        let consumer = match consumers.pop() {
            Some(consumer) => consumer,
            None => ctx.consumer(&queue, None).await,
        };
        let seen = seen.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while acked.load(AtomicOrdering::SeqCst) < total && Instant::now() < deadline {
                let batch = consumer
                    .receive(100, Duration::from_millis(500))
                    .await
                    .expect("receive");
                for d in batch {
                    *seen
                        .lock()
                        .expect("lock")
                        .entry(d.message().id)
                        .or_default() += 1;
                    d.ack().await.expect("ack");
                    acked.fetch_add(1, AtomicOrdering::SeqCst);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("consumer task");
    }
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), total, "none lost");
    let duplicates = seen.values().filter(|&&n| n > 1).count();
    assert_eq!(duplicates, 0, "no duplicates in normal operation");
}

/// Case 48: `ack_and_receive` settles the finished deliveries and takes the
/// next ones in one call; a stale ack among them comes back typed, and the
/// others still land.
pub async fn ack_and_receive(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let ids = send_numbered(&*producer, "f", 3).await;
    // Three leases' worth: on a broker that hands out records fetch by
    // fetch (Kafka), the second may come a second after the first, and
    // both must still be held when they are acked.
    let consumer = ctx.consumer(&queue, Some(LEASE * 3)).await;
    let first = receive_n(&*consumer, 2, SOON).await;
    assert_eq!(first.len(), 2);
    // Where order is kept per partition or key, any two may come first.
    let taken: HashSet<MessageId> = first.iter().map(|d| d.message().id).collect();
    let left = ids
        .iter()
        .copied()
        .find(|id| !taken.contains(id))
        .expect("two of three taken");
    let done = consumer.ack_and_receive(first, 10, SOON).await;
    done.acked.expect("both acks land");
    let mut next = done.received.expect("the next one arrives with the acks");
    if next.is_empty() {
        next = receive_n(&*consumer, 1, SOON).await;
    }
    assert_eq!(next.len(), 1);
    let stale = next.pop().expect("one");
    assert_eq!(stale.message().id, left, "the one not yet taken");
    // Its lease runs out and it is delivered again.
    let current = receive_one(&*consumer, "redelivery after the lease").await;
    assert_eq!(current.message().id, left);
    let done = consumer
        .ack_and_receive(vec![stale, current], 10, Duration::from_millis(200))
        .await;
    if ctx.caps().detects_lease_lost() {
        let failed = done.acked.expect_err("the stale ack fails");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].error.kind(), ErrorKind::LeaseLost);
        assert_eq!(
            failed[0].delivery.attempt(),
            1,
            "the stale delivery comes back"
        );
    }
    assert!(
        done.received.expect("receive").is_empty(),
        "nothing else is queued"
    );
    if ctx.caps().exact_stats() {
        let stats = ctx.backend().admin().stats(&queue).await.expect("stats");
        assert_eq!((stats.acked_total, stats.depth()), (3, 0), "{stats:?}");
    }
}
