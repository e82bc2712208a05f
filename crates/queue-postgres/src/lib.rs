//! The PostgreSQL backend of the `queue` workspace.
//!
//! Jobs are rows of one table in a schema of their own (default `queue`),
//! created and upgraded by embedded migrations when the backend connects.
//! Every operation is one call of a function of that schema: a `send`
//! inserts a whole batch; a `receive` claims ready rows with
//! `FOR UPDATE SKIP LOCKED`, highest priority and oldest first, and
//! leases them; acks delete the rows, so the table holds only the work
//! still to do. Consumers wait for `LISTEN/NOTIFY` (a trigger announces
//! inserted jobs when their transaction commits) instead of polling, and
//! any consumer takes back expired leases, so no separate daemon runs.
//!
//! What sets it apart is the transactional enqueue:
//! [`PostgresProducer::send_in`] queues a job through the caller's own
//! connection or transaction, so a job belongs to the data it was sent
//! with: rolled back together, or committed together.
//!
//! ```no_run
//! use queue_core::{Backend, ConsumerOptions, Message, QueueName};
//! use queue_postgres::PostgresBackend;
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = PostgresBackend::connect("postgres://127.0.0.1/test").await?;
//! let emails = QueueName::new("emails")?;
//! let producer = backend.postgres_producer(&emails).await?;
//!
//! // In the caller's transaction: the job exists only if it commits.
//! let mut tx = backend.pool().begin().await?;
//! producer.send_in(&mut tx, Message::new("welcome, user 7")).await?;
//! tx.commit().await?;
//!
//! let consumer = backend.consumer(&emails, ConsumerOptions::default()).await?;
//! for delivery in consumer.receive(10, Duration::from_secs(1)).await? {
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! A plain SQL client can enqueue too: `INSERT INTO queue.jobs (queue,
//! body) VALUES ('emails', '...')` queues the bytes as a raw payload (the
//! row's columns, with their defaults, decide its priority, attempts and
//! timing), and wakes waiting consumers at commit.
//! The schema, every function and what each operation costs are
//! described in `docs/backends/postgres.md`.
//!
//! [`PostgresBackend::coordination_store`] (also `Backend::coordination`)
//! is a [`PostgresCoordination`]: the leases with fencing tokens, rate
//! windows, semaphores and records that periodic jobs, rate limits and
//! fleet-wide concurrency need, in the same schema, so those features
//! work on PostgreSQL alone.
//!
//! Jobs with groups (`Message::with_group`) take turns, as on Redis: a
//! grouped job's position in the claim order is one after its group's
//! last ready job, so a tenant's long backlog does not hold the others
//! back, and a consumer may cap how many of one group it holds
//! (`ConsumerOptions::with_group_limit`).
//!
//! [`PostgresBackend::job_store`] (also `Backend::default_job_store`) is
//! a [`PostgresJobStore`]: job records (status, attempts, result, errors)
//! in the same schema, for the worker, `queue jobs` and the dashboard.
//!
//! The crate has the shape of every backend crate: `config.rs` (URL and
//! options), `backend.rs` (the backend, its migrations and capabilities),
//! `shared.rs` (the pool and the notification listener), `producer.rs`,
//! `consumer.rs` (with settlement), `admin.rs`, `error.rs` (`classify`),
//! plus `ctx.rs` (one queue's handle), `coordination.rs` (the
//! coordination store), `store.rs` (the job store) and `migrations/`
//! (the schema).

#![forbid(unsafe_code)]

mod admin;
mod backend;
mod config;
mod consumer;
mod coordination;
mod ctx;
mod error;
mod producer;
mod shared;
mod store;

pub use crate::backend::PostgresBackend;
pub use crate::config::{DEFAULT_POOL_SIZE, MAX_SCHEMA_LEN};
pub use crate::consumer::PostgresConsumer;
pub use crate::coordination::PostgresCoordination;
pub use crate::producer::PostgresProducer;
pub use crate::store::PostgresJobStore;

/// Default payload limit: 16 MiB (PostgreSQL takes up to 1 GiB in a
/// `bytea`, but big rows slow every claim that reads them).
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// The largest payload the backend accepts (`max_payload` above it is
/// held to it): 256 MiB, well inside PostgreSQL's 1 GiB per value.
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;
/// Most messages one `send_batch` carries (one function call).
pub const MAX_BATCH: usize = 10_000;
/// Most bytes one `send_batch` carries (summed wire sizes).
pub const MAX_BATCH_BYTES: usize = 256 * 1024 * 1024;
/// Most messages one `receive` claims.
pub const MAX_RECEIVE: usize = 1_000;
/// Default schema (`schema` URL parameter).
pub const DEFAULT_SCHEMA: &str = "queue";

/// The connector that plugs `postgres://` and `postgresql://` into
/// [`queue_core::registry`] (the umbrella crate `queue` registers it).
pub const CONNECTOR: queue_core::registry::Connector = queue_core::registry::Connector {
    backend: "postgres",
    schemes: &config::SCHEMES,
    connect: |config| {
        Box::pin(async move {
            let backend = PostgresBackend::from_config(&config).await?;
            Ok(std::sync::Arc::new(backend) as std::sync::Arc<dyn queue_core::Backend>)
        })
    },
};
