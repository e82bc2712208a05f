//! A worker process for the flow-control tests (`tests/flow_control.rs`).
//!
//! `flow-worker <url> <queue> rate <limit> <period-ms> [per-key]`: a worker
//! of concurrency 10 whose starts are limited to `limit` per `period-ms`
//! across every process (per value of the `tenant` header with
//! `per-key`).
//!
//! `flow-worker <url> <queue> concurrency <limit> <slot-lease-ms> <work-ms>`:
//! a worker of concurrency 10 that runs at most `limit` jobs at once
//! across every process, each taking `work-ms`.
//!
//! `flow-worker <url> <queue> groups <limit> <work-ms>`: a worker of
//! concurrency 10 that runs at most `limit` jobs of one group at once
//! across every process (`0`: no limit; groups take turns either way),
//! each taking `work-ms`. On RabbitMQ, SQS and Kafka the groups take
//! turns through the coordination store (`queue::with_store`).
//!
//! The coordination store is the one `QUEUE_COORDINATION_URL` names, else
//! the backend's own. Each job prints `start <n> <µs>` when it begins and
//! `done <n> <µs>` when it ends (microseconds since the Unix epoch, so
//! lines from several processes can be put in order), on stdout. The
//! process runs until killed, or until stdin closes, when it shuts down
//! gracefully and prints `stopped`.

#![forbid(unsafe_code)]

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use queue::coordination::Rate;
use queue::{Job, QueueName, RateKey, Worker};
use tokio::io::AsyncReadExt;

fn print(what: &str, job: u32) -> std::io::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{what} {job} {now}")?;
    out.flush()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: flow-worker <url> <queue> rate <limit> <period-ms> [per-key] | \
                 concurrency <limit> <slot-lease-ms> <work-ms> | groups <limit> <work-ms>";
    let [url, queue, mode, rest @ ..] = &args[..] else {
        return Err(usage.into());
    };
    let mut backend = queue::connect(url).await?;
    let store = queue::coordination_for(&*backend).await?;
    if let (Some(store), "groups") = (&store, mode.as_str()) {
        // Groups take turns natively on Redis and PostgreSQL, through the
        // store elsewhere.
        backend = queue::with_store(backend, store.clone())?;
    }
    let mut builder = Worker::builder(backend, QueueName::new(queue)?).concurrency(10);
    if let Some(store) = store {
        builder = builder.coordination(store);
    }
    let mut work = Duration::ZERO;
    builder = match (mode.as_str(), rest) {
        ("rate", [limit, period, keyed @ ..]) => {
            let rate = Rate::new(limit.parse()?, Duration::from_millis(period.parse()?))?;
            if keyed.first().is_some_and(|k| k == "per-key") {
                builder.rate_limit_per_key(rate, RateKey::Header("tenant".into()))
            } else {
                builder.rate_limit(rate)
            }
        }
        ("concurrency", [limit, lease, work_ms]) => {
            work = Duration::from_millis(work_ms.parse()?);
            builder
                .global_concurrency(limit.parse()?)
                .slot_lease(Duration::from_millis(lease.parse()?))
        }
        ("groups", [limit, work_ms]) => {
            work = Duration::from_millis(work_ms.parse()?);
            match limit.parse()? {
                0 => builder,
                limit => builder.group_concurrency(limit),
            }
        }
        _ => return Err(usage.into()),
    };
    let worker = builder
        .handler(move |job: Job<u32>| async move {
            print("start", job.payload)?;
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            print("done", job.payload)?;
            Ok::<_, std::io::Error>(())
        })
        .start()
        .await?;
    println!("ready");
    // Run until stdin closes (the test drops it) or the process is killed.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    let report = worker.shutdown().await?;
    println!("stopped {report:?}");
    Ok(())
}
