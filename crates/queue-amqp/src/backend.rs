//! [`AmqpBackend`]: connecting, capabilities, health.

use std::sync::Arc;

use async_trait::async_trait;
use queue_core::{
    Admin, Backend, Capabilities, Consumer, ConsumerOptions, HealthStatus, LeaseLossDetection,
    Ordering, Producer, QueueConfig, QueueName, RedeliveryCount, Result, StatsAccuracy, Support,
    Totals,
};

use crate::config::{QueueType, Settings};
use crate::link::Link;
use crate::shared::Shared;
use crate::{AmqpConsumer, AmqpProducer, MAX_BATCH, MAX_RECEIVE};

/// The RabbitMQ backend. Clones share one connection.
#[derive(Clone, Debug)]
pub struct AmqpBackend {
    pub(crate) shared: Arc<Shared>,
}

impl AmqpBackend {
    /// Connect to the RabbitMQ an `amqp://` or `amqps://` URL names.
    ///
    /// Besides the common options (`lease`, `max_payload`,
    /// `connect_timeout`, `request_timeout`) the URL takes `queue_type`
    /// (`classic`, the default, or `quorum`), `prefetch` (per consumer,
    /// default 100), `consumer_timeout` (the broker's, default 30 min: the
    /// longest lease), `heartbeat` (seconds) and, for `amqps://`, `tls_ca`
    /// (a PEM file of the certificate authority to trust). The vhost is
    /// the URL path (`amqp://host/jobs`; none is `/`).
    pub async fn connect(url: &str) -> Result<Self> {
        AmqpBackend::from_config(&QueueConfig::from_url(url)?).await
    }

    /// Connect with a validated configuration.
    pub async fn from_config(config: &QueueConfig) -> Result<Self> {
        let settings = Settings::from_config(config)?;
        let capabilities = capabilities(&settings);
        let link = Link::new(settings);
        link.live().await?;
        Ok(AmqpBackend {
            shared: Arc::new(Shared::new(capabilities, link)),
        })
    }

    /// The capability table a configuration gives, without connecting.
    pub fn table(config: &QueueConfig) -> Result<Capabilities> {
        Ok(capabilities(&Settings::from_config(config)?))
    }

    /// A producer with its concrete type.
    pub async fn amqp_producer(&self, queue: &QueueName) -> Result<AmqpProducer> {
        AmqpProducer::open(self.shared.clone(), queue).await
    }

    /// A consumer with its concrete type.
    pub async fn amqp_consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<AmqpConsumer> {
        options.check()?;
        AmqpConsumer::open(self.shared.clone(), queue, options).await
    }

    /// The queue type the URL chose.
    pub fn queue_type(&self) -> QueueType {
        self.shared.queue_type()
    }
}

#[async_trait]
impl Backend for AmqpBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    async fn producer(&self, queue: &QueueName) -> Result<Box<dyn Producer>> {
        Ok(Box::new(self.amqp_producer(queue).await?))
    }

    async fn consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.amqp_consumer(queue, options).await?))
    }

    fn admin(&self) -> &dyn Admin {
        self
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.close();
        self.shared.link.close().await;
        Ok(())
    }
}

impl AmqpBackend {
    pub(crate) async fn health_check(&self) -> HealthStatus {
        HealthStatus::probe("amqp", async {
            self.shared.check_open()?;
            // A channel opened and closed is a round trip through the broker.
            let (_, channel) = self.shared.link.channel().await?;
            self.shared
                .link
                .call("closing a channel", channel.close(200, "health".into()))
                .await
        })
        .await
    }
}

/// The table of the queue type the settings chose.
fn capabilities(settings: &Settings) -> Capabilities {
    let mut caps = Capabilities::new("amqp");
    caps.mode = Some(settings.queue_type.as_str());
    caps.priority = match settings.queue_type {
        QueueType::Classic => Support::Native,
        QueueType::Quorum => Support::Unsupported,
    };
    caps.delay = Support::Emulated;
    caps.ttl = Support::Native;
    caps.dead_letter = Support::Emulated;
    caps.redrive = Support::Emulated;
    caps.idempotency = Support::Unsupported;
    caps.lease_extension = Support::Emulated;
    caps.max_length = Support::Native;
    caps.purge = Support::Native;
    caps.purge_in_flight = false;
    caps.stats = StatsAccuracy::Approximate;
    caps.totals = Totals::Process;
    caps.redeliveries = match settings.queue_type {
        QueueType::Classic => RedeliveryCount::OnNack,
        QueueType::Quorum => RedeliveryCount::Exact,
    };
    caps.lease_loss = LeaseLossDetection::Local;
    caps.partial_batches = true;
    caps.ordering = Ordering::FifoPerPriority;
    caps.max_payload = settings.max_payload;
    caps.max_headers = Some(u16::MAX as usize);
    // Delays are built from the delay tiers, hop by hop: no native limit.
    caps.max_native_delay = None;
    caps.max_batch = MAX_BATCH;
    caps.max_receive = MAX_RECEIVE;
    caps.max_lease = settings.consumer_timeout.min(queue_core::config::MAX_LEASE);
    caps.min_lease = queue_core::config::MIN_LEASE.min(caps.max_lease);
    caps
}
