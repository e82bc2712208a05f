//! The conformance suite every `queue` backend passes.
//!
//! Each case of `CONFORMANCE.md` is written once in [`cases`] against the
//! public traits. A backend crate runs them all with one macro call in its
//! `tests/conformance.rs`, which generates one named `#[test]` per case:
//!
//! ```ignore
//! queue_testkit::conformance_suite!(MyHarness::from_env());
//! ```
//!
//! One case can also be run directly, which is what each generated test does:
//!
//! ```
//! use queue_testkit::{cases, run_case, MemoryHarness};
//!
//! run_case("send_receive_ack", || Some(MemoryHarness), |ctx| {
//!     Box::pin(async move { cases::send_receive_ack(&ctx).await })
//! });
//! ```
//!
//! The expression yields `Option<impl Harness>`: `None` skips every case with
//! the reason [`broker_url`] printed (a missing `QUEUE_TEST_<BACKEND>_URL`),
//! unless `QUEUE_TEST_REQUIRED=1`, which turns a missing broker into a failure.
//!
//! Capability flags decide what a case asserts, never whether it runs: a case
//! needing a feature the backend lacks asserts the typed `Unsupported` error.
//!
//! This crate is exempt from semver: cases are added as the contract grows.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod bench;
pub mod cases;
mod harness;

pub use harness::{broker_url, receive_n, Ctx, Harness, MemoryHarness};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Run one case against the harness made by `make`, on a fresh 2-thread
/// runtime. Creates the case's queues, removes them afterwards (also when
/// the case fails), then re-raises the failure.
pub fn run_case<H, F>(case: &'static str, make: impl FnOnce() -> Option<H>, body: F)
where
    H: Harness + 'static,
    F: FnOnce(Ctx) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static,
{
    let Some(harness) = make() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime for the case");
    runtime.block_on(async move {
        let harness: Arc<dyn Harness> = Arc::new(harness);
        let ctx = Ctx::new(case, harness)
            .await
            .unwrap_or_else(|e| panic!("{case}: cannot connect the backend under test: {e}"));
        let cleanup = ctx.clone();
        let outcome = tokio::spawn(body(ctx)).await;
        cleanup.cleanup().await;
        if let Err(join_error) = outcome {
            match join_error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("{case}: case task failed: {e}"),
            }
        }
    });
}

/// Generate one `#[test]` per conformance case for a harness.
///
/// `$make` is an expression of type `Option<H>` where `H: Harness`; it is
/// evaluated once per test.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::__conformance_cases!(
            $make;
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
            job_status
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::run_case(stringify!($case), || $make, |ctx| {
                    ::std::boxed::Box::pin(async move { $crate::cases::$case(&ctx).await })
                });
            }
        )+
    };
}

/// Assert that column `column` of `docs/capabilities.md` states `caps` row
/// by row, as `Capabilities::to_markdown_rows` renders them (each backend's
/// docs test calls this).
pub fn assert_capabilities_documented(column: &str, caps: &queue_core::Capabilities) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/capabilities.md");
    let doc = std::fs::read_to_string(path).expect("docs/capabilities.md exists");
    let rows: Vec<Vec<String>> = doc
        .lines()
        .filter(|line| line.starts_with('|') && !line.starts_with("| ---"))
        .map(|line| {
            line.trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
        .collect();
    let header = &rows[0];
    let index = header
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("docs/capabilities.md has no column {column:?}"));
    for (feature, value) in caps.to_markdown_rows() {
        let row = rows
            .iter()
            .find(|row| row[0] == feature)
            .unwrap_or_else(|| panic!("docs/capabilities.md has no row {feature:?}"));
        assert_eq!(row[index], value, "{column} column of {feature:?}");
    }
}
