//! [`AmqpBackend`]: the connection, capabilities, queue declarations, health.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use queue_core::{
    Admin, Backend, Capabilities, CloseFlag, Consumer, ConsumerOptions, Error, ErrorKind,
    HealthStatus, LeaseLossDetection, Ordering, ProcessTotals, ProcessTotalsMap, Producer,
    QueueConfig, QueueName, QueueOptions, RedeliveryCount, Result, StatsAccuracy, Support, Totals,
};

use crate::config::{QueueType, Settings};
use crate::consumer::ConsumerState;
use crate::link::Link;
use crate::wire;
use crate::{AmqpConsumer, AmqpProducer, MAX_BATCH, MAX_RECEIVE};

/// The RabbitMQ backend. Clones share one connection.
#[derive(Clone, Debug)]
pub struct AmqpBackend {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) capabilities: Capabilities,
    pub(crate) link: Link,
    pub(crate) closed: CloseFlag,
    /// Queues (and companions) this process knows exist.
    declared: std::sync::Mutex<HashSet<String>>,
    /// The live consumers of each queue in this process: their buffered
    /// and leased deliveries are the in-flight counts the broker cannot
    /// give per consumer.
    consumers: std::sync::Mutex<HashMap<QueueName, Vec<Weak<ConsumerState>>>>,
    /// Totals counted by this process, per queue.
    counters: ProcessTotalsMap,
}

impl Shared {
    pub(crate) fn check_open(&self) -> Result<()> {
        self.closed.check("the amqp backend")
    }

    pub(crate) fn queue_type(&self) -> QueueType {
        self.link.settings.queue_type
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.link.settings
    }

    fn known(&self, name: &str) -> bool {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    fn remember(&self, name: &str) {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
    }

    pub(crate) fn forget(&self, queue: &QueueName) {
        let mut declared = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        declared.remove(queue.as_str());
        for name in wire::companions(queue) {
            declared.remove(&name);
        }
    }

    /// Declare `name` with `args` (durable). A queue that exists with other
    /// arguments is a `Config` error naming the difference.
    pub(crate) async fn declare(&self, name: &str, args: FieldTable) -> Result<u32> {
        let (_, channel) = self.link.channel().await?;
        let declared = self
            .link
            .call(
                &format!("declaring queue {name:?}"),
                channel.queue_declare(name.into(), QueueDeclareOptions::durable(), args),
            )
            .await;
        let _ = channel.close(200, "done".into()).await;
        match declared {
            Ok(queue) => {
                self.remember(name);
                Ok(queue.message_count())
            }
            Err(e) if e.kind() == ErrorKind::Config => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{} (the queue exists with other arguments: it was declared elsewhere, or with another queue_type or max_length; delete it or use the same options)",
                    e.message()
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// How many ready messages `name` holds, `None` if it does not exist
    /// (a passive declare, on a throwaway channel since a missing queue
    /// closes the channel).
    pub(crate) async fn count(&self, name: &str) -> Result<Option<u32>> {
        let (_, channel) = self.link.channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = self
            .link
            .call(
                &format!("checking queue {name:?}"),
                channel.queue_declare(name.into(), options, FieldTable::default()),
            )
            .await;
        match declared {
            Ok(queue) => {
                let _ = channel.close(200, "done".into()).await;
                self.remember(name);
                Ok(Some(queue.message_count()))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Make sure `queue` and its dead-letter queue exist: a queue made
    /// elsewhere with its own options is used as it is; a missing one is
    /// created with default options.
    pub(crate) async fn ensure_exists(&self, queue: &QueueName) -> Result<()> {
        self.check_open()?;
        if self.known(queue.as_str()) {
            return Ok(());
        }
        match self.count(queue.as_str()).await? {
            Some(_) => self
                .declare(&wire::dlq(queue), wire::dlq_args(self.queue_type()))
                .await
                .map(|_| ()),
            None => self.ensure_queue(queue, &QueueOptions::default()).await,
        }
    }

    /// Declare `queue` with `options`, and its dead-letter queue.
    pub(crate) async fn ensure_queue(
        &self,
        queue: &QueueName,
        options: &QueueOptions,
    ) -> Result<()> {
        self.check_open()?;
        options.check()?;
        let queue_type = self.queue_type();
        self.declare(&wire::dlq(queue), wire::dlq_args(queue_type))
            .await?;
        self.declare(queue.as_str(), wire::queue_args(queue_type, queue, options))
            .await?;
        Ok(())
    }

    /// Make sure delay tier `k` of `queue` exists.
    pub(crate) async fn ensure_tier(&self, queue: &QueueName, k: u32) -> Result<()> {
        let name = wire::tier(queue, k);
        if self.known(&name) {
            return Ok(());
        }
        self.declare(&name, wire::tier_args(self.queue_type(), queue, k))
            .await
            .map(|_| ())
    }

    /// This process's totals of `queue`.
    pub(crate) fn counters(&self, queue: &QueueName) -> Arc<ProcessTotals> {
        self.counters.of(queue)
    }

    pub(crate) fn register(&self, queue: &QueueName, consumer: &Arc<ConsumerState>) {
        let mut consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        let list = consumers.entry(queue.clone()).or_default();
        list.retain(|c| c.strong_count() > 0);
        list.push(Arc::downgrade(consumer));
    }

    /// The live consumers of `queue` in this process.
    pub(crate) fn consumers_of(&self, queue: &QueueName) -> Vec<Arc<ConsumerState>> {
        let consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        consumers
            .get(queue)
            .map(|list| list.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }
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
            shared: Arc::new(Shared {
                capabilities,
                link,
                closed: CloseFlag::default(),
                declared: std::sync::Mutex::default(),
                consumers: std::sync::Mutex::default(),
                counters: ProcessTotalsMap::default(),
            }),
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
