//! The Kafka backend of the `queue` workspace, on rdkafka: in progress.
//!
//! Nothing here implements the backend contract yet: the crate holds the
//! broker probes (`tests/broker.rs`) that the backend's design rests on,
//! run against the Kafka-compatible broker `cargo xtask test` starts
//! (`QUEUE_TEST_KAFKA_URL`). `docs/backends/kafka.md` says what they found
//! and what the backend will do with it.

#![forbid(unsafe_code)]

mod admin;
mod backend;
mod config;
mod consumer;
mod error;
mod member;
mod mover;
mod producer;
mod tracker;
mod wire;

pub use crate::backend::{KafkaBackend, DEFAULT_MAX_RECORD, MAX_BATCH};
pub use crate::config::{Settings, DEFAULT_DELAY_HOLD};
pub use crate::consumer::KafkaConsumer;
pub use crate::producer::KafkaProducer;

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
