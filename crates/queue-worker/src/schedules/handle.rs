//! Managing schedules at run time from any process ([`Schedules`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use queue_core::coordination::{self, Coordination};
use queue_core::error::{Error, ErrorKind, Result};
use queue_core::job::{HEADER_SCHEDULE, HEADER_SCHEDULE_TICK};
use queue_core::message::{Message, MessageId, QueueName};
use queue_core::traits::{Backend, Producer};
use serde::Serialize;
use tokio::sync::{Mutex, Notify};

use super::records::{self, SCHEDULES_SPACE, TICKS_SPACE};
use super::runner::ScheduleRunner;
use super::schedule::Schedule;
use super::spec::{from_millis, to_millis};

/// A schedule with what the store knows of its ticks.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// The schedule.
    pub schedule: Schedule,
    /// The last tick handled (fired, or dropped by the misfire policy).
    pub last_tick: Option<SystemTime>,
    /// The next tick it will fire (`None` while paused).
    pub next_tick: Option<SystemTime>,
}

/// Schedules kept in a coordination store: add, update, remove, pause,
/// resume, list and trigger them from any process, and start the
/// [runner](Schedules::runner) that fires them. Clones share one producer
/// per queue.
///
/// Changes are plain writes: two processes changing the same schedule at
/// once keep the last write. A running leader reads the schedules at
/// every tick and renewal, so a change made elsewhere applies within a
/// third of the lease TTL (at once for runners started from this
/// `Schedules` or a clone of it).
#[derive(Clone)]
pub struct Schedules {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) store: Arc<dyn Coordination>,
    producers: Mutex<HashMap<QueueName, Arc<dyn Producer>>>,
    /// Wakes the runners of this process after a change.
    pub(super) changed: Notify,
}

impl std::fmt::Debug for Schedules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedules")
            .field("backend", &self.inner.backend.capabilities().backend)
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

impl Schedules {
    /// Schedules kept in `backend`'s own coordination store; a backend
    /// without one is refused with the error naming what to configure
    /// ([`coordination::needs_store`]).
    pub fn new(backend: Arc<dyn Backend>) -> Result<Self> {
        let store = backend.coordination().ok_or_else(|| {
            coordination::needs_store("periodic jobs", backend.capabilities().backend)
        })?;
        Ok(Schedules::with_store(backend, store))
    }

    /// Schedules kept in `store`, sending jobs through `backend`.
    pub fn with_store(backend: Arc<dyn Backend>, store: Arc<dyn Coordination>) -> Self {
        Schedules {
            inner: Arc::new(Inner {
                backend,
                store,
                producers: Mutex::new(HashMap::new()),
                changed: Notify::new(),
            }),
        }
    }

    /// A runner of these schedules, to start in every process.
    pub fn runner(&self) -> ScheduleRunner {
        ScheduleRunner::new(self.clone())
    }

    /// Add `schedule`; its first tick is the first after now. A name in
    /// use is [`ErrorKind::InvalidInput`] (use [`update`](Self::update)).
    /// The schedule is checked, and so is one job of it against the
    /// backend's limits (size, priority, delay), before it is written.
    pub async fn add(&self, mut schedule: Schedule) -> Result<ScheduleInfo> {
        self.check(&schedule)?;
        if self
            .inner
            .store
            .get(SCHEDULES_SPACE, schedule.name())
            .await?
            .is_some()
        {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "schedule name: {:?} is taken (update it, or remove it first)",
                    schedule.name()
                ),
            ));
        }
        let now = SystemTime::now();
        schedule.set_created_at(now);
        schedule.set_active_since(now);
        self.write(schedule).await
    }

    /// Replace the schedule of the same name (`NotFound` if there is
    /// none). It keeps its creation time and last tick; its ticks count
    /// from now, so a new spec does not make up for ticks it would have
    /// had before.
    pub async fn update(&self, mut schedule: Schedule) -> Result<ScheduleInfo> {
        self.check(&schedule)?;
        let existing = self.existing(schedule.name()).await?;
        schedule.set_created_at(existing.created_at());
        schedule.set_active_since(SystemTime::now());
        self.write(schedule).await
    }

    /// Remove a schedule; `true` if there was one. A tick being fired at
    /// that moment may still be sent.
    pub async fn remove(&self, name: &str) -> Result<bool> {
        let removed = self.inner.store.remove(SCHEDULES_SPACE, name).await?;
        self.inner.store.remove(TICKS_SPACE, name).await?;
        self.inner.changed.notify_waiters();
        Ok(removed)
    }

    /// Stop firing a schedule (`NotFound` if there is none). Its ticks
    /// while paused are not fired later.
    pub async fn pause(&self, name: &str) -> Result<ScheduleInfo> {
        let mut schedule = self.existing(name).await?;
        schedule.set_paused(true);
        self.write(schedule).await
    }

    /// Fire a paused schedule again from its next tick (`NotFound` if
    /// there is none); the ticks it had while paused are not made up for.
    pub async fn resume(&self, name: &str) -> Result<ScheduleInfo> {
        let mut schedule = self.existing(name).await?;
        if schedule.is_paused() {
            schedule.set_paused(false);
            schedule.set_active_since(SystemTime::now());
        }
        self.write(schedule).await
    }

    /// A schedule with its last and next tick.
    pub async fn get(&self, name: &str) -> Result<Option<ScheduleInfo>> {
        let Some(schedule) = records::load(&*self.inner.store, name).await? else {
            return Ok(None);
        };
        let last = records::last_tick(&*self.inner.store, name).await?;
        Ok(Some(info(schedule, last)))
    }

    /// Every schedule, by name, with its last and next tick (computed).
    pub async fn list(&self) -> Result<Vec<ScheduleInfo>> {
        let schedules = records::load_all(&*self.inner.store).await?;
        let last = records::last_ticks(&*self.inner.store).await?;
        Ok(schedules
            .into_iter()
            .map(|schedule| {
                let tick = last.get(schedule.name()).copied();
                info(schedule, tick)
            })
            .collect())
    }

    /// Send one job of a schedule now, paused or not, outside its ticks:
    /// it carries [`HEADER_SCHEDULE`] but no tick, and a unique
    /// idempotency key where the backend takes them. `NotFound` if there
    /// is no such schedule.
    pub async fn trigger(&self, name: &str) -> Result<MessageId> {
        let schedule = self.existing(name).await?;
        let mut message = schedule
            .job()
            .message()
            .with_header(HEADER_SCHEDULE, schedule.name());
        if self.supports_idempotency() {
            let key = format!("schedule:{}:trigger:{}", schedule.name(), message.id);
            message = message.with_idempotency_key(key);
        }
        self.send(schedule.job().queue(), message).await
    }

    async fn existing(&self, name: &str) -> Result<Schedule> {
        records::load(&*self.inner.store, name)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no schedule named {name:?}")))
    }

    fn check(&self, schedule: &Schedule) -> Result<()> {
        schedule.check()?;
        let message = tick_message(schedule, i64::MAX, self.supports_idempotency());
        self.inner
            .backend
            .capabilities()
            .check_message(&message)
            .map_err(|e| Error::new(e.kind(), format!("job: {}", e.message())).with_source(e))
    }

    async fn write(&self, schedule: Schedule) -> Result<ScheduleInfo> {
        let value = records::encode(&schedule)?;
        self.inner
            .store
            .put(SCHEDULES_SPACE, schedule.name(), value)
            .await?;
        self.inner.changed.notify_waiters();
        let last = records::last_tick(&*self.inner.store, schedule.name()).await?;
        Ok(info(schedule, last))
    }

    pub(super) fn supports_idempotency(&self) -> bool {
        self.inner.backend.capabilities().idempotency.is_available()
    }

    /// Send `message` to `queue` through the queue's one producer.
    pub(super) async fn send(&self, queue: &QueueName, message: Message) -> Result<MessageId> {
        let producer = {
            let mut producers = self.inner.producers.lock().await;
            match producers.get(queue) {
                Some(producer) => producer.clone(),
                None => {
                    let producer: Arc<dyn Producer> =
                        Arc::from(self.inner.backend.producer(queue).await?);
                    producers.insert(queue.clone(), producer.clone());
                    producer
                }
            }
        };
        producer.send(message).await
    }
}

/// The job of `schedule` for `tick` (Unix milliseconds), with its headers
/// and, where `idempotent`, the key that makes a second send of the tick
/// a duplicate.
pub(super) fn tick_message(schedule: &Schedule, tick: i64, idempotent: bool) -> Message {
    let message = schedule
        .job()
        .message()
        .with_header(HEADER_SCHEDULE, schedule.name())
        .with_header(HEADER_SCHEDULE_TICK, tick.to_string());
    if idempotent {
        message.with_idempotency_key(format!("schedule:{}:{tick}", schedule.name()))
    } else {
        message
    }
}

fn info(schedule: Schedule, last: Option<i64>) -> ScheduleInfo {
    let next_tick = (!schedule.is_paused())
        .then(|| {
            let after = last
                .unwrap_or(i64::MIN)
                .max(to_millis(schedule.active_since()))
                .max(to_millis(SystemTime::now()));
            schedule.spec().next_after_ms(after)
        })
        .flatten()
        .map(from_millis);
    ScheduleInfo {
        schedule,
        last_tick: last.map(from_millis),
        next_tick,
    }
}
