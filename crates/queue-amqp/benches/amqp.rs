//! `cargo xtask bench amqp`: this backend through the worker pool beside a
//! raw lapin baseline doing the same broker work, against one RabbitMQ
//! (`QUEUE_BENCH_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672`).
//!
//! - raw baseline: a durable queue, persistent messages published with
//!   confirms awaited per 1,000, then one consumer with prefetch 100 acking
//!   each message.
//! - backend: 50,000 jobs of 100 bytes through the worker pool
//!   (concurrency 100, no-op handler): enqueue and processing rates.
//!   Each worker run is also timed end to end, from its start until
//!   `shutdown()` returned (what a test, a deploy or a CLI run waits for).
//! - raw pickup: lapin publishes 2,000 messages/s (confirms on, open load)
//!   to one consumer (prefetch 100, ack each); publish-to-delivery latency.
//! - pickup latency: a producer offers 2,000 single sends/s (open load) to a
//!   worker; p50/p99 from send to handler start.
//! - backlog: `QUEUE_BENCH_BACKLOG` queued jobs (default 1,000,000)
//!   processed, against 10,000 (the median of three).
//! - memory: the broker's Erlang memory (`rabbitmqctl status`) before and
//!   after 100,000 queued jobs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use queue_amqp::AmqpBackend;
use queue_core::{Backend, Job, JobOptions, QueueName};
use queue_testkit::bench;

const JOBS: u64 = 50_000;
const PAYLOAD: usize = 100;
const CONCURRENCY: usize = 100;

fn queue(name: &str) -> QueueName {
    QueueName::new(format!("bench-{name}")).expect("queue name")
}

/// The broker URL for a plain lapin client (no parameters of ours).
fn plain(url: &str) -> String {
    let mut url = url::Url::parse(url).expect("amqp URL");
    url.set_query(None);
    if url.path().is_empty() || url.path() == "/" {
        url.set_path("/%2f");
    }
    url.to_string()
}

async fn raw_baseline(url: &str) -> (f64, f64) {
    let conn = Connection::connect(&plain(url), ConnectionProperties::default())
        .await
        .expect("connect lapin");
    let channel = conn.create_channel().await.expect("channel");
    let name = "bench-raw";
    let _ = channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await;
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let body = vec![b'x'; PAYLOAD];
    let started = Instant::now();
    for _ in 0..JOBS / 1000 {
        for _ in 0..1000 {
            // Its confirm is awaited with the others by `wait_for_confirms`.
            drop(
                channel
                    .basic_publish(
                        "".into(),
                        name.into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .expect("publish"),
            );
        }
        channel.wait_for_confirms().await.expect("confirms");
    }
    let enqueue = JOBS as f64 / started.elapsed().as_secs_f64();
    let consumer_channel = conn.create_channel().await.expect("channel");
    consumer_channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let started = Instant::now();
    let mut consumer = consumer_channel
        .basic_consume(
            name.into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut done = 0;
    while done < JOBS {
        let delivery = consumer.next().await.expect("stream").expect("delivery");
        consumer_channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await
            .expect("ack");
        done += 1;
    }
    let processed = JOBS as f64 / started.elapsed().as_secs_f64();
    let _ = channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    (enqueue, processed)
}

/// The raw pickup baseline: a lapin publisher (confirms on, not awaited
/// before the next publish) offers `RATE` messages/s to one consumer with
/// prefetch 100 acking each; latency from publish to delivery.
async fn raw_pickup(url: &str) -> bench::Latency {
    const RATE: u64 = 2_000;
    let conn = Connection::connect(&plain(url), ConnectionProperties::default())
        .await
        .expect("connect lapin");
    let channel = conn.create_channel().await.expect("channel");
    let name = "bench-raw-pickup";
    let _ = channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await;
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let consumer_channel = conn.create_channel().await.expect("channel");
    consumer_channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consumer_channel
        .basic_consume(
            name.into(),
            "raw-pickup".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let base = Instant::now();
    let total = RATE * 5;
    let receiving = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(total as usize);
        while (samples.len() as u64) < total {
            let delivery = consumer.next().await.expect("stream").expect("delivery");
            let now = base.elapsed().as_nanos() as u64;
            let sent = u64::from_be_bytes(delivery.data[..8].try_into().expect("timestamp"));
            samples.push(now.saturating_sub(sent));
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
        }
        samples
    });
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut confirms = futures_util::stream::FuturesUnordered::<lapin::PublisherConfirm>::new();
    let sending = Instant::now();
    for _ in 0..total / (RATE / 1000) {
        loop {
            tokio::select! {
                biased;
                _ = interval.tick() => break,
                Some(confirm) = confirms.next(), if !confirms.is_empty() => {
                    let _: lapin::Confirmation = confirm.expect("confirm");
                }
            }
        }
        for _ in 0..RATE / 1000 {
            let body = (base.elapsed().as_nanos() as u64).to_be_bytes();
            let confirm = channel
                .basic_publish(
                    "".into(),
                    name.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
    }
    while let Some(confirm) = confirms.next().await {
        let _: lapin::Confirmation = confirm.expect("confirm");
    }
    let sent_for = sending.elapsed();
    let samples = receiving.await.expect("receiver");
    let _ = channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    bench::Latency::of(RATE, total, sent_for, samples)
}

/// The broker's Erlang memory, from `rabbitmqctl status`.
fn broker_memory() -> Option<u64> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["status", "--formatter", "json"])
        .output()
        .ok()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    status["memory"]["total"]["erlang"].as_u64()
}

/// Queue `jobs` jobs of `PAYLOAD` bytes, then process them; returns jobs/s.
async fn backlog(backend: &Arc<dyn Backend>, jobs: u64) -> f64 {
    let q = queue(&format!("backlog-{jobs}"));
    backend.admin().delete_queue(&q).await.expect("delete");
    let run = bench::worker_run(backend.clone(), &q, jobs, PAYLOAD, CONCURRENCY)
        .await
        .expect("backlog run");
    backend.admin().delete_queue(&q).await.expect("delete");
    eprintln!(
        "  backlog {jobs}: enqueue {:.0}/s, processed {:.0}/s",
        run.enqueue_per_second, run.processed_per_second
    );
    run.processed_per_second
}

fn main() {
    let url = std::env::var("QUEUE_BENCH_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".to_owned());
    let big: u64 = std::env::var("QUEUE_BENCH_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    bench::run(async move {
        let (raw_enqueue, raw_processed) = raw_baseline(&url).await;
        eprintln!("raw baseline: enqueue {raw_enqueue:.0}/s, processed {raw_processed:.0}/s");
        let backend: Arc<dyn Backend> =
            Arc::new(AmqpBackend::connect(&url).await.expect("connect backend"));

        let q = queue("worker");
        backend.admin().delete_queue(&q).await.expect("delete");
        let run = bench::worker_run(backend.clone(), &q, JOBS, PAYLOAD, CONCURRENCY)
            .await
            .expect("worker run");
        backend.admin().delete_queue(&q).await.expect("delete");
        eprintln!(
            "backend: enqueue {:.0}/s, processed {:.0}/s; {}",
            run.enqueue_per_second,
            run.processed_per_second,
            run.end_to_end()
        );

        let raw_latency = raw_pickup(&url).await;
        eprintln!(
            "raw pickup at 2,000 msgs/s (kept {:.0}/s): p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            raw_latency.achieved_rate, raw_latency.p50_us, raw_latency.p99_us, raw_latency.max_us
        );
        let q = queue("pickup");
        backend.admin().delete_queue(&q).await.expect("delete");
        let latency = bench::worker_pickup_latency(
            backend.clone(),
            &q,
            2_000,
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

        let q = queue("memory");
        backend.admin().delete_queue(&q).await.expect("delete");
        let producer = backend.producer(&q).await.expect("producer");
        let before = broker_memory();
        let body = "x".repeat(PAYLOAD - 2);
        for _ in 0..100 {
            let batch = (0..1000)
                .map(|_| Job::encode(&body, &JobOptions::default()).expect("encode"))
                .collect();
            producer.send_batch(batch).await.expect("send");
        }
        let after = broker_memory();
        backend.admin().delete_queue(&q).await.expect("delete");
        let per_job = match (before, after) {
            (Some(before), Some(after)) => after.saturating_sub(before) as f64 / 100_000.0,
            _ => f64::NAN,
        };
        eprintln!("rabbitmq memory per queued job: {per_job:.0} bytes ({PAYLOAD}-byte payload)");
        drop(producer);

        let mut smalls = Vec::new();
        for _ in 0..3 {
            smalls.push(backlog(&backend, 10_000).await);
        }
        smalls.sort_by(f64::total_cmp);
        let small = smalls[1];
        let large = backlog(&backend, big).await;
        let ratio = large / small;
        eprintln!("backlog ratio ({big} vs 10,000): {ratio:.2}");

        println!();
        println!("| run | enqueue jobs/s | processed jobs/s | vs raw |");
        println!("| --- | ---: | ---: | ---: |");
        println!(
            "| raw lapin (confirms per 1,000; prefetch 100, ack each) | {raw_enqueue:.0} | {raw_processed:.0} | 1.00 |"
        );
        println!(
            "| queue-amqp worker pool (concurrency 100, batches of 1,000) | {:.0} | {:.0} | {:.2} |",
            run.enqueue_per_second,
            run.processed_per_second,
            run.processed_per_second / raw_processed
        );
        println!("queue-amqp worker pool: {}", run.end_to_end());
        println!(
            "raw lapin pickup p50 {:.2} ms, p99 {:.2} ms at 2,000 msgs/s",
            raw_latency.p50_us / 1000.0,
            raw_latency.p99_us / 1000.0
        );
        println!(
            "pickup p50 {:.2} ms, p99 {:.2} ms at 2,000 jobs/s; backlog {big}/10k ratio {ratio:.2}; {per_job:.0} bytes of RabbitMQ memory per queued job",
            latency.p50_us / 1000.0,
            latency.p99_us / 1000.0
        );
        let checks = [
            (
                "processed >= 1.0 x raw",
                run.processed_per_second >= raw_processed,
            ),
            (
                "enqueue >= 1.0 x raw",
                run.enqueue_per_second >= raw_enqueue,
            ),
            ("pickup p99 <= 2 ms", latency.p99_us <= 2_000.0),
            (
                "offered rate kept >= 1,900 jobs/s",
                latency.achieved_rate >= 1_900.0,
            ),
            ("backlog large >= 0.9 x backlog 10k", ratio >= 0.9),
        ];
        for (target, met) in &checks {
            println!("target {target}: {}", if *met { "met" } else { "MISSED" });
        }
        bench::write_json(
            "amqp",
            &serde_json::json!({
                "backend": "amqp",
                "raw": { "enqueue_per_second": raw_enqueue, "processed_per_second": raw_processed },
                "worker": run,
                "pickup": latency,
                "raw_pickup": raw_latency,
                "backlog": { "jobs_10k_per_second": small, "jobs_large": big, "jobs_large_per_second": large, "ratio": ratio },
                "memory_bytes_per_job": per_job,
                "targets_met": checks.iter().all(|(_, met)| *met),
            }),
        );
    });
}
