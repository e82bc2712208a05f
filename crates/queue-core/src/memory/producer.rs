//! [`MemoryProducer`]: queues messages under the queue lock.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::time::Instant;

use super::shared::Shared;
use super::state::MemQueue;
use crate::error::{BatchError, Error, ErrorKind, Result};
use crate::message::{Message, MessageId, QueueName};
use crate::traits::Producer;

/// Sends to one memory queue.
#[derive(Debug)]
pub struct MemoryProducer {
    pub(super) shared: Arc<Shared>,
    pub(super) queue: Arc<MemQueue>,
}

impl MemoryProducer {
    /// Queue `messages` all or none: a batch that would pass the queue's
    /// maximum length is refused whole, before anything is queued.
    fn push(&self, messages: Vec<Message>) -> Result<Vec<MessageId>> {
        self.shared.check_open()?;
        let mut state = self.queue.state()?;
        if let Some(max) = state.options.max_length {
            // Expired leases and TTLs must not hold places in a full queue.
            let sys_now = SystemTime::now();
            state.maintain(sys_now, Instant::now());
            state.sweep_expired(sys_now);
            let depth = state.depth();
            if depth + messages.len() as u64 > max {
                let error = Error::new(
                    ErrorKind::QueueFull,
                    format!(
                        "queue {:?} is full: it holds {depth} of at most {max} messages, and {} more do not fit",
                        self.queue.name,
                        messages.len()
                    ),
                );
                self.queue.unlock(state);
                return Err(error);
            }
        }
        let sys_now = SystemTime::now();
        let now = Instant::now();
        let mut ids = Vec::with_capacity(messages.len());
        for message in messages {
            if let Some(key) = &message.idempotency_key {
                let window = self.queue.idempotency_window;
                if let Some(first) = state.first_with_key(key, message.id, now, window) {
                    state.stats.deduplicated_total += 1;
                    ids.push(first);
                    continue;
                }
            }
            ids.push(message.id);
            state.stats.enqueued_total += 1;
            state.enqueue(message, sys_now, now);
        }
        self.queue.unlock(state);
        Ok(ids)
    }
}

#[async_trait]
impl Producer for MemoryProducer {
    fn queue(&self) -> &QueueName {
        &self.queue.name
    }

    async fn send(&self, message: Message) -> Result<MessageId> {
        // In-process sends never wait on I/O: give the scheduler a chance to
        // run consumers, or a tight send loop would starve them.
        tokio::task::consume_budget().await;
        self.shared.capabilities.check_message(&message)?;
        let id = message.id;
        self.push(vec![message])?;
        Ok(id)
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<MessageId>, BatchError> {
        tokio::task::consume_budget().await;
        let len = messages.len();
        // All or nothing: a failure is the whole batch's.
        let whole = |e| BatchError::whole(e, len);
        self.shared
            .capabilities
            .check_batch(&messages)
            .map_err(whole)?;
        self.push(messages).map_err(whole)
    }
}
