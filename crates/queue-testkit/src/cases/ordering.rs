//! The order of delivery: priorities, and send order where the
//! capability table claims it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use queue_core::{Message, Ordering, Priority};

use super::{assert_kind, assert_unsupported, SOON};
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

/// Case 59: groups take turns. 300 messages of group `a` queued before 10
/// of group `b` and 10 with no group: every `b` and every ungrouped one
/// comes within the first 40 deliveries, and each group keeps its send
/// order (where the table claims FIFO per priority). A backend without
/// group fairness refuses a grouped message.
pub async fn groups_take_turns(ctx: &Ctx) {
    use queue_core::Coordinated;
    let queue = ctx.queue();
    let producer = ctx.producer(&queue).await;
    if ctx.caps().group_fairness != Coordinated::Native {
        let result = producer.send(Message::new("x").with_group("a")).await;
        return assert_unsupported(result, "group fairness");
    }
    let batch: Vec<Message> = (0..300u32)
        .map(|i| Message::new(format!("a {i}")).with_group("a"))
        .collect();
    for chunk in batch.chunks(ctx.caps().max_batch.max(1)) {
        producer.send_batch(chunk.to_vec()).await.expect("send a");
    }
    for i in 0..10u32 {
        producer
            .send(Message::new(format!("b {i}")).with_group("b"))
            .await
            .expect("send b");
        producer
            .send(Message::new(format!("- {i}")))
            .await
            .expect("send plain");
    }
    let consumer = ctx.consumer(&queue, None).await;
    let mut order: Vec<String> = Vec::new();
    while order.len() < 320 {
        let got = consumer
            .receive(10, Duration::from_secs(5))
            .await
            .expect("receive");
        assert!(!got.is_empty(), "all 320 arrive; got {}", order.len());
        for d in &got {
            order.push(String::from_utf8_lossy(d.payload()).into_owned());
        }
        if let Err(failed) = consumer.ack_batch(got).await {
            panic!("ack_batch: {:?}", failed.first().map(|f| &f.error));
        }
    }
    let first_40 = &order[..40];
    for tag in ["b", "-"] {
        let early = first_40
            .iter()
            .filter(|p| p.starts_with(&format!("{tag} ")))
            .count();
        assert_eq!(
            early, 10,
            "all 10 of {tag:?} within the first 40 deliveries: {first_40:?}"
        );
    }
    if ctx.caps().ordering != Ordering::FifoPerPriority {
        eprintln!("the table claims no queue-wide order: send order within groups not checked");
        return;
    }
    for tag in ["a", "b", "-"] {
        let of_tag: Vec<u32> = order
            .iter()
            .filter_map(|p| p.strip_prefix(&format!("{tag} ")))
            .map(|n| n.parse().expect("number"))
            .collect();
        let mut sorted = of_tag.clone();
        sorted.sort_unstable();
        assert_eq!(of_tag, sorted, "group {tag:?} keeps its send order");
    }
}

/// Case 60: a consumer with a group limit of 2 holds at most 2 of one
/// group: with 2 of `a` leased, the next receive passes over `a`'s
/// backlog for `b`, and once one `a` is acked, `a` is served again. A
/// backend without group fairness refuses the consumer; a zero limit and
/// an oversize group key are refused naming the field.
pub async fn group_limit(ctx: &Ctx) {
    use queue_core::{ConsumerOptions, Coordinated, ErrorKind};
    let queue = ctx.queue();
    let options = ConsumerOptions::default().with_group_limit(2);
    if ctx.caps().group_fairness != Coordinated::Native {
        let result = ctx.backend().consumer(&queue, options).await;
        return assert_unsupported(result.map(|_| ()), "group limits");
    }
    let zero = ctx
        .backend()
        .consumer(&queue, ConsumerOptions::default().with_group_limit(0))
        .await;
    let text = assert_kind(zero.map(|_| ()), ErrorKind::Config, "group limit 0");
    assert!(text.contains("group_limit"), "names the field: {text}");
    let producer = ctx.producer(&queue).await;
    let long = producer
        .send(Message::new("x").with_group("g".repeat(200)))
        .await;
    let text = assert_kind(long, ErrorKind::InvalidInput, "oversize group key");
    assert!(text.contains("group key"), "names the field: {text}");
    for i in 0..6u32 {
        producer
            .send(Message::new(format!("a {i}")).with_group("a"))
            .await
            .expect("send a");
    }
    producer
        .send(Message::new("b 0").with_group("b"))
        .await
        .expect("send b");
    let consumer = ctx
        .backend()
        .consumer(&queue, options)
        .await
        .expect("consumer");
    let payloads = |got: &[queue_core::Delivery]| -> Vec<String> {
        got.iter()
            .map(|d| String::from_utf8_lossy(d.payload()).into_owned())
            .collect()
    };
    let first = crate::harness::receive_n(&*consumer, 3, SOON).await;
    let names = payloads(&first);
    let of_a = names.iter().filter(|n| n.starts_with("a ")).count();
    assert!(
        of_a == 2 && names.contains(&"b 0".to_owned()),
        "two of a, then b: {names:?}"
    );
    let more = consumer
        .receive(10, Duration::from_millis(300))
        .await
        .expect("receive");
    assert!(
        more.is_empty(),
        "a is at its limit: nothing more is handed out, got {:?}",
        payloads(&more)
    );
    let a0 = first
        .into_iter()
        .find(|d| d.payload().starts_with(b"a "))
        .expect("an a delivery");
    a0.ack().await.expect("ack");
    let next = consumer.receive(10, SOON).await.expect("receive");
    assert_eq!(
        payloads(&next).len(),
        1,
        "one place of a freed: {:?}",
        payloads(&next)
    );
    assert!(
        payloads(&next)[0].starts_with("a "),
        "{:?}",
        payloads(&next)
    );
}
