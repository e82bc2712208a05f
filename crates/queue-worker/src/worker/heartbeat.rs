//! The worker's heartbeat: it reports itself to the backend's worker
//! registry every interval from its start, and leaves the registry once
//! shutdown has settled every job.

use std::sync::Arc;
use std::time::Duration;

use queue_core::traits::Backend;
use tokio::sync::watch;

use super::shared::Shared;

/// Report the worker to the registry every `interval` until it has
/// finished (or its handle is dropped), then remove it. A failed report is
/// logged and tried again next interval: the registry is for operators,
/// never a reason to stop working.
pub(super) async fn run(
    backend: Arc<dyn Backend>,
    shared: Arc<Shared>,
    interval: Duration,
    mut finished: watch::Receiver<bool>,
) {
    let mut info = queue_core::WorkerInfo::new(
        shared.queue.clone(),
        shared.settings.concurrency as u64,
        interval,
    );
    info.id = shared.id.clone();
    loop {
        let stats = shared.stats();
        info.in_flight = stats.in_flight;
        info.completed = stats.completed;
        info.failed = stats.failed;
        info.last_heartbeat = std::time::SystemTime::now();
        // A report still on its way when the worker finishes is given up:
        // shutdown does not wait on the registry. (Were it to land after
        // the removal below, the entry would drop out after three
        // intervals, as any silent worker's does.)
        let report = tokio::time::timeout(
            REGISTRY_CALL_LIMIT.min(interval),
            backend.admin().register_worker(&info),
        );
        tokio::select! {
            reported = report => match reported {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(worker = %info.id, error = %e, "could not report to the worker registry"),
                Err(_) => tracing::debug!(worker = %info.id, "no answer from the worker registry"),
            },
            _ = finished.wait_for(|done| *done) => break,
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = finished.wait_for(|done| *done) => break,
        }
    }
    match tokio::time::timeout(
        REGISTRY_CALL_LIMIT,
        backend.admin().deregister_worker(&info.id),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(worker = %info.id, error = %e, "could not leave the worker registry");
        }
        Err(_) => {
            tracing::debug!(worker = %info.id, "no answer from the worker registry: the worker drops out of it after three intervals");
        }
    }
}

/// The longest a registry call may hold up the heartbeat, and so
/// shutdown: the registry is for operators, and an entry left behind
/// drops out by itself after three silent intervals.
const REGISTRY_CALL_LIMIT: Duration = Duration::from_secs(1);
