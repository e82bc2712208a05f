//! The embedded in-process backend: the reference implementation of every
//! semantic in the conformance suite, and the default when no server runs.
//!
//! Each queue is one mutex-guarded state: four FIFO lists (one per priority),
//! a delay index ordered by due time, an in-flight index ordered by lease
//! deadline, dead letters and an idempotency window. Waiting consumers sleep
//! on a [`Notify`](tokio::sync::Notify) and a timer set to the next due message or lease
//! deadline, so nothing polls.
//!
//! ```
//! use queue_core::{Backend, ConsumerOptions, MemoryBackend, Message, QueueName};
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_core::Result<()> {
//! let backend = MemoryBackend::new();
//! let queue = QueueName::new("emails")?;
//! let producer = backend.producer(&queue).await?;
//! producer.send(Message::new(&b"hello"[..])).await?;
//! let consumer = backend.consumer(&queue, ConsumerOptions::default()).await?;
//! let deliveries = consumer.receive(10, Duration::from_secs(1)).await?;
//! assert_eq!(deliveries[0].payload().as_ref(), b"hello");
//! for delivery in deliveries {
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```

mod admin;
mod backend;
mod config;
mod consumer;
mod error;
mod producer;
mod ready;
mod shared;
mod state;
#[cfg(test)]
mod tests;

pub use backend::MemoryBackend;
pub use consumer::MemoryConsumer;
pub use producer::MemoryProducer;

/// Default payload limit of the memory backend: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// Most messages one `send_batch` carries.
pub const MAX_BATCH: usize = 10_000;
/// Most messages one `receive` returns.
pub const MAX_RECEIVE: usize = 10_000;
