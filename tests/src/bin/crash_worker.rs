//! A worker process for the crash-recovery test (`tests/crash_recovery.rs`).
//!
//! `crash-worker <redis-url> <queue> <done-set-key>`: runs a worker on
//! `<queue>` whose handler adds the job's number to the Redis set
//! `<done-set-key>` and prints `done <n>` on stdout, one line per job, so
//! the test follows progress as events. It runs until killed, or until
//! stdin closes, when it shuts down gracefully and prints `stopped`.

#![forbid(unsafe_code)]

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use queue_core::{Backend, Job, QueueName};
use queue_redis::RedisBackend;
use queue_worker::Worker;
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, done_key] = &args[..] else {
        return Err("usage: crash-worker <redis-url> <queue> <done-set-key>".into());
    };
    let backend: Arc<dyn Backend> = Arc::new(RedisBackend::connect(url).await?);
    let queue = QueueName::new(queue)?;
    let done = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let done_key = done_key.clone();
    let worker = Worker::builder(backend, queue)
        .concurrency(32)
        .handler(move |job: Job<u32>| {
            let (mut done, done_key) = (done.clone(), done_key.clone());
            async move {
                // Some work, so the kill lands in the middle of the batch.
                tokio::time::sleep(Duration::from_millis(5)).await;
                redis::cmd("SADD")
                    .arg(&done_key)
                    .arg(job.payload)
                    .query_async::<()>(&mut done)
                    .await?;
                let mut out = std::io::stdout().lock();
                writeln!(out, "done {}", job.payload)?;
                out.flush()?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }
        })
        .start()
        .await?;
    // Run until stdin closes (the test drops it) or the process is killed.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    let report = worker.shutdown().await?;
    println!("stopped {report:?}");
    Ok(())
}
