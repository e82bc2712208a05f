//! The runtime of the `queue` workspace, over any backend of `queue-core`:
//!
//! - [`Worker`]: a pool that runs a handler for every job of a queue, with
//!   retries and backoff, timeouts that cancel, lease extension, panic
//!   isolation, graceful shutdown, tracing spans and metrics.
//! - [`JobScheduler`]: submits typed jobs and tracks their status in a
//!   [`JobStore`](queue_core::JobStore).
//! - [`QueueManager`]: several named backends at once, routing, health,
//!   aggregated stats and one event stream.
//! - [`EventBus`]: lifecycle events of jobs ([`JobEvent`]).
//! - [`schedules`]: periodic jobs (cron expressions in a time zone, or
//!   fixed intervals) fired once per tick by one leader among every
//!   process ([`Schedules`], [`Schedule`]).
//!
//! Backend crates depend on `queue-core` only; this crate depends on the
//! contract, never on a backend. Most users depend on the umbrella crate
//! `queue`, which re-exports it. `docs/worker.md` describes the runtime.

#![forbid(unsafe_code)]

pub mod events;
pub mod manager;
pub mod scheduler;
pub mod schedules;
pub mod worker;

pub use events::{EventBus, EventStream, JobEvent, JobEventKind};
pub use manager::{ManagedQueueStats, ManagerHealth, QueueManager, QueueManagerBuilder};
pub use scheduler::JobScheduler;
pub use schedules::{Schedule, Schedules};
pub use worker::{
    RateKey, ShutdownReport, Worker, WorkerBuilder, WorkerHandle, WorkerHealth, WorkerStats,
    WorkerWithHandler,
};
