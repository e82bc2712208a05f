//! [`KafkaBackend`]: connecting (the producer and admin clients),
//! capabilities, and the `Backend` impl.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{
    Admin, Backend, Capabilities, Consumer, ConsumerOptions, LeaseLossDetection, Ordering,
    Producer, QueueConfig, QueueName, RedeliveryCount, Result, StatsAccuracy, Support, Totals,
};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;

use crate::config::Settings;
use crate::error::classify;
use crate::shared::Shared;
use crate::{KafkaConsumer, KafkaProducer};

/// Most messages one `send_batch` takes.
pub const MAX_BATCH: usize = 1_000;
/// The largest record value by default: Kafka's default
/// `message.max.bytes` (1 MiB) less room for the record's framing.
pub const DEFAULT_MAX_RECORD: usize = 1_000_000;

/// The Kafka backend. Clones share its clients and group members.
#[derive(Clone, Debug)]
pub struct KafkaBackend {
    pub(crate) shared: Arc<Shared>,
}

impl KafkaBackend {
    /// Connect from a URL (`kafka://host:port[,host:port]`).
    pub async fn connect(url: &str) -> Result<KafkaBackend> {
        KafkaBackend::from_config(&QueueConfig::from_url(url)?).await
    }

    /// Connect from a validated configuration. The clients connect in the
    /// background; the first call (or `Admin::health`) reaches a broker.
    pub async fn from_config(config: &QueueConfig) -> Result<KafkaBackend> {
        let settings = Settings::from_config(config)?;
        let capabilities = capabilities(&settings, config.max_payload);
        let mut producer_config = settings.client_config();
        producer_config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                settings.timeouts().1.as_millis().max(1000).to_string(),
            )
            .set(
                "message.max.bytes",
                (capabilities.max_payload + 64 * 1024).to_string(),
            );
        let producer: FutureProducer = producer_config
            .create()
            .map_err(|e| classify(e, "creating the producer"))?;
        let admin: AdminClient<DefaultClientContext> = settings
            .client_config()
            .create()
            .map_err(|e| classify(e, "creating the admin client"))?;
        Ok(KafkaBackend {
            shared: Arc::new(Shared::new(settings, capabilities, producer, admin)),
        })
    }

    /// The capability table a URL's configuration gives, without
    /// connecting (for documentation and checks).
    pub fn table(config: &QueueConfig) -> Result<Capabilities> {
        Ok(capabilities(
            &Settings::from_config(config)?,
            config.max_payload,
        ))
    }

    /// The validated settings.
    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Wait until this backend's member of `queue` holds partitions (a
    /// group join takes a few seconds); whether it does within `wait`.
    pub async fn joined(&self, queue: &QueueName, wait: Duration) -> Result<bool> {
        Ok(self.shared.member(queue)?.assigned(wait).await)
    }
}

#[async_trait]
impl Backend for KafkaBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    async fn producer(&self, queue: &QueueName) -> Result<Box<dyn Producer>> {
        Ok(Box::new(
            KafkaProducer::open(self.shared.clone(), queue).await?,
        ))
    }

    async fn consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        self.capabilities().check_consumer(&options)?;
        Ok(Box::new(
            KafkaConsumer::open(self.shared.clone(), queue, options.lease).await?,
        ))
    }

    fn admin(&self) -> &dyn Admin {
        self
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.close();
        Ok(())
    }
}

/// The capability table.
pub(crate) fn capabilities(_settings: &Settings, max_payload: Option<usize>) -> Capabilities {
    let mut caps = Capabilities::new("kafka");
    caps.priority = Support::Unsupported;
    caps.delay = Support::Emulated;
    caps.ttl = Support::Emulated;
    caps.dead_letter = Support::Emulated;
    caps.redrive = Support::Emulated;
    caps.idempotency = Support::Unsupported;
    caps.lease_extension = Support::Emulated;
    caps.max_length = Support::Unsupported;
    caps.purge = Support::Unsupported;
    caps.purge_in_flight = false;
    caps.stats = StatsAccuracy::Approximate;
    caps.totals = Totals::Process;
    caps.redeliveries = RedeliveryCount::OnNack;
    caps.lease_loss = LeaseLossDetection::Local;
    caps.rebalances_on_join = true;
    caps.partial_batches = true;
    caps.ordering = Ordering::FifoPerPartition;
    caps.max_payload = max_payload.unwrap_or(DEFAULT_MAX_RECORD);
    caps.max_headers = None;
    caps.max_native_delay = None;
    caps.max_batch = MAX_BATCH;
    caps.max_receive = 1_000;
    caps.min_lease = Duration::from_millis(100);
    caps.max_lease = Duration::from_secs(12 * 60 * 60);
    caps.lease_granularity = Duration::from_millis(1);
    caps
}
