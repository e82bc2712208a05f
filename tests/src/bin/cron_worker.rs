//! A worker and scheduler process for the periodic-jobs test
//! (`tests/cron.rs`).
//!
//! `cron-worker <url> <queue> <lease-ms> <store-url> <namespace>`: runs a
//! scheduler (leader lease of `lease-ms`) over the schedules of a
//! coordination store (`store-url`: Redis, keys under `namespace`, or
//! PostgreSQL, in the URL's schema), and a worker
//! on `<queue>` whose handler prints `run <tick-ms> <job-id> <attempt>
//! <now-ms> <sent-ms>` for every job it runs (the tick the job stands
//! for, from its schedule header, and when the scheduler sent it). It prints `ready` once both run, and `leader` each
//! time its scheduler becomes the leader. It runs until killed, or until
//! stdin closes, when it shuts down gracefully and prints `stopped`.

#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use queue::schedules::{Schedules, HEADER_SCHEDULE_TICK};
use queue::{Coordination, Job, QueueName, Worker};
use tokio::io::AsyncReadExt;

fn line(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, lease, store_url, namespace] = &args[..] else {
        return Err("usage: cron-worker <url> <queue> <lease-ms> <store-url> <namespace>".into());
    };
    let backend = queue::connect(url).await?;
    let store: Arc<dyn Coordination> =
        queue_tests::coordination_store(store_url, namespace).await?;
    let worker = Worker::builder(backend.clone(), QueueName::new(queue)?)
        .concurrency(4)
        .handler(|job: Job<serde_json::Value>| async move {
            let tick = job
                .headers
                .get(HEADER_SCHEDULE_TICK)
                .map(ToString::to_string)
                .unwrap_or_default();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let created = job
                .created_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            line(&format!(
                "run {tick} {} {} {now} {created}",
                job.id, job.attempt
            ))
        })
        .start()
        .await?;
    let runner = Schedules::with_store(backend, store)
        .runner()
        .lease_ttl(Duration::from_millis(lease.parse()?))
        .start()
        .await?;
    line("ready")?;
    let runner = Arc::new(runner);
    let watch = runner.clone();
    tokio::spawn(async move {
        let mut leading = false;
        loop {
            let now = watch.is_leader();
            if now && !leading {
                let _ = line("leader");
            }
            leading = now;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Run until stdin closes (the test drops it) or the process is killed.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(runner);
    let report = worker.shutdown().await?;
    println!("stopped {report:?}");
    Ok(())
}
