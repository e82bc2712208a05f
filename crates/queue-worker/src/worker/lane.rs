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
use super::handle::ShutdownReport;
use super::shared::Shared;

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

/// Hand back deliveries received but never started, without spending an
/// attempt.
async fn release_all(deliveries: Vec<Delivery>) {
    let released = deliveries.into_iter().map(Delivery::release);
    for result in futures_util::future::join_all(released).await {
        if let Err(e) = result {
            tracing::warn!(job_id = %e.delivery.message().id, error = %e.error, "could not hand back an unstarted job; it returns when its lease expires");
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

/// Runs lane `index` in its own task. The task owns `shared`; the lane and
/// its jobs borrow it, so starting a job clones nothing.
async fn run_lane(
    shared: Arc<Shared>,
    index: usize,
    consumer: Arc<dyn Consumer>,
    slots: usize,
    stop: watch::Receiver<bool>,
    at_stop: Arc<AtomicU64>,
) {
    let shared: &Shared = &shared;
    let start_job = move |delivery| run_job(shared, index, delivery);
    Lane::new(shared, index, consumer, slots, stop, start_job)
        .run(&at_stop)
        .await;
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
/// so a broker call is never cancelled half-way, not even at shutdown
/// (which cuts short only a receive's wait: [`Consumer::stop_waiting`]).
struct Lane<'a, StartJob, RunningJob> {
    /// The ack call on its way, and how many acks it carries.
    acking: Option<(AckFuture, usize)>,
    /// Deliveries of finished jobs waiting for an ack call.
    to_ack: Vec<Delivery>,
    /// The receive in flight, and how many acks ride with it.
    receiving: Option<(ReceiveFuture, usize)>,
    /// The jobs running; each hands back its delivery when it is to be acked.
    running: FuturesUnordered<RunningJob>,
    start_job: StartJob,
    shared: &'a Shared,
    index: usize,
    consumer: Arc<dyn Consumer>,
    slots: usize,
    stop: watch::Receiver<bool>,
    stopping: bool,
    /// Receive calls failed in a row.
    failures: u32,
    /// The last receive came back full.
    backlog: bool,
    /// How many deliveries the last receive asked for.
    asked: usize,
    prefetch: usize,
    wait: Duration,
    fused: bool,
}

impl<'a, StartJob, RunningJob> Lane<'a, StartJob, RunningJob>
where
    StartJob: Fn(Delivery) -> RunningJob,
    RunningJob: Future<Output = Option<Delivery>>,
{
    fn new(
        shared: &'a Shared,
        index: usize,
        consumer: Arc<dyn Consumer>,
        slots: usize,
        stop: watch::Receiver<bool>,
        start_job: StartJob,
    ) -> Self {
        let stopping = *stop.borrow();
        let fused = consumer.fuses_ack_and_receive();
        Lane {
            acking: None,
            to_ack: Vec::new(),
            receiving: None,
            running: FuturesUnordered::new(),
            start_job,
            shared,
            index,
            consumer,
            slots,
            stop,
            stopping,
            failures: 0,
            backlog: false,
            asked: 0,
            prefetch: shared.settings.prefetch,
            wait: shared.settings.poll_wait,
            fused,
        }
    }

    /// Each turn: hand the acks waiting to a call (riding with the next
    /// receive, or on their own), fetch for the free slots, then wait for
    /// the next event. Once told to stop, shut down.
    async fn run(mut self, at_stop: &AtomicU64) {
        loop {
            self.finish_and_fetch();
            self.send_acks();
            let free = self.free_slots();
            self.report_saturation(free);
            if self.stopping {
                break;
            }
            self.fetch(free);
            self.next_event().await;
        }
        self.shut_down(at_stop).await;
    }

    /// The fewest free slots worth a receive call. With a backlog (the
    /// last receive came back full), refill in batches of half the lane;
    /// otherwise keep a receive pending for every free slot so a new job
    /// is picked up at once.
    fn refill_at(&self) -> usize {
        if self.backlog {
            (self.slots / 2).max(1)
        } else {
            1
        }
    }

    /// Acks on their way: in the ack call and riding with the receive.
    fn acks_in_flight(&self) -> usize {
        self.acking.as_ref().map_or(0, |(_, n)| *n) + self.receiving.as_ref().map_or(0, |(_, n)| *n)
    }

    /// Finish and fetch: on a backend that fuses them, when neither call is
    /// on its way, the acks waiting go with the next receive, so they free
    /// their slots in the same call.
    fn finish_and_fetch(&mut self) {
        let free_after_acks = self
            .slots
            .saturating_sub(self.running.len() + self.acks_in_flight());
        if !self.stopping
            && self.fused
            && self.receiving.is_none()
            && self.acking.is_none()
            && !self.to_ack.is_empty()
            && free_after_acks >= self.refill_at()
        {
            let acks = std::mem::take(&mut self.to_ack);
            let riding = acks.len();
            self.asked = free_after_acks.min(self.prefetch);
            self.receiving = Some((receive(&self.consumer, acks, self.asked, self.wait), riding));
        }
    }

    /// Send the acks waiting in one call, unless an ack call is on its way
    /// (they go in the next one).
    fn send_acks(&mut self) {
        if self.acking.is_none() && !self.to_ack.is_empty() {
            let batch = std::mem::take(&mut self.to_ack);
            let len = batch.len();
            self.acking = Some((ack_batch(&self.consumer, batch), len));
        }
    }

    /// Slots neither running a job nor holding a delivery that waits for
    /// its ack.
    fn free_slots(&self) -> usize {
        let unacked = self.to_ack.len() + self.acks_in_flight();
        self.slots.saturating_sub(self.running.len() + unacked)
    }

    /// Tell [`WorkerHandle::health`](super::WorkerHandle::health) whether
    /// this lane is not fetching because every slot is busy.
    fn report_saturation(&self, free: usize) {
        self.shared.counters[self.index].saturated.store(
            free == 0 && self.receiving.is_none(),
            AtomicOrdering::Relaxed,
        );
    }

    /// Keep a receive pending for the free slots, when enough are free.
    fn fetch(&mut self, free: usize) {
        if self.receiving.is_none() && free >= self.refill_at() {
            self.asked = free.min(self.prefetch);
            self.receiving = Some((
                receive(&self.consumer, Vec::new(), self.asked, self.wait),
                0,
            ));
        }
    }

    /// Wait for the next thing to happen: jobs finish, the ack call or the
    /// receive returns, or the worker is told to stop.
    async fn next_event(&mut self) {
        let (running, acking, receiving, stop) = (
            &mut self.running,
            &mut self.acking,
            &mut self.receiving,
            &mut self.stop,
        );
        tokio::select! {
            Some(finished) = running.next(), if !running.is_empty() => self.collect_finished(finished),
            () = async { acking.as_mut().expect("guarded").0.as_mut().await }, if acking.is_some() => self.acking = None,
            done = async { receiving.as_mut().expect("guarded").0.as_mut().await }, if receiving.is_some() => self.received(done).await,
            changed = stop.changed() => {
                self.stopping = changed.is_err() || *self.stop.borrow();
            }
        }
    }

    /// Keep a finished job's delivery for the next ack call, with those of
    /// the jobs that finished in the same turn (a batch of no-op jobs acks
    /// as one, not as 1 + the rest).
    fn collect_finished(&mut self, finished: Option<Delivery>) {
        self.to_ack.extend(finished);
        while let Some(Some(finished)) = self.running.next().now_or_never() {
            self.to_ack.extend(finished);
        }
    }

    /// The receive returned: start the jobs it brought, or pause after a
    /// failure.
    async fn received(&mut self, done: AckAndReceive) {
        self.receiving = None;
        log_failed_acks(done.acked);
        match done.received {
            Ok(deliveries) => self.start(deliveries),
            Err(e) => self.back_off(e).await,
        }
    }

    /// Start a job for every delivery received.
    fn start(&mut self, deliveries: Vec<Delivery>) {
        self.failures = 0;
        self.backlog = deliveries.len() == self.asked;
        if let Ok(mut g) = self.shared.last_fetch.lock() {
            *g = (Instant::now(), None);
        }
        for delivery in deliveries {
            self.running.push((self.start_job)(delivery));
        }
    }

    /// Record a failed receive and pause before the next, longer after
    /// each failure in a row, while running jobs keep moving.
    async fn back_off(&mut self, error: Error) {
        self.failures += 1;
        tracing::warn!(queue = %self.shared.queue, error = %error, "receive failed");
        if let Ok(mut g) = self.shared.last_fetch.lock() {
            g.1 = Some(error.to_string());
        }
        let backoff = Duration::from_millis(100 * 2u64.pow(self.failures.min(6)));
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            let (running, acking, stop) = (&mut self.running, &mut self.acking, &mut self.stop);
            tokio::select! {
                () = &mut pause => break,
                Some(finished) = running.next(), if !running.is_empty() => self.to_ack.extend(finished),
                () = async { acking.as_mut().expect("guarded").0.as_mut().await }, if acking.is_some() => self.acking = None,
                _ = stop.changed() => { self.stopping = true; break; }
            }
        }
    }

    /// Stop fetching: tell the consumer to stop waiting
    /// ([`Consumer::stop_waiting`]), so a pending receive returns at once
    /// rather than after its poll wait. It is awaited, never dropped: the
    /// acks riding with it land, and what it received goes back without
    /// spending an attempt (dropping it in the middle of a claim would
    /// leave the claimed deliveries to sit out their lease). Meanwhile
    /// running jobs go on (stopping at the end of the grace period when
    /// `hard_stop` is set), and each that finishes is acked as it does,
    /// in batches, so its lease never runs out waiting for the others.
    async fn shut_down(mut self, at_stop: &AtomicU64) {
        self.consumer.stop_waiting();
        at_stop.fetch_add(self.running.len() as u64, AtomicOrdering::Relaxed);
        loop {
            self.send_acks();
            if self.running.is_empty() && self.acking.is_none() && self.receiving.is_none() {
                break;
            }
            let (running, acking, receiving) =
                (&mut self.running, &mut self.acking, &mut self.receiving);
            tokio::select! {
                Some(finished) = running.next(), if !running.is_empty() => self.collect_finished(finished),
                () = async { acking.as_mut().expect("guarded").0.as_mut().await }, if acking.is_some() => self.acking = None,
                done = async { receiving.as_mut().expect("guarded").0.as_mut().await }, if receiving.is_some() => {
                    self.receiving = None;
                    log_failed_acks(done.acked);
                    release_all(done.received.unwrap_or_default()).await;
                }
            }
        }
        self.shared.counters[self.index]
            .saturated
            .store(false, AtomicOrdering::Relaxed);
        // Nothing sent from now on goes to this worker's subscription.
        self.consumer.close().await;
    }
}
