//! [`SqsConsumer`]: receives with long polling, and settles through the
//! batcher, checking the local lease deadline before any request.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use futures_util::future::join_all;
use queue_core::stats::Counter;
use queue_core::traits::{ack_each, split_own};
use queue_core::{
    Acker, Consumer, DeadLetterReason, Delivery, DeliveryError, Error, ErrorKind, Message, Nacked,
    QueueName, Result, StopFlag,
};

use crate::batcher::{self, Op};
use crate::client::QueueUrls;
use crate::config::QueueType;
use crate::error::classify;
use crate::shared::Shared;
use crate::wire::{self, Incoming};
use crate::{MAX_VISIBILITY, MAX_WAIT, SQS_BATCH};

/// How long before a long poll's reply arrived SQS may have handed its
/// messages out.
const ARRIVAL_MARGIN: Duration = Duration::from_millis(200);

/// Receives from one SQS queue.
#[derive(Debug, Clone)]
pub struct SqsConsumer {
    shared: Arc<Shared>,
    queue: QueueName,
    urls: QueueUrls,
    lease: Duration,
    /// Set by [`Consumer::stop_waiting`]: a wait ends at once.
    stop: Arc<StopFlag>,
}

impl SqsConsumer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        queue: QueueName,
        urls: QueueUrls,
        lease: Duration,
    ) -> SqsConsumer {
        SqsConsumer {
            shared,
            queue,
            urls,
            lease,
            stop: Arc::default(),
        }
    }

    /// [`fetch`](SqsConsumer::fetch), unless the consumer stops waiting
    /// first. SQS cannot cancel a long poll: a request dropped while it
    /// waits may still take messages out of sight for their visibility
    /// timeout (and count a receive, so an attempt). So the poll runs in a
    /// task of its own, which, when the caller stopped waiting and went,
    /// finishes it and hands back whatever it brings (a release: a copy
    /// with the same attempt). Only a process that exits before that poll
    /// ends leaves such messages to their visibility timeout.
    async fn fetch_unless_stopped(&self, max: usize, wait_secs: u64) -> Result<Vec<Delivery>> {
        if wait_secs == 0 || self.stop.is_stopped() {
            return self.fetch(max, 0).await;
        }
        let (reply, mut fetched) = tokio::sync::oneshot::channel();
        let poll = self.clone();
        tokio::spawn(async move {
            let result = poll.fetch(max, wait_secs).await;
            if let Err(Ok(unwanted)) = reply.send(result) {
                release_unwanted(unwanted).await;
            }
        });
        tokio::select! {
            result = &mut fetched => result.unwrap_or_else(|_| {
                Err(Error::new(ErrorKind::Other, format!("receiving from {}: the poll task failed", self.queue)))
            }),
            () = self.stop.stopped() => {
                // Closed first: the poll either finished already (its
                // deliveries are here) or hands back what it brings.
                fetched.close();
                fetched.try_recv().unwrap_or(Ok(Vec::new()))
            }
        }
    }

    /// One `ReceiveMessage` of up to `max`, waiting up to `wait_secs`;
    /// what it returns is sorted into deliveries and messages the backend
    /// settles itself (early arrivals hop on, undecodable, expired and
    /// exhausted ones are dead-lettered).
    async fn fetch(&self, max: usize, wait_secs: u64) -> Result<Vec<Delivery>> {
        let visibility = wire::whole_seconds(self.lease);
        let started = SystemTime::now();
        let epoch = self.shared.purge_epoch(&self.queue);
        let wait = Duration::from_secs(wait_secs);
        let received = self
            .shared
            .sqs
            .client
            .receive_message()
            .queue_url(&*self.urls.main)
            .max_number_of_messages(max.clamp(1, SQS_BATCH) as i32)
            .wait_time_seconds(wait_secs as i32)
            .visibility_timeout(visibility as i32)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(
                MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
            )
            .customize()
            .config_override(self.shared.sqs.receive_timeouts(wait))
            .send()
            .await
            .map_err(|e| {
                classify(
                    e,
                    &format!("receiving from {}", self.queue),
                    self.shared.address(),
                )
            })?;
        // SQS starts the visibility timeout when it hands a message out:
        // after the request started, and up to the reply's arrival when a
        // long poll waited for it. The local deadline is the earlier of
        // the two, less a margin for the reply's trip.
        let now = SystemTime::now();
        let lease = Duration::from_secs(visibility);
        let deadline = (started + lease).max(now + lease - ARRIVAL_MARGIN.min(lease / 4));
        let mut deliveries = Vec::new();
        let mut chores = Vec::new();
        for incoming in received.messages().iter().filter_map(wire::decode) {
            let acker = SqsAcker {
                shared: self.shared.clone(),
                queue: self.queue.clone(),
                urls: self.urls.clone(),
                receipt: Arc::from(incoming.receipt.as_str()),
                deadline,
                received_at: started,
                epoch,
            };
            match Chore::of(incoming, now, self.shared.settings().queue_type) {
                Ok(message) => deliveries.push(Delivery::new(
                    self.queue.clone(),
                    message,
                    deadline,
                    Box::new(acker),
                )),
                Err(chore) => chores.push(chore.run(acker)),
            }
        }
        for result in join_all(chores).await {
            if let Err(e) = result {
                // The message stays and comes back after its lease.
                tracing::warn!(queue = %self.queue, error = %e, "settling a message the consumer does not hand out failed");
            }
        }
        Ok(deliveries)
    }
}

/// Hand back deliveries of a poll nobody waits for any more.
async fn release_unwanted(deliveries: Vec<Delivery>) {
    for result in join_all(deliveries.into_iter().map(Delivery::release)).await {
        if let Err(e) = result {
            tracing::warn!(job_id = %e.delivery.message().id, error = %e.error, "could not hand back a message received after the consumer stopped; it returns after its visibility timeout");
        }
    }
}

/// What the consumer does itself with a message it does not hand out.
enum Chore {
    /// Its metadata does not decode: dead-letter it with reason `decode`.
    Undecodable(Message, u32),
    /// Its TTL passed before pickup.
    Expired(Message),
    /// Its leases ran out more often than `max_attempts` allows.
    Exhausted(Message),
    /// It arrived before its due time (a delay past the native limit):
    /// send it on with the rest of its delay.
    Early(Message),
    /// It arrived before its due time on a FIFO queue, which takes no
    /// per-message delay (a nack copy with a delay): hold it invisible
    /// for the rest of its delay.
    Hold(Duration),
}

impl Chore {
    /// The message to hand out, with its attempt counted from the
    /// metadata and SQS's receive count, or the chore it needs.
    fn of(
        incoming: Incoming,
        now: SystemTime,
        queue_type: QueueType,
    ) -> std::result::Result<Message, Box<Chore>> {
        let Incoming {
            mut message,
            undecodable,
            receive_count,
            first_received_at,
            ..
        } = incoming;
        if undecodable.is_some() {
            return Err(Box::new(Chore::Undecodable(message, receive_count)));
        }
        if let Some(due) = message.not_before.filter(|&at| at > now) {
            return Err(Box::new(match queue_type {
                QueueType::Standard => Chore::Early(message),
                QueueType::Fifo => Chore::Hold(due.duration_since(now).unwrap_or_default()),
            }));
        }
        // Each SQS message starts at receive count 1; copies (nacks with
        // an error, hops) carry their attempt in the metadata. A FIFO
        // copy first received before its due time was held, not
        // attempted: that receive does not count.
        let held = match (queue_type, message.not_before, first_received_at) {
            (QueueType::Fifo, Some(due), Some(first)) if first < due => 1,
            _ => 0,
        };
        let receives = receive_count.saturating_sub(held).max(1);
        message.attempt = message.attempt.saturating_add(receives - 1);
        if message.is_expired_at(now) {
            return Err(Box::new(Chore::Expired(message)));
        }
        if message.attempt > message.max_attempts {
            message.attempt = message.max_attempts;
            return Err(Box::new(Chore::Exhausted(message)));
        }
        Ok(message)
    }

    async fn run(self: Box<Self>, acker: SqsAcker) -> Result<()> {
        match *self {
            Chore::Undecodable(message, attempts) => {
                acker
                    .bury(&message, &DeadLetterReason::Decode, attempts)
                    .await
            }
            Chore::Expired(message) => {
                acker.bury(&message, &DeadLetterReason::Expired, 0).await?;
                acker.count(Counter::Expired);
                Ok(())
            }
            Chore::Exhausted(message) => {
                let attempts = message.attempt;
                acker
                    .bury(&message, &DeadLetterReason::MaxAttempts, attempts)
                    .await
            }
            Chore::Early(message) => acker.replace(&acker.urls.main.clone(), &message).await,
            Chore::Hold(rest) => acker.set_visibility(rest.min(MAX_VISIBILITY)).await,
        }
    }
}

#[async_trait]
impl Consumer for SqsConsumer {
    fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// A long poll in flight is left to a task that hands back what it
    /// brings (see `fetch_unless_stopped`); the receive returns at once.
    fn stop_waiting(&self) {
        self.stop.stop();
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.shared.check_open()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let until = Instant::now() + wait;
        let mut slept = false;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let got = self
                .fetch_unless_stopped(max, left.as_secs().min(MAX_WAIT.as_secs()))
                .await?;
            if !got.is_empty() {
                return Ok(got);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stop.is_stopped() {
                return Ok(got);
            }
            if left < Duration::from_secs(1) {
                // SQS waits in whole seconds: sleep the fraction, then one
                // last look without waiting.
                if slept {
                    return Ok(got);
                }
                tokio::select! {
                    () = tokio::time::sleep(left) => {}
                    () = self.stop.stopped() => return Ok(got),
                }
                slept = true;
            }
        }
    }

    async fn ack_batch(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<DeliveryError>> {
        let (ours, foreign) = split_own::<SqsAcker, _>(deliveries, |a| Some(a.clone()));
        let mut failed = Vec::new();
        let mut pending = Vec::new();
        for (acker, delivery) in ours {
            match acker.check_lease(delivery.message()) {
                Ok(()) => pending.push((acker, delivery)),
                Err(e) => failed.push(DeliveryError::new(e, delivery)),
            }
        }
        // Group by queue: deliveries of one consumer share one.
        let mut by_queue: Vec<(Arc<str>, Vec<(SqsAcker, Delivery)>)> = Vec::new();
        for (acker, delivery) in pending {
            match by_queue.iter_mut().find(|(url, _)| *url == acker.urls.main) {
                Some((_, group)) => group.push((acker, delivery)),
                None => by_queue.push((acker.urls.main.clone(), vec![(acker, delivery)])),
            }
        }
        for (url, group) in by_queue {
            // Full tens go out at once; the rest joins the batcher, where
            // other lanes' acks fill the call up to ten.
            let full = group.len() / SQS_BATCH * SQS_BATCH;
            let ops = group[..full]
                .iter()
                .map(|(a, _)| Op::Delete(a.receipt.to_string()))
                .collect();
            let rest = group[full..].iter().map(|(a, _)| a.delete());
            let (mut results, rest) =
                tokio::join!(batcher::run(&self.shared.sqs, &url, ops), join_all(rest));
            results.extend(rest);
            for ((acker, delivery), result) in group.into_iter().zip(results) {
                match result {
                    Ok(()) => acker.count(Counter::Acked),
                    Err(e) => failed.push(DeliveryError::new(e, delivery)),
                }
            }
        }
        ack_each(foreign, failed).await
    }
}

/// The SQS side of one delivery: its receipt handle and lease.
#[derive(Debug, Clone)]
pub(crate) struct SqsAcker {
    shared: Arc<Shared>,
    queue: QueueName,
    urls: QueueUrls,
    receipt: Arc<str>,
    /// The local lease deadline, counted from before the receive request:
    /// never later than SQS's own.
    deadline: SystemTime,
    received_at: SystemTime,
    /// This process's purge count of the queue when it was received.
    epoch: u64,
}

impl SqsAcker {
    /// Count one more of `counter` in this process's totals of the queue.
    fn count(&self, counter: Counter) {
        self.shared.counters(&self.queue).add(counter, 1);
    }

    /// `LeaseLost` without a request when the lease ran out (or a purge
    /// by this process took the message).
    fn check_lease(&self, message: &Message) -> Result<()> {
        self.shared.check_open()?;
        if SystemTime::now() >= self.deadline || self.shared.purge_epoch(&self.queue) != self.epoch
        {
            return Err(Error::lease_lost(message.id));
        }
        Ok(())
    }

    async fn delete(&self) -> Result<()> {
        self.shared
            .batcher
            .submit(&self.urls.main, Op::Delete(self.receipt.to_string()))
            .await
    }

    /// Send `message` to `url` as a new SQS message, then delete this one:
    /// a crash in between leaves both (a duplicate), never neither.
    async fn replace(&self, url: &Arc<str>, message: &Message) -> Result<()> {
        let out = self.shared.outgoing_copy(message)?;
        self.shared
            .batcher
            .submit(url, Op::Send(Box::new(out)))
            .await?;
        self.delete().await
    }

    /// Dead-letter `message` with `reason` after `attempts`.
    async fn bury(
        &self,
        message: &Message,
        reason: &DeadLetterReason,
        attempts: u32,
    ) -> Result<()> {
        let mut out = self.shared.outgoing_copy(message)?;
        // A dead letter is never delayed.
        out.delay_seconds = 0;
        let out = out.dead(reason, attempts);
        self.shared
            .batcher
            .submit(&self.urls.dlq, Op::Send(Box::new(out)))
            .await?;
        self.delete().await?;
        self.count(Counter::DeadLettered);
        Ok(())
    }

    async fn set_visibility(&self, timeout: Duration) -> Result<()> {
        let secs = i32::try_from(wire::whole_seconds(timeout)).unwrap_or(i32::MAX);
        self.shared
            .batcher
            .submit(
                &self.urls.main,
                Op::Visibility(self.receipt.to_string(), secs),
            )
            .await
    }
}

#[async_trait]
impl Acker for SqsAcker {
    async fn ack(&self, message: &Message) -> Result<()> {
        self.check_lease(message)?;
        self.delete().await?;
        self.count(Counter::Acked);
        Ok(())
    }

    async fn nack(
        &self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<()> {
        self.check_lease(message)?;
        let now = SystemTime::now();
        match message.nacked(delay, last_error, now) {
            Nacked::DeadLetter(last) => {
                self.bury(&last, &DeadLetterReason::MaxAttempts, last.attempt)
                    .await?;
            }
            Nacked::Retry(copy) => {
                // The delay as the rule holds it (at most the maximum).
                let delay = copy.delay_from(now);
                let held = now.duration_since(self.received_at).unwrap_or_default();
                if last_error.is_none() && held + delay < MAX_VISIBILITY {
                    // The same SQS message comes back: its receive count
                    // is the next attempt.
                    self.set_visibility(delay).await?;
                } else {
                    self.replace(&self.urls.main.clone(), &copy).await?;
                }
            }
        }
        self.count(Counter::Retried);
        Ok(())
    }

    async fn extend(&mut self, message: &Message, lease: Duration) -> Result<SystemTime> {
        self.check_lease(message)?;
        let started = SystemTime::now();
        let held = started.duration_since(self.received_at).unwrap_or_default();
        let lease = Duration::from_secs(wire::whole_seconds(lease));
        if held + lease > MAX_VISIBILITY {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "message {}: SQS keeps a message invisible for at most 12h from its receipt; it was received {}s ago",
                    message.id,
                    held.as_secs()
                ),
            ));
        }
        self.set_visibility(lease).await?;
        self.deadline = started + lease;
        Ok(self.deadline)
    }

    async fn dead_letter(&self, message: &Message, reason: &DeadLetterReason) -> Result<()> {
        self.check_lease(message)?;
        self.bury(message, reason, message.attempt).await
    }

    async fn release(&self, message: &Message) -> Result<()> {
        self.check_lease(message)?;
        // A visibility change would count a receive; a copy keeps the attempt.
        self.replace(&self.urls.main.clone(), message).await
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
