//! [`KafkaProducer`]: idempotent, every record acknowledged by all
//! in-sync replicas before a send returns.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use queue_core::stats::Counter;
use queue_core::{BatchError, Message, MessageId, Producer, QueueName, Result};

use crate::shared::{Produced, Shared};
use crate::wire;

/// Sends to one queue's topic (a due message) or to its retry tier (a
/// delayed one). The ordering key is the record key.
#[derive(Debug)]
pub struct KafkaProducer {
    shared: Arc<Shared>,
    queue: QueueName,
}

impl KafkaProducer {
    pub(crate) async fn open(shared: Arc<Shared>, queue: &QueueName) -> Result<Self> {
        shared.check_open()?;
        shared.ensure_topics(&shared.topics_of(queue)).await?;
        Ok(KafkaProducer {
            shared,
            queue: queue.clone(),
        })
    }

    async fn send_one(&self, message: &Message) -> Result<MessageId> {
        self.shared.send(&self.queue, message).await?;
        self.shared.counters(&self.queue).add(Counter::Enqueued, 1);
        Ok(message.id)
    }
}

#[async_trait]
impl Producer for KafkaProducer {
    fn queue(&self) -> &QueueName {
        &self.queue
    }

    async fn send(&self, message: Message) -> Result<MessageId> {
        self.shared.check_open()?;
        self.shared.capabilities.check_message(&message)?;
        self.send_one(&message).await
    }

    /// Every record is produced at once (librdkafka batches them on the
    /// wire); each has its own outcome, so a failed batch says which
    /// messages the broker took.
    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<MessageId>, BatchError> {
        let whole = |e| BatchError::whole(e, messages.len());
        self.shared.check_open().map_err(whole)?;
        self.shared
            .capabilities
            .check_batch(&messages)
            .map_err(whole)?;
        // Every record is queued in librdkafka before any is awaited, so
        // they go out in batches; one clock read for the whole batch.
        let now = std::time::SystemTime::now();
        let due = wire::topic(&self.queue);
        let queued: Vec<(Produced, Cow<'_, str>)> = messages
            .iter()
            .map(|m| {
                if m.delay_from(now).is_zero() {
                    // The usual case: no route, no topic name to build.
                    (
                        self.shared.start_produce(&due, m, None),
                        Cow::Borrowed(due.as_str()),
                    )
                } else {
                    let (produced, topic) = self.shared.start_send(&self.queue, m, now);
                    (produced, Cow::Owned(topic))
                }
            })
            .collect();
        // Acknowledgements come back about in the order sent: awaiting each
        // in turn costs no more than the last one's wait.
        let mut outcomes: Vec<Result<MessageId>> = Vec::with_capacity(messages.len());
        for ((produced, topic), m) in queued.into_iter().zip(&messages) {
            outcomes.push(produced.outcome(&topic, m.id).await.map(|()| m.id));
        }
        let sent = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
        self.shared
            .counters(&self.queue)
            .add(Counter::Enqueued, sent);
        match outcomes.iter().find_map(|o| o.as_ref().err()) {
            None => Ok(outcomes.into_iter().flatten().collect()),
            Some(first) => {
                let first = queue_core::Error::new(first.kind(), first.message().to_owned());
                Err(BatchError::partial(first, outcomes))
            }
        }
    }
}
