//! Time on a message: delays, scheduled times, delays past the native
//! limit, and TTL.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use queue_core::{Backend, DeadLetterReason, Message, MessageId, QueueName, Totals};

use super::{assert_unsupported, dead_letters, SOON};
use crate::harness::{receive_n, Ctx};

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
