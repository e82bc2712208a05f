//! `cargo xtask bench kafka`: this backend through the worker pool beside a
//! raw rdkafka baseline doing the same broker work, against one
//! Kafka-protocol broker (`QUEUE_BENCH_KAFKA_URL`; xtask starts tansu).
//!
//! - raw baseline: a `FutureProducer` with `acks=all` sends
//!   `QUEUE_BENCH_KAFKA_JOBS` records (default 100,000) of 100 bytes, 1,000
//!   in flight and awaited before the next 1,000; then a `StreamConsumer`
//!   of a fresh group reads them from the earliest offset, committing
//!   (asynchronously) every 1,000 records. Both on a topic of the
//!   backend's partition count; the consumer is timed from its subscribe,
//!   group join included.
//! - backend: as many jobs of 100 bytes with `send_batch` of 1,000 (the
//!   backend's idempotent producer, `acks=all`), then the worker pool
//!   (concurrency 100, no-op handler), timed from its start (group join
//!   included) to the last completion, and end to end, until `shutdown()`
//!   returned (what a test, a deploy or a CLI run waits for).
//! - raw pickup: the same producer offers 2,000 records/s (open load) to
//!   one `StreamConsumer`; latency from send to receipt.
//! - pickup: a producer offers 2,000 single sends/s to a worker; p50/p99
//!   from send to handler start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use queue_core::{Backend, QueueName};
use queue_kafka::KafkaBackend;
use queue_testkit::bench;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message as _;

const PAYLOAD: usize = 100;
const CONCURRENCY: usize = 100;
/// Partitions of the raw topics: the backend's default.
const PARTITIONS: i32 = 4;
const PICKUP_RATE: u64 = 2_000;
const DEADLINE: Duration = Duration::from_secs(60);

fn queue(name: &str) -> QueueName {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    QueueName::new(format!("bench-{name}-{nanos}")).expect("queue name")
}

fn client(servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", servers)
        .set("log_level", "3");
    config
}

async fn create_topic(servers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = client(servers).create().expect("admin client");
    let new =
        NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1)).set("retention.ms", "-1");
    for result in admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(DEADLINE)),
        )
        .await
        .expect("create_topics")
    {
        result.expect("topic created");
    }
}

async fn delete_topic(servers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = client(servers).create().expect("admin client");
    let _ = admin
        .delete_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(DEADLINE)),
        )
        .await;
}

fn producer(servers: &str) -> FutureProducer {
    client(servers)
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()
        .expect("producer")
}

/// A consumer of a fresh group from the earliest offset, committing by hand.
fn consumer(servers: &str, group: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = client(servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// The raw baseline: (enqueue, processed) records per second.
async fn raw_baseline(servers: &str, jobs: u64) -> (f64, f64) {
    let topic = format!("bench-raw-{}", std::process::id());
    create_topic(servers, &topic).await;
    let producer = producer(servers);
    let body = vec![b'x'; PAYLOAD];
    let started = Instant::now();
    let mut sent = 0;
    while sent < jobs {
        let n = (jobs - sent).min(1000);
        let mut acks: FuturesUnordered<_> = (0..n)
            .map(|_| {
                producer.send(
                    FutureRecord::<(), [u8]>::to(&topic).payload(&body),
                    DEADLINE,
                )
            })
            .collect();
        while let Some(ack) = acks.next().await {
            ack.map_err(|(e, _)| e).expect("produce");
        }
        sent += n;
    }
    let enqueue = jobs as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let consumer = consumer(servers, &format!("{topic}.group"), &topic);
    let mut done = 0u64;
    while done < jobs {
        let record = tokio::time::timeout(DEADLINE, consumer.recv())
            .await
            .expect("records keep coming")
            .expect("record");
        drop(record);
        done += 1;
        if done.is_multiple_of(1000) {
            consumer
                .commit_consumer_state(CommitMode::Async)
                .expect("commit");
        }
    }
    let processed = jobs as f64 / started.elapsed().as_secs_f64();
    drop(consumer);
    delete_topic(servers, &topic).await;
    (enqueue, processed)
}

/// The raw pickup baseline: `PICKUP_RATE` records/s offered for five
/// seconds to one consumer; latency from send to receipt.
async fn raw_pickup(servers: &str) -> bench::Latency {
    let topic = format!("bench-raw-pickup-{}", std::process::id());
    create_topic(servers, &topic).await;
    let consumer = consumer(servers, &format!("{topic}.group"), &topic);
    // Wait for the group join, so the latency is the steady state's: the
    // worker's run starts its clock after its join too.
    let deadline = Instant::now() + DEADLINE;
    while consumer.assignment().map_or(0, |a| a.count()) == 0 && Instant::now() < deadline {
        // No event for "assigned" without a context: poll the stream.
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    let producer = producer(servers);
    let base = Instant::now();
    let total = PICKUP_RATE * 5;
    let receiving = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(total as usize);
        while (samples.len() as u64) < total {
            let record = tokio::time::timeout(DEADLINE, consumer.recv())
                .await
                .expect("records keep coming")
                .expect("record");
            let now = base.elapsed().as_nanos() as u64;
            let payload = record.payload().expect("payload");
            let sent = u64::from_be_bytes(payload[..8].try_into().expect("timestamp"));
            samples.push(now.saturating_sub(sent));
        }
        samples
    });
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acks = FuturesUnordered::new();
    let sending = Instant::now();
    for _ in 0..total / (PICKUP_RATE / 1000) {
        loop {
            tokio::select! {
                biased;
                _ = interval.tick() => break,
                Some(ack) = acks.next(), if !acks.is_empty() => {
                    let _ = ack;
                }
            }
        }
        for _ in 0..PICKUP_RATE / 1000 {
            let body = (base.elapsed().as_nanos() as u64).to_be_bytes();
            let queued = producer
                .send_result(FutureRecord::<(), [u8]>::to(&topic).payload(&body[..]))
                .map_err(|(e, _)| e)
                .expect("queue a record");
            acks.push(queued);
        }
    }
    while let Some(ack) = acks.next().await {
        ack.expect("delivery report")
            .map_err(|(e, _)| e)
            .expect("produce");
    }
    let sent_for = sending.elapsed();
    let samples = receiving.await.expect("receiver");
    delete_topic(servers, &topic).await;
    bench::Latency::of(PICKUP_RATE, total, sent_for, samples)
}

fn main() {
    let url = std::env::var("QUEUE_BENCH_KAFKA_URL")
        .unwrap_or_else(|_| "kafka://127.0.0.1:9092".to_owned());
    let jobs: u64 = std::env::var("QUEUE_BENCH_KAFKA_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let servers = queue_kafka::bootstrap_servers(&url).expect("QUEUE_BENCH_KAFKA_URL parses");
    bench::run(async move {
        let (raw_enqueue, raw_processed) = raw_baseline(&servers, jobs).await;
        eprintln!("raw baseline: enqueue {raw_enqueue:.0}/s, processed {raw_processed:.0}/s");
        let backend: Arc<dyn Backend> =
            Arc::new(KafkaBackend::connect(&url).await.expect("connect backend"));

        let q = queue("worker");
        let run = bench::worker_run(backend.clone(), &q, jobs, PAYLOAD, CONCURRENCY)
            .await
            .expect("worker run");
        backend.admin().delete_queue(&q).await.expect("delete");
        eprintln!(
            "backend: enqueue {:.0}/s, processed {:.0}/s; {}",
            run.enqueue_per_second,
            run.processed_per_second,
            run.end_to_end()
        );

        let raw_latency = raw_pickup(&servers).await;
        eprintln!(
            "raw pickup at 2,000 records/s (kept {:.0}/s): p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            raw_latency.achieved_rate, raw_latency.p50_us, raw_latency.p99_us, raw_latency.max_us
        );
        let q = queue("pickup");
        let latency = bench::worker_pickup_latency(
            backend.clone(),
            &q,
            PICKUP_RATE,
            Duration::from_secs(5),
            CONCURRENCY,
        )
        .await
        .expect("pickup run");
        backend.admin().delete_queue(&q).await.expect("delete");
        eprintln!(
            "pickup at 2,000 jobs/s (kept {:.0}/s): p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            latency.achieved_rate, latency.p50_us, latency.p99_us, latency.max_us
        );

        println!();
        println!("| run | enqueue jobs/s | processed jobs/s | vs raw (enqueue, processed) |");
        println!("| --- | ---: | ---: | ---: |");
        println!(
            "| raw rdkafka (acks=all, 1,000 in flight; commit every 1,000) | {raw_enqueue:.0} | {raw_processed:.0} | 1.00, 1.00 |"
        );
        println!(
            "| queue-kafka worker pool (concurrency {CONCURRENCY}, batches of 1,000) | {:.0} | {:.0} | {:.2}, {:.2} |",
            run.enqueue_per_second,
            run.processed_per_second,
            run.enqueue_per_second / raw_enqueue,
            run.processed_per_second / raw_processed
        );
        println!("queue-kafka worker pool: {}", run.end_to_end());
        println!(
            "raw rdkafka pickup p50 {:.2} ms, p99 {:.2} ms at 2,000 records/s; worker pickup p50 {:.2} ms, p99 {:.2} ms at 2,000 jobs/s",
            raw_latency.p50_us / 1000.0,
            raw_latency.p99_us / 1000.0,
            latency.p50_us / 1000.0,
            latency.p99_us / 1000.0
        );
        let checks = [
            (
                "enqueue >= 0.9 x raw",
                run.enqueue_per_second >= 0.9 * raw_enqueue,
            ),
            (
                "processed >= 0.9 x raw",
                run.processed_per_second >= 0.9 * raw_processed,
            ),
            (
                "offered rate kept >= 1,900 jobs/s",
                latency.achieved_rate >= 1_900.0,
            ),
        ];
        for (target, met) in &checks {
            println!("target {target}: {}", if *met { "met" } else { "MISSED" });
        }
        bench::write_json(
            "kafka",
            &serde_json::json!({
                "backend": "kafka",
                "jobs": jobs,
                "raw": { "enqueue_per_second": raw_enqueue, "processed_per_second": raw_processed },
                "worker": run,
                "pickup": latency,
                "raw_pickup": raw_latency,
                "targets_met": checks.iter().all(|(_, met)| *met),
            }),
        );
    });
}
