//! The AWS SQS backend of the `queue` workspace, on aws-sdk-sqs.
//!
//! SQS bills per request, so every call is a batch call where the API has
//! one: `send_batch` is `SendMessageBatch` in tens, a receive asks for up to
//! ten with long polling, and acks, nacks and lease extensions from
//! concurrent deliveries are gathered into `DeleteMessageBatch` and
//! `ChangeMessageVisibilityBatch` calls (flushed at ten entries or after a
//! few milliseconds). A settle after the local lease deadline makes no
//! request and fails with `LeaseLost`.
//!
//! Delays up to SQS's 15 minutes are native (`DelaySeconds`); a longer
//! delay hops: the message is sent with the longest native delay, and an
//! arrival before its due time is sent again with the rest. A nack with
//! an error sends a copy (attempt + 1, the error) and deletes the
//! original; a nack without one changes the visibility. Dead letters go to
//! `<queue>-dlq`, which is also the target of the queue's redrive policy.
//!
//! ```no_run
//! use queue_core::{Backend, ConsumerOptions, Message, QueueName};
//! use queue_sqs::SqsBackend;
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_core::Result<()> {
//! let backend = SqsBackend::connect("sqs://eu-west-1").await?;
//! let queue = QueueName::new("emails")?;
//! backend.producer(&queue).await?.send(Message::new("hello")).await?;
//! let consumer = backend.consumer(&queue, ConsumerOptions::default()).await?;
//! for delivery in consumer.receive(10, Duration::from_secs(1)).await? {
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! The crate has the shape of every backend crate: `config.rs` (URL and
//! options), `backend.rs` (the backend and its capabilities), `shared.rs`
//! (what its handles share, and outgoing messages), `producer.rs`, `consumer.rs` (with settlement), `admin.rs`, `error.rs`
//! (`classify`), plus `client.rs` (the SDK client, queue URLs and the
//! request counter), `batcher.rs` (gathering settles into batch calls) and
//! `wire.rs` (names, and messages to and from SQS). `docs/backends/sqs.md`
//! describes it for operators.

#![forbid(unsafe_code)]

mod admin;
mod backend;
mod batcher;
mod client;
mod config;
mod consumer;
mod error;
mod producer;
mod shared;
mod wire;

use std::time::Duration;

pub use crate::backend::SqsBackend;
pub use crate::client::RequestCounter;
pub use crate::config::QueueType;
pub use crate::consumer::SqsConsumer;
pub use crate::producer::SqsProducer;

/// SQS's default largest message, body and attributes: 256 KiB.
pub const DEFAULT_MAX_MESSAGE: usize = 256 * 1024;
/// The largest message SQS takes when the queue allows it: 1 MiB.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Most entries of one SQS batch call (send, delete, change visibility)
/// and most messages of one `ReceiveMessage`.
pub const SQS_BATCH: usize = 10;
/// Most messages one `send_batch` takes; it goes out as concurrent
/// `SendMessageBatch` calls of ten.
pub const MAX_BATCH: usize = 1_000;
/// The longest delay SQS holds itself (`DelaySeconds`): 15 minutes.
pub const MAX_NATIVE_DELAY: Duration = Duration::from_secs(900);
/// The longest visibility timeout, and so the longest lease: 12 hours
/// from the message's receipt.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// The longest long-poll wait of one `ReceiveMessage`: 20 seconds.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// How long a settle waits for others to share its batch call by default
/// (`settle_linger` URL parameter).
pub const DEFAULT_SETTLE_LINGER: Duration = Duration::from_millis(5);
/// The queue's redrive policy `maxReceiveCount` by default
/// (`max_receive_count`): a safety net for messages no consumer of this
/// library settles; the backend dead-letters by `max_attempts` itself.
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 1_000;

/// The connector that plugs `sqs://` into [`queue_core::registry`] (the
/// umbrella crate `queue` registers it).
pub const CONNECTOR: queue_core::registry::Connector = queue_core::registry::Connector {
    backend: "sqs",
    schemes: &config::SCHEMES,
    connect: |config| {
        Box::pin(async move {
            let backend = SqsBackend::from_config(&config).await?;
            Ok(std::sync::Arc::new(backend) as std::sync::Arc<dyn queue_core::Backend>)
        })
    },
};

/// The SQS name of `queue`'s dead-letter queue (`<queue>-dlq`, with the
/// `.fifo` suffix on FIFO queues).
pub fn dead_letter_queue(queue: &queue_core::QueueName, queue_type: QueueType) -> String {
    wire::dlq_name(queue, queue_type)
}

/// The SQS name of `queue` (`<queue>`, or `<queue>.fifo` on FIFO queues).
pub fn queue_name(queue: &queue_core::QueueName, queue_type: QueueType) -> String {
    wire::queue_name(queue, queue_type)
}
