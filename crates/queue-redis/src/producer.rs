//! [`RedisProducer`]: one script call per send or batch.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use queue_core::{
    envelope, BatchError, Error, ErrorKind, Message, MessageId, Producer, QueueName, Result,
};

use crate::ctx::QueueCtx;
use crate::error::unexpected;
use crate::scripts::{array, bytes_of, int_of, invocation, ms_after, SCRIPTS};
use crate::shared::Shared;

/// Sends to one Redis queue.
#[derive(Debug)]
pub struct RedisProducer {
    ctx: Arc<QueueCtx>,
}

impl RedisProducer {
    pub(crate) async fn open(shared: Arc<Shared>, queue: &QueueName) -> Result<Self> {
        let ctx = Arc::new(QueueCtx::new(shared, queue));
        ctx.touch().await?;
        Ok(RedisProducer { ctx })
    }

    async fn push(&self, messages: &[Message]) -> Result<Vec<MessageId>> {
        let shared = &self.ctx.shared;
        let mut call = invocation(&SCRIPTS.send, &self.ctx.keys);
        // A batch with no grouped message leaves the group field out.
        let grouped = messages.iter().any(|m| m.group().is_some());
        call.arg(shared.idempotency_window.as_millis() as u64)
            .arg(messages.len())
            .arg(if grouped { 7 } else { 6 });
        let now = SystemTime::now();
        for message in messages {
            let delay = message.delay_from(now);
            let ttl: i64 = match message.expires_at {
                None => -1,
                Some(at) => at
                    .duration_since(now)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)),
            };
            call.arg(&message.id.to_bytes()[..])
                .arg(envelope::encode(message).as_ref())
                .arg(message.priority.rank())
                .arg(ms_after(delay))
                .arg(ttl)
                .arg(message.idempotency_key.as_deref().unwrap_or(""));
            if grouped {
                call.arg(message.group().unwrap_or(""));
            }
        }
        let reply = array(self.ctx.run(call, "sending").await?)?;
        let mut ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
        match reply.first().and_then(bytes_of) {
            Some(b"ok") => {
                for pair in reply[1..].chunks(2) {
                    let index = pair.first().and_then(int_of);
                    let first = pair.get(1).and_then(bytes_of);
                    match (index, first.and_then(|b| <[u8; 16]>::try_from(b).ok())) {
                        (Some(i), Some(first)) if (i as usize) < ids.len() => {
                            ids[i as usize] = MessageId::from_bytes(first);
                        }
                        _ => return Err(unexpected("deduplicated ids")),
                    }
                }
                Ok(ids)
            }
            Some(b"missing") => Err(self.ctx.missing()),
            Some(b"full") => {
                let depth = reply.get(1).and_then(int_of).unwrap_or_default();
                Err(Error::new(
                    ErrorKind::QueueFull,
                    format!(
                        "queue {:?} is full: it holds {depth} messages, at its maximum length, and {} more do not fit",
                        self.ctx.name.as_str(),
                        messages.len()
                    ),
                ))
            }
            _ => Err(unexpected("a send status")),
        }
    }
}

#[async_trait]
impl Producer for RedisProducer {
    fn queue(&self) -> &QueueName {
        &self.ctx.name
    }

    async fn send(&self, message: Message) -> Result<MessageId> {
        self.ctx.shared.capabilities.check_message(&message)?;
        let ids = self.push(std::slice::from_ref(&message)).await?;
        Ok(ids[0])
    }

    /// One script call, all or nothing: a failure is the whole batch's.
    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<MessageId>, BatchError> {
        let whole = |e| BatchError::whole(e, messages.len());
        self.ctx
            .shared
            .capabilities
            .check_batch(&messages)
            .map_err(whole)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.push(&messages).await.map_err(whole)
    }
}
