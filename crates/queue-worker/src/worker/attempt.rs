//! One attempt of one job, in three steps: [`begin`] (count it, check the
//! job store, decode, start the handler), [`drive`] (poll the handler under
//! its timeout, extend the lease, stop it at the end of the grace period)
//! and [`settle`] (ack, nack with backoff, dead-letter, release). Every
//! outcome is recorded in one place, [`record`]: the lane's counter, the
//! metric, the event and the job store's status change together.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use queue_core::error::{BoxError, HandlerAction, HandlerError};
use queue_core::job::BackoffPolicy;
use queue_core::message::{random_unit, MessageId};
use queue_core::stats::DeadLetterReason;
use queue_core::store::JobUpdate;
use queue_core::trace::{TraceContext, TRACEPARENT};
use queue_core::traits::Delivery;
use tokio::sync::watch;

use super::flow::Admitted;
use super::handler::{HandlerFuture, JobScope};
use super::shared::{Counters, Shared};
use crate::events::{JobEvent, JobEventKind};

/// Run one delivery through the handler and settle it; a delivery to ack
/// is handed back to the lane, which acks in batches.
pub(super) async fn run_job(shared: &Shared, lane: usize, delivery: Delivery) -> Option<Delivery> {
    let counters = &shared.counters[lane];
    let (delivery, slot) = if shared.flow.holds_back() {
        match admit(shared, counters, delivery).await {
            Some(admitted) => admitted,
            None => return None,
        }
    } else {
        (delivery, None)
    };
    let to_ack = match begin(shared, counters, delivery).await {
        Begun::Running(job) => {
            let (outcome, delivery, run_time) =
                drive(shared, job.delivery, job.fut, job.timeout, &job.span).await;
            settle(
                shared,
                counters,
                delivery,
                outcome,
                run_time,
                job.own_backoff,
            )
            .await
        }
        Begun::Settled(to_ack) => to_ack,
    };
    shared.flow.release(slot);
    counters.finished.fetch_add(1, AtomicOrdering::Relaxed);
    to_ack
}

/// Wait for the job's turn under the worker's flow control: `None` when
/// it was handed back (the worker stopped) or dead-lettered (its rate
/// limit key is invalid) instead.
async fn admit(
    shared: &Shared,
    counters: &Counters,
    delivery: Delivery,
) -> Option<(Delivery, Option<String>)> {
    // Boxed: the jobs that never wait keep a small future.
    let admitted = Box::pin(
        shared
            .flow
            .admit(delivery, &shared.stop, shared.settings.lease),
    );
    match admitted.await {
        Admitted::Go { delivery, slot } => Some((delivery, slot)),
        Admitted::Stopped { delivery, slot } => {
            shared.flow.release(slot);
            let id = delivery.message().id;
            if let Err(e) = delivery.release().await {
                tracing::warn!(job_id = %id, error = %e.error, "could not return a waiting job; it returns when its lease expires");
            }
            counters.returned.fetch_add(1, AtomicOrdering::Relaxed);
            None
        }
        Admitted::Invalid { delivery, error } => {
            let text = error.to_string();
            dead_letter(
                shared,
                counters,
                delivery,
                DeadLetterReason::Rejected(text.clone()),
                text,
            )
            .await;
            None
        }
    }
}

/// What an attempt came to, as the worker counts, measures and announces it.
enum Tally {
    Completed {
        run_time: Duration,
        result: Option<serde_json::Value>,
    },
    Failed {
        run_time: Duration,
        error: String,
    },
    Retried {
        delay: Duration,
        error: String,
    },
    DeadLettered {
        reason: String,
        error: String,
    },
    /// Cancelled by the handler (recorded in the store) or before it
    /// started (the store already says so).
    Cancelled {
        by_handler: bool,
    },
    /// Stopped at the end of the shutdown grace period and handed back.
    Returned,
}

/// Record one outcome of job `id`: the job store's status, then the lane's
/// counter, the metric and the lifecycle event, all from one place. The
/// store goes first, so whoever sees the event or the counter reads the new
/// status.
async fn record(shared: &Shared, counters: &Counters, id: MessageId, attempt: u32, tally: Tally) {
    let update = match &tally {
        Tally::Completed { result, .. } => Some(JobUpdate::Completed {
            result: result.clone(),
        }),
        Tally::Failed { .. } | Tally::Cancelled { by_handler: false } => None,
        Tally::Retried { error, .. } => Some(JobUpdate::Retry {
            error: error.clone(),
        }),
        Tally::DeadLettered { error, .. } => Some(JobUpdate::Dead {
            error: error.clone(),
        }),
        Tally::Cancelled { by_handler: true } => Some(JobUpdate::Cancelled),
        Tally::Returned => Some(JobUpdate::Retry {
            error: STOPPED.to_owned(),
        }),
    };
    if let (Some(store), Some(update)) = (&shared.store, update) {
        // A store that fails is logged, not fatal: the job itself is
        // settled either way.
        if let Err(e) = store.update(id, update).await {
            tracing::warn!(job_id = %id, error = %e, "could not record the job's status");
        }
    }
    let metrics = &shared.metrics;
    let event = |kind: JobEventKind| JobEvent::new(kind, id, shared.queue.clone(), attempt);
    match tally {
        Tally::Completed { run_time, .. } => {
            counters.completed.fetch_add(1, AtomicOrdering::Relaxed);
            metrics.completed.increment(1);
            shared
                .events
                .emit(|| event(JobEventKind::Completed).with_duration(run_time));
        }
        Tally::Failed { run_time, error } => {
            counters.failed.fetch_add(1, AtomicOrdering::Relaxed);
            metrics.failed.increment(1);
            shared
                .events
                .emit(|| event(JobEventKind::Failed { error }).with_duration(run_time));
        }
        Tally::Retried { delay, .. } => {
            counters.retried.fetch_add(1, AtomicOrdering::Relaxed);
            metrics.retried.increment(1);
            shared
                .events
                .emit(|| event(JobEventKind::Retried { delay }));
        }
        Tally::DeadLettered { reason, .. } => {
            counters.dead_lettered.fetch_add(1, AtomicOrdering::Relaxed);
            metrics.dead_lettered.increment(1);
            shared
                .events
                .emit(|| event(JobEventKind::DeadLettered { reason }));
        }
        Tally::Cancelled { .. } => {
            counters.cancelled.fetch_add(1, AtomicOrdering::Relaxed);
            metrics.cancelled.increment(1);
            shared.events.emit(|| event(JobEventKind::Cancelled));
        }
        Tally::Returned => {
            counters.returned.fetch_add(1, AtomicOrdering::Relaxed);
        }
    }
}

/// The error recorded for a job stopped by shutdown.
const STOPPED: &str = "worker shut down before the job finished";

/// A job whose handler is running.
struct Running {
    delivery: Delivery,
    fut: CatchUnwind,
    timeout: Option<Duration>,
    own_backoff: Option<BackoffPolicy>,
    span: tracing::Span,
}

enum Begun {
    Running(Running),
    /// Settled without running: `Some` to ack (cancelled before it
    /// started), `None` when settled otherwise (undecodable, dead-lettered).
    Settled(Option<Delivery>),
}

/// Count the attempt, check the job store, decode the job and start its
/// handler (the synchronous part runs here, under `catch_unwind`).
async fn begin(shared: &Shared, counters: &Counters, delivery: Delivery) -> Begun {
    let message = delivery.message();
    let (id, attempt) = (message.id, message.attempt);
    counters.started.fetch_add(1, AtomicOrdering::Relaxed);
    shared.metrics.in_flight.increment(1.0);
    let due = message
        .not_before
        .map_or(message.created_at, |nb| nb.max(message.created_at));
    let pickup = SystemTime::now().duration_since(due).unwrap_or_default();
    shared.metrics.pickup.record(pickup.as_secs_f64());
    shared.events.emit(|| {
        JobEvent::new(JobEventKind::Started, id, shared.queue.clone(), attempt)
            .with_duration(pickup)
    });

    if let Some(store) = &shared.store {
        // A job cancelled before it started is settled without running;
        // `start` checks and marks in one step, so a cancel cannot slip in.
        let start = store.start(id, attempt).await.unwrap_or_else(|e| {
            tracing::warn!(job_id = %id, error = %e, "could not record the job's start; running it");
            true
        });
        if !start {
            shared.metrics.in_flight.decrement(1.0);
            let tally = Tally::Cancelled { by_handler: false };
            record(shared, counters, id, attempt, tally).await;
            return Begun::Settled(Some(delivery));
        }
    }

    // The sender's context; a raw message may carry it as a plain header.
    let parent = message.trace.or_else(|| {
        message
            .headers
            .get(TRACEPARENT)
            .and_then(|v| TraceContext::parse(v))
    });
    #[allow(unused_mut)]
    let mut context = parent.map_or_else(TraceContext::new_root, |p| p.child());
    let span = tracing::info_span!(
        "job",
        queue = %shared.queue,
        job_id = %id,
        attempt,
        trace_id = %format_args!("{:032x}", context.trace_id),
        span_id = %format_args!("{:016x}", context.span_id),
        parent_span_id = %parent.map(|p| format!("{:016x}", p.span_id)).unwrap_or_default(),
    );
    // With OpenTelemetry, the sender's span is the job span's remote
    // parent, and the job's context is the one the layer gave its span
    // (before the span is first entered, as the layer requires).
    #[cfg(feature = "otel")]
    if let Some(own) = queue_core::trace::otel::adopt(&span, parent.as_ref()) {
        context = own;
        span.record(
            "trace_id",
            tracing::field::display(format_args!("{:032x}", own.trace_id)),
        );
        span.record(
            "span_id",
            tracing::field::display(format_args!("{:016x}", own.span_id)),
        );
    }
    // The job's own timeout comes from the wire: never longer than the
    // worker allows.
    let timeout = queue_core::job::timeout_of(message)
        .map(|own| own.min(shared.settings.longest_timeout()))
        .or(shared.settings.timeout);
    let own_backoff = queue_core::job::backoff_of(message);
    let scope = JobScope {
        context,
        parent,
        span: span.clone(),
    };
    // Decoding and the synchronous part of the handler run here, outside
    // the future: a panic there fails the attempt too.
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| (shared.handler)(message, scope)));
    let fut = match started {
        Ok(Ok(fut)) => CatchUnwind(Ok(fut)),
        Err(payload) => CatchUnwind(Err(Some(panic_message(&*payload)))),
        Ok(Err(decode_error)) => {
            // Bytes that are not this handler's job type: retrying cannot help.
            tracing::warn!(parent: &span, error = %decode_error, "undecodable job dead-lettered");
            shared.metrics.in_flight.decrement(1.0);
            let error = decode_error.to_string();
            dead_letter(shared, counters, delivery, DeadLetterReason::Decode, error).await;
            return Begun::Settled(None);
        }
    };
    Begun::Running(Running {
        delivery,
        fut,
        timeout,
        own_backoff,
        span,
    })
}

/// How the handler ended.
enum Outcome {
    Done(Option<serde_json::Value>),
    Failed(HandlerError),
    Panicked(String),
    TimedOut(Duration),
    Stopped,
}

impl Outcome {
    fn of(out: <CatchUnwind as Future>::Output) -> Outcome {
        match out {
            Ok(Ok(value)) => Outcome::Done(value),
            Ok(Err(error)) => Outcome::Failed(HandlerError::from_boxed(error)),
            Err(panic) => Outcome::Panicked(panic),
        }
    }
}

/// Poll the handler to its end. Most jobs finish on their first poll:
/// those create no timer (and keep the timers' state out of the future
/// every job allocates); the others are supervised. The handler's future is
/// dropped before this returns, so a timed-out handler never resumes.
async fn drive(
    shared: &Shared,
    delivery: Delivery,
    mut fut: CatchUnwind,
    timeout: Option<Duration>,
    span: &tracing::Span,
) -> (Outcome, Delivery, Duration) {
    let started = Instant::now();
    let first_poll = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await;
    let (outcome, delivery) = match first_poll {
        Poll::Ready(out) => (Outcome::of(out), delivery),
        Poll::Pending => Box::pin(supervise(shared, delivery, fut, timeout, span)).await,
    };
    let run_time = started.elapsed();
    shared.metrics.run_time.record(run_time.as_secs_f64());
    shared.metrics.in_flight.decrement(1.0);
    (outcome, delivery, run_time)
}

/// Drive a handler that did not finish at once: time it out, extend the
/// lease while it runs, stop it at the end of the shutdown grace period.
async fn supervise(
    shared: &Shared,
    mut delivery: Delivery,
    mut fut: CatchUnwind,
    timeout: Option<Duration>,
    span: &tracing::Span,
) -> (Outcome, Delivery) {
    let timeout_at = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut hard_stop = shared.hard_stop.clone();
    let mut can_extend = true;
    // Extend by the worker's lease, or by the lease the backend granted
    // (its configured default), measured from the delivery.
    let lease = shared.settings.lease.unwrap_or_else(|| {
        delivery
            .lease_deadline()
            .duration_since(SystemTime::now())
            .unwrap_or(queue_core::config::DEFAULT_LEASE)
            .clamp(queue_core::config::MIN_LEASE, queue_core::config::MAX_LEASE)
    });
    loop {
        let extend_at = instant_of(delivery.lease_deadline())
            .checked_sub(lease / 3)
            .unwrap_or_else(tokio::time::Instant::now);
        let outcome = tokio::select! {
            biased;
            out = &mut fut => Outcome::of(out),
            () = sleep_until_opt(timeout_at) => Outcome::TimedOut(timeout.unwrap_or_default()),
            () = tokio::time::sleep_until(extend_at), if can_extend => {
                delivery = match delivery.extend(lease).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(parent: span, error = %e.error, "lease extension failed; the job may run twice");
                        can_extend = false;
                        *e.delivery
                    }
                };
                continue;
            }
            () = until_true(&mut hard_stop) => Outcome::Stopped,
        };
        // Drop the handler's future before the job is settled.
        drop(fut);
        return (outcome, delivery);
    }
}

/// Settle the delivery by the outcome and record it. Returns the delivery
/// when it is to be acked (the lane acks in batches).
async fn settle(
    shared: &Shared,
    counters: &Counters,
    delivery: Delivery,
    outcome: Outcome,
    run_time: Duration,
    own_backoff: Option<BackoffPolicy>,
) -> Option<Delivery> {
    let (id, attempt) = (delivery.message().id, delivery.attempt());
    let (error, action) = match outcome {
        Outcome::Done(result) => {
            let tally = Tally::Completed { run_time, result };
            record(shared, counters, id, attempt, tally).await;
            return Some(delivery);
        }
        Outcome::Stopped => {
            // Handed back without spending an attempt: shutdown is not the
            // job's failure.
            if let Err(e) = delivery.release().await {
                tracing::warn!(job_id = %id, error = %e.error, "could not return a stopped job; it returns when its lease expires");
            }
            record(shared, counters, id, attempt, Tally::Returned).await;
            return None;
        }
        Outcome::Failed(error) => (error.to_string(), error.action()),
        Outcome::Panicked(message) => {
            (format!("handler panicked: {message}"), HandlerAction::Retry)
        }
        Outcome::TimedOut(after) => (format!("timed out after {after:?}"), HandlerAction::Retry),
    };
    if let HandlerAction::RateLimited(retry_after) = action {
        // The remote API's limit, not the job's failure: back off the
        // whole queue and hand the job back without spending an attempt.
        shared.flow.back_off(retry_after);
        if let Err(e) = delivery.release().await {
            tracing::warn!(job_id = %id, error = %e.error, "could not return a rate-limited job; it returns when its lease expires");
        }
        let tally = Tally::Retried {
            delay: retry_after,
            error,
        };
        record(shared, counters, id, attempt, tally).await;
        return None;
    }
    if action == HandlerAction::Cancel {
        record(
            shared,
            counters,
            id,
            attempt,
            Tally::Cancelled { by_handler: true },
        )
        .await;
        return Some(delivery);
    }
    let failed = Tally::Failed {
        run_time,
        error: error.clone(),
    };
    record(shared, counters, id, attempt, failed).await;
    let delay = match action {
        HandlerAction::Permanent => {
            let reason = DeadLetterReason::Rejected(error.clone());
            dead_letter(shared, counters, delivery, reason, error).await;
            return None;
        }
        HandlerAction::RetryAfter(delay) => delay,
        _ => own_backoff
            .unwrap_or(shared.settings.retry)
            .delay(attempt, random_unit()),
    };
    let last_attempt = delivery.message().is_last_attempt();
    if let Err(e) = delivery.nack_with_error(delay, &error).await {
        tracing::warn!(job_id = %id, error = %e.error, "nack failed; the job returns when its lease expires");
    }
    // On its last attempt the backend dead-letters the job instead.
    let tally = if last_attempt {
        Tally::DeadLettered {
            reason: DeadLetterReason::MaxAttempts.to_string(),
            error,
        }
    } else {
        Tally::Retried { delay, error }
    };
    record(shared, counters, id, attempt, tally).await;
    None
}

/// Dead-letter `delivery` now and record it; a failure is logged (the job
/// returns when its lease expires).
async fn dead_letter(
    shared: &Shared,
    counters: &Counters,
    delivery: Delivery,
    reason: DeadLetterReason,
    error: String,
) {
    let (id, attempt) = (delivery.message().id, delivery.attempt());
    let reason_text = reason.to_string();
    if let Err(e) = delivery.dead_letter(reason).await {
        tracing::warn!(job_id = %id, error = %e.error, "dead-lettering failed; the job returns when its lease expires");
        return;
    }
    let tally = Tally::DeadLettered {
        reason: reason_text,
        error,
    };
    record(shared, counters, id, attempt, tally).await;
}

/// A handler future polled under `catch_unwind`: a panic becomes
/// `Err(message)`. Holds the panic of the handler's synchronous part when
/// it panicked before its future existed.
struct CatchUnwind(std::result::Result<HandlerFuture, Option<String>>);

impl Future for CatchUnwind {
    type Output =
        std::result::Result<std::result::Result<Option<serde_json::Value>, BoxError>, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = match &mut self.0 {
            Ok(fut) => fut.as_mut(),
            Err(panic) => {
                let message = panic
                    .take()
                    .unwrap_or_else(|| "polled again after a panic".into());
                return Poll::Ready(Err(message));
            }
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(&*payload))),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

fn instant_of(deadline: SystemTime) -> tokio::time::Instant {
    tokio::time::Instant::now()
        + deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default()
}

/// Resolves once the flag turns true; never if its sender is gone first.
async fn until_true(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
