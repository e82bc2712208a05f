//! The RabbitMQ (AMQP 0-9-1) backend of the `queue` workspace, on lapin.
//!
//! Every message is persistent and every publish waits for the broker's
//! confirm: a send returns once RabbitMQ stored the message in a queue,
//! and a broker nack or an unroutable return is an error, never success.
//! A consumer is one channel with `basic.qos` prefetch and one
//! `basic.consume`; leases are kept locally, and a delivery whose lease
//! runs out is given back as a copy with `attempt + 1`. Nacks, dead
//! letters and delays publish a copy (confirmed) and then ack the
//! original, so a crash in between gives a duplicate, never a loss.
//!
//! Delays need no plugin: each queue has delay tiers `<queue>.delay.<k>`
//! holding messages for 2^k ms before the broker dead-letters them back
//! into the queue; a delay goes into the longest tier that does not
//! overshoot, and an arrival before its due time hops on.
//!
//! ```no_run
//! use queue_core::{Backend, ConsumerOptions, Message, QueueName};
//! use queue_amqp::AmqpBackend;
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_core::Result<()> {
//! let backend = AmqpBackend::connect("amqp://guest:guest@127.0.0.1:5672").await?;
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
//! (what its handles share, and the preparation of outgoing messages),
//! `producer.rs`, `consumer/` (the consumer, its state, its pump and its
//! acker), `admin.rs`, `error.rs` (`classify`), plus `link.rs` (the connection and publisher confirms) and `wire.rs`
//! (names, queue arguments, delay tiers, messages to and from AMQP).
//! `docs/backends/amqp.md` describes it for operators.

#![forbid(unsafe_code)]

mod admin;
mod backend;
mod config;
mod consumer;
mod error;
mod link;
mod producer;
mod shared;
mod wire;

use std::time::Duration;

pub use crate::backend::AmqpBackend;
pub use crate::config::QueueType;
pub use crate::consumer::AmqpConsumer;
pub use crate::producer::AmqpProducer;

/// Default payload limit: 16 MiB (RabbitMQ takes up to its
/// `max_message_size`, 128 MiB by default, but big messages stall a queue).
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// The largest `max_payload`: RabbitMQ's default `max_message_size`, 128 MiB.
pub const MAX_FRAME_PAYLOAD: usize = 128 * 1024 * 1024;
/// Most messages one `send_batch` publishes before awaiting the confirms.
pub const MAX_BATCH: usize = 10_000;
/// Most messages one `receive` hands out.
pub const MAX_RECEIVE: usize = 1_000;
/// Default `basic.qos` prefetch of a consumer (`prefetch` URL parameter).
pub const DEFAULT_PREFETCH: u16 = 100;
/// RabbitMQ's default `consumer_timeout` (30 minutes): a delivery unacked
/// longer closes its channel, so no lease may be longer.
pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The connector that plugs `amqp://` and `amqps://` into
/// [`queue_core::registry`] (the umbrella crate `queue` registers it).
pub const CONNECTOR: queue_core::registry::Connector = queue_core::registry::Connector {
    backend: "amqp",
    schemes: &config::SCHEMES,
    connect: |config| {
        Box::pin(async move {
            let backend = AmqpBackend::from_config(&config).await?;
            Ok(std::sync::Arc::new(backend) as std::sync::Arc<dyn queue_core::Backend>)
        })
    },
};

/// The dead-letter queue of `queue` (`<queue>.dlq`).
pub fn dead_letter_queue(queue: &queue_core::QueueName) -> String {
    wire::dlq(queue)
}
