//! What brings a delivery back (a nack, a release, an expired lease, a
//! dropped consumer), how long a nack may hold it, how a lease is
//! extended, and what a lost lease refuses.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use queue_core::message::MAX_DELAY;
use queue_core::{ErrorKind, Message, MessageId, Ordering, RedeliveryCount};

use super::{assert_unsupported, receive_one, send, send_numbered, LEASE, QUIET, SOON};
use crate::harness::{receive_n, Ctx};

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

/// Case 57: a nack delay past the maximum (`MAX_DELAY`, 365 days).
/// `Delivery::nack(Duration::MAX)` is refused with `InvalidInput` and
/// hands the delivery back; the backend's own `Acker::nack` given
/// `Duration::MAX`, or ten times the maximum, takes it without overflow
/// and holds the message for the maximum, as a nack of exactly the
/// maximum does: all three are delayed (stats where exact), none is
/// delivered.
pub async fn nack_delay_over_max(ctx: &Ctx) {
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    let ids = send_numbered(&*producer, "far", 3).await;
    let consumer = ctx.consumer(&queue, None).await;
    let mut got = receive_n(&*consumer, 3, SOON).await;
    assert_eq!(got.len(), 3, "the three messages arrive");
    let received: HashSet<MessageId> = got.iter().map(|d| d.message().id).collect();
    assert_eq!(received, ids.iter().copied().collect::<HashSet<_>>());

    let refused = got
        .pop()
        .expect("three")
        .nack(Duration::MAX)
        .await
        .expect_err("Delivery::nack(Duration::MAX) is refused");
    assert_eq!(
        refused.error.kind(),
        ErrorKind::InvalidInput,
        "{}",
        refused.error
    );
    let held = *refused.delivery;
    held.acker()
        .nack(held.message(), Duration::MAX, None)
        .await
        .expect("Acker::nack(Duration::MAX) holds the message for the maximum");
    drop(held);
    let far = got.pop().expect("three");
    far.acker()
        .nack(far.message(), MAX_DELAY * 10, Some("far above the maximum"))
        .await
        .expect("Acker::nack(10 x MAX_DELAY) holds the message for the maximum");
    drop(far);
    got.pop()
        .expect("three")
        .nack(MAX_DELAY)
        .await
        .expect("a nack of exactly the maximum is taken");

    let early = consumer.receive(10, QUIET).await.expect("receive");
    assert!(
        early.is_empty(),
        "a message nacked for a year came back: {:?}",
        early.iter().map(|d| d.message().id).collect::<Vec<_>>()
    );
    if ctx.caps().exact_stats() {
        let stats = ctx.backend().admin().stats(&queue).await.expect("stats");
        assert_eq!(
            (stats.ready, stats.delayed, stats.in_flight, stats.dead),
            (0, 3, 0, 0),
            "all three wait for their delay: {stats:?}"
        );
    }
}
