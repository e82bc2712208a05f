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
        if let Err(e) = backend.admin().register_worker(&info).await {
            tracing::debug!(worker = %info.id, error = %e, "could not report to the worker registry");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = finished.wait_for(|done| *done) => break,
        }
    }
    if let Err(e) = backend.admin().deregister_worker(&info.id).await {
        tracing::debug!(worker = %info.id, error = %e, "could not leave the worker registry");
    }
}
