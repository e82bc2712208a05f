//! Samples of every queue's stats, shared by every viewer, with the rates
//! and the hour of history the charts draw.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use queue_core::store::millis_since_epoch;
use queue_core::{ErrorKind, HealthStatus, QueueName, QueueStats};
use serde::Serialize;

use crate::State;

/// Queue lists and health checks are reused for this long.
const SLOW_CACHE: Duration = Duration::from_secs(10);
/// While nobody looks, a sample this often keeps the chart going.
const BACKGROUND_EVERY: Duration = Duration::from_secs(10);
/// Chart points are at least this far apart.
const POINT_EVERY: Duration = Duration::from_secs(5);
/// And cover this much.
const HISTORY: Duration = Duration::from_secs(3600);

/// Everything the overview shows, from one sample.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Overview {
    /// When it was sampled (ms since the Unix epoch).
    pub sampled_at_ms: u64,
    /// Each backend's health.
    pub backends: Vec<BackendView>,
    /// Each queue of each backend, by backend then name.
    pub queues: Vec<QueueView>,
    /// Processed and failed per second over the last hour, summed over
    /// every queue.
    pub history: Vec<RatePoint>,
}

/// One backend in the overview.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BackendView {
    /// Its name in the dashboard.
    pub name: String,
    /// Which backend it is (`redis`, `amqp`, ...).
    pub kind: String,
    /// The health check passed.
    pub healthy: bool,
    /// How long the check took, in milliseconds.
    pub latency_ms: u64,
    /// Why it is unhealthy.
    pub error: Option<String>,
    /// Why its queues could not be listed (RabbitMQ cannot list them).
    pub queues_note: Option<String>,
    /// Whether its figures are estimates.
    pub approximate: bool,
}

/// One queue in the overview.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct QueueView {
    /// Its backend's name.
    pub backend: String,
    /// The queue.
    pub queue: QueueName,
    /// Its counts (`None` when they could not be read: see `error`).
    pub stats: Option<QueueStats>,
    /// Acks per second since the previous sample.
    pub processed_per_second: Option<f64>,
    /// Retries and dead letters per second since the previous sample.
    pub failed_per_second: Option<f64>,
    /// Why the counts could not be read.
    pub error: Option<String>,
}

/// One point of a rate chart.
#[derive(Debug, Clone, Copy, Serialize)]
#[non_exhaustive]
pub struct RatePoint {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// Jobs processed per second.
    pub processed: f64,
    /// Jobs failed (retried or dead-lettered) per second.
    pub failed: f64,
}

type Key = (String, QueueName);

pub(crate) struct Sampler {
    /// A sample younger than this is served as it is.
    fresh: Duration,
    inner: tokio::sync::Mutex<Samples>,
}

#[derive(Default)]
struct Samples {
    last: Option<(Instant, Arc<Overview>)>,
    queue_lists: HashMap<String, (Instant, Result<Vec<QueueName>, String>)>,
    health: HashMap<String, (Instant, HealthStatus)>,
    previous: HashMap<Key, (Instant, u64, u64)>,
    history: HashMap<Key, VecDeque<RatePoint>>,
    total: VecDeque<RatePoint>,
}

fn failed_total(s: &QueueStats) -> u64 {
    s.retried_total + s.dead_lettered_total
}

/// For each backend whose stats totals are this process's own
/// ([`Totals::Process`](queue_core::Totals::Process): RabbitMQ, SQS,
/// Kafka) and whose worker registry answers (kept in a coordination
/// store: `queue::with_store`), every queue's jobs completed and failed
/// summed over its live workers' reports. A worker that stops takes its
/// count with it: the rate of that sample is then zero, never negative.
async fn fleet_totals(state: &State) -> BTreeMap<String, BTreeMap<QueueName, (u64, u64)>> {
    let mut fleet = BTreeMap::new();
    for (name, backend) in &state.backends {
        if backend.capabilities().totals != queue_core::Totals::Process {
            continue;
        }
        let Ok(workers) = backend.admin().workers().await else {
            continue;
        };
        let mut queues: BTreeMap<QueueName, (u64, u64)> = BTreeMap::new();
        for worker in workers {
            let sums = queues.entry(worker.queue.clone()).or_default();
            sums.0 += worker.completed;
            sums.1 += worker.failed;
        }
        fleet.insert(name.clone(), queues);
    }
    fleet
}

fn push_point(points: &mut VecDeque<RatePoint>, point: RatePoint) {
    let spaced = points.back().is_none_or(|last| {
        point.at_ms.saturating_sub(last.at_ms) >= POINT_EVERY.as_millis() as u64
    });
    if spaced {
        points.push_back(point);
    }
    let oldest = point.at_ms.saturating_sub(HISTORY.as_millis() as u64);
    while points.front().is_some_and(|p| p.at_ms < oldest) {
        points.pop_front();
    }
}

impl Sampler {
    pub(crate) fn new(fresh: Duration) -> Self {
        Sampler {
            fresh,
            inner: tokio::sync::Mutex::default(),
        }
    }

    /// The latest sample, taken now unless one is fresh. Concurrent
    /// viewers wait for the same sample instead of each taking one.
    pub(crate) async fn overview(&self, state: &State) -> Arc<Overview> {
        let mut samples = self.inner.lock().await;
        if let Some((at, overview)) = &samples.last {
            if at.elapsed() < self.fresh {
                return overview.clone();
            }
        }
        let overview = Arc::new(samples.take(state).await);
        samples.last = Some((Instant::now(), overview.clone()));
        overview
    }

    /// The chart of one queue.
    pub(crate) async fn history(&self, backend: &str, queue: &QueueName) -> Vec<RatePoint> {
        let samples = self.inner.lock().await;
        samples
            .history
            .get(&(backend.to_owned(), queue.clone()))
            .map(|points| points.iter().copied().collect())
            .unwrap_or_default()
    }

    async fn idle_for(&self) -> Option<Duration> {
        let samples = self.inner.lock().await;
        samples.last.as_ref().map(|(at, _)| at.elapsed())
    }

    /// Forget cached queue lists (after a change that adds or removes one).
    pub(crate) async fn invalidate(&self) {
        let mut samples = self.inner.lock().await;
        samples.queue_lists.clear();
        samples.last = None;
    }
}

impl Samples {
    async fn take(&mut self, state: &State) -> Overview {
        let mut backends = Vec::with_capacity(state.backends.len());
        let mut wanted: BTreeSet<Key> = state.queues.iter().cloned().collect();
        if let Some(manager) = &state.manager {
            wanted.extend(manager.known_queues());
        }
        for (name, backend) in &state.backends {
            let admin = backend.admin();
            let health = match self.health.get(name) {
                Some((at, health)) if at.elapsed() < SLOW_CACHE && health.healthy => health.clone(),
                _ => {
                    let health = admin.health().await;
                    self.health
                        .insert(name.clone(), (Instant::now(), health.clone()));
                    health
                }
            };
            let listed = match self.queue_lists.get(name) {
                Some((at, listed)) if at.elapsed() < SLOW_CACHE => listed.clone(),
                _ => {
                    let listed = admin.queues().await.map_err(|e| match e.kind() {
                        ErrorKind::Unsupported => {
                            "this backend cannot list its queues: name them (Dashboard::queue)"
                                .to_owned()
                        }
                        _ => format!("could not list the queues: {e}"),
                    });
                    self.queue_lists
                        .insert(name.clone(), (Instant::now(), listed.clone()));
                    listed
                }
            };
            let queues_note = match listed {
                Ok(queues) => {
                    wanted.extend(queues.into_iter().map(|q| (name.clone(), q)));
                    None
                }
                Err(note) => Some(note),
            };
            backends.push(BackendView {
                name: name.clone(),
                kind: backend.capabilities().backend.to_owned(),
                healthy: health.healthy,
                latency_ms: u64::try_from(health.latency.as_millis()).unwrap_or(u64::MAX),
                error: health.error.clone(),
                queues_note,
                approximate: !backend.capabilities().exact_stats(),
            });
        }
        // Every queue's stats at once: one round trip each, concurrently.
        let calls = wanted.iter().map(|(name, queue)| async move {
            match state.backend(name) {
                Some(backend) => backend.admin().stats(queue).await,
                None => Err(queue_core::Error::new(
                    ErrorKind::NotFound,
                    format!("no backend named {name}"),
                )),
            }
        });
        let results = futures_util::future::join_all(calls).await;
        let fleet = fleet_totals(state).await;
        let now = Instant::now();
        let at_ms = millis_since_epoch(SystemTime::now());
        let mut queues = Vec::with_capacity(wanted.len());
        let (mut total_processed, mut total_failed, mut any_rate) = (0.0, 0.0, false);
        for ((backend, queue), result) in wanted.into_iter().zip(results) {
            let key = (backend.clone(), queue.clone());
            let mut view = QueueView {
                backend,
                queue,
                stats: None,
                processed_per_second: None,
                failed_per_second: None,
                error: None,
            };
            match result {
                Ok(stats) => {
                    // Where the backend counts in each process only, the
                    // workers' own reports in the registry count for the fleet.
                    let (acked, failed) = match fleet.get(&key.0) {
                        Some(queues) => queues.get(&key.1).copied().unwrap_or_default(),
                        None => (stats.acked_total, failed_total(&stats)),
                    };
                    if let Some((then, acked_before, failed_before)) =
                        self.previous.insert(key.clone(), (now, acked, failed))
                    {
                        let secs = now.duration_since(then).as_secs_f64().max(1e-3);
                        let processed = acked.saturating_sub(acked_before) as f64 / secs;
                        let failed = failed.saturating_sub(failed_before) as f64 / secs;
                        view.processed_per_second = Some(processed);
                        view.failed_per_second = Some(failed);
                        total_processed += processed;
                        total_failed += failed;
                        any_rate = true;
                        push_point(
                            self.history.entry(key).or_default(),
                            RatePoint {
                                at_ms,
                                processed,
                                failed,
                            },
                        );
                    }
                    publish_gauges(&view.queue, &stats);
                    view.stats = Some(stats);
                }
                // A queue deleted since it was listed.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => view.error = Some(e.to_string()),
            }
            queues.push(view);
        }
        if any_rate {
            push_point(
                &mut self.total,
                RatePoint {
                    at_ms,
                    processed: total_processed,
                    failed: total_failed,
                },
            );
        }
        // Queues gone from the sample lose their history.
        let live: BTreeSet<Key> = queues
            .iter()
            .map(|q| (q.backend.clone(), q.queue.clone()))
            .collect();
        self.previous.retain(|k, _| live.contains(k));
        self.history.retain(|k, _| live.contains(k));
        Overview {
            sampled_at_ms: at_ms,
            backends,
            queues,
            history: self.total.iter().copied().collect(),
        }
    }
}

/// The sampled counts as `queue_depth{queue, state}` gauges (the names
/// the worker uses) and `queue_oldest_ready_seconds{queue}`, for whatever
/// metrics recorder the process installed (`queue serve` serves them on
/// `/metrics`).
fn publish_gauges(queue: &QueueName, stats: &QueueStats) {
    let q = queue.to_string();
    for (state, value) in [
        ("ready", stats.ready),
        ("delayed", stats.delayed),
        ("in_flight", stats.in_flight),
        ("dead", stats.dead),
    ] {
        metrics::gauge!("queue_depth", "queue" => q.clone(), "state" => state).set(value as f64);
    }
    metrics::gauge!("queue_oldest_ready_seconds", "queue" => q)
        .set(stats.oldest_ready_age.map_or(0.0, |d| d.as_secs_f64()));
}

/// Sample every ten seconds while no viewer has, so the hour's chart has
/// points; stops when the router (its state) is dropped.
pub(crate) fn spawn_background(state: &Arc<State>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<State> = Arc::downgrade(state);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(BACKGROUND_EVERY).await;
            let Some(state) = weak.upgrade() else {
                return;
            };
            let idle = state.sampler.idle_for().await;
            if idle.is_none_or(|idle| idle >= BACKGROUND_EVERY) {
                state.sampler.overview(&state).await;
            }
        }
    });
}
