//! The conformance cases of `docs/testing.md`, one function each, in one
//! file per topic:
//!
//! - `messages`: sending, receiving and acking, batches, isolation,
//!   idempotency keys, competing consumers;
//! - `leases`: what brings a delivery back (nack, release, an expired
//!   lease, a dropped consumer), nack delays past the maximum, and what a
//!   lost lease refuses;
//! - `delays`: delays, scheduled times and TTL;
//! - `ordering`: priority order and send order;
//! - `failures`: attempts running out (up to `u32::MAX`), dead letters
//!   and redrive, capped error texts;
//! - `admin`: stats, purge, health, queue listing, pause, oldest ready
//!   age, the worker registry;
//! - `bad_input`: oversize payloads, invalid names, foreign bytes, bad
//!   configuration, reserved headers;
//! - `worker`: the worker runtime (retries, timeouts, panics, shutdown
//!   and how promptly it returns, trace context);
//! - `jobs`: job status and the job store;
//! - `faults`: connections cut, a blackholed broker, a broker restart.
//!
//! The list of the cases is written once, in the `conformance_case_list!`
//! macro below: it generates the suite's tests
//! ([`conformance_suite!`](crate::conformance_suite)) and [`CASES`].
//!
//! Timing assertions are generous for a loaded 2-core machine, but "not
//! before" is always strict.

mod admin;
mod bad_input;
mod delays;
mod failures;
mod faults;
mod jobs;
mod leases;
mod messages;
mod ordering;
mod worker;

pub use self::admin::*;
pub use self::bad_input::*;
pub use self::delays::*;
pub use self::failures::*;
pub use self::faults::*;
pub use self::jobs::*;
pub use self::leases::*;
pub use self::messages::*;
pub use self::ordering::*;
pub use self::worker::*;

use std::time::Duration;

use queue_core::{
    BackoffPolicy, Consumer, Delivery, ErrorKind, Message, MessageId, Producer, QueueName, Result,
};
use queue_worker::EventStream;

use crate::harness::{receive_n, Ctx};

/// The conformance cases, in the order of `docs/testing.md`'s case table:
/// the one list of them. Calls back `$callback` with the list, after the
/// arguments given: `conformance_case_list!([path::to::callback] args)`
/// expands to `path::to::callback! { args; case_a, case_b, ... }`.
///
/// The suite's tests ([`conformance_suite!`](crate::conformance_suite))
/// and [`CASES`] are generated from it. Every case listed is a function of
/// this module, or the crate does not compile. A new case goes here, in
/// the file of its topic, and in the table of `docs/testing.md`.
#[doc(hidden)]
#[macro_export]
macro_rules! conformance_case_list {
    ([$($callback:tt)+] $($args:tt)*) => {
        $($callback)+! {
            $($args)*;
            send_receive_ack,
            batch_round_trip,
            receive_empty_respects_wait,
            ack_is_final,
            nack_redelivers,
            nack_with_delay,
            lease_expiry_redelivers,
            extend_lease,
            ack_after_lease_lost,
            queues_are_isolated,
            delayed_send,
            scheduled_at,
            delay_beyond_native_limit,
            ttl_expiry,
            priority_order,
            fifo_within_priority,
            max_attempts_dead_letters,
            dead_letter_explicit,
            redrive,
            idempotency_key,
            stats_are_exact,
            purge,
            health,
            competing_consumers,
            dropped_consumer_redelivers,
            reconnect,
            payload_too_large,
            invalid_queue_name,
            foreign_message,
            bad_config,
            worker_processes_all,
            worker_retry_backoff,
            worker_timeout_cancels,
            worker_panic_isolated,
            graceful_shutdown,
            trace_propagation,
            job_status,
            release_keeps_attempt,
            error_text_capped,
            reserved_headers,
            cut_during_receive,
            cut_during_ack,
            cut_during_send,
            blackholed_broker,
            repeated_cuts,
            broker_restart,
            ack_and_receive,
            list_queues,
            pause_resume,
            oldest_ready_age,
            job_listing,
            job_retry,
            worker_registry,
            dead_letter_pages,
            attempt_at_max,
            nack_delay_over_max,
            shutdown_is_prompt,
            groups_take_turns,
            group_limit,
        }
    };
}

/// `pub const CASES`, the names of the cases listed, each checked to be a
/// function of this module.
macro_rules! case_names {
    ($(;)? $($case:ident),+ $(,)?) => {
        const _: () = {
            $(let _ = $case;)+
        };
        /// The names of the conformance cases, in the order of
        /// `docs/testing.md`'s case table; `conformance_suite!` generates
        /// one test of each name.
        ///
        /// ```
        /// assert!(queue_testkit::cases::CASES.contains(&"send_receive_ack"));
        /// ```
        pub const CASES: &[&str] = &[$(stringify!($case)),+];
    };
}

crate::conformance_case_list!([case_names]);

/// Generous upper bound for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(15);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(1500);
/// The short lease used by lease cases.
const LEASE: Duration = Duration::from_secs(1);

fn assert_kind<T: std::fmt::Debug>(result: Result<T>, kind: ErrorKind, context: &str) -> String {
    match result {
        Ok(v) => panic!("{context}: expected a {kind} error, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{context}: wrong kind in {e}");
            e.to_string()
        }
    }
}

/// Where the backend lacks a feature, the call must say so with a typed error.
fn assert_unsupported<T: std::fmt::Debug>(result: Result<T>, feature: &str) {
    let text = assert_kind(result, ErrorKind::Unsupported, feature);
    eprintln!("{feature}: unsupported as the capability table says ({text})");
}

async fn send(ctx: &Ctx, queue: &QueueName, message: Message) -> MessageId {
    ctx.producer(queue)
        .await
        .send(message)
        .await
        .unwrap_or_else(|e| panic!("{}: send: {e}", ctx.case()))
}

/// Send `count` messages with payloads `"{prefix} {i}"`, one `send` each,
/// and return their ids in order.
async fn send_numbered(producer: &dyn Producer, prefix: &str, count: usize) -> Vec<MessageId> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let message = Message::new(format!("{prefix} {i}"));
        ids.push(producer.send(message).await.expect("send"));
    }
    ids
}

/// The dead letters of `queue` (up to 10), oldest first.
async fn dead_letters(ctx: &Ctx, queue: &QueueName) -> Vec<queue_core::DeadLetter> {
    ctx.backend()
        .admin()
        .dead_letters(queue, 10)
        .await
        .expect("dead letters")
}

/// Receive one delivery within [`SOON`], or fail naming `what` was awaited.
async fn receive_one(consumer: &dyn Consumer, what: &str) -> Delivery {
    receive_n(consumer, 1, SOON)
        .await
        .pop()
        .unwrap_or_else(|| panic!("no {what} within {SOON:?}"))
}

/// A fast retry policy for worker cases: no jitter, so gaps are predictable.
fn test_backoff(initial: Duration) -> BackoffPolicy {
    BackoffPolicy {
        initial,
        max: initial * 8,
        multiplier: 2.0,
        jitter: false,
    }
}

/// Wait until `done` holds, checking on every event of `events`, for at most `timeout`.
async fn until(
    events: &mut EventStream,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return done(),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return done(),
            Ok(_) => {}
        }
    }
    true
}
