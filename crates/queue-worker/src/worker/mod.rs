//! The worker runtime: a pool that runs a handler for every job of a queue,
//! on any backend.
//!
//! ```
//! use queue_core::{Job, JobOptions, MemoryBackend, QueueName, ProducerExt};
//! use queue_worker::Worker;
//! use std::{sync::Arc, time::Duration};
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> queue_core::Result<()> {
//! let backend = Arc::new(MemoryBackend::new());
//! let queue = QueueName::new("emails")?;
//! let handle = Worker::builder(backend.clone(), queue.clone())
//!     .concurrency(8)
//!     .handler(|job: Job<String>| async move {
//!         println!("sending to {}", job.payload);
//!         Ok::<_, std::io::Error>(())
//!     })
//!     .start()
//!     .await?;
//! let mut events = handle.subscribe();
//! let producer = queue_core::Backend::producer(&*backend, &queue).await?;
//! producer.send(Job::encode(&"ada@example.com".to_owned(), &JobOptions::default())?).await?;
//! while !matches!(events.recv().await.unwrap().kind, queue_worker::JobEventKind::Completed) {}
//! handle.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! How it works, per job: the worker runs `lanes` tasks (one per CPU by
//! default), each owning a share of the `concurrency` slots. A lane receives
//! at most as many deliveries as it has free slots (never more than
//! `prefetch` per call), so no job waits locally while holding a lease, and
//! drives its jobs as futures without spawning a task per job. Each job runs
//! inside a `job` tracing span whose parent is the message's
//! `traceparent`. The handler's future is polled under `catch_unwind` (a
//! panic fails that attempt only) and dropped when the timeout passes (code
//! after its pending await point never runs). While it runs near the end
//! of its lease, the lease is extended. Successes are acked in batches
//! through [`Consumer::ack_batch`]; failures are nacked with the backoff of
//! the retry policy, durably (the broker holds the delay, not a sleeping
//! task), and the last attempt is dead-lettered by the backend.
//!
//! [`Consumer::ack_batch`]: queue_core::traits::Consumer::ack_batch

// One part per file: `builder` (settings, handler, start), `handle` (the
// running worker and what it reports), `shared` (the state the lanes and
// tasks share), `handler` (the type-erased handler), `lane` (fetch, drive,
// ack), `attempt` (one attempt of one job: begin, drive, settle, record),
// `flow` (rate limits, fleet-wide concurrency, back-off: the wait before
// an attempt begins), and the tasks beside the lanes: `heartbeat` (the worker registry) and
// `depth` (the queue depth gauges).

mod attempt;
mod builder;
mod depth;
mod flow;
#[cfg(test)]
mod flow_tests;
mod handle;
mod handler;
mod heartbeat;
mod lane;
mod shared;
#[cfg(test)]
mod tests;

pub use builder::{Worker, WorkerBuilder, WorkerWithHandler};
pub use flow::{KeyFn, RateKey, DEFAULT_SLOT_LEASE, MAX_RATE_KEY, SLOT_POLL};
pub use handle::{ShutdownReport, WorkerHandle, WorkerHealth, WorkerStats};
