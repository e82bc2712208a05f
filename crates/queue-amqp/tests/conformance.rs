//! The whole conformance suite against a real RabbitMQ
//! (`QUEUE_TEST_AMQP_URL`), once per queue type: `classic::*` and
//! `quorum::*`. The fault cases connect through the testkit's fault proxy;
//! the restart case runs a private RabbitMQ node (its own name, ports and
//! data directory), kills it with SIGKILL and starts it again on its files.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use queue_amqp::AmqpBackend;
use queue_core::{Backend, Error, ErrorKind, QueueName, Result};
use queue_testkit::{broker_url, BrokerProcess, Harness};
use tokio::io::{AsyncBufReadExt, BufReader};

struct AmqpHarness {
    url: String,
    queue_type: &'static str,
}

impl AmqpHarness {
    fn from_env(queue_type: &'static str) -> Option<AmqpHarness> {
        let url = broker_url("QUEUE_TEST_AMQP_URL")?;
        let sep = if url.contains('?') { '&' } else { '?' };
        Some(AmqpHarness {
            url: format!("{url}{sep}queue_type={queue_type}"),
            queue_type,
        })
    }

    /// The broker's URL without our parameters, for a plain lapin client.
    fn plain_url(&self) -> String {
        let mut url = url::Url::parse(&self.url).expect("the test URL parses");
        url.set_query(None);
        if url.path().is_empty() || url.path() == "/" {
            url.set_path("/%2f");
        }
        url.to_string()
    }
}

#[async_trait]
impl Harness for AmqpHarness {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(AmqpBackend::connect(url).await?))
    }

    fn unreachable_url(&self) -> Option<String> {
        // Port 1 on loopback: nothing listens there.
        Some("amqp://127.0.0.1:1".to_owned())
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        let url = url::Url::parse(&self.url).ok()?;
        let host = url.host_str()?.to_owned();
        (host, url.port().unwrap_or(5672))
            .to_socket_addrs()
            .ok()?
            .next()
    }

    /// Publishes the bytes with a plain lapin client, with foreign headers
    /// of several AMQP types.
    async fn inject_foreign(&self, queue: &QueueName, payload: &[u8]) -> Option<Result<()>> {
        let failed = |e: lapin::Error| Error::new(ErrorKind::Connection, format!("lapin: {e}"));
        let publish = async {
            let conn = Connection::connect(&self.plain_url(), ConnectionProperties::default())
                .await
                .map_err(failed)?;
            let channel = conn.create_channel().await.map_err(failed)?;
            let mut headers = FieldTable::default();
            headers.insert("n".into(), AMQPValue::LongInt(7));
            headers.insert(
                "blob".into(),
                AMQPValue::LongString(LongString::from(vec![0xffu8, 0x00])),
            );
            headers.insert("x-queue-attempt".into(), AMQPValue::Boolean(true));
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    payload,
                    BasicProperties::default().with_headers(headers),
                )
                .await
                .map_err(failed)?
                .await
                .map_err(failed)?;
            let _ = conn.close(200, "done".into()).await;
            Ok(())
        };
        Some(publish.await)
    }

    async fn persistent_broker(&self) -> Option<Result<Box<dyn BrokerProcess>>> {
        if std::env::var("QUEUE_TEST_AMQP_RESTART").map_or(true, |v| v != "1") {
            // Opt-in: right after the restart the broker sometimes answers a
            // passive declare of the recovered queue with 404 (seen once in
            // three runs), so the case is not yet stable enough for CI.
            eprintln!("the RabbitMQ restart case runs with QUEUE_TEST_AMQP_RESTART=1 (see docs/backends/amqp.md)");
            return None;
        }
        if self.queue_type == "quorum" {
            // RabbitMQ 3.10 on a single node killed with SIGKILL: after the
            // restart the quorum queue's Ra server times out every consume
            // and publish confirm (`rabbit_quorum_queue:consume` fails with
            // `timeout`), so the case would measure the broker, not us.
            // The restart is checked on classic queues; docs/backends/amqp.md
            // says so.
            eprintln!("quorum queues: the restart case runs on classic queues only (see docs/backends/amqp.md)");
            return None;
        }
        if !std::path::Path::new(RABBITMQ_SERVER).exists() {
            let required = std::env::var("QUEUE_TEST_REQUIRED").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{RABBITMQ_SERVER} is missing and QUEUE_TEST_REQUIRED=1"
            );
            eprintln!("skipping: {RABBITMQ_SERVER} is not installed");
            return None;
        }
        let tail = queue_core::MessageId::new().as_uuid().simple().to_string();
        let tail = &tail[tail.len() - 12..];
        let dir = std::env::temp_dir().join(format!("queue-rabbit-{tail}"));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("temp dir");
        }
        std::fs::write(dir.join("plugins"), "[].").expect("plugins file");
        let mut broker = PrivateRabbit {
            name: format!("qt{tail}@localhost"),
            port: 0,
            dist_port: 0,
            dir,
            queue_type: self.queue_type,
            child: None,
        };
        // A port found free may be taken before the node binds it.
        for _ in 0..3 {
            broker.port = free_port();
            broker.dist_port = free_port();
            if broker.start().await.is_ok() {
                return Some(Ok(Box::new(broker)));
            }
        }
        Some(Err(Error::new(
            ErrorKind::Connection,
            "a private rabbitmq node did not start on three ports",
        )))
    }
}

/// The RabbitMQ start script of Debian's package (run directly, as the
/// current user, with every path pointed into a private directory).
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port()
}

/// A private RabbitMQ node: its own node name, AMQP and distribution ports
/// and data directory, so killing it never touches the machine's broker.
struct PrivateRabbit {
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    queue_type: &'static str,
    child: Option<tokio::process::Child>,
}

impl PrivateRabbit {
    /// Kill the node's whole process group (the start script and the
    /// Erlang VM it runs) with SIGKILL.
    async fn kill_group(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status()
                    .await;
            }
            let _ = child.wait().await;
        }
    }
}

#[async_trait]
impl BrokerProcess for PrivateRabbit {
    fn url(&self) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}?queue_type={}",
            self.port, self.queue_type
        )
    }

    async fn kill(&mut self) -> Result<()> {
        self.kill_group().await;
        Ok(())
    }

    /// Starts the node and returns once it prints that the broker started
    /// (it boots in 5 to 15 seconds here).
    async fn start(&mut self) -> Result<()> {
        let dir = &self.dir;
        let mut child = tokio::process::Command::new(RABBITMQ_SERVER)
            .current_dir(dir)
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("none"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("none.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("none-env"))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::new(ErrorKind::Other, format!("spawn rabbitmq-server: {e}")))?;
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(90), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Starting broker") && line.contains("completed") {
                    return true;
                }
            }
            false
        })
        .await;
        // Keep reading its output so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        if ready == Ok(true) {
            Ok(())
        } else {
            self.kill_group().await;
            Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "a private rabbitmq node did not start on port {}",
                    self.port
                ),
            ))
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

mod classic {
    use super::AmqpHarness;
    queue_testkit::conformance_suite!(AmqpHarness::from_env("classic"));
}

mod quorum {
    use super::AmqpHarness;
    queue_testkit::conformance_suite!(AmqpHarness::from_env("quorum"));
}
