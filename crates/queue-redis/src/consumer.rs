//! [`RedisConsumer`]: batched claims, blocking waits, and settlement.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use queue_core::traits::{ack_each, split_own};
use queue_core::{
    envelope, AckAndReceive, Acker, Consumer, ConsumerOptions, DeadLetterReason, Delivery,
    DeliveryError, Error, ErrorKind, Message, QueueName, Result, StopFlag,
};
use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::ctx::{settle, QueueCtx, Settle};
use crate::error::unexpected;
use crate::scripts::{int_of, invocation, lost_positions, ms_after, NOTIFY, SCRIPTS, SCRIPT_BATCH};
use crate::shared::Shared;

/// What one claim took.
struct Claimed {
    deliveries: Vec<Delivery>,
    /// Something left the queue (undecodable messages are dead-lettered,
    /// expired ones buried, not delivered).
    took: bool,
    /// Time to the next due message or lease deadline, when nothing was taken.
    next_event: Option<Duration>,
}

/// Receives from one Redis queue.
#[derive(Debug)]
pub struct RedisConsumer {
    ctx: Arc<QueueCtx>,
    lease: Duration,
    /// At most this many deliveries of one group leased at once (0: no limit).
    group_limit: u32,
    /// The connection this consumer blocks on while the queue is empty,
    /// opened on first need; taken out while in use, so a cancelled wait
    /// drops (and closes) it rather than leaving a BLPOP queued on it.
    blocking: std::sync::Mutex<Option<MultiplexedConnection>>,
    /// Set by [`Consumer::stop_waiting`]: a wait ends at once.
    stop: StopFlag,
}

impl RedisConsumer {
    pub(crate) async fn open(
        shared: Arc<Shared>,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Self> {
        shared.capabilities.check_consumer(&options)?;
        let lease = shared
            .capabilities
            .check_lease(options.lease.unwrap_or(shared.lease))?;
        let ctx = Arc::new(QueueCtx::new(shared, queue));
        ctx.touch().await?;
        Ok(RedisConsumer {
            ctx,
            lease,
            group_limit: options.group_limit.unwrap_or(0),
            blocking: std::sync::Mutex::new(None),
            stop: StopFlag::default(),
        })
    }

    /// Ack the lease members `acks`, then claim up to `max` messages, in
    /// one script call. Returns what the claim took (see [`Claimed`]) and
    /// the 1-based positions of the acks whose lease was lost.
    async fn claim(&self, max: usize, acks: &[Bytes]) -> Result<(Claimed, Vec<usize>)> {
        let mut call = invocation(&SCRIPTS.claim, &self.ctx.keys);
        call.arg(max)
            .arg(self.lease.as_millis() as u64)
            .arg(self.group_limit);
        for member in acks {
            call.arg(member.as_ref());
        }
        // Measured before the call: the server's deadline is never earlier.
        let deadline = SystemTime::now() + self.lease;
        let mut items = self.ctx.ok_reply(self.ctx.run(call, "claiming").await?)?;
        let lost = match items.get_mut(3).map(std::mem::take) {
            Some(lost) => lost_positions(lost)?,
            None => return Err(unexpected("claimed messages")),
        };
        let next_event = items
            .get(1)
            .and_then(int_of)
            .and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis);
        let mut out = Vec::with_capacity(items.len().saturating_sub(2) / 2);
        let mut undecodable = Vec::new();
        let buried = items.get(2).and_then(int_of).unwrap_or(0);
        let mut items = items.into_iter().skip(4);
        while let (Some(member), Some(env)) = (items.next(), items.next()) {
            let (Value::BulkString(member), Value::BulkString(env)) = (member, env) else {
                return Err(unexpected("claimed messages"));
            };
            let member = Bytes::from(member);
            match envelope::decode(&Bytes::from(env)) {
                Ok(message) => out.push(Delivery::new(
                    self.ctx.name.clone(),
                    message,
                    deadline,
                    Box::new(RedisAcker {
                        ctx: self.ctx.clone(),
                        member,
                    }),
                )),
                Err(e) => undecodable.push((member, e)),
            }
        }
        let took = !out.is_empty() || !undecodable.is_empty() || buried > 0;
        for (member, e) in undecodable {
            tracing::warn!(queue = %self.ctx.name, error = %e, "dead-lettering a message that does not decode");
            let reason = DeadLetterReason::Decode;
            if let Err(failed) = bury(&self.ctx, &member, &reason, Some(&e.to_string())).await {
                // Its lease runs out and a later claim tries again; the good
                // deliveries of this claim are still handed out.
                tracing::warn!(queue = %self.ctx.name, error = %failed, "could not dead-letter an undecodable message");
            }
        }
        let claimed = Claimed {
            deliveries: out,
            took,
            next_event,
        };
        Ok((claimed, lost))
    }

    /// Claim until something is delivered, `give_up_at` or a stop,
    /// blocking on the notification list in between; `first` is a claim
    /// already made.
    async fn receive_from(
        &self,
        max: usize,
        give_up_at: tokio::time::Instant,
        mut claimed: Claimed,
    ) -> Result<Vec<Delivery>> {
        loop {
            if !claimed.deliveries.is_empty() {
                return Ok(claimed.deliveries);
            }
            let now = tokio::time::Instant::now();
            if now >= give_up_at || self.stop.is_stopped() {
                return Ok(claimed.deliveries);
            }
            // Only undecodable or expired messages came: claim again at once.
            if !claimed.took {
                let mut limit = give_up_at - now;
                if let Some(next) = claimed.next_event {
                    limit = limit.min(next);
                }
                self.wait_for_notification(limit).await?;
                if self.stop.is_stopped() {
                    return Ok(Vec::new());
                }
            }
            claimed = self.claim(max, &[]).await?.0;
        }
    }

    /// Block until a message may be ready (a notification), `limit`
    /// passes or the consumer stops waiting. Only the notification list is
    /// popped: bytes a plain client pushes to the inbox stay there until a
    /// claim moves them, so nothing lives only in this process's memory.
    async fn wait_for_notification(&self, limit: Duration) -> Result<()> {
        let taken = self
            .blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut conn = match taken {
            Some(conn) => conn,
            None => self.ctx.shared.blocking_connection().await?,
        };
        let seconds = limit.max(Duration::from_millis(1)).as_secs_f64();
        let mut cmd = redis::cmd("BLPOP");
        cmd.arg(&self.ctx.keys[NOTIFY]).arg(format!("{seconds:.3}"));
        let blpop = cmd.query_async::<Value>(&mut conn);
        // The server answers by its own timeout; the margin covers a
        // connection that stopped answering.
        let blpop = tokio::time::timeout(limit + self.ctx.shared.connect_timeout, blpop);
        let waited = tokio::select! {
            waited = blpop => waited,
            // The connection, its BLPOP still queued, is dropped (closed)
            // here: the server forgets the wait. Nothing is claimed by a
            // wait, so nothing is left behind.
            () = self.stop.stopped() => return Ok(()),
        };
        match waited {
            Ok(Ok(_)) => {}
            // A broken connection is dropped here; the next wait opens another.
            Ok(Err(e)) => return Err(self.ctx.shared.error(e, "waiting for messages")),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "redis at {}: no reply while waiting for messages",
                        self.ctx.shared.address
                    ),
                ))
            }
        }
        *self.blocking.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
        Ok(())
    }
}

#[async_trait]
impl Consumer for RedisConsumer {
    fn queue(&self) -> &QueueName {
        &self.ctx.name
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.ctx.shared.capabilities.check_receive(max)?;
        let give_up_at = tokio::time::Instant::now() + wait;
        let first = self.claim(max, &[]).await?.0;
        self.receive_from(max, give_up_at, first).await
    }

    /// Ends the BLPOP a receive is blocked on by closing its connection:
    /// the receive returns at once (what a claim took is never cut short).
    fn stop_waiting(&self) {
        self.stop.stop();
    }

    /// One script settles the acks and claims the next deliveries.
    fn fuses_ack_and_receive(&self) -> bool {
        true
    }

    /// Acks and the next claim in one script call (finish and fetch): a
    /// worker with finished jobs pays one round trip, not two.
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
        let give_up_at = tokio::time::Instant::now() + wait;
        let (mut ours, foreign) = split_own(acks, |acker: &RedisAcker| {
            Arc::ptr_eq(&acker.ctx, &self.ctx).then(|| acker.member.clone())
        });
        // More than one call carries go ahead in their own batches.
        let beyond = ours.split_off(ours.len().min(SCRIPT_BATCH));
        let mut failed = match self
            .ack_batch(beyond.into_iter().map(|(_, d)| d).collect())
            .await
        {
            Ok(()) => Vec::new(),
            Err(failed) => failed,
        };
        let members: Vec<Bytes> = ours.iter().map(|(member, _)| member.clone()).collect();
        let (first, lost) = match self.claim(max, &members).await {
            Ok(claimed) => claimed,
            Err(e) => {
                failed.extend(
                    ours.into_iter()
                        .map(|(_, d)| DeliveryError::new(e.clone_kind(), d)),
                );
                let acked = ack_each(foreign, failed).await;
                return AckAndReceive {
                    acked,
                    received: Err(e),
                };
            }
        };
        let mut lost = lost.into_iter().peekable();
        for (i, (_, delivery)) in ours.into_iter().enumerate() {
            if lost.next_if_eq(&(i + 1)).is_some() {
                let error = Error::lease_lost(delivery.message().id);
                failed.push(DeliveryError::new(error, delivery));
            }
        }
        let acked = ack_each(foreign, failed).await;
        AckAndReceive {
            acked,
            received: self.receive_from(max, give_up_at, first).await,
        }
    }

    /// Acks every delivery of this queue in one script call per thousand.
    async fn ack_batch(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<DeliveryError>> {
        let (mut ours, foreign) = split_own(deliveries, |acker: &RedisAcker| {
            Arc::ptr_eq(&acker.ctx, &self.ctx).then(|| acker.member.clone())
        });
        let mut failed = Vec::new();
        while !ours.is_empty() {
            let rest = ours.split_off(ours.len().min(SCRIPT_BATCH));
            let chunk = std::mem::replace(&mut ours, rest);
            let mut call = invocation(&SCRIPTS.ack, &self.ctx.keys);
            for (member, _) in &chunk {
                call.arg(member.as_ref());
            }
            match self.ctx.run(call, "acking").await.and_then(lost_positions) {
                Ok(lost) => {
                    let mut lost = lost.into_iter().peekable();
                    for (i, (_, delivery)) in chunk.into_iter().enumerate() {
                        if lost.next_if_eq(&(i + 1)).is_some() {
                            let error = Error::lease_lost(delivery.message().id);
                            failed.push(DeliveryError::new(error, delivery));
                        }
                    }
                }
                Err(e) => failed.extend(
                    chunk
                        .into_iter()
                        .map(|(_, d)| DeliveryError::new(e.clone_kind(), d)),
                ),
            }
        }
        ack_each(foreign, failed).await
    }
}

/// Dead-letter the message leased as `member`; `LeaseLost` if it is not.
async fn bury(
    ctx: &QueueCtx,
    member: &[u8],
    reason: &DeadLetterReason,
    last_error: Option<&str>,
) -> Result<bool> {
    let mut call = invocation(&SCRIPTS.bury, &ctx.keys);
    call.arg(member)
        .arg(reason.to_string())
        .arg(last_error.unwrap_or(""));
    let reply = ctx.run(call, "dead-lettering").await?;
    Ok(int_of(&reply) == Some(1))
}

/// Settles one Redis delivery: the lease member (id + token) is the proof
/// of holding it.
#[derive(Debug)]
struct RedisAcker {
    ctx: Arc<QueueCtx>,
    member: Bytes,
}

#[async_trait]
impl Acker for RedisAcker {
    async fn ack(&self, message: &Message) -> Result<()> {
        match settle(&self.ctx, Settle::Ack(self.member.clone())).await? {
            true => Ok(()),
            false => Err(Error::lease_lost(message.id)),
        }
    }

    async fn nack(
        &self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<()> {
        // The script follows `Message::nacked`: dead-letter on the last
        // attempt, else `attempt + 1` due after the delay (held to the
        // maximum here), the error written into the stored envelope.
        let delay = ms_after(queue_core::message::clamp_delay(delay));
        let error = last_error
            .map(queue_core::error::cap_error_text)
            .unwrap_or_default()
            .into_owned();
        match settle(&self.ctx, Settle::Nack(self.member.clone(), delay, error)).await? {
            true => Ok(()),
            false => Err(Error::lease_lost(message.id)),
        }
    }

    async fn extend(&mut self, message: &Message, lease: Duration) -> Result<SystemTime> {
        let lease = self.ctx.shared.capabilities.check_lease(lease)?;
        let deadline = SystemTime::now() + lease;
        let mut call = invocation(&SCRIPTS.extend, &self.ctx.keys);
        call.arg(self.member.as_ref()).arg(lease.as_millis() as u64);
        match int_of(&self.ctx.run(call, "extending a lease").await?) {
            Some(1) => Ok(deadline),
            _ => Err(Error::lease_lost(message.id)),
        }
    }

    async fn dead_letter(&self, message: &Message, reason: &DeadLetterReason) -> Result<()> {
        if bury(
            &self.ctx,
            &self.member,
            reason,
            message.last_error.as_deref(),
        )
        .await?
        {
            Ok(())
        } else {
            Err(Error::lease_lost(message.id))
        }
    }

    async fn release(&self, message: &Message) -> Result<()> {
        let mut call = invocation(&SCRIPTS.release, &self.ctx.keys);
        call.arg(self.member.as_ref());
        match int_of(&self.ctx.run(call, "releasing a delivery").await?) {
            Some(1) => Ok(()),
            _ => Err(Error::lease_lost(message.id)),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
