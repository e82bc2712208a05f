//! The whole conformance suite against a real PostgreSQL
//! (`QUEUE_TEST_POSTGRES_URL`), each case in a schema of its own that is
//! dropped afterwards.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use async_trait::async_trait;
use queue_core::{Backend, Error, ErrorKind, JobStore, QueueName, Result};
use queue_postgres::PostgresBackend;
use queue_testkit::{broker_url, Harness};

struct PostgresHarness {
    /// The server's URL, without a schema.
    base: String,
    /// This case's schema.
    schema: String,
}

impl PostgresHarness {
    fn from_env() -> Option<PostgresHarness> {
        let base = broker_url("QUEUE_TEST_POSTGRES_URL")?;
        let id = queue_core::MessageId::new().as_uuid().simple().to_string();
        Some(PostgresHarness {
            base,
            schema: format!("qt_{}", &id[id.len() - 16..]),
        })
    }
}

impl Drop for PostgresHarness {
    fn drop(&mut self) {
        // Drop is synchronous: drop the schema from a runtime of its own.
        let base = self.base.clone();
        let schema = self.schema.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                use sqlx::Connection as _;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&base).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

#[async_trait]
impl Harness for PostgresHarness {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn url(&self) -> String {
        let joiner = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{joiner}schema={}", self.base, self.schema)
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(PostgresBackend::connect(url).await?))
    }

    fn unreachable_url(&self) -> Option<String> {
        // Port 1 on loopback: nothing listens there.
        Some("postgres://127.0.0.1:1/test".to_owned())
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        let url = url::Url::parse(&self.base).ok()?;
        let host = url.host_str()?.to_owned();
        (host, url.port().unwrap_or(5432))
            .to_socket_addrs()
            .ok()?
            .next()
    }

    async fn job_store(&self) -> Option<Result<Arc<dyn JobStore>>> {
        let store = async {
            let backend = PostgresBackend::connect(&self.url()).await?;
            Ok(Arc::new(backend.job_store()) as Arc<dyn JobStore>)
        };
        Some(store.await)
    }

    async fn inject_foreign(&self, queue: &QueueName, payload: &[u8]) -> Option<Result<()>> {
        let written = async {
            let backend = PostgresBackend::connect(&self.url()).await?;
            sqlx::query(&format!(
                "INSERT INTO {}.jobs (queue, body) VALUES ($1, $2)",
                self.schema
            ))
            .bind(queue.as_str())
            .bind(payload)
            .execute(backend.pool())
            .await
            .map_err(|e| Error::new(ErrorKind::Connection, format!("INSERT: {e}")))?;
            Ok(())
        };
        Some(written.await)
    }
}

queue_testkit::conformance_suite!(PostgresHarness::from_env());
