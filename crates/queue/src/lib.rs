#![doc = include_str!("../../../README.md")]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

use std::sync::Arc;

pub use queue_core::*;
pub use queue_worker::*;

/// The Prometheus exporter ([`prometheus::PrometheusExporter`]).
#[cfg(feature = "prometheus")]
pub use queue_prometheus as prometheus;

/// The Redis backend ([`redis::RedisBackend`], [`redis::RedisJobStore`]).
#[cfg(feature = "redis")]
pub use queue_redis as redis;

/// Connect the backend a URL names (`memory://`, `redis://`, `amqp://`,
/// `kafka://`, `sqs://`).
///
/// A URL whose backend is not compiled into this build fails with a
/// [`ErrorKind::Config`] error that names the cargo feature to enable.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> queue::Result<()> {
/// let backend = queue::connect("memory://").await?;
/// assert_eq!(backend.capabilities().backend, "memory");
/// let err = queue::connect("kafka://127.0.0.1:9092").await.unwrap_err();
/// assert!(err.to_string().contains("enable feature `kafka`"));
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
    match config.backend {
        #[cfg(feature = "memory")]
        BackendKind::Memory => Ok(Arc::new(MemoryBackend::from_config(config)?)),
        #[cfg(feature = "redis")]
        BackendKind::Redis => Ok(Arc::new(
            queue_redis::RedisBackend::from_config(config).await?,
        )),
        other => Err(other.not_compiled_in()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backends_not_compiled_in_name_their_feature_without_credentials() {
        for (url, feature) in [
            #[cfg(not(feature = "redis"))]
            ("redis://u:hunter2@127.0.0.1:6379", "redis"),
            ("amqps://u:hunter2@h", "amqp"),
            ("kafka://127.0.0.1:9092,127.0.0.1:9093", "kafka"),
            ("sqs://us-east-1?secret_access_key=hunter2", "sqs"),
        ] {
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
