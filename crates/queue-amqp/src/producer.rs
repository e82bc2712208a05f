//! [`AmqpProducer`]: persistent messages, every publish confirmed.

use std::sync::Arc;

use async_trait::async_trait;
use queue_core::stats::Counter;
use queue_core::{BatchError, Error, Message, MessageId, Producer, QueueName, Result};

use crate::shared::Shared;

/// Sends to one RabbitMQ queue through the backend's publishing channel.
/// A send returns once the broker confirmed the message is stored in a
/// queue; a broker nack or an unroutable return is an error.
#[derive(Debug)]
pub struct AmqpProducer {
    shared: Arc<Shared>,
    queue: QueueName,
}

impl AmqpProducer {
    pub(crate) async fn open(shared: Arc<Shared>, queue: &QueueName) -> Result<Self> {
        shared.ensure_exists(queue).await?;
        Ok(AmqpProducer {
            shared,
            queue: queue.clone(),
        })
    }
}

impl AmqpProducer {
    fn count(&self, sent: usize) {
        self.shared
            .counters(&self.queue)
            .add(Counter::Enqueued, sent as u64);
    }
}

#[async_trait]
impl Producer for AmqpProducer {
    fn queue(&self) -> &QueueName {
        &self.queue
    }

    async fn send(&self, message: Message) -> Result<MessageId> {
        self.shared.check_open()?;
        self.shared.capabilities.check_message(&message)?;
        let outgoing = self
            .shared
            .prepare(&self.queue, std::slice::from_ref(&message))
            .await?;
        self.shared
            .link
            .publish(&outgoing)
            .await
            .map_err(|e| e.error)?;
        self.count(1);
        Ok(message.id)
    }

    /// Every message published on one channel before the first confirm is
    /// awaited (pipelined). The broker confirms each on its own: a failed
    /// batch says which messages it accepted.
    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<MessageId>, BatchError> {
        let whole = |e| BatchError::whole(e, messages.len());
        self.shared.check_open().map_err(whole)?;
        self.shared
            .capabilities
            .check_batch(&messages)
            .map_err(whole)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let outgoing = self
            .shared
            .prepare(&self.queue, &messages)
            .await
            .map_err(whole)?;
        match self.shared.link.publish(&outgoing).await {
            Ok(()) => {
                self.count(messages.len());
                Ok(messages.iter().map(|m| m.id).collect())
            }
            Err(failed) => {
                self.count(failed.index);
                let outcomes = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        if i < failed.index {
                            Ok(m.id)
                        } else if i == failed.index {
                            Err(Error::new(failed.error.kind(), failed.error.message().to_owned()))
                        } else {
                            Err(Error::new(
                                failed.error.kind(),
                                format!(
                                    "message {} was not confirmed: message {} of its batch failed first",
                                    m.id, failed.index
                                ),
                            ))
                        }
                    })
                    .collect();
                Err(BatchError::partial(failed.error, outcomes))
            }
        }
    }
}
