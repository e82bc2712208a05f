//! [`KafkaConsumer`] and the settling of its deliveries.
//!
//! Every consumer of one queue in a backend shares the queue's group
//! member (`member.rs`). An ack settles the record's offset; the rest
//! produce first and settle after the broker took the copy, so a crash in
//! between delivers twice, never zero times:
//!
//! - `nack`: a copy with `attempt + 1` and the error goes to the queue's
//!   topic (no delay) or to the retry tier for the delay;
//! - `dead_letter` and a nack of the last attempt: a copy to `<topic>.dlq`
//!   with why, how many attempts and when in its headers;
//! - `release`: the record is buffered again locally with the same attempt;
//! - `extend`: the local lease deadline moves (Kafka has no lease).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use queue_core::stats::Counter;
use queue_core::{
    Acker, Consumer, DeadLetterReason, Delivery, Error, ErrorKind, Message, Nacked, QueueName,
    Result, StopFlag,
};

use crate::member::{Lease, Member, Pending};
use crate::shared::Shared;
use crate::wire;

/// Receives from one queue through the backend's shared group member.
#[derive(Debug)]
pub struct KafkaConsumer {
    shared: Arc<Shared>,
    queue: QueueName,
    member: Arc<Member>,
    lease: Duration,
    /// Set by [`Consumer::stop_waiting`]: a wait ends at once.
    stop: StopFlag,
}

impl KafkaConsumer {
    pub(crate) async fn open(
        shared: Arc<Shared>,
        queue: &QueueName,
        lease: Option<Duration>,
    ) -> Result<Self> {
        shared.check_open()?;
        shared.ensure_topics(&shared.topics_of(queue)).await?;
        let member = shared.member(queue)?;
        crate::mover::ensure(&shared, queue)?;
        // The first consumer of the queue in this backend waits for the
        // group join (a few seconds), so its first receive finds records;
        // a member that holds no partition (others hold them all) still
        // opens, after at most the request timeout.
        member.joined(shared.settings.timeouts().1).await;
        let lease = lease.unwrap_or(shared.settings.timeouts().0);
        Ok(KafkaConsumer {
            shared,
            queue: queue.clone(),
            member,
            lease,
            stop: StopFlag::default(),
        })
    }

    fn acker(&self, lease: Lease) -> KafkaAcker {
        KafkaAcker {
            shared: self.shared.clone(),
            queue: self.queue.clone(),
            member: self.member.clone(),
            lease,
        }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// The wait is on the member's local buffer: it ends at once.
    fn stop_waiting(&self) {
        self.stop.stop();
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.shared.check_open()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let until = tokio::time::Instant::now() + wait;
        loop {
            let left = match self.stop.is_stopped() {
                true => Duration::ZERO,
                false => until.saturating_duration_since(tokio::time::Instant::now()),
            };
            // Taking from the member's buffer is synchronous: a take cut
            // short by a stop has taken nothing. It goes first, so a
            // stopped consumer still looks once.
            let taken = tokio::select! {
                biased;
                taken = self.member.take(max, left, self.lease) => taken,
                () = self.stop.stopped() => Vec::new(),
            };
            if taken.is_empty() {
                if let Some(quiet) = self.member.silent() {
                    return Err(Error::new(
                        ErrorKind::Connection,
                        format!(
                            "the Kafka broker has sent nothing for {:.1} s on any connection of queue {}'s consumer (the client keeps reconnecting)",
                            quiet.as_secs_f64(),
                            self.queue
                        ),
                    ));
                }
                return Ok(Vec::new());
            }
            let now = SystemTime::now();
            let mut deliveries = Vec::with_capacity(taken.len());
            for (lease, pending) in taken {
                let acker = self.acker(lease);
                match divert(&pending, now) {
                    None => {
                        let deadline = now + self.lease;
                        deliveries.push(Delivery::new(
                            self.queue.clone(),
                            pending.message,
                            deadline,
                            Box::new(acker),
                        ));
                    }
                    Some(Divert::Later) => {
                        if let Err(e) = acker.forward(&pending.message).await {
                            tracing::warn!(queue = %self.queue, error = %e, "could not move a message that is not due yet to its retry tier");
                        }
                    }
                    Some(Divert::Dead(reason)) => {
                        if let Some(error) = &pending.undecodable {
                            tracing::warn!(queue = %self.queue, %error, "undecodable bytes on the queue: dead-lettered");
                        }
                        let attempts = match reason {
                            DeadLetterReason::Expired => pending.message.attempt.saturating_sub(1),
                            _ => pending.message.attempt,
                        };
                        if reason == DeadLetterReason::Expired {
                            acker.count(Counter::Expired);
                        }
                        if let Err(e) = acker.bury(&pending.message, &reason, attempts).await {
                            tracing::warn!(queue = %self.queue, error = %e, "could not dead-letter a message");
                        }
                    }
                }
            }
            if !deliveries.is_empty()
                || tokio::time::Instant::now() >= until
                || self.stop.is_stopped()
            {
                return Ok(deliveries);
            }
        }
    }
}

/// Why a fetched record is not handed to the consumer.
enum Divert {
    /// Not due yet (another producer's delayed send): to its retry tier.
    Later,
    /// To the dead letters.
    Dead(DeadLetterReason),
}

fn divert(pending: &Pending, now: SystemTime) -> Option<Divert> {
    if pending.undecodable.is_some() {
        return Some(Divert::Dead(DeadLetterReason::Decode));
    }
    if pending.message.is_expired_at(now) {
        return Some(Divert::Dead(DeadLetterReason::Expired));
    }
    if !pending.message.delay_from(now).is_zero() {
        return Some(Divert::Later);
    }
    None
}

/// The Kafka side of one delivery.
#[derive(Debug)]
pub(crate) struct KafkaAcker {
    shared: Arc<Shared>,
    queue: QueueName,
    member: Arc<Member>,
    lease: Lease,
}

impl KafkaAcker {
    /// Count one more of `counter` in this process's totals of the queue.
    fn count(&self, counter: Counter) {
        self.shared.counters(&self.queue).add(counter, 1);
    }

    /// Fail with `LeaseLost` before producing anything if the lease is gone.
    fn check(&self) -> Result<()> {
        self.member.check(&self.lease)
    }

    /// Send `message` where it is due (its topic, or the retry tier for
    /// what remains), then settle the original.
    async fn forward(&self, message: &Message) -> Result<()> {
        self.check()?;
        self.shared.send(&self.queue, message).await?;
        self.member.settle(&self.lease)
    }

    /// Send `message` to the dead letters, then settle the original.
    async fn bury(
        &self,
        message: &Message,
        reason: &DeadLetterReason,
        attempts: u32,
    ) -> Result<()> {
        self.check()?;
        let headers = wire::dead_letter_headers(reason, attempts);
        self.shared
            .produce(&wire::dlq(&self.queue), message, Some(headers))
            .await?;
        self.member.settle(&self.lease)?;
        self.count(Counter::DeadLettered);
        Ok(())
    }
}

#[async_trait]
impl Acker for KafkaAcker {
    async fn ack(&self, _message: &Message) -> Result<()> {
        self.member.settle(&self.lease)?;
        self.count(Counter::Acked);
        Ok(())
    }

    async fn nack(
        &self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<()> {
        match message.nacked(delay, last_error, SystemTime::now()) {
            Nacked::DeadLetter(last) => {
                self.bury(&last, &DeadLetterReason::MaxAttempts, last.attempt)
                    .await?;
            }
            Nacked::Retry(copy) => self.forward(&copy).await?,
        }
        self.count(Counter::Retried);
        Ok(())
    }

    async fn extend(&mut self, _message: &Message, lease: Duration) -> Result<SystemTime> {
        self.member.extend(&self.lease, lease)
    }

    async fn dead_letter(&self, message: &Message, reason: &DeadLetterReason) -> Result<()> {
        self.bury(message, reason, message.attempt).await
    }

    async fn release(&self, message: &Message) -> Result<()> {
        self.member.put_back(&self.lease, message.clone())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
