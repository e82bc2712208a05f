//! Flow control across every worker of a queue: rate limits (per queue
//! and per key), fleet-wide concurrency, and the queue-wide back-off a
//! handler asks for with [`HandlerError::rate_limited`].
//!
//! A job received waits here before its attempt begins, holding its
//! delivery (its lease extended while it waits, no attempt spent): first
//! for the queue's back-off to end, then for a fleet-wide slot, then for
//! its rate permits, so the moment a permit is granted is the moment the
//! job starts. Waiting is on events and timers, never a spin: permits are
//! asked for by one task per window, for every job waiting on it in one
//! call ([`Coordination::take_permits`]), which then sleeps until the
//! window has room; a slot held elsewhere is asked for again when a slot
//! of this process frees or after at most [`SLOT_POLL`].
//!
//! [`HandlerError::rate_limited`]: queue_core::HandlerError::rate_limited

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use queue_core::coordination::{check_limit, Coordination, Rate, Slot};
use queue_core::error::{Error, ErrorKind, Result};
use queue_core::message::{Message, QueueName};
use queue_core::traits::Delivery;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

/// A function that names a job's rate-limit key.
pub type KeyFn = Arc<dyn Fn(&Message) -> Option<String> + Send + Sync>;

/// Where a job's rate-limit key comes from.
#[derive(Clone)]
#[non_exhaustive]
pub enum RateKey {
    /// The message's ordering key (a job without one is not limited by key).
    OrderingKey,
    /// A header the producer sets (a job without it is not limited by key).
    Header(String),
    /// A key computed from the message (`None`: not limited by key).
    Custom(KeyFn),
}

impl std::fmt::Debug for RateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateKey::OrderingKey => f.write_str("OrderingKey"),
            RateKey::Header(name) => f.debug_tuple("Header").field(name).finish(),
            RateKey::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl RateKey {
    fn of(&self, message: &Message) -> Option<String> {
        match self {
            RateKey::OrderingKey => message.ordering_key.as_deref().map(str::to_owned),
            RateKey::Header(name) => message.headers.get(name.as_str()).map(ToString::to_string),
            RateKey::Custom(key) => key(message),
        }
    }
}

/// The longest rate-limit key: 128 bytes. A job whose key is longer, or
/// holds control characters, is dead-lettered with the reason.
pub const MAX_RATE_KEY: usize = 128;

/// How often a worker looks for a back-off another worker shared.
const BACKOFF_CHECK: Duration = Duration::from_millis(250);

/// The flow-control settings of a worker (see the builder's
/// `rate_limit`, `rate_limit_per_key`, `global_concurrency`).
#[derive(Clone, Default)]
pub(super) struct FlowSettings {
    pub(super) rate: Option<Rate>,
    pub(super) key_rate: Option<(Rate, RateKey)>,
    pub(super) global_concurrency: Option<u32>,
    pub(super) slot_lease: Option<Duration>,
    pub(super) store: Option<Arc<dyn Coordination>>,
    /// Most deliveries of one group leased at once (the backend enforces it).
    pub(super) group_limit: Option<u32>,
}

impl std::fmt::Debug for FlowSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowSettings")
            .field("rate", &self.rate)
            .field("key_rate", &self.key_rate)
            .field("global_concurrency", &self.global_concurrency)
            .field("slot_lease", &self.slot_lease)
            .field("group_limit", &self.group_limit)
            .finish_non_exhaustive()
    }
}

impl FlowSettings {
    /// Whether anything needs a coordination store.
    fn limits(&self) -> bool {
        self.rate.is_some() || self.key_rate.is_some() || self.global_concurrency.is_some()
    }
}

/// How long a fleet-wide slot lasts unless renewed (it is renewed every
/// third of it while its job runs): a holder that dies frees it within.
pub const DEFAULT_SLOT_LEASE: Duration = Duration::from_secs(15);

/// The longest a job waits for a slot held by another process before it
/// asks again.
pub const SLOT_POLL: Duration = Duration::from_millis(100);

/// Most permits one call asks for.
const MAX_ASK: usize = 1000;

/// Flow control of one running worker.
pub(super) struct Flow {
    store: Option<Arc<dyn Coordination>>,
    queue_gate: Option<Arc<Gate>>,
    key_rate: Option<(Rate, RateKey)>,
    key_gates: Mutex<HashMap<String, Arc<Gate>>>,
    key_prefix: String,
    concurrency: Option<Concurrency>,
    /// The queue's back-off (a handler said "rate limited"): no job of
    /// this worker starts before it ends.
    /// When the queue's back-off ends, in µs since `epoch` (0: none).
    backoff_until: AtomicU64,
    /// When a back-off another worker shared was last looked for, in µs
    /// since `epoch`.
    backoff_checked: AtomicU64,
    epoch: Instant,
    backoff_lease: String,
    holder: String,
}

struct Concurrency {
    name: String,
    limit: u32,
    lease: Duration,
    held: Arc<Mutex<HashSet<String>>>,
    freed: Notify,
}

/// What waiting for admission came to.
pub(super) enum Admitted {
    /// The job may start; `slot` (if any) is released when it ends.
    Go {
        delivery: Delivery,
        slot: Option<String>,
    },
    /// The worker stopped while the job waited: hand it back (and its
    /// slot, if it took one).
    Stopped {
        delivery: Delivery,
        slot: Option<String>,
    },
    /// The job's rate-limit key is invalid: dead-letter it with the reason.
    Invalid { delivery: Delivery, error: Error },
}

impl Flow {
    /// The flow control of a worker of `queue` (`None` when nothing is
    /// limited and no store is there to share a back-off through), or the
    /// error naming what is wrong or missing.
    pub(super) fn new(
        settings: FlowSettings,
        backend_store: Option<Arc<dyn Coordination>>,
        backend: &str,
        queue: &QueueName,
        worker_id: &str,
        stop: &watch::Receiver<bool>,
    ) -> Result<Flow> {
        let store = settings.store.clone().or(backend_store);
        if settings.limits() && store.is_none() {
            let feature = if settings.global_concurrency.is_some() {
                "global_concurrency"
            } else {
                "rate_limit"
            };
            return Err(queue_core::coordination::needs_store(feature, backend));
        }
        if let Some(limit) = settings.global_concurrency {
            check_limit("global_concurrency", limit)?;
        }
        let lease = settings.slot_lease.unwrap_or(DEFAULT_SLOT_LEASE);
        queue_core::coordination::check_ttl(lease)
            .map_err(|e| Error::new(ErrorKind::Config, format!("slot_lease: {}", e.message())))?;
        let concurrency = settings.global_concurrency.map(|limit| Concurrency {
            name: format!("queue:{queue}:concurrency"),
            limit,
            lease,
            held: Arc::default(),
            freed: Notify::new(),
        });
        if let (Some(c), Some(store)) = (&concurrency, &store) {
            tokio::spawn(renew_slots(
                store.clone(),
                c.name.clone(),
                c.lease,
                Arc::downgrade(&c.held),
                stop.clone(),
            ));
        }
        let queue_gate = settings
            .rate
            .zip(store.clone())
            .map(|(rate, store)| Arc::new(Gate::new(format!("queue:{queue}:rate"), rate, store)));
        Ok(Flow {
            store,
            queue_gate,
            key_rate: settings.key_rate,
            key_gates: Mutex::default(),
            key_prefix: format!("queue:{queue}:rate-key:"),
            concurrency,
            backoff_until: AtomicU64::new(0),
            backoff_checked: AtomicU64::new(0),
            epoch: Instant::now(),
            backoff_lease: format!("queue:{queue}:backoff"),
            holder: worker_id.to_owned(),
        })
    }

    /// Whether any job waits here at all.
    pub(super) fn is_active(&self) -> bool {
        self.queue_gate.is_some() || self.key_rate.is_some() || self.concurrency.is_some()
    }

    /// Whether a job must go through [`admit`](Self::admit): a limit is
    /// set, or the queue is backing off.
    pub(super) fn holds_back(&self) -> bool {
        self.is_active() || self.backing_off()
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Back off until `until` unless a later back-off is set.
    fn back_off_until(&self, until: Instant) {
        self.backoff_until
            .fetch_max(self.micros(until).max(1), Ordering::Relaxed);
    }

    /// Wait until `delivery` may start: the queue's back-off over, a
    /// fleet-wide slot held, its permits granted. Its lease is extended
    /// while it waits; a stop of the worker hands it back.
    pub(super) async fn admit(
        &self,
        mut delivery: Delivery,
        stop: &watch::Receiver<bool>,
        lease: Option<Duration>,
    ) -> Admitted {
        // What only a job that really waits needs (a clock read, a timer,
        // a watch on the stop signal) is set up at its first wait: most
        // jobs take a permit of the reserve and go.
        let mut waiting: Option<(LeaseKeeper, watch::Receiver<bool>)> = None;
        let mut slot: Option<String> = None;
        let key_gate = match self.key_gate(delivery.message()) {
            Ok(gate) => gate,
            Err(error) => return Admitted::Invalid { delivery, error },
        };
        macro_rules! wait {
            ($fut:expr) => {{
                let (keeper, stop) = waiting
                    .get_or_insert_with(|| (LeaseKeeper::new(&delivery, lease), stop.clone()));
                let fut = $fut;
                tokio::pin!(fut);
                loop {
                    tokio::select! {
                        biased;
                        out = &mut fut => break out,
                        () = until_true(stop) => return Admitted::Stopped { delivery, slot },
                        () = tokio::time::sleep_until(keeper.extend_at(&delivery)) => {
                            delivery = keeper.extend(delivery).await;
                        }
                    }
                }
            }};
        }
        if self.backing_off() {
            wait!(self.backoff_over());
        }
        if let Some(c) = &self.concurrency {
            let holder = format!(
                "{}:{}:{}",
                self.holder,
                delivery.message().id,
                delivery.attempt()
            );
            wait!(self.acquire(c, &holder));
            slot = Some(holder);
        }
        {
            if let Some(gate) = &self.queue_gate {
                if !gate.try_take() {
                    wait!(gate.wait(self));
                }
            }
            if let Some(gate) = &key_gate {
                if !gate.try_take() {
                    wait!(gate.wait(self));
                }
            }
        }
        Admitted::Go { delivery, slot }
    }

    /// The gate of the job's rate-limit key, if it has one.
    fn key_gate(&self, message: &Message) -> Result<Option<Arc<Gate>>> {
        let Some((rate, key)) = self.key_rate.as_ref() else {
            return Ok(None);
        };
        let Some(key) = key.of(message) else {
            return Ok(None);
        };
        if key.is_empty() || key.len() > MAX_RATE_KEY || key.chars().any(char::is_control) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "rate limit key must be 1..={MAX_RATE_KEY} bytes without control characters, not {} bytes",
                    key.len()
                ),
            ));
        }
        let mut gates = self.key_gates.lock().unwrap_or_else(|p| p.into_inner());
        if gates.len() >= 10_000 {
            gates.retain(|_, gate| Arc::strong_count(gate) > 1 || gate.busy());
        }
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let name = format!("{}{key}", self.key_prefix);
        Ok(Some(
            gates
                .entry(key)
                .or_insert_with(|| Arc::new(Gate::new(name, *rate, store.clone())))
                .clone(),
        ))
    }

    /// A job that held `slot` ended: give the slot back.
    pub(super) fn release(&self, slot: Option<String>) {
        let (Some(slot), Some(c), Some(store)) = (slot, &self.concurrency, &self.store) else {
            return;
        };
        c.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&slot);
        let (store, name) = (store.clone(), c.name.clone());
        c.freed.notify_waiters();
        tokio::spawn(async move {
            if let Err(e) = store.release_slot(&name, &slot).await {
                tracing::warn!(error = %e, "could not give a concurrency slot back; it frees when its lease ends");
            }
        });
    }

    /// A handler said the remote API limits its rate: pause this worker's
    /// starts for `retry_after`, and every worker's that shares the store.
    pub(super) fn back_off(&self, retry_after: Duration) {
        self.back_off_until(Instant::now() + retry_after);
        let Some(store) = self.store.clone() else {
            return;
        };
        let (name, holder) = (self.backoff_lease.clone(), self.holder.clone());
        let ttl = retry_after.clamp(
            queue_core::coordination::MIN_TTL,
            queue_core::coordination::MAX_TTL,
        );
        tokio::spawn(async move {
            if let Err(e) = store.try_lease(&name, &holder, ttl).await {
                tracing::warn!(error = %e, "could not share the queue's back-off");
            }
        });
    }

    /// Whether the queue backs off now (no clock read when it does not).
    fn backing_off(&self) -> bool {
        let until = self.backoff_until.load(Ordering::Relaxed);
        until != 0 && until > self.micros(Instant::now())
    }

    /// Wait for the queue's back-off to end.
    async fn backoff_over(&self) {
        loop {
            let until = self.backoff_until.load(Ordering::Relaxed);
            if until == 0 || until <= self.micros(Instant::now()) {
                break;
            }
            tokio::time::sleep_until(self.epoch + Duration::from_micros(until)).await;
        }
    }

    /// Look for a back-off another worker shared, at most every
    /// [`BACKOFF_CHECK`] (one lease read), and take it on. Called where a
    /// round trip is made anyway: before asking for permits or a slot.
    async fn look_for_shared_backoff(&self, store: &Arc<dyn Coordination>) {
        let now = self.micros(Instant::now());
        let checked = self.backoff_checked.load(Ordering::Relaxed);
        let every = u64::try_from(BACKOFF_CHECK.as_micros()).unwrap_or(u64::MAX);
        if now < checked.saturating_add(every)
            || self
                .backoff_checked
                .compare_exchange(checked, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Ok(Some(lease)) = store.lease_holder(&self.backoff_lease).await {
            if lease.holder != self.holder {
                self.back_off_until(Instant::now() + lease.ttl);
            }
        }
        self.backoff_over().await;
    }

    async fn acquire(&self, c: &Concurrency, holder: &str) {
        let Some(store) = &self.store else { return };
        self.look_for_shared_backoff(store).await;
        loop {
            let freed = c.freed.notified();
            match store.acquire_slot(&c.name, holder, c.limit, c.lease).await {
                Ok(Slot::Held) => {
                    c.held
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(holder.to_owned());
                    return;
                }
                Ok(Slot::Full { retry_after }) => {
                    let wait = retry_after.min(SLOT_POLL);
                    let _ = tokio::time::timeout(wait, freed).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not ask for a concurrency slot; asking again");
                    tokio::time::sleep(SLOT_POLL).await;
                }
            }
        }
    }
}

/// Renew the slots of running jobs every third of their lease, until the
/// worker is gone.
async fn renew_slots(
    store: Arc<dyn Coordination>,
    name: String,
    lease: Duration,
    held: std::sync::Weak<Mutex<HashSet<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let Some(held) = held.upgrade() else { return };
        let holders: Vec<String> = held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        drop(held);
        for holder in holders {
            match store.renew_slot(&name, &holder, lease).await {
                Ok(true) => {}
                // Released meanwhile (its job ended), or lost: a slot is
                // never taken back by a renewal.
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not renew a concurrency slot"),
            }
        }
    }
}

/// One rate window and the jobs waiting on it: one task asks for the
/// permits of every job waiting, in one call, then sleeps until the window
/// has room. It asks for the jobs waiting and as many again as the jobs
/// that started since its last call: the permits left over stay in a
/// local reserve for half the window's margin
/// ([`Rate::margin`]), so the next jobs start without a round trip while
/// every job still starts within the margin of its permit's grant (which
/// keeps windows of starts under the limit).
struct Gate {
    key: String,
    rate: Rate,
    store: Arc<dyn Coordination>,
    /// Wakes the asking task when a job starts waiting while it keeps a
    /// reserve.
    waiter: Notify,
    /// How long a permit of the reserve stays good after its call was sent.
    fresh_for: Duration,
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    waiting: VecDeque<oneshot::Sender<()>>,
    asking: bool,
    /// Permits granted beyond the jobs that waited (the asking task
    /// empties it when it goes stale).
    reserve: Reserve,
    /// Permits the reserve handed out since the last call: the demand the
    /// next call asks for beyond the jobs waiting.
    used: u32,
    /// The reserve the last call left.
    granted: u32,
    /// The window had plenty of room at the last call (at least half its
    /// limit free after the grant): only then are permits asked for ahead
    /// of need, so permits that go stale unused never crowd a window
    /// near its limit.
    roomy: bool,
    /// The reserve ran low: ask for more before it runs out.
    refill: bool,
}

/// Permits granted ahead of need, by the call that granted them, oldest
/// first, each batch good until its stale time (the asking task drops a
/// batch when it goes stale, so taking one reads no clock).
#[derive(Default)]
struct Reserve {
    batches: VecDeque<(u32, Instant)>,
    total: u32,
}

impl Reserve {
    fn take(&mut self) -> bool {
        let Some((count, _)) = self.batches.front_mut() else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.batches.pop_front();
        }
        self.total -= 1;
        true
    }

    fn add(&mut self, count: u32, stale_at: Instant) {
        if count > 0 {
            self.batches.push_back((count, stale_at));
            self.total += count;
        }
    }

    /// The stale time of the oldest batch.
    fn next_stale(&self) -> Option<Instant> {
        self.batches.front().map(|(_, at)| *at)
    }

    /// Drop the batches stale at `now`.
    fn drop_stale(&mut self, now: Instant) {
        while let Some(&(count, at)) = self.batches.front() {
            if at > now {
                break;
            }
            self.batches.pop_front();
            self.total -= count;
        }
    }
}

impl Gate {
    fn new(key: String, rate: Rate, store: Arc<dyn Coordination>) -> Self {
        Gate {
            key,
            rate,
            store,
            waiter: Notify::new(),
            fresh_for: rate.margin() / 2,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn busy(&self) -> bool {
        let state = self.lock();
        state.asking || !state.waiting.is_empty()
    }

    /// Take a permit of the reserve, if one is left (no clock read: the
    /// asking task empties the reserve when it goes stale). When it is down
    /// to half of what the last call left, ask for more ahead of need.
    fn try_take(self: &Arc<Self>) -> bool {
        let (taken, spawn, wake) = {
            let mut state = self.lock();
            if !state.reserve.take() {
                return false;
            }
            state.used = state.used.saturating_add(1);
            if !state.refill && state.reserve.total <= state.granted / 2 {
                state.refill = true;
                let spawn = !std::mem::replace(&mut state.asking, true);
                (true, spawn, !spawn)
            } else {
                (true, false, false)
            }
        };
        if spawn {
            tokio::spawn(self.clone().ask());
        } else if wake {
            self.waiter.notify_one();
        }
        taken
    }

    /// Wait for one permit.
    async fn wait(self: &Arc<Self>, flow: &Flow) {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            if state.reserve.take() {
                state.used = state.used.saturating_add(1);
                return;
            }
            state.waiting.push_back(tx);
            !std::mem::replace(&mut state.asking, true)
        };
        if start {
            flow.look_for_shared_backoff(&self.store).await;
            tokio::spawn(self.clone().ask());
        } else {
            self.waiter.notify_one();
        }
        // The asking task ends only when no one waits, so the sender is
        // never dropped while this waits.
        let _ = rx.await;
    }

    /// Ask for permits for everyone waiting until no one is; then keep
    /// the reserve until it goes stale, and empty it.
    async fn ask(self: Arc<Self>) {
        loop {
            enum Next {
                Ask(u32),
                KeepReserve(Instant),
                Done,
            }
            let next = {
                let mut state = self.lock();
                state.waiting.retain(|tx| !tx.is_closed());
                if !state.waiting.is_empty() || std::mem::take(&mut state.refill) {
                    // The jobs waiting, and, while the window has plenty
                    // of room, twice as many as the reserve served since
                    // the last call (at least as many as wait), so the
                    // next jobs find permits ready.
                    let waiting = state.waiting.len().min(MAX_ASK);
                    let demand =
                        usize::try_from(std::mem::take(&mut state.used)).unwrap_or(MAX_ASK);
                    let ahead = if state.roomy {
                        demand.saturating_mul(2).clamp(waiting.max(1), MAX_ASK)
                    } else {
                        0
                    };
                    Next::Ask(u32::try_from((waiting + ahead).max(1)).unwrap_or(u32::MAX))
                } else if let Some(at) = state.reserve.next_stale() {
                    Next::KeepReserve(at)
                } else {
                    state.asking = false;
                    Next::Done
                }
            };
            let want = match next {
                Next::Ask(want) => want,
                Next::Done => return,
                Next::KeepReserve(at) => {
                    // Keep the reserve until it goes stale, or until a job
                    // waits (the reserve ran out): then ask again.
                    if tokio::time::timeout_at(at, self.waiter.notified())
                        .await
                        .is_err()
                    {
                        self.lock().reserve.drop_stale(Instant::now());
                    }
                    continue;
                }
            };
            let sent = Instant::now();
            match self.store.take_permits(&self.key, self.rate, want).await {
                Ok(permits) => {
                    let mut granted = permits.granted;
                    let unserved = {
                        let mut state = self.lock();
                        while granted > 0 {
                            let Some(tx) = state.waiting.pop_front() else {
                                break;
                            };
                            if tx.send(()).is_ok() {
                                granted -= 1;
                            }
                        }
                        state.reserve.drop_stale(Instant::now());
                        state.reserve.add(granted, sent + self.fresh_for);
                        state.granted = granted;
                        state.roomy = permits.remaining >= self.rate.limit() / 2;
                        !state.waiting.is_empty()
                    };
                    // Jobs still waiting: the window is full until then.
                    if let (true, Some(wait)) = (unserved, permits.retry_after) {
                        tokio::time::sleep(wait).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "could not ask for rate permits; asking again");
                    tokio::time::sleep(SLOT_POLL).await;
                }
            }
        }
    }
}

/// Keeps a waiting delivery's lease from running out.
struct LeaseKeeper {
    lease: Duration,
    can_extend: bool,
}

impl LeaseKeeper {
    fn new(delivery: &Delivery, lease: Option<Duration>) -> Self {
        let lease = lease.unwrap_or_else(|| {
            delivery
                .lease_deadline()
                .duration_since(SystemTime::now())
                .unwrap_or(queue_core::config::DEFAULT_LEASE)
                .clamp(queue_core::config::MIN_LEASE, queue_core::config::MAX_LEASE)
        });
        LeaseKeeper {
            lease,
            can_extend: true,
        }
    }

    fn extend_at(&self, delivery: &Delivery) -> Instant {
        if !self.can_extend {
            return Instant::now() + Duration::from_secs(86_400 * 365);
        }
        let left = delivery
            .lease_deadline()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Instant::now() + left.saturating_sub(self.lease / 3)
    }

    async fn extend(&mut self, delivery: Delivery) -> Delivery {
        match delivery.extend(self.lease).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e.error, "lease extension of a waiting job failed; it may run twice");
                self.can_extend = false;
                *e.delivery
            }
        }
    }
}

/// Resolves once the flag turns true; never if its sender is gone first.
async fn until_true(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}
