//! The scheduling loop ([`ScheduleRunner`], [`RunnerHandle`]): every
//! process runs one; the holder of the leader lease fires the ticks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use queue_core::config::validation_error;
use queue_core::coordination::{self, Lease};
use queue_core::error::{Error, ErrorKind, Result};
use queue_core::message::MessageId;
use tokio::sync::watch;
use tokio::time::Instant;
use validator::{ValidationError, ValidationErrors};

use super::handle::{tick_message, Schedules};
use super::plan::plan;
use super::records::{self, LEADER_LEASE, TICKS_SPACE};
use super::schedule::Schedule;
use super::spec::to_millis;

/// The leader lease's time to live given none: 5 s. A leader that dies
/// without releasing it is replaced within this long.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// Builds the runner of a set of [`Schedules`] (`schedules.runner()`).
///
/// Every process runs one. The runners elect a leader with the lease
/// [`LEADER_LEASE`]: the leader renews it every third of its TTL and fires
/// the due ticks; the others try to take it every third of the TTL. A
/// leader that shuts down releases the lease, so another takes over at
/// its next try; one that dies is replaced once its lease runs out.
#[must_use]
#[derive(Debug)]
pub struct ScheduleRunner {
    schedules: Schedules,
    lease_ttl: Duration,
}

impl ScheduleRunner {
    pub(super) fn new(schedules: Schedules) -> Self {
        ScheduleRunner {
            schedules,
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }

    /// The leader lease's time to live (100 ms to 24 h; default
    /// [`DEFAULT_LEASE_TTL`]): how long a dead leader keeps the others
    /// waiting, against a renewal every third of it.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Check the settings (`Config` naming `lease_ttl`) and start the loop
    /// in a task.
    pub async fn start(self) -> Result<RunnerHandle> {
        if coordination::check_ttl(self.lease_ttl).is_err() {
            let mut errors = ValidationErrors::new();
            errors.add(
                "lease_ttl",
                ValidationError::new("range").with_message(
                    format!(
                        "must be {:?}..={:?}, not {:?}",
                        coordination::MIN_TTL,
                        coordination::MAX_TTL,
                        self.lease_ttl
                    )
                    .into(),
                ),
            );
            return Err(validation_error(errors));
        }
        let state = Arc::new(State {
            id: format!("{}-{}", std::process::id(), MessageId::new()),
            leader: AtomicBool::new(false),
            ticks_fired: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(self.schedules, state.clone(), self.lease_ttl, stopped));
        Ok(RunnerHandle { stop, task, state })
    }
}

/// A running [`ScheduleRunner`]. Dropping it stops the loop in the
/// background (releasing the lease); [`shutdown`](Self::shutdown) waits.
#[derive(Debug)]
pub struct RunnerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    id: String,
    leader: AtomicBool,
    ticks_fired: AtomicU64,
}

impl RunnerHandle {
    /// This runner's holder id in the leader lease.
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Whether it holds the leader lease now.
    pub fn is_leader(&self) -> bool {
        self.state.leader.load(Ordering::Relaxed)
    }

    /// Ticks this runner has fired.
    pub fn ticks_fired(&self) -> u64 {
        self.state.ticks_fired.load(Ordering::Relaxed)
    }

    /// Stop: wake the loop, let a tick being sent finish, release the
    /// lease (so another process takes over at its next try) and wait for
    /// all of it.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| Error::new(ErrorKind::Other, format!("schedule runner failed: {e}")))
    }

    /// Stop the task where it is, without releasing the lease: what a
    /// killed process leaves behind.
    #[cfg(test)]
    pub(super) fn kill(self) {
        self.task.abort();
    }
}

/// How a leader's round ended.
enum Round {
    /// Wake at this instant at the latest.
    Until(Instant),
    /// The lease was lost: stop firing.
    Lost,
}

async fn run(
    schedules: Schedules,
    state: Arc<State>,
    ttl: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let store = schedules.inner.store.clone();
    let step = ttl / 3;
    let mut lease: Option<Lease> = None;
    let mut renew_at = Instant::now();
    // A dropped handle stops the loop as a shutdown does.
    while !*stop.borrow() && stop.has_changed().is_ok() {
        // Registered before the round reads the schedules, so a change
        // made during the round still wakes the sleep after it.
        let changed = schedules.inner.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let wake = match lease.take() {
            None => match store.try_lease(LEADER_LEASE, &state.id, ttl).await {
                Ok(Some(taken)) => {
                    tracing::info!(holder = %state.id, token = taken.token, "schedule leader");
                    state.leader.store(true, Ordering::Relaxed);
                    renew_at = Instant::now() + step;
                    lease = Some(taken);
                    continue;
                }
                Ok(None) => Instant::now() + step,
                Err(e) => {
                    tracing::warn!(error = %e, "schedule runner: taking the leader lease failed");
                    Instant::now() + step
                }
            },
            Some(held) => {
                if Instant::now() >= renew_at {
                    match store.renew_lease(&held).await {
                        Ok(true) => renew_at = Instant::now() + step,
                        Ok(false) => {
                            lost(&state);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "schedule runner: renewing the leader lease failed");
                            renew_at = Instant::now() + step;
                        }
                    }
                }
                let round = tokio::select! {
                    round = fire_due(&schedules, &held, &state, step) => round,
                    // A shutdown does not wait for a slow round; a tick
                    // sent and not recorded is a duplicate for the next
                    // leader's idempotency key.
                    _ = stop.changed() => Ok(Round::Until(Instant::now())),
                };
                match round {
                    Ok(Round::Until(until)) => {
                        lease = Some(held);
                        until.min(renew_at)
                    }
                    Ok(Round::Lost) => {
                        lost(&state);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "schedule runner: round failed");
                        lease = Some(held);
                        (Instant::now() + step).min(renew_at)
                    }
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => {}
            () = &mut changed => {}
        }
    }
    if let Some(held) = lease {
        if let Err(e) = store.release_lease(&held).await {
            tracing::warn!(error = %e, "schedule runner: releasing the leader lease failed");
        }
    }
    state.leader.store(false, Ordering::Relaxed);
}

fn lost(state: &State) {
    tracing::info!(holder = %state.id, "schedule leader lease lost");
    state.leader.store(false, Ordering::Relaxed);
}

/// One leader round: read the schedules and their last ticks, fire what is
/// due, and say when the next tick is.
async fn fire_due(
    schedules: &Schedules,
    lease: &Lease,
    state: &State,
    step: Duration,
) -> Result<Round> {
    let store = &*schedules.inner.store;
    let all = records::load_all(store).await?;
    let handled = records::last_ticks(store).await?;
    let names: HashSet<&str> = all.iter().map(Schedule::name).collect();
    for orphan in handled.keys().filter(|name| !names.contains(name.as_str())) {
        // The schedule was removed while its tick was being recorded.
        store.remove(TICKS_SPACE, orphan).await?;
    }
    let idempotent = schedules.supports_idempotency();
    // Without any schedule, look again at the next renewal.
    let mut wake = Instant::now() + step;
    for schedule in all.iter().filter(|s| !s.is_paused()) {
        let mut after = handled
            .get(schedule.name())
            .copied()
            .unwrap_or(i64::MIN)
            .max(to_millis(schedule.active_since()));
        let now = to_millis(SystemTime::now());
        let grace = i64::try_from(schedule.grace().as_millis()).unwrap_or(i64::MAX);
        let due = plan(schedule.spec(), schedule.misfire(), grace, after, now);
        if let Some(dropped) = due.dropped_through {
            tracing::info!(
                schedule = schedule.name(),
                through = dropped,
                "missed ticks dropped"
            );
            if !record(schedules, lease, schedule, dropped).await? {
                return Ok(Round::Lost);
            }
            after = dropped;
        }
        let mut send_failed = false;
        for tick in due.fire {
            // Between this check and the record below the lease may pass
            // to another leader, which then sends the same tick: the
            // idempotency key makes that send a duplicate.
            if !store.renew_lease(lease).await? {
                return Ok(Round::Lost);
            }
            let message = tick_message(schedule, tick, idempotent);
            match schedules.send(schedule.job().queue(), message).await {
                Ok(_) => {
                    state.ticks_fired.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(schedule = schedule.name(), tick, error = %e, "tick not sent; retrying");
                    send_failed = true;
                    break;
                }
                Err(e) => {
                    tracing::error!(schedule = schedule.name(), tick, error = %e, "tick dropped: its job cannot be sent");
                }
            }
            if !record(schedules, lease, schedule, tick).await? {
                return Ok(Round::Lost);
            }
            after = tick;
        }
        let soonest = if send_failed {
            Instant::now() + step
        } else if due.truncated {
            Instant::now()
        } else {
            match schedule.spec().next_after_ms(after.max(now)) {
                Some(tick) => instant_of(tick),
                None => continue,
            }
        };
        wake = wake.min(soonest);
    }
    Ok(Round::Until(wake))
}

/// The monotonic instant of `tick` (Unix milliseconds), one millisecond
/// past it so the clock reads it as due on waking.
fn instant_of(tick: i64) -> Instant {
    let wait = tick.saturating_sub(to_millis(SystemTime::now()));
    let wait = u64::try_from(wait).unwrap_or(0).saturating_add(1);
    Instant::now() + Duration::from_millis(wait)
}

/// Record `tick` as handled for `schedule`, fenced by `lease`; `false` if
/// the lease is no longer current.
async fn record(
    schedules: &Schedules,
    lease: &Lease,
    schedule: &Schedule,
    tick: i64,
) -> Result<bool> {
    schedules
        .inner
        .store
        .fenced_put(
            lease,
            TICKS_SPACE,
            schedule.name(),
            records::tick_value(tick),
        )
        .await
}
