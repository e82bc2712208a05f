#![doc = include_str!("../../../README.md")]
#![forbid(unsafe_code)]

use std::sync::Arc;

pub use queue_core::*;
pub use queue_worker::*;

/// The Prometheus exporter ([`prometheus::PrometheusExporter`]).
#[cfg(feature = "prometheus")]
pub use queue_prometheus as prometheus;

/// The Redis backend ([`redis::RedisBackend`], [`redis::RedisJobStore`]).
#[cfg(feature = "redis")]
pub use queue_redis as redis;

/// The RabbitMQ backend ([`amqp::AmqpBackend`]).
#[cfg(feature = "amqp")]
pub use queue_amqp as amqp;

/// The AWS SQS backend ([`sqs::SqsBackend`]).
#[cfg(feature = "sqs")]
pub use queue_sqs as sqs;

/// The Kafka backend ([`kafka::KafkaBackend`]).
#[cfg(feature = "kafka")]
pub use queue_kafka as kafka;

/// The PostgreSQL backend ([`postgres::PostgresBackend`], with
/// [`postgres::PostgresProducer::send_in`] to enqueue in the caller's own
/// transaction).
#[cfg(feature = "postgres")]
pub use queue_postgres as postgres;

/// The web dashboard ([`web::Dashboard`]): pages and a JSON API as an
/// axum `Router` to mount in a service.
#[cfg(feature = "web")]
pub use queue_web as web;

/// Every backend this crate can compile in: its URL schemes and the cargo
/// feature that brings it, so a URL for one left out names the feature.
pub const BACKEND_FEATURES: [(&str, &[&str]); 6] = [
    ("memory", &["memory"]),
    ("redis", &["redis", "rediss"]),
    ("amqp", &["amqp", "amqps"]),
    ("kafka", &["kafka", "kafkas"]),
    ("sqs", &["sqs"]),
    ("postgres", &["postgres", "postgresql"]),
];

/// Register the connector of every backend compiled into this build
/// ([`registry::register`]); [`connect`] does it before connecting, so a
/// program needs this only to use [`registry`] directly.
pub fn register_backends() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(feature = "redis")]
        registry::register(queue_redis::CONNECTOR);
        #[cfg(feature = "amqp")]
        registry::register(queue_amqp::CONNECTOR);
        #[cfg(feature = "sqs")]
        registry::register(queue_sqs::CONNECTOR);
        #[cfg(feature = "kafka")]
        registry::register(queue_kafka::CONNECTOR);
        #[cfg(feature = "postgres")]
        registry::register(queue_postgres::CONNECTOR);
    });
}

/// Connect the backend a URL names (`memory://`, `redis://`, `amqp://`,
/// `kafka://`, `sqs://`, `postgres://`).
///
/// A URL whose backend is not compiled into this build fails with a
/// [`ErrorKind::Config`] error that names the cargo feature to enable.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> queue::Result<()> {
/// let backend = queue::connect("memory://").await?;
/// assert_eq!(backend.capabilities().backend, "memory");
/// let err = queue::connect("nats://127.0.0.1:4222").await.unwrap_err();
/// assert!(err.to_string().contains("unknown scheme \"nats\""));
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn Backend>> {
    connect_config(&QueueConfig::from_url(url)?).await
}

/// Connect the backend a `QUEUE_*` environment configuration names
/// (`QUEUE_URL`, default `memory://`; see [`QueueConfig::from_env`]).
pub async fn connect_env() -> Result<Arc<dyn Backend>> {
    connect_config(&QueueConfig::from_env()?).await
}

/// Connect the backend of a validated configuration.
pub async fn connect_config(config: &QueueConfig) -> Result<Arc<dyn Backend>> {
    register_backends();
    let scheme = config.scheme();
    let compiled_in = cfg!(feature = "memory") || scheme != "memory";
    match registry::connector(scheme) {
        Some(connector) if compiled_in => (connector.connect)(config.clone()).await,
        _ => Err(not_compiled_in(scheme)),
    }
}

/// The environment variable naming the coordination store of backends
/// that keep none (RabbitMQ, SQS, Kafka): a Redis or PostgreSQL URL.
pub const COORDINATION_URL_VAR: &str = "QUEUE_COORDINATION_URL";

/// Connect the coordination store a URL names (leases, rate windows,
/// fleet-wide slots: what periodic jobs, rate limits and global
/// concurrency need; see [`coordination`]): the store of the backend at
/// that URL (`redis://`, `rediss://`, `postgres://`; `memory://` gives a
/// store of this process only). A backend that keeps no such state (RabbitMQ, SQS,
/// Kafka) is a [`ErrorKind::Config`] error naming what to give instead.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> queue::Result<()> {
/// let store = queue::connect_coordination("memory://").await?;
/// assert!(store.try_lease("leader", "me", std::time::Duration::from_secs(5)).await?.is_some());
/// # Ok(()) }
/// ```
pub async fn connect_coordination(url: &str) -> Result<Arc<dyn Coordination>> {
    let backend = connect(url).await?;
    backend.coordination().ok_or_else(|| {
        Error::config(format!(
            "{COORDINATION_URL_VAR}: the {} backend keeps no coordination state: give a redis:// or postgres:// URL",
            backend.capabilities().backend
        ))
    })
}

/// The coordination store for `backend`: the one `QUEUE_COORDINATION_URL`
/// names when it is set, else the backend's own; `None` when neither
/// exists (features that need one then refuse with an error naming the
/// variable).
pub async fn coordination_for(backend: &dyn Backend) -> Result<Option<Arc<dyn Coordination>>> {
    match std::env::var(COORDINATION_URL_VAR) {
        Ok(url) if !url.is_empty() => connect_coordination(&url).await.map(Some),
        _ => Ok(backend.coordination()),
    }
}

/// `backend` as tools should see it: wrapped with [`with_store`] and the
/// store `QUEUE_COORDINATION_URL` names where its groups need one
/// (RabbitMQ, SQS, Kafka), so grouped jobs are sent, read and counted
/// through their group queues; else `backend` itself (groups native, or
/// no store named). The CLI and `queue serve` connect through it.
pub async fn with_store_from_env(backend: Arc<dyn Backend>) -> Result<Arc<dyn Backend>> {
    if backend.capabilities().group_fairness != Coordinated::NeedsStore {
        return Ok(backend);
    }
    match std::env::var(COORDINATION_URL_VAR) {
        Ok(url) if !url.is_empty() => with_store(backend, connect_coordination(&url).await?),
        _ => Ok(backend),
    }
}

/// The error for a scheme whose backend this build lacks: the feature to
/// enable, or the unknown scheme.
fn not_compiled_in(scheme: &str) -> Error {
    match BACKEND_FEATURES
        .iter()
        .find(|(_, schemes)| schemes.contains(&scheme))
    {
        Some((feature, _)) => Error::config(format!(
            "url: backend not compiled in: enable feature `{feature}` of crate `queue`"
        )),
        None => registry::unknown_scheme(scheme),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // With every backend compiled in there is none to name.
    #[cfg(not(all(
        feature = "redis",
        feature = "amqp",
        feature = "kafka",
        feature = "sqs",
        feature = "postgres"
    )))]
    #[tokio::test]
    async fn backends_not_compiled_in_name_their_feature_without_credentials() {
        let cases: &[(&str, &str)] = &[
            #[cfg(not(feature = "redis"))]
            ("redis://u:hunter2@127.0.0.1:6379", "redis"),
            #[cfg(not(feature = "amqp"))]
            ("amqps://u:hunter2@h", "amqp"),
            #[cfg(not(feature = "kafka"))]
            ("kafka://u:hunter2@127.0.0.1:9092,127.0.0.1:9093", "kafka"),
            #[cfg(not(feature = "sqs"))]
            ("sqs://us-east-1?secret_access_key=hunter2", "sqs"),
            #[cfg(not(feature = "postgres"))]
            ("postgresql://u:hunter2@127.0.0.1/app", "postgres"),
        ];
        for &(url, feature) in cases {
            let err = connect(url).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            let text = format!("{err} {err:?}");
            assert!(
                text.contains(&format!(
                    "backend not compiled in: enable feature `{feature}`"
                )),
                "{text}"
            );
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[tokio::test]
    async fn unknown_schemes_list_the_registered_ones() {
        let err = connect("nope://u:hunter2@h").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("unknown scheme \"nope\""), "{err}");
        assert!(err.message().contains("memory"), "{err}");
        #[cfg(feature = "redis")]
        assert!(err.message().contains("rediss"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn memory_url_options_apply() {
        let backend = connect("memory://?max_payload=2048").await.unwrap();
        assert_eq!(backend.capabilities().max_payload, 2048);
        let err = connect("memory://?shards=4").await.unwrap_err();
        assert!(
            err.message()
                .starts_with("shards: unknown option for the memory backend"),
            "{err}"
        );
    }
}

/// The examples of `docs/scheduling.md`, compiled as doctests so the
/// guide and the API never drift.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/scheduling.md")]
pub struct SchedulingGuide;
