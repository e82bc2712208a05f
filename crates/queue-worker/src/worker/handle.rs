//! A running worker: [`WorkerHandle`] starts the lanes and the background
//! tasks, and reports what they do ([`WorkerStats`], [`WorkerHealth`],
//! [`ShutdownReport`]).

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Duration;

use queue_core::error::{Error, ErrorKind, Result};
use queue_core::message::QueueName;
use queue_core::traits::{Backend, Consumer};
use serde::Serialize;
use tokio::sync::watch;

use super::shared::Shared;
use super::{depth, heartbeat, lane};
use crate::events::EventStream;

/// Counters of one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Attempts started.
    pub started: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Attempts failed (error, timeout, panic).
    pub failed: u64,
    /// Failed attempts handed back for a retry.
    pub retried: u64,
    /// Jobs dead-lettered by this worker (permanent failures and last attempts).
    pub dead_lettered: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Running now.
    pub in_flight: u64,
}

/// Liveness of one worker.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct WorkerHealth {
    /// The queue.
    pub queue: QueueName,
    /// Fetching (or saturated with running jobs) and not shut down.
    pub healthy: bool,
    /// Every slot is busy, so it is not fetching on purpose.
    pub saturated: bool,
    /// Time since the last successful receive call.
    pub since_last_fetch: Duration,
    /// The last receive error, if the last call failed.
    pub last_error: Option<String>,
}

/// What shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Jobs that finished during the grace period.
    pub finished_in_grace: u64,
    /// Jobs stopped at the end of the grace period and returned to the queue.
    pub returned: u64,
}

/// A running worker. Dropping the handle stops fetching and lets running
/// jobs finish in the background; call [`shutdown`](WorkerHandle::shutdown)
/// to wait for them and bound the wait by the grace period.
pub struct WorkerHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    hard_stop: watch::Sender<bool>,
    dispatcher: tokio::task::JoinHandle<Result<ShutdownReport>>,
    /// Ends the heartbeat (which then leaves the registry) once every job
    /// is done.
    finished: watch::Sender<bool>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("queue", &self.shared.queue)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// Spawn the depth gauges, the heartbeat and the lanes (one per
    /// consumer) of a worker whose jobs stop when `hard_stop` is set.
    pub(super) fn launch(
        backend: Arc<dyn Backend>,
        shared: Arc<Shared>,
        consumers: Vec<Arc<dyn Consumer>>,
        (stop, hard_stop): (watch::Sender<bool>, watch::Sender<bool>),
    ) -> WorkerHandle {
        let stop_rx = stop.subscribe();
        if let Some(interval) = shared.settings.depth_interval {
            tokio::spawn(depth::run(
                backend.clone(),
                shared.queue.clone(),
                interval,
                stop_rx.clone(),
            ));
        }
        let (finished, finished_rx) = watch::channel(false);
        let heartbeat = match shared.settings.heartbeat {
            Some(interval) if backend.capabilities().worker_registry.is_available() => {
                Some(tokio::spawn(heartbeat::run(
                    backend.clone(),
                    shared.clone(),
                    interval,
                    finished_rx,
                )))
            }
            _ => None,
        };
        let dispatcher = tokio::spawn(lane::dispatch(shared.clone(), consumers, stop_rx));
        WorkerHandle {
            shared,
            stop,
            hard_stop,
            dispatcher,
            finished,
            heartbeat,
        }
    }

    /// Lifecycle events of this worker's jobs.
    pub fn subscribe(&self) -> EventStream {
        self.shared.events.subscribe()
    }

    /// The queue.
    pub fn queue(&self) -> &QueueName {
        &self.shared.queue
    }

    /// This worker's id in the worker registry (`Admin::workers`).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Counters so far.
    pub fn stats(&self) -> WorkerStats {
        self.shared.stats()
    }

    /// Liveness: unhealthy once shut down, or when it has not fetched for
    /// the liveness timeout while it had free slots.
    pub fn health(&self) -> WorkerHealth {
        let (last, error) = self
            .shared
            .last_fetch
            .lock()
            .map(|g| (g.0, g.1.clone()))
            .unwrap_or_else(|p| {
                let g = p.into_inner();
                (g.0, g.1.clone())
            });
        let since_last_fetch = last.elapsed();
        // Not fetching on purpose only when every lane is full.
        let saturated = self
            .shared
            .counters
            .iter()
            .all(|lane| lane.saturated.load(AtomicOrdering::Relaxed));
        let running = !self.dispatcher.is_finished() && !*self.stop.borrow();
        WorkerHealth {
            queue: self.shared.queue.clone(),
            healthy: running
                && (saturated || since_last_fetch <= self.shared.settings.liveness_timeout),
            saturated,
            since_last_fetch,
            last_error: error,
        }
    }

    /// Stop fetching now, without waiting (running jobs go on); follow with
    /// [`shutdown`](WorkerHandle::shutdown) to wait. Lets a caller stop many
    /// workers at once and then wait for all of them.
    pub fn stop_fetching(&self) {
        let _ = self.stop.send(true);
    }

    /// Stop fetching, let running jobs finish within the grace period, then
    /// stop the rest and return them to the queue. Waits for all of it.
    pub async fn shutdown(self) -> Result<ShutdownReport> {
        let _ = self.stop.send(true);
        let grace = self.shared.settings.shutdown_grace;
        let hard_stop = self.hard_stop;
        let mut dispatcher = self.dispatcher;
        let joined = tokio::select! {
            joined = &mut dispatcher => joined,
            () = tokio::time::sleep(grace) => {
                let _ = hard_stop.send(true);
                dispatcher.await
            }
        };
        // Every job is done: leave the registry before returning.
        let _ = self.finished.send(true);
        if let Some(heartbeat) = self.heartbeat {
            let _ = heartbeat.await;
        }
        joined
            .map_err(|e| Error::new(ErrorKind::Other, format!("worker dispatcher failed: {e}")))?
    }
}
