//! [`RedisBackend`]: connections, capabilities, health.

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use queue_core::{
    Admin, Backend, Capabilities, Consumer, ConsumerOptions, Error, ErrorKind, HealthStatus,
    Ordering, Producer, QueueConfig, QueueName, Result, Support,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;

use crate::config::Settings;
use crate::error::classify;
use crate::{
    inbox_key, RedisConsumer, RedisJobStore, RedisProducer, DEFAULT_MAX_PAYLOAD, MAX_BATCH,
    MAX_RECEIVE,
};

/// The Redis backend. Clones share one connection.
#[derive(Clone, Debug)]
pub struct RedisBackend {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) capabilities: Capabilities,
    pub(crate) client: redis::Client,
    /// The multiplexed connection every script goes through; it reconnects
    /// on its own after the connection breaks.
    pub(crate) conn: ConnectionManager,
    pub(crate) prefix: String,
    pub(crate) lease: Duration,
    pub(crate) idempotency_window: Duration,
    pub(crate) connect_timeout: Duration,
    /// `host:port`, for errors (never the credentials).
    pub(crate) address: String,
    pub(crate) closed: AtomicBool,
}

impl Shared {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(AtomicOrdering::Acquire) {
            return Err(Error::closed("the redis backend"));
        }
        Ok(())
    }

    /// A second connection for blocking commands (BLPOP), which would stall
    /// every other request on the shared multiplexed connection. Dropping
    /// it closes the socket, which also ends a BLPOP still blocked on the
    /// server.
    pub(crate) async fn blocking_connection(&self) -> Result<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(result) => result.map_err(|e| self.error(e, "opening a blocking connection")),
            Err(_) => Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "redis at {}: no connection within {:?}",
                    self.address, self.connect_timeout
                ),
            )),
        }
    }

    /// Map a Redis error onto the queue's error kinds, naming the address.
    pub(crate) fn error(&self, e: redis::RedisError, doing: &str) -> Error {
        classify(e, doing, &self.address)
    }
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
    /// `idempotency_window`, `connect_timeout`) the URL takes `prefix`
    /// (key prefix, default `queue`), `response_timeout` (default 10s) and,
    /// for `rediss://`, `tls_ca` (a PEM file of the certificate authority to
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
        let mut capabilities = Capabilities::new("redis");
        capabilities.priority = Support::Native;
        capabilities.delay = Support::Native;
        capabilities.ttl = Support::Native;
        capabilities.dead_letter = Support::Native;
        capabilities.redrive = Support::Native;
        capabilities.idempotency = Support::Native;
        capabilities.lease_extension = Support::Native;
        capabilities.max_length = Support::Native;
        capabilities.purge = Support::Native;
        capabilities.exact_stats = true;
        capabilities.detects_lease_lost = true;
        capabilities.ordering = Ordering::FifoPerPriority;
        capabilities.max_payload = config.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD);
        capabilities.max_native_delay = None;
        capabilities.max_batch = MAX_BATCH;
        capabilities.max_receive = MAX_RECEIVE;
        capabilities.idempotency_window = Some(config.idempotency_window);
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
                closed: AtomicBool::new(false),
            }),
        })
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

    async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, AtomicOrdering::Release);
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
        let started = Instant::now();
        let result = match self.shared.check_open() {
            Ok(()) => self.ping().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => HealthStatus::healthy("redis", started.elapsed()),
            Err(e) => HealthStatus::unhealthy("redis", started.elapsed(), &e),
        }
    }
}
