//! The order of delivery: priorities, and send order where the
//! capability table claims it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use queue_core::{Message, Ordering, Priority};

use super::{assert_unsupported, SOON};
use crate::harness::Ctx;

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
