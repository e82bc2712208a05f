//! Offsets committed by the backend never pass an unfinished record: a
//! second backend in the same group gets every record the first did not
//! ack, and none it did.

use std::collections::BTreeSet;
use std::time::Duration;

use queue_core::{Backend, ConsumerOptions, Message, QueueName};
use queue_kafka::KafkaBackend;

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_resumes_at_the_first_unacked_record() {
    let Some(base) = queue_testkit::broker_url("QUEUE_TEST_KAFKA_URL") else {
        return;
    };
    // One partition, so the records have one order and one commit offset.
    let url = format!("{base}?partitions=1&group={}", unique("offsets"));
    let queue = QueueName::new(unique("offsets")).expect("queue name");
    let first = KafkaBackend::connect(&url).await.expect("connect");
    let producer = first.producer(&queue).await.expect("producer");
    for i in 0..4 {
        producer
            .send(Message::new(format!("r{i}")))
            .await
            .expect("send");
    }
    let consumer = first
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    let mut got = Vec::new();
    while got.len() < 4 {
        let batch = consumer
            .receive(4 - got.len(), Duration::from_secs(10))
            .await
            .expect("receive");
        assert!(!batch.is_empty(), "the four records arrive");
        got.extend(batch);
    }
    // Ack r0 and r2; r1 and r3 stay unfinished. The commit may move to r1,
    // never past it.
    let mut unacked = BTreeSet::new();
    for (i, delivery) in got.into_iter().enumerate() {
        let body = String::from_utf8_lossy(delivery.payload()).into_owned();
        assert_eq!(body, format!("r{i}"), "one partition keeps send order");
        if i % 2 == 0 {
            delivery.ack().await.expect("ack");
        } else {
            unacked.insert(body);
        }
    }
    // Closing the member commits what it stored; the next member of the
    // group starts there.
    drop(consumer);
    drop(producer);
    first.close().await.expect("close");
    drop(first);

    let second = KafkaBackend::connect(&url).await.expect("connect again");
    let consumer = second
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    let mut again = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while again.len() < 3 && tokio::time::Instant::now() < deadline {
        for delivery in consumer
            .receive(10, Duration::from_secs(2))
            .await
            .expect("receive")
        {
            again.insert(String::from_utf8_lossy(delivery.payload()).into_owned());
            delivery.ack().await.expect("ack");
        }
    }
    // From r1 on: r1, r2 (acked, but after the unfinished r1) and r3.
    assert!(
        again.is_superset(&unacked),
        "every unacked record comes back: {again:?}"
    );
    assert!(
        !again.contains("r0"),
        "the acked record before the commit does not: {again:?}"
    );
    let _ = second.admin().delete_queue(&queue).await;
}
