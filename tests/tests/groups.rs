//! Group fairness through a coordination store on the brokers that
//! deliver in their own order (RabbitMQ, SQS, Kafka): the conformance
//! cases of groups (`groups_take_turns`, `group_limit`) against each
//! broker wrapped with `queue::with_store` and the test's Redis as the
//! store. (Unwrapped, each broker's own suite checks that it refuses
//! grouped messages, naming the wrapper.) The process tests are in
//! `flow_control.rs`.

use std::sync::Arc;

use async_trait::async_trait;
use queue::{Backend, Result};
use queue_testkit::{broker_url, Harness};

/// A broker, wrapped so that groups take turns through the test's Redis.
struct ThroughStore {
    name: &'static str,
    url: String,
    store: String,
}

impl ThroughStore {
    fn from_env(name: &'static str, var: &str) -> Option<ThroughStore> {
        Some(ThroughStore {
            name,
            url: broker_url(var)?,
            store: broker_url("QUEUE_TEST_REDIS_URL")?,
        })
    }
}

#[async_trait]
impl Harness for ThroughStore {
    fn name(&self) -> &'static str {
        self.name
    }

    fn url(&self) -> String {
        self.url.clone()
    }

    async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        let backend = queue::connect(url).await?;
        let store = queue::connect_coordination(&self.store).await?;
        queue::with_store(backend, store)
    }
}

mod amqp {
    use super::ThroughStore;
    queue_testkit::conformance_cases!(
        ThroughStore::from_env("amqp", "QUEUE_TEST_AMQP_URL");
        groups_take_turns, group_limit
    );
}

mod sqs {
    use super::ThroughStore;
    queue_testkit::conformance_cases!(
        ThroughStore::from_env("sqs", "QUEUE_TEST_SQS_URL");
        groups_take_turns, group_limit
    );
}

mod kafka {
    use super::ThroughStore;
    queue_testkit::conformance_cases!(
        ThroughStore::from_env("kafka", "QUEUE_TEST_KAFKA_URL");
        groups_take_turns, group_limit
    );
}
