//! [`AmqpAcker`], the settle side of one delivery, and the channel calls
//! settling makes: ack (confirmed by a round trip), and the publish of a
//! copy then the ack of the original that a nack, a dead letter or an
//! expired lease is.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use lapin::options::{BasicAckOptions, BasicQosOptions};
use lapin::{BasicProperties, Channel};
use queue_core::stats::Counter;
use queue_core::{Acker, DeadLetterReason, Error, ErrorKind, Message, Nacked, Result};

use super::state::{lease_lost, Buffered, ConsumerState, Lease};
use crate::link::Outgoing;
use crate::wire;

/// The settle side of one delivery.
#[derive(Debug)]
pub(crate) struct AmqpAcker {
    pub(super) state: Arc<ConsumerState>,
    pub(super) session: u64,
    pub(super) tag: u64,
}

impl ConsumerState {
    pub(super) async fn ack_tag(&self, channel: &Channel, tag: u64, multiple: bool) -> Result<()> {
        let link = &self.shared.link;
        link.call("acking", channel.basic_ack(tag, BasicAckOptions { multiple }))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::LeaseLost,
                    format!(
                        "queue {:?}: the ack did not reach the broker ({}); the message will be handed out again",
                        self.queue,
                        e.message()
                    ),
                )
            })
    }

    /// Wait until the broker processed what this channel sent before (its
    /// acks): a round trip on the same channel (`basic.qos`, answered in
    /// order). An ack is a frame without a reply; after this one a cut
    /// connection no longer hands the acked messages out again.
    pub(super) async fn sync(&self, channel: &Channel) -> Result<()> {
        let prefetch = self.shared.settings().prefetch;
        self.shared
            .link
            .call(
                "confirming acks",
                channel.basic_qos(prefetch, BasicQosOptions::default()),
            )
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::LeaseLost,
                    format!(
                        "queue {:?}: the broker did not confirm the acks ({}); the messages may be handed out again",
                        self.queue,
                        e.message()
                    ),
                )
            })
    }

    /// Put `copy` on the broker (confirmed), then ack the original `tag`:
    /// the message is never lost; a crash in between delivers it twice.
    pub(super) async fn replace(
        &self,
        channel: &Channel,
        session: u64,
        tag: u64,
        lease: Lease,
        copy: Vec<Outgoing>,
    ) -> Result<()> {
        if let Err(e) = self.shared.link.publish(&copy).await {
            self.restore(session, tag, lease);
            return Err(e.error);
        }
        let mut acked = self.ack_tag(channel, tag, false).await;
        if acked.is_ok() {
            acked = self.sync(channel).await;
        }
        self.finish(tag);
        if let Err(e) = acked {
            // The copy is stored; the original comes back once more.
            tracing::warn!(queue = %self.queue, error = %e, "the original of a re-queued message was not acked: it will be delivered twice");
        }
        Ok(())
    }

    /// What a nack of `message` publishes ([`Message::nacked`]): the copy
    /// that retries it after `delay`, or its dead letter when this was its
    /// last attempt (then `true`).
    pub(super) async fn nacked(
        &self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<(Vec<Outgoing>, bool)> {
        match message.nacked(delay, last_error, SystemTime::now()) {
            Nacked::Retry(copy) => {
                let outgoing = self
                    .shared
                    .prepare(&self.queue, std::slice::from_ref(&copy))
                    .await?;
                Ok((outgoing, false))
            }
            Nacked::DeadLetter(last) => {
                let reason = DeadLetterReason::MaxAttempts;
                let letter = wire::dead_letter(&self.queue, &last, &reason, last.attempt);
                Ok((vec![letter], true))
            }
        }
    }

    /// Count a nack (or an expired lease) that went through: a retry, and
    /// a dead letter too when it was the last attempt.
    pub(super) fn count_nack(&self, dead: bool) {
        self.count(Counter::Retried);
        if dead {
            self.count(Counter::DeadLettered);
        }
    }

    /// Drop the buffered deliveries (a purge): acked, so the broker
    /// forgets them. Returns how many.
    pub(crate) async fn purge_buffer(&self) -> u64 {
        let (channel, tags) = {
            let mut inner = self.lock();
            let Some(channel) = inner.channel.clone() else {
                return 0;
            };
            let tags: Vec<u64> = inner.buffer.drain(..).map(|b| b.tag).collect();
            for tag in &tags {
                inner.settling.insert(*tag);
            }
            (channel, tags)
        };
        let mut purged = 0;
        for tag in tags {
            if self.ack_tag(&channel, tag, false).await.is_ok() {
                purged += 1;
            }
            self.finish(tag);
        }
        purged
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self, _message: &Message) -> Result<()> {
        let (channel, lease) = self.state.take(self.session, self.tag)?;
        let mut acked = self.state.ack_tag(&channel, self.tag, false).await;
        if acked.is_ok() {
            acked = self.state.sync(&channel).await;
        }
        self.state.finish(self.tag);
        drop(lease);
        acked?;
        self.state.count(Counter::Acked);
        Ok(())
    }

    async fn nack(
        &self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<()> {
        let (channel, lease) = self.state.take(self.session, self.tag)?;
        let (copy, dead) = match self.state.nacked(message, delay, last_error).await {
            Ok(nacked) => nacked,
            Err(e) => {
                self.state.restore(self.session, self.tag, lease);
                return Err(e);
            }
        };
        self.state
            .replace(&channel, self.session, self.tag, lease, copy)
            .await?;
        self.state.count_nack(dead);
        Ok(())
    }

    async fn extend(&mut self, _message: &Message, lease: Duration) -> Result<SystemTime> {
        let state = &self.state;
        let lease = state.shared.capabilities.check_lease(lease)?;
        let mut inner = state.lock();
        let live = inner.session == self.session && inner.channel.is_some();
        let now = Instant::now();
        let timeout = state.shared.settings().consumer_timeout;
        match inner.leases.get_mut(&self.tag) {
            Some(held) if live && held.deadline > now => {
                let limit = held.arrived + timeout;
                if now + lease > limit {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "lease: extending by {lease:?} goes past the broker's consumer timeout of {timeout:?} for this delivery (it has {:?} left); raise consumer_timeout on the broker and in the URL",
                            limit.saturating_duration_since(now)
                        ),
                    ));
                }
                held.deadline = now + lease;
                drop(inner);
                state.wake.notify_one();
                Ok(SystemTime::now() + lease)
            }
            _ => Err(lease_lost(
                &state.queue,
                "its lease ran out or its channel closed",
            )),
        }
    }

    async fn dead_letter(&self, message: &Message, reason: &DeadLetterReason) -> Result<()> {
        let (channel, lease) = self.state.take(self.session, self.tag)?;
        let copy = vec![wire::dead_letter(
            &self.state.queue,
            message,
            reason,
            message.attempt,
        )];
        self.state
            .replace(&channel, self.session, self.tag, lease, copy)
            .await?;
        self.state.count(Counter::DeadLettered);
        Ok(())
    }

    /// The delivery goes back to the head of this consumer's buffer, still
    /// unacked on the channel: no broker call, no attempt, no redelivery
    /// count (quorum queues count a requeue as a delivery). It is handed
    /// out next; if the consumer closes first, the broker hands it out
    /// again with the others this consumer held.
    async fn release(&self, message: &Message) -> Result<()> {
        let state = &self.state;
        let (_channel, lease) = state.take(self.session, self.tag)?;
        let mut inner = state.lock();
        inner.settling.remove(&self.tag);
        if inner.session != self.session {
            return Err(lease_lost(&state.queue, "the channel it came on closed"));
        }
        inner.buffer.push_front(Buffered {
            tag: self.tag,
            body: queue_core::envelope::encode(message).to_vec(),
            properties: BasicProperties::default(),
            arrived: lease.arrived,
        });
        drop(inner);
        state.arrived.notify_waiters();
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
