//! The smallest complete worker: submit 10 typed jobs to the embedded
//! memory backend, run a worker pool over them, wait until all 10 have
//! completed by listening to the worker's events, then shut down.
//!
//! Run it with:
//!
//! ```sh
//! cargo run -p queue --example minimal_worker
//! ```

use queue::{Backend, Job, JobEventKind, JobOptions, QueueName, Worker};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

/// The job: one email to send.
#[derive(Debug, Serialize, Deserialize)]
struct Email {
    to: String,
}

const JOBS: usize = 10;

#[tokio::main]
async fn main() -> queue::Result<()> {
    // Any URL works here: the code is the same on every backend.
    let backend = queue::connect("memory://").await?;
    let queue = QueueName::new("emails")?;

    let handle = Worker::builder(backend.clone(), queue.clone())
        .concurrency(4)
        .handler(|job: Job<Email>| async move {
            println!("sending email to {}", job.payload.to);
            Ok::<_, std::io::Error>(())
        })
        .start()
        .await?;
    // Subscribe before submitting, so no event is missed.
    let mut events = handle.subscribe();

    let producer = backend.producer(&queue).await?;
    for i in 0..JOBS {
        let email = Email {
            to: format!("user{i}@example.com"),
        };
        producer
            .send(Job::encode(&email, &JobOptions::default())?)
            .await?;
    }

    let mut completed = 0;
    while completed < JOBS {
        match events.recv().await {
            Ok(event) if event.kind == JobEventKind::Completed => {
                completed += 1;
                println!("job {} completed ({completed}/{JOBS})", event.job_id);
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => eprintln!("missed {missed} events"),
            Err(RecvError::Closed) => break,
        }
    }

    let report = handle.shutdown().await?;
    println!(
        "worker stopped: {} jobs finished during shutdown, {} returned to the queue",
        report.finished_in_grace, report.returned
    );
    Ok(())
}
