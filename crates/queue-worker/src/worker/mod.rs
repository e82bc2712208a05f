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

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_core::config::validation_error;
use queue_core::error::{BoxError, Error, ErrorKind, HandlerError, Result};
use queue_core::job::{BackoffPolicy, Job};
use queue_core::message::{Message, QueueName};
use queue_core::stats::ConsumerOptions;
use queue_core::store::JobStore;
use queue_core::trace::TraceContext;
use queue_core::traits::{Backend, Consumer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tracing::Instrument;
use validator::Validate;

use crate::events::{EventBus, EventStream};

/// What a handler returns, type-erased: the result as JSON, or the error.
pub(super) type HandlerFuture =
    Pin<Box<dyn Future<Output = std::result::Result<Option<serde_json::Value>, BoxError>> + Send>>;

/// A handler with its payload type erased: decodes the message, then runs.
pub(super) type ErasedHandler =
    Arc<dyn Fn(&Message, JobScope) -> Result<HandlerFuture> + Send + Sync>;

/// Where a handler runs: its trace context, the sender's, and its span.
pub(super) struct JobScope {
    pub(super) context: TraceContext,
    pub(super) parent: Option<TraceContext>,
    pub(super) span: tracing::Span,
}

/// Worker settings, validated by [`WorkerBuilder::start`].
#[derive(Debug, Clone, Validate)]
pub(super) struct Settings {
    #[validate(range(min = 1, max = 10_000, message = "must be 1 to 10000"))]
    pub(super) concurrency: usize,
    #[validate(range(min = 1, max = 10_000, message = "must be 1 to 10000"))]
    pub(super) prefetch: usize,
    #[validate(nested)]
    pub(super) retry: BackoffPolicy,
    #[validate(custom(function = "validate_timeout"))]
    pub(super) timeout: Option<Duration>,
    #[validate(custom(function = "queue_core::config::validate_lease"))]
    pub(super) lease: Option<Duration>,
    #[validate(custom(function = "validate_poll_wait"))]
    pub(super) poll_wait: Duration,
    #[validate(custom(function = "validate_grace"))]
    pub(super) shutdown_grace: Duration,
    #[validate(custom(function = "validate_liveness"))]
    pub(super) liveness_timeout: Duration,
    #[validate(range(min = 1, max = 1024, message = "must be 1 to 1024"))]
    pub(super) lanes: usize,
    pub(super) depth_interval: Option<Duration>,
    #[validate(custom(function = "validate_heartbeat"))]
    pub(super) heartbeat: Option<Duration>,
}

fn range(
    d: &Duration,
    min: Duration,
    max: Duration,
    text: &'static str,
) -> std::result::Result<(), validator::ValidationError> {
    if *d < min || *d > max {
        let mut error = validator::ValidationError::new("range");
        error.message = Some(std::borrow::Cow::Borrowed(text));
        return Err(error);
    }
    Ok(())
}

fn validate_timeout(d: &Duration) -> std::result::Result<(), validator::ValidationError> {
    range(
        d,
        Duration::from_millis(1),
        Duration::from_secs(86_400),
        "must be between 1ms and 24h",
    )
}

fn validate_poll_wait(d: &Duration) -> std::result::Result<(), validator::ValidationError> {
    // Zero would make an idle lane spin.
    range(
        d,
        Duration::from_millis(1),
        Duration::from_secs(300),
        "must be between 1ms and 5 minutes",
    )
}

fn validate_grace(d: &Duration) -> std::result::Result<(), validator::ValidationError> {
    range(
        d,
        Duration::ZERO,
        Duration::from_secs(3600),
        "must be at most 1 hour",
    )
}

fn validate_heartbeat(d: &Duration) -> std::result::Result<(), validator::ValidationError> {
    range(
        d,
        Duration::from_millis(100),
        Duration::from_secs(3600),
        "must be between 100ms and 1h",
    )
}

fn validate_liveness(d: &Duration) -> std::result::Result<(), validator::ValidationError> {
    range(
        d,
        Duration::from_millis(100),
        Duration::from_secs(86_400),
        "must be between 100ms and 24h",
    )
}

/// Builds a [`Worker`]: queue, handler, concurrency, prefetch, retry policy,
/// timeout, lease and shutdown grace.
#[must_use]
pub struct WorkerBuilder {
    backend: Arc<dyn Backend>,
    queue: QueueName,
    settings: Settings,
    events: EventBus,
    store: Option<Arc<dyn JobStore>>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("queue", &self.queue)
            .field("settings", &self.settings)
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
    /// `std::error::Error`, `anyhow::Error` or [`HandlerError`] (to ask for
    /// a specific retry, a permanent failure or a cancel).
    pub fn handler<T, F, Fut, R, E>(self, handler: F) -> WorkerWithHandler
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Job<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<R, E>> + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let erased: ErasedHandler = Arc::new(move |message: &Message, scope: JobScope| {
            let job = Job::<T>::decode(message)?;
            let fut = handler(job);
            let fut = async move {
                match fut.await {
                    Ok(value) => Ok(serde_json::to_value(value).ok().filter(|v| !v.is_null())),
                    Err(e) => Err(into_boxed(e)),
                }
            };
            // One allocation per job: the handler's future inside its trace
            // scope and span.
            Ok(Box::pin(
                queue_core::trace::scope_with_parent(scope.context, scope.parent, fut)
                    .instrument(scope.span),
            ) as HandlerFuture)
        });
        WorkerWithHandler {
            builder: self,
            handler: erased,
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

/// Counters of one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Attempts started.
    pub started: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Attempts failed (error, timeout, panic).
    pub failed: u64,
    /// Failed attempts handed back for a retry.
    pub retried: u64,
    /// Jobs dead-lettered by this worker (permanent failures and last attempts).
    pub dead_lettered: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Running now.
    pub in_flight: u64,
}

/// Liveness of one worker.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct WorkerHealth {
    /// The queue.
    pub queue: QueueName,
    /// Fetching (or saturated with running jobs) and not shut down.
    pub healthy: bool,
    /// Every slot is busy, so it is not fetching on purpose.
    pub saturated: bool,
    /// Time since the last successful receive call.
    pub since_last_fetch: Duration,
    /// The last receive error, if the last call failed.
    pub last_error: Option<String>,
}

/// What shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Jobs that finished during the grace period.
    pub finished_in_grace: u64,
    /// Jobs stopped at the end of the grace period and returned to the queue.
    pub returned: u64,
}

/// Counters of one lane, on a cache line of their own so lanes on
/// different threads never contend on them; read by summing the lanes.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct Counters {
    pub(super) started: AtomicU64,
    pub(super) completed: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) cancelled: AtomicU64,
    pub(super) returned: AtomicU64,
    /// Attempts that ended, however they ended.
    pub(super) finished: AtomicU64,
    /// Every slot of the lane is busy.
    pub(super) saturated: AtomicBool,
}

pub(super) struct Shared {
    pub(super) queue: QueueName,
    pub(super) settings: Settings,
    pub(super) handler: ErasedHandler,
    pub(super) events: EventBus,
    pub(super) store: Option<Arc<dyn JobStore>>,
    pub(super) counters: Box<[Counters]>,
    /// Jobs stop at once when this turns true (end of the grace period).
    pub(super) hard_stop: watch::Receiver<bool>,
    pub(super) last_fetch: Mutex<(Instant, Option<String>)>,
    pub(super) metrics: Metrics,
    /// This worker's id in the worker registry.
    pub(super) id: String,
}

/// Pre-registered metric handles, so the hot path builds no labels.
pub(super) struct Metrics {
    pub(super) completed: metrics::Counter,
    pub(super) failed: metrics::Counter,
    pub(super) retried: metrics::Counter,
    pub(super) dead_lettered: metrics::Counter,
    pub(super) cancelled: metrics::Counter,
    pub(super) pickup: metrics::Histogram,
    pub(super) run_time: metrics::Histogram,
    pub(super) in_flight: metrics::Gauge,
}

impl Metrics {
    fn new(queue: &QueueName) -> Self {
        let q = queue.to_string();
        let outcome = |o: &'static str| metrics::counter!("queue_jobs_total", "queue" => q.clone(), "outcome" => o);
        Metrics {
            completed: outcome("completed"),
            failed: outcome("failed"),
            retried: outcome("retried"),
            dead_lettered: outcome("dead_lettered"),
            cancelled: outcome("cancelled"),
            pickup: metrics::histogram!("queue_job_pickup_seconds", "queue" => q.clone()),
            run_time: metrics::histogram!("queue_job_run_seconds", "queue" => q.clone()),
            in_flight: metrics::gauge!("queue_jobs_in_flight", "queue" => q),
        }
    }
}

/// A running worker. Dropping the handle stops fetching and lets running
/// jobs finish in the background; call [`shutdown`](WorkerHandle::shutdown)
/// to wait for them and bound the wait by the grace period.
pub struct WorkerHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    hard_stop: watch::Sender<bool>,
    dispatcher: tokio::task::JoinHandle<Result<ShutdownReport>>,
    /// Ends the heartbeat (which then leaves the registry) once every job
    /// is done.
    finished: watch::Sender<bool>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("queue", &self.shared.queue)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
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
        options.check()?;
        let lanes = builder
            .settings
            .lanes
            .clamp(1, builder.settings.concurrency);
        let mut consumers: Vec<Arc<dyn Consumer>> = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            let consumer = builder
                .backend
                .consumer(&builder.queue, options.clone())
                .await?;
            consumers.push(Arc::from(consumer));
        }
        let (stop, stop_rx) = watch::channel(false);
        let (hard_stop, hard_stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            metrics: Metrics::new(&builder.queue),
            queue: builder.queue,
            settings: builder.settings,
            handler,
            events: builder.events,
            store: builder.store,
            counters: (0..lanes).map(|_| Counters::default()).collect(),
            hard_stop: hard_stop_rx,
            last_fetch: Mutex::new((Instant::now(), None)),
            id: queue_core::MessageId::new().to_string(),
        });
        if let Some(interval) = shared.settings.depth_interval {
            tokio::spawn(report_depth(
                builder.backend.clone(),
                shared.queue.clone(),
                interval,
                stop_rx.clone(),
            ));
        }
        let (finished, finished_rx) = watch::channel(false);
        let heartbeat = match shared.settings.heartbeat {
            Some(interval)
                if builder
                    .backend
                    .capabilities()
                    .worker_registry
                    .is_available() =>
            {
                Some(tokio::spawn(heartbeat(
                    builder.backend.clone(),
                    shared.clone(),
                    interval,
                    finished_rx,
                )))
            }
            _ => None,
        };
        let dispatcher = tokio::spawn(lane::dispatch(shared.clone(), consumers, stop_rx));
        Ok(WorkerHandle {
            shared,
            stop,
            hard_stop,
            dispatcher,
            finished,
            heartbeat,
        })
    }
}

impl WorkerHandle {
    /// Lifecycle events of this worker's jobs.
    pub fn subscribe(&self) -> EventStream {
        self.shared.events.subscribe()
    }

    /// The queue.
    pub fn queue(&self) -> &QueueName {
        &self.shared.queue
    }

    /// This worker's id in the worker registry (`Admin::workers`).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Counters so far.
    pub fn stats(&self) -> WorkerStats {
        self.shared.stats()
    }
}

impl Shared {
    fn stats(&self) -> WorkerStats {
        let lanes = &self.counters;
        let load = |field: fn(&Counters) -> &AtomicU64| -> u64 {
            lanes
                .iter()
                .map(|c| field(c).load(AtomicOrdering::Relaxed))
                .sum()
        };
        let started = load(|c| &c.started);
        let finished = load(|c| &c.finished);
        WorkerStats {
            started,
            completed: load(|c| &c.completed),
            failed: load(|c| &c.failed),
            retried: load(|c| &c.retried),
            dead_lettered: load(|c| &c.dead_lettered),
            cancelled: load(|c| &c.cancelled),
            in_flight: started - finished.min(started),
        }
    }
}

impl WorkerHandle {
    /// Liveness: unhealthy once shut down, or when it has not fetched for
    /// the liveness timeout while it had free slots.
    pub fn health(&self) -> WorkerHealth {
        let (last, error) = self
            .shared
            .last_fetch
            .lock()
            .map(|g| (g.0, g.1.clone()))
            .unwrap_or_else(|p| {
                let g = p.into_inner();
                (g.0, g.1.clone())
            });
        let since_last_fetch = last.elapsed();
        // Not fetching on purpose only when every lane is full.
        let saturated = self
            .shared
            .counters
            .iter()
            .all(|lane| lane.saturated.load(AtomicOrdering::Relaxed));
        let running = !self.dispatcher.is_finished() && !*self.stop.borrow();
        WorkerHealth {
            queue: self.shared.queue.clone(),
            healthy: running
                && (saturated || since_last_fetch <= self.shared.settings.liveness_timeout),
            saturated,
            since_last_fetch,
            last_error: error,
        }
    }

    /// Stop fetching now, without waiting (running jobs go on); follow with
    /// [`shutdown`](WorkerHandle::shutdown) to wait. Lets a caller stop many
    /// workers at once and then wait for all of them.
    pub fn stop_fetching(&self) {
        let _ = self.stop.send(true);
    }

    /// Stop fetching, let running jobs finish within the grace period, then
    /// stop the rest and return them to the queue. Waits for all of it.
    pub async fn shutdown(self) -> Result<ShutdownReport> {
        let _ = self.stop.send(true);
        let grace = self.shared.settings.shutdown_grace;
        let hard_stop = self.hard_stop;
        let mut dispatcher = self.dispatcher;
        let joined = tokio::select! {
            joined = &mut dispatcher => joined,
            () = tokio::time::sleep(grace) => {
                let _ = hard_stop.send(true);
                dispatcher.await
            }
        };
        // Every job is done: leave the registry before returning.
        let _ = self.finished.send(true);
        if let Some(heartbeat) = self.heartbeat {
            let _ = heartbeat.await;
        }
        joined
            .map_err(|e| Error::new(ErrorKind::Other, format!("worker dispatcher failed: {e}")))?
    }
}

/// Report the worker to the registry every `interval` until it has
/// finished (or its handle is dropped), then remove it. A failed report is
/// logged and tried again next interval: the registry is for operators,
/// never a reason to stop working.
async fn heartbeat(
    backend: Arc<dyn Backend>,
    shared: Arc<Shared>,
    interval: Duration,
    mut finished: watch::Receiver<bool>,
) {
    let mut info = queue_core::WorkerInfo::new(
        shared.queue.clone(),
        shared.settings.concurrency as u64,
        interval,
    );
    info.id = shared.id.clone();
    loop {
        let stats = shared.stats();
        info.in_flight = stats.in_flight;
        info.completed = stats.completed;
        info.failed = stats.failed;
        info.last_heartbeat = std::time::SystemTime::now();
        if let Err(e) = backend.admin().register_worker(&info).await {
            tracing::debug!(worker = %info.id, error = %e, "could not report to the worker registry");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = finished.wait_for(|done| *done) => break,
        }
    }
    if let Err(e) = backend.admin().deregister_worker(&info.id).await {
        tracing::debug!(worker = %info.id, error = %e, "could not leave the worker registry");
    }
}

/// Refresh the `queue_depth` gauges every `interval` until stopped.
async fn report_depth(
    backend: Arc<dyn Backend>,
    queue: QueueName,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let gauge = |state: &'static str| metrics::gauge!("queue_depth", "queue" => queue.to_string(), "state" => state);
    let (ready, delayed, in_flight, dead) = (
        gauge("ready"),
        gauge("delayed"),
        gauge("in_flight"),
        gauge("dead"),
    );
    loop {
        if let Ok(stats) = backend.admin().stats(&queue).await {
            ready.set(stats.ready as f64);
            delayed.set(stats.delayed as f64);
            in_flight.set(stats.in_flight as f64);
            dead.set(stats.dead as f64);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// Box a handler's error, keeping a [`HandlerError`] findable when it
/// travels inside an `anyhow::Error` (whose own boxing would hide it).
fn into_boxed<E: Into<BoxError> + 'static>(error: E) -> BoxError {
    let any: Box<dyn Any> = Box::new(error);
    match any.downcast::<anyhow::Error>() {
        Ok(error) => match error.downcast::<HandlerError>() {
            Ok(handler_error) => Box::new(handler_error),
            Err(error) => error.into(),
        },
        Err(any) => match any.downcast::<E>() {
            Ok(error) => (*error).into(),
            Err(_) => unreachable!("the box holds an E"),
        },
    }
}

mod attempt;
mod lane;
#[cfg(test)]
mod tests;
