//! Job lifecycle events, broadcast to any number of listeners.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::message::{MessageId, QueueName};

/// What happened to a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum JobEventKind {
    /// Submitted to a queue.
    Enqueued,
    /// A worker started an attempt.
    Started,
    /// The attempt succeeded; the job is done.
    Completed,
    /// The attempt failed (error, timeout or panic).
    Failed {
        /// The error text.
        error: String,
    },
    /// Another attempt is scheduled after `delay`.
    Retried {
        /// The backoff before the next attempt.
        delay: Duration,
    },
    /// The job went to the dead-letter queue.
    DeadLettered {
        /// Why (`max_attempts`, `rejected: ...`, `decode`).
        reason: String,
    },
    /// The job was cancelled (before it ran, or by its handler).
    Cancelled,
}

/// One lifecycle event.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct JobEvent {
    /// What happened.
    #[serde(flatten)]
    pub kind: JobEventKind,
    /// The job (message) id.
    pub job_id: MessageId,
    /// Its queue.
    pub queue: QueueName,
    /// The attempt, from 1 (0 for events before any attempt).
    pub attempt: u32,
    /// For `Started`: time from due to pickup; for outcomes: run time of the attempt.
    pub duration: Option<Duration>,
    /// When it happened.
    pub at: SystemTime,
}

impl JobEvent {
    /// An event that happened now.
    pub fn new(kind: JobEventKind, job_id: MessageId, queue: QueueName, attempt: u32) -> Self {
        JobEvent {
            kind,
            job_id,
            queue,
            attempt,
            duration: None,
            at: SystemTime::now(),
        }
    }

    /// With a duration.
    #[must_use]
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration = Some(duration);
        self
    }
}

/// A broadcast sender of job events that costs nothing when nobody listens.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: tokio::sync::broadcast::Sender<JobEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(4096)
    }
}

impl EventBus {
    /// A bus keeping up to `capacity` events for slow listeners (older ones
    /// are dropped for a listener that lags; it is told how many).
    pub fn new(capacity: usize) -> Self {
        EventBus {
            sender: tokio::sync::broadcast::channel(capacity.max(1)).0,
        }
    }

    /// Listen from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<JobEvent> {
        self.sender.subscribe()
    }

    /// Whether anyone listens (events are only built when someone does).
    pub fn has_listeners(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Send an event built by `make`, if anyone listens.
    pub fn emit(&self, make: impl FnOnce() -> JobEvent) {
        if self.has_listeners() {
            let _ = self.sender.send(make());
        }
    }
}
