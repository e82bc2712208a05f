//! Typed jobs with retries and permanent failures.
//!
//! The handler returns `anyhow::Error`; a `HandlerError` inside it keeps
//! its action (permanent, retry after, cancel).
//! One job is flaky: it fails on its first two attempts (`job.attempt`) and
//! succeeds on the third, after the worker's backoff. Another has bad
//! input: the handler fails it with `HandlerError::permanent`, so it goes
//! straight to the dead-letter queue with no retry. Every lifecycle event
//! is printed as it happens, and the dead letter at the end.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p queue --example typed_job_retries
//! ```

use std::collections::HashMap;
use std::time::Duration;

use queue::{
    Backend, BackoffPolicy, HandlerError, Job, JobEventKind, JobOptions, QueueName, Worker,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

/// The job: make a thumbnail of an image.
#[derive(Debug, Serialize, Deserialize)]
struct Resize {
    image: String,
    width: u32,
}

/// The handler: an ordinary async function of the typed job.
async fn resize(job: Job<Resize>) -> anyhow::Result<String> {
    let Resize { image, width } = &job.payload;
    if *width == 0 {
        // Retrying cannot fix bad input: dead-letter it now.
        return Err(HandlerError::permanent(format!("{image}: width must be positive")).into());
    }
    if job.attempt <= 2 {
        // Any other error is retried, with backoff, until attempts run out.
        anyhow::bail!(
            "{image}: thumbnail service unavailable (attempt {} of {})",
            job.attempt,
            job.max_attempts
        );
    }
    Ok(format!("{image} resized to {width}px"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend = queue::connect("memory://").await?;
    let queue = QueueName::new("thumbnails")?;

    let handle = Worker::builder(backend.clone(), queue.clone())
        .retry(BackoffPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: false,
        })
        .handler(resize)
        .start()
        .await?;
    let mut events = handle.subscribe();

    let producer = backend.producer(&queue).await?;
    let options = JobOptions::default().with_max_retries(3);
    let mut names = HashMap::new();
    for (name, width) in [("flaky.png", 128), ("broken.png", 0)] {
        let job = Resize {
            image: name.to_owned(),
            width,
        };
        let id = producer.send(Job::encode(&job, &options)?).await?;
        names.insert(id, name);
    }

    let mut settled = 0;
    while settled < names.len() {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                eprintln!("missed {missed} events");
                continue;
            }
            Err(RecvError::Closed) => break,
        };
        let name = names.get(&event.job_id).copied().unwrap_or("?");
        let what = match &event.kind {
            JobEventKind::Started => "started".to_owned(),
            JobEventKind::Failed { error } => format!("failed: {error}"),
            JobEventKind::Retried { delay } => format!("retry in {delay:?}"),
            JobEventKind::Completed => {
                settled += 1;
                "completed".to_owned()
            }
            JobEventKind::DeadLettered { reason } => {
                settled += 1;
                format!("dead-lettered ({reason})")
            }
            other => format!("{other:?}"),
        };
        println!("{name:<11} attempt {}: {what}", event.attempt);
    }

    handle.shutdown().await?;
    for dead in backend.admin().dead_letters(&queue, 10).await? {
        println!(
            "in the dead-letter queue: {} after {} attempt(s), reason: {}",
            names.get(&dead.message.id).copied().unwrap_or("?"),
            dead.attempts,
            dead.reason
        );
    }
    Ok(())
}
