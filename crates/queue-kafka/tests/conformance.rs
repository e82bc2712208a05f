//! The conformance suite against the Kafka-compatible broker
//! `cargo xtask test` starts (`QUEUE_TEST_KAFKA_URL`, tansu). Kafka
//! clients connect where the broker's metadata says, not to the bootstrap
//! address, so the fault proxy rewrites the broker's address in replies
//! to its own (`reply_rewrite`) and every connection of the backend under
//! test goes through it. The harness runs no restartable broker (tansu
//! keeps topics in memory), so the restart case checks nothing here;
//! foreign bytes are written with a plain rdkafka producer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{Backend, Error, ErrorKind, QueueName, Result};
use queue_kafka::KafkaBackend;
use queue_testkit::proxy::ReplyRewrite;
use queue_testkit::{broker_url, Harness};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

struct KafkaHarness {
    url: String,
    /// The broker's address, as its metadata advertises it (the harness
    /// URL names one broker by IP address).
    broker: SocketAddr,
}

impl KafkaHarness {
    fn from_env() -> Option<KafkaHarness> {
        let url = broker_url("QUEUE_TEST_KAFKA_URL")?;
        let servers = queue_kafka::bootstrap_servers(&url).expect("QUEUE_TEST_KAFKA_URL parses");
        let broker = servers.parse().unwrap_or_else(|e| {
            panic!("QUEUE_TEST_KAFKA_URL names one broker by IP ({servers}): {e}")
        });
        Some(KafkaHarness { url, broker })
    }
}

/// A host and port as a Kafka reply carries them: the host's bytes, then
/// the port as a big-endian 32-bit integer (metadata and coordinator
/// replies alike).
fn wire_address(addr: SocketAddr) -> Vec<u8> {
    let mut bytes = addr.ip().to_string().into_bytes();
    bytes.extend_from_slice(&i32::from(addr.port()).to_be_bytes());
    bytes
}

#[async_trait]
impl Harness for KafkaHarness {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(KafkaBackend::connect(url).await?))
    }

    fn unreachable_url(&self) -> Option<String> {
        Some("kafka://127.0.0.1:1".to_owned())
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        Some(self.broker)
    }

    /// The broker's address in metadata and coordinator replies becomes
    /// the proxy's (both are `127.0.0.1`, so only the port changes).
    fn reply_rewrite(&self, proxy: SocketAddr) -> Option<ReplyRewrite> {
        Some(ReplyRewrite {
            from: wire_address(self.broker),
            to: wire_address(proxy),
        })
    }

    /// A record whose value is `payload`, written to the queue's topic by
    /// a plain rdkafka producer.
    async fn inject_foreign(&self, queue: &QueueName, payload: &[u8]) -> Option<Result<()>> {
        let send = async {
            let servers = queue_kafka::bootstrap_servers(&self.url)?;
            let failed = |e: String| Error::new(ErrorKind::Connection, e);
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", &servers)
                .create()
                .map_err(|e| failed(e.to_string()))?;
            producer
                .send(
                    FutureRecord::<(), [u8]>::to(queue.as_str()).payload(payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| failed(e.to_string()))?;
            Ok(())
        };
        Some(send.await)
    }
}

queue_testkit::conformance_suite!(KafkaHarness::from_env());
