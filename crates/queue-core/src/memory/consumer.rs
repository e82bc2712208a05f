//! [`MemoryConsumer`]: takes ready messages as leased deliveries, waits
//! without polling, and settles them ([`MemoryAcker`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

use super::ready::GroupLimit;
use super::shared::Shared;
use super::state::{MemQueue, State, TimeKey, WaiterGuard};
use crate::error::{Error, Result};
use crate::message::{Message, QueueName};
use crate::stats::DeadLetterReason;
use crate::traits::{ack_each, own_key, Acker, Consumer, Delivery, DeliveryError, StopFlag};

/// Receives from one memory queue.
#[derive(Debug)]
pub struct MemoryConsumer {
    pub(super) shared: Arc<Shared>,
    pub(super) queue: Arc<MemQueue>,
    /// This consumer's own reference to the queue (and its own copy of the
    /// name) for the deliveries it hands out, so consumers on different
    /// threads never contend on one reference count.
    pub(super) local: Arc<LocalQueue>,
    pub(super) lease: Duration,
    /// At most this many deliveries of one group leased at once.
    pub(super) group_limit: Option<u32>,
    /// Set by [`Consumer::stop_waiting`]: receives stop waiting.
    pub(super) stop: StopFlag,
}

#[derive(Debug)]
pub(super) struct LocalQueue {
    pub(super) shared: Arc<Shared>,
    pub(super) queue: Arc<MemQueue>,
    pub(super) name: QueueName,
}

impl MemoryConsumer {
    /// Take up to `max` ready messages as deliveries.
    fn take(
        &self,
        state: &mut State,
        max: usize,
        sys_now: SystemTime,
        now: Instant,
    ) -> Vec<Delivery> {
        if state.paused {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(max.min(state.ready.len()));
        if let Some(limit) = self.group_limit {
            state.group_limit = limit;
        }
        let deadline = now + self.lease;
        let sys_deadline = sys_now + self.lease;
        for rank in 0..4 {
            while out.len() < max {
                let limit = self.group_limit.map(|limit| GroupLimit {
                    active: &state.group_active,
                    limit,
                });
                let Some(message) = state.ready.pop_rank(rank, limit.as_ref()) else {
                    break;
                };
                if message.is_expired_at(sys_now) {
                    let attempts = message.attempt.saturating_sub(1);
                    state.bury(message, DeadLetterReason::Expired, attempts);
                    continue;
                }
                let key = (deadline, state.seq());
                if out.is_empty() {
                    state.note_due(deadline);
                }
                state.lease(key, message.clone());
                out.push(Delivery::new(
                    self.local.name.clone(),
                    message,
                    sys_deadline,
                    Box::new(MemoryAcker {
                        local: self.local.clone(),
                        key,
                    }),
                ));
            }
        }
        out
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    fn queue(&self) -> &QueueName {
        &self.queue.name
    }

    /// Acks settle in process without a round trip: the worker may as well
    /// hand them over with its next receive.
    fn fuses_ack_and_receive(&self) -> bool {
        true
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.shared.capabilities.check_receive(max)?;
        let give_up_at = Instant::now() + wait;
        loop {
            let notified = self.queue.notify.notified();
            tokio::pin!(notified);
            let (wake_at, _guard) = {
                self.shared.check_open()?;
                let mut state = self.queue.state()?;
                let sys_now = SystemTime::now();
                let now = Instant::now();
                state.maintain(sys_now, now);
                let batch = self.take(&mut state, max, sys_now, now);
                if !batch.is_empty() || now >= give_up_at {
                    if !batch.is_empty() && !state.ready.is_empty() {
                        state.note_ready();
                    }
                    self.queue.unlock(state);
                    return Ok(batch);
                }
                let wake_at = state
                    .next_event()
                    .map_or(give_up_at, |at| at.min(give_up_at));
                // Wake whoever a change above needs before registering, so the
                // wake-up does not land on this consumer.
                if std::mem::take(&mut state.wake_one) {
                    self.queue.notify.notify_one();
                }
                // Register under the lock so no send between here and the
                // wait below is missed.
                notified.as_mut().enable();
                // Checked after registering: a stop before this is seen
                // here, one after it wakes the registration.
                if self.stop.is_stopped() {
                    self.queue.unlock(state);
                    return Ok(batch);
                }
                *state.waiting.entry(wake_at).or_default() += 1;
                (
                    wake_at,
                    WaiterGuard {
                        queue: &self.queue,
                        wake_at,
                    },
                )
            };
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// Wakes the queue's waiting receives: this consumer's looks once
    /// more and returns, the others find nothing new and wait on. (A
    /// signal of the consumer's own would cost every wait a registration
    /// with it: the memory bench lost about a tenth of its rate.)
    fn stop_waiting(&self) {
        self.stop.stop();
        self.queue.notify.notify_waiters();
    }

    /// Acks every delivery of this queue under one lock.
    async fn ack_batch(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<DeliveryError>> {
        let own =
            |acker: &MemoryAcker| Arc::ptr_eq(&acker.local.queue, &self.queue).then_some(acker.key);
        let mut failed = Vec::new();
        let mut foreign = Vec::new();
        match self.queue.state() {
            Err(e) => {
                for delivery in deliveries {
                    match own_key(&delivery, own) {
                        Some(_) => failed.push(DeliveryError::new(e.clone_kind(), delivery)),
                        None => foreign.push(delivery),
                    }
                }
            }
            Ok(mut state) => {
                // Freeing messages is slow next to the bookkeeping: keep it
                // out of the lock, which other consumers are waiting for.
                let mut released = Vec::with_capacity(deliveries.len());
                let mut settled = Vec::with_capacity(deliveries.len());
                for delivery in deliveries {
                    let Some(key) = own_key(&delivery, own) else {
                        foreign.push(delivery);
                        continue;
                    };
                    match state.unlease(&key) {
                        Some(message) => {
                            state.stats.acked_total += 1;
                            released.push(message);
                            settled.push(delivery);
                        }
                        None => {
                            let error = Error::lease_lost(delivery.message().id);
                            failed.push(DeliveryError::new(error, delivery));
                        }
                    }
                }
                // A group at its limit may have freed a place.
                self.queue.unlock(state);
                drop(released);
                drop(settled);
            }
        }
        ack_each(foreign, failed).await
    }
}

/// Settles one memory delivery.
#[derive(Debug)]
pub(super) struct MemoryAcker {
    pub(super) local: Arc<LocalQueue>,
    pub(super) key: TimeKey,
}

impl MemoryAcker {
    fn settle(&self, message: &Message, then: impl FnOnce(&mut State, Message)) -> Result<()> {
        let mut state = self.local.queue.state()?;
        let stored = state
            .unlease(&self.key)
            .ok_or_else(|| Error::lease_lost(message.id))?;
        then(&mut state, stored);
        self.local.queue.unlock(state);
        Ok(())
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self, message: &Message) -> Result<()> {
        let mut state = self.local.queue.state()?;
        let Some(released) = state.unlease(&self.key) else {
            return Err(Error::lease_lost(message.id));
        };
        state.stats.acked_total += 1;
        // A group at its limit may have freed a place.
        self.local.queue.unlock(state);
        drop(released);
        Ok(())
    }

    async fn nack(
        &self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<()> {
        self.settle(message, |state, stored| {
            state.retry(
                &stored,
                delay,
                last_error,
                SystemTime::now(),
                Instant::now(),
            );
        })
    }

    async fn extend(&mut self, message: &Message, lease: Duration) -> Result<SystemTime> {
        let lease = self.local.shared.capabilities.check_lease(lease)?;
        let mut state = self.local.queue.state()?;
        let stored = state
            .unlease(&self.key)
            .ok_or_else(|| Error::lease_lost(message.id))?;
        let key = (Instant::now() + lease, self.key.1);
        state.note_due(key.0);
        state.lease(key, stored);
        self.local.queue.unlock(state);
        self.key = key;
        Ok(SystemTime::now() + lease)
    }

    async fn dead_letter(&self, message: &Message, reason: &DeadLetterReason) -> Result<()> {
        self.settle(message, |state, stored| {
            let attempts = stored.attempt;
            state.bury(stored, reason.clone(), attempts);
        })
    }

    async fn release(&self, message: &Message) -> Result<()> {
        self.settle(message, |state, stored| state.requeue_front(stored))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
