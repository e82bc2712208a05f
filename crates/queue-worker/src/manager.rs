//! The queue manager: several named backends at once, queue routing,
//! validation before send, job tracking, aggregated stats and health, and
//! one event stream.
//!
//! ```
//! use queue_core::{Job, JobOptions, MemoryBackend, Message, QueueName};
//! use queue_worker::QueueManager;
//! use std::sync::Arc;
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> queue_core::Result<()> {
//! let manager = QueueManager::builder()
//!     .backend("main", Arc::new(MemoryBackend::new()))
//!     .backend("bulk", Arc::new(MemoryBackend::new()))
//!     .routes("reports=bulk")?
//!     .build()?;
//! let reports = QueueName::new("reports")?;
//! assert_eq!(manager.backend_name(&reports), "bulk");
//! manager.send(&QueueName::new("emails")?, Message::new("hi")).await?; // default backend
//! let id = manager.submit(&reports, &42u32, &JobOptions::default()).await?;
//! assert!(manager.status(id).await?.is_some());
//! let health = manager.health().await;
//! assert!(health.healthy);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::events::{EventBus, EventStream};
use crate::scheduler::JobScheduler;
use crate::worker::{ShutdownReport, WorkerBuilder, WorkerHandle, WorkerHealth, WorkerWithHandler};
use queue_core::error::{Error, ErrorKind, Result};
use queue_core::job::JobOptions;
use queue_core::message::{Message, MessageId, QueueName};
use queue_core::stats::{HealthStatus, QueueStats};
use queue_core::store::{
    JobPage, JobQuery, JobRecord, JobStats, JobStore, MemoryJobStore, RetentionPolicy,
};
use queue_core::traits::Backend;

/// Builds a [`QueueManager`].
#[must_use]
pub struct QueueManagerBuilder {
    backends: BTreeMap<String, Arc<dyn Backend>>,
    default: Option<String>,
    routes: HashMap<QueueName, String>,
    store: Option<Arc<dyn JobStore>>,
    events: EventBus,
}

impl std::fmt::Debug for QueueManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueManagerBuilder")
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .field("default", &self.default)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl QueueManagerBuilder {
    /// Add a backend under `name`. The first one added is the default.
    pub fn backend(mut self, name: impl Into<String>, backend: Arc<dyn Backend>) -> Self {
        let name = name.into();
        if self.default.is_none() {
            self.default = Some(name.clone());
        }
        self.backends.insert(name, backend);
        self
    }

    /// Queues not routed elsewhere go to backend `name`.
    pub fn default_backend(mut self, name: impl Into<String>) -> Self {
        self.default = Some(name.into());
        self
    }

    /// Send `queue` to backend `backend`.
    pub fn route(mut self, queue: QueueName, backend: impl Into<String>) -> Self {
        self.routes.insert(queue, backend.into());
        self
    }

    /// Routes from text: `queue=backend,queue=backend` (as in `QUEUE_ROUTES`).
    pub fn routes(mut self, spec: &str) -> Result<Self> {
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (queue, backend) = pair.split_once('=').ok_or_else(|| {
                Error::config(format!("routes: expected queue=backend, got {pair:?}"))
            })?;
            let queue = QueueName::new(queue.trim())
                .map_err(|e| Error::config(format!("routes: {}", e.message())).with_source(e))?;
            self.routes.insert(queue, backend.trim().to_owned());
        }
        Ok(self)
    }

    /// Keep job records in `store` (default: an in-process store).
    pub fn job_store(mut self, store: Arc<dyn JobStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Check that every route and the default name a known backend.
    pub fn build(self) -> Result<QueueManager> {
        let default = self
            .default
            .ok_or_else(|| Error::config("backends: a manager needs at least one backend"))?;
        let known = |name: &str| self.backends.contains_key(name);
        if !known(&default) {
            return Err(Error::config(format!(
                "default_backend: no backend named {default:?}; known: {}",
                self.backends.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if let Some((queue, backend)) = self.routes.iter().find(|(_, b)| !known(b)) {
            return Err(Error::config(format!(
                "routes: queue {queue} goes to unknown backend {backend:?}; known: {}",
                self.backends.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryJobStore::new()));
        let schedulers = self
            .backends
            .iter()
            .map(|(name, backend)| {
                let scheduler = JobScheduler::new(backend.clone(), store.clone())
                    .with_events(self.events.clone());
                (name.clone(), scheduler)
            })
            .collect();
        Ok(QueueManager {
            backends: self.backends,
            default,
            routes: self.routes,
            schedulers,
            store,
            events: self.events,
            workers: Mutex::new(Vec::new()),
            seen: Mutex::new(BTreeSet::new()),
        })
    }
}

/// Health of everything a manager runs.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ManagerHealth {
    /// All backends and workers are healthy.
    pub healthy: bool,
    /// Per backend, by name.
    pub backends: BTreeMap<String, HealthStatus>,
    /// Per worker.
    pub workers: Vec<WorkerHealth>,
}

/// Stats of one queue as the manager sees it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ManagedQueueStats {
    /// The queue.
    pub queue: QueueName,
    /// The backend it is routed to.
    pub backend: String,
    /// Its counts.
    pub stats: QueueStats,
}

/// Several backends behind one façade. See the module docs.
pub struct QueueManager {
    backends: BTreeMap<String, Arc<dyn Backend>>,
    default: String,
    routes: HashMap<QueueName, String>,
    schedulers: BTreeMap<String, JobScheduler>,
    store: Arc<dyn JobStore>,
    events: EventBus,
    workers: Mutex<Vec<WorkerHandle>>,
    /// Queues used through the manager, for aggregated stats.
    seen: Mutex<BTreeSet<QueueName>>,
}

impl std::fmt::Debug for QueueManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueManager")
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .field("default", &self.default)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl QueueManager {
    /// Start building.
    pub fn builder() -> QueueManagerBuilder {
        QueueManagerBuilder {
            backends: BTreeMap::new(),
            default: None,
            routes: HashMap::new(),
            store: None,
            events: EventBus::default(),
        }
    }

    /// Every backend, by name.
    pub fn backends(&self) -> impl Iterator<Item = (&str, &Arc<dyn Backend>)> {
        self.backends.iter().map(|(name, b)| (name.as_str(), b))
    }

    /// The job store the manager tracks jobs in.
    pub fn job_store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// The queues routed or used through the manager, each with the name
    /// of its backend (for tools, beside `Admin::queues`).
    pub fn known_queues(&self) -> Vec<(String, QueueName)> {
        let mut queues: BTreeSet<QueueName> = self.routes.keys().cloned().collect();
        queues.extend(
            self.seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        queues
            .into_iter()
            .map(|q| (self.backend_name(&q).to_owned(), q))
            .collect()
    }

    /// The name of the backend `queue` is routed to.
    pub fn backend_name(&self, queue: &QueueName) -> &str {
        self.routes.get(queue).unwrap_or(&self.default)
    }

    /// The backend `queue` is routed to.
    pub fn backend_for(&self, queue: &QueueName) -> &Arc<dyn Backend> {
        &self.backends[self.backend_name(queue)]
    }

    fn scheduler_for(&self, queue: &QueueName) -> &JobScheduler {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.clone());
        &self.schedulers[self.backend_name(queue)]
    }

    /// Every job event of every backend and worker.
    pub fn subscribe(&self) -> EventStream {
        self.events.subscribe()
    }

    /// Send a raw message to `queue`, checked against its backend's
    /// capability table first.
    pub async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        // The producer checks the message against its backend's capability
        // table before any network call.
        self.scheduler_for(queue)
            .producer(queue)
            .await?
            .send(message)
            .await
    }

    /// Submit a typed job to `queue` and track it.
    pub async fn submit<T: Serialize>(
        &self,
        queue: &QueueName,
        payload: &T,
        options: &JobOptions,
    ) -> Result<MessageId> {
        self.scheduler_for(queue)
            .submit(queue, payload, options)
            .await
    }

    /// The record of job `id`.
    pub async fn status(&self, id: MessageId) -> Result<Option<JobRecord>> {
        self.store.get(id).await
    }

    /// Cancel job `id` if it has not started.
    pub async fn cancel(&self, id: MessageId) -> Result<bool> {
        let Some(record) = self.store.get(id).await? else {
            return Ok(false);
        };
        self.scheduler_for(&record.queue).cancel(id).await
    }

    /// A page of tracked jobs, newest first (see [`JobQuery`]).
    pub async fn list_jobs(&self, query: &JobQuery) -> Result<JobPage> {
        self.store.list(query).await
    }

    /// Run dead job `id` again now, on its queue's backend (see
    /// [`JobScheduler::retry`](crate::JobScheduler::retry)).
    pub async fn retry_job(&self, id: MessageId) -> Result<()> {
        let Some(record) = self.store.get(id).await? else {
            return Err(queue_core::store::not_tracked(id));
        };
        self.scheduler_for(&record.queue).retry(id).await
    }

    /// Remove the record of job `id`; `true` if there was one.
    pub async fn delete_job(&self, id: MessageId) -> Result<bool> {
        self.store.delete(id).await
    }

    /// Job counts by status, across backends.
    pub async fn job_stats(&self) -> Result<JobStats> {
        self.store.stats().await
    }

    /// Remove finished job records by `policy`.
    pub async fn cleanup(&self, policy: &RetentionPolicy) -> Result<u64> {
        self.store.cleanup(policy).await
    }

    /// A worker builder for `queue` on its backend, tracked in the store
    /// and feeding the manager's event stream.
    pub fn worker(&self, queue: QueueName) -> WorkerBuilder {
        self.scheduler_for(&queue).worker(queue)
    }

    /// Start a worker and keep it for health reports and shutdown.
    pub async fn spawn_worker(&self, worker: WorkerWithHandler) -> Result<()> {
        let handle = worker.start().await?;
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
        Ok(())
    }

    /// Stats of every queue routed or used through the manager.
    pub async fn stats(&self) -> Result<Vec<ManagedQueueStats>> {
        let queues = self.known_queues();
        let mut out = Vec::with_capacity(queues.len());
        for (backend, queue) in queues {
            match self.backends[&backend].admin().stats(&queue).await {
                Ok(stats) => out.push(ManagedQueueStats {
                    backend,
                    queue,
                    stats,
                }),
                // A routed queue nobody has used yet has no stats.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Health of every backend and worker.
    pub async fn health(&self) -> ManagerHealth {
        let mut backends = BTreeMap::new();
        for (name, backend) in &self.backends {
            backends.insert(name.clone(), backend.admin().health().await);
        }
        let workers: Vec<WorkerHealth> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(WorkerHandle::health)
            .collect();
        ManagerHealth {
            healthy: backends.values().all(|h| h.healthy) && workers.iter().all(|w| w.healthy),
            backends,
            workers,
        }
    }

    /// Shut every worker down gracefully: all stop fetching at once, then
    /// each is waited for (within its grace period). Every worker is shut
    /// down even when one fails; the first error is returned.
    pub async fn shutdown(&self) -> Result<Vec<ShutdownReport>> {
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        workers.iter().for_each(WorkerHandle::stop_fetching);
        let mut reports = Vec::with_capacity(workers.len());
        let mut first_error = None;
        for worker in workers {
            match worker.shutdown().await {
                Ok(report) => reports.push(report),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue_core::job::Job;
    use queue_core::memory::MemoryBackend;

    #[test]
    fn routes_and_defaults_are_checked() {
        let memory = || Arc::new(MemoryBackend::new()) as Arc<dyn Backend>;
        let err = QueueManager::builder().build().unwrap_err();
        assert!(err.message().starts_with("backends:"), "{err}");
        let err = QueueManager::builder()
            .backend("main", memory())
            .routes("emails=fast")
            .unwrap()
            .build()
            .unwrap_err();
        assert!(err.message().contains("unknown backend \"fast\""), "{err}");
        let err = QueueManager::builder().routes("emails").unwrap_err();
        assert!(err.message().contains("expected queue=backend"), "{err}");
        let err = QueueManager::builder().routes("bad name=main").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_route_run_and_report_in_one_place() {
        let bulk = Arc::new(MemoryBackend::new());
        let manager = QueueManager::builder()
            .backend("main", Arc::new(MemoryBackend::new()))
            .backend("bulk", bulk.clone())
            .routes("reports=bulk")
            .unwrap()
            .build()
            .unwrap();
        let reports = QueueName::new("reports").unwrap();
        let mut events = manager.subscribe();
        let worker = manager
            .worker(reports.clone())
            .handler(|job: Job<u32>| async move { Ok::<_, std::io::Error>(job.payload * 2) });
        manager.spawn_worker(worker).await.unwrap();
        let id = manager
            .submit(&reports, &21u32, &JobOptions::default())
            .await
            .unwrap();
        while manager.status(id).await.unwrap().unwrap().status != queue_core::JobStatus::Completed
        {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
                .await
                .expect("an event within 5 s");
        }
        let record = manager.status(id).await.unwrap().unwrap();
        assert_eq!(record.result, Some(serde_json::json!(42)));
        let health = manager.health().await;
        assert!(health.healthy && health.workers.len() == 1 && health.backends.len() == 2);
        // The job ran on the routed backend.
        let on_bulk = queue_core::traits::Admin::stats(&*bulk, &reports)
            .await
            .unwrap();
        assert_eq!(on_bulk.enqueued_total, 1);
        let stats = manager.stats().await.unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].backend, "bulk");
        // Messages are checked against the routed backend's table before sending.
        let too_big = Message::new(vec![0u8; queue_core::memory::DEFAULT_MAX_PAYLOAD + 1]);
        let err = manager.send(&reports, too_big).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
        let reports = manager.shutdown().await.unwrap();
        assert_eq!(reports.len(), 1);
        assert!(
            manager.health().await.workers.is_empty(),
            "shut-down workers are released"
        );
    }
}
