//! The worker runtime: a pool that runs a handler for every job of a queue,
//! on any backend.
//!
//! ```
//! use queue_core::{Job, JobOptions, MemoryBackend, QueueName, Worker, ProducerExt};
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
//! while !matches!(events.recv().await.unwrap().kind, queue_core::JobEventKind::Completed) {}
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
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tracing::Instrument;
use validator::Validate;

use crate::config::validation_error;
use crate::error::{BoxError, Error, ErrorKind, HandlerAction, HandlerError, Result};
use crate::events::{EventBus, EventStream, JobEvent, JobEventKind};
use crate::job::{BackoffPolicy, Job, HEADER_TIMEOUT_MS};
use crate::message::{random_unit, Message, MessageId, QueueName};
use crate::stats::{ConsumerOptions, DeadLetterReason};
use crate::store::{JobStore, JobUpdate};
use crate::trace::{TraceContext, TRACEPARENT};
use crate::traits::{Backend, Consumer, Delivery};

/// What a handler returns, type-erased: the result as JSON, or the error.
type HandlerFuture =
    Pin<Box<dyn Future<Output = std::result::Result<Option<serde_json::Value>, BoxError>> + Send>>;

/// A handler with its payload type erased: decodes the message, then runs.
type ErasedHandler = Arc<dyn Fn(&Message, JobScope) -> Result<HandlerFuture> + Send + Sync>;

/// Where a handler runs: its trace context, the sender's, and its span.
struct JobScope {
    context: TraceContext,
    parent: Option<TraceContext>,
    span: tracing::Span,
}

/// Worker settings, validated by [`WorkerBuilder::start`].
#[derive(Debug, Clone, Validate)]
struct Settings {
    #[validate(range(min = 1, max = 10_000, message = "must be 1 to 10000"))]
    concurrency: usize,
    #[validate(range(min = 1, max = 10_000, message = "must be 1 to 10000"))]
    prefetch: usize,
    #[validate(nested)]
    retry: BackoffPolicy,
    #[validate(custom(function = "validate_timeout"))]
    timeout: Option<Duration>,
    #[validate(custom(function = "crate::config::validate_lease"))]
    lease: Option<Duration>,
    #[validate(custom(function = "validate_poll_wait"))]
    poll_wait: Duration,
    #[validate(custom(function = "validate_grace"))]
    shutdown_grace: Duration,
    #[validate(custom(function = "validate_liveness"))]
    liveness_timeout: Duration,
    #[validate(range(min = 1, max = 1024, message = "must be 1 to 1024"))]
    lanes: usize,
    depth_interval: Option<Duration>,
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
                crate::trace::scope_with_parent(scope.context, scope.parent, fut)
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
struct Counters {
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    cancelled: AtomicU64,
    returned: AtomicU64,
    /// Attempts that ended, however they ended.
    finished: AtomicU64,
    /// Every slot of the lane is busy.
    saturated: AtomicBool,
}

struct Shared {
    queue: QueueName,
    settings: Settings,
    handler: ErasedHandler,
    events: EventBus,
    store: Option<Arc<dyn JobStore>>,
    counters: Box<[Counters]>,
    /// Jobs stop at once when this turns true (end of the grace period).
    hard_stop: watch::Receiver<bool>,
    last_fetch: Mutex<(Instant, Option<String>)>,
    metrics: Metrics,
}

/// Pre-registered metric handles, so the hot path builds no labels.
struct Metrics {
    completed: metrics::Counter,
    failed: metrics::Counter,
    retried: metrics::Counter,
    dead_lettered: metrics::Counter,
    cancelled: metrics::Counter,
    pickup: metrics::Histogram,
    run_time: metrics::Histogram,
    in_flight: metrics::Gauge,
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
        });
        if let Some(interval) = shared.settings.depth_interval {
            tokio::spawn(report_depth(
                builder.backend.clone(),
                shared.queue.clone(),
                interval,
                stop_rx.clone(),
            ));
        }
        let dispatcher = tokio::spawn(dispatch(shared.clone(), consumers, stop_rx));
        Ok(WorkerHandle {
            shared,
            stop,
            hard_stop,
            dispatcher,
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

    /// Counters so far.
    pub fn stats(&self) -> WorkerStats {
        let lanes = &self.shared.counters;
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
        joined
            .map_err(|e| Error::new(ErrorKind::Other, format!("worker dispatcher failed: {e}")))?
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

/// Runs the lanes, one consumer each; on stop, waits for them.
async fn dispatch(
    shared: Arc<Shared>,
    consumers: Vec<Arc<dyn Consumer>>,
    stop: watch::Receiver<bool>,
) -> Result<ShutdownReport> {
    let concurrency = shared.settings.concurrency;
    let lanes = consumers.len();
    let at_stop = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(lanes);
    for (lane, consumer) in consumers.into_iter().enumerate() {
        let slots = concurrency / lanes + usize::from(lane < concurrency % lanes);
        tasks.push(tokio::spawn(run_lane(
            shared.clone(),
            lane,
            consumer,
            slots,
            stop.clone(),
            at_stop.clone(),
        )));
    }
    for task in tasks {
        task.await
            .map_err(|e| Error::new(ErrorKind::Other, format!("worker lane failed: {e}")))?;
    }
    let returned: u64 = shared
        .counters
        .iter()
        .map(|c| c.returned.load(AtomicOrdering::Relaxed))
        .sum();
    Ok(ShutdownReport {
        finished_in_grace: at_stop
            .load(AtomicOrdering::Relaxed)
            .saturating_sub(returned),
        returned,
    })
}

type ReceiveFuture = Pin<Box<dyn Future<Output = Result<Vec<Delivery>>> + Send>>;
type AckFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Ack `batch` in one call, logging what could not be acked.
fn ack_batch(consumer: &Arc<dyn Consumer>, batch: Vec<Delivery>) -> AckFuture {
    let consumer = consumer.clone();
    Box::pin(async move {
        if let Err(failed) = consumer.ack_batch(batch).await {
            for f in failed {
                tracing::warn!(job_id = %f.delivery.message().id, error = %f.error, "ack failed; the job may run again");
            }
        }
    })
}

/// One lane: fetches for its share of the slots and drives its jobs as
/// futures in one task (no task spawn per job). Finished jobs hand their
/// delivery back to the lane, which acks whatever finished while the last
/// ack call was on its way in one batch; a delivery waiting for its ack
/// still holds its slot, so unacked deliveries never pile up. A receive or
/// ack call stays pending across job completions rather than being
/// dropped, so a broker call is never cancelled half-way while the worker
/// runs.
async fn run_lane(
    shared: Arc<Shared>,
    lane: usize,
    consumer: Arc<dyn Consumer>,
    slots: usize,
    mut stop: watch::Receiver<bool>,
    at_stop: Arc<AtomicU64>,
) {
    let mut running = FuturesUnordered::new();
    let mut receiving: Option<ReceiveFuture> = None;
    let mut to_ack: Vec<Delivery> = Vec::new();
    let mut acking: Option<(AckFuture, usize)> = None;
    let mut failures = 0u32;
    let mut stopping = *stop.borrow();
    let (mut backlog, mut asked) = (false, 0usize);
    loop {
        if acking.is_none() && !to_ack.is_empty() {
            let batch = std::mem::take(&mut to_ack);
            let len = batch.len();
            acking = Some((ack_batch(&consumer, batch), len));
        }
        let unacked = to_ack.len() + acking.as_ref().map_or(0, |(_, n)| *n);
        let free = slots.saturating_sub(running.len() + unacked);
        shared.counters[lane]
            .saturated
            .store(free == 0, AtomicOrdering::Relaxed);
        if stopping {
            break;
        }
        // With a backlog (the last receive came back full), refill in
        // batches of half the lane; otherwise keep a receive pending for
        // every free slot so a new job is picked up at once.
        let refill_at = if backlog { (slots / 2).max(1) } else { 1 };
        if receiving.is_none() && free >= refill_at {
            let consumer = consumer.clone();
            let (max, wait) = (
                free.min(shared.settings.prefetch),
                shared.settings.poll_wait,
            );
            asked = max;
            receiving = Some(Box::pin(async move { consumer.receive(max, wait).await }));
        }
        tokio::select! {
            Some(finished) = running.next(), if !running.is_empty() => to_ack.extend(finished),
            () = async { acking.as_mut().expect("guarded").0.as_mut().await }, if acking.is_some() => acking = None,
            received = async { receiving.as_mut().expect("guarded").await }, if receiving.is_some() => {
                receiving = None;
                match received {
                    Ok(deliveries) => {
                        failures = 0;
                        backlog = deliveries.len() == asked;
                        if let Ok(mut g) = shared.last_fetch.lock() {
                            *g = (Instant::now(), None);
                        }
                        for delivery in deliveries {
                            running.push(run_job(shared.clone(), lane, delivery));
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(queue = %shared.queue, error = %e, "receive failed");
                        if let Ok(mut g) = shared.last_fetch.lock() {
                            g.1 = Some(e.to_string());
                        }
                        let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                        let pause = tokio::time::sleep(backoff);
                        tokio::pin!(pause);
                        // Keep running jobs moving while pausing.
                        loop {
                            tokio::select! {
                                () = &mut pause => break,
                                Some(finished) = running.next(), if !running.is_empty() => to_ack.extend(finished),
                                () = async { acking.as_mut().expect("guarded").0.as_mut().await }, if acking.is_some() => acking = None,
                                _ = stop.changed() => { stopping = true; break; }
                            }
                        }
                    }
                }
            }
            changed = stop.changed() => {
                stopping = changed.is_err() || *stop.borrow();
            }
        }
    }
    // Stop fetching. A pending receive is dropped: memory returns nothing
    // it had not handed out; a broker's unreturned deliveries come back when
    // their lease expires. Running jobs finish (or stop at the end of the
    // grace period, when `hard_stop` is set).
    drop(receiving);
    at_stop.fetch_add(running.len() as u64, AtomicOrdering::Relaxed);
    while let Some(finished) = running.next().await {
        to_ack.extend(finished);
    }
    if let Some((ack, _)) = acking {
        ack.await;
    }
    if !to_ack.is_empty() {
        ack_batch(&consumer, to_ack).await;
    }
    shared.counters[lane]
        .saturated
        .store(false, AtomicOrdering::Relaxed);
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

/// A future polled under `catch_unwind`: a panic becomes `Err(message)`.
struct CatchUnwind(HandlerFuture);

impl Future for CatchUnwind {
    type Output =
        std::result::Result<std::result::Result<Option<serde_json::Value>, BoxError>, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(&*payload))),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// How one attempt ended.
enum Outcome {
    Done(Option<serde_json::Value>),
    Failed(HandlerError),
    Panicked(String),
    TimedOut(Duration),
    Stopped,
}

/// Drive a handler that did not finish at once: time it out, extend the
/// lease while it runs, stop it at the end of the shutdown grace period.
/// The handler's future is dropped on return, before the job is settled,
/// so a timed-out handler never resumes.
async fn supervise(
    shared: &Shared,
    mut delivery: Delivery,
    mut fut: CatchUnwind,
    timeout: Option<Duration>,
    span: &tracing::Span,
) -> (Outcome, Delivery) {
    let timeout_at = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut hard_stop = shared.hard_stop.clone();
    let mut can_extend = true;
    // Extend by the worker's lease, or by the lease the backend granted
    // (its configured default), measured from the delivery.
    let lease = shared.settings.lease.unwrap_or_else(|| {
        delivery
            .lease_deadline()
            .duration_since(SystemTime::now())
            .unwrap_or(crate::config::DEFAULT_LEASE)
            .clamp(crate::config::MIN_LEASE, crate::config::MAX_LEASE)
    });
    loop {
        let extend_at = instant_of(delivery.lease_deadline())
            .checked_sub(lease / 3)
            .unwrap_or_else(tokio::time::Instant::now);
        let outcome = tokio::select! {
            biased;
            out = &mut fut => Outcome::of(out),
            () = sleep_until_opt(timeout_at) => Outcome::TimedOut(timeout.unwrap_or_default()),
            () = tokio::time::sleep_until(extend_at), if can_extend => {
                delivery = match delivery.extend(lease).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(parent: span, error = %e.error, "lease extension failed; the job may run twice");
                        can_extend = false;
                        *e.delivery
                    }
                };
                continue;
            }
            () = until_true(&mut hard_stop) => Outcome::Stopped,
        };
        // Drop the handler's future before the job is settled.
        drop(fut);
        return (outcome, delivery);
    }
}

impl Outcome {
    fn of(out: <CatchUnwind as Future>::Output) -> Outcome {
        match out {
            Ok(Ok(value)) => Outcome::Done(value),
            Ok(Err(error)) => Outcome::Failed(HandlerError::from_boxed(error)),
            Err(panic) => Outcome::Panicked(panic),
        }
    }
}

fn instant_of(deadline: SystemTime) -> tokio::time::Instant {
    tokio::time::Instant::now()
        + deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default()
}

/// Run one delivery through the handler and settle it; a delivery to ack
/// is handed back to the lane, which acks in batches.
async fn run_job(shared: Arc<Shared>, lane: usize, delivery: Delivery) -> Option<Delivery> {
    let counters = &shared.counters[lane];
    let to_ack = attempt_job(&shared, counters, delivery).await;
    counters.finished.fetch_add(1, AtomicOrdering::Relaxed);
    to_ack
}

async fn attempt_job(
    shared: &Shared,
    counters: &Counters,
    mut delivery: Delivery,
) -> Option<Delivery> {
    let message = delivery.message();
    let (id, attempt) = (message.id, message.attempt);
    let queue = &shared.queue;
    counters.started.fetch_add(1, AtomicOrdering::Relaxed);
    shared.metrics.in_flight.increment(1.0);
    let due = message
        .not_before
        .map_or(message.created_at, |nb| nb.max(message.created_at));
    let pickup = SystemTime::now().duration_since(due).unwrap_or_default();
    shared.metrics.pickup.record(pickup.as_secs_f64());
    shared.events.emit(|| {
        JobEvent::new(JobEventKind::Started, id, queue.clone(), attempt).with_duration(pickup)
    });

    if let Some(store) = &shared.store {
        // A job cancelled before it started is settled without running;
        // `start` checks and marks in one step, so a cancel cannot slip in.
        let start = store.start(id, attempt).await.unwrap_or_else(|e| {
            tracing::warn!(job_id = %id, error = %e, "could not record the job's start; running it");
            true
        });
        if !start {
            counters.cancelled.fetch_add(1, AtomicOrdering::Relaxed);
            shared.metrics.cancelled.increment(1);
            shared.metrics.in_flight.decrement(1.0);
            shared
                .events
                .emit(|| JobEvent::new(JobEventKind::Cancelled, id, queue.clone(), attempt));
            return Some(delivery);
        }
    }

    // The sender's context; a raw message may carry it as a plain header.
    let parent = message.trace.or_else(|| {
        message
            .headers
            .get(TRACEPARENT)
            .and_then(|v| TraceContext::parse(v))
    });
    let context = parent.map_or_else(TraceContext::new_root, |p| p.child());
    let span = tracing::info_span!(
        "job",
        queue = %queue,
        job_id = %id,
        attempt,
        trace_id = %format_args!("{:032x}", context.trace_id),
        span_id = %format_args!("{:016x}", context.span_id),
        parent_span_id = %parent.map(|p| format!("{:016x}", p.span_id)).unwrap_or_default(),
    );
    let timeout = message
        .headers
        .get(HEADER_TIMEOUT_MS)
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .or(shared.settings.timeout);
    let own_backoff = crate::job::backoff_of(message);

    let started = Instant::now();
    let scope = JobScope {
        context,
        parent,
        span: span.clone(),
    };
    // Decoding and the synchronous part of the handler run here, outside
    // the future: a panic there fails the attempt too.
    let started_handler =
        std::panic::catch_unwind(AssertUnwindSafe(|| (shared.handler)(message, scope)));
    let outcome = match started_handler {
        Err(payload) => Outcome::Panicked(panic_message(&*payload)),
        Ok(Err(decode_error)) => {
            // Bytes that are not this handler's job type: retrying cannot help.
            tracing::warn!(parent: &span, error = %decode_error, "undecodable job dead-lettered");
            settle_dead(
                shared,
                counters,
                delivery,
                DeadLetterReason::Decode,
                decode_error.to_string(),
                attempt,
            )
            .await;
            shared.metrics.in_flight.decrement(1.0);
            return None;
        }
        Ok(Ok(fut)) => {
            let mut fut = CatchUnwind(fut);
            // Most jobs finish on their first poll: settle those without
            // creating a single timer (and keep the timers' state out of
            // this future, which every job allocates).
            let first_poll =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await;
            match first_poll {
                Poll::Ready(out) => Outcome::of(out),
                Poll::Pending => {
                    let (outcome, held) =
                        Box::pin(supervise(shared, delivery, fut, timeout, &span)).await;
                    delivery = held;
                    outcome
                }
            }
            // Leaving the loop drops nothing yet; the future is dropped here,
            // before settling, so a timed-out handler never resumes.
        }
    };
    let run_time = started.elapsed();
    shared.metrics.run_time.record(run_time.as_secs_f64());
    shared.metrics.in_flight.decrement(1.0);

    let (error, action) = match outcome {
        Outcome::Done(result) => {
            counters.completed.fetch_add(1, AtomicOrdering::Relaxed);
            shared.metrics.completed.increment(1);
            record(shared, id, JobUpdate::Completed { result }).await;
            shared.events.emit(|| {
                JobEvent::new(JobEventKind::Completed, id, queue.clone(), attempt)
                    .with_duration(run_time)
            });
            return Some(delivery);
        }
        Outcome::Stopped => {
            counters.returned.fetch_add(1, AtomicOrdering::Relaxed);
            if let Err(e) = delivery
                .nack_with_error(Duration::ZERO, "worker shut down before the job finished")
                .await
            {
                tracing::warn!(job_id = %id, error = %e.error, "could not return a stopped job; it returns when its lease expires");
            }
            let error = "worker shut down before the job finished".to_owned();
            record(shared, id, JobUpdate::Retry { error }).await;
            return None;
        }
        Outcome::Failed(error) => (error.to_string(), error.action()),
        Outcome::Panicked(message) => {
            (format!("handler panicked: {message}"), HandlerAction::Retry)
        }
        Outcome::TimedOut(after) => (format!("timed out after {after:?}"), HandlerAction::Retry),
    };
    if action != HandlerAction::Cancel {
        counters.failed.fetch_add(1, AtomicOrdering::Relaxed);
        shared.metrics.failed.increment(1);
        shared.events.emit(|| {
            JobEvent::new(
                JobEventKind::Failed {
                    error: error.clone(),
                },
                id,
                queue.clone(),
                attempt,
            )
            .with_duration(run_time)
        });
    }
    match action {
        HandlerAction::Cancel => {
            counters.cancelled.fetch_add(1, AtomicOrdering::Relaxed);
            shared.metrics.cancelled.increment(1);
            record(shared, id, JobUpdate::Cancelled).await;
            shared
                .events
                .emit(|| JobEvent::new(JobEventKind::Cancelled, id, queue.clone(), attempt));
            Some(delivery)
        }
        HandlerAction::Permanent => {
            settle_dead(
                shared,
                counters,
                delivery,
                DeadLetterReason::Rejected(error.clone()),
                error,
                attempt,
            )
            .await;
            None
        }
        HandlerAction::Retry | HandlerAction::RetryAfter(_) => {
            let last_attempt = delivery.message().is_last_attempt();
            let delay = match action {
                HandlerAction::RetryAfter(delay) => delay,
                _ => {
                    let policy = own_backoff.unwrap_or(shared.settings.retry);
                    policy.delay(attempt, random_unit())
                }
            };
            if let Err(e) = delivery.nack_with_error(delay, &error).await {
                tracing::warn!(job_id = %id, error = %e.error, "nack failed; the job returns when its lease expires");
            }
            if last_attempt {
                counters.dead_lettered.fetch_add(1, AtomicOrdering::Relaxed);
                shared.metrics.dead_lettered.increment(1);
                record(shared, id, JobUpdate::Dead { error }).await;
                shared.events.emit(|| {
                    JobEvent::new(
                        JobEventKind::DeadLettered {
                            reason: "max_attempts".into(),
                        },
                        id,
                        queue.clone(),
                        attempt,
                    )
                });
            } else {
                counters.retried.fetch_add(1, AtomicOrdering::Relaxed);
                shared.metrics.retried.increment(1);
                record(shared, id, JobUpdate::Retry { error }).await;
                shared.events.emit(|| {
                    JobEvent::new(JobEventKind::Retried { delay }, id, queue.clone(), attempt)
                });
            }
            None
        }
    }
}

/// Record a status change in the job store, if the worker has one. A store
/// that fails is logged, not fatal: the job itself is settled either way.
async fn record(shared: &Shared, id: MessageId, update: JobUpdate) {
    if let Some(store) = &shared.store {
        if let Err(e) = store.update(id, update).await {
            tracing::warn!(job_id = %id, error = %e, "could not record the job's status");
        }
    }
}

async fn settle_dead(
    shared: &Shared,
    counters: &Counters,
    delivery: Delivery,
    reason: DeadLetterReason,
    error: String,
    attempt: u32,
) {
    let id = delivery.message().id;
    let reason_text = reason.to_string();
    if let Err(e) = delivery.dead_letter(reason).await {
        tracing::warn!(job_id = %id, error = %e.error, "dead-lettering failed; the job returns when its lease expires");
        return;
    }
    counters.dead_lettered.fetch_add(1, AtomicOrdering::Relaxed);
    shared.metrics.dead_lettered.increment(1);
    record(shared, id, JobUpdate::Dead { error }).await;
    shared.events.emit(|| {
        JobEvent::new(
            JobEventKind::DeadLettered {
                reason: reason_text,
            },
            id,
            shared.queue.clone(),
            attempt,
        )
    });
}

/// Resolves once the flag turns true; never if its sender is gone first.
async fn until_true(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobOptions;
    use crate::memory::MemoryBackend;
    use crate::traits::Producer;

    async fn send(backend: &MemoryBackend, queue: &QueueName, payload: &str, options: &JobOptions) {
        let producer = backend.memory_producer(queue).unwrap();
        producer
            .send(Job::encode(&payload.to_owned(), options).unwrap())
            .await
            .unwrap();
    }

    async fn until(handle: &WorkerHandle, done: impl Fn(WorkerStats) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut events = handle.subscribe();
        while !done(handle.stats()) {
            assert!(Instant::now() < deadline, "timed out: {:?}", handle.stats());
            let _ = tokio::time::timeout(Duration::from_millis(50), events.recv()).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handler_actions_survive_anyhow_and_are_applied() {
        let backend = MemoryBackend::new();
        let queue = QueueName::new("actions").unwrap();
        let handle = Worker::builder(Arc::new(backend.clone()), queue.clone())
            .handler(|job: Job<String>| async move {
                match job.payload.as_str() {
                    "permanent" => Err(anyhow::Error::from(HandlerError::permanent("bad input"))),
                    "cancel" => Err(HandlerError::cancel("no longer wanted").into()),
                    "later" if job.attempt == 1 => Err(anyhow::Error::from(
                        HandlerError::retry_after("busy", Duration::from_millis(300)),
                    )),
                    _ => Ok(job.attempt),
                }
            })
            .start()
            .await
            .unwrap();
        let options = JobOptions::default().with_max_retries(5);
        for payload in ["permanent", "cancel", "later"] {
            send(&backend, &queue, payload, &options).await;
        }
        let started = Instant::now();
        until(&handle, |s| {
            s.completed == 1 && s.dead_lettered == 1 && s.cancelled == 1 && s.in_flight == 0
        })
        .await;
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "retry_after was honoured"
        );
        let stats = handle.stats();
        assert_eq!(
            (stats.failed, stats.retried, stats.in_flight),
            (2, 1, 0),
            "{stats:?}"
        );
        handle.shutdown().await.unwrap();
        let dead = crate::traits::Admin::dead_letters(&backend, &queue, 10)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            dead[0].reason,
            DeadLetterReason::Rejected("bad input".into())
        );
        assert_eq!(dead[0].attempts, 1, "a permanent failure is not retried");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_before_the_handler_awaits_fails_only_that_attempt() {
        let backend = MemoryBackend::new();
        let queue = QueueName::new("sync-panic").unwrap();
        let handle = Worker::builder(Arc::new(backend.clone()), queue.clone())
            .retry(BackoffPolicy {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(10),
                multiplier: 1.0,
                jitter: false,
            })
            .handler(|job: Job<String>| {
                // Synchronous code of the handler, before its future exists.
                assert!(
                    job.attempt > 1 || job.payload != "sync",
                    "boom before the future"
                );
                async { Ok::<_, std::io::Error>(()) }
            })
            .start()
            .await
            .unwrap();
        send(&backend, &queue, "sync", &JobOptions::default()).await;
        send(&backend, &queue, "fine", &JobOptions::default()).await;
        until(&handle, |s| s.completed == 2 && s.in_flight == 0).await;
        let stats = handle.stats();
        assert_eq!(
            (stats.failed, stats.retried, stats.in_flight),
            (1, 1, 0),
            "{stats:?}"
        );
        assert!(handle.health().healthy);
        handle.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_that_cannot_fetch_reports_unhealthy() {
        let backend = MemoryBackend::new();
        let queue = QueueName::new("liveness").unwrap();
        let handle = Worker::builder(Arc::new(backend.clone()), queue)
            .liveness_timeout(Duration::from_millis(200))
            .poll_wait(Duration::from_millis(50))
            .handler(|_job: Job<String>| async { Ok::<_, std::io::Error>(()) })
            .start()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(handle.health().healthy, "{:?}", handle.health());
        crate::traits::Backend::close(&backend).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let health = handle.health();
        assert!(!health.healthy, "{health:?}");
        assert!(health.last_error.unwrap_or_default().contains("closed"));
        handle.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalid_settings_name_the_field() {
        let backend = Arc::new(MemoryBackend::new());
        let err = Worker::builder(backend.clone(), QueueName::new("bad").unwrap())
            .poll_wait(Duration::ZERO)
            .timeout(Duration::MAX)
            .handler(|_job: Job<String>| async { Ok::<_, std::io::Error>(()) })
            .start()
            .await
            .unwrap_err();
        assert!(
            err.message().contains("poll_wait: must be between 1ms"),
            "{err}"
        );
        assert!(
            err.message()
                .contains("timeout: must be between 1ms and 24h"),
            "{err}"
        );
        let err = Worker::builder(backend, QueueName::new("bad").unwrap())
            .concurrency(0)
            .handler(|_job: Job<String>| async { Ok::<_, std::io::Error>(()) })
            .start()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.message().contains("concurrency: must be 1 to 10000"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_jobs_get_their_lease_extended() {
        let backend = MemoryBackend::new();
        let queue = QueueName::new("extend").unwrap();
        let handle = Worker::builder(Arc::new(backend.clone()), queue.clone())
            .lease(Duration::from_secs(1))
            .handler(|_job: Job<String>| async {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                Ok::<_, std::io::Error>(())
            })
            .start()
            .await
            .unwrap();
        send(&backend, &queue, "long", &JobOptions::default()).await;
        until(&handle, |s| s.completed == 1).await;
        let stats = handle.stats();
        handle.shutdown().await.unwrap();
        assert_eq!(
            stats.started, 1,
            "never redelivered while running: {stats:?}"
        );
        let q = crate::traits::Admin::stats(&backend, &queue).await.unwrap();
        assert_eq!((q.retried_total, q.acked_total), (0, 1), "{q:?}");
    }
}
