//! The conformance suite against the Kafka-compatible broker
//! `cargo xtask test` starts (`QUEUE_TEST_KAFKA_URL`, tansu). The harness
//! has no fault proxy yet (Kafka clients connect to the address the
//! broker advertises, not the bootstrap address) and no restartable
//! broker (tansu keeps topics in memory), so those cases check nothing
//! here yet; foreign bytes are written with a plain rdkafka producer.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{Backend, Error, ErrorKind, QueueName, Result};
use queue_kafka::KafkaBackend;
use queue_testkit::{broker_url, Harness};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

struct KafkaHarness {
    url: String,
}

impl KafkaHarness {
    fn from_env() -> Option<KafkaHarness> {
        let url = broker_url("QUEUE_TEST_KAFKA_URL")?;
        Some(KafkaHarness { url })
    }
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
