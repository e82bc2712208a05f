//! [`PostgresBackend`]: connecting, migrations, capabilities, health.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{
    Admin, Backend, Capabilities, Consumer, ConsumerOptions, Error, ErrorKind, HealthStatus,
    Ordering, Producer, QueueConfig, QueueName, Result,
};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::Connection as _;

use crate::config::Settings;
use crate::shared::Shared;
use crate::{
    PostgresConsumer, PostgresCoordination, PostgresJobStore, PostgresProducer,
    DEFAULT_MAX_PAYLOAD, MAX_BATCH, MAX_BATCH_BYTES, MAX_PAYLOAD, MAX_RECEIVE,
};

/// The migrations this build carries, embedded at compile time.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The PostgreSQL backend. Clones share one connection pool.
#[derive(Clone, Debug)]
pub struct PostgresBackend {
    pub(crate) shared: Arc<Shared>,
}

impl PostgresBackend {
    /// Connect to the PostgreSQL a `postgres://` or `postgresql://` URL
    /// names, creating or upgrading the schema (see the crate docs).
    ///
    /// Besides the common options (`lease`, `max_payload`,
    /// `idempotency_window`, `connect_timeout`, `request_timeout`) the URL
    /// takes `schema` (default `queue`), `pool_size` (default 10),
    /// `migrate` (default `true`; `false` only checks the schema is
    /// current), `application_name`, and `sslmode` / `sslrootcert` (TLS
    /// needs feature `tls`).
    pub async fn connect(url: &str) -> Result<Self> {
        PostgresBackend::from_config(&QueueConfig::from_url(url)?).await
    }

    /// Connect with a validated configuration.
    pub async fn from_config(config: &QueueConfig) -> Result<Self> {
        let Settings {
            connect,
            schema,
            pool_size,
            migrate,
            address,
        } = Settings::from_config(config)?;
        let statement_timeout = config.request_timeout.as_millis().to_string();
        let connect = connect.options([("statement_timeout", statement_timeout.as_str())]);
        // One connection first, so a server that is not there is reported
        // as the connection error it is (a pool would retry until its
        // timeout), and the schema is ready before anything uses it.
        let mut conn = match tokio::time::timeout(
            config.connect_timeout,
            PgConnection::connect_with(&connect),
        )
        .await
        {
            Ok(result) => result.map_err(|e| crate::error::classify(e, "connecting", &address))?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Connection,
                    format!(
                        "postgres at {address}: no connection within {:?}",
                        config.connect_timeout
                    ),
                ))
            }
        };
        prepare_schema(&mut conn, &connect, &schema, migrate)
            .await
            .map_err(|e| match e {
                SchemaError::Driver(e) => {
                    crate::error::classify(e, "preparing the schema", &address)
                }
                SchemaError::Queue(e) => e,
            })?;
        let _ = conn.close().await;
        // The pool pings a connection before handing it out (bounded by
        // the acquire timeout): a server that stopped answering fails the
        // call within it instead of leaving a statement waiting on a
        // silent socket.
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .min_connections(0)
            .acquire_timeout(config.connect_timeout)
            .connect_lazy_with(connect);
        let capabilities = capabilities(
            config.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD),
            config.idempotency_window,
        );
        Ok(PostgresBackend {
            shared: Arc::new(Shared::new(
                capabilities,
                pool,
                schema,
                config.lease,
                config.idempotency_window,
                config.connect_timeout,
                config.request_timeout,
                address,
            )),
        })
    }

    /// The capability table a configuration gives, without connecting.
    pub fn table(config: &QueueConfig) -> Capabilities {
        capabilities(
            config.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD),
            config.idempotency_window,
        )
    }

    /// A producer with its concrete type (which can also send through a
    /// caller's own transaction).
    pub async fn postgres_producer(&self, queue: &QueueName) -> Result<PostgresProducer> {
        PostgresProducer::open(self.shared.clone(), queue).await
    }

    /// A consumer with its concrete type.
    pub async fn postgres_consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<PostgresConsumer> {
        options.check()?;
        self.shared.capabilities.check_consumer(&options)?;
        PostgresConsumer::open(self.shared.clone(), queue, options).await
    }

    /// The coordination store in this backend's schema (leases with
    /// fencing tokens, rate windows, semaphores, records; see
    /// [`PostgresCoordination`]), shared by every process on the same
    /// database. [`Backend::coordination`] hands out the same store.
    pub fn coordination_store(&self) -> PostgresCoordination {
        PostgresCoordination::new(self.shared.clone())
    }

    /// The job store in this backend's schema (see [`PostgresJobStore`]),
    /// shared by every process on the same database.
    /// [`Backend::default_job_store`] hands out the same store.
    pub fn job_store(&self) -> PostgresJobStore {
        PostgresJobStore::new(self.shared.clone())
    }

    /// The schema the backend's tables live in (`schema` URL parameter).
    pub fn schema(&self) -> &str {
        &self.shared.schema
    }

    /// The connection pool, for the caller's own queries (and
    /// transactions to enqueue in: [`PostgresProducer::send_in`]).
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.shared.pool
    }

    /// The schema version this build carries (the newest migration).
    pub fn schema_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }
}

enum SchemaError {
    Driver(sqlx::Error),
    Queue(Error),
}

impl From<sqlx::Error> for SchemaError {
    fn from(e: sqlx::Error) -> Self {
        SchemaError::Driver(e)
    }
}

/// A key for `pg_advisory_lock` that serializes schema changes of every
/// process (any fixed number; this is "queue" in ASCII).
const MIGRATION_LOCK: i64 = 0x0071_7565_7565;

/// Create or upgrade `schema` (or, with `migrate` off, check it is
/// current). Refuses a schema newer than this build.
async fn prepare_schema(
    conn: &mut PgConnection,
    connect: &PgConnectOptions,
    schema: &str,
    migrate: bool,
) -> std::result::Result<(), SchemaError> {
    let ours = PostgresBackend::schema_version();
    // A keyword (`user`, `order`) passes the character check but would
    // need quoting in every statement.
    let plain: bool = sqlx::query_scalar("SELECT quote_ident($1) = $1")
        .bind(schema)
        .fetch_one(&mut *conn)
        .await?;
    if !plain {
        return Err(SchemaError::Queue(Error::config(format!(
            "schema: {schema:?} is an SQL keyword; choose another name"
        ))));
    }
    if migrate {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    let result = async {
        let theirs = applied_version(conn, schema).await?;
        if theirs > ours {
            return Err(SchemaError::Queue(Error::config(format!(
                "schema {schema:?} is at version {theirs}, newer than this build's {ours}: \
                 upgrade queue-postgres (or use another schema)"
            ))));
        }
        if theirs == ours {
            return Ok(());
        }
        if !migrate {
            return Err(SchemaError::Queue(Error::config(format!(
                "schema {schema:?} is at version {theirs}, this build needs {ours}: \
                 run the migrations (connect once with migrate=true)"
            ))));
        }
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut *conn)
            .await?;
        // The migrations name no schema: they run on a connection of their
        // own whose search path is the schema.
        let migrations = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(connect.clone().options([("search_path", schema)]))
            .await?;
        let ran = MIGRATOR.run(&migrations).await;
        migrations.close().await;
        ran.map_err(|e| {
            SchemaError::Queue(
                Error::new(
                    ErrorKind::Other,
                    format!("migrating schema {schema:?} to version {ours} failed"),
                )
                .with_source(e),
            )
        })
    }
    .await;
    if migrate {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    result
}

/// The newest migration applied to `schema` (0: none, or no schema).
async fn applied_version(
    conn: &mut PgConnection,
    schema: &str,
) -> std::result::Result<i64, SchemaError> {
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("{schema}._sqlx_migrations"))
        .fetch_one(&mut *conn)
        .await?;
    if table.is_none() {
        return Ok(0);
    }
    let version: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT max(version) FROM {schema}._sqlx_migrations WHERE success"
    ))
    .fetch_one(&mut *conn)
    .await?;
    Ok(version.unwrap_or(0))
}

#[async_trait]
impl Backend for PostgresBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    async fn producer(&self, queue: &QueueName) -> Result<Box<dyn Producer>> {
        Ok(Box::new(self.postgres_producer(queue).await?))
    }

    async fn consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.postgres_consumer(queue, options).await?))
    }

    fn admin(&self) -> &dyn Admin {
        self
    }

    /// [`PostgresBackend::job_store`].
    fn default_job_store(&self) -> Option<Arc<dyn queue_core::JobStore>> {
        Some(Arc::new(self.job_store()))
    }

    /// [`PostgresBackend::coordination_store`].
    fn coordination(&self) -> Option<Arc<dyn queue_core::Coordination>> {
        Some(Arc::new(self.coordination_store()))
    }

    async fn close(&self) -> Result<()> {
        self.shared.close();
        self.shared.pool.close().await;
        Ok(())
    }
}

impl PostgresBackend {
    pub(crate) async fn health_check(&self) -> HealthStatus {
        HealthStatus::probe("postgres", async {
            self.shared.check_open()?;
            let ping = async {
                let mut conn = self.shared.pool.acquire().await?;
                conn.ping().await
            };
            match tokio::time::timeout(self.shared.connect_timeout, ping).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(self.shared.error(e, "ping")),
                Err(_) => Err(Error::new(
                    ErrorKind::Connection,
                    format!(
                        "postgres at {}: no reply within {:?}",
                        self.shared.address, self.shared.connect_timeout
                    ),
                )),
            }
        })
        .await
    }
}

/// The PostgreSQL table: everything the schema's functions do inside the
/// database (the coordination store included), exact, FIFO per priority.
fn capabilities(max_payload: usize, idempotency_window: Duration) -> Capabilities {
    let mut caps = Capabilities::native("postgres");
    caps.ordering = Ordering::FifoPerPriority;
    caps.max_payload = max_payload.min(MAX_PAYLOAD);
    caps.max_headers = Some(u16::MAX as usize);
    caps.max_batch = MAX_BATCH;
    caps.max_batch_bytes = Some(MAX_BATCH_BYTES);
    caps.max_receive = MAX_RECEIVE;
    caps.idempotency_window = Some(idempotency_window);
    caps
}
