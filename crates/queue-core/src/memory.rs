//! The embedded in-process backend: the reference implementation of every
//! semantic in the conformance suite, and the default when no server runs.
//!
//! Each queue is one mutex-guarded state: four FIFO lists (one per priority),
//! a delay index ordered by due time, an in-flight index ordered by lease
//! deadline, dead letters and an idempotency window. Waiting consumers sleep
//! on a [`Notify`] and a timer set to the next due message or lease
//! deadline, so nothing polls.
//!
//! ```
//! use queue_core::{Backend, ConsumerOptions, MemoryBackend, Message, QueueName};
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> queue_core::Result<()> {
//! let backend = MemoryBackend::new();
//! let queue = QueueName::new("emails")?;
//! let producer = backend.producer(&queue).await?;
//! producer.send(Message::new(&b"hello"[..])).await?;
//! let consumer = backend.consumer(&queue, ConsumerOptions::default()).await?;
//! let deliveries = consumer.receive(10, Duration::from_secs(1)).await?;
//! assert_eq!(deliveries[0].payload().as_ref(), b"hello");
//! for delivery in deliveries {
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::capabilities::{Capabilities, Ordering, Support};
use crate::config::{BackendKind, QueueConfig, DEFAULT_LEASE};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{Message, MessageId, QueueName};
use crate::stats::{
    ConsumerOptions, DeadLetter, DeadLetterReason, HealthStatus, QueueOptions, QueueStats, Redrive,
};
use crate::traits::{ack_each, Acker, Admin, Backend, Consumer, Delivery, DeliveryError, Producer};

/// Default payload limit of the memory backend: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// Most messages one `receive` returns.
pub const MAX_RECEIVE: usize = 10_000;

/// The embedded backend. Clones share the same queues.
#[derive(Clone, Debug)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    capabilities: Capabilities,
    lease: Duration,
    queues: Mutex<HashMap<QueueName, Arc<MemQueue>>>,
    closed: AtomicBool,
}

#[derive(Debug)]
struct MemQueue {
    name: QueueName,
    state: Mutex<State>,
    notify: Notify,
    idempotency_window: Duration,
}

/// Key of the delay and lease indexes: (due time, unique sequence).
type TimeKey = (Instant, u64);

#[derive(Debug, Default)]
struct State {
    options: QueueOptions,
    ready: [VecDeque<Message>; 4],
    delayed: BTreeMap<TimeKey, Message>,
    /// Leased messages by lease key. Messages live in a hash map and the
    /// ordered index holds only keys, so settling a delivery moves no message.
    in_flight: HashMap<u64, Message, SeqHasher>,
    /// Lease keys ordered by deadline, for expiry.
    leases: BTreeSet<TimeKey>,
    dead: VecDeque<DeadLetter>,
    /// Idempotency keys inside the window: when they expire, and the id of
    /// the message first sent with them.
    seen_keys: HashMap<String, (Instant, MessageId)>,
    seen_order: VecDeque<(Instant, String)>,
    next_seq: u64,
    any_ttl: bool,
    deleted: bool,
    stats: QueueStats,
    /// When each waiting consumer's timer fires (a multiset), so a new
    /// event earlier than all of them wakes one consumer to re-arm.
    waiting: BTreeMap<Instant, usize>,
    /// A change since the last unlock needs a waiting consumer woken.
    wake_one: bool,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl MemoryBackend {
    /// A backend with default settings.
    pub fn new() -> Self {
        MemoryBackend::build(DEFAULT_MAX_PAYLOAD, Duration::from_secs(300), DEFAULT_LEASE)
    }

    /// A backend from a `memory://` config (`max_payload`, `idempotency_window`
    /// and `lease` apply; any other parameter is an error naming it).
    pub fn from_config(config: &QueueConfig) -> Result<Self> {
        if config.backend != BackendKind::Memory {
            return Err(Error::config(format!(
                "url: the memory backend needs a memory:// URL, got a {} URL",
                config.backend
            )));
        }
        config.reject_unknown_params(&[])?;
        Ok(MemoryBackend::build(
            config.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD),
            config.idempotency_window,
            config.lease,
        ))
    }

    fn build(max_payload: usize, idempotency_window: Duration, lease: Duration) -> Self {
        MemoryBackend {
            shared: Arc::new(Shared {
                capabilities: Capabilities {
                    backend: "memory",
                    priority: Support::Native,
                    delay: Support::Native,
                    ttl: Support::Native,
                    dead_letter: Support::Native,
                    redrive: Support::Native,
                    idempotency: Support::Native,
                    lease_extension: Support::Native,
                    max_length: Support::Native,
                    purge: Support::Native,
                    exact_stats: true,
                    detects_lease_lost: true,
                    ordering: Ordering::FifoPerPriority,
                    max_payload,
                    max_native_delay: None,
                    max_batch: 10_000,
                    max_receive: MAX_RECEIVE,
                    idempotency_window: Some(idempotency_window),
                },
                lease,
                queues: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// A producer with its concrete type.
    pub fn memory_producer(&self, queue: &QueueName) -> Result<MemoryProducer> {
        Ok(MemoryProducer {
            queue: self.shared.queue(queue, None)?,
            shared: self.shared.clone(),
        })
    }

    /// A consumer with its concrete type.
    pub fn memory_consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<MemoryConsumer> {
        options.check()?;
        let queue = self.shared.queue(queue, None)?;
        let name = QueueName::new(queue.name.as_str())?;
        Ok(MemoryConsumer {
            local: Arc::new(LocalQueue {
                queue: queue.clone(),
                name,
            }),
            queue,
            lease: options.lease.unwrap_or(self.shared.lease),
            shared: self.shared.clone(),
        })
    }
}

impl Shared {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(AtomicOrdering::Acquire) {
            return Err(Error::closed("the memory backend"));
        }
        Ok(())
    }

    /// The queue `name`, created with `options` (or defaults) if missing.
    fn queue(&self, name: &QueueName, options: Option<&QueueOptions>) -> Result<Arc<MemQueue>> {
        self.check_open()?;
        let mut queues = lock(&self.queues);
        let queue = queues.entry(name.clone()).or_insert_with(|| {
            Arc::new(MemQueue {
                name: name.clone(),
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                idempotency_window: self
                    .capabilities
                    .idempotency_window
                    .unwrap_or(Duration::from_secs(300)),
            })
        });
        if let Some(options) = options {
            lock(&queue.state).options = options.clone();
        }
        Ok(queue.clone())
    }

    fn existing(&self, name: &QueueName) -> Result<Arc<MemQueue>> {
        self.check_open()?;
        lock(&self.queues).get(name).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("queue {name:?} does not exist"),
            )
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the state half-updated in
    // a way later calls rely on, so a poisoned lock is still used.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lease_lost(message: &Message) -> Error {
    Error::new(
        ErrorKind::LeaseLost,
        format!(
            "message {} is no longer leased to this delivery (lease expired, or the message was settled or purged)",
            message.id
        ),
    )
}

impl MemQueue {
    fn state(&self) -> Result<MutexGuard<'_, State>> {
        let state = lock(&self.state);
        if state.deleted {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("queue {:?} was deleted", self.name),
            ));
        }
        Ok(state)
    }

    /// Unlock `state`, first waking one waiting consumer if a change made
    /// under the lock needs one. The woken consumer passes the wake-up on
    /// when it leaves messages behind, so a large batch reaches every
    /// consumer without waking all of them for a single message.
    fn unlock(&self, mut state: MutexGuard<'_, State>) {
        if std::mem::take(&mut state.wake_one) {
            self.notify.notify_one();
        }
        drop(state);
    }

    /// Wake every waiting consumer (close, delete).
    fn wake_all(&self) {
        self.notify.notify_waiters();
    }
}

/// Removes a waiting consumer's timer from the registry however the wait
/// ends (including cancellation of the `receive` future).
struct WaiterGuard<'a> {
    queue: &'a MemQueue,
    wake_at: Instant,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.queue.state);
        if let Some(count) = state.waiting.get_mut(&self.wake_at) {
            *count -= 1;
            if *count == 0 {
                state.waiting.remove(&self.wake_at);
            }
        }
    }
}

/// Hashes the unique sequence numbers keying the in-flight map with one
/// multiplication (Fibonacci hashing): they are never attacker-chosen.
#[derive(Debug, Clone, Copy, Default)]
struct SeqHasher;

impl std::hash::BuildHasher for SeqHasher {
    type Hasher = SeqHash;
    fn build_hasher(&self) -> SeqHash {
        SeqHash(0)
    }
}

#[derive(Debug)]
struct SeqHash(u64);

impl std::hash::Hasher for SeqHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// `SystemTime` `at` as an `Instant`, never earlier than the wall-clock time.
fn instant_of(at: SystemTime, sys_now: SystemTime, now: Instant) -> Instant {
    now + at.duration_since(sys_now).unwrap_or(Duration::ZERO)
}

impl State {
    /// A message became ready: a waiting consumer should take it.
    fn note_ready(&mut self) {
        if !self.waiting.is_empty() {
            self.wake_one = true;
        }
    }

    /// Something becomes due at `at`: if every waiting consumer sleeps past
    /// it, wake one to re-arm its timer.
    fn note_due(&mut self, at: Instant) {
        if self.waiting.keys().next().is_some_and(|&first| first > at) {
            self.wake_one = true;
        }
    }

    /// Lease `message` under `key`.
    fn lease(&mut self, key: TimeKey, message: Message) {
        self.leases.insert(key);
        self.in_flight.insert(key.1, message);
    }

    /// End the lease `key`, returning its message; `None` if it is not held.
    /// Sequences are never reused, so a stale key finds nothing.
    fn release(&mut self, key: &TimeKey) -> Option<Message> {
        let message = self.in_flight.remove(&key.1)?;
        self.leases.remove(key);
        Some(message)
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn depth(&self) -> u64 {
        (self.ready.iter().map(VecDeque::len).sum::<usize>()
            + self.delayed.len()
            + self.in_flight.len()) as u64
    }

    /// The id of the message first sent with `key` inside the window, if
    /// any; otherwise records `id` under it.
    fn first_with_key(
        &mut self,
        key: &str,
        id: MessageId,
        now: Instant,
        window: Duration,
    ) -> Option<MessageId> {
        while let Some((expiry, _)) = self.seen_order.front() {
            if *expiry > now {
                break;
            }
            let (expiry, old) = self.seen_order.pop_front().expect("front exists");
            if self
                .seen_keys
                .get(&old)
                .is_some_and(|(at, _)| *at == expiry)
            {
                self.seen_keys.remove(&old);
            }
        }
        if let Some((_, first)) = self.seen_keys.get(key) {
            return Some(*first);
        }
        let expiry = now + window;
        self.seen_keys.insert(key.to_owned(), (expiry, id));
        self.seen_order.push_back((expiry, key.to_owned()));
        None
    }

    /// Queue `message` as ready or delayed by its `not_before`.
    fn enqueue(&mut self, message: Message, sys_now: SystemTime, now: Instant) {
        if message.expires_at.is_some() {
            self.any_ttl = true;
        }
        match message.not_before {
            Some(at) if at > sys_now => {
                let key = (instant_of(at, sys_now, now), self.seq());
                self.note_due(key.0);
                self.delayed.insert(key, message);
            }
            _ => {
                self.ready[message.priority.rank()].push_back(message);
                self.note_ready();
            }
        }
    }

    fn bury(&mut self, message: Message, reason: DeadLetterReason, attempts: u32) {
        if reason == DeadLetterReason::Expired {
            self.stats.expired_total += 1;
        }
        self.stats.dead_lettered_total += 1;
        self.dead
            .push_back(DeadLetter::new(message, reason, attempts));
    }

    /// A failed attempt: deliver again after `delay`, or dead-letter on the last attempt.
    fn retry(&mut self, mut message: Message, delay: Duration, sys_now: SystemTime, now: Instant) {
        self.stats.retried_total += 1;
        if message.is_last_attempt() {
            let attempts = message.attempt;
            self.bury(message, DeadLetterReason::MaxAttempts, attempts);
            return;
        }
        message.attempt += 1;
        message.not_before = (delay > Duration::ZERO)
            .then(|| sys_now.checked_add(delay.min(crate::message::MAX_DELAY)))
            .flatten();
        self.enqueue(message, sys_now, now);
    }

    /// Move due delayed messages to ready and take back expired leases.
    fn maintain(&mut self, sys_now: SystemTime, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let message = entry.remove();
            self.ready[message.priority.rank()].push_back(message);
            self.note_ready();
        }
        while let Some(&key) = self.leases.first() {
            if key.0 > now {
                break;
            }
            let mut message = self
                .release(&key)
                .expect("lease index matches in-flight map");
            message.last_error = Some("lease expired before the delivery was settled".to_owned());
            self.retry(message, Duration::ZERO, sys_now, now);
        }
    }

    /// Dead-letter every queued message whose TTL has passed (for exact stats).
    fn sweep_expired(&mut self, sys_now: SystemTime) {
        if !self.any_ttl {
            return;
        }
        let mut expired = Vec::new();
        for list in &mut self.ready {
            list.retain(|m| {
                let keep = !m.is_expired_at(sys_now);
                if !keep {
                    expired.push(m.clone());
                }
                keep
            });
        }
        self.delayed.retain(|_, m| {
            let keep = !m.is_expired_at(sys_now);
            if !keep {
                expired.push(m.clone());
            }
            keep
        });
        for message in expired {
            let attempts = message.attempt.saturating_sub(1);
            self.bury(message, DeadLetterReason::Expired, attempts);
        }
    }

    /// The next instant at which a delayed message becomes due or a lease expires.
    fn next_event(&self) -> Option<Instant> {
        let delayed = self.delayed.keys().next().map(|k| k.0);
        let lease = self.leases.first().map(|k| k.0);
        match (delayed, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Sends to one memory queue.
#[derive(Debug)]
pub struct MemoryProducer {
    shared: Arc<Shared>,
    queue: Arc<MemQueue>,
}

impl MemoryProducer {
    /// Queue `messages` all or none: a batch that would pass the queue's
    /// maximum length is refused whole, before anything is queued.
    fn push(&self, messages: Vec<Message>) -> Result<Vec<MessageId>> {
        self.shared.check_open()?;
        let mut state = self.queue.state()?;
        if let Some(max) = state.options.max_length {
            // Expired leases and TTLs must not hold places in a full queue.
            let sys_now = SystemTime::now();
            state.maintain(sys_now, Instant::now());
            state.sweep_expired(sys_now);
            let depth = state.depth();
            if depth + messages.len() as u64 > max {
                let error = Error::new(
                    ErrorKind::QueueFull,
                    format!(
                        "queue {:?} is full: it holds {depth} of at most {max} messages, and {} more do not fit",
                        self.queue.name,
                        messages.len()
                    ),
                );
                self.queue.unlock(state);
                return Err(error);
            }
        }
        let sys_now = SystemTime::now();
        let now = Instant::now();
        let mut ids = Vec::with_capacity(messages.len());
        for message in messages {
            if let Some(key) = &message.idempotency_key {
                let window = self.queue.idempotency_window;
                if let Some(first) = state.first_with_key(key, message.id, now, window) {
                    state.stats.deduplicated_total += 1;
                    ids.push(first);
                    continue;
                }
            }
            ids.push(message.id);
            state.stats.enqueued_total += 1;
            state.enqueue(message, sys_now, now);
        }
        self.queue.unlock(state);
        Ok(ids)
    }
}

#[async_trait]
impl Producer for MemoryProducer {
    fn queue(&self) -> &QueueName {
        &self.queue.name
    }

    async fn send(&self, message: Message) -> Result<MessageId> {
        // In-process sends never wait on I/O: give the scheduler a chance to
        // run consumers, or a tight send loop would starve them.
        tokio::task::consume_budget().await;
        self.shared.capabilities.check_message(&message)?;
        let id = message.id;
        self.push(vec![message])?;
        Ok(id)
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<MessageId>> {
        tokio::task::consume_budget().await;
        self.shared.capabilities.check_batch(&messages)?;
        self.push(messages)
    }
}

/// Receives from one memory queue.
#[derive(Debug)]
pub struct MemoryConsumer {
    shared: Arc<Shared>,
    queue: Arc<MemQueue>,
    /// This consumer's own reference to the queue (and its own copy of the
    /// name) for the deliveries it hands out, so consumers on different
    /// threads never contend on one reference count.
    local: Arc<LocalQueue>,
    lease: Duration,
}

#[derive(Debug)]
struct LocalQueue {
    queue: Arc<MemQueue>,
    name: QueueName,
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
        let ready: usize = state.ready.iter().map(VecDeque::len).sum();
        let mut out = Vec::with_capacity(max.min(ready));
        let deadline = now + self.lease;
        let sys_deadline = sys_now + self.lease;
        for rank in 0..4 {
            while out.len() < max {
                let Some(message) = state.ready[rank].pop_front() else {
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
                    if !batch.is_empty() && state.ready.iter().any(|list| !list.is_empty()) {
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

    /// Acks every delivery of this queue under one lock.
    async fn ack_batch(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<DeliveryError>> {
        let mut failed = Vec::new();
        let mut foreign = Vec::new();
        match self.queue.state() {
            Err(e) => {
                failed.extend(
                    deliveries
                        .into_iter()
                        .map(|d| DeliveryError::new(e.clone_kind(), d)),
                );
            }
            Ok(mut state) => {
                // Freeing messages is slow next to the bookkeeping: keep it
                // out of the lock, which other consumers are waiting for.
                let mut released = Vec::with_capacity(deliveries.len());
                let mut settled = Vec::with_capacity(deliveries.len());
                for delivery in deliveries {
                    let key = match delivery.acker().as_any().downcast_ref::<MemoryAcker>() {
                        Some(acker) if Arc::ptr_eq(&acker.local.queue, &self.queue) => acker.key,
                        _ => {
                            foreign.push(delivery);
                            continue;
                        }
                    };
                    match state.release(&key) {
                        Some(message) => {
                            state.stats.acked_total += 1;
                            released.push(message);
                            settled.push(delivery);
                        }
                        None => failed
                            .push(DeliveryError::new(lease_lost(delivery.message()), delivery)),
                    }
                }
                drop(state);
                drop(released);
                drop(settled);
            }
        }
        ack_each(foreign, failed).await
    }
}

/// Settles one memory delivery.
#[derive(Debug)]
struct MemoryAcker {
    local: Arc<LocalQueue>,
    key: TimeKey,
}

impl MemoryAcker {
    fn settle(&self, message: &Message, then: impl FnOnce(&mut State, Message)) -> Result<()> {
        let mut state = self.local.queue.state()?;
        let stored = state
            .release(&self.key)
            .ok_or_else(|| lease_lost(message))?;
        then(&mut state, stored);
        self.local.queue.unlock(state);
        Ok(())
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self, message: &Message) -> Result<()> {
        let mut state = self.local.queue.state()?;
        let Some(released) = state.release(&self.key) else {
            return Err(lease_lost(message));
        };
        state.stats.acked_total += 1;
        drop(state);
        drop(released);
        Ok(())
    }

    async fn nack(
        &self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<()> {
        self.settle(message, |state, mut stored| {
            if let Some(error) = last_error {
                stored.last_error = Some(error.to_owned());
            }
            state.retry(stored, delay, SystemTime::now(), Instant::now());
        })
    }

    async fn extend(&mut self, message: &Message, lease: Duration) -> Result<SystemTime> {
        crate::config::check_lease(lease)?;
        let mut state = self.local.queue.state()?;
        let stored = state
            .release(&self.key)
            .ok_or_else(|| lease_lost(message))?;
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

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.shared.capabilities
    }

    async fn producer(&self, queue: &QueueName) -> Result<Box<dyn Producer>> {
        Ok(Box::new(self.memory_producer(queue)?))
    }

    async fn consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.memory_consumer(queue, options)?))
    }

    fn admin(&self) -> &dyn Admin {
        self
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, AtomicOrdering::Release);
        for queue in lock(&self.shared.queues).values() {
            queue.wake_all();
        }
        Ok(())
    }
}

#[async_trait]
impl Admin for MemoryBackend {
    async fn ensure_queue(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        options.check()?;
        self.shared.queue(queue, Some(options)).map(drop)
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.shared.check_open()?;
        let removed = lock(&self.shared.queues).remove(queue);
        if let Some(removed) = removed {
            lock(&removed.state).deleted = true;
            removed.wake_all();
        }
        Ok(())
    }

    async fn purge(&self, queue: &QueueName) -> Result<u64> {
        let queue = self.shared.existing(queue)?;
        let mut state = queue.state()?;
        let removed = state.depth();
        state.ready.iter_mut().for_each(VecDeque::clear);
        state.delayed.clear();
        state.in_flight.clear();
        state.leases.clear();
        Ok(removed)
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let queue = self.shared.existing(queue)?;
        let mut state = queue.state()?;
        let sys_now = SystemTime::now();
        state.maintain(sys_now, Instant::now());
        state.sweep_expired(sys_now);
        let mut stats = state.stats;
        stats.ready = state.ready.iter().map(VecDeque::len).sum::<usize>() as u64;
        stats.delayed = state.delayed.len() as u64;
        stats.in_flight = state.in_flight.len() as u64;
        stats.dead = state.dead.len() as u64;
        // Maintenance may have made messages ready.
        queue.unlock(state);
        Ok(stats)
    }

    async fn dead_letters(&self, queue: &QueueName, limit: usize) -> Result<Vec<DeadLetter>> {
        let queue = self.shared.existing(queue)?;
        let mut state = queue.state()?;
        state.sweep_expired(SystemTime::now());
        Ok(state.dead.iter().take(limit).cloned().collect())
    }

    async fn redrive(&self, queue: &QueueName, which: Redrive) -> Result<u64> {
        let queue = self.shared.existing(queue)?;
        let mut state = queue.state()?;
        let dead = std::mem::take(&mut state.dead);
        let (moved, kept): (VecDeque<_>, VecDeque<_>) =
            dead.into_iter().partition(|d| match &which {
                Redrive::All => true,
                Redrive::Ids(ids) => ids.contains(&d.message.id),
            });
        state.dead = kept;
        let sys_now = SystemTime::now();
        let now = Instant::now();
        let count = moved.len() as u64;
        for dead_letter in moved {
            let mut message = dead_letter.message;
            message.attempt = 1;
            message.not_before = None;
            message.expires_at = None;
            state.enqueue(message, sys_now, now);
        }
        queue.unlock(state);
        Ok(count)
    }

    async fn health(&self) -> HealthStatus {
        let started = std::time::Instant::now();
        match self.shared.check_open() {
            Ok(()) => HealthStatus::healthy("memory", started.elapsed()),
            Err(e) => HealthStatus::unhealthy("memory", started.elapsed(), &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str) -> QueueName {
        QueueName::new(name).unwrap()
    }

    /// Wait until `n` consumers are registered as waiting on `q`, so a test
    /// exercises the wake-up path rather than racing it.
    async fn until_waiting(backend: &MemoryBackend, q: &QueueName, n: usize) {
        let registered = || -> usize {
            let queues = lock(&backend.shared.queues);
            queues
                .get(q)
                .map_or(0, |queue| lock(&queue.state).waiting.values().sum())
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            while registered() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("consumers start waiting");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_length_refuses_with_a_typed_error_and_frees_up() {
        let backend = MemoryBackend::new();
        let q = queue("bounded");
        backend
            .ensure_queue(&q, &QueueOptions::default().with_max_length(3))
            .await
            .unwrap();
        let producer = backend.memory_producer(&q).unwrap();
        producer.send(Message::new("1")).await.unwrap();
        let err = producer
            .send_batch(vec![
                Message::new("2"),
                Message::new("3"),
                Message::new("4"),
            ])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::QueueFull);
        assert!(err.is_retryable());
        assert!(err.message().contains("at most 3"), "{err}");
        assert_eq!(
            backend.stats(&q).await.unwrap().ready,
            1,
            "a refused batch queues nothing"
        );
        producer
            .send_batch(vec![Message::new("2"), Message::new("3")])
            .await
            .unwrap();
        assert_eq!(
            producer.send(Message::new("4")).await.unwrap_err().kind(),
            ErrorKind::QueueFull
        );
        let consumer = backend
            .memory_consumer(&q, ConsumerOptions::default())
            .unwrap();
        let deliveries = consumer.receive(1, Duration::ZERO).await.unwrap();
        // In flight still counts against the length; acked does not.
        assert_eq!(
            producer.send(Message::new("4")).await.unwrap_err().kind(),
            ErrorKind::QueueFull
        );
        consumer.ack_batch(deliveries).await.unwrap();
        producer.send(Message::new("4")).await.unwrap();
        let err = backend
            .ensure_queue(&q, &QueueOptions::default().with_max_length(0))
            .await
            .unwrap_err();
        assert!(err.message().contains("max_length"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_consumer_wakes_on_send_not_on_its_timer() {
        let backend = MemoryBackend::new();
        let q = queue("wake");
        let consumer = backend
            .memory_consumer(&q, ConsumerOptions::default())
            .unwrap();
        let producer = backend.memory_producer(&q).unwrap();
        let started = Instant::now();
        let waiting =
            tokio::spawn(async move { consumer.receive(10, Duration::from_secs(30)).await });
        until_waiting(&backend, &q, 1).await;
        producer.send(Message::new("wake up")).await.unwrap();
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "woke after {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiting_consumer_gets_a_share_of_a_large_batch() {
        let backend = MemoryBackend::new();
        let q = queue("share");
        let mut waiting = Vec::new();
        for _ in 0..4 {
            let consumer = backend
                .memory_consumer(&q, ConsumerOptions::default())
                .unwrap();
            waiting.push(tokio::spawn(async move {
                consumer
                    .receive(10, Duration::from_secs(30))
                    .await
                    .unwrap()
                    .len()
            }));
        }
        until_waiting(&backend, &q, 4).await;
        let producer = backend.memory_producer(&q).unwrap();
        let started = Instant::now();
        producer
            .send_batch((0..40).map(|i| Message::new(format!("{i}"))).collect())
            .await
            .unwrap();
        let mut total = 0;
        for task in waiting {
            let n = task.await.unwrap();
            assert!(n > 0, "a waiter was left asleep");
            total += n;
        }
        assert_eq!(total, 40);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_waiter_does_not_swallow_the_wake_up() {
        let backend = MemoryBackend::new();
        let q = queue("cancel");
        let first = backend
            .memory_consumer(&q, ConsumerOptions::default())
            .unwrap();
        let second = backend
            .memory_consumer(&q, ConsumerOptions::default())
            .unwrap();
        let cancelled =
            tokio::spawn(async move { first.receive(1, Duration::from_secs(30)).await });
        let survivor =
            tokio::spawn(async move { second.receive(1, Duration::from_secs(30)).await });
        until_waiting(&backend, &q, 2).await;
        cancelled.abort();
        let _ = cancelled.await;
        backend
            .memory_producer(&q)
            .unwrap()
            .send(Message::new("x"))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), survivor)
            .await
            .expect("the surviving waiter wakes")
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 1);
        assert!(lock(&backend.shared.queues)[&q]
            .state
            .lock()
            .unwrap()
            .waiting
            .is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_earlier_due_time_re_arms_a_sleeping_consumer() {
        let backend = MemoryBackend::new();
        let q = queue("rearm");
        let consumer = backend
            .memory_consumer(&q, ConsumerOptions::default())
            .unwrap();
        let started = Instant::now();
        let waiting =
            tokio::spawn(async move { consumer.receive(1, Duration::from_secs(30)).await });
        until_waiting(&backend, &q, 1).await;
        let delay = Duration::from_millis(300);
        backend
            .memory_producer(&q)
            .unwrap()
            .send(Message::new("soon").with_delay(delay))
            .await
            .unwrap();
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        let elapsed = started.elapsed();
        assert!(elapsed >= delay, "early: {elapsed:?}");
        assert!(
            elapsed < Duration::from_secs(10),
            "the consumer slept through: {elapsed:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_and_deleted_queues_release_waiters_with_typed_errors() {
        let backend = MemoryBackend::new();
        let q = queue("gone");
        let consumer = backend
            .memory_consumer(&q, ConsumerOptions::default())
            .unwrap();
        let waiting =
            tokio::spawn(async move { consumer.receive(1, Duration::from_secs(30)).await });
        until_waiting(&backend, &q, 1).await;
        backend.delete_queue(&q).await.unwrap();
        let err = waiting.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);

        let consumer = backend
            .memory_consumer(&q, ConsumerOptions::default())
            .unwrap();
        let waiting =
            tokio::spawn(async move { consumer.receive(1, Duration::from_secs(30)).await });
        until_waiting(&backend, &q, 1).await;
        backend.close().await.unwrap();
        assert_eq!(
            waiting.await.unwrap().unwrap_err().kind(),
            ErrorKind::Closed
        );
    }
}
