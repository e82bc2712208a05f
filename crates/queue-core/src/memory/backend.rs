//! [`MemoryBackend`]: the queues of one process, capabilities and close.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::config::Settings;
use super::consumer::{LocalQueue, MemoryConsumer};
use super::producer::MemoryProducer;
use super::state::{lock, MemQueue, State};
use super::{MAX_BATCH, MAX_RECEIVE};
use crate::capabilities::Capabilities;
use crate::config::QueueConfig;
use crate::error::Result;
use crate::message::QueueName;
use crate::stats::{ConsumerOptions, QueueOptions};
use crate::traits::{Admin, Backend, CloseFlag, Consumer, Producer, StopFlag};
use tokio::sync::Notify;

/// The embedded backend. Clones share the same queues.
#[derive(Clone, Debug)]
pub struct MemoryBackend {
    pub(super) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) capabilities: Capabilities,
    pub(super) lease: Duration,
    pub(super) queues: Mutex<HashMap<QueueName, Arc<MemQueue>>>,
    /// The worker registry: each worker with the instant it goes stale.
    pub(super) workers: Mutex<HashMap<String, (crate::stats::WorkerInfo, tokio::time::Instant)>>,
    /// The job store of [`Backend::default_job_store`].
    pub(super) job_store: Arc<crate::store::MemoryJobStore>,
    pub(super) closed: CloseFlag,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl MemoryBackend {
    /// A backend with default settings.
    pub fn new() -> Self {
        MemoryBackend::build(Settings::default())
    }

    /// A backend from a `memory://` config (`max_payload`, `idempotency_window`
    /// and `lease` apply; any other parameter is an error naming it).
    pub fn from_config(config: &QueueConfig) -> Result<Self> {
        Ok(MemoryBackend::build(Settings::from_config(config)?))
    }

    fn build(settings: Settings) -> Self {
        let Settings {
            max_payload,
            idempotency_window,
            lease,
        } = settings;
        MemoryBackend {
            shared: Arc::new(Shared {
                capabilities: capabilities(max_payload, idempotency_window),
                lease,
                queues: Mutex::new(HashMap::new()),
                workers: Mutex::new(HashMap::new()),
                job_store: Arc::default(),
                closed: CloseFlag::default(),
            }),
        }
    }

    /// A producer with its concrete type.
    pub fn memory_producer(&self, queue: &QueueName) -> Result<MemoryProducer> {
        Ok(MemoryProducer {
            queue: self.shared.queue(queue, None)?,
            shared: self.shared.clone(),
        })
    }

    /// A consumer with its concrete type.
    pub fn memory_consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<MemoryConsumer> {
        options.check()?;
        let lease = self
            .shared
            .capabilities
            .check_lease(options.lease.unwrap_or(self.shared.lease))?;
        let queue = self.shared.queue(queue, None)?;
        let name = QueueName::new(queue.name.as_str())?;
        Ok(MemoryConsumer {
            local: Arc::new(LocalQueue {
                shared: self.shared.clone(),
                queue: queue.clone(),
                name,
            }),
            queue,
            lease,
            shared: self.shared.clone(),
            stop: StopFlag::default(),
        })
    }
}

impl Shared {
    pub(super) fn check_open(&self) -> Result<()> {
        self.closed.check("the memory backend")
    }

    /// The queue `name`, created with `options` (or defaults) if missing.
    pub(super) fn queue(
        &self,
        name: &QueueName,
        options: Option<&QueueOptions>,
    ) -> Result<Arc<MemQueue>> {
        self.check_open()?;
        let mut queues = lock(&self.queues);
        let queue = queues.entry(name.clone()).or_insert_with(|| {
            Arc::new(MemQueue {
                name: name.clone(),
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                idempotency_window: self
                    .capabilities
                    .idempotency_window
                    .unwrap_or(crate::config::DEFAULT_IDEMPOTENCY_WINDOW),
            })
        });
        if let Some(options) = options {
            lock(&queue.state).options = options.clone();
        }
        Ok(queue.clone())
    }

    pub(super) fn existing(&self, name: &QueueName) -> Result<Arc<MemQueue>> {
        self.check_open()?;
        lock(&self.queues)
            .get(name)
            .cloned()
            .ok_or_else(|| super::error::no_such_queue(name))
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    async fn producer(&self, queue: &QueueName) -> Result<Box<dyn Producer>> {
        Ok(Box::new(self.memory_producer(queue)?))
    }

    async fn consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.memory_consumer(queue, options)?))
    }

    /// An in-process [`MemoryJobStore`](crate::MemoryJobStore) shared by
    /// every clone of this backend.
    fn default_job_store(&self) -> Option<Arc<dyn crate::store::JobStore>> {
        Some(self.shared.job_store.clone())
    }

    fn admin(&self) -> &dyn Admin {
        self
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.close();
        for queue in lock(&self.shared.queues).values() {
            queue.wake_all();
        }
        Ok(())
    }
}

/// The memory backend's table: everything native, exact, FIFO per priority.
fn capabilities(max_payload: usize, idempotency_window: Duration) -> Capabilities {
    let mut caps = Capabilities::native("memory");
    caps.max_payload = max_payload;
    caps.max_batch = MAX_BATCH;
    caps.max_receive = MAX_RECEIVE;
    caps.idempotency_window = Some(idempotency_window);
    caps
}
