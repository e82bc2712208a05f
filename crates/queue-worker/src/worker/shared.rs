//! What the lanes, the background tasks and the handle of one worker
//! share: its validated [`Settings`], the handler, the per-lane
//! [`Counters`], the pre-registered [`Metrics`] and the liveness record.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_core::job::BackoffPolicy;
use queue_core::message::QueueName;
use queue_core::store::JobStore;
use tokio::sync::watch;
use validator::Validate;

use super::flow::Flow;
use super::handle::WorkerStats;
use super::handler::ErasedHandler;
use crate::events::EventBus;

/// Worker settings, validated by [`WorkerWithHandler::start`](super::WorkerWithHandler::start).
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
    #[validate(custom(function = "validate_timeout"))]
    pub(super) max_timeout: Option<Duration>,
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

impl Settings {
    /// The longest timeout a job may set for itself: the configured
    /// maximum, else the worker's own timeout, else the most allowed.
    pub(super) fn longest_timeout(&self) -> Duration {
        self.max_timeout
            .or(self.timeout)
            .unwrap_or(queue_core::job::MAX_TIMEOUT)
    }
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
        queue_core::job::MIN_TIMEOUT,
        queue_core::job::MAX_TIMEOUT,
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
    /// Turns true when the worker is told to stop (jobs waiting for
    /// admission go back).
    pub(super) stop: watch::Receiver<bool>,
    /// Rate limits, fleet-wide concurrency and the queue's back-off.
    pub(super) flow: Flow,
    pub(super) last_fetch: Mutex<(Instant, Option<String>)>,
    pub(super) metrics: Metrics,
    /// This worker's id in the worker registry.
    pub(super) id: String,
}

impl Shared {
    /// The state of a worker of `lanes` lanes whose jobs stop when
    /// `hard_stop` turns true.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        queue: QueueName,
        settings: Settings,
        handler: ErasedHandler,
        events: EventBus,
        store: Option<Arc<dyn JobStore>>,
        lanes: usize,
        (stop, hard_stop): (watch::Receiver<bool>, watch::Receiver<bool>),
        flow: Flow,
        id: String,
    ) -> Self {
        Shared {
            stop,
            flow,
            metrics: Metrics::new(&queue),
            queue,
            settings,
            handler,
            events,
            store,
            counters: (0..lanes).map(|_| Counters::default()).collect(),
            hard_stop,
            last_fetch: Mutex::new((Instant::now(), None)),
            id,
        }
    }

    /// The counters of every lane, summed.
    pub(super) fn stats(&self) -> WorkerStats {
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
