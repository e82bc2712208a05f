//! [`AmqpConsumer`]: one channel with `basic.qos` prefetch and one
//! `basic.consume`, local leases, and settlement.
//!
//! The broker pushes up to `prefetch` deliveries; they wait in a local
//! buffer without a lease or an attempt until `receive` hands them out.
//! A lease is local: a background task (the pump, which also moves
//! deliveries into the buffer) gives back a delivery whose lease ran out by
//! publishing a copy with `attempt + 1` and acking the original, so a
//! later settle of the stale delivery is refused with `LeaseLost`. A
//! channel that closes takes its unsettled deliveries with it: the broker
//! hands them out again, and their settles are refused with `LeaseLost`.
//!
//! One concern per file: `state.rs` (what a consumer and its deliveries
//! share: the buffer, the leases, the session, all under one lock),
//! `pump.rs` (the task that drains the lapin stream into the buffer, gives
//! back expired leases and reopens the channel), `acker.rs` (settling on
//! the channel: [`AmqpAcker`]) and this file (the [`AmqpConsumer`] and its
//! `receive` and `ack_batch`).

mod acker;
mod pump;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use lapin::Channel;
use queue_core::stats::Counter;
use queue_core::traits::split_own;
use queue_core::{
    Consumer, ConsumerOptions, DeadLetterReason, Delivery, DeliveryError, Error, Message,
    QueueName, Result, StopFlag,
};
use tokio::sync::Notify;

use crate::link::Outgoing;
use crate::shared::Shared;
use crate::wire::{self, Incoming};

use self::acker::AmqpAcker;
pub(crate) use self::state::ConsumerState;
use self::state::{lease_lost, Buffered, Inner, Lease, Waiting};

/// Receives from one RabbitMQ queue. Dropping it closes its channel: the
/// broker hands its unsettled deliveries to other consumers.
#[derive(Debug)]
pub struct AmqpConsumer {
    state: Arc<ConsumerState>,
    pump: tokio::task::JoinHandle<()>,
    /// Set by [`Consumer::stop_waiting`]: a wait ends at once.
    stop: StopFlag,
}

impl AmqpConsumer {
    pub(crate) async fn open(
        shared: Arc<Shared>,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Self> {
        shared.capabilities.check_consumer(&options)?;
        let lease = shared
            .capabilities
            .check_lease(options.lease.unwrap_or(shared.settings().lease))?;
        shared.ensure_exists(queue).await?;
        let state = Arc::new(ConsumerState {
            shared: shared.clone(),
            queue: queue.clone(),
            lease,
            inner: std::sync::Mutex::new(Inner::default()),
            arrived: Notify::new(),
            wake: Notify::new(),
        });
        // The first subscription happens here, so a consumer that cannot
        // consume fails at once with the reason.
        let (session, stream) = state.subscribe().await?;
        shared.register(queue, &state);
        let pump = tokio::spawn(pump::pump(state.clone(), (session, stream)));
        Ok(AmqpConsumer {
            state,
            pump,
            stop: StopFlag::default(),
        })
    }

    /// Deliveries the broker pushed that wait here, not yet handed out.
    pub fn buffered(&self) -> usize {
        self.state.lock().buffer.len()
    }

    /// Handle the deliveries that must not be handed out: early arrivals
    /// from the delay tiers hop on, expired ones and undecodable bytes are
    /// dead-lettered.
    async fn divert(
        &self,
        session: u64,
        channel: &Channel,
        tag: u64,
        copy: Vec<Outgoing>,
        message: Message,
    ) {
        let lease = Lease {
            message,
            deadline: Instant::now(),
            arrived: Instant::now(),
        };
        {
            let mut inner = self.state.lock();
            if inner.session != session {
                return;
            }
            inner.settling.insert(tag);
        }
        if let Err(e) = self.state.replace(channel, session, tag, lease, copy).await {
            // Unacked: the broker hands it out again when the channel closes.
            tracing::warn!(queue = %self.state.queue, error = %e, "could not move a delivery off the queue");
            self.state.finish(tag);
        }
    }
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        self.pump.abort();
        let mut inner = self.state.lock();
        inner.closed = true;
        // The last handle on the channel closes it: the broker hands the
        // unsettled deliveries to other consumers.
        inner.new_session(None);
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    fn queue(&self) -> &QueueName {
        &self.state.queue
    }

    /// The wait is for the local buffer the broker pushes into: it ends
    /// at once.
    fn stop_waiting(&self) {
        self.stop.stop();
    }

    /// Closes the channel and waits for the broker's answer: the
    /// subscription ends, and deliveries pushed but not handed out go
    /// back to the queue for other consumers (as on drop, which does not
    /// wait). A message sent after a worker's shutdown then never reaches
    /// the stopped worker's channel, where it would have been delivered
    /// once more before coming back.
    async fn close(&self) {
        self.stop.stop();
        self.pump.abort();
        let channel = {
            let mut inner = self.state.lock();
            inner.closed = true;
            let channel = inner.channel.take();
            inner.new_session(None);
            channel
        };
        if let Some(channel) = channel {
            let _ = self
                .state
                .shared
                .link
                .call(
                    "closing a consumer's channel",
                    channel.close(200, "consumer closed".into()),
                )
                .await;
        }
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let shared = &self.state.shared;
        shared.check_open()?;
        shared.capabilities.check_receive(max)?;
        let deadline = tokio::time::Instant::now() + wait;
        let _waiting = Waiting::new(&self.state);
        loop {
            let notified = self.state.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (session, channel, taken) = {
                let mut inner = self.state.lock();
                if inner.closed {
                    return Err(Error::closed("the amqp consumer"));
                }
                let n = max.min(inner.buffer.len());
                let taken: Vec<Buffered> = inner.buffer.drain(..n).collect();
                // Taken but not yet leased: counted unsettled, so a batch
                // ack with `multiple` never covers them in the meantime.
                for b in &taken {
                    inner.settling.insert(b.tag);
                }

                (inner.session, inner.channel.clone(), taken)
            };
            let mut ready = Vec::with_capacity(taken.len());
            let mut diverted = Vec::new();
            let now = SystemTime::now();
            for buffered in taken {
                match wire::incoming(buffered.body, &buffered.properties, true) {
                    Incoming::Message(message)
                        if !wire::remaining_delay(&message, now).is_zero() =>
                    {
                        diverted.push((buffered.tag, None, message));
                    }
                    Incoming::Message(message) if message.is_expired_at(now) => {
                        diverted.push((buffered.tag, Some(DeadLetterReason::Expired), message));
                    }
                    Incoming::Message(message) => {
                        ready.push((buffered.tag, buffered.arrived, message))
                    }
                    Incoming::Undecodable(message, error) => {
                        tracing::warn!(queue = %self.state.queue, %error, "undecodable bytes on the queue: dead-lettered");
                        diverted.push((buffered.tag, Some(DeadLetterReason::Decode), message));
                    }
                }
            }
            if let Some(channel) = &channel {
                for (tag, reason, message) in diverted {
                    let copy = match &reason {
                        None => {
                            shared
                                .prepare(&self.state.queue, std::slice::from_ref(&message))
                                .await
                        }
                        Some(reason) => {
                            let attempts = match reason {
                                DeadLetterReason::Expired => message.attempt.saturating_sub(1),
                                _ => message.attempt,
                            };
                            if *reason == DeadLetterReason::Expired {
                                self.state.count(Counter::Expired);
                            }
                            self.state.count(Counter::DeadLettered);
                            Ok(vec![wire::dead_letter(
                                &self.state.queue,
                                &message,
                                reason,
                                attempts,
                            )])
                        }
                    };
                    match copy {
                        Ok(copy) => self.divert(session, channel, tag, copy, message).await,
                        Err(e) => {
                            // Left unacked: the broker hands it out again
                            // when the channel closes.
                            self.state.finish(tag);
                            tracing::warn!(queue = %self.state.queue, error = %e, "could not move a delivery off the queue")
                        }
                    }
                }
            }
            if !ready.is_empty() {
                let lease = self.state.lease;
                let sys_deadline = SystemTime::now() + lease;
                let mut out = Vec::with_capacity(ready.len());
                {
                    let mut inner = self.state.lock();
                    if inner.session == session {
                        let deadline = Instant::now() + lease;
                        for (tag, arrived, message) in ready {
                            inner.settling.remove(&tag);
                            inner.leases.insert(
                                tag,
                                Lease {
                                    message: message.clone(),
                                    deadline,
                                    arrived,
                                },
                            );
                            let acker = AmqpAcker {
                                state: self.state.clone(),
                                session,
                                tag,
                            };
                            out.push(Delivery::new(
                                self.state.queue.clone(),
                                message,
                                sys_deadline,
                                Box::new(acker),
                            ));
                        }
                    }
                }
                if !out.is_empty() {
                    self.state.wake.notify_one();
                    self.state.adjust_window();
                    return Ok(out);
                }
            }
            self.state.adjust_window();
            let waited_out = tokio::select! {
                woken = tokio::time::timeout_at(deadline, notified) => woken.is_err(),
                () = self.stop.stopped() => true,
            };
            if waited_out {
                // While the channel is down, a receive that got nothing
                // says why (after waiting for it to come back: returning
                // at once would let a caller's retry loop spin).
                let inner = self.state.lock();
                if inner.channel.is_none() {
                    if let Some(error) = &inner.error {
                        return Err(Error::new(error.kind(), error.message().to_owned()));
                    }
                }
                return Ok(Vec::new());
            }
        }
    }

    /// Acks in as few frames as the tags allow: the longest run from the
    /// lowest unsettled delivery tag of the channel goes as one ack with
    /// `multiple`, the rest one by one.
    async fn ack_batch(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<DeliveryError>> {
        let state = &self.state;
        let (ours, foreign) = split_own(deliveries, |acker: &AmqpAcker| {
            Arc::ptr_eq(&acker.state, state).then_some((acker.session, acker.tag))
        });
        let mut failed = Vec::new();
        let mut taken: Vec<(u64, Delivery)> = Vec::with_capacity(ours.len());
        let mut channel = None;
        let mut lowest_other = u64::MAX;
        {
            let now = Instant::now();
            let mut inner = state.lock();
            for ((session, tag), delivery) in ours {
                let live = inner.session == session && inner.channel.is_some() && !inner.closed;
                match inner.leases.get(&tag) {
                    Some(lease) if live && lease.deadline > now => {
                        inner.leases.remove(&tag);
                        taken.push((tag, delivery));
                    }
                    _ => failed.push(DeliveryError::new(
                        lease_lost(&state.queue, "its lease ran out or its channel closed"),
                        delivery,
                    )),
                }
            }
            if !taken.is_empty() {
                channel = inner.channel.clone();
                // A tag the pump has not seen yet (still in the client's
                // buffer of another `basic.consume` on this channel) may be
                // lower than ours: `multiple` must stop before it.
                lowest_other = [
                    inner.leases.keys().next().copied(),
                    inner.settling.iter().next().copied(),
                    inner.buffer.iter().map(|b| b.tag).min(),
                    Some(inner.seen_upto + 1),
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(u64::MAX);
                for (tag, _) in &taken {
                    inner.settling.insert(*tag);
                }
            }
        }
        if let Some(channel) = channel {
            taken.sort_by_key(|(tag, _)| *tag);
            let prefix = taken
                .iter()
                .take_while(|(tag, _)| *tag < lowest_other)
                .count();
            let mut results: Vec<Result<()>> = Vec::with_capacity(taken.len());
            if prefix >= 2 {
                let last = taken[prefix - 1].0;
                let acked = state.ack_tag(&channel, last, true).await;
                for _ in 0..prefix {
                    results.push(
                        acked
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| Error::new(e.kind(), e.message().to_owned())),
                    );
                }
            }
            let start = if prefix >= 2 { prefix } else { 0 };
            for (tag, _) in &taken[start..] {
                results.push(state.ack_tag(&channel, *tag, false).await);
            }
            if results.iter().any(Result::is_ok) {
                if let Err(e) = state.sync(&channel).await {
                    for result in &mut results {
                        if result.is_ok() {
                            *result = Err(Error::new(e.kind(), e.message().to_owned()));
                        }
                    }
                }
            }
            for ((tag, delivery), result) in taken.into_iter().zip(results) {
                state.finish(tag);
                match result {
                    Ok(()) => state.count(Counter::Acked),
                    Err(e) => failed.push(DeliveryError::new(e, delivery)),
                }
            }
        }
        queue_core::traits::ack_each(foreign, failed).await
    }
}
