//! Probes of the Kafka-compatible broker the backend is built on
//! (`QUEUE_TEST_KAFKA_URL`; `cargo xtask test` starts tansu), with plain
//! rdkafka: what the backend's design relies on, checked before the
//! backend trusts it.
//!
//! - `two_members_share_and_take_over`: the two-member smoke test the
//!   rebalance cases rest on: two members of one group split a topic's
//!   partitions, each record reaches one of them, and when one leaves the
//!   other takes every partition over from the committed offsets.
//! - `admin_calls_the_backend_uses`: topic creation with
//!   `retention.ms=-1`, watermarks, committed offsets, headers and keys.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

const PARTITIONS: i32 = 4;
/// Every broker call and every wait for an event is bounded by this.
const DEADLINE: Duration = Duration::from_secs(60);

fn bootstrap() -> Option<String> {
    let url = queue_testkit::broker_url("QUEUE_TEST_KAFKA_URL")?;
    Some(queue_kafka::bootstrap_servers(&url).expect("QUEUE_TEST_KAFKA_URL is a kafka:// URL"))
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn admin(servers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .expect("admin client")
}

async fn create_topic(servers: &str, topic: &str) {
    let new =
        NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1)).set("retention.ms", "-1");
    let results = admin(servers)
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(DEADLINE)),
        )
        .await
        .expect("create_topics");
    for result in results {
        result.expect("topic created");
    }
}

fn producer(servers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

async fn produce(servers: &str, topic: &str, prefix: &str, n: usize) {
    let producer = producer(servers);
    let sends = (0..n).map(|i| {
        let body = format!("{prefix}-{i}");
        let key = format!("key-{i}");
        let producer = &producer;
        async move {
            producer
                .send(FutureRecord::to(topic).payload(&body).key(&key), DEADLINE)
                .await
                .map_err(|(e, _)| e)
                .expect("produce")
        }
    });
    futures_util::future::join_all(sends).await;
}

/// Tells the test each member's partition count after every rebalance.
struct Assignments {
    partitions: watch::Sender<usize>,
}

impl ClientContext for Assignments {}

impl ConsumerContext for Assignments {
    fn post_rebalance(&self, rebalance: &Rebalance<'_>) {
        // The eager protocol: an assignment replaces the whole set, a
        // revocation takes it all.
        match rebalance {
            Rebalance::Assign(assigned) => {
                self.partitions.send_replace(assigned.count());
            }
            Rebalance::Revoke(_) => {
                self.partitions.send_replace(0);
            }
            Rebalance::Error(_) => {}
        }
    }
}

/// One group member: a task polls it (rebalances run inside the poll)
/// and hands each record's (partition, payload) to the test.
struct Member {
    consumer: Arc<StreamConsumer<Assignments>>,
    partitions: watch::Receiver<usize>,
    records: mpsc::UnboundedReceiver<(i32, String)>,
    poller: tokio::task::JoinHandle<()>,
}

impl Member {
    fn join(servers: &str, group: &str, topic: &str) -> Member {
        let (tx, partitions) = watch::channel(0);
        let consumer: StreamConsumer<Assignments> = ClientConfig::new()
            .set("bootstrap.servers", servers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                queue_kafka::SESSION_TIMEOUT_MS.to_string(),
            )
            .create_with_context(Assignments { partitions: tx })
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let consumer = Arc::new(consumer);
        let (records_tx, records) = mpsc::unbounded_channel();
        let polled = consumer.clone();
        let poller = tokio::spawn(async move {
            loop {
                match polled.recv().await {
                    Ok(m) => {
                        let body =
                            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                        polled.commit_message(&m, CommitMode::Sync).expect("commit");
                        if records_tx.send((m.partition(), body)).is_err() {
                            return;
                        }
                    }
                    Err(e) => panic!("consumer error: {e}"),
                }
            }
        });
        Member {
            consumer,
            partitions,
            records,
            poller,
        }
    }

    async fn until_partitions(&mut self, want: impl Fn(usize) -> bool) -> usize {
        let got = tokio::time::timeout(DEADLINE, self.partitions.wait_for(|n| want(*n)))
            .await
            .expect("the rebalance finished in time")
            .expect("the member is polled");
        *got
    }

    /// Stop polling and leave the group (closing the consumer sends
    /// LeaveGroup, so the other member need not wait out the session).
    async fn leave(self) {
        self.poller.abort();
        let _ = self.poller.await;
        drop(self.records);
        let consumer = Arc::into_inner(self.consumer).expect("the poller let go");
        tokio::task::spawn_blocking(move || drop(consumer))
            .await
            .expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_and_take_over() {
    let Some(servers) = bootstrap() else { return };
    let topic = unique("probe-group");
    let group = unique("probe-group");
    create_topic(&servers, &topic).await;

    let mut a = Member::join(&servers, &group, &topic);
    let mut b = Member::join(&servers, &group, &topic);
    // Both members hold partitions and together hold all of them.
    tokio::join!(a.until_partitions(|n| n > 0), b.until_partitions(|n| n > 0));
    let (pa, pb) = (*a.partitions.borrow(), *b.partitions.borrow());
    assert_eq!(
        pa + pb,
        PARTITIONS as usize,
        "the two members split the partitions"
    );

    produce(&servers, &topic, "before", 200).await;
    let mut seen: BTreeMap<String, i32> = BTreeMap::new();
    let mut by_member: [BTreeSet<i32>; 2] = Default::default();
    while seen.len() < 200 {
        let (who, (partition, body)) = tokio::time::timeout(DEADLINE, async {
            tokio::select! {
                Some(r) = a.records.recv() => (0, r),
                Some(r) = b.records.recv() => (1, r),
            }
        })
        .await
        .expect("every record arrives in time");
        by_member[who].insert(partition);
        assert!(
            seen.insert(body, partition).is_none(),
            "each record reaches one member once"
        );
    }
    assert!(
        by_member[0].is_disjoint(&by_member[1]),
        "a partition is consumed by one member: {by_member:?}"
    );

    // One member leaves: the other takes every partition over and reads
    // on from the committed offsets (records produced after the leave
    // arrive, none of the committed ones again).
    b.leave().await;
    a.until_partitions(|n| n == PARTITIONS as usize).await;
    produce(&servers, &topic, "after", 40).await;
    let mut after = BTreeSet::new();
    while after.len() < 40 {
        let (_, body) = tokio::time::timeout(DEADLINE, a.records.recv())
            .await
            .expect("records after the takeover arrive")
            .expect("member a polls");
        assert!(
            !seen.contains_key(&body),
            "a committed record came again: {body}"
        );
        after.insert(body);
    }
    a.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_the_backend_uses() {
    let Some(servers) = bootstrap() else { return };
    let topic = unique("probe-admin");
    create_topic(&servers, &topic).await;

    // Headers and keys round-trip; one key always lands on one partition.
    let producer = producer(&servers);
    let mut partitions = BTreeSet::new();
    for i in 0..5 {
        let headers = OwnedHeaders::new().insert(Header {
            key: "queue-attempt",
            value: Some(&format!("{i}")),
        });
        let delivered = producer
            .send(
                FutureRecord::to(&topic)
                    .payload("body")
                    .key("same-key")
                    .headers(headers),
                DEADLINE,
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        partitions.insert(delivered.0);
    }
    assert_eq!(partitions.len(), 1, "one key, one partition");
    let partition = *partitions.first().expect("one");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", unique("probe-admin"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (low, high) = consumer
        .fetch_watermarks(&topic, partition, DEADLINE)
        .expect("watermarks");
    assert_eq!((low, high), (0, 5), "watermarks of the keyed partition");

    // Read the partition by assignment (no group join), check headers.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    for i in 0..5 {
        let m = tokio::time::timeout(DEADLINE, consumer.recv())
            .await
            .expect("a record in time")
            .expect("a record");
        assert_eq!(m.key(), Some(&b"same-key"[..]));
        let attempt = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "queue-attempt"))
            .and_then(|h| h.value)
            .expect("the header came back");
        assert_eq!(attempt, format!("{i}").as_bytes());
    }

    // Committed offsets are stored and read back.
    let mut commit = TopicPartitionList::new();
    commit
        .add_partition_offset(&topic, partition, Offset::Offset(3))
        .expect("tpl");
    consumer
        .commit(&commit, CommitMode::Sync)
        .expect("commit offset 3");
    let committed = consumer
        .committed_offsets(commit.clone(), DEADLINE)
        .expect("committed offsets");
    assert_eq!(
        committed
            .find_partition(&topic, partition)
            .map(|p| p.offset()),
        Some(Offset::Offset(3))
    );

    // The topic keeps its records forever.
    let described = admin(&servers)
        .describe_configs(
            [&ResourceSpecifier::Topic(&topic)],
            &AdminOptions::new().request_timeout(Some(DEADLINE)),
        )
        .await;
    match described {
        Ok(results) => {
            let config = results
                .into_iter()
                .next()
                .expect("one resource")
                .expect("the topic's config");
            let retention = config.get("retention.ms").and_then(|e| e.value.clone());
            eprintln!("probe: DescribeConfigs retention.ms = {retention:?}");
            if let Some(retention) = retention {
                assert_eq!(retention, "-1", "the topic keeps every record");
            }
        }
        Err(e) => eprintln!("probe: DescribeConfigs is not available: {e}"),
    }
    let deleted = admin(&servers)
        .delete_topics(
            &[&topic],
            &AdminOptions::new().operation_timeout(Some(DEADLINE)),
        )
        .await
        .expect("delete_topics");
    for result in deleted {
        result.expect("topic deleted");
    }
}
