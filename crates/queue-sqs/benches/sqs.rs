//! `cargo xtask bench sqs`: this backend through the worker pool beside raw
//! aws-sdk-sqs doing the same work, on one SQS-compatible server
//! (`QUEUE_BENCH_SQS_URL`; xtask starts moto), with the HTTP requests of
//! each counted by the SDK interceptor (`SqsBackend::requests`).
//!
//! - raw, batched: `SendMessageBatch` of ten (eight in flight), then four
//!   pollers each doing `ReceiveMessage` of ten (1 s long poll) and a
//!   `DeleteMessageBatch` of what they got: the best a hand-written SQS
//!   consumer does.
//! - raw, one request per call: `SendMessage`, `ReceiveMessage` of one,
//!   `DeleteMessage`, for 500 jobs: what a library without batching costs.
//! - backend: `QUEUE_BENCH_SQS_JOBS` jobs (default 5,000) of 100 bytes
//!   sent with `send_batch`, then run by the worker pool (concurrency 40,
//!   `QUEUE_BENCH_SQS_CONCURRENCY` to change it: the raw pollers hold 40
//!   messages at a time; no-op handler). Also timed end to end, from its
//!   start until `shutdown()` returned (what a test, a deploy or a CLI run
//!   waits for).
//!
//! Both raw runs use the backend's own SDK client, so the HTTP stack is
//! the same and only the way of calling SQS differs.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
use futures_util::stream::{self, StreamExt};
use queue_core::{Backend, QueueName};
use queue_sqs::SqsBackend;
use queue_testkit::bench;

const PAYLOAD: usize = 100;
const CONCURRENCY: usize = 40;
const PER_CALL_JOBS: u64 = 500;

/// One raw run: rates and requests per job.
struct Raw {
    enqueue_per_second: f64,
    processed_per_second: f64,
    requests_per_job: f64,
}

fn suffix() -> String {
    let id = queue_core::MessageId::new().as_uuid().simple().to_string();
    id[20..].to_owned()
}

/// The backend's SDK client, a fresh queue named `prefix-…` and a body of
/// `PAYLOAD` bytes, for a raw run.
async fn raw_queue(backend: &SqsBackend, prefix: &str) -> (aws_sdk_sqs::Client, String, String) {
    let client = backend.client().clone();
    let url = client
        .create_queue()
        .queue_name(format!("{prefix}-{}", suffix()))
        .send()
        .await
        .expect("create the raw queue")
        .queue_url()
        .expect("queue URL")
        .to_owned();
    (client, url, "x".repeat(PAYLOAD))
}

async fn raw_batched(backend: &SqsBackend, jobs: u64) -> Raw {
    let (client, url, body) = raw_queue(backend, "bench-raw").await;
    let counter = backend.requests();
    let before = counter.get();
    let started = Instant::now();
    stream::iter(0..jobs.div_ceil(10))
        .map(|chunk| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            async move {
                let entries = (0..10u64.min(jobs - chunk * 10))
                    .map(|i| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(&body)
                            .build()
                            .expect("entry")
                    })
                    .collect();
                let sent = client
                    .send_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .expect("send batch");
                assert!(sent.failed().is_empty(), "raw send entries failed");
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let enqueue_seconds = started.elapsed().as_secs_f64();
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let pollers = (0..4).map(|_| {
        let (client, url, done) = (client.clone(), url.clone(), done.clone());
        tokio::spawn(async move {
            while done.load(std::sync::atomic::Ordering::Relaxed) < jobs {
                let got = client
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .visibility_timeout(60)
                    .send()
                    .await
                    .expect("receive");
                let messages = got.messages();
                if messages.is_empty() {
                    continue;
                }
                let entries = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                            .expect("entry")
                    })
                    .collect();
                client
                    .delete_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .expect("delete batch");
                done.fetch_add(messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        })
    });
    for poller in pollers.collect::<Vec<_>>() {
        poller.await.expect("poller");
    }
    let processed_seconds = started.elapsed().as_secs_f64();
    let requests = counter.get() - before;
    let _ = client.delete_queue().queue_url(&url).send().await;
    Raw {
        enqueue_per_second: jobs as f64 / enqueue_seconds,
        processed_per_second: jobs as f64 / processed_seconds,
        requests_per_job: requests as f64 / jobs as f64,
    }
}

async fn raw_per_call(backend: &SqsBackend, jobs: u64) -> Raw {
    let (client, url, body) = raw_queue(backend, "bench-call").await;
    let counter = backend.requests();
    let before = counter.get();
    let started = Instant::now();
    for _ in 0..jobs {
        client
            .send_message()
            .queue_url(&url)
            .message_body(&body)
            .send()
            .await
            .expect("send");
    }
    let enqueue_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut done = 0;
    while done < jobs {
        let got = client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(1)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        for m in got.messages() {
            client
                .delete_message()
                .queue_url(&url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("delete");
            done += 1;
        }
    }
    let processed_seconds = started.elapsed().as_secs_f64();
    let requests = counter.get() - before;
    let _ = client.delete_queue().queue_url(&url).send().await;
    Raw {
        enqueue_per_second: jobs as f64 / enqueue_seconds,
        processed_per_second: jobs as f64 / processed_seconds,
        requests_per_job: requests as f64 / jobs as f64,
    }
}

fn main() {
    let url = std::env::var("QUEUE_BENCH_SQS_URL")
        .expect("QUEUE_BENCH_SQS_URL (cargo xtask bench sqs sets it)");
    let jobs: u64 = std::env::var("QUEUE_BENCH_SQS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    bench::run(async move {
        let backend = SqsBackend::connect(&url).await.expect("connect");
        eprintln!("raw aws-sdk-sqs, batched: {jobs} jobs");
        let raw = raw_batched(&backend, jobs).await;
        eprintln!("raw aws-sdk-sqs, one request per call: {PER_CALL_JOBS} jobs");
        let per_call = raw_per_call(&backend, PER_CALL_JOBS).await;

        let concurrency: usize = std::env::var("QUEUE_BENCH_SQS_CONCURRENCY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CONCURRENCY);
        eprintln!("queue-sqs worker: {jobs} jobs, concurrency {concurrency}");
        let queue = QueueName::new(format!("bench-worker-{}", suffix())).expect("queue name");
        let shared: Arc<dyn Backend> = Arc::new(backend.clone());
        shared
            .admin()
            .ensure_queue(&queue, &Default::default())
            .await
            .expect("ensure queue");
        let before = backend.requests().get();
        let before_ops = backend.requests().by_operation();
        let run = bench::worker_run(shared.clone(), &queue, jobs, PAYLOAD, concurrency)
            .await
            .expect("worker run");
        let ours_requests = (backend.requests().get() - before) as f64 / jobs as f64;
        let per_operation: std::collections::BTreeMap<String, f64> = backend
            .requests()
            .by_operation()
            .into_iter()
            .map(|(op, n)| {
                let was = before_ops.get(&op).copied().unwrap_or(0);
                (op, (n - was) as f64 / jobs as f64)
            })
            .filter(|(_, per_job)| *per_job > 0.0)
            .collect();
        let _ = shared.admin().delete_queue(&queue).await;

        println!();
        println!(
            "| run | enqueue jobs/s | processed jobs/s | processed vs raw | requests per job |"
        );
        println!("| --- | ---: | ---: | ---: | ---: |");
        println!(
            "| raw aws-sdk-sqs, batched (10 per call; 4 pollers) | {:.0} | {:.0} | 1.00 | {:.2} |",
            raw.enqueue_per_second, raw.processed_per_second, raw.requests_per_job
        );
        println!(
            "| raw aws-sdk-sqs, one request per call | {:.0} | {:.0} | {:.2} | {:.2} |",
            per_call.enqueue_per_second,
            per_call.processed_per_second,
            per_call.processed_per_second / raw.processed_per_second,
            per_call.requests_per_job
        );
        println!(
            "| queue-sqs worker (concurrency {concurrency}) | {:.0} | {:.0} | {:.2} | {:.2} |",
            run.enqueue_per_second,
            run.processed_per_second,
            run.processed_per_second / raw.processed_per_second,
            ours_requests
        );
        println!("queue-sqs worker: {}", run.end_to_end());
        println!();
        println!("queue-sqs worker, requests per job by operation:");
        for (op, per_job) in &per_operation {
            println!("- {op}: {per_job:.3}");
        }
        bench::write_json(
            "sqs",
            &serde_json::json!({
                "jobs": jobs,
                "raw_batched": {
                    "enqueue_per_second": raw.enqueue_per_second,
                    "processed_per_second": raw.processed_per_second,
                    "requests_per_job": raw.requests_per_job,
                },
                "raw_per_call": {
                    "jobs": PER_CALL_JOBS,
                    "enqueue_per_second": per_call.enqueue_per_second,
                    "processed_per_second": per_call.processed_per_second,
                    "requests_per_job": per_call.requests_per_job,
                },
                "worker": run,
                "worker_requests_per_job": ours_requests,
                "worker_requests_per_job_by_operation": per_operation,
            }),
        );
    });
}
