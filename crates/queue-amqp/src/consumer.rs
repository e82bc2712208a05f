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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use queue_core::traits::split_own;
use queue_core::{
    Acker, Consumer, ConsumerOptions, DeadLetterReason, Delivery, DeliveryError, Error, ErrorKind,
    Message, QueueName, Result, StopFlag,
};
use tokio::sync::Notify;

use crate::backend::Shared;
use crate::link::Outgoing;
use crate::producer::prepare;
use crate::wire::{self, Incoming};

/// Receives from one RabbitMQ queue. Dropping it closes its channel: the
/// broker hands its unsettled deliveries to other consumers.
#[derive(Debug)]
pub struct AmqpConsumer {
    state: Arc<ConsumerState>,
    pump: tokio::task::JoinHandle<()>,
    /// Set by [`Consumer::stop_waiting`]: a wait ends at once.
    stop: StopFlag,
}

/// A delivery pushed by the broker, not yet handed out.
#[derive(Debug)]
struct Buffered {
    tag: u64,
    body: Vec<u8>,
    properties: BasicProperties,
    arrived: Instant,
}

/// A delivery handed out: its message and local lease.
#[derive(Debug, Clone)]
struct Lease {
    message: Message,
    deadline: Instant,
    /// When the broker delivered it: the consumer timeout counts from here.
    arrived: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    /// Counts the channels this consumer opened; a delivery remembers its own.
    session: u64,
    channel: Option<Channel>,
    buffer: VecDeque<Buffered>,
    leases: BTreeMap<u64, Lease>,
    /// Deliveries being settled by a publish then an ack (nack, dead
    /// letter, expiry): still unacked on the channel.
    settling: BTreeSet<u64>,
    /// Why the channel is gone, told to every `receive` until it is back.
    error: Option<Error>,
    closed: bool,
    /// The prefetch of the live `basic.consume`: how many deliveries the
    /// broker leaves unacked with this consumer.
    window: u16,
    /// A new window the pump is asked to set (by consuming again with it).
    want_window: Option<u16>,
    /// Every delivery tag up to this one reached the buffer (tags count
    /// from 1 per channel); `seen_above` holds the ones seen past a gap.
    seen_upto: u64,
    seen_above: BTreeSet<u64>,
    /// `receive` calls waiting now.
    waiting: usize,
    /// When the last `receive` call ended.
    last_receive: Option<Instant>,
}

impl Inner {
    /// Start a new session on `channel` (or none): every delivery of the
    /// old channel is void, the broker hands it out again.
    fn new_session(&mut self, channel: Option<Channel>) {
        self.session += 1;
        self.channel = channel;
        self.buffer.clear();
        self.leases.clear();
        self.settling.clear();
        self.seen_upto = 0;
        self.seen_above.clear();
    }

    /// Note that the delivery `tag` reached the buffer.
    fn saw(&mut self, tag: u64) {
        if tag == self.seen_upto + 1 {
            self.seen_upto = tag;
            while self.seen_above.remove(&(self.seen_upto + 1)) {
                self.seen_upto += 1;
            }
        } else if tag > self.seen_upto {
            self.seen_above.insert(tag);
        }
    }
}

/// What a consumer and its deliveries share.
#[derive(Debug)]
pub(crate) struct ConsumerState {
    shared: Arc<Shared>,
    queue: QueueName,
    lease: Duration,
    inner: std::sync::Mutex<Inner>,
    /// Deliveries arrived, or the channel changed.
    arrived: Notify,
    /// A lease was added or moved: the pump looks at the deadlines again.
    wake: Notify,
}

/// The settle side of one delivery.
#[derive(Debug)]
pub(crate) struct AmqpAcker {
    state: Arc<ConsumerState>,
    session: u64,
    tag: u64,
}

fn lease_lost(queue: &QueueName, why: &str) -> Error {
    Error::new(
        ErrorKind::LeaseLost,
        format!("queue {queue:?}: the delivery's lease is lost ({why}); the broker hands the message out again"),
    )
}

impl ConsumerState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts for stats: (buffered, in flight).
    pub(crate) fn counts(&self) -> (u64, u64) {
        let inner = self.lock();
        (
            inner.buffer.len() as u64,
            (inner.leases.len() + inner.settling.len()) as u64,
        )
    }

    /// Take the lease of `tag` for settling: the channel to settle on.
    fn take(&self, session: u64, tag: u64) -> Result<(Channel, Lease)> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Error::closed("the amqp consumer"));
        }
        let channel = match &inner.channel {
            Some(channel) if inner.session == session => channel.clone(),
            _ => return Err(lease_lost(&self.queue, "the channel it came on closed")),
        };
        match inner.leases.get(&tag) {
            None => Err(lease_lost(
                &self.queue,
                "its lease ran out and the message was handed back",
            )),
            Some(lease) if lease.deadline <= Instant::now() => {
                drop(inner);
                self.wake.notify_one();
                Err(lease_lost(&self.queue, "its lease ran out"))
            }
            Some(_) => {
                let lease = inner.leases.remove(&tag).expect("checked above");
                inner.settling.insert(tag);
                Ok((channel, lease))
            }
        }
    }

    /// A settle failed before the broker saw it: the lease holds again.
    fn restore(&self, session: u64, tag: u64, lease: Lease) {
        let mut inner = self.lock();
        inner.settling.remove(&tag);
        if inner.session == session && inner.channel.is_some() {
            inner.leases.insert(tag, lease);
        }
    }

    fn finish(&self, tag: u64) {
        self.lock().settling.remove(&tag);
    }

    async fn ack_tag(&self, channel: &Channel, tag: u64, multiple: bool) -> Result<()> {
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
    async fn sync(&self, channel: &Channel) -> Result<()> {
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

    /// Ask the pump for a wider or narrower prefetch window so that `held`
    /// handed-out deliveries never starve `receive`: the window is what
    /// this consumer holds plus the configured prefetch.
    fn adjust_window(&self) {
        let prefetch = self.shared.settings().prefetch;
        let mut inner = self.lock();
        if inner.channel.is_none() {
            return;
        }
        let held = (inner.leases.len() + inner.settling.len()).min(usize::from(u16::MAX));
        let held = held as u16;
        let window = inner.want_window.unwrap_or(inner.window);
        let want = if held >= window.saturating_sub(prefetch / 2) {
            Some(held.saturating_add(prefetch))
        } else if held == 0 && inner.buffer.is_empty() && window > prefetch {
            Some(prefetch)
        } else {
            None
        };
        if let Some(want) = want.filter(|&w| w != window) {
            inner.want_window = Some(want);
            drop(inner);
            self.wake.notify_one();
        }
    }

    /// Put `copy` on the broker (confirmed), then ack the original `tag`:
    /// the message is never lost; a crash in between delivers it twice.
    async fn replace(
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

    /// The copy that retries `message` after `delay`, or its dead letter
    /// when this was its last attempt.
    async fn retry_copy(
        &self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<Vec<Outgoing>> {
        let mut copy = message.clone();
        if let Some(error) = last_error {
            copy.last_error = Some(error.to_owned());
        }
        if message.is_last_attempt() {
            let attempts = copy.attempt;
            return Ok(vec![wire::dead_letter(
                &self.queue,
                &copy,
                &DeadLetterReason::MaxAttempts,
                attempts,
            )]);
        }
        copy.attempt = copy.attempt.saturating_add(1);
        copy.not_before = (delay > Duration::ZERO).then(|| SystemTime::now() + delay);
        prepare(&self.shared, &self.queue, std::slice::from_ref(&copy)).await
    }

    /// Give back every delivery whose lease ran out: a copy with
    /// `attempt + 1` (or its dead letter), then the original acked.
    async fn expire_due(&self) {
        let now = Instant::now();
        let (session, channel, due) = {
            let mut inner = self.lock();
            let Some(channel) = inner.channel.clone() else {
                return;
            };
            let tags: Vec<u64> = inner
                .leases
                .iter()
                .filter(|(_, lease)| lease.deadline <= now)
                .map(|(&tag, _)| tag)
                .collect();
            let mut due = Vec::with_capacity(tags.len());
            for tag in tags {
                if let Some(lease) = inner.leases.remove(&tag) {
                    inner.settling.insert(tag);
                    due.push((tag, lease));
                }
            }
            (inner.session, channel, due)
        };
        for (tag, mut lease) in due {
            let error = "lease expired before the delivery was settled";
            let copy = match self
                .retry_copy(&lease.message, Duration::ZERO, Some(error))
                .await
            {
                Ok(copy) => copy,
                Err(_) => {
                    lease.deadline = Instant::now() + Duration::from_secs(1);
                    self.restore(session, tag, lease);
                    continue;
                }
            };
            let mut retry = lease.clone();
            retry.deadline = Instant::now() + Duration::from_secs(1);
            // On failure the lease is back with a short deadline: tried again.
            let _ = self.replace(&channel, session, tag, retry, copy).await;
            self.shared
                .counters(&self.queue)
                .retried
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// When an idle consumer stops: deliveries wait in the buffer, no
    /// `receive` is waiting, and none came for [`IDLE`].
    fn idle_deadline(&self, consuming: bool) -> Option<Instant> {
        let inner = self.lock();
        if !consuming || inner.waiting > 0 || inner.buffer.is_empty() {
            return None;
        }
        let since = inner.last_receive.unwrap_or_else(Instant::now).max(
            inner
                .buffer
                .front()
                .map_or_else(Instant::now, |b| b.arrived),
        );
        Some(since + IDLE)
    }

    /// Give the buffered deliveries back to the broker (a stopped idle
    /// consumer). Classic queues put them back where they were
    /// (`basic.reject` with requeue); quorum queues would count that as a
    /// delivery, so there a copy with the same attempt is published and
    /// the original acked.
    async fn hand_back_buffer(&self, channel: &Channel) -> Result<()> {
        let buffered: Vec<Buffered> = {
            let mut inner = self.lock();
            let taken: Vec<Buffered> = inner.buffer.drain(..).collect();
            for b in &taken {
                inner.settling.insert(b.tag);
            }
            taken
        };
        if buffered.is_empty() {
            return Ok(());
        }
        let link = &self.shared.link;
        let result = async {
            match self.shared.queue_type() {
                crate::config::QueueType::Classic => {
                    for b in &buffered {
                        link.call(
                            "handing a delivery back",
                            channel.basic_reject(
                                b.tag,
                                lapin::options::BasicRejectOptions { requeue: true },
                            ),
                        )
                        .await?;
                    }
                }
                crate::config::QueueType::Quorum => {
                    let mut copies = Vec::with_capacity(buffered.len());
                    for b in &buffered {
                        let message = match wire::incoming(b.body.clone(), &b.properties, true) {
                            Incoming::Message(m) | Incoming::Undecodable(m, _) => m,
                        };
                        copies.extend(
                            prepare(&self.shared, &self.queue, std::slice::from_ref(&message))
                                .await?,
                        );
                    }
                    link.publish(&copies).await.map_err(|e| e.error)?;
                    for b in &buffered {
                        self.ack_tag(channel, b.tag, false).await?;
                    }
                }
            }
            self.sync(channel).await
        }
        .await;
        let mut inner = self.lock();
        for b in &buffered {
            inner.settling.remove(&b.tag);
        }
        result
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.lock().leases.values().map(|l| l.deadline).min()
    }

    /// Start a `basic.consume` on `channel` with prefetch `window` (a
    /// per-consumer prefetch applies to consumers started after it).
    async fn consume(&self, channel: &Channel, window: u16) -> Result<lapin::Consumer> {
        let link = &self.shared.link;
        link.call(
            "setting the prefetch",
            channel.basic_qos(window, BasicQosOptions::default()),
        )
        .await?;
        link.call(
            &format!("consuming from queue {:?}", self.queue.as_str()),
            channel.basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
    }

    /// Open a channel with prefetch and start consuming.
    async fn subscribe(self: &Arc<Self>) -> Result<(u64, lapin::Consumer)> {
        let link = &self.shared.link;
        let (_, channel) = link.channel().await?;
        let prefetch = self.shared.settings().prefetch;
        let consumer = self.consume(&channel, prefetch).await?;
        let mut inner = self.lock();
        if inner.closed {
            return Err(Error::closed("the amqp consumer"));
        }
        inner.new_session(Some(channel));
        inner.error = None;
        inner.window = prefetch;
        inner.want_window = None;
        Ok((inner.session, consumer))
    }

    /// The channel of `session` is gone: its deliveries go back to the broker.
    fn lost(&self, session: u64, error: Error) {
        let mut inner = self.lock();
        if inner.session == session {
            inner.new_session(None);
        }
        inner.error = Some(error);
        drop(inner);
        self.arrived.notify_waiters();
    }

    fn fail(&self, error: Error) {
        self.lock().error = Some(error);
        self.arrived.notify_waiters();
    }
}

/// Move deliveries into the buffer and give back expired leases; open the
/// channel again (with backoff) when it closes. Starts from the
/// subscription `open` made.
async fn pump(state: Arc<ConsumerState>, first: (u64, lapin::Consumer)) {
    let mut next = Some(first);
    let mut backoff = Duration::from_millis(50);
    loop {
        let (session, stream) = match next.take() {
            Some(subscribed) => subscribed,
            None => match state.subscribe().await {
                Ok(subscribed) => {
                    backoff = Duration::from_millis(50);
                    subscribed
                }
                Err(e) => {
                    if state.lock().closed {
                        return;
                    }
                    state.fail(e);
                    // Nothing to await: the broker is away. Try again later.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        let why = drain(&state, session, stream).await;
        state.lost(session, why);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

impl AmqpConsumer {
    pub(crate) async fn open(
        shared: Arc<Shared>,
        queue: &QueueName,
        options: ConsumerOptions,
    ) -> Result<Self> {
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
        let pump = tokio::spawn(pump(state.clone(), (session, stream)));
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

/// What the pump hears from one `basic.consume`: a delivery, or its end.
/// Each value is moved once, from the stream into the buffer: boxing the
/// large variant would cost an allocation per delivery for nothing.
#[allow(clippy::large_enum_variant)]
enum Event {
    Delivery(lapin::Result<lapin::message::Delivery>),
    Ended(String),
}

fn tagged(stream: lapin::Consumer) -> futures_util::stream::BoxStream<'static, Event> {
    let tag = stream.tag().to_string();
    stream
        .map(Event::Delivery)
        .chain(futures_util::stream::once(async move { Event::Ended(tag) }))
        .boxed()
}

/// How long buffered deliveries wait for a `receive` before an idle
/// consumer stops consuming and hands them back to the broker, so a
/// consumer nobody reads does not sit on messages other consumers wait for.
const IDLE: Duration = Duration::from_secs(1);

/// Run one subscription until its channel ends; returns why it ended.
///
/// `basic.consume` calls are read one after the other, oldest first
/// (delivery tags follow the queue's order): a consumer replaced by a
/// wider window, or stopped while idle, is read to its end before the
/// next.
async fn drain(state: &Arc<ConsumerState>, session: u64, stream: lapin::Consumer) -> Error {
    let Some(channel) = state.lock().channel.clone() else {
        return Error::new(ErrorKind::Connection, "the consumer's channel closed");
    };
    let heartbeat = state.shared.settings().heartbeat;
    let mut next_check = tokio::time::Instant::now() + heartbeat;
    let mut current: Option<String> = Some(stream.tag().to_string());
    let mut streams: VecDeque<futures_util::stream::BoxStream<'static, Event>> = VecDeque::new();
    streams.push_back(tagged(stream));
    let ended = |state: &ConsumerState| {
        Error::new(
            ErrorKind::Connection,
            format!(
                "amqp at {}: the broker ended the consumer of queue {:?} (queue deleted, or the channel closed)",
                state.shared.link.address(),
                state.queue.as_str()
            ),
        )
    };
    loop {
        let deadline = state.next_deadline();
        let expiry = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let idle_at = state.idle_deadline(current.is_some());
        let idle = async {
            match idle_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        // lapin tells a dead connection (missed heartbeats) through the
        // channel's status, not always through the consumer stream: look
        // at it once a heartbeat interval.
        let watchdog = tokio::time::sleep_until(next_check);
        let next = async {
            match streams.front_mut() {
                Some(stream) => stream.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = next => match event {
                Some(Event::Delivery(Ok(delivery))) => {
                    let mut inner = state.lock();
                    if inner.session != session {
                        continue;
                    }
                    inner.saw(delivery.delivery_tag);
                    inner.buffer.push_back(Buffered {
                        tag: delivery.delivery_tag,
                        body: delivery.data,
                        properties: delivery.properties,
                        arrived: Instant::now(),
                    });
                    drop(inner);
                    state.arrived.notify_waiters();
                }
                Some(Event::Delivery(Err(e))) => {
                    return crate::error::classify(e, "consuming", state.shared.link.address());
                }
                Some(Event::Ended(tag)) if current.as_deref() != Some(tag.as_str()) => {
                    streams.pop_front();
                    if current.is_none() && streams.is_empty() {
                        // Stopped while idle: every delivery it got is here.
                        if let Err(e) = state.hand_back_buffer(&channel).await {
                            return e;
                        }
                    }
                }
                Some(Event::Ended(_)) | None => return ended(state),
            },
            () = watchdog => {
                next_check = tokio::time::Instant::now() + heartbeat;
                if !channel.status().connected() {
                    return Error::new(
                        ErrorKind::Connection,
                        format!(
                            "amqp at {}: the connection of the consumer of queue {:?} is lost",
                            state.shared.link.address(),
                            state.queue.as_str()
                        ),
                    );
                }
            }
            () = expiry => state.expire_due().await,
            () = idle => {
                if let Some(tag) = current.take() {
                    let cancel = channel.basic_cancel(tag.as_str().into(), lapin::options::BasicCancelOptions::default());
                    if let Err(e) = state.shared.link.call("stopping an idle consumer", cancel).await {
                        return e;
                    }
                }
            }
            () = state.wake.notified() => {
                let want = {
                    let mut inner = state.lock();
                    match inner.want_window.take() {
                        Some(window) => Some(window),
                        None if current.is_none() && inner.waiting > 0 => Some(inner.window),
                        None => None,
                    }
                };
                if let Some(window) = want {
                    match state.rewindow(&channel, window, current.as_deref()).await {
                        Ok(consumer) => {
                            current = Some(consumer.tag().to_string());
                            streams.push_back(tagged(consumer));
                        }
                        Err(e) => return e,
                    }
                }
            }
        }
    }
}

impl ConsumerState {
    /// Consume again with prefetch `window` and cancel the consumer
    /// `old`: RabbitMQ applies a per-consumer prefetch to new consumers
    /// only. The old consumer's unacked deliveries stay with the channel.
    async fn rewindow(
        &self,
        channel: &Channel,
        window: u16,
        old: Option<&str>,
    ) -> Result<lapin::Consumer> {
        let link = &self.shared.link;
        let consumer = self.consume(channel, window).await?;
        if let Some(old) = old {
            link.call(
                "cancelling the previous consumer",
                channel.basic_cancel(old.into(), lapin::options::BasicCancelOptions::default()),
            )
            .await?;
        }
        self.lock().window = window;
        Ok(consumer)
    }
}

/// Counts a `receive` call as waiting while it runs; a stopped consumer
/// starts consuming again when one begins.
struct Waiting<'a>(&'a ConsumerState);

impl<'a> Waiting<'a> {
    fn new(state: &'a ConsumerState) -> Self {
        let mut inner = state.lock();
        inner.waiting += 1;
        drop(inner);
        state.wake.notify_one();
        Waiting(state)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.waiting -= 1;
        inner.last_receive = Some(Instant::now());
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
                            prepare(shared, &self.state.queue, std::slice::from_ref(&message)).await
                        }
                        Some(reason) => {
                            let attempts = match reason {
                                DeadLetterReason::Expired => message.attempt.saturating_sub(1),
                                _ => message.attempt,
                            };
                            if *reason == DeadLetterReason::Expired {
                                shared
                                    .counters(&self.state.queue)
                                    .expired
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            shared
                                .counters(&self.state.queue)
                                .dead_lettered
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                    Ok(()) => {
                        state
                            .shared
                            .counters(&state.queue)
                            .acked
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => failed.push(DeliveryError::new(e, delivery)),
                }
            }
        }
        queue_core::traits::ack_each(foreign, failed).await
    }
}

impl AmqpAcker {
    fn counters(&self) -> Arc<queue_core::ProcessTotals> {
        self.state.shared.counters(&self.state.queue)
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
        self.counters()
            .acked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn nack(
        &self,
        message: &Message,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<()> {
        let (channel, lease) = self.state.take(self.session, self.tag)?;
        let copy = match self.state.retry_copy(message, delay, last_error).await {
            Ok(copy) => copy,
            Err(e) => {
                self.state.restore(self.session, self.tag, lease);
                return Err(e);
            }
        };
        let last = message.is_last_attempt();
        self.state
            .replace(&channel, self.session, self.tag, lease, copy)
            .await?;
        let counters = self.counters();
        if last {
            counters
                .dead_lettered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            counters
                .retried
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
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
        self.counters()
            .dead_lettered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

impl ConsumerState {
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
