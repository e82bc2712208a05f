//! The queue depth gauges (`queue_depth{queue, state}`), refreshed from
//! the backend's stats while the worker fetches.

use std::sync::Arc;
use std::time::Duration;

use queue_core::message::QueueName;
use queue_core::traits::Backend;
use tokio::sync::watch;

/// Refresh the `queue_depth` gauges every `interval` until stopped.
pub(super) async fn run(
    backend: Arc<dyn Backend>,
    queue: QueueName,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let gauge = |state: &'static str| metrics::gauge!("queue_depth", "queue" => queue.to_string(), "state" => state);
    let (ready, delayed, in_flight, dead) = (
        gauge("ready"),
        gauge("delayed"),
        gauge("in_flight"),
        gauge("dead"),
    );
    loop {
        if let Ok(stats) = backend.admin().stats(&queue).await {
            ready.set(stats.ready as f64);
            delayed.set(stats.delayed as f64);
            in_flight.set(stats.in_flight as f64);
            dead.set(stats.dead as f64);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}
