//! Typed jobs: a serde payload with options, encoded into a [`Message`].

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use validator::{Validate, ValidationError};

use crate::config::validation_error;
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Headers, Message, MessageId, Priority};

/// Header carrying a job's timeout in milliseconds.
pub const HEADER_TIMEOUT_MS: &str = "x-queue-timeout-ms";
/// The shortest per-attempt timeout a job or worker may set.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// The longest per-attempt timeout a job or worker may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);
/// Header carrying a job's own backoff: `initial_ms,max_ms,multiplier,jitter(0|1)`.
pub const HEADER_BACKOFF: &str = "x-queue-backoff";
/// Header naming the schedule a periodic job comes from.
pub const HEADER_SCHEDULE: &str = "x-queue-schedule";
/// Header carrying the tick a periodic job stands for, in Unix milliseconds
/// (absent on a job triggered by hand).
pub const HEADER_SCHEDULE_TICK: &str = "x-queue-schedule-tick";
/// Header naming the group a job belongs to ([`Message::with_group`](crate::Message::with_group)).
pub const HEADER_GROUP: &str = "x-queue-group";

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Queued, waiting for a worker.
    Pending,
    /// Queued with a delay or run-at time not yet reached.
    Scheduled,
    /// A worker is running it.
    Running,
    /// Finished successfully.
    Completed,
    /// The last attempt failed (terminal for jobs that are not retried).
    Failed,
    /// Cancelled before it finished.
    Cancelled,
    /// An attempt failed; another is scheduled.
    Retry,
    /// Dead-lettered: attempts exhausted, permanently failed, or expired.
    Dead,
}

impl JobStatus {
    /// Whether the job will not change status again (unless redriven).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Dead
        )
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Scheduled => "scheduled",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Retry => "retry",
            JobStatus::Dead => "dead",
        }
    }
}

impl JobStatus {
    /// Every status, in the order of a job's life.
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Pending,
        JobStatus::Scheduled,
        JobStatus::Running,
        JobStatus::Retry,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Dead,
    ];
}

/// The name of type `T` without its module paths
/// (`Vec<app::jobs::SendEmail>` is `Vec<SendEmail>`): what a job record
/// calls a job of payload `T`.
pub fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::with_capacity(full.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        out.push_str(token.rsplit("::").next().unwrap_or(token));
        token.clear();
    };
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

impl std::str::FromStr for JobStatus {
    type Err = crate::error::Error;

    /// A status from its lowercase name (`dead`, `retry`, ...).
    fn from_str(s: &str) -> crate::error::Result<Self> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
                crate::error::Error::new(
                    crate::error::ErrorKind::InvalidInput,
                    format!("status: {s:?} is not one of {}", names.join(", ")),
                )
            })
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Exponential backoff with full jitter, capped.
///
/// Attempt `n` (from 1) waits a random time in `[0, min(max, initial * multiplier^(n-1))]`
/// with jitter, or exactly that bound without.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Validate)]
#[validate(schema(function = "validate_backoff"))]
pub struct BackoffPolicy {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Never wait longer than this.
    pub max: Duration,
    /// Growth per attempt, 1.0 to 10.0.
    #[validate(range(min = 1.0, max = 10.0, message = "must be between 1.0 and 10.0"))]
    pub multiplier: f64,
    /// Full jitter (a uniform random share of the bound).
    pub jitter: bool,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(15 * 60),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl BackoffPolicy {
    /// The upper bound of the wait after failed attempt `attempt` (from 1).
    pub fn bound(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The wait after failed attempt `attempt`, given a uniform random
    /// `unit` in `[0, 1)` for the jitter.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let bound = self.bound(attempt);
        if self.jitter {
            bound.mul_f64(unit.clamp(0.0, 1.0))
        } else {
            bound
        }
    }
}

fn validate_backoff(policy: &BackoffPolicy) -> Result<(), ValidationError> {
    if policy.initial < Duration::from_millis(1)
        || policy.max < policy.initial
        || policy.max > crate::message::MAX_DELAY
    {
        let mut err = ValidationError::new("backoff_range");
        err.message = Some(Cow::Borrowed(
            "backoff: initial must be at least 1ms, max at least initial and at most 365 days",
        ));
        return Err(err);
    }
    Ok(())
}

/// Options of one job. Validated by [`JobOptions::check`] (and on encode).
///
/// ```
/// use queue_core::{JobOptions, Priority};
/// use std::time::Duration;
/// let options = JobOptions::default()
///     .with_priority(Priority::High)
///     .with_delay(Duration::from_secs(10))
///     .with_max_retries(3);
/// assert!(options.check().is_ok());
/// let bad = JobOptions::default().with_max_retries(5000);
/// assert!(bad.check().unwrap_err().to_string().contains("max_retries"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Validate)]
#[validate(schema(function = "validate_job_options"))]
#[non_exhaustive]
pub struct JobOptions {
    /// Priority.
    pub priority: Priority,
    /// Run no earlier than this long after submission.
    pub delay: Option<Duration>,
    /// Run no earlier than this time (exclusive with `delay`).
    pub run_at: Option<SystemTime>,
    /// Retries after the first attempt (0 to 1000).
    #[validate(range(max = 1000, message = "must be at most 1000"))]
    pub max_retries: u32,
    /// Backoff between attempts; `None` uses the worker's retry policy.
    #[validate(nested)]
    pub backoff: Option<BackoffPolicy>,
    /// Cancel an attempt that runs longer (1ms to 24h).
    #[validate(custom(function = "validate_timeout"))]
    pub timeout: Option<Duration>,
    /// Drop the job if not started within this long (1s to 14 days).
    #[validate(custom(function = "validate_ttl"))]
    pub ttl: Option<Duration>,
    /// Deduplicate submissions with the same key (1 to 256 characters).
    #[validate(length(min = 1, max = 256, message = "must be 1 to 256 characters"))]
    pub idempotency_key: Option<String>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            priority: Priority::Normal,
            delay: None,
            run_at: None,
            max_retries: 3,
            backoff: None,
            timeout: None,
            ttl: None,
            idempotency_key: None,
        }
    }
}

fn validate_job_options(options: &JobOptions) -> Result<(), ValidationError> {
    if options.delay.is_some() && options.run_at.is_some() {
        let mut err = ValidationError::new("delay_and_run_at");
        err.message = Some(Cow::Borrowed("delay and run_at: set at most one of them"));
        return Err(err);
    }
    Ok(())
}

fn range_error(code: &'static str, message: &'static str) -> ValidationError {
    let mut err = ValidationError::new(code);
    err.message = Some(Cow::Borrowed(message));
    err
}

fn validate_timeout(d: &Duration) -> Result<(), ValidationError> {
    if *d < MIN_TIMEOUT || *d > MAX_TIMEOUT {
        return Err(range_error("timeout_range", "must be between 1ms and 24h"));
    }
    Ok(())
}

fn validate_ttl(d: &Duration) -> Result<(), ValidationError> {
    if *d < Duration::from_secs(1) || *d > Duration::from_secs(14 * 86_400) {
        return Err(range_error("ttl_range", "must be between 1s and 14 days"));
    }
    Ok(())
}

impl JobOptions {
    /// Set the priority.
    #[must_use]
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
    /// Run after `delay`.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
    /// Run at `at`.
    #[must_use]
    pub fn with_run_at(mut self, at: SystemTime) -> Self {
        self.run_at = Some(at);
        self
    }
    /// Retry at most `max_retries` times.
    #[must_use]
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }
    /// Back off by `backoff`.
    #[must_use]
    pub fn with_backoff(mut self, backoff: BackoffPolicy) -> Self {
        self.backoff = Some(backoff);
        self
    }
    /// Cancel attempts running longer than `timeout`.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Expire if not started within `ttl`.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// Deduplicate by `key`.
    #[must_use]
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Validate, naming the failing fields.
    pub fn check(&self) -> Result<()> {
        self.validate().map_err(validation_error)
    }

    /// Attempts in all: `max_retries + 1`.
    pub fn max_attempts(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }
}

/// A typed job as a handler sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Job<T> {
    /// The job's id (its message id).
    pub id: MessageId,
    /// The decoded payload.
    pub payload: T,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// Priority.
    pub priority: Priority,
    /// Headers (trace context travels here).
    pub headers: Headers,
    /// When it was submitted.
    pub created_at: SystemTime,
    /// When this attempt became due: the delay or retry backoff's end, or
    /// `created_at` (pickup latency is measured from here).
    pub due_at: SystemTime,
    /// Per-attempt timeout, if any.
    pub timeout: Option<Duration>,
    /// The job's own backoff, if it set one.
    pub backoff: Option<BackoffPolicy>,
    /// The previous attempt's error, if any.
    pub last_error: Option<String>,
}

impl<T: Serialize> Job<T> {
    /// Encode `payload` as JSON into a message carrying `options`.
    pub fn encode(payload: &T, options: &JobOptions) -> Result<Message> {
        options.check()?;
        let bytes = serde_json::to_vec(payload).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                "job payload does not encode as JSON",
            )
            .with_source(e)
        })?;
        // Fields set in place: each builder call would move the message.
        let mut message = Message::new(bytes);
        message.priority = options.priority;
        message.max_attempts = options.max_attempts();
        message.trace = Some(crate::trace::for_send());
        if let Some(delay) = options.delay {
            message = message.with_delay(delay);
        }
        if let Some(at) = options.run_at {
            message = message.with_run_at(at);
        }
        if let Some(ttl) = options.ttl {
            message = message.with_ttl(ttl);
        }
        if let Some(key) = &options.idempotency_key {
            message = message.with_idempotency_key(key.clone());
        }
        if let Some(timeout) = options.timeout {
            message = message.with_header(HEADER_TIMEOUT_MS, timeout.as_millis().to_string());
        }
        if let Some(b) = options.backoff {
            message = message.with_header(
                HEADER_BACKOFF,
                format!(
                    "{},{},{},{}",
                    b.initial.as_millis(),
                    b.max.as_millis(),
                    b.multiplier,
                    u8::from(b.jitter)
                ),
            );
        }
        Ok(message)
    }
}

impl<T: DeserializeOwned> Job<T> {
    /// Decode a message's JSON payload; a typed [`ErrorKind::Decode`] error
    /// when the bytes are not a `T`.
    pub fn decode(message: &Message) -> Result<Job<T>> {
        let payload = serde_json::from_slice(&message.payload).map_err(|e| {
            Error::new(
                ErrorKind::Decode,
                format!(
                    "message {}: payload is not a valid {} ({e})",
                    message.id,
                    std::any::type_name::<T>()
                ),
            )
            .with_source(e)
        })?;
        let timeout = timeout_of(message);
        let backoff = backoff_of(message);
        Ok(Job {
            backoff,
            id: message.id,
            payload,
            attempt: message.attempt,
            max_attempts: message.max_attempts,
            priority: message.priority,
            headers: message.headers.clone(),
            created_at: message.created_at,
            due_at: message
                .not_before
                .map_or(message.created_at, |at| at.max(message.created_at)),
            timeout,
            last_error: message.last_error.clone(),
        })
    }
}

/// The timeout a job set for itself (header `x-queue-timeout-ms`), clamped
/// to [`MIN_TIMEOUT`]..=[`MAX_TIMEOUT`]: the header comes from whoever
/// wrote the message, so no value can make an attempt unbounded or
/// overflow a deadline. `None` without the header or with one that is not
/// a number of milliseconds.
///
/// ```
/// use queue_core::{job, Message};
/// let far = Message::new("x").with_header(job::HEADER_TIMEOUT_MS, u64::MAX.to_string());
/// assert_eq!(job::timeout_of(&far), Some(job::MAX_TIMEOUT));
/// let zero = Message::new("x").with_header(job::HEADER_TIMEOUT_MS, "0");
/// assert_eq!(job::timeout_of(&zero), Some(job::MIN_TIMEOUT));
/// assert_eq!(job::timeout_of(&Message::new("x")), None);
/// ```
pub fn timeout_of(message: &Message) -> Option<Duration> {
    message
        .headers
        .get(HEADER_TIMEOUT_MS)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms).clamp(MIN_TIMEOUT, MAX_TIMEOUT))
}

/// The backoff a job set for itself (header `x-queue-backoff`), if valid.
pub fn backoff_of(message: &Message) -> Option<BackoffPolicy> {
    message
        .headers
        .get(HEADER_BACKOFF)
        .and_then(|v| parse_backoff(v))
}

fn parse_backoff(value: &str) -> Option<BackoffPolicy> {
    let mut parts = value.split(',');
    let initial = Duration::from_millis(parts.next()?.parse().ok()?);
    let max = Duration::from_millis(parts.next()?.parse().ok()?);
    let multiplier = parts.next()?.parse().ok()?;
    let jitter = parts.next()? == "1";
    let policy = BackoffPolicy {
        initial,
        max,
        multiplier,
        jitter,
    };
    policy.validate().ok().map(|()| policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Email {
        to: String,
    }

    #[test]
    fn encode_decode_round_trip_keeps_options() {
        let options = JobOptions::default()
            .with_priority(Priority::Urgent)
            .with_max_retries(4)
            .with_timeout(Duration::from_millis(1500));
        let msg = Job::encode(&Email { to: "a@b".into() }, &options).unwrap();
        assert_eq!(msg.max_attempts, 5);
        let job: Job<Email> = Job::decode(&msg).unwrap();
        assert_eq!(job.payload.to, "a@b");
        assert_eq!(job.priority, Priority::Urgent);
        assert_eq!(job.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(job.backoff, None);
        assert!(msg.trace.is_some(), "a trace context is set at send");
        let backoff = BackoffPolicy {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(4),
            multiplier: 1.5,
            jitter: false,
        };
        let msg = Job::encode(&1u8, &JobOptions::default().with_backoff(backoff)).unwrap();
        assert_eq!(Job::<u8>::decode(&msg).unwrap().backoff, Some(backoff));
    }

    #[test]
    fn decode_of_foreign_bytes_is_typed() {
        let err = Job::<Email>::decode(&Message::new(&b"\xff\x00junk"[..])).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(err.message().contains("Email"));
    }

    #[test]
    fn short_type_names_drop_module_paths() {
        assert_eq!(short_type_name::<String>(), "String");
        assert_eq!(
            short_type_name::<Vec<std::collections::HashMap<u8, String>>>(),
            "Vec<HashMap<u8, String>>"
        );
        assert_eq!("dead".parse::<JobStatus>().unwrap(), JobStatus::Dead);
        let err = "deadd".parse::<JobStatus>().unwrap_err();
        assert!(
            err.to_string().contains("\"deadd\" is not one of pending"),
            "{err}"
        );
    }

    #[test]
    fn invalid_options_name_their_fields() {
        let opts = JobOptions::default()
            .with_delay(Duration::from_secs(1))
            .with_run_at(SystemTime::now())
            .with_timeout(Duration::ZERO)
            .with_idempotency_key("");
        let err = opts.check().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        for field in [
            "timeout: must be between",
            "idempotency_key: must be 1 to 256",
        ] {
            assert!(err.message().contains(field), "{field} missing in {err}");
        }
        let both = JobOptions::default()
            .with_delay(Duration::from_secs(1))
            .with_run_at(SystemTime::now());
        assert!(both
            .check()
            .unwrap_err()
            .message()
            .contains("delay and run_at"));
        let backoff = BackoffPolicy {
            multiplier: 0.5,
            ..BackoffPolicy::default()
        };
        let err = JobOptions::default()
            .with_backoff(backoff)
            .check()
            .unwrap_err();
        assert!(err.message().contains("backoff.multiplier"), "{err}");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let policy = BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: false,
        };
        assert_eq!(policy.delay(1, 0.5), Duration::from_millis(100));
        assert_eq!(policy.delay(3, 0.5), Duration::from_millis(400));
        assert_eq!(policy.delay(30, 0.5), Duration::from_secs(1));
        let jittered = BackoffPolicy {
            jitter: true,
            ..policy
        };
        assert_eq!(jittered.delay(3, 0.5), Duration::from_millis(200));
        assert!(jittered.delay(3, 0.999) < Duration::from_millis(400));
    }
}
