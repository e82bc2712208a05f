//! Graceful shutdown: a worker runs until Ctrl-C (or for `--seconds N`),
//! then stops fetching, lets running jobs finish within its grace period,
//! stops the ones that would take longer and returns them to the queue, and
//! prints the `ShutdownReport`. Jobs not yet started stay in the queue for
//! the next worker.
//!
//! Run it with (stop it with Ctrl-C):
//!
//! ```sh
//! cargo run -p queue --example graceful_shutdown
//! ```
//!
//! or, without a terminal, for a fixed time:
//!
//! ```sh
//! cargo run -p queue --example graceful_shutdown -- --seconds 2
//! ```

use std::time::Duration;

use anyhow::Context as _;
use queue::{Backend, Job, JobOptions, Priority, QueueName, Worker};
use serde::{Deserialize, Serialize};

/// The job: work that takes `millis`.
#[derive(Debug, Serialize, Deserialize)]
struct Work {
    n: u32,
    millis: u64,
}

/// `--seconds N` from the command line, if given.
fn seconds_arg() -> anyhow::Result<Option<u64>> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None => Ok(None),
        Some("--seconds") => {
            let value = args.next().context("--seconds needs a number")?;
            let seconds = value
                .parse()
                .with_context(|| format!("--seconds: expected a whole number, got {value:?}"))?;
            Ok(Some(seconds))
        }
        Some(other) => {
            anyhow::bail!("unknown argument {other:?}; usage: graceful_shutdown [--seconds N]")
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = seconds_arg()?;
    let backend = queue::connect("memory://").await?;
    let queue = QueueName::new("reports")?;

    let handle = Worker::builder(backend.clone(), queue.clone())
        .concurrency(4)
        .shutdown_grace(Duration::from_secs(2))
        .handler(|job: Job<Work>| async move {
            let Work { n, millis } = job.payload;
            println!("job {n}: working for {millis} ms");
            tokio::time::sleep(Duration::from_millis(millis)).await;
            println!("job {n}: done");
            Ok::<_, std::convert::Infallible>(())
        })
        .start()
        .await?;

    let producer = backend.producer(&queue).await?;
    // One job far longer than the grace period, first in line...
    let slow = Work {
        n: 0,
        millis: 60_000,
    };
    let options = JobOptions::default().with_priority(Priority::High);
    producer.send(Job::encode(&slow, &options)?).await?;
    // ...and plenty of short ones.
    for n in 1..=40 {
        let work = Work {
            n,
            millis: 300 + 100 * u64::from(n % 8),
        };
        producer
            .send(Job::encode(&work, &JobOptions::default())?)
            .await?;
    }

    match seconds {
        Some(seconds) => {
            println!("running for {seconds} s (or until Ctrl-C)");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                signal = tokio::signal::ctrl_c() => signal?,
            }
        }
        None => {
            println!("running; press Ctrl-C to stop");
            tokio::signal::ctrl_c().await?;
        }
    }

    let running = handle.stats().in_flight;
    println!("shutting down with {running} jobs running (grace period 2 s)");
    let report = handle.shutdown().await?;
    println!("{report:?}");
    println!(
        "{} finished within the grace period, {} stopped and returned to the queue",
        report.finished_in_grace, report.returned
    );
    let stats = backend.admin().stats(&queue).await?;
    println!(
        "left in the queue for the next worker: {} ready, {} delayed",
        stats.ready, stats.delayed
    );
    Ok(())
}
