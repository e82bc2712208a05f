//! One lane of a worker: fetches for its share of the slots, drives its
//! jobs as futures in one task, and acks finished jobs in batches.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use queue_core::error::{Error, ErrorKind, Result};
use queue_core::traits::{AckAndReceive, Consumer, Delivery, DeliveryError};
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

/// A receive in flight, with the acks it carries (finish and fetch).
type ReceiveFuture = Pin<Box<dyn Future<Output = AckAndReceive> + Send>>;
type AckFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Log the deliveries an ack call could not settle.
fn log_failed_acks(acked: std::result::Result<(), Vec<DeliveryError>>) {
    if let Err(failed) = acked {
        for f in failed {
            tracing::warn!(job_id = %f.delivery.message().id, error = %f.error, "ack failed; the job may run again");
        }
    }
}

/// Ack `batch` in one call, logging what could not be acked.
fn ack_batch(consumer: &Arc<dyn Consumer>, batch: Vec<Delivery>) -> AckFuture {
    let consumer = consumer.clone();
    Box::pin(async move { log_failed_acks(consumer.ack_batch(batch).await) })
}

/// Ack `acks` (possibly none) and receive up to `max`, in one call.
fn receive(
    consumer: &Arc<dyn Consumer>,
    acks: Vec<Delivery>,
    max: usize,
    wait: Duration,
) -> ReceiveFuture {
    let consumer = consumer.clone();
    Box::pin(async move {
        if acks.is_empty() {
            AckAndReceive {
                acked: Ok(()),
                received: consumer.receive(max, wait).await,
            }
        } else {
            consumer.ack_and_receive(acks, max, wait).await
        }
    })
}

/// One lane: fetches for its share of the slots and drives its jobs as
/// futures in one task (no task spawn per job). Finished jobs hand their
/// delivery back to the lane, which acks in one batch the jobs that
/// finished in the same turn, and whatever finished while the last ack
/// call was on its way; a delivery waiting for its ack
/// still holds its slot, so unacked deliveries never pile up. When no
/// receive is pending and finished jobs wait for their ack, the acks go
/// with the next receive in one call when the backend does both in one
/// round trip ([`Consumer::ack_and_receive`], [`Consumer::fuses_ack_and_receive`]:
/// one round trip per job at concurrency 1 instead of two); with any other
/// backend they go on their own beside a pending receive, so a new job is
/// picked up while the ack is on its way. A receive or ack
/// call stays pending across job completions rather than being dropped,
/// so a broker call is never cancelled half-way while the worker runs.
async fn run_lane(
    shared: Arc<Shared>,
    lane: usize,
    consumer: Arc<dyn Consumer>,
    slots: usize,
    mut stop: watch::Receiver<bool>,
    at_stop: Arc<AtomicU64>,
) {
    let mut running = FuturesUnordered::new();
    // The receive in flight, and how many acks ride with it.
    let mut receiving: Option<(ReceiveFuture, usize)> = None;
    let mut to_ack: Vec<Delivery> = Vec::new();
    let mut acking: Option<(AckFuture, usize)> = None;
    let mut failures = 0u32;
    let mut stopping = *stop.borrow();
    let (mut backlog, mut asked) = (false, 0usize);
    let (prefetch, wait) = (shared.settings.prefetch, shared.settings.poll_wait);
    let fused = consumer.fuses_ack_and_receive();
    loop {
        // With a backlog (the last receive came back full), refill in
        // batches of half the lane; otherwise keep a receive pending for
        // every free slot so a new job is picked up at once.
        let refill_at = if backlog { (slots / 2).max(1) } else { 1 };
        let in_flight = |acking: &Option<(AckFuture, usize)>,
                         receiving: &Option<(ReceiveFuture, usize)>| {
            acking.as_ref().map_or(0, |(_, n)| *n) + receiving.as_ref().map_or(0, |(_, n)| *n)
        };
        let free_after_acks = slots.saturating_sub(running.len() + in_flight(&acking, &receiving));
        if !stopping
            && fused
            && receiving.is_none()
            && acking.is_none()
            && !to_ack.is_empty()
            && free_after_acks >= refill_at
        {
            // Finish and fetch: the acks free their slots in the same call.
            let acks = std::mem::take(&mut to_ack);
            let riding = acks.len();
            asked = free_after_acks.min(prefetch);
            receiving = Some((receive(&consumer, acks, asked, wait), riding));
        }
        if acking.is_none() && !to_ack.is_empty() {
            let batch = std::mem::take(&mut to_ack);
            let len = batch.len();
            acking = Some((ack_batch(&consumer, batch), len));
        }
        let unacked = to_ack.len() + in_flight(&acking, &receiving);
        let free = slots.saturating_sub(running.len() + unacked);
        shared.counters[lane]
            .saturated
            .store(free == 0 && receiving.is_none(), AtomicOrdering::Relaxed);
        if stopping {
            break;
        }
        if receiving.is_none() && free >= refill_at {
            asked = free.min(prefetch);
            receiving = Some((receive(&consumer, Vec::new(), asked, wait), 0));
        }
        tokio::select! {
            Some(finished) = running.next(), if !running.is_empty() => {
                to_ack.extend(finished);
                // Jobs that finished in the same turn go in the same ack
                // call (a batch of no-op jobs acks as one, not as 1 + the rest).
                while let Some(Some(finished)) = running.next().now_or_never() {
                    to_ack.extend(finished);
                }
            }
            () = async { acking.as_mut().expect("guarded").0.as_mut().await }, if acking.is_some() => acking = None,
            done = async { receiving.as_mut().expect("guarded").0.as_mut().await }, if receiving.is_some() => {
                receiving = None;
                log_failed_acks(done.acked);
                match done.received {
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
    // Stop fetching. A pending receive that carries acks is finished, so
    // the acks land, and what it received goes back without spending an
    // attempt; one without acks is dropped (memory returns nothing it had
    // not handed out; a broker's unreturned deliveries come back when their
    // lease expires). Running jobs finish (or stop at the end of the grace
    // period, when `hard_stop` is set).
    if let Some((pending, riding)) = receiving.take() {
        if riding > 0 {
            let done = pending.await;
            log_failed_acks(done.acked);
            for delivery in done.received.unwrap_or_default() {
                if let Err(e) = delivery.release().await {
                    tracing::warn!(job_id = %e.delivery.message().id, error = %e.error, "could not hand back an unstarted job; it returns when its lease expires");
                }
            }
        }
    }
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
