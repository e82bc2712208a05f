//! The conformance cases of `CONFORMANCE.md`, one function each.
//!
//! Timing assertions are generous for a loaded 2-core machine, but "not
//! before" is always strict.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use queue_core::error::MAX_ERROR_TEXT;
use queue_core::trace::{self, TraceContext};
use queue_core::{
    envelope, Backend, BackoffPolicy, Consumer, DeadLetterReason, Delivery, ErrorKind, Job,
    JobOptions, JobStatus, JobStore, MemoryJobStore, Message, MessageId, Ordering, Priority,
    Producer, QueueName, QueueOptions, RedeliveryCount, Redrive, Result, Totals,
};
use queue_worker::{EventStream, JobScheduler, Worker, WorkerHandle};

use crate::harness::{receive_n, Ctx};
use crate::proxy::{FaultProxy, Mode as ProxyMode};

/// Generous upper bound for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(15);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(1500);
/// The short lease used by lease cases.
const LEASE: Duration = Duration::from_secs(1);

fn assert_kind<T: std::fmt::Debug>(result: Result<T>, kind: ErrorKind, context: &str) -> String {
    match result {
        Ok(v) => panic!("{context}: expected a {kind} error, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{context}: wrong kind in {e}");
            e.to_string()
        }
    }
}

/// Where the backend lacks a feature, the call must say so with a typed error.
fn assert_unsupported<T: std::fmt::Debug>(result: Result<T>, feature: &str) {
    let text = assert_kind(result, ErrorKind::Unsupported, feature);
    eprintln!("{feature}: unsupported as the capability table says ({text})");
}

async fn send(ctx: &Ctx, queue: &QueueName, message: Message) -> MessageId {
    ctx.producer(queue)
        .await
        .send(message)
        .await
        .unwrap_or_else(|e| panic!("{}: send: {e}", ctx.case()))
}

/// Send `count` messages with payloads `"{prefix} {i}"`, one `send` each,
/// and return their ids in order.
async fn send_numbered(producer: &dyn Producer, prefix: &str, count: usize) -> Vec<MessageId> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let message = Message::new(format!("{prefix} {i}"));
        ids.push(producer.send(message).await.expect("send"));
    }
    ids
}

/// The dead letters of `queue` (up to 10), oldest first.
async fn dead_letters(ctx: &Ctx, queue: &QueueName) -> Vec<queue_core::DeadLetter> {
    ctx.backend()
        .admin()
        .dead_letters(queue, 10)
        .await
        .expect("dead letters")
}

/// Receive one delivery within [`SOON`], or fail naming `what` was awaited.
async fn receive_one(consumer: &dyn Consumer, what: &str) -> Delivery {
    receive_n(consumer, 1, SOON)
        .await
        .pop()
        .unwrap_or_else(|| panic!("no {what} within {SOON:?}"))
}

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

/// Case 5: nack without delay brings the message back with attempt 2.
pub async fn nack_redelivers(ctx: &Ctx) {
    let queue = ctx.queue();
    let id = send(ctx, &queue, Message::new("retry me")).await;
    let consumer = ctx.consumer(&queue, None).await;
    let first = receive_one(&*consumer, "first delivery").await;
    assert_eq!(first.attempt(), 1);
    first.nack(Duration::ZERO).await.expect("nack");
    let second = receive_one(&*consumer, "redelivery").await;
    assert_eq!(second.message().id, id);
    assert_eq!(second.attempt(), 2);
    assert_eq!(second.payload().as_ref(), b"retry me");
    second.ack().await.expect("ack");
}

/// Case 6: after nack with delay, not visible before the delay, visible after.
pub async fn nack_with_delay(ctx: &Ctx) {
    let queue = ctx.queue();
    send(ctx, &queue, Message::new("later")).await;
    let consumer = ctx.consumer(&queue, None).await;
    let first = receive_one(&*consumer, "first delivery").await;
    let delay = Duration::from_millis(1500);
    let nacked_at = Instant::now();
    first.nack(delay).await.expect("nack with delay");
    let early = consumer
        .receive(10, Duration::from_millis(500))
        .await
        .expect("receive");
    assert!(
        early.is_empty(),
        "visible {:?} after a nack delayed {delay:?}",
        nacked_at.elapsed()
    );
    let later = receive_n(&*consumer, 1, SOON + delay)
        .await
        .pop()
        .expect("redelivery after the delay");
    let elapsed = nacked_at.elapsed();
    assert!(
        elapsed >= delay,
        "redelivered after {elapsed:?}, before the delay of {delay:?}"
    );
    assert_eq!(later.attempt(), 2);
    later.ack().await.expect("ack");
}

/// Case 7: an unacked delivery returns after its lease with attempt + 1.
pub async fn lease_expiry_redelivers(ctx: &Ctx) {
    let queue = ctx.queue();
    let id = send(ctx, &queue, Message::new("slow")).await;
    let consumer = ctx.consumer(&queue, Some(LEASE)).await;
    // The lease starts when the delivery is handed out, after this instant:
    // so the redelivery comes at least a full lease after it.
    let before_receive = Instant::now();
    let held = receive_one(&*consumer, "first delivery").await;
    let again = receive_one(&*consumer, "redelivery after the lease").await;
    let elapsed = before_receive.elapsed();
    assert_eq!(again.message().id, id);
    assert_eq!(again.attempt(), 2);
    assert!(
        elapsed >= LEASE,
        "redelivered {elapsed:?} into a {LEASE:?} lease"
    );
    again.ack().await.expect("ack");
    drop(held);
}

/// Case 8: extending keeps the message invisible past the original deadline.
pub async fn extend_lease(ctx: &Ctx) {
    let queue = ctx.queue();
    send(ctx, &queue, Message::new("long job")).await;
    let consumer = ctx.consumer(&queue, Some(LEASE)).await;
    let delivery = receive_one(&*consumer, "delivery").await;
    let original_deadline = delivery.lease_deadline();
    let extended = delivery.extend(Duration::from_secs(5)).await;
    if !ctx.caps().lease_extension.is_available() {
        assert_unsupported(extended.map_err(|e| e.error).map(|_| ()), "lease extension");
        return;
    }
    let delivery = extended.expect("extend");
    assert!(
        delivery.lease_deadline() > original_deadline,
        "deadline moved"
    );
    let during = consumer.receive(10, LEASE + QUIET).await.expect("receive");
    assert!(
        during.is_empty(),
        "visible while the extended lease holds: {during:?}"
    );
    delivery.ack().await.expect("ack within the extended lease");
}

/// Case 9: acking after the lease was lost and the message re-delivered
/// returns `LeaseLost` (where the backend can tell) and never removes the
/// other holder's delivery.
pub async fn ack_after_lease_lost(ctx: &Ctx) {
    let queue = ctx.queue();
    let id = send(ctx, &queue, Message::new("contended")).await;
    let consumer = ctx.consumer(&queue, Some(LEASE)).await;
    let stale = receive_one(&*consumer, "first delivery").await;
    let current = receive_one(&*consumer, "redelivery").await;
    assert_eq!(current.attempt(), 2);
    let stale_ack = stale.ack().await;
    if ctx.caps().detects_lease_lost() {
        let err = stale_ack.expect_err("acking a lost lease must fail");
        assert_eq!(err.error.kind(), ErrorKind::LeaseLost, "{}", err.error);
    }
    // The current holder still owns the message: give it back and see it again.
    current
        .nack(Duration::ZERO)
        .await
        .expect("the current holder can still settle");
    let third = receive_one(&*consumer, "not removed by the stale ack").await;
    assert_eq!(third.message().id, id);
    assert_eq!(third.attempt(), 3);
    // A batch ack holding a lost lease hands that delivery back, typed.
    let stale = third;
    let current = receive_one(&*consumer, "redelivery after the lease").await;
    assert_eq!(current.attempt(), 4);
    let result = consumer.ack_batch(vec![stale]).await;
    if ctx.caps().detects_lease_lost() {
        let failed = result.expect_err("a batch with a lost lease fails for that delivery");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].error.kind(), ErrorKind::LeaseLost);
        assert_eq!(
            failed[0].delivery.attempt(),
            3,
            "the failed delivery comes back"
        );
    }
    current.ack().await.expect("the current holder acks");
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

/// Shared body of the delay cases: `message` must not arrive before `not_before`.
async fn assert_held_until(ctx: &Ctx, queue: &QueueName, not_before: SystemTime) {
    let consumer = ctx.consumer(queue, None).await;
    let early = consumer
        .receive(10, Duration::from_millis(500))
        .await
        .expect("receive");
    assert!(
        early.is_empty() || SystemTime::now() >= not_before,
        "a delayed message arrived before its time"
    );
    let wait = not_before
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + SOON;
    let got = if early.is_empty() {
        receive_n(&*consumer, 1, wait).await
    } else {
        early
    };
    let arrived = SystemTime::now();
    assert_eq!(got.len(), 1, "the delayed message arrives after its time");
    assert!(
        arrived >= not_before,
        "arrived {:?} early",
        not_before.duration_since(arrived).unwrap_or_default()
    );
    for d in got {
        d.ack().await.expect("ack");
    }
}

/// Case 11: a message sent with delay D is not visible before D.
pub async fn delayed_send(ctx: &Ctx) {
    let queue = ctx.queue();
    let delay = Duration::from_millis(1500);
    let message = Message::new("delayed").with_delay(delay);
    let not_before = message.not_before.expect("delay sets not_before");
    let result = ctx.producer(&queue).await.send(message).await;
    if !ctx.caps().delay.is_available() {
        return assert_unsupported(result, "delayed delivery");
    }
    result.expect("send delayed");
    assert_held_until(ctx, &queue, not_before).await;
}

/// Case 12: the same with an absolute time.
pub async fn scheduled_at(ctx: &Ctx) {
    let queue = ctx.queue();
    let at = SystemTime::now() + Duration::from_millis(1500);
    let result = ctx
        .producer(&queue)
        .await
        .send(Message::new("scheduled").with_run_at(at))
        .await;
    if !ctx.caps().delay.is_available() {
        return assert_unsupported(result, "scheduled delivery");
    }
    result.expect("send scheduled");
    assert_held_until(ctx, &queue, at).await;
}

/// Case 13: a delay longer than the backend's native maximum still holds.
pub async fn delay_beyond_native_limit(ctx: &Ctx) {
    if !ctx.caps().delay.is_available() {
        let queue = ctx.queue();
        let result = ctx
            .producer(&queue)
            .await
            .send(Message::new("x").with_delay(Duration::from_secs(1)))
            .await;
        return assert_unsupported(result, "delayed delivery");
    }
    let limit = Duration::from_secs(1);
    let backend: Arc<dyn Backend> = match ctx.harness().connect_with_native_delay_limit(limit).await
    {
        Some(backend) => backend.expect("connect with a lowered native delay limit"),
        None => {
            match ctx.caps().max_native_delay {
                None => eprintln!("no native delay limit: the case checks a long delay holds"),
                Some(max) => eprintln!(
                    "native delay limit {max:?} cannot be lowered here; checking a delay within it"
                ),
            }
            ctx.backend().clone()
        }
    };
    let queue = ctx.queue_on(&backend);
    let delay = Duration::from_millis(2500);
    let message = Message::new("far future").with_delay(delay);
    let not_before = message.not_before.expect("delay sets not_before");
    backend
        .producer(&queue)
        .await
        .expect("producer")
        .send(message)
        .await
        .expect("send");
    let consumer = backend
        .consumer(&queue, Default::default())
        .await
        .expect("consumer");
    let early = consumer
        .receive(10, Duration::from_millis(1500))
        .await
        .expect("receive");
    assert!(
        early.is_empty() || SystemTime::now() >= not_before,
        "arrived before its delay"
    );
    let got = if early.is_empty() {
        receive_n(&*consumer, 1, SOON).await
    } else {
        early
    };
    assert_eq!(
        got.len(),
        1,
        "the message arrives after a delay beyond the native limit"
    );
    assert!(SystemTime::now() >= not_before);
    for d in got {
        assert_eq!(d.payload().as_ref(), b"far future");
        d.ack().await.expect("ack");
    }
}

/// Case 14: a message whose TTL passes before pickup is never handed out;
/// it is counted and dead-lettered with reason `expired`.
pub async fn ttl_expiry(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let ttl = Duration::from_secs(1);
    let result = producer
        .send(Message::new("short-lived").with_ttl(ttl))
        .await;
    if !ctx.caps().ttl.is_available() {
        return assert_unsupported(result, "message TTL");
    }
    let expiring = result.expect("send with ttl");
    let keeper = producer.send(Message::new("keeper")).await.expect("send");
    // Time passing is the event under test: let the TTL run out before any consumer looks.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let consumer = ctx.consumer(&queue, None).await;
    let got = receive_n(&*consumer, 2, Duration::from_secs(3)).await;
    let ids: Vec<MessageId> = got.iter().map(|d| d.message().id).collect();
    assert!(
        !ids.contains(&expiring),
        "an expired message was handed out"
    );
    assert_eq!(ids, vec![keeper], "the unexpired message still arrives");
    for d in got {
        d.ack().await.expect("ack");
    }
    let dead = dead_letters(ctx, &queue).await;
    let entry = dead
        .iter()
        .find(|d| d.message.id == expiring)
        .expect("expired message is dead-lettered");
    assert_eq!(entry.reason, DeadLetterReason::Expired);
    if ctx.caps().totals == Totals::Queue {
        let stats = ctx.backend().admin().stats(&queue).await.expect("stats");
        assert_eq!(stats.expired_total, 1, "{stats:?}");
    } else {
        eprintln!("totals are counted per process: the broker expired the message unseen");
    }
}

/// Case 15: all four priorities queued before a consumer starts come out
/// Urgent, High, Normal, Low.
pub async fn priority_order(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    if !ctx.caps().priority.is_available() {
        let result = producer
            .send(Message::new("x").with_priority(Priority::High))
            .await;
        return assert_unsupported(result, "priority");
    }
    for _round in 0..2 {
        for priority in [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Urgent,
        ] {
            producer
                .send(Message::new(priority.as_str()).with_priority(priority))
                .await
                .expect("send");
        }
    }
    let consumer = ctx.consumer(&queue, None).await;
    let mut order = Vec::new();
    while order.len() < 8 {
        let batch = consumer.receive(1, SOON).await.expect("receive");
        assert!(!batch.is_empty(), "all 8 arrive; got {order:?}");
        for d in batch {
            order.push(d.message().priority);
            d.ack().await.expect("ack");
        }
    }
    use Priority::*;
    assert_eq!(
        order,
        [Urgent, Urgent, High, High, Normal, Normal, Low, Low]
    );
}

/// Case 16: where the table claims ordering, messages come in send order:
/// all of them (FIFO per priority), or those of each ordering key (FIFO per
/// partition or per key).
pub async fn fifo_within_priority(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let count = 200u32;
    let keys = ["alpha", "beta", "gamma", "delta"];
    for i in 0..count {
        let key = keys[i as usize % keys.len()];
        producer
            .send(Message::new(i.to_be_bytes().to_vec()).with_ordering_key(key))
            .await
            .expect("send");
    }
    let consumer = ctx.consumer(&queue, None).await;
    // Each batch is acked before the next receive: a broker that hands
    // out one key's messages only while none of that key is in flight
    // (SQS FIFO message groups) needs it, and the order is the receive order.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut order: Vec<(String, u32)> = Vec::new();
    while order.len() < count as usize && Instant::now() < deadline {
        let max = (count as usize - order.len()).min(100);
        let got = consumer
            .receive(max, Duration::from_secs(5))
            .await
            .expect("receive");
        for d in &got {
            let key = d
                .message()
                .ordering_key
                .as_deref()
                .expect("the ordering key travels")
                .to_owned();
            let n = u32::from_be_bytes(d.payload().as_ref().try_into().expect("4-byte payload"));
            order.push((key, n));
        }
        if let Err(failed) = consumer.ack_batch(got).await {
            panic!("ack_batch: {:?}", failed.first().map(|f| &f.error));
        }
    }
    assert_eq!(order.len(), count as usize, "all arrive");
    for (key, n) in &order {
        assert_eq!(
            key,
            keys[*n as usize % keys.len()],
            "message {n} kept its key"
        );
    }
    match ctx.caps().ordering {
        Ordering::None => {
            eprintln!("the table claims no ordering: only completeness is checked");
            let unique: HashSet<u32> = order.iter().map(|(_, n)| *n).collect();
            assert_eq!(unique.len(), count as usize);
        }
        Ordering::FifoPerPriority => {
            let all: Vec<u32> = order.iter().map(|(_, n)| *n).collect();
            assert_eq!(all, (0..count).collect::<Vec<_>>(), "send order kept");
        }
        _ => {
            for key in keys {
                let of_key: Vec<u32> = order
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, n)| *n)
                    .collect();
                let mut sorted = of_key.clone();
                sorted.sort_unstable();
                assert_eq!(of_key, sorted, "send order kept within key {key}");
            }
        }
    }
}

/// Case 17: after the last attempt the message sits in the dead-letter queue
/// with its attempts, last error and reason.
pub async fn max_attempts_dead_letters(ctx: &Ctx) {
    let queue = ctx.queue();
    let id = send(ctx, &queue, Message::new("doomed").with_max_attempts(2)).await;
    let consumer = ctx.consumer(&queue, None).await;
    for attempt in 1..=2u32 {
        let d = receive_one(&*consumer, "delivery").await;
        assert_eq!(d.attempt(), attempt);
        if attempt == 2 {
            assert_eq!(
                d.message().last_error.as_deref(),
                Some("boom 1"),
                "last error travels"
            );
        }
        d.nack_with_error(Duration::ZERO, format!("boom {attempt}"))
            .await
            .expect("nack");
    }
    let rest = consumer.receive(10, QUIET).await.expect("receive");
    assert!(rest.is_empty(), "no delivery after the last attempt");
    let dead = dead_letters(ctx, &queue).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let entry = &dead[0];
    assert_eq!(entry.message.id, id);
    assert_eq!(entry.reason, DeadLetterReason::MaxAttempts);
    assert_eq!(entry.attempts, 2);
    assert_eq!(entry.last_error.as_deref(), Some("boom 2"));
    assert_eq!(entry.message.payload.as_ref(), b"doomed");
}

/// Case 18: `dead_letter(reason)` goes straight there.
pub async fn dead_letter_explicit(ctx: &Ctx) {
    let queue = ctx.queue();
    let id = send(ctx, &queue, Message::new("poison")).await;
    let consumer = ctx.consumer(&queue, None).await;
    let d = receive_one(&*consumer, "delivery").await;
    d.dead_letter(DeadLetterReason::Rejected("bad data".into()))
        .await
        .expect("dead_letter");
    let dead = dead_letters(ctx, &queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, id);
    assert_eq!(
        dead[0].reason,
        DeadLetterReason::Rejected("bad data".into())
    );
    assert_eq!(dead[0].attempts, 1);
    let rest = consumer
        .receive(10, Duration::from_millis(500))
        .await
        .expect("receive");
    assert!(rest.is_empty());
}

/// Case 19: dead letters can be listed, inspected and moved back, then are processed normally.
pub async fn redrive(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let ids = send_numbered(&*producer, "dead", 3).await;
    let consumer = ctx.consumer(&queue, None).await;
    for d in receive_n(&*consumer, 3, SOON).await {
        d.dead_letter(DeadLetterReason::Rejected("to redrive".into()))
            .await
            .expect("dead_letter");
    }
    let admin = ctx.backend().admin();
    let dead = admin.dead_letters(&queue, 10).await.expect("list");
    assert_eq!(dead.len(), 3);
    if !ctx.caps().redrive.is_available() {
        return assert_unsupported(admin.redrive(&queue, Redrive::All).await, "redrive");
    }
    let moved = admin
        .redrive(&queue, Redrive::Ids(vec![ids[1]]))
        .await
        .expect("redrive one");
    assert_eq!(moved, 1);
    let back = receive_one(&*consumer, "redriven message").await;
    assert_eq!(back.message().id, ids[1]);
    assert_eq!(back.attempt(), 1, "redrive starts a fresh attempt count");
    back.ack().await.expect("ack");
    assert_eq!(
        admin
            .redrive(&queue, Redrive::All)
            .await
            .expect("redrive all"),
        2
    );
    let rest = receive_n(&*consumer, 2, SOON).await;
    let rest_ids: HashSet<MessageId> = rest.iter().map(|d| d.message().id).collect();
    assert_eq!(rest_ids, HashSet::from([ids[0], ids[2]]));
    for d in rest {
        d.ack().await.expect("ack");
    }
    assert!(admin
        .dead_letters(&queue, 10)
        .await
        .expect("list")
        .is_empty());
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

/// Case 21: ready, delayed, in-flight and dead counts match a known sequence.
pub async fn stats_are_exact(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    send_numbered(&*producer, "ready", 5).await;
    let delayed = ctx.caps().delay.is_available();
    if delayed {
        for i in 0..2 {
            producer
                .send(Message::new(format!("delayed {i}")).with_delay(Duration::from_secs(120)))
                .await
                .expect("send delayed");
        }
    }
    let consumer = ctx.consumer(&queue, None).await;
    let mut taken = receive_n(&*consumer, 2, SOON).await;
    assert_eq!(taken.len(), 2);
    let buried = taken.pop().expect("two taken");
    buried
        .dead_letter(DeadLetterReason::Rejected("stats".into()))
        .await
        .expect("dead_letter");
    let expected = (3, if delayed { 2 } else { 0 }, 1, 1);
    let admin = ctx.backend().admin();
    let stats = admin.stats(&queue).await.expect("stats");
    let got = (stats.ready, stats.delayed, stats.in_flight, stats.dead);
    if ctx.caps().exact_stats() {
        assert_eq!(got, expected, "{stats:?}");
        if ctx.caps().totals == Totals::Queue {
            assert_eq!(stats.enqueued_total, 5 + expected.1);
            assert_eq!(stats.dead_lettered_total, 1);
        }
    } else {
        // Lagging and approximate counts converge; look again a few times
        // before failing.
        let mut got = got;
        for _ in 0..20 {
            if got == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let s = admin.stats(&queue).await.expect("stats");
            got = (s.ready, s.delayed, s.in_flight, s.dead);
        }
        assert_eq!(got, expected, "approximate stats did not converge");
    }
    drop(taken);
}

/// Case 22: purge empties a queue and touches no other; a delivery in
/// flight is removed too where the table says so, and otherwise stays
/// until settled.
pub async fn purge(ctx: &Ctx) {
    let a = ctx.queue();
    let b = ctx.queue();
    let pa = ctx.producer(&a).await;
    let pb = ctx.producer(&b).await;
    send_numbered(&*pa, "a", 3).await;
    send_numbered(&*pb, "b", 2).await;
    let admin = ctx.backend().admin();
    let ca = ctx.consumer(&a, Some(LEASE)).await;
    let held = receive_one(&*ca, "a delivery held over the purge").await;
    let purged = admin.purge(&a).await;
    if !ctx.caps().purge.is_available() {
        drop(held);
        return assert_unsupported(purged, "purge");
    }
    purged.expect("purge");
    let settled = held.ack().await;
    if ctx.caps().purge_in_flight {
        if ctx.caps().detects_lease_lost() {
            let err = settled.expect_err("the purge took the in-flight message");
            assert_eq!(err.error.kind(), ErrorKind::LeaseLost, "{}", err.error);
        }
    } else {
        settled.expect("an in-flight message outlives the purge and settles");
    }
    assert!(
        ca.receive(10, LEASE + Duration::from_millis(500))
            .await
            .expect("receive")
            .is_empty(),
        "purged queue is empty"
    );
    let cb = ctx.consumer(&b, None).await;
    let got = receive_n(&*cb, 2, SOON).await;
    assert_eq!(got.len(), 2, "the other queue is untouched");
    for d in got {
        d.ack().await.expect("ack");
    }
    if ctx.caps().exact_stats() {
        assert_eq!(admin.stats(&a).await.expect("stats").depth(), 0);
    }
}

/// Case 23: healthy against a live broker; unhealthy with a Connection error
/// naming the address against a closed port, within a bounded time.
pub async fn health(ctx: &Ctx) {
    let status = ctx.backend().admin().health().await;
    assert!(status.healthy, "live backend reports {status:?}");
    assert_eq!(status.backend, ctx.caps().backend);
    if let Some(url) = ctx.harness().unreachable_url() {
        let started = Instant::now();
        let connected = tokio::time::timeout(Duration::from_secs(20), ctx.harness().connect(&url))
            .await
            .expect("connect to a closed port returns within 20s");
        let address = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', '?']).next())
            .unwrap_or_default()
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_owned();
        match connected {
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
                assert!(
                    e.to_string().contains(&address),
                    "{e} does not name {address}"
                );
            }
            Ok(backend) => {
                let status =
                    tokio::time::timeout(Duration::from_secs(20), backend.admin().health())
                        .await
                        .expect("health returns within 20s");
                assert!(!status.healthy);
                assert_eq!(status.error_kind, Some(ErrorKind::Connection), "{status:?}");
                let error = status.error.unwrap_or_default();
                assert!(error.contains(&address), "{error} does not name {address}");
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20));
    } else {
        eprintln!("in-process backend: no closed port to check against");
    }
    // A closed backend reports unhealthy, typed.
    let backend = ctx
        .harness()
        .connect(&ctx.harness().url())
        .await
        .expect("connect");
    backend.close().await.expect("close");
    let status = backend.admin().health().await;
    assert!(!status.healthy);
    assert_eq!(status.error_kind, Some(ErrorKind::Closed), "{status:?}");
    let queue = ctx.queue();
    let err = backend
        .producer(&queue)
        .await
        .expect_err("closed backend refuses work");
    assert_eq!(err.kind(), ErrorKind::Closed);
}

/// Case 24: 4 consumers, 10,000 messages: each acked exactly once.
pub async fn competing_consumers(ctx: &Ctx) {
    let queue = ctx.queue();
    let total = 10_000usize;
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

/// Case 25: a consumer dropped with unacked deliveries: they reach another consumer.
pub async fn dropped_consumer_redelivers(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let ids: HashSet<MessageId> = send_numbered(&*producer, "m", 5)
        .await
        .into_iter()
        .collect();
    {
        let doomed = ctx.consumer(&queue, Some(LEASE)).await;
        let held = receive_n(&*doomed, 5, SOON).await;
        assert_eq!(held.len(), 5);
        drop(held);
        drop(doomed);
    }
    let survivor = ctx.consumer(&queue, None).await;
    let got = receive_n(&*survivor, 5, SOON).await;
    let got_ids: HashSet<MessageId> = got.iter().map(|d| d.message().id).collect();
    assert_eq!(
        got_ids, ids,
        "every unacked message reaches the other consumer"
    );
    for d in got {
        if ctx.caps().redeliveries == RedeliveryCount::Exact {
            assert!(d.attempt() >= 2, "a lost delivery counts as an attempt");
        }
        d.ack().await.expect("ack");
    }
}

/// The backend of the fault cases: through a fault proxy where the
/// harness has a broker, else the direct backend (printing that nothing
/// can be cut in process).
async fn faulty_or_direct(ctx: &Ctx, query: &str) -> (Arc<dyn Backend>, Option<FaultProxy>) {
    match ctx.faulty(query).await {
        Some(faulty) => (faulty.backend, Some(faulty.proxy)),
        None => {
            eprintln!("in-process backend: no connection to cut; checking it carries on");
            (ctx.backend().clone(), None)
        }
    }
}

/// Send `message`, retrying a retryable failure (the same message, so the
/// same id) a few times: how a careful producer rides out a cut.
async fn send_retrying(producer: &dyn Producer, message: &Message) -> Result<MessageId> {
    let mut attempt = 0u32;
    loop {
        match producer.send(message.clone()).await {
            Err(e) if e.is_retryable() && attempt < 8 => {
                // A reconnecting client has no event to await here.
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

/// A queue's stats, retrying a retryable error a few times (a broker that
/// just restarted may still be bringing the queue up).
async fn stats_retrying(backend: &dyn Backend, queue: &QueueName) -> queue_core::QueueStats {
    let mut attempt = 0u32;
    loop {
        match backend.admin().stats(queue).await {
            Err(e) if e.is_retryable() && attempt < 8 => {
                // A recovering broker has no event to await here.
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            other => return other.expect("stats"),
        }
    }
}

/// Receive and ack until every id of `expected` arrived or `timeout`
/// passed, riding out retryable errors; counts every delivery per id.
async fn drain(
    consumer: &dyn Consumer,
    expected: &HashSet<MessageId>,
    timeout: Duration,
) -> HashMap<MessageId, usize> {
    let mut seen: HashMap<MessageId, usize> = HashMap::new();
    let deadline = Instant::now() + timeout;
    while !expected.iter().all(|id| seen.contains_key(id)) && Instant::now() < deadline {
        match consumer.receive(100, Duration::from_secs(1)).await {
            Ok(batch) => {
                for d in batch {
                    *seen.entry(d.message().id).or_default() += 1;
                    let _ = d.ack().await;
                }
            }
            Err(e) if e.is_retryable() => continue,
            Err(e) => panic!("receive while draining: {e}"),
        }
    }
    seen
}

/// Case 26: after every connection is cut, producer and consumer carry on
/// without being rebuilt; nothing acked is lost or redelivered.
pub async fn reconnect(ctx: &Ctx) {
    let (backend, proxy) = faulty_or_direct(ctx, "").await;
    let queue = ctx.queue();
    let producer = backend.producer(&queue).await.expect("producer");
    let consumer = backend
        .consumer(&queue, Default::default())
        .await
        .expect("consumer");
    let before: HashSet<MessageId> = send_numbered(&*producer, "before", 10)
        .await
        .into_iter()
        .collect();
    let mut acked = HashSet::new();
    for d in receive_n(&*consumer, 5, SOON).await {
        acked.insert(d.message().id);
        d.ack().await.expect("ack");
    }
    assert_eq!(acked.len(), 5);
    if let Some(proxy) = &proxy {
        let open = proxy.cut();
        if ctx.harness().connections_persist() {
            assert!(open > 0, "the backend's connections go through the proxy");
        } else {
            assert!(
                proxy.accepted() > 0,
                "the backend's requests go through the proxy"
            );
        }
    }
    let mut after = HashSet::new();
    for i in 0..10 {
        // The first send after the cut may see the broken connection; the
        // same producer must recover on its own.
        let message = Message::new(format!("after {i}"));
        let id = send_retrying(&*producer, &message)
            .await
            .unwrap_or_else(|e| panic!("send after the cut: {e}"));
        after.insert(id);
    }
    let expected: HashSet<MessageId> = before
        .difference(&acked)
        .copied()
        .chain(after.iter().copied())
        .collect();
    let got = drain(&*consumer, &expected, Duration::from_secs(60)).await;
    let came_back: Vec<_> = acked.iter().filter(|id| got.contains_key(id)).collect();
    assert!(
        came_back.is_empty(),
        "messages acked before the cut came back: {came_back:?}"
    );
    let missing: Vec<_> = expected.iter().filter(|id| !got.contains_key(id)).collect();
    assert!(missing.is_empty(), "lost after the cut: {missing:?}");
}

/// Case 42: a cut while a consumer waits in `receive`: the call returns
/// (empty, or a retryable error) instead of hanging, and the same consumer
/// gets the next message.
pub async fn cut_during_receive(ctx: &Ctx) {
    let (backend, proxy) = faulty_or_direct(ctx, "").await;
    let queue = ctx.queue();
    let consumer: Arc<dyn Consumer> = Arc::from(
        backend
            .consumer(&queue, Default::default())
            .await
            .expect("consumer"),
    );
    let accepted = proxy.as_ref().map_or(0, FaultProxy::accepted);
    let wait = Duration::from_secs(5);
    let waiting = {
        let consumer = consumer.clone();
        tokio::spawn(async move { consumer.receive(10, wait).await })
    };
    if let Some(proxy) = &proxy {
        // A backend that opens a connection to wait on has it open once this
        // resolves; one that waits on its shared connection is waiting too.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            proxy.until_accepted_more_than(accepted),
        )
        .await;
        proxy.cut();
    }
    let returned = tokio::time::timeout(wait + SOON, waiting)
        .await
        .expect("a receive cut mid-wait returns")
        .expect("receive task");
    match returned {
        Ok(batch) => assert!(batch.is_empty(), "nothing was sent: {batch:?}"),
        Err(e) => assert!(e.is_retryable(), "a cut is retryable: {e}"),
    }
    let id = send(ctx, &queue, Message::new("after the cut")).await;
    let got = drain(&*consumer, &HashSet::from([id]), SOON).await;
    assert_eq!(
        got.get(&id),
        Some(&1),
        "the same consumer gets the next message"
    );
}

/// Case 43: cuts while ack batches are on their way: every message is
/// delivered at least once, and one whose ack succeeded never comes back.
pub async fn cut_during_ack(ctx: &Ctx) {
    let (backend, proxy) = faulty_or_direct(ctx, "lease=2s").await;
    let queue = ctx.queue();
    let total = 300usize;
    let producer = ctx.producer(&queue).await;
    let messages: Vec<Message> = (0..total).map(|i| Message::new(format!("m {i}"))).collect();
    let all: HashSet<MessageId> = messages.iter().map(|m| m.id).collect();
    for chunk in messages.chunks(ctx.caps().max_batch.clamp(1, 100)) {
        producer
            .send_batch(chunk.to_vec())
            .await
            .expect("send_batch");
    }
    if let Some(proxy) = &proxy {
        proxy.set_mode(ProxyMode::Latency(Duration::from_millis(20)));
    }
    let consumer = backend
        .consumer(&queue, Default::default())
        .await
        .expect("consumer");
    let mut acked: HashSet<MessageId> = HashSet::new();
    let mut seen: HashMap<MessageId, usize> = HashMap::new();
    let mut violations = Vec::new();
    let mut cuts = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < total && Instant::now() < deadline {
        let batch = match consumer.receive(50, Duration::from_secs(1)).await {
            Ok(batch) => batch,
            Err(e) if e.is_retryable() => continue,
            Err(e) => panic!("receive: {e}"),
        };
        let ids: Vec<MessageId> = batch.iter().map(|d| d.message().id).collect();
        for id in &ids {
            if acked.contains(id) {
                violations.push(*id);
            }
            *seen.entry(*id).or_default() += 1;
        }
        let settle = consumer.ack_batch(batch);
        let failed = match (&proxy, cuts < 3) {
            (Some(proxy), true) => {
                cuts += 1;
                let cut = async {
                    proxy.next_request().await;
                    proxy.cut();
                };
                tokio::join!(settle, cut).0
            }
            _ => settle.await,
        };
        let failed: HashSet<MessageId> = failed
            .err()
            .unwrap_or_default()
            .iter()
            .map(|f| f.delivery.message().id)
            .collect();
        acked.extend(ids.into_iter().filter(|id| !failed.contains(id)));
    }
    if let Some(proxy) = &proxy {
        proxy.set_mode(ProxyMode::Pass);
    }
    // What was not acked comes back when its lease runs out.
    let rest: HashSet<MessageId> = all.difference(&acked).copied().collect();
    let direct = ctx.consumer(&queue, None).await;
    let drained = drain(&*direct, &rest, Duration::from_secs(30)).await;
    violations.extend(drained.keys().filter(|id| acked.contains(id)));
    let delivered: HashSet<MessageId> = seen.keys().chain(drained.keys()).copied().collect();
    let lost: Vec<_> = all.difference(&delivered).collect();
    eprintln!(
        "{cuts} cuts during acks; {} acked through the proxy, {} redelivered after",
        acked.len(),
        drained.len()
    );
    assert!(lost.is_empty(), "never delivered: {lost:?}");
    assert!(
        violations.is_empty(),
        "acked, then delivered again: {violations:?}"
    );
}

/// Case 44: cuts while sends are on their way: every send that returned
/// an id is delivered; a failed send retried with the same message is
/// delivered too, and duplicates are counted.
pub async fn cut_during_send(ctx: &Ctx) {
    let (backend, proxy) = faulty_or_direct(ctx, "").await;
    let queue = ctx.queue();
    let producer = backend.producer(&queue).await.expect("producer");
    if let Some(proxy) = &proxy {
        proxy.set_mode(ProxyMode::Latency(Duration::from_millis(10)));
    }
    let mut accepted = HashSet::new();
    let mut cuts = 0;
    for i in 0..100 {
        let message = Message::new(format!("s {i}"));
        let sent = match (&proxy, i % 20 == 5) {
            (Some(proxy), true) => {
                cuts += 1;
                let cut = async {
                    proxy.next_request().await;
                    proxy.cut();
                };
                tokio::join!(producer.send(message.clone()), cut).0
            }
            _ => producer.send(message.clone()).await,
        };
        let id = match sent {
            Ok(id) => id,
            // Retried as a careful producer does: the same message again.
            Err(e) if e.is_retryable() => send_retrying(&*producer, &message)
                .await
                .unwrap_or_else(|e| panic!("send after a cut: {e}")),
            Err(e) => panic!("a cut gave a non-retryable error: {e}"),
        };
        assert_eq!(id, message.id);
        accepted.insert(id);
    }
    if let Some(proxy) = &proxy {
        proxy.set_mode(ProxyMode::Pass);
    }
    let consumer = ctx.consumer(&queue, None).await;
    let got = drain(&*consumer, &accepted, Duration::from_secs(30)).await;
    let lost: Vec<_> = accepted.iter().filter(|id| !got.contains_key(id)).collect();
    let duplicates = got.values().filter(|&&n| n > 1).count();
    eprintln!("{cuts} cuts during sends; {duplicates} duplicates");
    assert!(lost.is_empty(), "accepted sends lost: {lost:?}");
}

/// Case 45: a blackholed broker (connections accepted, nothing answered):
/// calls fail with a retryable error within the configured timeouts,
/// health turns unhealthy, the worker's liveness says why, and everything
/// resumes by itself once traffic flows.
pub async fn blackholed_broker(ctx: &Ctx) {
    // The proxy holds what it swallowed and delivers it once traffic
    // flows, as a network does with a late packet: a receive the worker
    // gave up on may then take a message, which comes back after its
    // lease, so the lease is short. A send that failed may land then too
    // (its request was written before the blackhole swallowed it): the
    // case waits for the job sent after the blackhole, not for a count.
    let query = "connect_timeout=1s&request_timeout=1s&lease=3s";
    let (backend, proxy) = faulty_or_direct(ctx, query).await;
    let queue = ctx.queue();
    let ran: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let worker = Worker::builder(backend.clone(), queue.clone())
        .concurrency(2)
        .poll_wait(Duration::from_millis(500))
        .liveness_timeout(Duration::from_millis(1500))
        .handler({
            let ran = ran.clone();
            move |job: Job<u32>| {
                ran.lock().expect("lock").insert(job.payload);
                async { Ok::<_, std::io::Error>(()) }
            }
        })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    let job = |n: u32| Job::encode(&n, &JobOptions::default()).expect("encode");
    send(ctx, &queue, job(1)).await;
    assert!(
        until(&mut events, SOON, || ran.lock().expect("lock").contains(&1)).await,
        "the first job runs"
    );
    let Some(proxy) = proxy else {
        worker.shutdown().await.expect("shutdown");
        return;
    };
    proxy.set_mode(ProxyMode::Blackhole);
    let producer = backend.producer(&queue).await;
    let started = Instant::now();
    let sent = match producer {
        Ok(producer) => producer.send(job(2)).await,
        Err(e) => Err(e),
    };
    let took = started.elapsed();
    let err = sent.expect_err("a send to a blackholed broker fails");
    assert!(err.is_retryable(), "{err}");
    assert!(
        took < Duration::from_secs(10),
        "the send took {took:?} with 1 s timeouts"
    );
    let started = Instant::now();
    let health = backend.admin().health().await;
    assert!(!health.healthy, "{health:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "health took {:?}",
        started.elapsed()
    );
    // The worker notices on its own and says why.
    let deadline = Instant::now() + SOON;
    let mut liveness = worker.health();
    while liveness.healthy && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(100), events.recv()).await;
        liveness = worker.health();
    }
    assert!(
        !liveness.healthy,
        "the worker still reports healthy: {liveness:?}"
    );
    assert!(liveness.last_error.is_some(), "{liveness:?}");
    proxy.set_mode(ProxyMode::Pass);
    send(ctx, &queue, job(3)).await;
    assert!(
        until(&mut events, SOON * 2, || ran
            .lock()
            .expect("lock")
            .contains(&3))
        .await,
        "the worker resumes by itself: {:?}",
        worker.stats()
    );
    assert!(worker.health().healthy, "{:?}", worker.health());
    assert!(backend.admin().health().await.healthy);
    worker.shutdown().await.expect("shutdown");
}

/// Job number -> times its handler ran.
type Runs = Arc<Mutex<HashMap<u32, u32>>>;

/// A worker of `concurrency` on `backend` whose handler counts the runs of
/// each job number; for the fault cases, which then check every accepted
/// job ran.
async fn counting_worker(
    backend: &Arc<dyn Backend>,
    queue: &QueueName,
    concurrency: usize,
) -> (WorkerHandle, Runs) {
    let runs: Runs = Arc::default();
    let record = runs.clone();
    let worker = Worker::builder(backend.clone(), queue.clone())
        .concurrency(concurrency)
        .lease(Duration::from_secs(2))
        .poll_wait(Duration::from_millis(500))
        .handler(move |job: Job<u32>| {
            let record = record.clone();
            async move {
                *record.lock().expect("lock").entry(job.payload).or_default() += 1;
                Ok::<_, std::io::Error>(())
            }
        })
        .start()
        .await
        .expect("start worker");
    (worker, runs)
}

/// The accepted jobs that never ran, and the runs beyond the first.
fn missing_and_duplicates(runs: &Runs, accepted: &[u32]) -> (Vec<u32>, u32) {
    let runs = runs.lock().expect("lock");
    let missing = accepted
        .iter()
        .copied()
        .filter(|n| !runs.contains_key(n))
        .collect();
    let duplicates = runs.values().map(|&n| n.saturating_sub(1)).sum();
    (missing, duplicates)
}

/// Case 46: ten cuts in ten seconds under a running worker and a trickle
/// producer retrying failed sends: every accepted job runs at least once;
/// duplicates are counted and stay within what was in flight.
pub async fn repeated_cuts(ctx: &Ctx) {
    let (backend, proxy) = faulty_or_direct(ctx, "").await;
    let queue = ctx.queue();
    let concurrency = 8;
    let (worker, runs) = counting_worker(&backend, &queue, concurrency).await;
    let mut events = worker.subscribe();
    let producer = backend.producer(&queue).await.expect("producer");
    let cutter = proxy.as_ref().map(|proxy| async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            proxy.cut();
        }
    });
    let trickle = async {
        let mut accepted = Vec::new();
        let started = Instant::now();
        let mut n = 0u32;
        while started.elapsed() < Duration::from_secs(11) {
            let message = Job::encode(&n, &JobOptions::default()).expect("encode");
            match send_retrying(&*producer, &message).await {
                Ok(_) => accepted.push(n),
                Err(e) => eprintln!("job {n} not accepted: {e}"),
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        accepted
    };
    let accepted = match cutter {
        Some(cutter) => tokio::join!(trickle, cutter).0,
        None => trickle.await,
    };
    until(&mut events, Duration::from_secs(60), || {
        missing_and_duplicates(&runs, &accepted).0.is_empty()
    })
    .await;
    worker.shutdown().await.expect("shutdown");
    let (missing, duplicates) = missing_and_duplicates(&runs, &accepted);
    eprintln!(
        "{} jobs accepted, {} ran, {duplicates} duplicate runs over 10 cuts",
        accepted.len(),
        runs.lock().expect("lock").len()
    );
    assert!(missing.is_empty(), "accepted jobs never ran: {missing:?}");
    assert!(!accepted.is_empty());
    // A cut can at most repeat what was running or waiting for its ack.
    let bound = 10 * 2 * concurrency as u32;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than {bound}"
    );
}

/// Case 47: the broker killed with SIGKILL mid-run and started again on
/// its files: every accepted job runs, nothing acked comes back beyond
/// what was in flight, and producer and worker carry on by themselves.
pub async fn broker_restart(ctx: &Ctx) {
    let Some(broker) = ctx.harness().persistent_broker().await else {
        eprintln!("the harness runs no broker of its own: nothing to restart");
        return;
    };
    let mut broker = broker.expect("start a private broker");
    let url = broker.url();
    let backend = ctx.harness().connect(&url).await.expect("connect");
    let queue = ctx.queue_name();
    let concurrency = 8;
    let (worker, runs) = counting_worker(&backend, &queue, concurrency).await;
    let mut events = worker.subscribe();
    let producer = backend.producer(&queue).await.expect("producer");
    let total = 600u32;
    let mut accepted = Vec::new();
    let mut restarted = false;
    for n in 0..total {
        let message = Job::encode(&n, &JobOptions::default()).expect("encode");
        match send_retrying(&*producer, &message).await {
            Ok(_) => accepted.push(n),
            Err(e) => eprintln!("job {n} not accepted: {e}"),
        }
        if n == total / 3 {
            assert!(
                until(&mut events, SOON, || runs.lock().expect("lock").len()
                    >= 100)
                .await,
                "jobs run before the kill"
            );
            broker.kill().await.expect("SIGKILL the broker");
            broker
                .start()
                .await
                .expect("restart the broker on its files");
            restarted = true;
        }
    }
    assert!(restarted);
    until(&mut events, Duration::from_secs(90), || {
        missing_and_duplicates(&runs, &accepted).0.is_empty()
    })
    .await;
    // A job that ran while its ack could not reach the broker comes back
    // when its lease runs out: let the worker settle it before counting.
    let mut stats = stats_retrying(&*backend, &queue).await;
    let deadline = Instant::now() + SOON;
    while stats.depth() > 0 && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
        stats = stats_retrying(&*backend, &queue).await;
    }
    worker.shutdown().await.expect("shutdown");
    let (missing, duplicates) = missing_and_duplicates(&runs, &accepted);
    eprintln!(
        "{} of {total} accepted, {duplicates} duplicate runs across the restart",
        accepted.len()
    );
    assert!(
        missing.is_empty(),
        "accepted jobs lost in the restart: {missing:?}"
    );
    assert!(
        accepted.len() as u32 >= total * 9 / 10,
        "the producer carried on"
    );
    // Only what was running or waiting for its ack at the kill runs again.
    let bound = 4 * concurrency as u32;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than {bound}"
    );
    if ctx.caps().exact_stats() {
        assert_eq!((stats.depth(), stats.dead), (0, 0), "{stats:?}");
    }
    let _ = backend.admin().delete_queue(&queue).await;
}

/// Appends `query` to a URL.
fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

/// Case 27: an oversize message is a typed error before any network call.
/// The limit counts the payload with its metadata (`Message::wire_size`).
pub async fn payload_too_large(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let max = ctx.caps().max_payload;
    let text = assert_kind(
        producer.send(Message::new(vec![7u8; max + 1])).await,
        ErrorKind::PayloadTooLarge,
        "send",
    );
    assert!(text.contains(&max.to_string()), "{text} names the limit");
    let batch = producer
        .send_batch(vec![Message::new("ok"), Message::new(vec![7u8; max + 1])])
        .await;
    if let Err(e) = &batch {
        assert!(
            !e.is_partial(),
            "a message that fails the check sends nothing: {e}"
        );
    }
    assert_kind(
        batch.map_err(queue_core::Error::from),
        ErrorKind::PayloadTooLarge,
        "send_batch",
    );
    // A lowered limit from the URL applies the same way, metadata included.
    let backend = ctx
        .harness()
        .connect(&with_query(&ctx.harness().url(), "max_payload=1024"))
        .await
        .expect("connect");
    assert_eq!(backend.capabilities().max_payload, 1024);
    let small = ctx.queue_on(&backend);
    let p = backend.producer(&small).await.expect("producer");
    let fits = 1024 - Message::new(Vec::new()).wire_size();
    let over = Message::new(vec![0u8; fits + 1]);
    assert_eq!(over.wire_size(), 1025);
    assert_kind(
        p.send(over).await,
        ErrorKind::PayloadTooLarge,
        "lowered limit",
    );
    let header = Message::new(vec![0u8; fits - 10]).with_header("tenant", "acme-corp");
    assert_kind(
        p.send(header).await,
        ErrorKind::PayloadTooLarge,
        "headers count against the limit",
    );
    p.send(Message::new(vec![0u8; fits]))
        .await
        .expect("exactly at the lowered limit");
    // Nothing oversize was queued.
    let consumer = backend
        .consumer(&small, Default::default())
        .await
        .expect("consumer");
    let got = receive_n(&*consumer, 2, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1);
    for d in got {
        d.ack().await.expect("ack");
    }
}

/// Case 28: an invalid queue name is a typed error naming the rule.
pub async fn invalid_queue_name(ctx: &Ctx) {
    for bad in [
        "",
        "has space",
        "dot.ted",
        "-leading",
        "ünï",
        "a/b",
        &"x".repeat(65),
    ] {
        let err = QueueName::new(bad).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidQueueName);
        assert!(
            err.to_string().contains("1 to 64 ASCII letters, digits"),
            "{err}"
        );
    }
    // The longest valid name works on the backend end to end.
    let long = ctx.queue_of_len(64);
    ctx.producer(&long)
        .await
        .send(Message::new("x"))
        .await
        .expect("send to the longest name");
    let consumer = ctx.consumer(&long, None).await;
    for d in receive_n(&*consumer, 1, SOON).await {
        d.ack().await.expect("ack");
    }
    assert_eq!(long.as_str().len(), 64);
}

/// Case 29: bytes written by a plain client are delivered raw or
/// dead-lettered with reason `decode`; never a panic or an endless loop.
pub async fn foreign_message(ctx: &Ctx) {
    let junk: &[u8] = b"\xff\xfe not an envelope \x00";
    assert_eq!(
        envelope::decode(&Bytes::from_static(b"\xff\xfe not an envelope \x00"))
            .unwrap_err()
            .kind(),
        ErrorKind::Decode
    );
    let queue = ctx.queue();
    // Make the queue exist before a plain client writes next to it.
    ctx.backend()
        .admin()
        .ensure_queue(&queue, &QueueOptions::default())
        .await
        .expect("ensure queue");
    match ctx.harness().inject_foreign(&queue, junk).await {
        None => {
            eprintln!(
                "in-process backend: no plain client can write foreign bytes; checked the decoder"
            );
        }
        Some(result) => {
            result.expect("inject foreign bytes");
            let consumer = ctx.consumer(&queue, Some(LEASE)).await;
            let got = consumer
                .receive(10, Duration::from_secs(3))
                .await
                .expect("receive never fails on foreign bytes");
            if let Some(d) = got.into_iter().next() {
                assert_eq!(d.payload().as_ref(), junk, "delivered as the raw payload");
                d.ack().await.expect("ack a raw delivery");
            } else {
                let dead = dead_letters(ctx, &queue).await;
                assert_eq!(dead.len(), 1, "not delivered, so dead-lettered");
                assert_eq!(dead[0].reason, DeadLetterReason::Decode);
            }
            let again = consumer.receive(10, LEASE + QUIET).await.expect("receive");
            assert!(again.is_empty(), "foreign bytes came back: an endless loop");
        }
    }
    // A typed worker meeting bytes that are not its job type dead-letters
    // them with reason `decode`, once, without retrying.
    let typed = ctx.queue();
    let id = send(ctx, &typed, Message::new(junk.to_vec())).await;
    let worker = Worker::builder(ctx.backend().clone(), typed.clone())
        .handler(|_job: Job<u32>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    let buried = until(&mut events, SOON, || worker.stats().dead_lettered == 1).await;
    let stats = worker.stats();
    worker.shutdown().await.expect("shutdown");
    assert!(
        buried,
        "the undecodable job was not dead-lettered: {stats:?}"
    );
    assert_eq!(
        (stats.started, stats.completed, stats.in_flight),
        (1, 0, 0),
        "{stats:?}"
    );
    let dead = dead_letters(ctx, &typed).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, id);
    assert_eq!(dead[0].reason, DeadLetterReason::Decode);
    assert_eq!(dead[0].message.payload.as_ref(), junk, "the bytes are kept");
}

/// Case 30: malformed URL, unknown scheme, out-of-range option: typed
/// errors naming the field; credentials absent from the message.
pub async fn bad_config(ctx: &Ctx) {
    let url = ctx.harness().url();
    let scheme = url.split("://").next().unwrap_or_default().to_owned();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
    // Put a known password into the URL, replacing any credentials.
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let hosts = rest[..authority_end].rsplit('@').next().unwrap_or_default();
    let hosts = if hosts.is_empty() { "localhost" } else { hosts };
    let secret_url = format!(
        "{scheme}://qtuser:hunter2@{hosts}{}",
        &rest[authority_end..]
    );
    for (input, field) in [
        (with_query(&secret_url, "lease=0s"), "lease"),
        (with_query(&secret_url, "lease=soon"), "lease"),
        (with_query(&secret_url, "max_payload=-1"), "max_payload"),
        (
            with_query(&secret_url, "connect_timeout=99d"),
            "connect_timeout",
        ),
        (
            with_query(&secret_url, "no_such_option=1"),
            "no_such_option",
        ),
        ("nope://qtuser:hunter2@host".to_owned(), "scheme"),
        (format!("{scheme}://qtuser:hunter2@[::1"), "url"),
    ] {
        let err = match ctx.harness().connect(&input).await {
            Ok(_) => panic!("{field}: a bad URL connected"),
            Err(e) => e,
        };
        let text = format!("{err} {err:?}");
        assert_eq!(err.kind(), ErrorKind::Config, "{field}: {text}");
        assert!(err.message().contains(field), "{field} not named in {text}");
        assert!(!text.contains("hunter2"), "password leaked: {text}");
    }
}

/// A fast retry policy for worker cases: no jitter, so gaps are predictable.
fn test_backoff(initial: Duration) -> BackoffPolicy {
    BackoffPolicy {
        initial,
        max: initial * 8,
        multiplier: 2.0,
        jitter: false,
    }
}

/// Wait until `done` holds, checking on every event of `events`, for at most `timeout`.
async fn until(
    events: &mut EventStream,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return done(),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return done(),
            Ok(_) => {}
        }
    }
    true
}

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

/// Case 39: a released delivery comes back at once with the same attempt,
/// ahead of the messages queued after it where the queue keeps one order;
/// releasing a lost lease is refused like any settle.
pub async fn release_keeps_attempt(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let ids = send_numbered(&*producer, "r", 3).await;
    let consumer = ctx.consumer(&queue, None).await;
    let first = receive_one(&*consumer, "first delivery").await;
    let one_order = ctx.caps().ordering == Ordering::FifoPerPriority;
    if one_order {
        assert_eq!(first.message().id, ids[0]);
    }
    // Where order is kept per partition or key, any of the three may come
    // first (keyless messages spread over partitions).
    let released = first.message().id;
    first.release().await.expect("release");
    let got = receive_n(&*consumer, 3, SOON).await;
    assert_eq!(got.len(), 3, "the released message and the others arrive");
    let again = got
        .iter()
        .find(|d| d.message().id == released)
        .expect("the released message is delivered again");
    assert_eq!(again.attempt(), 1, "a release spends no attempt");
    if one_order {
        assert_eq!(
            got[0].message().id,
            released,
            "released to the head of its priority"
        );
    }
    for d in got {
        d.ack().await.expect("ack");
    }
    if ctx.caps().exact_stats() {
        let stats = ctx.backend().admin().stats(&queue).await.expect("stats");
        assert_eq!(
            stats.retried_total, 0,
            "a release is not a retry: {stats:?}"
        );
    }
    // A release after the lease was lost leaves the new holder's copy alone.
    let id = send(ctx, &queue, Message::new("contended")).await;
    let short = ctx.consumer(&queue, Some(LEASE)).await;
    let stale = receive_one(&*short, "delivery").await;
    let current = receive_one(&*short, "redelivery after the lease").await;
    let released = stale.release().await;
    if ctx.caps().detects_lease_lost() {
        let err = released.expect_err("releasing a lost lease fails");
        assert_eq!(err.error.kind(), ErrorKind::LeaseLost);
    }
    assert_eq!(current.message().id, id);
    current.ack().await.expect("the current holder acks");
}

/// Case 40: an error text of a megabyte is kept to a few KiB, cut on a
/// character boundary and saying so, in the next delivery and in the dead
/// letter; a rejection's detail likewise.
pub async fn error_text_capped(ctx: &Ctx) {
    let queue = ctx.queue();
    let huge = "é".repeat(512 * 1024);
    send(ctx, &queue, Message::new("noisy").with_max_attempts(2)).await;
    let consumer = ctx.consumer(&queue, None).await;
    let first = receive_one(&*consumer, "delivery").await;
    first
        .nack_with_error(Duration::ZERO, &huge)
        .await
        .expect("nack with a 1 MiB error");
    let second = receive_one(&*consumer, "redelivery").await;
    let kept = second
        .message()
        .last_error
        .clone()
        .expect("the error travels");
    assert!(kept.len() <= MAX_ERROR_TEXT, "{} bytes kept", kept.len());
    assert!(kept.starts_with("éé"), "cut on a character boundary");
    assert!(
        kept.contains("truncated from 1048576 bytes"),
        "says so: {}",
        &kept[kept.len() - 40..]
    );
    second
        .dead_letter(DeadLetterReason::Rejected(huge.clone()))
        .await
        .expect("dead-letter with a 1 MiB reason");
    let dead = dead_letters(ctx, &queue).await;
    assert_eq!(dead.len(), 1);
    match &dead[0].reason {
        DeadLetterReason::Rejected(detail) => {
            assert!(
                detail.len() <= MAX_ERROR_TEXT,
                "{} bytes kept",
                detail.len()
            );
            assert!(detail.contains("truncated"));
        }
        other => panic!("reason {other:?}"),
    }
}

/// Case 41: the header namespace `x-queue-` is the library's own: a user
/// header in it is refused before any network call, naming it; the
/// library's job headers and other names pass.
pub async fn reserved_headers(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    for name in ["x-queue-attempt", "X-Queue-Whatever"] {
        let text = assert_kind(
            producer
                .send(Message::new("x").with_header(name, "1"))
                .await,
            ErrorKind::InvalidInput,
            name,
        );
        assert!(text.contains(name) && text.contains("reserved"), "{text}");
        let batch = producer
            .send_batch(vec![
                Message::new("ok"),
                Message::new("x").with_header(name, "1"),
            ])
            .await;
        assert_kind(
            batch.map_err(queue_core::Error::from),
            ErrorKind::InvalidInput,
            name,
        );
    }
    let job = Job::encode(
        &"typed".to_owned(),
        &JobOptions::default().with_timeout(Duration::from_secs(5)),
    )
    .expect("encode")
    .with_header("x-queued-by", "ops");
    let id = producer.send(job).await.expect("library headers pass");
    let consumer = ctx.consumer(&queue, None).await;
    let got = receive_n(&*consumer, 2, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1, "only the valid message was queued");
    assert_eq!(got[0].message().id, id);
    assert_eq!(got[0].message().headers["x-queued-by"], "ops");
    for d in got {
        d.ack().await.expect("ack");
    }
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

/// Case 49: `Admin::queues` lists a queue once a producer opened it,
/// sorted and without duplicates, and no longer once it is deleted; a
/// backend that cannot list refuses with `Unsupported`.
pub async fn list_queues(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let admin = ctx.backend().admin();
    let listed = match admin.queues().await {
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            eprintln!("{}: cannot list queues ({e})", ctx.harness().name());
            return;
        }
        Err(e) => panic!("queues: {e}"),
        Ok(listed) => listed,
    };
    assert!(listed.contains(&queue), "{queue} is listed: {listed:?}");
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "sorted, each once: {listed:?}"
    );
    drop(producer);
    admin.delete_queue(&queue).await.expect("delete");
    let listed = admin.queues().await.expect("queues");
    assert!(!listed.contains(&queue), "{queue} is gone: {listed:?}");
}

/// Case 50: `Admin::pause` stops deliveries to every consumer (one of a
/// second connection too) while sends still succeed and stats say
/// `paused`; after `resume` a consumer that was waiting gets every
/// message; a queue that does not exist is `NotFound` (a mistyped name
/// creates nothing). A backend without `pause` refuses both with
/// `Unsupported`.
pub async fn pause_resume(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let admin = ctx.backend().admin();
    if !ctx.caps().pause.is_available() {
        assert_kind(admin.pause(&queue).await, ErrorKind::Unsupported, "pause");
        assert_kind(admin.resume(&queue).await, ErrorKind::Unsupported, "resume");
        return;
    }
    let missing = ctx.queue_name();
    assert_kind(
        admin.pause(&missing).await,
        ErrorKind::NotFound,
        "pause a missing queue",
    );
    assert_kind(
        admin.resume(&missing).await,
        ErrorKind::NotFound,
        "resume a missing queue",
    );
    let before = producer.send(Message::new("before")).await.expect("send");
    admin.pause(&queue).await.expect("pause");
    admin.pause(&queue).await.expect("pausing a paused queue");
    let during = producer
        .send(Message::new("while paused"))
        .await
        .expect("a paused queue takes sends");
    let consumer: Arc<dyn Consumer> = Arc::from(ctx.consumer(&queue, None).await);
    let none = consumer.receive(10, QUIET).await.expect("receive");
    assert!(
        none.is_empty(),
        "a paused queue hands out nothing: {none:?}"
    );
    // A second connection, as another process has, sees the pause too.
    if ctx.harness().broker_addr().is_some() {
        let other = ctx
            .harness()
            .connect(&ctx.harness().url())
            .await
            .expect("connect again");
        let elsewhere = other
            .consumer(&queue, queue_core::ConsumerOptions::default())
            .await
            .expect("consumer");
        let none = elsewhere.receive(10, QUIET).await.expect("receive");
        assert!(none.is_empty(), "paused for every connection: {none:?}");
    }
    let stats = admin.stats(&queue).await.expect("stats");
    assert!(stats.paused, "{stats:?}");
    let waiting = {
        let consumer = consumer.clone();
        tokio::spawn(async move { receive_n(&*consumer, 2, SOON).await })
    };
    tokio::task::yield_now().await;
    admin.resume(&queue).await.expect("resume");
    admin
        .resume(&queue)
        .await
        .expect("resuming a running queue");
    let got = waiting.await.expect("receive task");
    let ids: HashSet<MessageId> = got.iter().map(|d| d.message().id).collect();
    assert_eq!(
        ids,
        HashSet::from([before, during]),
        "every message after resume"
    );
    for d in got {
        d.ack().await.expect("ack");
    }
    let stats = admin.stats(&queue).await.expect("stats");
    assert!(!stats.paused, "{stats:?}");
}

/// Case 51: `QueueStats::oldest_ready_age`, where a backend reports it:
/// `None` while nothing is ready; the wait of the oldest ready message
/// (one created 30 s ago, so no clock has to run in the case); `None`
/// again once it is taken.
pub async fn oldest_ready_age(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let admin = ctx.backend().admin();
    let stats = admin.stats(&queue).await.expect("stats");
    assert_eq!(stats.oldest_ready_age, None, "nothing is ready: {stats:?}");
    let mut old = Message::new("waiting since 30 s ago");
    old.created_at = SystemTime::now() - Duration::from_secs(30);
    producer.send(old).await.expect("send");
    producer.send(Message::new("new")).await.expect("send");
    let stats = admin.stats(&queue).await.expect("stats");
    match stats.oldest_ready_age {
        None => eprintln!("{}: no oldest ready age", ctx.harness().name()),
        Some(age) => assert!(
            (Duration::from_secs(29)..Duration::from_secs(120)).contains(&age),
            "the oldest waited about 30 s: {stats:?}"
        ),
    }
    let consumer = ctx.consumer(&queue, None).await;
    for d in receive_n(&*consumer, 2, SOON).await {
        d.ack().await.expect("ack");
    }
    let stats = admin.stats(&queue).await.expect("stats");
    assert_eq!(stats.oldest_ready_age, None, "nothing is ready: {stats:?}");
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

/// Case 54: a running worker is in the worker registry (host, pid, queue,
/// concurrency, counts, heartbeat) and refreshes it, leaves it on
/// shutdown, and a worker whose heartbeat stops drops out after three
/// intervals. A backend without a registry refuses with `Unsupported` and
/// its workers run all the same.
pub async fn worker_registry(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let admin = ctx.backend().admin();
    let interval = Duration::from_millis(200);
    let worker = Worker::builder(ctx.backend().clone(), queue.clone())
        .concurrency(3)
        .heartbeat(Some(interval))
        .handler(|_: Job<String>| async { Ok::<_, std::io::Error>(()) })
        .start()
        .await
        .expect("start worker");
    let mut events = worker.subscribe();
    for i in 0..2 {
        let job = Job::encode(&format!("job {i}"), &JobOptions::default()).expect("encode");
        producer.send(job).await.expect("send");
    }
    assert!(until(&mut events, SOON, || worker.stats().completed == 2).await);
    if !ctx.caps().worker_registry.is_available() {
        assert_kind(admin.workers().await, ErrorKind::Unsupported, "workers");
        let info = queue_core::WorkerInfo::new(queue.clone(), 1, interval);
        assert_kind(
            admin.register_worker(&info).await,
            ErrorKind::Unsupported,
            "register",
        );
        worker.shutdown().await.expect("shutdown");
        return;
    }
    let id = worker.id().to_owned();
    let find = |id: String| async move {
        let workers = admin.workers().await.expect("workers");
        workers.into_iter().find(|w| w.id == id)
    };
    // The heartbeat after the jobs carries their count.
    let deadline = Instant::now() + SOON;
    let listed = loop {
        match find(id.clone()).await {
            Some(w) if w.completed == 2 => break w,
            _ if Instant::now() > deadline => panic!("worker {id} never listed with 2 completed"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(listed.queue, queue);
    assert_eq!((listed.pid, listed.concurrency), (std::process::id(), 3));
    assert_eq!((listed.in_flight, listed.failed), (0, 0));
    assert_eq!(listed.heartbeat_interval, interval);
    assert!(!listed.host.is_empty());
    assert!(listed.started_at <= listed.last_heartbeat, "{listed:?}");
    let first_beat = listed.last_heartbeat;
    let deadline = Instant::now() + SOON;
    while find(id.clone()).await.expect("still listed").last_heartbeat == first_beat {
        assert!(Instant::now() < deadline, "the heartbeat is refreshed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.shutdown().await.expect("shutdown");
    assert_eq!(
        find(id.clone()).await,
        None,
        "a stopped worker leaves at once"
    );
    // A worker that stops reporting (a crashed process) drops out.
    let silent = queue_core::WorkerInfo::new(queue.clone(), 1, Duration::from_millis(500));
    admin.register_worker(&silent).await.expect("register");
    assert!(
        find(silent.id.clone()).await.is_some(),
        "listed while fresh"
    );
    let deadline = Instant::now() + SOON;
    while find(silent.id.clone()).await.is_some() {
        assert!(Instant::now() < deadline, "a silent worker drops out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin
        .deregister_worker(&silent.id)
        .await
        .expect("deregister an unknown id");
}
