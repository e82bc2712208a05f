//! A worker process for the crash-recovery test (`tests/crash_recovery.rs`).
//!
//! `crash-worker <url> <queue> [work-ms]`: connects the backend the URL names (any
//! backend this build has), runs a worker on `<queue>` whose handler prints
//! `start <n>` when job number `n` begins and `done <n>` when it ends, on
//! stdout, so the test
//! follows progress and collects what ran without any broker-specific
//! store. It runs until killed, or until stdin closes, when it shuts down
//! gracefully and prints `stopped`. Each job takes `work-ms`
//! milliseconds (default 5), so a kill or a rebalance lands mid-batch.

#![forbid(unsafe_code)]

use std::io::Write;
use std::time::Duration;

use queue::{Job, QueueName, Worker};
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, queue, work) = match &args[..] {
        [url, queue] => (url, queue, 5),
        [url, queue, work] => (url, queue, work.parse::<u64>()?),
        _ => return Err("usage: crash-worker <url> <queue> [work-ms]".into()),
    };
    let backend = queue::connect(url).await?;
    let queue = QueueName::new(queue)?;
    let worker = Worker::builder(backend, queue)
        .concurrency(32)
        .handler(move |job: Job<u32>| async move {
            {
                let mut out = std::io::stdout().lock();
                writeln!(out, "start {}", job.payload)?;
                out.flush()?;
            }
            // Some work, so the kill lands in the middle of the batch.
            tokio::time::sleep(Duration::from_millis(work)).await;
            let mut out = std::io::stdout().lock();
            writeln!(out, "done {}", job.payload)?;
            out.flush()?;
            Ok::<_, std::io::Error>(())
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
