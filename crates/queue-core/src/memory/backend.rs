//! [`MemoryBackend`]: building it, capabilities and close.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::config::Settings;
use super::consumer::{LocalQueue, MemoryConsumer};
use super::producer::MemoryProducer;
use super::shared::Shared;
use super::state::lock;
use super::{MAX_BATCH, MAX_RECEIVE};
use crate::capabilities::Capabilities;
use crate::config::QueueConfig;
use crate::error::Result;
use crate::message::QueueName;
use crate::stats::ConsumerOptions;
use crate::traits::{Admin, Backend, CloseFlag, Consumer, Producer, StopFlag};

/// The embedded backend. Clones share the same queues.
#[derive(Clone, Debug)]
pub struct MemoryBackend {
    pub(super) shared: Arc<Shared>,
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
                coordination: crate::coordination::MemoryCoordination::new(),
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
        self.shared.capabilities.check_consumer(&options)?;
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
            group_limit: options.group_limit,
            shared: self.shared.clone(),
            stop: StopFlag::default(),
        })
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

    fn coordination(&self) -> Option<Arc<dyn crate::coordination::Coordination>> {
        Some(Arc::new(self.shared.coordination.clone()))
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
