//! The whole conformance suite against a real Redis (`QUEUE_TEST_REDIS_URL`).
//!
//! Each case gets its own ACL user, so `reconnect` can cut exactly that
//! case's connections with `CLIENT KILL USER` while other cases run.

use std::sync::Arc;

use async_trait::async_trait;
use queue_core::{Backend, JobStore, QueueName, Result};
use queue_redis::RedisBackend;
use queue_testkit::{broker_url, Harness};

struct RedisHarness {
    /// The broker URL as configured (admin rights: ACL, CLIENT KILL).
    admin_url: String,
    /// The URL this case's backends connect with (its own user).
    url: String,
    user: Option<String>,
    /// The job store namespace of this case, removed afterwards.
    jobs: String,
    /// Keys written next to a queue's by `inject_foreign`, removed afterwards.
    junk: std::sync::Mutex<Vec<String>>,
}

impl RedisHarness {
    fn from_env() -> Option<RedisHarness> {
        let admin_url = broker_url("QUEUE_TEST_REDIS_URL")?;
        let unique = uuid_tail();
        let user = format!("qt-{unique}");
        let password = format!("pw-{unique}");
        let created = admin(&admin_url).and_then(|mut conn| {
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&user)
                .arg("on")
                .arg(format!(">{password}"))
                .arg("~*")
                .arg("&*")
                .arg("+@all")
                .query::<()>(&mut conn)
        });
        let (url, user) = match created {
            Ok(()) => {
                let mut url = url::Url::parse(&admin_url).expect("QUEUE_TEST_REDIS_URL is a URL");
                url.set_username(&user).expect("URL with a host");
                url.set_password(Some(&password)).expect("URL with a host");
                (url.to_string(), Some(user))
            }
            Err(e) => {
                // Without its own user, `reconnect` could not cut this
                // case's connections alone: a required run fails here.
                let required = std::env::var("QUEUE_TEST_REQUIRED").is_ok_and(|v| v == "1");
                assert!(
                    !required,
                    "ACL SETUSER failed ({e}): the Redis suite needs a user allowed to manage ACL users"
                );
                eprintln!("no ACL user for this case ({e}); connecting as configured");
                (admin_url.clone(), None)
            }
        };
        Some(RedisHarness {
            admin_url,
            url,
            user,
            jobs: format!("qt-jobs-{unique}"),
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
        let Ok(mut conn) = admin(&self.admin_url) else {
            return;
        };
        if let Some(user) = &self.user {
            let _ = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(user)
                .query::<()>(&mut conn);
        }
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

    async fn cut_connections(&self) -> Option<Result<()>> {
        let user = self.user.clone()?;
        let url = self.admin_url.clone();
        let killed = tokio::task::spawn_blocking(move || {
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("USER")
                .arg(&user)
                .query::<i64>(&mut admin(&url)?)
        })
        .await
        .expect("CLIENT KILL task");
        Some(match killed {
            Ok(n) if n > 0 => Ok(()),
            Ok(_) => Err(queue_core::Error::new(
                queue_core::ErrorKind::Other,
                "CLIENT KILL found no connection of this case's user",
            )),
            Err(e) => Err(queue_core::Error::new(
                queue_core::ErrorKind::Connection,
                format!("CLIENT KILL: {e}"),
            )),
        })
    }

    async fn inject_foreign(&self, queue: &QueueName, payload: &[u8]) -> Option<Result<()>> {
        let url = self.admin_url.clone();
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
        Some(written.map_err(|e| {
            queue_core::Error::new(queue_core::ErrorKind::Connection, format!("LPUSH: {e}"))
        }))
    }

    async fn job_store(&self) -> Option<Result<Arc<dyn JobStore>>> {
        let store = async {
            let backend = RedisBackend::connect(&self.url).await?;
            let store = backend.job_store().with_namespace(&self.jobs)?;
            Ok(Arc::new(store) as Arc<dyn JobStore>)
        };
        Some(store.await)
    }
}

queue_testkit::conformance_suite!(RedisHarness::from_env());
