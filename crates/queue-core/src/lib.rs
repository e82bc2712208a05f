//! Core of the `queue` workspace: the types, traits, errors, configuration
//! and capability tables every backend shares, and the embedded
//! [`MemoryBackend`].
//!
//! Most users depend on the umbrella crate `queue`, which re-exports this
//! crate and turns backends on by feature. Backend authors implement
//! [`Backend`], [`Producer`], [`Consumer`], [`Acker`] and [`Admin`] and run
//! the shared conformance suite of `queue-testkit`.
//!
//! - Messages and typed jobs: [`Message`], [`Job`], [`JobOptions`], [`Priority`], [`JobStatus`].
//! - The contract: [`traits`] (`docs/architecture.md` maps it onto every broker).
//! - Errors: [`Error`] with an [`ErrorKind`] and `is_retryable()`; [`HandlerError`] for user code.
//! - Configuration: [`config::QueueConfig`] from a URL or `QUEUE_*` variables.
//! - Wire format: [`envelope`] for brokers without native headers.
//! - State shared by every worker (leases, rate windows, semaphores): [`coordination`].

#![forbid(unsafe_code)]

pub mod capabilities;
pub mod config;
pub mod coordination;
pub mod dead_letters;
pub mod envelope;
pub mod error;
pub mod groups;
pub mod job;
pub mod memory;
pub mod message;
mod random;
pub mod registry;
pub mod stats;
pub mod store;
pub mod trace;
pub mod traits;

pub use capabilities::{
    Capabilities, Coordinated, LeaseLossDetection, Ordering, RedeliveryCount, StatsAccuracy,
    Support, Totals,
};
pub use config::{QueueConfig, SecretUrl};
pub use coordination::{Coordination, Lease, MemoryCoordination, Permits, Rate, Slot};
pub use dead_letters::{DeadLetterCursor, DeadLetterPage, DeadLetterQuery};
pub use error::{BatchError, BoxError, Error, ErrorKind, HandlerAction, HandlerError, Result};
pub use groups::with_store;
pub use job::{short_type_name, BackoffPolicy, Job, JobOptions, JobStatus};
pub use memory::MemoryBackend;
pub use message::{Headers, Message, MessageId, Nacked, Priority, QueueName};
pub use stats::{
    ConsumerOptions, DeadLetter, DeadLetterReason, HealthStatus, ProcessTotals, ProcessTotalsMap,
    QueueOptions, QueueStats, Redrive, WorkerInfo,
};
pub use store::{
    AttemptError, JobCursor, JobPage, JobQuery, JobRecord, JobStats, JobStore, JobUpdate,
    MemoryJobStore, RetentionPolicy,
};
pub use traits::{
    AckAndReceive, Acker, Admin, Backend, CloseFlag, Consumer, Delivery, DeliveryError, Producer,
    ProducerExt, StopFlag,
};
