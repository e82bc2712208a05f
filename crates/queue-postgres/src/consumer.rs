//! [`PostgresConsumer`]: claims ready jobs with `FOR UPDATE SKIP LOCKED`
//! in one function call, waits for `NOTIFY` instead of polling, and
//! settles deliveries ([`PostgresAcker`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use queue_core::error::cap_error_text;
use queue_core::traits::{ack_each, split_own, AckAndReceive};
use queue_core::{
    envelope, Acker, Consumer, ConsumerOptions, DeadLetterReason, Delivery, DeliveryError, Error,
    Message, MessageId, QueueName, Result, StopFlag,
};
use sqlx::Row as _;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::ctx::QueueCtx;
use crate::shared::{Shared, SAFETY_POLL};

/// Receives from one PostgreSQL queue.
#[derive(Debug)]
pub struct PostgresConsumer {
    ctx: Arc<QueueCtx>,
    lease: Duration,
    /// The most jobs of one group this consumer's queue has leased at
    /// once (0: no limit).
    group_limit: i32,
    /// Woken by the backend's listener when jobs of this queue arrive.
    notify: Arc<Notify>,
    stop: StopFlag,
}

/// What one call of `claim` gave.
#[derive(Default)]
struct Claim {
    jobs: Vec<Claimed>,
    /// The acks that landed, as (row, token).
    acked: std::collections::HashSet<(i64, i64)>,
    /// When nothing was claimed: when something falls due (ms).
    next: Option<i64>,
}

/// One claimed row.
struct Claimed {
    seq: i64,
    id: uuid::Uuid,
    token: i64,
    attempt: i64,
    last_error: Option<String>,
    expires_ms: Option<i64>,
    lease_until_ms: i64,
    body: Vec<u8>,
}

pub(crate) fn time_of_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl PostgresConsumer {
    pub(crate) async fn open(
        shared: Arc<Shared>,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Self> {
        let lease = shared
            .capabilities
            .check_lease(options.lease.unwrap_or(shared.lease))?;
        let ctx = Arc::new(QueueCtx::new(shared.clone(), queue));
        ctx.touch().await?;
        let notify = shared.waker(queue).await?;
        Ok(PostgresConsumer {
            ctx,
            lease,
            group_limit: options
                .group_limit
                .map_or(0, |limit| i32::try_from(limit).unwrap_or(i32::MAX)),
            notify,
            stop: StopFlag::default(),
        })
    }

    /// One call of the schema's `claim`: ack `acks` (row, token), then
    /// claim up to `max` rows.
    async fn claim(&self, max: usize, acks: &[(i64, i64)]) -> Result<Claim> {
        let shared = &self.ctx.shared;
        let seqs: Vec<i64> = acks.iter().map(|(seq, _)| *seq).collect();
        let tokens: Vec<i64> = acks.iter().map(|(_, token)| *token).collect();
        let mut conn = shared
            .pool
            .acquire()
            .await
            .map_err(|e| self.ctx.error(e, "claiming"))?;
        let call = sqlx::query(&shared.sql.claim)
            .bind(self.ctx.name.as_str())
            .bind(i32::try_from(max).unwrap_or(i32::MAX))
            .bind(i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 4))
            .bind(&seqs)
            .bind(&tokens)
            .bind(self.group_limit)
            .fetch_all(&mut *conn);
        let rows = shared
            .bounded(call, "claiming")
            .await?
            .map_err(|e| self.ctx.error(e, "claiming"))?;
        let decode = |e| self.ctx.error(e, "reading claimed jobs");
        let mut claim = Claim::default();
        for row in rows {
            let kind: i16 = row.try_get(0).map_err(decode)?;
            match kind {
                0 => claim.jobs.push(Claimed {
                    seq: row.try_get(1).map_err(decode)?,
                    id: row.try_get(2).map_err(decode)?,
                    token: row.try_get(3).map_err(decode)?,
                    attempt: row.try_get(4).map_err(decode)?,
                    last_error: row.try_get(5).map_err(decode)?,
                    expires_ms: row.try_get(6).map_err(decode)?,
                    lease_until_ms: row.try_get(7).map_err(decode)?,
                    body: row.try_get(8).map_err(decode)?,
                }),
                1 => {
                    claim.acked.insert((
                        row.try_get(1).map_err(decode)?,
                        row.try_get(3).map_err(decode)?,
                    ));
                }
                _ => claim.next = row.try_get(9).map_err(decode)?,
            }
        }
        Ok(claim)
    }

    /// Ack `acks` with the first claim, then receive as
    /// [`Consumer::receive`] does.
    async fn ack_then_receive(
        &self,
        acks: Vec<((i64, i64), Delivery)>,
        max: usize,
        wait: Duration,
    ) -> (Vec<DeliveryError>, Result<Vec<Delivery>>) {
        let give_up_at = Instant::now() + wait;
        let mut pending: Vec<(i64, i64)> = acks.iter().map(|(key, _)| *key).collect();
        let mut acks = Some(acks);
        let mut failed = Vec::new();
        loop {
            // Registered before the claim, so a job committed between the
            // claim and the wait still wakes this one.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let claimed = match self.ctx.shared.check_open() {
                Ok(()) => self.claim(max, &pending).await,
                Err(e) => Err(e),
            };
            let claim = match claimed {
                Ok(claim) => claim,
                Err(e) => {
                    for (_, delivery) in acks.take().unwrap_or_default() {
                        failed.push(DeliveryError::new(e.clone_kind(), delivery));
                    }
                    return (failed, Err(e));
                }
            };
            // The acks are settled: later rounds carry none.
            pending.clear();
            for (key, delivery) in acks.take().unwrap_or_default() {
                if !claim.acked.contains(&key) {
                    let error = Error::lease_lost(delivery.message().id);
                    failed.push(DeliveryError::new(error, delivery));
                }
            }
            let any = !claim.jobs.is_empty();
            let batch = self.deliver(claim.jobs).await;
            let now = Instant::now();
            if !batch.is_empty() || now >= give_up_at || self.stop.is_stopped() {
                return (failed, Ok(batch));
            }
            if any {
                // Everything claimed was undecodable: look again at once.
                continue;
            }
            let mut wake_at = give_up_at.min(now + SAFETY_POLL);
            if let Some(ms) = claim.next {
                wake_at = wake_at.min(instant_in_ms(ms));
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
                () = self.stop.stopped() => {}
            }
        }
    }

    /// The deliveries of claimed rows; a row whose body is an envelope
    /// that does not decode is dead-lettered (reason `decode`) instead.
    async fn deliver(&self, claimed: Vec<Claimed>) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(claimed.len());
        for row in claimed {
            let acker = PostgresAcker {
                ctx: self.ctx.clone(),
                seq: row.seq,
                token: row.token,
            };
            match message_of(&row) {
                // Past its TTL (beyond what the claim's sweep took):
                // dead-lettered, not delivered. A filter in the claim's
                // query instead costs every claim a worse plan.
                Ok(message) if message.is_expired_at(SystemTime::now()) => {
                    let attempts = message.attempt.saturating_sub(1);
                    if let Err(e) = acker.bury(&DeadLetterReason::Expired, attempts, None).await {
                        tracing::warn!(queue = %self.ctx.name, error = %e, "expired job not dead-lettered yet");
                    }
                }
                Ok(message) => out.push(Delivery::new(
                    self.ctx.name.clone(),
                    message,
                    time_of_ms(row.lease_until_ms),
                    Box::new(acker),
                )),
                Err(e) => {
                    let attempts = u32::try_from(row.attempt.saturating_sub(1)).unwrap_or(u32::MAX);
                    match acker
                        .bury(&DeadLetterReason::Decode, attempts, Some(e.message()))
                        .await
                    {
                        Ok(_) => {
                            tracing::warn!(queue = %self.ctx.name, error = %e, "undecodable job dead-lettered");
                        }
                        // It stays leased and comes back when its lease runs
                        // out; the rest of the batch is delivered.
                        Err(bury) => {
                            tracing::warn!(queue = %self.ctx.name, error = %e, bury = %bury, "undecodable job not dead-lettered yet");
                        }
                    }
                }
            }
        }
        out
    }
}

/// The message of a claimed row: its envelope (or, for bytes that are not
/// one, a message with them as payload), with what the row says about its
/// attempts and expiry.
fn message_of(row: &Claimed) -> Result<Message> {
    let body = Bytes::from(row.body.clone());
    let mut message = if envelope::looks_like_envelope(&body) {
        envelope::decode(&body)?
    } else {
        Message::new(body).with_id(MessageId::from(row.id))
    };
    message.attempt = u32::try_from(row.attempt).unwrap_or(u32::MAX).max(1);
    if let Some(error) = &row.last_error {
        message.last_error = Some(error.clone());
    }
    message.expires_at = row.expires_ms.map(time_of_ms);
    message.not_before = None;
    Ok(message)
}

/// The `Instant` `ms` milliseconds from now (as the database counted
/// them: its clock, not this host's, says when something falls due). An
/// event already due that the claim's housekeeping left (its row held by
/// another session) is looked at again after [`HELD_RETRY`], not in a
/// loop.
fn instant_in_ms(ms: i64) -> Instant {
    let wait = match u64::try_from(ms) {
        Ok(ms) if ms > 0 => Duration::from_millis(ms),
        _ => HELD_RETRY,
    };
    Instant::now() + wait
}

/// How soon a consumer looks again at an event that was due but held.
const HELD_RETRY: Duration = Duration::from_millis(50);

#[async_trait]
impl Consumer for PostgresConsumer {
    fn queue(&self) -> &QueueName {
        &self.ctx.name
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.ctx.shared.capabilities.check_receive(max)?;
        self.ack_then_receive(Vec::new(), max, wait).await.1
    }

    /// Acks and claims in one call of the schema's `claim`.
    fn fuses_ack_and_receive(&self) -> bool {
        true
    }

    async fn ack_and_receive(
        &self,
        acks: Vec<Delivery>,
        max: usize,
        wait: Duration,
    ) -> AckAndReceive {
        if let Err(e) = self.ctx.shared.capabilities.check_receive(max) {
            return AckAndReceive {
                acked: self.ack_batch(acks).await,
                received: Err(e),
            };
        }
        let shared = &self.ctx.shared;
        let (ours, foreign) = split_own(acks, |acker: &PostgresAcker| {
            Arc::ptr_eq(&acker.ctx.shared, shared).then_some((acker.seq, acker.token))
        });
        let (failed, received) = self.ack_then_receive(ours, max, wait).await;
        AckAndReceive {
            acked: ack_each(foreign, failed).await,
            received,
        }
    }

    fn stop_waiting(&self) {
        self.stop.stop();
    }

    /// Acks every delivery of this backend in one call.
    async fn ack_batch(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<DeliveryError>> {
        let shared = &self.ctx.shared;
        let (ours, foreign) = split_own(deliveries, |acker: &PostgresAcker| {
            Arc::ptr_eq(&acker.ctx.shared, shared).then_some((acker.seq, acker.token))
        });
        let mut failed = Vec::new();
        if !ours.is_empty() {
            let seqs: Vec<i64> = ours.iter().map(|((seq, _), _)| *seq).collect();
            let tokens: Vec<i64> = ours.iter().map(|((_, token), _)| *token).collect();
            let acked = sqlx::query_as::<_, (i64, i64)>(&shared.sql.ack)
                .bind(&seqs)
                .bind(&tokens)
                .fetch_all(&shared.pool)
                .await;
            match acked {
                Ok(acked) => {
                    let acked: std::collections::HashSet<(i64, i64)> = acked.into_iter().collect();
                    for (key, delivery) in ours {
                        if !acked.contains(&key) {
                            let error = Error::lease_lost(delivery.message().id);
                            failed.push(DeliveryError::new(error, delivery));
                        }
                    }
                }
                Err(e) => {
                    let error = self.ctx.error(e, "acking");
                    for (_, delivery) in ours {
                        failed.push(DeliveryError::new(error.clone_kind(), delivery));
                    }
                }
            }
        }
        ack_each(foreign, failed).await
    }
}

/// Settles one PostgreSQL delivery: the job's row and the claim's token.
#[derive(Debug)]
pub(crate) struct PostgresAcker {
    ctx: Arc<QueueCtx>,
    seq: i64,
    token: i64,
}

impl PostgresAcker {
    async fn bury(
        &self,
        reason: &DeadLetterReason,
        attempts: u32,
        error: Option<&str>,
    ) -> Result<bool> {
        let shared = &self.ctx.shared;
        sqlx::query_scalar::<_, bool>(&shared.sql.bury)
            .bind(self.seq)
            .bind(self.token)
            .bind(reason.to_string())
            .bind(i64::from(attempts))
            .bind(error.map(|e| cap_error_text(e).into_owned()))
            .fetch_one(&shared.pool)
            .await
            .map_err(|e| self.ctx.error(e, "dead-lettering"))
    }
}

#[async_trait]
impl Acker for PostgresAcker {
    async fn ack(&self, message: &Message) -> Result<()> {
        let shared = &self.ctx.shared;
        let acked = sqlx::query_as::<_, (i64, i64)>(&shared.sql.ack)
            .bind([self.seq])
            .bind([self.token])
            .fetch_optional(&shared.pool)
            .await
            .map_err(|e| self.ctx.error(e, "acking"))?;
        match acked {
            Some(_) => Ok(()),
            None => Err(Error::lease_lost(message.id)),
        }
    }

    async fn nack(
        &self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<()> {
        let shared = &self.ctx.shared;
        let delay = queue_core::message::clamp_delay(delay);
        let outcome = sqlx::query_scalar::<_, String>(&shared.sql.retry)
            .bind(self.seq)
            .bind(self.token)
            .bind(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4))
            .bind(last_error.map(|e| cap_error_text(e).into_owned()))
            .fetch_one(&shared.pool)
            .await
            .map_err(|e| self.ctx.error(e, "nacking"))?;
        match outcome.as_str() {
            "lost" => Err(Error::lease_lost(message.id)),
            _ => Ok(()),
        }
    }

    async fn extend(&mut self, message: &Message, lease: Duration) -> Result<SystemTime> {
        let shared = &self.ctx.shared;
        let lease = shared.capabilities.check_lease(lease)?;
        let until = sqlx::query_scalar::<_, i64>(&shared.sql.extend)
            .bind(self.seq)
            .bind(self.token)
            .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4))
            .fetch_optional(&shared.pool)
            .await
            .map_err(|e| self.ctx.error(e, "extending a lease"))?;
        match until {
            Some(ms) => Ok(time_of_ms(ms)),
            None => Err(Error::lease_lost(message.id)),
        }
    }

    async fn dead_letter(&self, message: &Message, reason: &DeadLetterReason) -> Result<()> {
        if self.bury(reason, message.attempt, None).await? {
            Ok(())
        } else {
            Err(Error::lease_lost(message.id))
        }
    }

    async fn release(&self, message: &Message) -> Result<()> {
        let shared = &self.ctx.shared;
        let released = sqlx::query_scalar::<_, bool>(&shared.sql.release)
            .bind(self.seq)
            .bind(self.token)
            .fetch_one(&shared.pool)
            .await
            .map_err(|e| self.ctx.error(e, "releasing"))?;
        if released {
            Ok(())
        } else {
            Err(Error::lease_lost(message.id))
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
