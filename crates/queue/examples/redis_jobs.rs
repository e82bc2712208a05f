//! Jobs on Redis with their status in Redis: a scheduler submits typed
//! jobs, a worker runs them, and the status of each is read back from the
//! Redis job store, as any other process on the same Redis would see it.
//!
//! Run it against a local Redis with:
//!
//! ```sh
//! cargo run -p queue --features redis --example redis_jobs -- redis://127.0.0.1:6379
//! ```

use std::sync::Arc;
use std::time::Duration;

use queue::redis::RedisBackend;
use queue::{Job, JobOptions, JobScheduler, JobStatus, QueueName};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    let backend = RedisBackend::connect(&url).await?;
    let queue = QueueName::new("example-invoices")?;
    // Job status lives in Redis, under its own namespace.
    let store = Arc::new(backend.job_store().with_namespace("example")?);
    let scheduler = JobScheduler::new(Arc::new(backend.clone()), store.clone());

    let ids = [
        scheduler
            .submit(&queue, &120u32, &JobOptions::default())
            .await?,
        scheduler
            .submit(
                &queue,
                &7u32,
                &JobOptions::default().with_delay(Duration::from_millis(500)),
            )
            .await?,
    ];
    let worker = scheduler
        .worker(queue.clone())
        .handler(|job: Job<u32>| async move {
            // The "invoice total" with tax, as the job's result.
            Ok::<_, std::io::Error>(job.payload * 119 / 100)
        })
        .start()
        .await?;
    let mut events = worker.subscribe();
    while worker.stats().completed < ids.len() as u64 {
        events.recv().await?;
    }
    worker.shutdown().await?;
    for id in ids {
        let record = scheduler.status(id).await?.expect("tracked");
        assert_eq!(record.status, JobStatus::Completed);
        println!(
            "job {id}: {:?} after {} attempt(s), result {}",
            record.status,
            record.attempts,
            record.result.unwrap_or_default()
        );
    }
    println!("stats: {:?}", scheduler.stats().await?);
    // Leave nothing behind: the records and the queue.
    store.clear().await?;
    queue::Backend::admin(&backend).delete_queue(&queue).await?;
    Ok(())
}
