//! The Redis backend of the `queue` workspace.
//!
//! Every operation is one atomic Lua script over a handful of keys that
//! share the hash tag `{queue}`: a ready set ordered by (priority,
//! sequence), a delayed set by due time, an in-flight set by lease
//! deadline, the envelopes in a hash, dead letters with their reason. A
//! `receive` claims a whole batch in one round trip and
//! [`Consumer::ack_batch`](queue_core::Consumer::ack_batch) settles one in another; waiting consumers block
//! on a notification list instead of polling, and any consumer takes back
//! expired leases, so no separate daemon runs. The key layout and every
//! script are described in `docs/backends/redis.md`.
//!
//! ```no_run
//! use queue_core::{Backend, ConsumerOptions, Message, QueueName};
//! use queue_redis::RedisBackend;
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_core::Result<()> {
//! let backend = RedisBackend::connect("redis://127.0.0.1:6379").await?;
//! let queue = QueueName::new("emails")?;
//! backend.producer(&queue).await?.send(Message::new("hello")).await?;
//! let consumer = backend.consumer(&queue, ConsumerOptions::default()).await?;
//! for delivery in consumer.receive(10, Duration::from_secs(1)).await? {
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! A plain Redis client can enqueue too: `LPUSH <prefix>:{<queue>}:inbox
//! <bytes>` queues an envelope as it is and anything else as a raw payload
//! (fresh id, attempt 1), picked up by the next `receive` (`RPUSH
//! <prefix>:{<queue>}:notify 1` after it wakes a waiting consumer at once).
//!
//! The crate has the shape of every backend crate: `config.rs` (URL and
//! options), `backend.rs` (the backend and its capabilities), `shared.rs`
//! (the connection its handles share), `producer.rs`, `consumer.rs` (with
//! settlement), `admin.rs`, `error.rs` (`classify`),
//! plus `scripts.rs` (the Lua scripts and the key layout), `store.rs`
//! (the job store) and `coordination.rs` (the coordination store).
//!
//! [`RedisBackend::coordination_store`] (also `Backend::coordination`) is
//! a [`RedisCoordination`]: the leases with fencing tokens, rate windows,
//! semaphores and records that periodic jobs, rate limits and fleet-wide
//! concurrency need, shared by every process on the same Redis. Each
//! decision is one script call that reads Redis's own clock (`TIME`), so
//! hosts whose clocks drift still agree.

#![forbid(unsafe_code)]

mod admin;
mod backend;
mod config;
mod consumer;
mod coordination;
mod ctx;
mod error;
mod producer;
mod scripts;
mod shared;
mod store;

use queue_core::QueueName;

pub use crate::backend::RedisBackend;
pub use crate::consumer::RedisConsumer;
pub use crate::coordination::RedisCoordination;
pub use crate::producer::RedisProducer;
pub use crate::store::RedisJobStore;

/// Default payload limit: 16 MiB (Redis allows 512 MiB per value, but big
/// values stall a single-threaded server).
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// The largest value Redis stores (`proto-max-bulk-len` default): 512 MiB.
pub const REDIS_MAX_VALUE: usize = 512 * 1024 * 1024;
/// Most messages one `send_batch` carries (one script call, all or nothing).
pub const MAX_BATCH: usize = 10_000;
/// Most bytes one `send_batch` carries (summed wire sizes): one script
/// call's arguments stay well inside Redis's 1 GiB query buffer.
pub const MAX_BATCH_BYTES: usize = 256 * 1024 * 1024;
/// Most messages one `receive` claims.
pub const MAX_RECEIVE: usize = 1_000;
/// Default key prefix (`prefix` URL parameter).
pub const DEFAULT_PREFIX: &str = "queue";

/// The connector that plugs `redis://` and `rediss://` into
/// [`queue_core::registry`] (the umbrella crate `queue` registers it).
pub const CONNECTOR: queue_core::registry::Connector = queue_core::registry::Connector {
    backend: "redis",
    schemes: &config::SCHEMES,
    connect: |config| {
        Box::pin(async move {
            let backend = RedisBackend::from_config(&config).await?;
            Ok(std::sync::Arc::new(backend) as std::sync::Arc<dyn queue_core::Backend>)
        })
    },
};

/// The inbox key of `queue` under key prefix `prefix`: `LPUSH` bytes there
/// with any Redis client to enqueue them (see the crate docs).
pub fn inbox_key(prefix: &str, queue: &QueueName) -> String {
    scripts::queue_keys(prefix, queue)[scripts::INBOX].clone()
}

/// Every key of `queue` under key prefix `prefix`, as the scripts take them.
pub fn queue_keys(prefix: &str, queue: &QueueName) -> Vec<String> {
    scripts::queue_keys(prefix, queue)
}
