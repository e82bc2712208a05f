//! The pump: one task per consumer that drains the lapin stream into the
//! buffer, gives back deliveries whose lease ran out, stops consuming
//! while idle, widens the prefetch window, and opens the channel again
//! (with backoff) when it closes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use queue_core::{Error, ErrorKind, Result};

use super::state::{Buffered, ConsumerState};
use crate::wire::{self, Incoming};

/// Move deliveries into the buffer and give back expired leases; open the
/// channel again (with backoff) when it closes. Starts from the
/// subscription `open` made.
pub(super) async fn pump(state: Arc<ConsumerState>, first: (u64, lapin::Consumer)) {
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
    /// Give back every delivery whose lease ran out: a copy with
    /// `attempt + 1` (or its dead letter), then the original acked.
    pub(super) async fn expire_due(&self) {
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
            let (copy, dead) = match self
                .nacked(&lease.message, Duration::ZERO, Some(error))
                .await
            {
                Ok(nacked) => nacked,
                Err(_) => {
                    lease.deadline = Instant::now() + Duration::from_secs(1);
                    self.restore(session, tag, lease);
                    continue;
                }
            };
            let mut retry = lease.clone();
            retry.deadline = Instant::now() + Duration::from_secs(1);
            // On failure the lease is back with a short deadline: tried again.
            if self
                .replace(&channel, session, tag, retry, copy)
                .await
                .is_ok()
            {
                self.count_nack(dead);
            }
        }
    }

    /// When an idle consumer stops: deliveries wait in the buffer, no
    /// `receive` is waiting, and none came for [`IDLE`].
    pub(super) fn idle_deadline(&self, consuming: bool) -> Option<Instant> {
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
    pub(super) async fn hand_back_buffer(&self, channel: &Channel) -> Result<()> {
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
                            self.shared
                                .prepare(&self.queue, std::slice::from_ref(&message))
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

    /// Start a `basic.consume` on `channel` with prefetch `window` (a
    /// per-consumer prefetch applies to consumers started after it).
    pub(super) async fn consume(&self, channel: &Channel, window: u16) -> Result<lapin::Consumer> {
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
    pub(super) async fn subscribe(self: &Arc<Self>) -> Result<(u64, lapin::Consumer)> {
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

    /// Consume again with prefetch `window` and cancel the consumer
    /// `old`: RabbitMQ applies a per-consumer prefetch to new consumers
    /// only. The old consumer's unacked deliveries stay with the channel.
    pub(super) async fn rewindow(
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
