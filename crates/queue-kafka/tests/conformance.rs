//! The conformance suite against the Kafka-compatible broker
//! `cargo xtask test` starts (`QUEUE_TEST_KAFKA_URL`). Not yet part of the
//! test run: it runs when `QUEUE_TEST_KAFKA_CONFORMANCE=1` is set while
//! the backend is being built.

use std::sync::Arc;

use async_trait::async_trait;
use queue_core::{Backend, Result};
use queue_kafka::KafkaBackend;
use queue_testkit::{broker_url, Harness};

struct KafkaHarness {
    url: String,
}

impl KafkaHarness {
    fn from_env() -> Option<KafkaHarness> {
        if std::env::var("QUEUE_TEST_KAFKA_CONFORMANCE")
            .ok()
            .as_deref()
            != Some("1")
        {
            eprintln!("skipping: the Kafka conformance suite runs with QUEUE_TEST_KAFKA_CONFORMANCE=1 while the backend is built");
            return None;
        }
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
}

queue_testkit::conformance_suite!(KafkaHarness::from_env());
