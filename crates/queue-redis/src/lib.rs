//! The Redis backend of the `queue` workspace.
//!
//! Every operation is one atomic Lua script over a handful of keys that
//! share the hash tag `{queue}`: a ready set ordered by (priority,
//! sequence), a delayed set by due time, an in-flight set by lease
//! deadline, the envelopes in a hash, dead letters with their reason. A
//! `receive` claims a whole batch in one round trip and
//! [`Consumer::ack_batch`] settles one in another; waiting consumers block
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
//! (fresh id, attempt 1), picked up by the next `receive`.

#![forbid(unsafe_code)]

mod queue;
mod scripts;
mod store;

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use queue_core::config::parse_duration;
use queue_core::{
    Admin, Backend, BackendKind, Capabilities, Consumer, ConsumerOptions, Error, ErrorKind,
    HealthStatus, Ordering, Producer, QueueConfig, QueueName, Result, Support,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;

pub use crate::queue::{RedisConsumer, RedisProducer};
pub use crate::store::RedisJobStore;

/// Default payload limit: 16 MiB (Redis allows 512 MiB per value, but big
/// values stall a single-threaded server).
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// The largest value Redis stores (`proto-max-bulk-len` default): 512 MiB.
pub const REDIS_MAX_VALUE: usize = 512 * 1024 * 1024;
/// Most messages one `send_batch` carries (one script call, all or nothing).
pub const MAX_BATCH: usize = 10_000;
/// Most messages one `receive` claims.
pub const MAX_RECEIVE: usize = 1_000;
/// Default key prefix (`prefix` URL parameter).
pub const DEFAULT_PREFIX: &str = "queue";
/// Default limit for one command's reply (`response_timeout` URL parameter).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// URL parameters this backend reads besides the common ones.
const PARAMS: [&str; 3] = ["prefix", "response_timeout", "tls_ca"];

/// The Redis backend. Clones share one connection.
#[derive(Clone, Debug)]
pub struct RedisBackend {
    shared: Arc<Shared>,
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

/// The one place a Redis client error becomes a queue [`Error`]: the kind
/// decides retrying, the source is kept, the address is named.
pub(crate) fn classify(e: redis::RedisError, doing: &str, address: &str) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        ErrorKind::Connection
    } else {
        match (e.kind(), e.code()) {
            (redis::ErrorKind::AuthenticationFailed, _) => ErrorKind::Auth,
            (_, Some("NOAUTH" | "WRONGPASS" | "NOPERM")) => ErrorKind::Auth,
            (_, Some("BUSY" | "LOADING" | "TRYAGAIN" | "MASTERDOWN")) => ErrorKind::Throttled,
            (_, Some("OOM")) => ErrorKind::QueueFull,
            (_, Some("READONLY")) => ErrorKind::Connection,
            (redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType, _) => {
                ErrorKind::Decode
            }
            _ => ErrorKind::Other,
        }
    };
    // The client's own words stay in the source, not repeated here.
    Error::new(kind, format!("redis at {address}: {doing} failed")).with_source(e)
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
        if config.backend != BackendKind::Redis {
            return Err(Error::config(format!(
                "url: the redis backend needs a redis:// or rediss:// URL, got a {} URL",
                config.backend
            )));
        }
        let mut rest = config.clone();
        let prefix = rest.take_param("prefix");
        let response_timeout = rest.take_param("response_timeout");
        let tls_ca = rest.take_param("tls_ca");
        rest.reject_unknown_params(&PARAMS)?;
        let prefix = match prefix {
            None => DEFAULT_PREFIX.to_owned(),
            Some(p) if valid_prefix(&p) => p,
            Some(p) => {
                return Err(Error::config(format!(
                    "prefix: must be 1 to 64 of [A-Za-z0-9_:.-], got {p:?}"
                )))
            }
        };
        let response_timeout = match response_timeout {
            None => DEFAULT_RESPONSE_TIMEOUT,
            Some(v) => {
                let d = parse_duration("response_timeout", &v)?;
                if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
                    return Err(Error::config(format!(
                        "response_timeout: must be 100ms to 10m, got {v:?}"
                    )));
                }
                d
            }
        };
        if config.url.hosts().len() > 1 {
            return Err(Error::config(
                "url: the redis backend connects to one host (Redis Cluster and Sentinel are not supported yet)",
            ));
        }
        if config.max_payload.is_some_and(|max| max > REDIS_MAX_VALUE) {
            return Err(Error::config(format!(
                "max_payload: must be 1 to {REDIS_MAX_VALUE} bytes on redis (its largest value)"
            )));
        }
        let mut url = config.url.expose().clone();
        if url.scheme() == "rediss" && !cfg!(feature = "tls") {
            return Err(Error::config(
                "url: rediss:// needs TLS: enable feature `tls` of crate `queue-redis` (feature `redis-tls` of crate `queue`)",
            ));
        }
        url.set_query(None);
        url.set_fragment(None);
        let address = config.url.address();
        let client = open_client(&url, tls_ca.as_deref())?;
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

/// The inbox key of `queue` under key prefix `prefix`: `LPUSH` bytes there
/// with any Redis client to enqueue them (see the crate docs).
pub fn inbox_key(prefix: &str, queue: &QueueName) -> String {
    scripts::queue_keys(prefix, queue)[scripts::INBOX].clone()
}

/// Every key of `queue` under key prefix `prefix`, as the scripts take them.
pub fn queue_keys(prefix: &str, queue: &QueueName) -> Vec<String> {
    scripts::queue_keys(prefix, queue)
}

/// The Redis client for `url`; with `tls_ca` (a PEM file), TLS trusts that
/// certificate authority instead of the system's roots.
fn open_client(url: &url::Url, tls_ca: Option<&str>) -> Result<redis::Client> {
    // The client's message may quote the URL: keep only the kind.
    let not_redis =
        |e: redis::RedisError| Error::config(format!("url: not a Redis URL ({:?})", e.kind()));
    match tls_ca {
        None => redis::Client::open(url.as_str()).map_err(not_redis),
        Some(path) if url.scheme() != "rediss" => Err(Error::config(format!(
            "tls_ca: {path:?} is only used with rediss:// URLs"
        ))),
        #[cfg(feature = "tls")]
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                Error::config(format!("tls_ca: cannot read {path:?}")).with_source(e)
            })?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(url.as_str(), certificates).map_err(|e| {
                Error::config(format!(
                    "tls_ca: {path:?} is not a usable PEM certificate ({:?})",
                    e.kind()
                ))
            })
        }
        #[cfg(not(feature = "tls"))]
        Some(_) => Err(Error::config(
            "tls_ca: TLS needs feature `tls` of crate `queue-redis`",
        )),
    }
}

fn valid_prefix(prefix: &str) -> bool {
    (1..=64).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_are_config_errors_naming_the_field() {
        for (url, field) in [
            (
                "redis://u:hunter2@127.0.0.1:6379?prefix=a%20b",
                "prefix: must be",
            ),
            (
                "redis://u:hunter2@127.0.0.1:6379?response_timeout=0s",
                "response_timeout: must be",
            ),
            (
                "redis://u:hunter2@127.0.0.1:6379?shards=2",
                "shards: unknown option",
            ),
            (
                "redis://u:hunter2@127.0.0.1:6379?max_payload=600000000",
                "max_payload: must be",
            ),
            (
                "redis://u:hunter2@127.0.0.1:6379?tls_ca=/ca.pem",
                "tls_ca: \"/ca.pem\" is only used with rediss://",
            ),
            (
                "redis://u:hunter2@127.0.0.1:6379,127.0.0.1:6380",
                "url: the redis backend connects to one host",
            ),
            ("memory://", "url: the redis backend needs"),
        ] {
            let err = RedisBackend::connect(url).await.unwrap_err();
            let text = format!("{err} {err:?}");
            assert_eq!(err.kind(), ErrorKind::Config, "{text}");
            assert!(err.message().starts_with(field), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[cfg(not(feature = "tls"))]
    #[tokio::test]
    async fn rediss_without_tls_names_the_feature() {
        let err = RedisBackend::connect("rediss://127.0.0.1:6380")
            .await
            .unwrap_err();
        assert!(err.message().contains("feature `tls`"), "{err}");
    }

    #[test]
    fn prefixes_follow_the_rule() {
        assert!(valid_prefix("queue"));
        assert!(valid_prefix("app:v2.queue-x"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("a{b}"));
        assert!(!valid_prefix(&"x".repeat(65)));
    }
}
