//! Sending to a grouped queue: each group's messages to its own queue.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::{group_key, group_queue, Shared};
use crate::capabilities::Coordinated;
use crate::error::{BatchError, Error, Result};
use crate::message::{check_group_key, Message, MessageId, QueueName};
use crate::traits::Producer;

/// A producer of a grouped queue: messages with no group go to the queue,
/// a group's to its group queue (made, and noted in the store, on the
/// group's first message through this producer).
pub(crate) struct GroupedProducer {
    shared: Arc<Shared>,
    queue: QueueName,
    main: Box<dyn Producer>,
    /// The producers of the groups sent to so far, by hash.
    groups: Mutex<HashMap<String, Arc<dyn Producer>>>,
}

impl GroupedProducer {
    pub(crate) async fn new(shared: Arc<Shared>, queue: &QueueName) -> Result<GroupedProducer> {
        let main = shared.backend.producer(queue).await?;
        Ok(GroupedProducer {
            shared,
            queue: queue.clone(),
            main,
            groups: Mutex::new(HashMap::new()),
        })
    }

    /// The producer of `group`'s queue: its queue made with the queue's
    /// options (and paused if the queue is), and the group noted, the
    /// first time.
    async fn group(&self, group: &str) -> Result<Arc<dyn Producer>> {
        let key = group_key(&self.queue, group);
        let mut groups = self.groups.lock().await;
        if let Some(producer) = groups.get(&key) {
            return Ok(producer.clone());
        }
        let name = group_queue(&self.queue, &key);
        let admin = self.shared.backend.admin();
        let options = self.shared.options(&self.queue).await?;
        admin.ensure_queue(&name, &options).await?;
        if admin.stats(&self.queue).await?.paused {
            admin.pause(&name).await?;
        }
        let producer: Arc<dyn Producer> = Arc::from(self.shared.backend.producer(&name).await?);
        // Noted once its queue exists, so a consumer never looks for a
        // queue that is not there.
        self.shared.note_group(&self.queue, &key, group).await?;
        groups.insert(key, producer.clone());
        Ok(producer)
    }

    /// Forget a group's producer whose queue is gone (the queue was
    /// deleted): its next message makes the group queue and notes the
    /// group again.
    async fn forget_if_gone(&self, producer: &Arc<dyn Producer>, failed: Option<&Error>) {
        if failed.is_some_and(|e| e.kind() == crate::ErrorKind::NotFound) {
            self.groups
                .lock()
                .await
                .retain(|_, p| !Arc::ptr_eq(p, producer));
        }
    }

    /// Where `message` goes: `None` for the queue itself, else its
    /// group's producer; the group header comes off (the group queue says
    /// it, and the consumer puts it back).
    async fn route(&self, message: &mut Message) -> Result<Option<Arc<dyn Producer>>> {
        let Some(group) = message.group().map(str::to_owned) else {
            return Ok(None);
        };
        if self.shared.backend.capabilities().group_fairness == Coordinated::Native {
            // Wrapped for its registry only: its groups are its own.
            return Ok(None);
        }
        check_group_key(&group)?;
        let producer = self.group(&group).await?;
        message.headers.remove(crate::job::HEADER_GROUP);
        // A group keeps its order where the broker orders by key (one
        // Kafka partition, one SQS FIFO message group).
        if message.ordering_key.is_none() {
            message.ordering_key = Some(Arc::from(group.as_str()));
        }
        Ok(Some(producer))
    }
}

impl fmt::Debug for GroupedProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupedProducer")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Producer for GroupedProducer {
    fn queue(&self) -> &QueueName {
        &self.queue
    }

    async fn send(&self, mut message: Message) -> Result<MessageId> {
        match self.route(&mut message).await? {
            Some(producer) => {
                let sent = producer.send(message).await;
                self.forget_if_gone(&producer, sent.as_ref().err()).await;
                sent
            }
            None => self.main.send(message).await,
        }
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<MessageId>, BatchError> {
        if messages.iter().all(|m| m.group().is_none()) {
            return self.main.send_batch(messages).await;
        }
        let len = messages.len();
        // One batch per destination, in the order each first appears.
        let mut parts: Vec<(Option<Arc<dyn Producer>>, Vec<usize>, Vec<Message>)> = Vec::new();
        for (i, mut message) in messages.into_iter().enumerate() {
            let producer = self
                .route(&mut message)
                .await
                .map_err(|e| BatchError::whole(e, len))?;
            let same = |p: &Option<Arc<dyn Producer>>| match (p, &producer) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            match parts.iter_mut().find(|(p, _, _)| same(p)) {
                Some((_, at, part)) => {
                    at.push(i);
                    part.push(message);
                }
                None => parts.push((producer, vec![i], vec![message])),
            }
        }
        // Every message checked before any is sent, as one batch.
        let routed: Vec<Message> = parts.iter().flat_map(|(_, _, part)| part.clone()).collect();
        if let Err(e) = self.shared.backend.capabilities().check_batch(&routed) {
            return Err(BatchError::whole(e, len));
        }
        drop(routed);
        let mut outcomes: Vec<Option<Result<MessageId>>> = (0..len).map(|_| None).collect();
        let mut first_error: Option<Error> = None;
        for (producer, at, part) in parts {
            let sent = match &producer {
                Some(producer) => {
                    let sent = producer.send_batch(part).await;
                    let failed = sent.as_ref().err().map(BatchError::error);
                    self.forget_if_gone(producer, failed).await;
                    sent
                }
                None => self.main.send_batch(part).await,
            };
            match sent {
                Ok(ids) => {
                    for (i, id) in at.into_iter().zip(ids) {
                        outcomes[i] = Some(Ok(id));
                    }
                }
                Err(e) => {
                    for (i, outcome) in at.into_iter().zip(e.outcomes()) {
                        outcomes[i] = Some(match outcome {
                            Ok(id) => Ok(*id),
                            Err(e) => Err(e.clone_kind()),
                        });
                    }
                    first_error.get_or_insert(e.into_error());
                }
            }
        }
        let outcomes: Vec<Result<MessageId>> = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(Error::new(
                        crate::ErrorKind::Other,
                        "not sent: the broker did not answer for it",
                    ))
                })
            })
            .collect();
        match first_error {
            None if outcomes.iter().all(Result::is_ok) => {
                Ok(outcomes.into_iter().filter_map(Result::ok).collect())
            }
            None => {
                let error = Error::new(
                    crate::ErrorKind::Other,
                    "the broker did not answer for every message of the batch",
                );
                Err(BatchError::partial(error, outcomes))
            }
            Some(error) => Err(BatchError::partial(error, outcomes)),
        }
    }
}
