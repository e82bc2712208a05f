//! Queue statistics, health, dead letters and per-queue options.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use validator::Validate;

use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;

/// Counts of one queue at one moment.
///
/// Gauges (`ready`, `delayed`, `in_flight`, `dead`) are exact on backends
/// whose capability table says `exact_stats`; totals count since the queue
/// was created (or since the backend started, on brokers that keep no totals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// Deliverable now.
    pub ready: u64,
    /// Waiting for their delay (or a retry backoff) to pass.
    pub delayed: u64,
    /// Delivered and not yet settled.
    pub in_flight: u64,
    /// In the dead-letter queue.
    pub dead: u64,
    /// Messages accepted by `send` (duplicates by idempotency key excluded).
    pub enqueued_total: u64,
    /// Deliveries acked.
    pub acked_total: u64,
    /// Deliveries nacked or whose lease expired.
    pub retried_total: u64,
    /// Messages moved to the dead-letter queue, for any reason.
    pub dead_lettered_total: u64,
    /// Messages that expired before pickup.
    pub expired_total: u64,
    /// Sends dropped as duplicates of an idempotency key.
    pub deduplicated_total: u64,
    /// Whether the queue is paused (`Admin::pause`): its consumers receive
    /// nothing until it is resumed.
    pub paused: bool,
    /// How long the oldest ready message has waited since it became
    /// ready (sent, or due after its delay): the queue's latency. `None`
    /// when nothing is ready or the backend cannot tell. In JSON, whole
    /// milliseconds.
    #[serde(with = "optional_millis")]
    pub oldest_ready_age: Option<Duration>,
}

/// `Option<Duration>` as whole milliseconds (or null) in serde formats.
mod optional_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// `SystemTime` as whole milliseconds since the Unix epoch in serde formats.
pub mod epoch_millis {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize `at` as milliseconds since the epoch.
    pub fn serialize<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(crate::store::millis_since_epoch(*at))
    }

    /// Read milliseconds since the epoch.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(UNIX_EPOCH + Duration::from_millis(u64::deserialize(d)?))
    }
}

/// `Duration` as whole milliseconds in serde formats.
pub mod duration_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize `d` as milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Read milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// A running worker as the worker registry holds it
/// ([`Admin::register_worker`](crate::Admin::register_worker),
/// [`Admin::workers`](crate::Admin::workers)). A worker sends it again on
/// every heartbeat; one whose heartbeat is older than
/// [`WorkerInfo::STALE_AFTER`] intervals is dropped. In JSON, times are
/// milliseconds since the Unix epoch and the interval is milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Unique per worker start (a UUID).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The queue it works.
    pub queue: crate::message::QueueName,
    /// Jobs it runs at once.
    pub concurrency: u64,
    /// Jobs running now.
    pub in_flight: u64,
    /// Jobs completed since it started.
    pub completed: u64,
    /// Attempts failed since it started.
    pub failed: u64,
    /// When it started.
    #[serde(with = "epoch_millis")]
    pub started_at: SystemTime,
    /// When it last reported.
    #[serde(with = "epoch_millis")]
    pub last_heartbeat: SystemTime,
    /// How often it reports.
    #[serde(with = "duration_millis")]
    pub heartbeat_interval: Duration,
}

impl WorkerInfo {
    /// Heartbeat intervals after which a silent worker is dropped.
    pub const STALE_AFTER: u32 = 3;

    /// A worker of `queue` in this process, started now, with a new id.
    pub fn new(
        queue: crate::message::QueueName,
        concurrency: u64,
        heartbeat_interval: Duration,
    ) -> Self {
        let now = SystemTime::now();
        WorkerInfo {
            id: crate::message::MessageId::new().to_string(),
            host: host_name(),
            pid: std::process::id(),
            queue,
            concurrency,
            in_flight: 0,
            completed: 0,
            failed: 0,
            started_at: now,
            last_heartbeat: now,
            heartbeat_interval,
        }
    }

    /// How long after its last heartbeat the worker counts as gone.
    pub fn ttl(&self) -> Duration {
        self.heartbeat_interval * WorkerInfo::STALE_AFTER
    }
}

/// Sort workers as [`Admin::workers`](crate::Admin::workers) lists them:
/// by queue, host, pid, then id.
pub fn sort_workers(workers: &mut [WorkerInfo]) {
    workers
        .sort_by(|a, b| (&a.queue, &a.host, a.pid, &a.id).cmp(&(&b.queue, &b.host, b.pid, &b.id)));
}

/// This machine's host name (`/proc/sys/kernel/hostname`, then `HOSTNAME`,
/// then `localhost`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned())
}

impl QueueStats {
    /// `ready + delayed + in_flight`: messages not yet settled.
    pub fn depth(&self) -> u64 {
        self.ready + self.delayed + self.in_flight
    }
}

/// One of the totals of [`ProcessTotals`] (and of [`QueueStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Counter {
    /// Messages accepted by `send` (`enqueued_total`).
    Enqueued,
    /// Deliveries acked (`acked_total`).
    Acked,
    /// Deliveries nacked or whose lease expired (`retried_total`),
    /// counted for the last attempt too, which is also dead-lettered.
    Retried,
    /// Messages moved to the dead-letter queue, for any reason
    /// (`dead_lettered_total`).
    DeadLettered,
    /// Messages that expired before pickup (`expired_total`); they are
    /// dead-lettered too.
    Expired,
}

/// Totals of one queue counted by this process, for brokers that keep no
/// totals of their own (`Totals::Process`): producers and ackers
/// [`add`](ProcessTotals::add) to them, `Admin::stats` copies them into
/// [`QueueStats`] with [`fill`](ProcessTotals::fill).
///
/// ```
/// use queue_core::stats::Counter;
/// use queue_core::{ProcessTotals, QueueStats};
/// let totals = ProcessTotals::default();
/// totals.add(Counter::Enqueued, 3);
/// totals.add(Counter::Acked, 1);
/// let mut stats = QueueStats::default();
/// totals.fill(&mut stats);
/// assert_eq!((stats.enqueued_total, stats.acked_total), (3, 1));
/// ```
#[derive(Debug, Default)]
pub struct ProcessTotals {
    enqueued: std::sync::atomic::AtomicU64,
    acked: std::sync::atomic::AtomicU64,
    retried: std::sync::atomic::AtomicU64,
    dead_lettered: std::sync::atomic::AtomicU64,
    expired: std::sync::atomic::AtomicU64,
}

impl ProcessTotals {
    /// Count `n` more of `counter`.
    pub fn add(&self, counter: Counter, n: u64) {
        let total = match counter {
            Counter::Enqueued => &self.enqueued,
            Counter::Acked => &self.acked,
            Counter::Retried => &self.retried,
            Counter::DeadLettered => &self.dead_lettered,
            Counter::Expired => &self.expired,
        };
        total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Copy the totals into `stats`.
    pub fn fill(&self, stats: &mut QueueStats) {
        use std::sync::atomic::Ordering::Relaxed;
        stats.enqueued_total = self.enqueued.load(Relaxed);
        stats.acked_total = self.acked.load(Relaxed);
        stats.retried_total = self.retried.load(Relaxed);
        stats.dead_lettered_total = self.dead_lettered.load(Relaxed);
        stats.expired_total = self.expired.load(Relaxed);
    }
}

/// [`ProcessTotals`] per queue, created on first use.
#[derive(Debug, Default)]
pub struct ProcessTotalsMap(
    std::sync::Mutex<
        std::collections::HashMap<crate::message::QueueName, std::sync::Arc<ProcessTotals>>,
    >,
);

impl ProcessTotalsMap {
    /// The totals of `queue`.
    pub fn of(&self, queue: &crate::message::QueueName) -> std::sync::Arc<ProcessTotals> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(queue.clone())
            .or_default()
            .clone()
    }
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "detail")]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The last allowed attempt failed.
    MaxAttempts,
    /// The message's TTL passed before pickup.
    Expired,
    /// The bytes on the queue could not be decoded.
    Decode,
    /// The handler said the failure is permanent, or a user dead-lettered it.
    Rejected(String),
}

impl DeadLetterReason {
    /// The short name: `max_attempts`, `expired`, `decode` or `rejected`.
    pub fn as_str(&self) -> &str {
        match self {
            DeadLetterReason::MaxAttempts => "max_attempts",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::Decode => "decode",
            DeadLetterReason::Rejected(_) => "rejected",
        }
    }

    /// Parse the form written by [`Display`](fmt::Display) (`rejected: detail` keeps its detail).
    pub fn parse(s: &str) -> DeadLetterReason {
        match s {
            "max_attempts" => DeadLetterReason::MaxAttempts,
            "expired" => DeadLetterReason::Expired,
            "decode" => DeadLetterReason::Decode,
            other => DeadLetterReason::Rejected(
                other.strip_prefix("rejected: ").unwrap_or(other).to_owned(),
            ),
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterReason::Rejected(detail) => write!(f, "rejected: {detail}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// A message in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message as it was last delivered (its `attempt` is the attempts made).
    pub message: Message,
    /// Why it is here.
    pub reason: DeadLetterReason,
    /// Attempts made before it was dead-lettered (0 if it never reached a consumer).
    pub attempts: u32,
    /// The error of the last failed attempt, if any.
    pub last_error: Option<String>,
    /// When it was dead-lettered.
    pub dead_lettered_at: SystemTime,
    /// The payload's real length: more than `message.payload.len()` when
    /// the letter was read as a preview ([`DeadLetterQuery::preview`](crate::DeadLetterQuery)).
    pub payload_len: usize,
}

impl DeadLetter {
    /// A dead letter made now.
    pub fn new(message: Message, reason: DeadLetterReason, attempts: u32) -> Self {
        let last_error = message.last_error.clone();
        DeadLetter {
            payload_len: message.payload.len(),
            message,
            reason,
            attempts,
            last_error,
            dead_lettered_at: SystemTime::now(),
        }
    }
}

/// Which dead letters to move back to their queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Redrive {
    /// Every dead letter of the queue.
    All,
    /// These messages.
    Ids(Vec<crate::message::MessageId>),
}

/// The result of a health check.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HealthStatus {
    /// Backend name.
    pub backend: &'static str,
    /// Whether the backend answered correctly.
    pub healthy: bool,
    /// How long the check took.
    pub latency: Duration,
    /// The error, when unhealthy (kind and message; never a credential).
    pub error: Option<String>,
    /// The error kind, when unhealthy.
    #[serde(skip)]
    pub error_kind: Option<ErrorKind>,
}

impl HealthStatus {
    /// A healthy status.
    pub fn healthy(backend: &'static str, latency: Duration) -> Self {
        HealthStatus {
            backend,
            healthy: true,
            latency,
            error: None,
            error_kind: None,
        }
    }

    /// Run `check` (bounded in time by the caller) and report it: healthy
    /// with its latency, or unhealthy with its error. Every backend's
    /// `Admin::health` is this around its own probe.
    pub async fn probe(
        backend: &'static str,
        check: impl std::future::Future<Output = Result<()>>,
    ) -> Self {
        let started = std::time::Instant::now();
        match check.await {
            Ok(()) => HealthStatus::healthy(backend, started.elapsed()),
            Err(e) => HealthStatus::unhealthy(backend, started.elapsed(), &e),
        }
    }

    /// An unhealthy status from `error`.
    pub fn unhealthy(backend: &'static str, latency: Duration, error: &Error) -> Self {
        HealthStatus {
            backend,
            healthy: false,
            latency,
            error: Some(error.to_string()),
            error_kind: Some(error.kind()),
        }
    }
}

/// Options of one queue, given to `Admin::ensure_queue`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Validate, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueOptions {
    /// Most messages the queue holds (ready + delayed + in flight); a send
    /// beyond it fails with [`ErrorKind::QueueFull`]. `None` is unbounded.
    #[validate(range(min = 1, message = "must be at least 1"))]
    pub max_length: Option<u64>,
}

impl QueueOptions {
    /// Bound the queue's length.
    #[must_use]
    pub fn with_max_length(mut self, max_length: u64) -> Self {
        self.max_length = Some(max_length);
        self
    }

    /// Validate, naming the field on error.
    pub fn check(&self) -> Result<()> {
        self.validate().map_err(crate::config::validation_error)
    }
}

/// Options of one consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Validate)]
#[non_exhaustive]
pub struct ConsumerOptions {
    /// How long a delivery stays invisible to other consumers before it is
    /// handed out again with `attempt + 1` (100ms to 12h). `None` takes the
    /// backend's configured lease (`lease` in the URL, default 30s).
    #[validate(custom(function = "crate::config::validate_lease"))]
    pub lease: Option<Duration>,
    /// At most this many deliveries of one group
    /// ([`Message::with_group`](crate::Message::with_group)) leased at
    /// once: a group at its limit is passed over until one of its
    /// deliveries is settled. The count is the queue's, across every
    /// consumer and process; give every consumer of a queue the same limit.
    /// Needs native group fairness
    /// ([`Capabilities::group_fairness`](crate::Capabilities::group_fairness));
    /// elsewhere the consumer is refused.
    #[validate(range(min = 1, message = "must be at least 1"))]
    pub group_limit: Option<u32>,
}

impl ConsumerOptions {
    /// Lease at most `limit` deliveries of one group at once.
    #[must_use]
    pub fn with_group_limit(mut self, limit: u32) -> Self {
        self.group_limit = Some(limit);
        self
    }

    /// Set the lease.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Validate, naming the field on error.
    pub fn check(&self) -> Result<()> {
        self.validate().map_err(crate::config::validation_error)
    }
}
