//! [`Shared`]: what the backend and its producers, consumers and admin
//! share: the queues of the process, the worker registry, the job store,
//! the capability table and the closed flag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::state::{lock, MemQueue, State};
use crate::capabilities::Capabilities;
use crate::error::Result;
use crate::message::QueueName;
use crate::stats::QueueOptions;
use crate::traits::CloseFlag;

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) capabilities: Capabilities,
    pub(super) lease: Duration,
    pub(super) queues: Mutex<HashMap<QueueName, Arc<MemQueue>>>,
    /// The worker registry: each worker with the instant it goes stale.
    pub(super) workers: Mutex<HashMap<String, (crate::stats::WorkerInfo, tokio::time::Instant)>>,
    /// The job store of [`Backend::default_job_store`].
    pub(super) job_store: Arc<crate::store::MemoryJobStore>,
    /// The coordination store of [`Backend::coordination`] (clones share it).
    pub(super) coordination: crate::coordination::MemoryCoordination,
    pub(super) closed: CloseFlag,
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
