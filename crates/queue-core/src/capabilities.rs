//! What a backend can do: the capability table.
//!
//! A backend with modes (AMQP classic or quorum queues, SQS standard or
//! FIFO queues) returns the table of the mode its URL chose; `mode` names
//! it. `docs/capabilities.md` has one column per backend and mode,
//! generated from these tables and checked against them by tests.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::message::{is_reserved_header, Message, Priority, MAX_DELAY, RESERVED_HEADER_PREFIX};

/// How a backend provides a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Support {
    /// The broker does it itself.
    Native,
    /// The backend builds it from other broker features (documented per backend).
    Emulated,
    /// Not available: using it is a typed [`ErrorKind::Unsupported`] error.
    Unsupported,
}

impl Support {
    /// Whether the feature can be used at all.
    pub fn is_available(self) -> bool {
        !matches!(self, Support::Unsupported)
    }
}

impl fmt::Display for Support {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Support::Native => "native",
            Support::Emulated => "emulated",
            Support::Unsupported => "unsupported",
        })
    }
}

/// Where a feature that needs state shared by every worker process
/// (periodic jobs, rate limits, fleet-wide concurrency) keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Coordinated {
    /// In the backend itself ([`Backend::coordination`](crate::Backend::coordination)).
    Native,
    /// In a coordination store given by URL (a Redis one, say): without
    /// one, the feature is refused with an error naming what to configure.
    NeedsStore,
    /// Not available.
    Unsupported,
}

impl fmt::Display for Coordinated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Coordinated::Native => "native",
            Coordinated::NeedsStore => "needs a store",
            Coordinated::Unsupported => "unsupported",
        })
    }
}

/// The message order a consumer observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// First in, first out within each priority level, for the whole queue.
    FifoPerPriority,
    /// First in, first out within a partition; messages of one
    /// [ordering key](Message::ordering_key) share a partition.
    FifoPerPartition,
    /// First in, first out among the messages of one ordering key (an SQS
    /// FIFO message group).
    FifoPerKey,
    /// No order is promised.
    None,
}

/// How exact the counts of `Admin::stats` are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatsAccuracy {
    /// Exact right after any operation.
    Exact,
    /// Exact, but they trail operations by a moment (the broker updates
    /// them asynchronously).
    Lagging,
    /// Estimates the broker keeps (SQS's `Approximate*` attributes).
    Approximate,
}

/// Where the totals of `QueueStats` (`enqueued_total`, `acked_total`,
/// `expired_total`, ...) are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Totals {
    /// Kept with the queue: every process sees the same totals.
    Queue,
    /// Counted by this process since the backend connected.
    Process,
}

/// How a redelivery's `attempt` is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedeliveryCount {
    /// Every redelivery counts: a nack, a lease that ran out, a consumer
    /// that went away.
    Exact,
    /// Nacks count; a delivery the broker hands out again by itself (a lost
    /// connection) may come back with the same attempt.
    OnNack,
    /// The broker keeps no count: attempts come from the message only.
    None,
}

/// Where a settle on a lost lease is noticed (and refused with
/// [`ErrorKind::LeaseLost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseLossDetection {
    /// By the broker (or the in-process store): a lease token that no
    /// longer holds is refused, whoever holds the message now.
    Broker,
    /// By the client, from the lease deadline it holds; a settle after it
    /// makes no broker call.
    Local,
    /// Not detected: a late settle may succeed.
    Never,
}

/// A backend's capability table: per feature, native / emulated /
/// unsupported, plus its limits. The manager checks queue options against it
/// at startup and producers check each message before any network call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// Backend name (`memory`, `redis`, ...).
    pub backend: &'static str,
    /// The backend's mode this table describes (`classic`, `quorum`,
    /// `standard`, `fifo`); `None` for backends with a single mode.
    pub mode: Option<&'static str>,
    /// Priority levels.
    pub priority: Support,
    /// Delayed delivery (`with_delay`, `with_run_at`).
    pub delay: Support,
    /// Message expiry.
    pub ttl: Support,
    /// Dead-letter queue with reason and attempts.
    pub dead_letter: Support,
    /// Listing dead letters and moving them back.
    pub redrive: Support,
    /// Deduplication by idempotency key.
    pub idempotency: Support,
    /// Extending a delivery's lease.
    pub lease_extension: Support,
    /// Bounded queue length.
    pub max_length: Support,
    /// Purging a queue.
    pub purge: Support,
    /// Whether a purge also removes delivered, unsettled messages (else
    /// they stay until settled).
    pub purge_in_flight: bool,
    /// Pausing and resuming a queue for every consumer in every process
    /// (`Admin::pause`, `Admin::resume`).
    pub pause: Support,
    /// Holding the registry of running workers (`Admin::register_worker`,
    /// `Admin::workers`), so tools list them across processes.
    pub worker_registry: Support,
    /// Periodic jobs (cron and interval schedules, one leader).
    pub periodic_jobs: Coordinated,
    /// Rate limits per queue and per key across every worker.
    pub rate_limits: Coordinated,
    /// At most N jobs of a queue running across every worker.
    pub global_concurrency: Coordinated,
    /// Round-robin between the groups of a queue's jobs, with a limit per group.
    pub group_fairness: Coordinated,
    /// How exact `stats` counts are.
    pub stats: StatsAccuracy,
    /// Where `stats` totals are kept.
    pub totals: Totals,
    /// How redeliveries are counted in `attempt`.
    pub redeliveries: RedeliveryCount,
    /// Where a settle after the lease was lost is noticed.
    pub lease_loss: LeaseLossDetection,
    /// Whether a consumer joining or leaving makes the broker reassign work
    /// among all consumers (a Kafka group rebalance), so consumers are best
    /// started together.
    pub rebalances_on_join: bool,
    /// Whether the broker may accept part of a batch: then a failed
    /// `send_batch` says per message which were accepted.
    pub partial_batches: bool,
    /// Message order a consumer sees.
    pub ordering: Ordering,
    /// Largest message in bytes, payload and metadata
    /// ([`Message::wire_size`]).
    pub max_payload: usize,
    /// Most user headers per message (`None`: no limit of its own).
    pub max_headers: Option<usize>,
    /// Most bytes of header names and values per message (`None`: no limit
    /// besides `max_payload`).
    pub max_header_bytes: Option<usize>,
    /// Longest delay the broker holds natively; longer delays are hopped.
    pub max_native_delay: Option<Duration>,
    /// Most messages per native send batch.
    pub max_batch: usize,
    /// Most bytes per send batch, summed over [`Message::wire_size`]
    /// (`None`: only `max_batch` and `max_payload` apply).
    pub max_batch_bytes: Option<usize>,
    /// Most messages one `receive` call returns.
    pub max_receive: usize,
    /// Shortest lease the backend holds.
    pub min_lease: Duration,
    /// Longest lease (and extension) the backend holds.
    pub max_lease: Duration,
    /// Leases are rounded up to a multiple of this (SQS: whole seconds).
    pub lease_granularity: Duration,
    /// Idempotency window: a repeated key inside it is dropped.
    pub idempotency_window: Option<Duration>,
}

impl Capabilities {
    /// A table for `backend` that supports nothing yet: a backend crate
    /// starts from this and sets each field (the struct is
    /// `#[non_exhaustive]`, so other crates cannot build it literally).
    pub fn new(backend: &'static str) -> Self {
        Capabilities {
            backend,
            mode: None,
            priority: Support::Unsupported,
            delay: Support::Unsupported,
            ttl: Support::Unsupported,
            dead_letter: Support::Unsupported,
            redrive: Support::Unsupported,
            idempotency: Support::Unsupported,
            lease_extension: Support::Unsupported,
            max_length: Support::Unsupported,
            purge: Support::Unsupported,
            purge_in_flight: false,
            pause: Support::Unsupported,
            worker_registry: Support::Unsupported,
            periodic_jobs: Coordinated::NeedsStore,
            rate_limits: Coordinated::NeedsStore,
            global_concurrency: Coordinated::NeedsStore,
            group_fairness: Coordinated::NeedsStore,
            stats: StatsAccuracy::Approximate,
            totals: Totals::Process,
            redeliveries: RedeliveryCount::None,
            lease_loss: LeaseLossDetection::Never,
            rebalances_on_join: false,
            partial_batches: false,
            ordering: Ordering::None,
            max_payload: 0,
            max_headers: None,
            max_header_bytes: None,
            max_native_delay: None,
            max_batch: 1,
            max_batch_bytes: None,
            max_receive: 1,
            min_lease: crate::config::MIN_LEASE,
            max_lease: crate::config::MAX_LEASE,
            lease_granularity: Duration::from_millis(1),
            idempotency_window: None,
        }
    }

    /// The table of a backend that does everything itself, exactly: every
    /// feature native, exact stats with totals kept with the queue, every
    /// redelivery counted, lost leases refused by the broker, FIFO per
    /// priority. The memory backend's table, and Redis's, start from it
    /// and set their limits.
    pub fn native(backend: &'static str) -> Self {
        let mut caps = Capabilities::new(backend);
        caps.priority = Support::Native;
        caps.delay = Support::Native;
        caps.ttl = Support::Native;
        caps.dead_letter = Support::Native;
        caps.redrive = Support::Native;
        caps.idempotency = Support::Native;
        caps.lease_extension = Support::Native;
        caps.max_length = Support::Native;
        caps.purge = Support::Native;
        caps.purge_in_flight = true;
        caps.pause = Support::Native;
        caps.worker_registry = Support::Native;
        caps.periodic_jobs = Coordinated::Native;
        caps.rate_limits = Coordinated::Native;
        caps.global_concurrency = Coordinated::Native;
        caps.group_fairness = Coordinated::Native;
        caps.stats = StatsAccuracy::Exact;
        caps.totals = Totals::Queue;
        caps.redeliveries = RedeliveryCount::Exact;
        caps.lease_loss = LeaseLossDetection::Broker;
        caps.ordering = Ordering::FifoPerPriority;
        caps
    }

    /// The column of this table in `docs/capabilities.md`: the backend,
    /// and its mode if it has several (`amqp quorum`).
    pub fn column(&self) -> String {
        match self.mode {
            Some(mode) => format!("{} {mode}", self.backend),
            None => self.backend.to_owned(),
        }
    }

    /// Whether a settle on a lost lease is refused with `LeaseLost`.
    pub fn detects_lease_lost(&self) -> bool {
        self.lease_loss != LeaseLossDetection::Never
    }

    /// Whether `stats` counts are exact right after an operation.
    pub fn exact_stats(&self) -> bool {
        self.stats == StatsAccuracy::Exact
    }

    /// Check one outgoing message against the table: size, headers,
    /// priority, delay, TTL and idempotency support. Called before any
    /// network call.
    pub fn check_message(&self, message: &Message) -> Result<()> {
        let size = message.wire_size();
        if size > self.max_payload {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "message {} is {size} bytes with its metadata; the {} backend accepts at most {} bytes",
                    message.id, self.backend, self.max_payload
                ),
            ));
        }
        self.check_headers(message)?;
        if message.priority != Priority::Normal && !self.priority.is_available() {
            return Err(self.unsupported("priority"));
        }
        if message.not_before.is_some() && !self.delay.is_available() {
            return Err(self.unsupported("delayed delivery"));
        }
        if message.expires_at.is_some() && !self.ttl.is_available() {
            return Err(self.unsupported("message TTL"));
        }
        if message.idempotency_key.is_some() && !self.idempotency.is_available() {
            return Err(self.unsupported("idempotency keys"));
        }
        let invalid = |what: String| {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!("message {}: {what}", message.id),
            ))
        };
        // Read the clock only for a message with a time on it.
        let horizon = || std::time::SystemTime::now() + MAX_DELAY + Duration::from_secs(60);
        if message.not_before.is_some_and(|at| at > horizon()) {
            return invalid(format!(
                "delay is longer than the maximum of {}",
                days(MAX_DELAY)
            ));
        }
        if message.expires_at.is_some_and(|at| at > horizon()) {
            return invalid(format!(
                "TTL is longer than the maximum of {}",
                days(MAX_DELAY)
            ));
        }
        if message.attempt == 0 {
            return invalid("attempt must be at least 1".to_owned());
        }
        if message.max_attempts == 0 {
            return invalid("max_attempts must be at least 1".to_owned());
        }
        let too_long = |key: &Option<std::sync::Arc<str>>| {
            key.as_ref().is_some_and(|k| k.len() > u16::MAX as usize)
        };
        if too_long(&message.idempotency_key) || too_long(&message.ordering_key) {
            return invalid(format!("keys are at most {} bytes", u16::MAX));
        }
        if let Some(group) = message.group() {
            if let Err(e) = crate::message::check_group_key(group) {
                return invalid(e.message().to_owned());
            }
            if self.group_fairness != Coordinated::Native {
                return Err(self.without_groups("group fairness (Message::with_group)"));
            }
        }
        Ok(())
    }

    /// User headers: none in the reserved namespace, and within the
    /// backend's count and byte limits.
    fn check_headers(&self, message: &Message) -> Result<()> {
        if message.headers.is_empty() {
            return Ok(());
        }
        let invalid = |what: String| {
            Err(Error::new(
                ErrorKind::InvalidInput,
                format!("message {}: {what}", message.id),
            ))
        };
        if let Some(name) = message.headers.keys().find(|name| is_reserved_header(name)) {
            return invalid(format!(
                "header {name:?} is in the namespace {RESERVED_HEADER_PREFIX:?}, reserved for the library's own metadata"
            ));
        }
        if let Some(name) = message
            .headers
            .keys()
            .find(|name| name.len() > u16::MAX as usize)
        {
            return invalid(format!(
                "a header name of {} bytes is longer than {}",
                name.len(),
                u16::MAX
            ));
        }
        let count = message.headers.len();
        if let Some(max_headers) = self.max_headers.filter(|&max| count > max) {
            return invalid(format!(
                "{count} headers; the {} backend carries at most {max_headers}",
                self.backend
            ));
        }
        if let Some(max) = self.max_header_bytes {
            let bytes: usize = message.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
            if bytes > max {
                return Err(Error::new(
                    ErrorKind::PayloadTooLarge,
                    format!(
                        "message {}: {bytes} bytes of headers; the {} backend carries at most {max}",
                        message.id, self.backend
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Check every message of a batch, and the batch's count and bytes.
    pub fn check_batch(&self, messages: &[Message]) -> Result<()> {
        if messages.len() > self.max_batch {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "a batch of {} messages is larger than the {} backend's maximum of {}; split it",
                    messages.len(),
                    self.backend,
                    self.max_batch
                ),
            ));
        }
        messages.iter().try_for_each(|m| self.check_message(m))?;
        if let Some(max) = self.max_batch_bytes {
            let bytes: usize = messages.iter().map(Message::wire_size).sum();
            if bytes > max {
                return Err(Error::new(
                    ErrorKind::PayloadTooLarge,
                    format!(
                        "a batch of {bytes} bytes is larger than the {} backend's maximum of {max} bytes per batch; split it",
                        self.backend
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Check the `max` of a `receive`: 1 to `max_receive`, else
    /// [`ErrorKind::InvalidInput`] naming the range.
    pub fn check_receive(&self, max: usize) -> Result<()> {
        if max == 0 || max > self.max_receive {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("receive max must be 1 to {}, got {max}", self.max_receive),
            ));
        }
        Ok(())
    }

    /// Check a lease (a consumer's, or an extension) against the backend's
    /// bounds and round it up to its granularity.
    pub fn check_lease(&self, lease: Duration) -> Result<Duration> {
        if lease < self.min_lease || lease > self.max_lease {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "lease: must be between {:?} and {:?} on the {} backend, got {lease:?}",
                    self.min_lease,
                    self.max_lease,
                    self.column()
                ),
            ));
        }
        let step = self.lease_granularity.as_nanos().max(1);
        let rounded = lease.as_nanos().div_ceil(step) * step;
        Ok(Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX)).min(self.max_lease))
    }

    /// Check a consumer's options against the table: a group limit needs
    /// native group fairness.
    pub fn check_consumer(&self, options: &crate::stats::ConsumerOptions) -> Result<()> {
        options.check()?;
        if options.group_limit.is_some() && self.group_fairness != Coordinated::Native {
            return Err(self.without_groups("group limits (ConsumerOptions::group_limit)"));
        }
        Ok(())
    }

    /// The typed error for a group `feature` on a backend that delivers in
    /// its own order: it names the wrapper that adds groups, where a
    /// coordination store can.
    fn without_groups(&self, feature: &str) -> Error {
        let why = "it delivers in its own order, so a group's backlog would hold the others back";
        match self.group_fairness {
            Coordinated::NeedsStore => Error::new(
                ErrorKind::Unsupported,
                format!(
                    "the {} backend has no {feature} of its own ({why}): wrap it with \
                     `queue::with_store(backend, store)` and a coordination store \
                     (`QUEUE_COORDINATION_URL=redis://...` or `postgres://...`)",
                    self.column()
                ),
            ),
            _ => self.unsupported(&format!("{feature}: {why}")),
        }
    }

    /// The typed error for using `feature` on this backend.
    pub fn unsupported(&self, feature: &str) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            format!("the {} backend does not support {feature}", self.column()),
        )
    }

    /// Require `support` for `feature`, or return the typed error.
    pub fn require(&self, support: Support, feature: &str) -> Result<()> {
        if support.is_available() {
            Ok(())
        } else {
            Err(self.unsupported(feature))
        }
    }

    /// The table as Markdown rows (`| feature | value |`), for docs and the CLI.
    pub fn to_markdown_rows(&self) -> Vec<(String, String)> {
        let limit = |v: Option<usize>, unit: &str| match v {
            Some(v) => format!("{v}{unit}"),
            None => "unlimited".to_owned(),
        };
        let duration = |d: Duration| {
            if d.subsec_millis() == 0 && d.as_secs() > 0 {
                format!("{} s", d.as_secs())
            } else {
                format!("{} ms", d.as_millis())
            }
        };
        vec![
            ("priority".into(), self.priority.to_string()),
            ("delay".into(), self.delay.to_string()),
            ("ttl".into(), self.ttl.to_string()),
            ("dead letters".into(), self.dead_letter.to_string()),
            ("redrive".into(), self.redrive.to_string()),
            ("idempotency keys".into(), self.idempotency.to_string()),
            ("lease extension".into(), self.lease_extension.to_string()),
            ("max length".into(), self.max_length.to_string()),
            ("purge".into(), self.purge.to_string()),
            (
                "purge removes in-flight".into(),
                self.purge_in_flight.to_string(),
            ),
            ("pause".into(), self.pause.to_string()),
            ("worker registry".into(), self.worker_registry.to_string()),
            ("periodic jobs".into(), self.periodic_jobs.to_string()),
            ("rate limits".into(), self.rate_limits.to_string()),
            (
                "global concurrency".into(),
                self.global_concurrency.to_string(),
            ),
            ("group fairness".into(), self.group_fairness.to_string()),
            ("stats".into(), snake(&self.stats)),
            ("totals".into(), snake(&self.totals)),
            ("redeliveries counted".into(), snake(&self.redeliveries)),
            ("lost leases detected".into(), snake(&self.lease_loss)),
            (
                "rebalances on join".into(),
                self.rebalances_on_join.to_string(),
            ),
            ("partial batches".into(), self.partial_batches.to_string()),
            ("ordering".into(), snake(&self.ordering)),
            ("max payload".into(), format!("{} bytes", self.max_payload)),
            ("max headers".into(), limit(self.max_headers, "")),
            (
                "max header bytes".into(),
                limit(self.max_header_bytes, " bytes"),
            ),
            (
                "max native delay".into(),
                self.max_native_delay
                    .map_or_else(|| "unlimited".to_owned(), duration),
            ),
            ("max send batch".into(), self.max_batch.to_string()),
            (
                "max batch bytes".into(),
                limit(self.max_batch_bytes, " bytes"),
            ),
            ("max receive".into(), self.max_receive.to_string()),
            (
                "lease".into(),
                format!(
                    "{} to {}",
                    duration(self.min_lease),
                    duration(self.max_lease)
                ),
            ),
            ("lease granularity".into(), duration(self.lease_granularity)),
        ]
    }
}

fn days(d: Duration) -> String {
    format!("{} days", d.as_secs() / 86_400)
}

/// The serde (snake_case) name of a unit enum value, for the Markdown table.
fn snake<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Capabilities {
        let mut caps = Capabilities::new("test");
        caps.delay = Support::Native;
        caps.max_payload = 100;
        caps.max_headers = Some(2);
        caps.max_header_bytes = Some(20);
        caps.max_batch = 10;
        caps.max_batch_bytes = Some(150);
        caps.lease_granularity = Duration::from_secs(1);
        caps.max_lease = Duration::from_secs(60);
        caps
    }

    #[test]
    fn check_message_names_the_problem() {
        let caps = table();
        let overhead = Message::new(Vec::new()).wire_size();
        let err = caps
            .check_message(&Message::new(vec![0u8; 101 - overhead]))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
        assert!(err.message().contains("101 bytes") && err.message().contains("at most 100"));
        assert!(caps
            .check_message(&Message::new(vec![0u8; 100 - overhead]))
            .is_ok());

        let err = caps
            .check_message(&Message::new(&b"x"[..]).with_priority(Priority::High))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.message().contains("priority"));

        let err = caps
            .check_message(&Message::new(&b"x"[..]).with_idempotency_key("k"))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(caps.check_message(&Message::new(&b"x"[..])).is_ok());
    }

    #[test]
    fn the_reserved_header_namespace_is_refused_in_user_headers() {
        let caps = table();
        for name in ["x-queue-attempt", "X-Queue-Anything"] {
            let err = caps
                .check_message(&Message::new("x").with_header(name, "1"))
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(
                err.message().contains(name) && err.message().contains("reserved"),
                "{err}"
            );
        }
        // The library's own job headers are allowed.
        let message = Message::new("x").with_header(crate::job::HEADER_TIMEOUT_MS, "5");
        assert!(caps.check_message(&message).is_ok());
        assert!(caps
            .check_message(&Message::new("x").with_header("x-queued-by", "me"))
            .is_ok());
    }

    #[test]
    fn header_and_batch_limits_are_checked() {
        let caps = table();
        let three = Message::new("x")
            .with_header("a", "1")
            .with_header("b", "2")
            .with_header("c", "3");
        assert!(caps
            .check_message(&three)
            .unwrap_err()
            .message()
            .contains("at most 2"));
        let big = Message::new("x").with_header("a", "x".repeat(30));
        assert_eq!(
            caps.check_message(&big).unwrap_err().kind(),
            ErrorKind::PayloadTooLarge
        );
        let batch: Vec<Message> = (0..4).map(|_| Message::new("y")).collect();
        let err = caps.check_batch(&batch).unwrap_err();
        assert!(err.message().contains("per batch"), "{err}");
        assert!(caps.check_batch(&batch[..2]).is_ok());
    }

    #[test]
    fn leases_are_bounded_and_rounded_to_the_granularity() {
        let caps = table();
        assert_eq!(
            caps.check_lease(Duration::from_millis(1500)).unwrap(),
            Duration::from_secs(2)
        );
        let err = caps.check_lease(Duration::from_secs(61)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("lease: must be between"), "{err}");
    }

    #[test]
    fn markdown_rows_name_values_as_serde_does() {
        let rows = table().to_markdown_rows();
        let get = |k: &str| rows.iter().find(|(f, _)| f == k).unwrap().1.clone();
        assert_eq!(get("stats"), "approximate");
        assert_eq!(get("ordering"), "none");
        assert_eq!(get("lease"), "100 ms to 60 s");
        assert_eq!(get("max headers"), "2");
        assert_eq!(table().column(), "test");
    }
}
