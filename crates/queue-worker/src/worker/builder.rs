//! Building a worker: [`Worker::builder`] gathers the settings,
//! [`WorkerBuilder::handler`] takes the handler, and
//! [`WorkerWithHandler::start`] validates, opens a consumer per lane and
//! hands over to a running [`WorkerHandle`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use queue_core::config::validation_error;
use queue_core::coordination::{Coordination, Rate};
use queue_core::error::{BoxError, Result};
use queue_core::job::{BackoffPolicy, Job};
use queue_core::message::QueueName;
use queue_core::stats::ConsumerOptions;
use queue_core::store::JobStore;
use queue_core::traits::{Backend, Consumer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use validator::Validate;

use super::flow::{Flow, FlowSettings, RateKey};
use super::handle::WorkerHandle;
use super::handler::{self, ErasedHandler};
use super::shared::{Settings, Shared};
use crate::events::EventBus;

/// Builds a [`Worker`]: queue, handler, concurrency, prefetch, retry policy,
/// timeout, lease and shutdown grace.
#[must_use]
pub struct WorkerBuilder {
    backend: Arc<dyn Backend>,
    queue: QueueName,
    settings: Settings,
    events: EventBus,
    store: Option<Arc<dyn JobStore>>,
    flow: FlowSettings,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("queue", &self.queue)
            .field("settings", &self.settings)
            .field("flow", &self.flow)
            .finish_non_exhaustive()
    }
}

/// The entry point: `Worker::builder(backend, queue)`.
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// Start building a worker for `queue` on `backend`.
    pub fn builder(backend: Arc<dyn Backend>, queue: QueueName) -> WorkerBuilder {
        WorkerBuilder {
            backend,
            queue,
            settings: Settings {
                concurrency: 16,
                prefetch: 100,
                retry: BackoffPolicy::default(),
                timeout: None,
                max_timeout: None,
                lease: None,
                poll_wait: Duration::from_secs(1),
                shutdown_grace: Duration::from_secs(30),
                liveness_timeout: Duration::from_secs(60),
                lanes: std::thread::available_parallelism().map_or(2, usize::from),
                depth_interval: Some(Duration::from_secs(15)),
                heartbeat: Some(Duration::from_secs(5)),
            },
            events: EventBus::default(),
            store: None,
            flow: FlowSettings::default(),
        }
    }
}

impl WorkerBuilder {
    /// Jobs run at once (1 to 10,000; default 16).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.settings.concurrency = concurrency;
        self
    }

    /// Most deliveries fetched per receive call (1 to 10,000; default 100).
    /// Never more than the free slots, so no job waits locally holding a lease.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.settings.prefetch = prefetch;
        self
    }

    /// Backoff between attempts of jobs that set none of their own
    /// (default: 1 s doubling to 15 min, full jitter). Attempts per job come
    /// from the job (`JobOptions::max_retries`).
    pub fn retry(mut self, policy: BackoffPolicy) -> Self {
        self.settings.retry = policy;
        self
    }

    /// Timeout of attempts whose job sets none (default: none).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = Some(timeout);
        self
    }

    /// The longest timeout a job may set for itself (1 ms to 24 h). A
    /// job's timeout travels in a header that whoever sends the job writes
    /// (`JobOptions::with_timeout`), so this bounds how long a producer
    /// can make this worker's attempts run: a job asking for more gets
    /// this much. Default: the worker's own [`timeout`](Self::timeout)
    /// when set (a job may ask for less, not more), else 24 h.
    pub fn max_timeout(mut self, max: Duration) -> Self {
        self.settings.max_timeout = Some(max);
        self
    }

    /// Lease of each delivery (default: the backend's); extended while the job runs.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = Some(lease);
        self
    }

    /// Longest wait of one receive call (default 1 s).
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.settings.poll_wait = wait;
        self
    }

    /// How long shutdown lets running jobs finish (default 30 s); jobs still
    /// running then are stopped and returned to the queue.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.shutdown_grace = grace;
        self
    }

    /// A worker that has not fetched for this long (while it had free
    /// slots) reports unhealthy (default 60 s).
    pub fn liveness_timeout(mut self, timeout: Duration) -> Self {
        self.settings.liveness_timeout = timeout;
        self
    }

    /// Tasks the worker drives its jobs on (default: one per CPU). Jobs of
    /// one lane are polled by one task, so a handler that computes for long
    /// without awaiting delays its lane: run such work in
    /// `tokio::task::spawn_blocking`.
    pub fn lanes(mut self, lanes: usize) -> Self {
        self.settings.lanes = lanes;
        self
    }

    /// How often the queue depth gauges (`queue_depth{queue, state}`) are
    /// refreshed from the backend's stats (default 15 s; `None` turns it off,
    /// for brokers where a stats call costs).
    pub fn depth_interval(mut self, interval: Option<Duration>) -> Self {
        self.settings.depth_interval = interval;
        self
    }

    /// How often the worker reports itself to the backend's worker
    /// registry (`Admin::register_worker`: host, pid, queue, concurrency,
    /// in-flight and counts), so `queue workers` and the dashboard list it
    /// (default 5 s, 100 ms to 1 h; `None` turns it off). A worker silent
    /// for three intervals drops out of the list. Backends without a
    /// registry (capability `worker_registry`) are not asked.
    pub fn heartbeat(mut self, interval: Option<Duration>) -> Self {
        self.settings.heartbeat = interval;
        self
    }

    /// Send lifecycle events to `events` (for one stream across workers).
    pub fn events(mut self, events: EventBus) -> Self {
        self.events = events;
        self
    }

    /// Record job status in `store` (the scheduler sets this).
    pub fn job_store(mut self, store: Arc<dyn JobStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The handler: `async fn(Job<T>) -> Result<R, E>`, where `R` is any
    /// serializable result (kept in the job store) and `E` any
    /// `std::error::Error`, `anyhow::Error` or
    /// Start at most `rate` jobs of this queue across every worker that
    /// shares the coordination store (`Rate::per_second(50)?`: never more
    /// than 50 starts in any one-second window). A job waits for its
    /// permit holding its delivery, without spending an attempt. Needs a
    /// coordination store: the backend's own (memory, Redis) or
    /// [`coordination`](Self::coordination); without one,
    /// [`start`](WorkerWithHandler::start) fails naming what to configure.
    pub fn rate_limit(mut self, rate: Rate) -> Self {
        self.flow.rate = Some(rate);
        self
    }

    /// Start at most `rate` jobs per key across every worker, the key
    /// taken from each job by `key` (its ordering key, a header, or a
    /// function); jobs without a key are not limited by key. Keys are
    /// 1..=[`MAX_RATE_KEY`](super::MAX_RATE_KEY) bytes: a job with a longer
    /// one is dead-lettered with the reason. A job waiting for its key's
    /// permit holds one of this worker's slots: give the worker more
    /// slots than keys expected to wait at once, or one key's backlog
    /// holds the others' jobs back.
    pub fn rate_limit_per_key(mut self, rate: Rate, key: RateKey) -> Self {
        self.flow.key_rate = Some((rate, key));
        self
    }

    /// Run at most `limit` jobs of this queue at once across every worker
    /// that shares the coordination store (1 to 1,000,000). A slot is a
    /// lease: renewed while its job runs, freed when it ends, and freed
    /// by expiry when its process dies ([`slot_lease`](Self::slot_lease)).
    pub fn global_concurrency(mut self, limit: u32) -> Self {
        self.flow.global_concurrency = Some(limit);
        self
    }

    /// Run at most `limit` jobs of one group
    /// ([`Message::with_group`](queue_core::Message::with_group)) at once,
    /// across every worker of the queue (at least 1; give every worker of
    /// the queue the same limit). Groups take turns whether or not a limit
    /// is set: a group's backlog never holds back the others' jobs. The
    /// backend keeps the count, so this needs native group fairness
    /// ([`Capabilities::group_fairness`](queue_core::Capabilities::group_fairness):
    /// memory and Redis); elsewhere [`start`](WorkerWithHandler::start)
    /// fails with [`ErrorKind::Unsupported`](queue_core::ErrorKind::Unsupported).
    pub fn group_concurrency(mut self, limit: u32) -> Self {
        self.flow.group_limit = Some(limit);
        self
    }

    /// How long a fleet-wide slot outlives a holder that died (default
    /// [`DEFAULT_SLOT_LEASE`](super::DEFAULT_SLOT_LEASE), 100 ms to 24 h).
    pub fn slot_lease(mut self, lease: Duration) -> Self {
        self.flow.slot_lease = Some(lease);
        self
    }

    /// The coordination store rate limits and fleet-wide concurrency
    /// use, instead of the backend's own (for RabbitMQ, SQS and Kafka,
    /// which keep none: a Redis one, say).
    pub fn coordination(mut self, store: Arc<dyn Coordination>) -> Self {
        self.flow.store = Some(store);
        self
    }

    /// [`HandlerError`](queue_core::error::HandlerError) (to ask for
    /// a specific retry, a permanent failure or a cancel).
    pub fn handler<T, F, Fut, R, E>(self, handler: F) -> WorkerWithHandler
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Job<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        WorkerWithHandler {
            builder: self,
            handler: handler::erase(handler),
        }
    }
}

/// A configured worker, ready to [`start`](WorkerWithHandler::start).
#[must_use]
pub struct WorkerWithHandler {
    builder: WorkerBuilder,
    handler: ErasedHandler,
}

impl std::fmt::Debug for WorkerWithHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.builder.fmt(f)
    }
}

impl WorkerWithHandler {
    /// Validate the settings, open a consumer per lane and start the pool.
    pub async fn start(self) -> Result<WorkerHandle> {
        let WorkerWithHandler {
            mut builder,
            handler,
        } = self;
        builder.settings.validate().map_err(validation_error)?;
        // One receive never asks for more than the backend hands out.
        let max_receive = builder.backend.capabilities().max_receive.max(1);
        builder.settings.prefetch = builder.settings.prefetch.min(max_receive);
        let mut options = ConsumerOptions::default();
        if let Some(lease) = builder.settings.lease {
            options = options.with_lease(lease);
        }
        if let Some(limit) = builder.flow.group_limit {
            options = options.with_group_limit(limit);
        }
        builder.backend.capabilities().check_consumer(&options)?;
        let lanes = builder
            .settings
            .lanes
            .clamp(1, builder.settings.concurrency);
        let (stop, stop_rx) = watch::channel(false);
        let id = queue_core::MessageId::new().to_string();
        let flow = Flow::new(
            builder.flow,
            builder.backend.coordination(),
            builder.backend.capabilities().backend,
            &builder.queue,
            &id,
            &stop_rx,
        )?;
        let mut consumers: Vec<Arc<dyn Consumer>> = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            let consumer = builder
                .backend
                .consumer(&builder.queue, options.clone())
                .await?;
            consumers.push(Arc::from(consumer));
        }
        let (hard_stop, hard_stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared::new(
            builder.queue,
            builder.settings,
            handler,
            builder.events,
            builder.store,
            lanes,
            (stop_rx, hard_stop_rx),
            flow,
            id,
        ));
        Ok(WorkerHandle::launch(
            builder.backend,
            shared,
            consumers,
            (stop, hard_stop),
        ))
    }
}
