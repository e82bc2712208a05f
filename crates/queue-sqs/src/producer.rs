//! [`SqsProducer`]: `SendMessage`, and `SendMessageBatch` in tens.

use std::sync::Arc;

use async_trait::async_trait;
use queue_core::stats::Counter;
use queue_core::{BatchError, Error, Message, MessageId, Producer, QueueName, Result};

use crate::batcher::{self, Op};
use crate::client::QueueUrls;
use crate::error::classify;
use crate::shared::Shared;

/// Sends to one SQS queue.
#[derive(Debug, Clone)]
pub struct SqsProducer {
    shared: Arc<Shared>,
    queue: QueueName,
    urls: QueueUrls,
}

impl SqsProducer {
    pub(crate) fn new(shared: Arc<Shared>, queue: QueueName, urls: QueueUrls) -> SqsProducer {
        SqsProducer {
            shared,
            queue,
            urls,
        }
    }
}

#[async_trait]
impl Producer for SqsProducer {
    fn queue(&self) -> &QueueName {
        &self.queue
    }

    async fn send(&self, message: Message) -> Result<MessageId> {
        self.shared.check_open()?;
        self.shared.capabilities.check_message(&message)?;
        let out = self.shared.outgoing(&message)?;
        let mut request = self
            .shared
            .sqs
            .client
            .send_message()
            .queue_url(&*self.urls.main)
            .message_body(out.body())
            .set_message_attributes(Some(out.attributes()?))
            .set_message_group_id(out.group().map(str::to_owned))
            .set_message_deduplication_id(out.dedup().map(str::to_owned));
        if out.delay_seconds > 0 {
            request = request.delay_seconds(out.delay_seconds);
        }
        request.send().await.map_err(|e| {
            classify(
                e,
                &format!("sending to {}", self.queue),
                self.shared.address(),
            )
        })?;
        self.shared.counters(&self.queue).add(Counter::Enqueued, 1);
        Ok(message.id)
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<MessageId>, BatchError> {
        let len = messages.len();
        self.shared
            .check_open()
            .map_err(|e| BatchError::whole(e, len))?;
        self.shared
            .capabilities
            .check_batch(&messages)
            .map_err(|e| BatchError::whole(e, len))?;
        let outs = messages
            .iter()
            .map(|m| self.shared.outgoing(m))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| BatchError::whole(e, len))?;
        let ops = outs.into_iter().map(|o| Op::Send(Box::new(o))).collect();
        let results = batcher::run(&self.shared.sqs, &self.urls.main, ops).await;
        let sent = results.iter().filter(|r| r.is_ok()).count();
        self.shared
            .counters(&self.queue)
            .add(Counter::Enqueued, sent as u64);
        if sent == len {
            return Ok(messages.iter().map(|m| m.id).collect());
        }
        let first: Error = results
            .iter()
            .find_map(|r| r.as_ref().err().map(Error::clone_kind))
            .unwrap_or_else(|| Error::new(queue_core::ErrorKind::Other, "batch failed"));
        let outcomes = messages
            .iter()
            .zip(results)
            .map(|(m, r)| r.map(|()| m.id))
            .collect();
        if sent == 0 {
            return Err(BatchError::whole(first, len));
        }
        Err(BatchError::partial(
            Error::new(
                first.kind(),
                format!(
                    "{} of {len} messages were not sent to {}: {}",
                    len - sent,
                    self.queue,
                    first.message()
                ),
            )
            .with_retryable(first.is_retryable()),
            outcomes,
        ))
    }
}
