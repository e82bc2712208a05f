//! One lane of a worker: fetches for its share of the slots, drives its
//! jobs as futures in one task, and acks finished jobs in batches.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use queue_core::error::{Error, ErrorKind, Result};
use queue_core::traits::{Consumer, Delivery};
use tokio::sync::watch;

use super::attempt::run_job;
use super::{Shared, ShutdownReport};

/// Runs the lanes, one consumer each; on stop, waits for them.
pub(super) async fn dispatch(
    shared: Arc<Shared>,
    consumers: Vec<Arc<dyn Consumer>>,
    stop: watch::Receiver<bool>,
) -> Result<ShutdownReport> {
    let concurrency = shared.settings.concurrency;
    let lanes = consumers.len();
    let at_stop = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(lanes);
    for (lane, consumer) in consumers.into_iter().enumerate() {
        let slots = concurrency / lanes + usize::from(lane < concurrency % lanes);
        tasks.push(tokio::spawn(run_lane(
            shared.clone(),
            lane,
            consumer,
            slots,
            stop.clone(),
            at_stop.clone(),
        )));
    }
    for task in tasks {
        task.await
            .map_err(|e| Error::new(ErrorKind::Other, format!("worker lane failed: {e}")))?;
    }
    let returned: u64 = shared
        .counters
        .iter()
        .map(|c| c.returned.load(AtomicOrdering::Relaxed))
        .sum();
    Ok(ShutdownReport {
        finished_in_grace: at_stop
            .load(AtomicOrdering::Relaxed)
            .saturating_sub(returned),
        returned,
    })
}

type ReceiveFuture = Pin<Box<dyn Future<Output = Result<Vec<Delivery>>> + Send>>;
type AckFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Ack `batch` in one call, logging what could not be acked.
fn ack_batch(consumer: &Arc<dyn Consumer>, batch: Vec<Delivery>) -> AckFuture {
    let consumer = consumer.clone();
    Box::pin(async move {
        if let Err(failed) = consumer.ack_batch(batch).await {
            for f in failed {
                tracing::warn!(job_id = %f.delivery.message().id, error = %f.error, "ack failed; the job may run again");
            }
        }
    })
}

/// One lane: fetches for its share of the slots and drives its jobs as
/// futures in one task (no task spawn per job). Finished jobs hand their
/// delivery back to the lane, which acks whatever finished while the last
/// ack call was on its way in one batch; a delivery waiting for its ack
/// still holds its slot, so unacked deliveries never pile up. A receive or
/// ack call stays pending across job completions rather than being
/// dropped, so a broker call is never cancelled half-way while the worker
/// runs.
async fn run_lane(
    shared: Arc<Shared>,
    lane: usize,
    consumer: Arc<dyn Consumer>,
    slots: usize,
    mut stop: watch::Receiver<bool>,
    at_stop: Arc<AtomicU64>,
) {
    let mut running = FuturesUnordered::new();
    let mut receiving: Option<ReceiveFuture> = None;
    let mut to_ack: Vec<Delivery> = Vec::new();
    let mut acking: Option<(AckFuture, usize)> = None;
    let mut failures = 0u32;
    let mut stopping = *stop.borrow();
    let (mut backlog, mut asked) = (false, 0usize);
    loop {
        if acking.is_none() && !to_ack.is_empty() {
            let batch = std::mem::take(&mut to_ack);
            let len = batch.len();
            acking = Some((ack_batch(&consumer, batch), len));
        }
        let unacked = to_ack.len() + acking.as_ref().map_or(0, |(_, n)| *n);
        let free = slots.saturating_sub(running.len() + unacked);
        shared.counters[lane]
            .saturated
            .store(free == 0, AtomicOrdering::Relaxed);
        if stopping {
            break;
        }
        // With a backlog (the last receive came back full), refill in
        // batches of half the lane; otherwise keep a receive pending for
        // every free slot so a new job is picked up at once.
        let refill_at = if backlog { (slots / 2).max(1) } else { 1 };
        if receiving.is_none() && free >= refill_at {
            let consumer = consumer.clone();
            let (max, wait) = (
                free.min(shared.settings.prefetch),
                shared.settings.poll_wait,
            );
            asked = max;
            receiving = Some(Box::pin(async move { consumer.receive(max, wait).await }));
        }
        tokio::select! {
            Some(finished) = running.next(), if !running.is_empty() => to_ack.extend(finished),
            () = async { acking.as_mut().expect("guarded").0.as_mut().await }, if acking.is_some() => acking = None,
            received = async { receiving.as_mut().expect("guarded").await }, if receiving.is_some() => {
                receiving = None;
                match received {
                    Ok(deliveries) => {
                        failures = 0;
                        backlog = deliveries.len() == asked;
                        if let Ok(mut g) = shared.last_fetch.lock() {
                            *g = (Instant::now(), None);
                        }
                        for delivery in deliveries {
                            running.push(run_job(&shared, lane, delivery));
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(queue = %shared.queue, error = %e, "receive failed");
                        if let Ok(mut g) = shared.last_fetch.lock() {
                            g.1 = Some(e.to_string());
                        }
                        let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                        let pause = tokio::time::sleep(backoff);
                        tokio::pin!(pause);
                        // Keep running jobs moving while pausing.
                        loop {
                            tokio::select! {
                                () = &mut pause => break,
                                Some(finished) = running.next(), if !running.is_empty() => to_ack.extend(finished),
                                () = async { acking.as_mut().expect("guarded").0.as_mut().await }, if acking.is_some() => acking = None,
                                _ = stop.changed() => { stopping = true; break; }
                            }
                        }
                    }
                }
            }
            changed = stop.changed() => {
                stopping = changed.is_err() || *stop.borrow();
            }
        }
    }
    // Stop fetching. A pending receive is dropped: memory returns nothing
    // it had not handed out; a broker's unreturned deliveries come back when
    // their lease expires. Running jobs finish (or stop at the end of the
    // grace period, when `hard_stop` is set).
    drop(receiving);
    at_stop.fetch_add(running.len() as u64, AtomicOrdering::Relaxed);
    while let Some(finished) = running.next().await {
        to_ack.extend(finished);
    }
    if let Some((ack, _)) = acking {
        ack.await;
    }
    if !to_ack.is_empty() {
        ack_batch(&consumer, to_ack).await;
    }
    shared.counters[lane]
        .saturated
        .store(false, AtomicOrdering::Relaxed);
}
