//! Receiving from a grouped queue: one reader per group queue keeps a
//! few deliveries ready, and `receive` hands them out one group at a time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{group_queue, Shared};
use crate::coordination::Slot;
use crate::error::{Error, Result};
use crate::message::{Message, QueueName};
use crate::stats::{ConsumerOptions, DeadLetterReason};
use crate::traits::{Acker, Consumer, Delivery, DeliveryError, StopFlag};

/// How long a reader waits in one receive of its group queue (cut short
/// when the consumer stops).
const READ_WAIT: Duration = Duration::from_secs(5);
/// How often the store's list of groups is read again.
const REFRESH: Duration = Duration::from_secs(1);
/// How often a full group's slots are looked at again, for slots freed in
/// other processes (a settle in this one wakes its readers at once).
const FULL_POLL: Duration = Duration::from_millis(100);
/// The most deliveries a reader keeps ready (each holds its lease meanwhile).
const MAX_READY: usize = 32;
/// The longest a fresh consumer of a backend whose readers join groups
/// (Kafka) holds everything back until each reader of a queue with jobs
/// has joined and read.
const JOIN_HOLD: Duration = Duration::from_secs(15);
/// A delivery whose lease ends within this is not handed out (it is
/// handed back instead): a job would lose its lease before it started.
const LEASE_MARGIN: Duration = Duration::from_secs(1);
/// The longest pause after a failed read.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One queue read: the queue itself (`group` is `None`) or a group's.
struct Source {
    /// The group's hash and name.
    group: Option<(String, Arc<str>)>,
    consumer: Arc<dyn Consumer>,
    /// Deliveries read and not yet handed out.
    ready: StdMutex<VecDeque<Delivery>>,
    /// Whether the queue seems to hold more: its last read brought
    /// something (or none finished yet).
    live: AtomicBool,
    /// Where a new reader joins a group of consumers first (Kafka): its
    /// queue held jobs when the consumer started, and none was read yet
    /// (its group has not joined). See [`JOIN_HOLD`].
    joining: AtomicBool,
    started: Instant,
    /// The last read's error, until a read succeeds.
    failing: StdMutex<Option<Error>>,
}

/// What the consumer and its readers share.
pub(crate) struct State {
    queue: QueueName,
    /// Its key among the hubs.
    key: String,
    /// The consumers open on it (changed under the hubs' lock).
    open: AtomicUsize,
    shared: Arc<Shared>,
    options: ConsumerOptions,
    /// The group limit, kept in the store's slots.
    limit: Option<u32>,
    /// This consumer's id, the first part of its slots' holders.
    id: String,
    holders: AtomicU64,
    sources: StdMutex<Vec<Arc<Source>>>,
    readers: StdMutex<Vec<JoinHandle<()>>>,
    /// The source the next hand-out starts at.
    turn: AtomicUsize,
    /// How many deliveries each reader keeps ready: as many as the last
    /// receive asked for, at most [`MAX_READY`].
    want: AtomicUsize,
    /// A reader has something (or an error) for `receive`.
    filled: Notify,
    /// `receive` took deliveries, or a slot was given back: readers look again.
    drained: Arc<Notify>,
    stop: StopFlag,
    /// The handles open that still wait in receives (not told to stop
    /// waiting): with none, the readers read no more.
    active: AtomicUsize,
    /// The last error listing the groups, for the next `receive`.
    error: StdMutex<Option<Error>>,
    /// When the list of groups was last read.
    refreshed: tokio::sync::Mutex<Instant>,
}

impl State {
    fn sources(&self) -> Vec<Arc<Source>> {
        self.sources.lock().expect("sources lock").clone()
    }

    fn fail(&self, error: Error) {
        *self.error.lock().expect("error lock") = Some(error);
        self.filled.notify_waiters();
    }

    /// The error a `receive` with nothing to hand out reports: the group
    /// list's, the queue's own reader's, or one reader's when every reader
    /// is failing (one group queue failing does not stop the others).
    fn error(&self) -> Option<Error> {
        if let Some(error) = self.error.lock().expect("error lock").take() {
            return Some(error);
        }
        let sources = self.sources();
        let main = sources.first()?;
        if let Some(error) = main.failing.lock().expect("failing lock").take() {
            return Some(error);
        }
        if sources
            .iter()
            .all(|s| s.failing.lock().expect("failing lock").is_some())
        {
            return sources
                .last()
                .and_then(|s| s.failing.lock().expect("failing lock").take());
        }
        None
    }

    /// Start reading `group`'s queue (or the queue itself).
    async fn add_source(
        self: &Arc<Self>,
        group: Option<(String, Arc<str>)>,
        initial: bool,
    ) -> Result<()> {
        let queue = match &group {
            Some((key, _)) => group_queue(&self.queue, key),
            None => self.queue.clone(),
        };
        let backend = &self.shared.backend;
        let joining = initial
            && backend.capabilities().rebalances_on_join
            && backend
                .admin()
                .stats(&queue)
                .await
                .is_ok_and(|stats| stats.ready > 0);
        let consumer: Arc<dyn Consumer> = Arc::from(
            self.shared
                .backend
                .consumer(&queue, self.options.clone())
                .await?,
        );
        let source = Arc::new(Source {
            group,
            consumer,
            ready: StdMutex::new(VecDeque::new()),
            live: AtomicBool::new(true),
            joining: AtomicBool::new(joining),
            started: Instant::now(),
            failing: StdMutex::new(None),
        });
        self.sources
            .lock()
            .expect("sources lock")
            .push(source.clone());
        let reader = tokio::spawn(read(self.clone(), source));
        self.readers.lock().expect("readers lock").push(reader);
        Ok(())
    }

    /// Read the store's list of groups (at most once per [`REFRESH`]
    /// unless `initial`; skipped while another call is at it) and start
    /// reading the new ones. A group whose queue cannot be read is
    /// reported and tried again next time; the others go on.
    async fn refresh(self: &Arc<Self>, initial: bool) -> Result<()> {
        let Ok(mut refreshed) = self.refreshed.try_lock() else {
            return Ok(());
        };
        if !initial && refreshed.elapsed() < REFRESH {
            return Ok(());
        }
        *refreshed = Instant::now();
        let known: HashSet<String> = self
            .sources()
            .iter()
            .filter_map(|s| s.group.as_ref().map(|(key, _)| key.clone()))
            .collect();
        let mut failed = None;
        for (key, group) in self.shared.groups(&self.queue).await? {
            if !known.contains(&key) && !self.stop.is_stopped() {
                if let Err(e) = self.add_source(Some((key, group)), initial).await {
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Up to `max` deliveries, one source at a time in turn. While more
    /// than one queue seems to hold more, one round only: a group whose
    /// reader is between two reads keeps its turn in the next call rather
    /// than see another group take its place.
    /// Deliveries whose lease is about to end are not handed out but
    /// put in `stale`, to hand back.
    fn hand_out(&self, max: usize, stale: &mut Vec<Delivery>) -> Vec<Delivery> {
        let sources = self.sources();
        // Where a new reader joins a group of consumers first (Kafka),
        // none is handed out until every reader of the consumer's start
        // whose queue held jobs has read some (its group joined), for at
        // most JOIN_HOLD: else the groups that joined first take every
        // turn until the others join.
        if sources
            .iter()
            .any(|s| s.joining.load(Ordering::Relaxed) && s.started.elapsed() < JOIN_HOLD)
        {
            return Vec::new();
        }
        let fresh_until = SystemTime::now() + LEASE_MARGIN;
        let n = sources.len();
        let live = sources
            .iter()
            .filter(|s| {
                s.live.load(Ordering::Relaxed) || !s.ready.lock().expect("ready lock").is_empty()
            })
            .count();
        let start = self.turn.load(Ordering::Relaxed) % n.max(1);
        let mut out = Vec::new();
        let mut next = start;
        loop {
            let before = out.len();
            for i in 0..n {
                if out.len() == max {
                    break;
                }
                let at = (start + i) % n;
                let mut ready = sources[at].ready.lock().expect("ready lock");
                while let Some(delivery) = ready.pop_front() {
                    if delivery.lease_deadline() < fresh_until {
                        stale.push(delivery);
                        continue;
                    }
                    out.push(delivery);
                    next = at + 1;
                    break;
                }
            }
            if out.len() == before || out.len() == max || live > 1 {
                break;
            }
        }
        self.turn.store(next, Ordering::Relaxed);
        if !out.is_empty() || !stale.is_empty() {
            self.drained.notify_waiters();
        }
        out
    }

    /// A delivery of `source` as the queue's: its group put back, and the
    /// slot it holds (if any) given back when it is settled.
    fn adopt(&self, delivery: Delivery, source: &Source, slot: Option<&SlotHeld>) -> Delivery {
        let (_, mut message, lease_deadline, acker) = delivery.into_parts();
        if let Some((_, group)) = &source.group {
            message
                .headers
                .insert(crate::job::HEADER_GROUP, group.as_ref());
        }
        let acker = match slot {
            Some(slot) => Box::new(SlotAcker {
                inner: acker,
                slot: slot.clone(),
            }),
            None => acker,
        };
        Delivery::new(self.queue.clone(), message, lease_deadline, acker)
    }

    /// Take one of `key`'s slots: the holder, or `None` if the group is
    /// full.
    async fn take_slot(&self, key: &str, limit: u32) -> Result<Option<SlotHeld>> {
        let holder = format!(
            "{}-{}",
            self.id,
            self.holders.fetch_add(1, Ordering::Relaxed)
        );
        let name = format!("group-slots.{}.{key}", self.queue);
        // Held while the reader waits for a delivery (a read may take a
        // little longer than its wait); renewed to the delivery's lease
        // when one comes.
        let ttl = READ_WAIT + Duration::from_secs(5);
        match self
            .shared
            .store
            .acquire_slot(&name, &holder, limit, ttl)
            .await?
        {
            Slot::Held => Ok(Some(SlotHeld(Arc::new(SlotInner {
                store: self.shared.store.clone(),
                name,
                holder,
                limit,
                freed: self.drained.clone(),
            })))),
            _ => Ok(None),
        }
    }
}

/// A slot of a group's limit held for one delivery.
#[derive(Clone)]
struct SlotHeld(Arc<SlotInner>);

struct SlotInner {
    store: Arc<dyn crate::coordination::Coordination>,
    name: String,
    holder: String,
    limit: u32,
    /// Woken when the slot is given back, so readers of a full group look again.
    freed: Arc<Notify>,
}

impl SlotHeld {
    /// Keep the slot until `until`: `false` if it was lost (its time ran
    /// out and the group is full now).
    async fn renew(&self, until: SystemTime) -> Result<bool> {
        let ttl = until
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(Duration::from_millis(100));
        let inner = &self.0;
        if inner
            .store
            .renew_slot(&inner.name, &inner.holder, ttl)
            .await?
        {
            return Ok(true);
        }
        // Lost: take one again if the group has room.
        let slot = inner
            .store
            .acquire_slot(&inner.name, &inner.holder, inner.limit, ttl)
            .await?;
        Ok(slot == Slot::Held)
    }

    /// Give it back. A failure only keeps the slot until its time runs
    /// out, so it is not the settle's error.
    async fn release(&self) {
        let _ = self
            .0
            .store
            .release_slot(&self.0.name, &self.0.holder)
            .await;
        self.0.freed.notify_waiters();
    }
}

/// Read `source` into its ready list until the consumer stops.
async fn read(state: Arc<State>, source: Arc<Source>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if state.stop.is_stopped() {
            break;
        }
        let drained = state.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        let held = source.ready.lock().expect("ready lock").len();
        let room = state
            .want
            .load(Ordering::Relaxed)
            .saturating_sub(held)
            .min(state.shared.backend.capabilities().max_receive);
        // Nothing more is read while every handle has stopped waiting (a
        // worker shutting down): it would only sit leased here.
        if room == 0 || state.active.load(Ordering::Acquire) == 0 {
            tokio::select! {
                () = &mut drained => {}
                () = state.stop.stopped() => {}
            }
            continue;
        }
        let slot = match (state.limit, &source.group) {
            (Some(limit), Some((key, _))) => match state.take_slot(key, limit).await {
                Ok(Some(slot)) => Some(slot),
                Ok(None) => {
                    tokio::select! {
                        () = &mut drained => {}
                        () = tokio::time::sleep(FULL_POLL) => {}
                        () = state.stop.stopped() => {}
                    }
                    continue;
                }
                Err(e) => {
                    source.fail(&state, e);
                    pause(&state, &mut backoff).await;
                    continue;
                }
            },
            _ => None,
        };
        let max = if slot.is_some() { 1 } else { room };
        let read = source.consumer.receive(max, READ_WAIT).await;
        if matches!(&read, Ok(got) if !got.is_empty()) {
            source.joining.store(false, Ordering::Relaxed);
        }
        match read {
            Ok(got) => {
                backoff = Duration::from_millis(50);
                *source.failing.lock().expect("failing lock") = None;
                source.live.store(!got.is_empty(), Ordering::Relaxed);
                if got.is_empty() {
                    if let Some(slot) = slot {
                        slot.release().await;
                    }
                    continue;
                }
                if let Some(slot) = &slot {
                    let kept = slot.renew(got[0].lease_deadline()).await;
                    if !matches!(kept, Ok(true)) {
                        // The slot ran out while the read waited and the
                        // group is full (or the store failed): the
                        // delivery goes back rather than over the limit.
                        for delivery in got {
                            let _ = delivery.release().await;
                        }
                        if let Err(e) = kept {
                            source.fail(&state, e);
                            pause(&state, &mut backoff).await;
                        }
                        continue;
                    }
                }
                let adopted: Vec<Delivery> = got
                    .into_iter()
                    .map(|d| state.adopt(d, &source, slot.as_ref()))
                    .collect();
                source.ready.lock().expect("ready lock").extend(adopted);
                state.filled.notify_waiters();
            }
            Err(e) => {
                if let Some(slot) = slot {
                    slot.release().await;
                }
                source.fail(&state, e);
                pause(&state, &mut backoff).await;
            }
        }
    }
}

impl Source {
    fn fail(&self, state: &State, error: Error) {
        *self.failing.lock().expect("failing lock") = Some(error);
        state.filled.notify_waiters();
    }
}

/// Wait `backoff` (doubled for next time, up to [`MAX_BACKOFF`]) or until
/// the consumer stops.
async fn pause(state: &State, backoff: &mut Duration) {
    tokio::select! {
        () = tokio::time::sleep(*backoff) => {}
        () = state.stop.stopped() => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

/// The readers of this process's consumers, by queue and options: the
/// consumers of one queue (a worker's lanes, say) share one set of
/// readers, so turns are taken across all of them.
pub(crate) type Hubs = StdMutex<HashMap<String, Weak<State>>>;

/// A consumer of a grouped queue: a handle on the readers its process
/// keeps for the queue.
pub(crate) struct GroupedConsumer {
    state: Arc<State>,
    /// This handle's own stop: the readers stop with the last handle.
    stop: StopFlag,
    /// Whether this handle was let go of (closed).
    gone: AtomicBool,
}

impl GroupedConsumer {
    pub(crate) async fn start(
        shared: Arc<Shared>,
        queue: &QueueName,
        mut options: ConsumerOptions,
    ) -> Result<GroupedConsumer> {
        options.check()?;
        let limit = options.group_limit.take();
        let key = format!("{queue}|{:?}|{limit:?}", options.lease);
        let joined = {
            let hubs = shared.hubs.lock().expect("hubs lock");
            let state = hubs
                .get(&key)
                .and_then(Weak::upgrade)
                .filter(|s| !s.stop.is_stopped());
            if let Some(state) = &state {
                state.open.fetch_add(1, Ordering::AcqRel);
                state.active.fetch_add(1, Ordering::AcqRel);
                state.drained.notify_waiters();
            }
            state
        };
        if let Some(state) = joined {
            return Ok(GroupedConsumer::handle(state));
        }
        let state = Arc::new(State {
            queue: queue.clone(),
            key: key.clone(),
            open: AtomicUsize::new(1),
            shared: shared.clone(),
            options,
            limit,
            id: uuid::Uuid::now_v7().simple().to_string(),
            holders: AtomicU64::new(0),
            sources: StdMutex::new(Vec::new()),
            readers: StdMutex::new(Vec::new()),
            turn: AtomicUsize::new(0),
            want: AtomicUsize::new(1),
            filled: Notify::new(),
            drained: Arc::new(Notify::new()),
            stop: StopFlag::default(),
            active: AtomicUsize::new(1),
            error: StdMutex::new(None),
            refreshed: tokio::sync::Mutex::new(Instant::now()),
        });
        // The handle first: if starting fails, or the call is dropped
        // half-way, dropping it stops whatever readers began.
        let consumer = GroupedConsumer::handle(state.clone());
        state.add_source(None, true).await?;
        state.refresh(true).await?;
        // Shared from now on (unless another consumer's readers got there
        // first: these then serve this consumer alone).
        let mut hubs = shared.hubs.lock().expect("hubs lock");
        if hubs
            .get(&key)
            .and_then(Weak::upgrade)
            .is_none_or(|s| s.stop.is_stopped())
        {
            hubs.insert(key, Arc::downgrade(&state));
        }
        drop(hubs);
        Ok(consumer)
    }

    /// This handle no longer waits in receives (once): with no handle
    /// waiting, the readers read no more.
    fn stop_reading(&self) {
        if !self.stop.is_stopped() {
            self.stop.stop();
            self.state.active.fetch_sub(1, Ordering::AcqRel);
        }
        self.state.filled.notify_waiters();
    }

    fn handle(state: Arc<State>) -> GroupedConsumer {
        GroupedConsumer {
            state,
            stop: StopFlag::default(),
            gone: AtomicBool::new(false),
        }
    }

    /// Let go of the readers (once): the last handle stops them; `true`
    /// if this was the last.
    fn let_go(&self) -> bool {
        if self.gone.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.stop_reading();
        let mut hubs = self.state.shared.hubs.lock().expect("hubs lock");
        let last = self.state.open.fetch_sub(1, Ordering::AcqRel) == 1;
        if last {
            if hubs
                .get(&self.state.key)
                .is_some_and(|state| std::ptr::eq(state.as_ptr(), Arc::as_ptr(&self.state)))
            {
                hubs.remove(&self.state.key);
            }
            drop(hubs);
            self.state.shut_down();
        }
        last
    }
}

impl State {
    /// Stop the readers: their reads return, and they end.
    fn shut_down(&self) {
        self.stop.stop();
        for source in self.sources() {
            source.consumer.stop_waiting();
        }
        self.filled.notify_waiters();
        self.drained.notify_waiters();
    }
}

impl fmt::Debug for GroupedConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupedConsumer")
            .field("queue", &self.state.queue)
            .field("groups", &self.state.sources().len().saturating_sub(1))
            .finish_non_exhaustive()
    }
}

impl Drop for GroupedConsumer {
    fn drop(&mut self) {
        // The last one stops the readers; what they hold returns when its
        // lease runs out, as with any delivery dropped unsettled.
        self.let_go();
    }
}

#[async_trait]
impl Consumer for GroupedConsumer {
    fn queue(&self) -> &QueueName {
        &self.state.queue
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let state = &self.state;
        state.shared.backend.capabilities().check_receive(max)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if !self.stop.is_stopped() {
                if let Err(e) = state.refresh(false).await {
                    state.fail(e);
                }
            }
            // Each reader keeps as many ready as one receive takes, so a
            // group whose reader is between two reads of its queue does
            // not miss its turn.
            let want = max.min(MAX_READY);
            if state.want.swap(want, Ordering::Relaxed) < want {
                state.drained.notify_waiters();
            }
            let filled = state.filled.notified();
            tokio::pin!(filled);
            filled.as_mut().enable();
            let mut stale = Vec::new();
            let out = state.hand_out(max, &mut stale);
            for delivery in stale {
                let _ = delivery.release().await;
            }
            if !out.is_empty() {
                return Ok(out);
            }
            if let Some(error) = state.error() {
                return Err(error);
            }
            if self.stop.is_stopped()
                || state.stop.is_stopped()
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(out);
            }
            let refresh = tokio::time::Instant::now() + REFRESH;
            tokio::select! {
                () = &mut filled => {}
                () = tokio::time::sleep_until(deadline.min(refresh)) => {}
                () = self.stop.stopped() => {}
                () = state.stop.stopped() => {}
            }
        }
    }

    async fn ack_batch(&self, deliveries: Vec<Delivery>) -> Result<(), Vec<DeliveryError>> {
        if self.state.limit.is_some() {
            // Each settle gives its slot back.
            return crate::traits::ack_each(deliveries, Vec::new()).await;
        }
        let main = self.state.sources().first().map(|s| s.consumer.clone());
        match main {
            Some(main) => main.ack_batch(deliveries).await,
            None => crate::traits::ack_each(deliveries, Vec::new()).await,
        }
    }

    fn stop_waiting(&self) {
        // This handle's receives stop waiting; the readers carry on while
        // another handle waits, and stop with the last one closed.
        self.stop_reading();
    }

    async fn close(&self) {
        self.stop_waiting();
        if !self.let_go() {
            return;
        }
        let readers = std::mem::take(&mut *self.state.readers.lock().expect("readers lock"));
        for reader in readers {
            let _ = reader.await;
        }
        // What was read and not handed out goes back at once.
        for source in self.state.sources() {
            let left: Vec<Delivery> = source.ready.lock().expect("ready lock").drain(..).collect();
            for delivery in left {
                let _ = delivery.release().await;
            }
            source.consumer.close().await;
        }
    }
}

/// The acker of a delivery that holds a slot of its group's limit: each
/// settle gives the slot back, an extension renews it.
struct SlotAcker {
    inner: Box<dyn Acker>,
    slot: SlotHeld,
}

impl fmt::Debug for SlotAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotAcker")
            .field("slot", &self.slot.0.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Acker for SlotAcker {
    async fn ack(&self, message: &Message) -> Result<()> {
        self.inner.ack(message).await?;
        self.slot.release().await;
        Ok(())
    }

    async fn nack(&self, message: &Message, delay: Duration, error: Option<&str>) -> Result<()> {
        self.inner.nack(message, delay, error).await?;
        self.slot.release().await;
        Ok(())
    }

    async fn extend(&mut self, message: &Message, lease: Duration) -> Result<SystemTime> {
        let until = self.inner.extend(message, lease).await?;
        // A slot lost meanwhile is taken again if the group has room; the
        // job runs on either way (its lease is the broker's).
        self.slot.renew(until).await?;
        Ok(until)
    }

    async fn dead_letter(&self, message: &Message, reason: &DeadLetterReason) -> Result<()> {
        self.inner.dead_letter(message, reason).await?;
        self.slot.release().await;
        Ok(())
    }

    async fn release(&self, message: &Message) -> Result<()> {
        self.inner.release(message).await?;
        self.slot.release().await;
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
