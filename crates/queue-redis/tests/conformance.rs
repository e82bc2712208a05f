//! The whole conformance suite against a real Redis (`QUEUE_TEST_REDIS_URL`).
//!
//! The fault cases connect through the testkit's fault proxy; the restart
//! case runs a private `redis-server` with an append-only file fsynced on
//! every write, kills it with SIGKILL and starts it again on its files.

mod support;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use queue_core::{Backend, Error, ErrorKind, JobStore, QueueName, Result};
use queue_redis::RedisBackend;
use queue_testkit::{broker_url, BrokerProcess, Harness};

struct RedisHarness {
    url: String,
    /// The job store namespace of this case, removed afterwards.
    jobs: String,
    /// Keys written next to a queue's by `inject_foreign`, removed afterwards.
    junk: std::sync::Mutex<Vec<String>>,
}

impl RedisHarness {
    fn from_env() -> Option<RedisHarness> {
        let url = broker_url("QUEUE_TEST_REDIS_URL")?;
        Some(RedisHarness {
            url,
            jobs: format!("qt-jobs-{}", uuid_tail()),
            junk: std::sync::Mutex::new(Vec::new()),
        })
    }
}

fn uuid_tail() -> String {
    let id = queue_core::MessageId::new().as_uuid().simple().to_string();
    id[id.len() - 16..].to_owned()
}

fn admin(url: &str) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(url)?.get_connection()
}

impl Drop for RedisHarness {
    fn drop(&mut self) {
        let Ok(mut conn) = admin(&self.url) else {
            return;
        };
        let pattern = format!("{}:{{{}}}:*", queue_redis::DEFAULT_PREFIX, self.jobs);
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut conn)
            .unwrap_or_default();
        keys.extend(std::mem::take(
            &mut *self.junk.lock().unwrap_or_else(|p| p.into_inner()),
        ));
        if !keys.is_empty() {
            let _ = redis::cmd("DEL").arg(keys).query::<()>(&mut conn);
        }
    }
}

#[async_trait]
impl Harness for RedisHarness {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(RedisBackend::connect(url).await?))
    }

    fn unreachable_url(&self) -> Option<String> {
        // Port 1 on loopback: nothing listens there.
        Some("redis://127.0.0.1:1".to_owned())
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        let url = url::Url::parse(&self.url).ok()?;
        let host = url.host_str()?.to_owned();
        (host, url.port().unwrap_or(6379))
            .to_socket_addrs()
            .ok()?
            .next()
    }

    async fn inject_foreign(&self, queue: &QueueName, payload: &[u8]) -> Option<Result<()>> {
        let url = self.url.clone();
        let keys = queue_redis::queue_keys(queue_redis::DEFAULT_PREFIX, queue);
        let inbox = queue_redis::inbox_key(queue_redis::DEFAULT_PREFIX, queue);
        let payload = payload.to_vec();
        let stream = format!("{}:junk-stream", keys[0]);
        self.junk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream.clone());
        let written = tokio::task::spawn_blocking(move || {
            let mut conn = admin(&url)?;
            // Junk of other types next to the queue's keys changes nothing.
            redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("junk")
                .arg(&payload[..])
                .query::<()>(&mut conn)?;
            redis::cmd("PEXPIRE")
                .arg(&stream)
                .arg(60_000)
                .query::<()>(&mut conn)?;
            // The foreign message itself: plain bytes on the inbox.
            redis::cmd("LPUSH")
                .arg(&inbox)
                .arg(&payload[..])
                .query::<()>(&mut conn)
        })
        .await
        .expect("LPUSH task");
        Some(written.map_err(|e| Error::new(ErrorKind::Connection, format!("LPUSH: {e}"))))
    }

    async fn job_store(&self) -> Option<Result<Arc<dyn JobStore>>> {
        let store = async {
            let backend = RedisBackend::connect(&self.url).await?;
            let store = backend.job_store().with_namespace(&self.jobs)?;
            Ok(Arc::new(store) as Arc<dyn JobStore>)
        };
        Some(store.await)
    }

    async fn persistent_broker(&self) -> Option<Result<Box<dyn BrokerProcess>>> {
        if !support::have("redis-server") {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("queue-aof-{}", uuid_tail()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut broker = PersistentRedis {
            port: 0,
            dir,
            child: None,
        };
        // A port found free may be taken before the server binds it.
        for _ in 0..3 {
            broker.port = support::free_port();
            if broker.start().await.is_ok() {
                return Some(Ok(Box::new(broker)));
            }
        }
        Some(Err(Error::new(
            ErrorKind::Connection,
            "a private redis-server did not start on three ports",
        )))
    }
}

/// A private `redis-server` with `appendonly yes` and `appendfsync always`:
/// every acknowledged write is on disk before the reply.
struct PersistentRedis {
    port: u16,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

#[async_trait]
impl BrokerProcess for PersistentRedis {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // `kill` sends SIGKILL and waits for the process to end.
            child
                .kill()
                .await
                .map_err(|e| Error::new(ErrorKind::Other, format!("SIGKILL redis-server: {e}")))?;
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<()> {
        let args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &self.dir.to_string_lossy(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        match support::spawn_redis(&args).await {
            Some(child) => {
                self.child = Some(child);
                Ok(())
            }
            None => Err(Error::new(
                ErrorKind::Connection,
                format!("redis-server did not start on port {}", self.port),
            )),
        }
    }
}

impl Drop for PersistentRedis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

queue_testkit::conformance_suite!(RedisHarness::from_env());
