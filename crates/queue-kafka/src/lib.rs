//! The Kafka backend of the `queue` workspace, on rdkafka
//! (`docs/backends/kafka.md`: topics, retry tiers, offsets, what is
//! emulated).
//!
//! A queue is a topic; the ordering key is the record key. Every consumer
//! a backend opens on one queue shares one consumer-group member, polled
//! all the time by a task of its own, so a worker's lanes make one group
//! join and `max.poll.interval.ms` never runs out while handlers run.
//! Acks may finish in any order: the offset committed for a partition is
//! its lowest unfinished record, never past it. Leases are local (Kafka
//! has none). A nack or a dead letter produces a copy first (to the
//! queue, to a retry tier `<topic>.retry.<wait>` when delayed, or to
//! `<topic>.dlq`) and only
//! then marks the original done, so a crash in between delivers twice,
//! never zero times.
//!
//! ```no_run
//! use queue_core::{Backend, ConsumerOptions, Message, QueueName};
//! use queue_kafka::KafkaBackend;
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_core::Result<()> {
//! let backend = KafkaBackend::connect("kafka://127.0.0.1:9092?group=billing").await?;
//! let queue = QueueName::new("invoices")?;
//! backend.producer(&queue).await?.send(Message::new("hello")).await?;
//! let consumer = backend.consumer(&queue, ConsumerOptions::default()).await?;
//! for delivery in consumer.receive(10, Duration::from_secs(1)).await? {
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! The crate has the shape of every backend crate: `config.rs` (URL and
//! options), `backend.rs` (the clients, capabilities, the `Backend`
//! implementation), `shared.rs` (what its handles share: topics, group
//! members, sending), `producer.rs`, `consumer.rs` (with settlement),
//! `admin.rs`, `error.rs` (`classify`), plus `member.rs` (the shared
//! group member), `tracker.rs` (offsets of one partition), `mover.rs`
//! (the retry tiers' mover) and `wire.rs` (topic names, tiers, records).

#![forbid(unsafe_code)]

mod admin;
mod backend;
mod config;
mod consumer;
mod error;
mod member;
mod mover;
mod producer;
mod shared;
mod tracker;
mod wire;

pub use crate::backend::{KafkaBackend, DEFAULT_MAX_RECORD, MAX_BATCH};
pub use crate::config::Settings;
pub use crate::consumer::KafkaConsumer;
pub use crate::producer::KafkaProducer;

/// The connector that plugs `kafka://` and `kafkas://` into
/// [`queue_core::registry`] (the umbrella crate `queue` registers it).
pub const CONNECTOR: queue_core::registry::Connector = queue_core::registry::Connector {
    backend: "kafka",
    schemes: &config::SCHEMES,
    connect: |config| {
        Box::pin(async move {
            let backend = KafkaBackend::from_config(&config).await?;
            Ok(std::sync::Arc::new(backend) as std::sync::Arc<dyn queue_core::Backend>)
        })
    },
};

/// The consumer session timeout the tests and the backend use: with it,
/// a group join on tansu takes about three seconds.
pub const SESSION_TIMEOUT_MS: u32 = 6_000;

/// The bootstrap servers (`host:port,host:port`) of a `kafka://` URL,
/// validated as the backend will validate it.
///
/// ```
/// assert_eq!(
///     queue_kafka::bootstrap_servers("kafka://127.0.0.1:9092,127.0.0.1:9093").unwrap(),
///     "127.0.0.1:9092,127.0.0.1:9093"
/// );
/// assert!(queue_kafka::bootstrap_servers("kafka://127.0.0.1").is_err());
/// ```
pub fn bootstrap_servers(url: &str) -> queue_core::Result<String> {
    let config = queue_core::QueueConfig::from_url(url)?;
    Ok(Settings::from_config(&config)?.servers().to_owned())
}
