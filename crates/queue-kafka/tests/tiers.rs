//! Delays through the retry tiers on a real broker: each message waits in
//! the tier for what remains of its delay (`<queue>.retry.10s`,
//! `<queue>.retry.short`, ...), with its release time in a record header,
//! and arrives once due, in due order, whatever order it was sent in.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use queue_core::{Backend, ConsumerOptions, Message, QueueName};
use queue_kafka::KafkaBackend;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The `queue-release` headers of the records of partition 0 of `topic`,
/// in ms since the epoch, read from the start.
fn release_headers(servers: &str, topic: &str, expect: usize) -> Vec<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", unique("tier-reader"))
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let mut releases = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while releases.len() < expect && Instant::now() < until {
        if let Some(Ok(record)) = consumer.poll(Duration::from_millis(200)) {
            let header = record
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "queue-release"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            releases.push(
                header
                    .expect("a tier record carries its release time")
                    .parse()
                    .expect("ms since the epoch"),
            );
        }
    }
    releases
}

fn ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_cross_the_tiers_and_arrive_due_in_due_order() {
    let Some(base) = queue_testkit::broker_url("QUEUE_TEST_KAFKA_URL") else {
        return;
    };
    let servers = queue_kafka::bootstrap_servers(&base).expect("servers");
    // One partition per topic: the 10 s tier's records share one, in the
    // order they were sent, and the mover pauses it until its head is due.
    let url = format!("{base}?partitions=1&group={}", unique("tiers"));
    let queue = QueueName::new(unique("tiers")).expect("queue name");
    let backend = KafkaBackend::connect(&url).await.expect("connect");
    let consumer = backend
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    let producer = backend.producer(&queue).await.expect("producer");
    let sent = SystemTime::now();
    // Sent longest first: 13 s, 11 s and 12 s wait 10 s in the 10 s tier
    // (in that order), then what remains in the short tier; 2 s waits in
    // the short tier from the start.
    let delays = [("13s", 13), ("11s", 11), ("12s", 12), ("2s", 2)];
    let mut due = std::collections::HashMap::new();
    for (name, secs) in delays {
        let message = Message::new(name).with_delay(Duration::from_secs(secs));
        due.insert(name.to_owned(), message.not_before.expect("a due time"));
        producer.send(message).await.expect("send");
    }

    // The 10 s tier holds the three long ones, each to leave it 10 s after
    // it was sent.
    let releases = tokio::task::spawn_blocking({
        let (servers, topic) = (servers.clone(), format!("{queue}.retry.10s"));
        move || release_headers(&servers, &topic, 3)
    })
    .await
    .expect("reader");
    assert_eq!(releases.len(), 3, "three records in the 10 s tier");
    let after = SystemTime::now();
    for release in &releases {
        assert!(
            (ms(sent) + 10_000..=ms(after) + 10_000).contains(release),
            "released 10 s after the send: {release} vs sent {}",
            ms(sent)
        );
    }

    let mut order = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while order.len() < delays.len() && Instant::now() < deadline {
        for delivery in consumer
            .receive(10, Duration::from_secs(2))
            .await
            .expect("receive")
        {
            let name = String::from_utf8_lossy(delivery.payload()).into_owned();
            let arrived = SystemTime::now();
            let due_at = due[&name];
            assert!(
                arrived >= due_at,
                "{name} arrived {:?} before it was due",
                due_at.duration_since(arrived).unwrap_or_default()
            );
            // A hop costs a fetch on tansu (up to about a second), and the
            // mover's group join about three seconds on first use.
            assert!(
                arrived <= due_at + Duration::from_secs(10),
                "{name} arrived {:?} late",
                arrived.duration_since(due_at).unwrap_or_default()
            );
            order.push(name);
            delivery.ack().await.expect("ack");
        }
    }
    assert_eq!(order, ["2s", "11s", "12s", "13s"]);
    drop((consumer, producer));
    backend.admin().delete_queue(&queue).await.expect("delete");
    backend.close().await.expect("close");
}

/// A second backend joining the tiers' group mid-wait takes over some of
/// their partitions: the new owner reads a held record again from the
/// last commit and waits for it itself (its pause starts again with the
/// head it reads), and the first owner lets go of what it lost, so the
/// message still arrives once due, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_mid_wait_keeps_the_delay() {
    let Some(base) = queue_testkit::broker_url("QUEUE_TEST_KAFKA_URL") else {
        return;
    };
    let url = format!("{base}?partitions=1&group={}", unique("tiers-rebalance"));
    let queue = QueueName::new(unique("tiers-rebalance")).expect("queue name");
    let first = KafkaBackend::connect(&url).await.expect("connect");
    let first_consumer = first
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    assert!(
        first
            .joined(&queue, Duration::from_secs(30))
            .await
            .expect("join"),
        "the first backend joins"
    );
    let message = Message::new("late").with_delay(Duration::from_secs(14));
    let due = message.not_before.expect("a due time");
    first
        .producer(&queue)
        .await
        .expect("producer")
        .send(message)
        .await
        .expect("send");
    // The second backend's members join both groups: the queue's and
    // the tiers'.
    let second = KafkaBackend::connect(&url).await.expect("connect again");
    let second_consumer = second
        .consumer(&queue, ConsumerOptions::default())
        .await
        .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut arrived = Vec::new();
    while arrived.is_empty() && Instant::now() < deadline {
        let (a, b) = tokio::join!(
            first_consumer.receive(10, Duration::from_secs(1)),
            second_consumer.receive(10, Duration::from_secs(1)),
        );
        for delivery in a.expect("receive").into_iter().chain(b.expect("receive")) {
            arrived.push(SystemTime::now());
            delivery.ack().await.expect("ack");
        }
    }
    let at = *arrived.first().expect("the delayed message arrives");
    assert!(
        at >= due,
        "arrived {:?} early",
        due.duration_since(at).unwrap_or_default()
    );
    assert!(
        at <= due + Duration::from_secs(15),
        "arrived {:?} late",
        at.duration_since(due).unwrap_or_default()
    );
    drop((first_consumer, second_consumer));
    first.admin().delete_queue(&queue).await.expect("delete");
    first.close().await.expect("close");
    second.close().await.expect("close");
}
