//! The backend contract: backend, producer, consumer, delivery and admin.
//!
//! Every trait is object safe (`Box<dyn Producer>`, `Arc<dyn Backend>`) and
//! forwards through `Box` and `Arc`, so code can be written generically
//! (`fn f(p: &impl Producer)`) or over trait objects alike.
//! `docs/architecture.md` shows, method by method, how each broker implements
//! them.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use crate::capabilities::Capabilities;
use crate::dead_letters::{DeadLetterPage, DeadLetterQuery};
use crate::error::{cap_error_text, BatchError, Error, Result};
use crate::message::{Message, MessageId, QueueName};
use crate::stats::{
    ConsumerOptions, DeadLetter, DeadLetterReason, HealthStatus, QueueOptions, QueueStats, Redrive,
    WorkerInfo,
};

/// A connected backend: hands out producers and consumers for queues and
/// answers admin calls. Cheap to share behind an `Arc`.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// What this backend can do, and its limits.
    fn capabilities(&self) -> &Capabilities;

    /// A producer for `queue`, creating the queue with default options if it
    /// does not exist.
    async fn producer(&self, queue: &QueueName) -> Result<Box<dyn Producer>>;

    /// A consumer for `queue`, creating the queue with default options if it
    /// does not exist.
    async fn consumer(
        &self,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>>;

    /// Queue administration.
    fn admin(&self) -> &dyn Admin;

    /// Close connections; every later call fails with [`ErrorKind::Closed`](crate::ErrorKind::Closed).
    async fn close(&self) -> Result<()>;

    /// The job store this backend keeps, where tools (the `queue` CLI,
    /// the dashboard) find job records: Redis's shared store (namespace
    /// `jobs`), the memory backend's in-process one (shared by its
    /// clones). `None` (the default) for brokers that hold no records:
    /// there, job status lives in the store the submitting process chose.
    fn default_job_store(&self) -> Option<std::sync::Arc<dyn crate::store::JobStore>> {
        None
    }

    /// The coordination store this backend keeps (leases, rate windows,
    /// semaphores: what cron, rate limits and fleet-wide concurrency
    /// need): the memory backend's in-process one, Redis's. `None` (the
    /// default) for brokers that keep no such state: features that need
    /// one then take a store by URL, or are refused with an error naming
    /// what to configure
    /// ([`coordination::needs_store`](crate::coordination::needs_store)).
    fn coordination(&self) -> Option<std::sync::Arc<dyn crate::coordination::Coordination>> {
        None
    }
}

/// Sends messages to one queue.
#[async_trait]
pub trait Producer: Send + Sync + fmt::Debug {
    /// The queue this producer sends to.
    fn queue(&self) -> &QueueName;

    /// Send one message. Checked against the capability table before any
    /// network call. Returns the message's id, or, for a duplicate of an
    /// idempotency key inside the window, the id of the message first sent
    /// with that key (where the broker tells; see the capability table).
    async fn send(&self, message: Message) -> Result<MessageId>;

    /// Send many messages with the broker's native batching, in the given
    /// order; the ids come back in order. Every message is checked before
    /// any is sent. On failure the [`BatchError`] says per message whether
    /// the broker accepted it (brokers that take part of a batch: the
    /// capability table's `partial_batches`); `?` turns it into an [`Error`].
    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<MessageId>, BatchError>;
}

/// Receives deliveries from one queue.
#[async_trait]
pub trait Consumer: Send + Sync + fmt::Debug {
    /// The queue this consumer reads.
    fn queue(&self) -> &QueueName;

    /// Up to `max` deliveries, waiting at most `wait` for the first one.
    /// Returns as soon as at least one is available; an empty vector means
    /// nothing arrived within `wait`. Waiting never busy-polls the broker.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;

    /// Ack many deliveries at once, in one broker round trip where the
    /// backend can (the provided method acks one by one). The deliveries
    /// that could not be acked come back inside their errors.
    async fn ack_batch(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<DeliveryError>> {
        ack_each(deliveries, Vec::new()).await
    }

    /// Whether [`ack_and_receive`](Consumer::ack_and_receive) settles and
    /// fetches in one broker round trip. A worker fuses its acks into the
    /// next receive only when it does; otherwise it sends them on their own
    /// beside a pending receive, so an ack's round trip never holds up the
    /// pickup of the next job. The provided method says `false`.
    fn fuses_ack_and_receive(&self) -> bool {
        false
    }

    /// Ack `acks` and receive up to `max` more, in one broker round trip
    /// where the backend can (Redis: one script settles and claims, as
    /// BullMQ's finish-and-fetch does). A worker with finished jobs and free
    /// slots calls this instead of an ack then a receive. The acks are
    /// settled before any wait, so a caller that drops the future during the
    /// wait loses no ack. The provided method calls
    /// [`ack_batch`](Consumer::ack_batch), then [`receive`](Consumer::receive).
    async fn ack_and_receive(
        &self,
        acks: Vec<Delivery>,
        max: usize,
        wait: Duration,
    ) -> AckAndReceive {
        let acked = if acks.is_empty() {
            Ok(())
        } else {
            self.ack_batch(acks).await
        };
        AckAndReceive {
            acked,
            received: self.receive(max, wait).await,
        }
    }

    /// Stop waiting: a [`receive`](Consumer::receive) (or
    /// [`ack_and_receive`](Consumer::ack_and_receive)) of this consumer
    /// that is waiting returns at once with what it has (often nothing),
    /// and every later one looks once and returns, as with a zero `wait`.
    /// Sticky: a consumer does not wait again. A worker calls it when it
    /// stops, then awaits its pending call instead of dropping it, so the
    /// acks that call carries land and the deliveries it claimed are handed
    /// back rather than left claimed until their lease runs out.
    ///
    /// Only the wait is cut short: a call in the middle of a broker round
    /// trip finishes that round trip, and a delivery it took is returned,
    /// never lost. [`StopFlag`] is the building block the backends use.
    ///
    /// The provided method does nothing, so a consumer that does not
    /// override it keeps waiting up to its `wait`, and a worker's shutdown
    /// waits with it.
    fn stop_waiting(&self) {}

    /// End this consumer's subscription at the broker and wait until the
    /// broker knows, so nothing sent from now on is pushed to it: a
    /// worker calls it last in its shutdown, after every delivery is
    /// settled or released. Deliveries still unsettled go back to the
    /// queue as when the consumer is dropped. Bounded by the backend's
    /// request timeout; never an error (a broker that cannot be told
    /// takes the deliveries back when the connection goes).
    ///
    /// The provided method does nothing: a backend whose consumers are
    /// not subscribed (they fetch on request) has nothing to end.
    async fn close(&self) {}
}

/// A sticky "stop waiting" signal: how a backend implements
/// [`Consumer::stop_waiting`]. Its waits race [`stopped`](StopFlag::stopped)
/// against whatever they wait for.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use queue_core::StopFlag;
/// use std::time::Duration;
///
/// let flag = StopFlag::default();
/// flag.stop();
/// tokio::select! {
///     () = flag.stopped() => {}
///     () = tokio::time::sleep(Duration::from_secs(30)) => unreachable!(),
/// }
/// assert!(flag.is_stopped());
/// # }
/// ```
#[derive(Debug, Default)]
pub struct StopFlag {
    stopped: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl StopFlag {
    /// Stop: every wait on [`stopped`](StopFlag::stopped), now or later,
    /// ends.
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_waiters();
    }

    /// Whether [`stop`](StopFlag::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once [`stop`](StopFlag::stop) was called (at once if it
    /// was already).
    pub async fn stopped(&self) {
        let woken = self.wake.notified();
        tokio::pin!(woken);
        // Registered before the check, so a stop in between still wakes it.
        woken.as_mut().enable();
        if !self.is_stopped() {
            woken.await;
        }
    }
}

/// What [`Consumer::ack_and_receive`] did: the acks, then the receive.
#[derive(Debug)]
pub struct AckAndReceive {
    /// The acks; deliveries that could not be acked come back inside their errors.
    pub acked: Result<(), Vec<DeliveryError>>,
    /// The deliveries received.
    pub received: Result<Vec<Delivery>>,
}

/// Split `deliveries` into this consumer's own, each with the key `own`
/// finds in its acker (`None`: not ours), and the rest: how a backend's
/// [`Consumer::ack_batch`] picks out what it can settle in one call (the
/// rest go through [`ack_each`]).
pub fn split_own<A: Acker + 'static, K>(
    deliveries: Vec<Delivery>,
    own: impl Fn(&A) -> Option<K>,
) -> (Vec<(K, Delivery)>, Vec<Delivery>) {
    let mut ours = Vec::with_capacity(deliveries.len());
    let mut foreign = Vec::new();
    for delivery in deliveries {
        match own_key(&delivery, &own) {
            Some(key) => ours.push((key, delivery)),
            None => foreign.push(delivery),
        }
    }
    (ours, foreign)
}

/// The key `own` finds in `delivery`'s acker if it is an `A` (`None`: not
/// this consumer's): [`split_own`] one delivery at a time, for a backend
/// that settles as it goes.
pub fn own_key<A: Acker + 'static, K>(
    delivery: &Delivery,
    own: impl Fn(&A) -> Option<K>,
) -> Option<K> {
    delivery.acker().as_any().downcast_ref::<A>().and_then(own)
}

/// Whether a backend (or handle) was closed; every backend checks it the
/// same way before any call.
#[derive(Debug, Default)]
pub struct CloseFlag(std::sync::atomic::AtomicBool);

impl CloseFlag {
    /// Mark closed: every later [`check`](CloseFlag::check) fails.
    pub fn close(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether it was closed.
    pub fn is_closed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `Err(Closed)` naming `what` once closed.
    pub fn check(&self, what: &str) -> Result<()> {
        if self.is_closed() {
            Err(Error::closed(what))
        } else {
            Ok(())
        }
    }
}

/// Ack `deliveries` one by one, adding failures to `failed`; `Err` if any
/// failed. The provided [`Consumer::ack_batch`], and a backend's fallback
/// for deliveries it does not recognise.
pub async fn ack_each(
    deliveries: Vec<Delivery>,
    mut failed: Vec<DeliveryError>,
) -> Result<(), Vec<DeliveryError>> {
    for delivery in deliveries {
        if let Err(e) = delivery.ack().await {
            failed.push(e);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed)
    }
}

/// The backend side of a [`Delivery`]: settles one received message.
///
/// Backends implement this; users call the consuming methods of
/// [`Delivery`] instead. Batching backends coalesce concurrent calls into
/// one broker round trip.
#[async_trait]
pub trait Acker: Send + Sync + fmt::Debug {
    /// The message is done: never deliver it again.
    async fn ack(&self, message: &Message) -> Result<()>;

    /// Deliver the message again after `delay` with `attempt + 1`, recording
    /// `last_error`; on its last attempt it is dead-lettered instead with
    /// reason `max_attempts`.
    async fn nack(
        &self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<()>;

    /// Keep the message invisible for `lease` from now; returns the new deadline.
    async fn extend(&mut self, message: &Message, lease: Duration) -> Result<SystemTime>;

    /// Move the message to the dead-letter queue now.
    async fn dead_letter(&self, message: &Message, reason: &DeadLetterReason) -> Result<()>;

    /// Hand the message back without spending an attempt: it is delivered
    /// again at once with the same `attempt`, ahead of its priority where
    /// the backend can (a delivery buffered but never started, or stopped
    /// by shutdown).
    async fn release(&self, message: &Message) -> Result<()>;

    /// The acker as `Any`, so a backend's [`Consumer::ack_batch`] can
    /// recognise its own deliveries and settle them in one call.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Queue administration.
#[async_trait]
pub trait Admin: Send + Sync + fmt::Debug {
    /// Create `queue` and its companions (dead-letter queue, retry queues) if
    /// missing; update its options where the broker allows.
    async fn ensure_queue(&self, queue: &QueueName, options: &QueueOptions) -> Result<()>;

    /// Delete `queue` and its companions with everything in them.
    async fn delete_queue(&self, queue: &QueueName) -> Result<()>;

    /// Remove every ready, delayed and in-flight message of `queue` (dead
    /// letters stay). Returns how many were removed where the broker says.
    async fn purge(&self, queue: &QueueName) -> Result<u64>;

    /// Counts of `queue`.
    async fn stats(&self, queue: &QueueName) -> Result<QueueStats>;

    /// One page of `queue`'s dead letters, oldest first: the `limit`
    /// after the query's cursor, each payload cut to its preview when it
    /// sets one. Holds no more than one page of letters in memory, however
    /// deep the dead-letter queue. What the broker sends to reach a page
    /// differs by backend (docs/operations.md, "Dead letters a page at a
    /// time"): Redis reads from the cursor and cuts previews inside Redis,
    /// RabbitMQ passes over the letters before the cursor, SQS and Kafka
    /// read the whole dead-letter queue for each page.
    async fn dead_letter_page(
        &self,
        queue: &QueueName,
        query: &DeadLetterQuery,
    ) -> Result<DeadLetterPage>;

    /// Up to `limit` dead letters of `queue`, oldest first, whole (any
    /// limit: pages of [`dead_letter_page`](Admin::dead_letter_page)
    /// followed until there are `limit` or no more).
    async fn dead_letters(&self, queue: &QueueName, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut letters = Vec::new();
        let mut query = DeadLetterQuery::new(limit.clamp(1, DeadLetterQuery::MAX_LIMIT));
        while letters.len() < limit {
            query.limit = (limit - letters.len()).min(DeadLetterQuery::MAX_LIMIT);
            let page = self.dead_letter_page(queue, &query).await?;
            letters.extend(page.letters);
            match page.next {
                Some(next) => query = query.after(next),
                None => break,
            }
        }
        Ok(letters)
    }

    /// Move dead letters back to `queue` with a fresh attempt count. Returns
    /// how many moved.
    async fn redrive(&self, queue: &QueueName, which: Redrive) -> Result<u64>;

    /// Check the broker answers; bounded in time, never an error.
    async fn health(&self) -> HealthStatus;

    /// The queues this backend holds, sorted by name: every queue a
    /// producer, consumer or `ensure_queue` made and `delete_queue` did
    /// not remove (companion queues, such as dead letters, are not
    /// listed). Tools discover queues with it.
    ///
    /// The default refuses with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), for a
    /// backend that cannot list.
    async fn queues(&self) -> Result<Vec<QueueName>> {
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            "this backend cannot list its queues",
        ))
    }

    /// Pause `queue`: its consumers, in every process, receive nothing
    /// until [`resume`](Admin::resume); sends still succeed and deliveries
    /// already out settle as usual. Pausing a paused queue does nothing.
    ///
    /// The default refuses with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), as a
    /// backend whose capability table says `pause: unsupported` does.
    async fn pause(&self, queue: &QueueName) -> Result<()> {
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            format!("this backend cannot pause queues ({queue})"),
        ))
    }

    /// Resume a paused `queue`: waiting consumers get its messages at once.
    /// Resuming a queue that is not paused does nothing.
    async fn resume(&self, queue: &QueueName) -> Result<()> {
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            format!("this backend cannot pause queues ({queue})"),
        ))
    }

    /// Add `worker` to the worker registry, or refresh it (same id): it is
    /// listed until [`deregister_worker`](Admin::deregister_worker) or
    /// until [`WorkerInfo::ttl`] passes without another call. Workers call
    /// it on every heartbeat.
    ///
    /// The default refuses with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), as a
    /// backend whose table says `worker registry: unsupported` does.
    async fn register_worker(&self, worker: &WorkerInfo) -> Result<()> {
        Err(crate::Error::unsupported(format!(
            "this backend holds no worker registry (worker {})",
            worker.id
        )))
    }

    /// Remove worker `id` from the registry (a worker stopping); an
    /// unknown id does nothing.
    async fn deregister_worker(&self, id: &str) -> Result<()> {
        Err(crate::Error::unsupported(format!(
            "this backend holds no worker registry (worker {id})"
        )))
    }

    /// The live workers of every queue, sorted by queue, then host, pid
    /// and id; workers whose heartbeat is stale are dropped.
    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        Err(crate::Error::unsupported(
            "this backend holds no worker registry",
        ))
    }
}

/// A received message with its lease.
///
/// Settle it with exactly one of [`ack`](Delivery::ack),
/// [`nack`](Delivery::nack) or [`dead_letter`](Delivery::dead_letter); each
/// consumes the delivery, so settling twice does not compile. On failure
/// the delivery comes back inside the [`DeliveryError`] so the caller can try
/// again. A delivery dropped unsettled returns to the queue when its lease
/// expires.
///
/// ```compile_fail
/// # async fn f(delivery: queue_core::Delivery) {
/// delivery.ack().await.unwrap();
/// delivery.ack().await.unwrap(); // use of moved value
/// # }
/// ```
pub struct Delivery {
    queue: QueueName,
    message: Message,
    lease_deadline: SystemTime,
    acker: Box<dyn Acker>,
}

impl Delivery {
    /// A delivery of `message` from `queue`, leased until `lease_deadline`.
    /// Called by backends.
    pub fn new(
        queue: QueueName,
        message: Message,
        lease_deadline: SystemTime,
        acker: Box<dyn Acker>,
    ) -> Self {
        Delivery {
            queue,
            message,
            lease_deadline,
            acker,
        }
    }

    /// Its parts: the queue, the message, the lease's end and the acker.
    pub(crate) fn into_parts(self) -> (QueueName, Message, SystemTime, Box<dyn Acker>) {
        (self.queue, self.message, self.lease_deadline, self.acker)
    }

    /// The queue it came from.
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// Which delivery of the message this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.message.attempt
    }

    /// When the lease runs out and the message may go to another consumer.
    pub fn lease_deadline(&self) -> SystemTime {
        self.lease_deadline
    }

    /// The backend side of this delivery (for backends batching settles).
    pub fn acker(&self) -> &dyn Acker {
        &*self.acker
    }

    /// Done: the message is never delivered again.
    pub async fn ack(self) -> Result<(), DeliveryError> {
        match self.acker.ack(&self.message).await {
            Ok(()) => Ok(()),
            Err(error) => Err(DeliveryError::new(error, self)),
        }
    }

    /// Deliver again after `delay` (zero for now) with `attempt + 1`; on the
    /// last attempt the message is dead-lettered with reason `max_attempts`.
    pub async fn nack(self, delay: Duration) -> Result<(), DeliveryError> {
        self.nack_inner(delay, None).await
    }

    /// [`nack`](Delivery::nack), recording the error of this attempt so it
    /// shows in the next delivery's `last_error` and in the dead letter
    /// (cut to [`MAX_ERROR_TEXT`](crate::error::MAX_ERROR_TEXT) bytes).
    pub async fn nack_with_error(
        self,
        delay: Duration,
        error: impl fmt::Display,
    ) -> Result<(), DeliveryError> {
        let error = error.to_string();
        self.nack_inner(delay, Some(&error)).await
    }

    /// [`nack`](Delivery::nack) without spending an attempt: the message
    /// is delivered again at once with the same `attempt`. For deliveries
    /// that never ran (buffered, or handed back at shutdown).
    pub async fn release(self) -> Result<(), DeliveryError> {
        match self.acker.release(&self.message).await {
            Ok(()) => Ok(()),
            Err(error) => Err(DeliveryError::new(error, self)),
        }
    }

    async fn nack_inner(self, delay: Duration, error: Option<&str>) -> Result<(), DeliveryError> {
        if delay > crate::message::MAX_DELAY {
            let error = Error::new(
                crate::ErrorKind::InvalidInput,
                format!(
                    "nack delay of {delay:?} is longer than the maximum of {} days",
                    crate::message::MAX_DELAY.as_secs() / 86_400
                ),
            );
            return Err(DeliveryError::new(error, self));
        }
        // The error travels with every redelivery: keep it to a few KiB.
        let error = error.map(cap_error_text);
        let error = error.as_deref();
        match self.acker.nack(&self.message, delay, error).await {
            Ok(()) => Ok(()),
            Err(e) => Err(DeliveryError::new(e, self)),
        }
    }

    /// Keep the message invisible for `lease` from now.
    pub async fn extend(mut self, lease: Duration) -> Result<Delivery, DeliveryError> {
        match self.acker.extend(&self.message, lease).await {
            Ok(deadline) => {
                self.lease_deadline = deadline;
                Ok(self)
            }
            Err(error) => Err(DeliveryError::new(error, self)),
        }
    }

    /// Move the message to the dead-letter queue now. A `Rejected` detail
    /// is cut to [`MAX_ERROR_TEXT`](crate::error::MAX_ERROR_TEXT) bytes.
    pub async fn dead_letter(self, reason: DeadLetterReason) -> Result<(), DeliveryError> {
        let reason = match reason {
            DeadLetterReason::Rejected(detail) => {
                DeadLetterReason::Rejected(cap_error_text(&detail).into_owned())
            }
            other => other,
        };
        match self.acker.dead_letter(&self.message, &reason).await {
            Ok(()) => Ok(()),
            Err(error) => Err(DeliveryError::new(error, self)),
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue)
            .field("id", &self.message.id)
            .field("attempt", &self.message.attempt)
            .field("lease_deadline", &self.lease_deadline)
            .finish_non_exhaustive()
    }
}

/// A failed settle call: the error, and the delivery to try again with.
#[derive(Debug)]
pub struct DeliveryError {
    /// What went wrong.
    pub error: Error,
    /// The delivery, still unsettled.
    pub delivery: Box<Delivery>,
}

impl DeliveryError {
    /// `delivery` could not be settled because of `error`.
    pub fn new(error: Error, delivery: Delivery) -> Self {
        DeliveryError {
            error,
            delivery: Box::new(delivery),
        }
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "settling message {}: {}",
            self.delivery.message.id, self.error
        )
    }
}

impl std::error::Error for DeliveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<DeliveryError> for Error {
    fn from(e: DeliveryError) -> Self {
        e.error
    }
}

/// Conveniences for every [`Producer`].
#[async_trait]
pub trait ProducerExt: Producer {
    /// Send a payload with default options.
    async fn send_bytes(
        &self,
        payload: impl Into<Bytes> + Send + 'async_trait,
    ) -> Result<MessageId> {
        self.send(Message::new(payload)).await
    }

    /// Send a value encoded as JSON.
    async fn send_json<T: serde::Serialize + Sync>(&self, value: &T) -> Result<MessageId> {
        let payload = serde_json::to_vec(value).map_err(|e| {
            Error::new(
                crate::ErrorKind::InvalidInput,
                "value does not encode as JSON",
            )
            .with_source(e)
        })?;
        self.send(Message::new(payload)).await
    }
}

impl<P: Producer + ?Sized> ProducerExt for P {}

macro_rules! forward_pointer {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        impl<T: Backend + ?Sized> Backend for $ptr<T> {
            fn capabilities(&self) -> &Capabilities {
                (**self).capabilities()
            }
            async fn producer(&self, queue: &QueueName) -> Result<Box<dyn Producer>> {
                (**self).producer(queue).await
            }
            async fn consumer(
                &self,
                queue: &QueueName,
                options: ConsumerOptions,
            ) -> Result<Box<dyn Consumer>> {
                (**self).consumer(queue, options).await
            }
            fn admin(&self) -> &dyn Admin {
                (**self).admin()
            }
            async fn close(&self) -> Result<()> {
                (**self).close().await
            }
            fn default_job_store(&self) -> Option<Arc<dyn crate::store::JobStore>> {
                (**self).default_job_store()
            }
            fn coordination(&self) -> Option<Arc<dyn crate::coordination::Coordination>> {
                (**self).coordination()
            }
        }

        #[async_trait]
        impl<T: Producer + ?Sized> Producer for $ptr<T> {
            fn queue(&self) -> &QueueName {
                (**self).queue()
            }
            async fn send(&self, message: Message) -> Result<MessageId> {
                (**self).send(message).await
            }
            async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<MessageId>, BatchError> {
                (**self).send_batch(messages).await
            }
        }

        #[async_trait]
        impl<T: Consumer + ?Sized> Consumer for $ptr<T> {
            fn queue(&self) -> &QueueName {
                (**self).queue()
            }
            async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
                (**self).receive(max, wait).await
            }
            async fn ack_batch(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<DeliveryError>> {
                (**self).ack_batch(deliveries).await
            }
            fn fuses_ack_and_receive(&self) -> bool {
                (**self).fuses_ack_and_receive()
            }
            async fn ack_and_receive(
                &self,
                acks: Vec<Delivery>,
                max: usize,
                wait: Duration,
            ) -> AckAndReceive {
                (**self).ack_and_receive(acks, max, wait).await
            }
            fn stop_waiting(&self) {
                (**self).stop_waiting()
            }
            async fn close(&self) {
                (**self).close().await
            }
        }
    )*};
}

forward_pointer!(Box, Arc);
