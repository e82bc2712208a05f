//! The whole conformance suite against a real PostgreSQL
//! (`QUEUE_TEST_POSTGRES_URL`), each case in a schema of its own that is
//! dropped afterwards.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use async_trait::async_trait;
use queue_core::{Backend, Error, ErrorKind, JobStore, QueueName, Result};
use queue_postgres::PostgresBackend;
use queue_testkit::{broker_url, BrokerProcess, Harness};

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

    async fn persistent_broker(&self) -> Option<Result<Box<dyn BrokerProcess>>> {
        let bin = std::path::Path::new(PG_BIN);
        if !bin.join("initdb").exists() || !bin.join("pg_ctl").exists() {
            return None;
        }
        Some(
            PrivatePostgres::start_new()
                .await
                .map(|pg| Box::new(pg) as Box<dyn BrokerProcess>),
        )
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

/// Where Debian keeps the server's programs.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A private PostgreSQL server (`initdb`, `pg_ctl`) on a free loopback
/// port, its data directory in a temporary folder, run as the `postgres`
/// user when the test runs as root (the server refuses root). Its
/// defaults keep `fsync` and `synchronous_commit` on: a committed
/// transaction is on disk before the commit returns.
struct PrivatePostgres {
    dir: std::path::PathBuf,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// Run one of the server's programs (as `postgres` when root).
async fn run_pg(program: &str, args: &[&str]) -> Result<()> {
    let path = format!("{PG_BIN}/{program}");
    let mut command = if is_root() {
        let mut c = tokio::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        tokio::process::Command::new(&path)
    };
    let out = command
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| Error::new(ErrorKind::Connection, format!("cannot run {program}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Connection,
            format!(
                "{program} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

impl PrivatePostgres {
    async fn start_new() -> Result<PrivatePostgres> {
        let id = queue_core::MessageId::new().as_uuid().simple().to_string();
        let dir = std::env::temp_dir().join(format!("queue-pg-{}", &id[id.len() - 12..]));
        std::fs::create_dir_all(&dir).expect("temp dir");
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["postgres:postgres", &dir.to_string_lossy()])
                .status()
                .expect("chown");
            assert!(status.success(), "chown the data directory");
        }
        let data = dir.to_string_lossy().into_owned();
        run_pg(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )
        .await?;
        let mut pg = PrivatePostgres { dir, port: 0 };
        // A port found free may be taken before the server binds it.
        let mut last = None;
        for _ in 0..3 {
            pg.port = free_port();
            match pg.start().await {
                Ok(()) => return Ok(pg),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("three tries"))
    }

    /// The postmaster's pid, from its pid file.
    fn postmaster(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

#[async_trait]
impl BrokerProcess for PrivatePostgres {
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// SIGKILL the postmaster and every process it started, as a crash of
    /// the machine would stop them.
    async fn kill(&mut self) -> Result<()> {
        let Some(postmaster) = self.postmaster() else {
            return Ok(());
        };
        let mut victims = vec![postmaster];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The parent pid is the 4th field, after the ")" closing the name.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if parent == Some(postmaster) {
                victims.push(pid);
            }
        }
        let pids: Vec<String> = victims.iter().map(i32::to_string).collect();
        let status = tokio::process::Command::new("kill")
            .arg("-9")
            .args(&pids)
            .status()
            .await
            .map_err(|e| Error::new(ErrorKind::Other, format!("kill -9: {e}")))?;
        if !status.success() {
            return Err(Error::new(ErrorKind::Other, "kill -9 the server failed"));
        }
        // Gone once /proc no longer lists the postmaster.
        while std::path::Path::new(&format!("/proc/{postmaster}")).exists() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<()> {
        let data = self.dir.to_string_lossy().into_owned();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port, data
        );
        let log = format!("{data}/server.log");
        run_pg(
            "pg_ctl",
            &[
                "-D", &data, "-o", &options, "-l", &log, "-w", "-t", "60", "start",
            ],
        )
        .await
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.to_string_lossy().into_owned();
        let path = format!("{PG_BIN}/pg_ctl");
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if is_root() {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--", &path])
                .args(args)
                .output()
        } else {
            std::process::Command::new(&path).args(args).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

queue_testkit::conformance_suite!(PostgresHarness::from_env());
