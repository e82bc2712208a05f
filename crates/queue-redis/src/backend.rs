//! [`RedisBackend`]: connecting, capabilities, health.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{
    Admin, Backend, Capabilities, CloseFlag, Consumer, ConsumerOptions, Error, ErrorKind,
    HealthStatus, Producer, QueueConfig, QueueName, Result,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::Settings;
use crate::error::classify;
use crate::shared::Shared;
use crate::{
    inbox_key, RedisConsumer, RedisCoordination, RedisJobStore, RedisProducer, DEFAULT_MAX_PAYLOAD,
    MAX_BATCH, MAX_BATCH_BYTES, MAX_RECEIVE,
};

/// The Redis backend. Clones share one connection.
#[derive(Clone, Debug)]
pub struct RedisBackend {
    pub(crate) shared: Arc<Shared>,
}

async fn connect_manager(
    client: redis::Client,
    config: ConnectionManagerConfig,
    limit: Duration,
) -> std::result::Result<ConnectionManager, redis::RedisError> {
    match tokio::time::timeout(limit, ConnectionManager::new_with_config(client, config)).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {limit:?}"),
        ))),
    }
}

impl RedisBackend {
    /// Connect to the Redis a `redis://` or `rediss://` URL names.
    ///
    /// Besides the common options (`lease`, `max_payload`,
    /// `idempotency_window`, `connect_timeout`, `request_timeout`) the URL
    /// takes `prefix` (key prefix, default `queue`) and, for `rediss://`,
    /// `tls_ca` (a PEM file of the certificate authority to
    /// trust instead of the system's roots).
    /// The database is the URL path (`redis://host:6379/2`).
    pub async fn connect(url: &str) -> Result<Self> {
        RedisBackend::from_config(&QueueConfig::from_url(url)?).await
    }

    /// Connect with a validated configuration.
    pub async fn from_config(config: &QueueConfig) -> Result<Self> {
        let Settings {
            client,
            prefix,
            response_timeout,
            address,
        } = Settings::from_config(config)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(4);
        let conn = connect_manager(client.clone(), manager_config, config.connect_timeout)
            .await
            .map_err(|e| classify(e, "connecting", &address))?;
        let capabilities = capabilities(
            config.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD),
            config.idempotency_window,
        );
        Ok(RedisBackend {
            shared: Arc::new(Shared {
                capabilities,
                client,
                conn,
                prefix,
                lease: config.lease,
                idempotency_window: config.idempotency_window,
                connect_timeout: config.connect_timeout,
                address,
                closed: CloseFlag::default(),
            }),
        })
    }

    /// The capability table a configuration gives, without connecting.
    pub fn table(config: &QueueConfig) -> Capabilities {
        capabilities(
            config.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD),
            config.idempotency_window,
        )
    }

    /// A producer with its concrete type.
    pub async fn redis_producer(&self, queue: &QueueName) -> Result<RedisProducer> {
        RedisProducer::open(self.shared.clone(), queue).await
    }

    /// A consumer with its concrete type.
    pub async fn redis_consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<RedisConsumer> {
        options.check()?;
        RedisConsumer::open(self.shared.clone(), queue, options).await
    }

    /// A job store kept in this Redis under `<prefix>:{jobs}:*`, shared by
    /// every process that opens it (see [`RedisJobStore`]).
    pub fn job_store(&self) -> RedisJobStore {
        RedisJobStore::new(self.shared.clone(), "jobs")
    }

    /// The coordination store kept in this Redis under
    /// `<prefix>:{coord}:coord:*` (leases with fencing tokens, rate
    /// windows, semaphores, records; see [`RedisCoordination`]), shared
    /// by every process that opens it. Periodic jobs, rate limits and
    /// fleet-wide concurrency stand on it;
    /// [`RedisCoordination::with_namespace`] gives a separate one.
    ///
    /// [`Backend::coordination`] hands out the same store as
    /// `Arc<dyn Coordination>`.
    pub fn coordination_store(&self) -> RedisCoordination {
        RedisCoordination::default_for(self.shared.clone())
    }

    /// The key prefix (`prefix` URL parameter).
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The key a plain Redis client may `LPUSH` bytes to, to enqueue them
    /// on `queue` (an envelope as it is; anything else as a raw payload).
    pub fn inbox_key(&self, queue: &QueueName) -> String {
        inbox_key(&self.shared.prefix, queue)
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    async fn producer(&self, queue: &QueueName) -> Result<Box<dyn Producer>> {
        Ok(Box::new(self.redis_producer(queue).await?))
    }

    async fn consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.redis_consumer(queue, options).await?))
    }

    fn admin(&self) -> &dyn Admin {
        self
    }

    /// [`RedisBackend::job_store`]: the shared store under namespace `jobs`.
    fn default_job_store(&self) -> Option<std::sync::Arc<dyn queue_core::JobStore>> {
        Some(std::sync::Arc::new(self.job_store()))
    }

    /// [`RedisBackend::coordination_store`]: the shared store under
    /// namespace `coord`.
    fn coordination(&self) -> Option<Arc<dyn queue_core::Coordination>> {
        Some(Arc::new(self.coordination_store()))
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.close();
        Ok(())
    }
}

impl RedisBackend {
    /// Round-trip a PING within the connect timeout.
    async fn ping(&self) -> Result<()> {
        let mut conn = self.shared.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.shared.connect_timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.shared.error(e, "PING")),
            Err(_) => Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "redis at {}: no PING reply within {:?}",
                    self.shared.address, self.shared.connect_timeout
                ),
            )),
        }
    }

    pub(crate) async fn health_check(&self) -> HealthStatus {
        HealthStatus::probe("redis", async {
            self.shared.check_open()?;
            self.ping().await
        })
        .await
    }
}

/// The Redis table: everything native (done inside Redis by the scripts),
/// exact, FIFO per priority.
fn capabilities(max_payload: usize, idempotency_window: Duration) -> Capabilities {
    let mut caps = Capabilities::native("redis");
    caps.max_payload = max_payload;
    // The envelope counts headers in a u16.
    caps.max_headers = Some(u16::MAX as usize);
    caps.max_batch = MAX_BATCH;
    caps.max_batch_bytes = Some(MAX_BATCH_BYTES);
    caps.max_receive = MAX_RECEIVE;
    caps.idempotency_window = Some(idempotency_window);
    caps
}
