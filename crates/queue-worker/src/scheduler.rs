//! The job scheduler: submits typed jobs and tracks their status.
//!
//! ```
//! use queue_core::{Job, JobOptions, JobStatus, MemoryBackend, MemoryJobStore, QueueName};
//! use queue_worker::JobScheduler;
//! use std::sync::Arc;
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> queue_core::Result<()> {
//! let scheduler = JobScheduler::new(Arc::new(MemoryBackend::new()), Arc::new(MemoryJobStore::new()));
//! let queue = QueueName::new("reports")?;
//! let id = scheduler.submit(&queue, &"monthly", &JobOptions::default()).await?;
//! assert_eq!(scheduler.status(id).await?.unwrap().status, JobStatus::Pending);
//! let worker = scheduler
//!     .worker(queue)
//!     .handler(|job: Job<String>| async move { Ok::<_, std::io::Error>(job.payload.len()) })
//!     .start()
//!     .await?;
//! # let mut events = worker.subscribe();
//! # while scheduler.status(id).await?.unwrap().status != JobStatus::Completed {
//! #     let _ = tokio::time::timeout(std::time::Duration::from_millis(50), events.recv()).await;
//! # }
//! let record = scheduler.status(id).await?.unwrap();
//! assert_eq!(record.result, Some(serde_json::json!(7)));
//! worker.shutdown().await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::events::{EventBus, JobEvent, JobEventKind};
use crate::worker::{Worker, WorkerBuilder};
use queue_core::error::{Error, ErrorKind, Result};
use queue_core::job::{Job, JobOptions, JobStatus};
use queue_core::message::{MessageId, QueueName};
use queue_core::stats::Redrive;
use queue_core::store::{
    JobPage, JobQuery, JobRecord, JobStats, JobStore, JobUpdate, RetentionPolicy,
};
use queue_core::traits::{Backend, Producer};

/// Submits jobs to one backend and tracks them in a [`JobStore`].
pub struct JobScheduler {
    backend: Arc<dyn Backend>,
    store: Arc<dyn JobStore>,
    events: EventBus,
    producers: tokio::sync::Mutex<HashMap<QueueName, Arc<dyn Producer>>>,
}

impl std::fmt::Debug for JobScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobScheduler")
            .field("backend", &self.backend.capabilities().backend)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl JobScheduler {
    /// A scheduler over `backend`, keeping records in `store`.
    pub fn new(backend: Arc<dyn Backend>, store: Arc<dyn JobStore>) -> Self {
        JobScheduler {
            backend,
            store,
            events: EventBus::default(),
            producers: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Send events to `events` (shared with workers and other schedulers).
    #[must_use]
    pub fn with_events(mut self, events: EventBus) -> Self {
        self.events = events;
        self
    }

    /// The event bus.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// The cached producer of `queue`.
    pub(crate) async fn producer(&self, queue: &QueueName) -> Result<Arc<dyn Producer>> {
        let mut producers = self.producers.lock().await;
        if let Some(p) = producers.get(queue) {
            return Ok(p.clone());
        }
        let p: Arc<dyn Producer> = Arc::from(self.backend.producer(queue).await?);
        producers.insert(queue.clone(), p.clone());
        Ok(p)
    }

    /// Validate `options`, record the job, and send it. A job whose
    /// idempotency key matches a kept job is not sent again: its id is
    /// returned.
    pub async fn submit<T: Serialize>(
        &self,
        queue: &QueueName,
        payload: &T,
        options: &JobOptions,
    ) -> Result<MessageId> {
        let message = Job::encode(payload, options)?;
        self.backend.capabilities().check_message(&message)?;
        let mut record = JobRecord::submitted(
            message.id,
            queue.clone(),
            message.priority,
            message.max_attempts,
            message.not_before.is_some(),
        );
        record.idempotency_key = message.idempotency_key.as_deref().map(str::to_owned);
        record.name = Some(queue_core::short_type_name::<T>());
        let id = self.store.insert(record).await?;
        if id != message.id {
            return Ok(id);
        }
        let producer = self.producer(queue).await?;
        if let Err(e) = producer.send(message).await {
            self.store
                .update(
                    id,
                    JobUpdate::Failed {
                        error: format!("not enqueued: {e}"),
                    },
                )
                .await?;
            return Err(e);
        }
        self.events
            .emit(|| JobEvent::new(JobEventKind::Enqueued, id, queue.clone(), 0));
        Ok(id)
    }

    /// The record of job `id`.
    pub async fn status(&self, id: MessageId) -> Result<Option<JobRecord>> {
        self.store.get(id).await
    }

    /// Cancel job `id` if it has not started; `true` if it was cancelled.
    /// Its message stays queued and is settled without running when a
    /// worker picks it up.
    pub async fn cancel(&self, id: MessageId) -> Result<bool> {
        let cancelled = self.store.cancel(id).await?;
        if cancelled {
            if let Some(record) = self.store.get(id).await? {
                self.events
                    .emit(|| JobEvent::new(JobEventKind::Cancelled, id, record.queue.clone(), 0));
            }
        }
        Ok(cancelled)
    }

    /// A page of tracked jobs, newest first (see [`JobQuery`]).
    pub async fn list(&self, query: &JobQuery) -> Result<JobPage> {
        self.store.list(query).await
    }

    /// Run dead job `id` again now: its dead letter goes back to its queue
    /// (attempts start over on the broker; the record keeps its count and
    /// last error) and the record turns `Pending`.
    ///
    /// A job that is not tracked is `NotFound`; a job that is not dead is
    /// `InvalidInput` naming its status (a waiting or running job needs no
    /// retry, and a completed one is final); a dead job whose dead letter
    /// is gone (redriven or purged elsewhere) is `NotFound`.
    pub async fn retry(&self, id: MessageId) -> Result<()> {
        let record = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| queue_core::store::not_tracked(id))?;
        if record.status != JobStatus::Dead {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "job {id} is {}: only a dead job can be retried",
                    record.status
                ),
            ));
        }
        // Pending first, so a worker that takes the job at once is not
        // overwritten by this update.
        self.store.update(id, JobUpdate::Requeued).await?;
        let moved = self
            .backend
            .admin()
            .redrive(&record.queue, Redrive::Ids(vec![id]))
            .await;
        match moved {
            Ok(n) if n > 0 => {
                self.events
                    .emit(|| JobEvent::new(JobEventKind::Enqueued, id, record.queue.clone(), 0));
                Ok(())
            }
            other => {
                let dead = JobUpdate::Dead {
                    error: record.last_error.clone().unwrap_or_default(),
                };
                self.store.update(id, dead).await?;
                match other {
                    Err(e) => Err(e),
                    _ => Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "job {id} has no dead letter in queue {} (redriven or purged already)",
                            record.queue
                        ),
                    )),
                }
            }
        }
    }

    /// Remove the record of job `id` from the store; `true` if there was
    /// one. A message still queued stays queued (and runs untracked).
    pub async fn delete(&self, id: MessageId) -> Result<bool> {
        self.store.delete(id).await
    }

    /// Counts by status.
    pub async fn stats(&self) -> Result<JobStats> {
        self.store.stats().await
    }

    /// Remove finished jobs the policy no longer keeps.
    pub async fn cleanup(&self, policy: &RetentionPolicy) -> Result<u64> {
        self.store.cleanup(policy).await
    }

    /// A worker builder for `queue` that records status in this scheduler's
    /// store and sends events to its bus.
    pub fn worker(&self, queue: QueueName) -> WorkerBuilder {
        Worker::builder(self.backend.clone(), queue)
            .job_store(self.store.clone())
            .events(self.events.clone())
    }
}
