//! What a consumer and its deliveries share: the buffer of deliveries the
//! broker pushed, the leases of the ones handed out, the channel's session,
//! all under one lock. Nothing here talks to the broker.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::{BasicProperties, Channel};
use queue_core::stats::Counter;
use queue_core::{Error, ErrorKind, Message, QueueName, Result};
use tokio::sync::Notify;

use crate::shared::Shared;

/// A delivery pushed by the broker, not yet handed out.
#[derive(Debug)]
pub(super) struct Buffered {
    pub(super) tag: u64,
    pub(super) body: Vec<u8>,
    pub(super) properties: BasicProperties,
    pub(super) arrived: Instant,
}

/// A delivery handed out: its message and local lease.
#[derive(Debug, Clone)]
pub(super) struct Lease {
    pub(super) message: Message,
    pub(super) deadline: Instant,
    /// When the broker delivered it: the consumer timeout counts from here.
    pub(super) arrived: Instant,
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    /// Counts the channels this consumer opened; a delivery remembers its own.
    pub(super) session: u64,
    pub(super) channel: Option<Channel>,
    pub(super) buffer: VecDeque<Buffered>,
    pub(super) leases: BTreeMap<u64, Lease>,
    /// Deliveries being settled by a publish then an ack (nack, dead
    /// letter, expiry): still unacked on the channel.
    pub(super) settling: BTreeSet<u64>,
    /// Why the channel is gone, told to every `receive` until it is back.
    pub(super) error: Option<Error>,
    pub(super) closed: bool,
    /// The prefetch of the live `basic.consume`: how many deliveries the
    /// broker leaves unacked with this consumer.
    pub(super) window: u16,
    /// A new window the pump is asked to set (by consuming again with it).
    pub(super) want_window: Option<u16>,
    /// Every delivery tag up to this one reached the buffer (tags count
    /// from 1 per channel); `seen_above` holds the ones seen past a gap.
    pub(super) seen_upto: u64,
    pub(super) seen_above: BTreeSet<u64>,
    /// `receive` calls waiting now.
    pub(super) waiting: usize,
    /// When the last `receive` call ended.
    pub(super) last_receive: Option<Instant>,
}

impl Inner {
    /// Start a new session on `channel` (or none): every delivery of the
    /// old channel is void, the broker hands it out again.
    pub(super) fn new_session(&mut self, channel: Option<Channel>) {
        self.session += 1;
        self.channel = channel;
        self.buffer.clear();
        self.leases.clear();
        self.settling.clear();
        self.seen_upto = 0;
        self.seen_above.clear();
    }

    /// Note that the delivery `tag` reached the buffer.
    pub(super) fn saw(&mut self, tag: u64) {
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
    pub(super) shared: Arc<Shared>,
    pub(super) queue: QueueName,
    pub(super) lease: Duration,
    pub(super) inner: std::sync::Mutex<Inner>,
    /// Deliveries arrived, or the channel changed.
    pub(super) arrived: Notify,
    /// A lease was added or moved: the pump looks at the deadlines again.
    pub(super) wake: Notify,
}

pub(super) fn lease_lost(queue: &QueueName, why: &str) -> Error {
    Error::new(
        ErrorKind::LeaseLost,
        format!("queue {queue:?}: the delivery's lease is lost ({why}); the broker hands the message out again"),
    )
}

impl ConsumerState {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count one more of `counter` in this process's totals of the queue.
    pub(super) fn count(&self, counter: Counter) {
        self.shared.counters(&self.queue).add(counter, 1);
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
    pub(super) fn take(&self, session: u64, tag: u64) -> Result<(Channel, Lease)> {
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
    pub(super) fn restore(&self, session: u64, tag: u64, lease: Lease) {
        let mut inner = self.lock();
        inner.settling.remove(&tag);
        if inner.session == session && inner.channel.is_some() {
            inner.leases.insert(tag, lease);
        }
    }

    pub(super) fn finish(&self, tag: u64) {
        self.lock().settling.remove(&tag);
    }

    /// Ask the pump for a wider or narrower prefetch window so that `held`
    /// handed-out deliveries never starve `receive`: the window is what
    /// this consumer holds plus the configured prefetch.
    pub(super) fn adjust_window(&self) {
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

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.lock().leases.values().map(|l| l.deadline).min()
    }

    /// The channel of `session` is gone: its deliveries go back to the broker.
    pub(super) fn lost(&self, session: u64, error: Error) {
        let mut inner = self.lock();
        if inner.session == session {
            inner.new_session(None);
        }
        inner.error = Some(error);
        drop(inner);
        self.arrived.notify_waiters();
    }

    pub(super) fn fail(&self, error: Error) {
        self.lock().error = Some(error);
        self.arrived.notify_waiters();
    }
}

/// Counts a `receive` call as waiting while it runs; a stopped consumer
/// starts consuming again when one begins.
pub(super) struct Waiting<'a>(&'a ConsumerState);

impl<'a> Waiting<'a> {
    pub(super) fn new(state: &'a ConsumerState) -> Self {
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
