//! [`SqsBackend`]: connecting, capabilities, health.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{
    Admin, Backend, Capabilities, Consumer, ConsumerOptions, Error, ErrorKind, HealthStatus,
    LeaseLossDetection, Ordering, Producer, QueueConfig, QueueName, RedeliveryCount, Result,
    StatsAccuracy, Support, Totals,
};

use crate::batcher::Batcher;
use crate::client::{RequestCounter, Sqs};
use crate::config::{QueueType, Settings};
use crate::shared::Shared;
use crate::{SqsConsumer, SqsProducer, MAX_BATCH, MAX_VISIBILITY, SQS_BATCH};

/// The SQS backend. Clones share one client.
#[derive(Clone, Debug)]
pub struct SqsBackend {
    pub(crate) shared: Arc<Shared>,
}

impl SqsBackend {
    /// Connect from a URL (`sqs://REGION?endpoint=…`).
    pub async fn connect(url: &str) -> Result<SqsBackend> {
        SqsBackend::from_config(&QueueConfig::from_url(url)?).await
    }

    /// Connect from a validated configuration. No request is made: the
    /// first call (or [`Admin::health`]) reaches SQS.
    pub async fn from_config(config: &QueueConfig) -> Result<SqsBackend> {
        let settings = Settings::from_config(config)?;
        let capabilities = capabilities(&settings);
        let sqs = Arc::new(Sqs::new(settings).await?);
        let batcher = Batcher::start(&sqs);
        Ok(SqsBackend {
            shared: Arc::new(Shared::new(capabilities, sqs, batcher)),
        })
    }

    /// The capability table a URL's configuration gives, without
    /// connecting (for documentation and checks).
    pub fn table(config: &QueueConfig) -> Result<Capabilities> {
        Ok(capabilities(&Settings::from_config(config)?))
    }

    /// The queue type the URL chose.
    pub fn queue_type(&self) -> QueueType {
        self.shared.settings().queue_type
    }

    /// The counter of HTTP requests this backend sent to SQS (retries
    /// included).
    pub fn requests(&self) -> RequestCounter {
        self.shared.sqs.requests.clone()
    }

    /// The SDK client, for what this crate does not cover.
    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.shared.sqs.client
    }

    /// A producer for `queue` with its concrete type.
    pub async fn sqs_producer(&self, queue: &QueueName) -> Result<SqsProducer> {
        self.shared.check_open()?;
        let urls = self.shared.sqs.urls(queue).await?;
        Ok(SqsProducer::new(self.shared.clone(), queue.clone(), urls))
    }

    /// A consumer for `queue` with its concrete type.
    pub async fn sqs_consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<SqsConsumer> {
        self.shared.check_open()?;
        self.capabilities().check_consumer(&options)?;
        let lease = options.lease.unwrap_or(self.shared.settings().lease);
        if lease > MAX_VISIBILITY {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("lease: SQS holds a message invisible for at most 12h, got {lease:?}"),
            ));
        }
        let urls = self.shared.sqs.urls(queue).await?;
        Ok(SqsConsumer::new(
            self.shared.clone(),
            queue.clone(),
            urls,
            lease,
        ))
    }

    pub(crate) async fn health_check(&self) -> HealthStatus {
        HealthStatus::probe("sqs", async {
            self.shared.check_open()?;
            // A lookup of a name that needs not exist is a signed round trip.
            self.shared
                .sqs
                .lookup("queue-health-check")
                .await
                .map(|_| ())
        })
        .await
    }
}

#[async_trait]
impl Backend for SqsBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    async fn producer(&self, queue: &QueueName) -> Result<Box<dyn Producer>> {
        Ok(Box::new(self.sqs_producer(queue).await?))
    }

    async fn consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.sqs_consumer(queue, options).await?))
    }

    fn admin(&self) -> &dyn Admin {
        self
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.close();
        Ok(())
    }
}

/// The table of the queue type the settings chose.
fn capabilities(settings: &Settings) -> Capabilities {
    let mut caps = Capabilities::new("sqs");
    caps.mode = Some(settings.queue_type.as_str());
    let fifo = settings.queue_type == QueueType::Fifo;
    caps.priority = Support::Unsupported;
    // FIFO queues take no per-message delay (SQS refuses DelaySeconds on
    // them); standard queues delay natively up to 15 minutes and hop past.
    caps.delay = if fifo {
        Support::Unsupported
    } else {
        Support::Native
    };
    caps.ttl = Support::Emulated;
    caps.dead_letter = Support::Native;
    caps.redrive = Support::Emulated;
    caps.idempotency = if fifo {
        Support::Native
    } else {
        Support::Unsupported
    };
    caps.lease_extension = Support::Native;
    caps.max_length = Support::Unsupported;
    caps.purge = Support::Native;
    caps.purge_in_flight = true;
    caps.stats = StatsAccuracy::Approximate;
    caps.totals = Totals::Process;
    caps.redeliveries = RedeliveryCount::Exact;
    caps.lease_loss = LeaseLossDetection::Local;
    caps.partial_batches = true;
    caps.ordering = if fifo {
        Ordering::FifoPerKey
    } else {
        Ordering::None
    };
    caps.max_payload = settings.max_payload;
    // SQS carries ten message attributes; user headers ride inside ours.
    caps.max_headers = None;
    caps.max_native_delay = if fifo {
        Some(Duration::ZERO)
    } else {
        Some(settings.max_native_delay)
    };
    caps.max_batch = MAX_BATCH;
    caps.max_receive = SQS_BATCH;
    caps.min_lease = Duration::from_secs(1);
    caps.max_lease = MAX_VISIBILITY;
    caps.lease_granularity = Duration::from_secs(1);
    caps.idempotency_window = fifo.then_some(Duration::from_secs(300));
    caps
}
