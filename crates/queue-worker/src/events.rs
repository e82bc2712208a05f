//! Job lifecycle events, broadcast to any number of listeners.

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use queue_core::message::{MessageId, QueueName};

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
    listeners: Arc<AtomicUsize>,
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
            listeners: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Listen from now on.
    pub fn subscribe(&self) -> EventStream {
        self.listeners.fetch_add(1, AtomicOrdering::AcqRel);
        EventStream {
            receiver: self.sender.subscribe(),
            listeners: self.listeners.clone(),
        }
    }

    /// Whether anyone listens (events are only built when someone does).
    pub fn has_listeners(&self) -> bool {
        self.listeners.load(AtomicOrdering::Acquire) > 0
    }

    /// Send an event built by `make`, if anyone listens.
    pub fn emit(&self, make: impl FnOnce() -> JobEvent) {
        if self.has_listeners() {
            let _ = self.sender.send(make());
        }
    }
}

/// A listener of an [`EventBus`].
#[derive(Debug)]
pub struct EventStream {
    receiver: tokio::sync::broadcast::Receiver<JobEvent>,
    listeners: Arc<AtomicUsize>,
}

impl EventStream {
    /// The next event. `Lagged(n)` says `n` events were skipped because
    /// this listener fell behind; `Closed` that no sender is left.
    pub async fn recv(&mut self) -> Result<JobEvent, tokio::sync::broadcast::error::RecvError> {
        self.receiver.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Result<JobEvent, tokio::sync::broadcast::error::TryRecvError> {
        self.receiver.try_recv()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.listeners.fetch_sub(1, AtomicOrdering::AcqRel);
    }
}
