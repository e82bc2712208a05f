//! The conformance suite every `queue` backend passes.
//!
//! Each case of `docs/testing.md` is written once in [`cases`] against the
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
//! The cases of any coordination store (leases, rate windows, semaphores,
//! records) are in [`coordination`], run by their own macro,
//! [`coordination_cases!`].
//!
//! This crate is exempt from semver: cases are added as the contract grows.

#![forbid(unsafe_code)]

pub mod bench;
pub mod cases;
pub mod certs;
pub mod coordination;
mod harness;
pub mod host;
pub mod proxy;

pub use harness::{broker_url, receive_n, BrokerProcess, Ctx, Faulty, Harness, MemoryHarness};

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

/// Generate one `#[test]` per conformance case for a harness, named after
/// the case, from the list in [`cases`] (the names are [`cases::CASES`]).
///
/// `$make` is an expression of type `Option<H>` where `H: Harness`; it is
/// evaluated once per test.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_case_list!([$crate::__conformance_tests] $make);
    };
}

/// Some of the conformance cases against a harness: one `#[test]` per
/// case named, as [`conformance_suite!`] generates them. For a wrapper
/// that changes a few behaviours of a backend (group turns through a
/// store, say), checked with the cases of those behaviours.
///
/// ```ignore
/// queue_testkit::conformance_cases!(MyHarness::from_env(); groups_take_turns, group_limit);
/// ```
#[macro_export]
macro_rules! conformance_cases {
    ($make:expr; $($case:ident),+ $(,)?) => {
        $crate::__conformance_tests!($make; $($case),+);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
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

/// Assert that `docs/capabilities.md` states `caps` in its column
/// (`Capabilities::column`: the backend, and its mode if it has several),
/// row by row as `Capabilities::to_markdown_rows` renders them. Each
/// backend's docs test calls this.
///
/// With `QUEUE_BLESS_DOCS=1` it writes the column instead (adding the
/// column or rows that are missing), so the table is generated from the
/// code: `QUEUE_BLESS_DOCS=1 cargo test --test docs`.
pub fn assert_capabilities_documented(caps: &queue_core::Capabilities) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/capabilities.md");
    let doc = std::fs::read_to_string(path).expect("docs/capabilities.md exists");
    let column = caps.column();
    let expected = caps.to_markdown_rows();
    if std::env::var("QUEUE_BLESS_DOCS").is_ok_and(|v| v == "1") {
        let blessed = docs::write_column(&doc, &column, &expected);
        std::fs::write(path, blessed).expect("write docs/capabilities.md");
        return;
    }
    let table = docs::Table::parse(&doc);
    let index = table.column(&column).unwrap_or_else(|| {
        panic!("docs/capabilities.md has no column {column:?} (QUEUE_BLESS_DOCS=1 writes it)")
    });
    for (feature, value) in expected {
        let row = table.row(&feature).unwrap_or_else(|| {
            panic!("docs/capabilities.md has no row {feature:?} (QUEUE_BLESS_DOCS=1 writes it)")
        });
        assert_eq!(
            row.get(index).map(String::as_str),
            Some(value.as_str()),
            "{column} column of {feature:?} (QUEUE_BLESS_DOCS=1 rewrites it from the code)"
        );
    }
}

/// The capability table of `docs/capabilities.md`: read, and one column rewritten.
mod docs {
    /// The first Markdown table of a document: its header and rows of cells.
    pub(crate) struct Table {
        /// Line range of the table in the document.
        lines: std::ops::Range<usize>,
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    }

    fn cells(line: &str) -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|cell| cell.trim().to_owned())
            .collect()
    }

    impl Table {
        pub(crate) fn parse(doc: &str) -> Table {
            let lines: Vec<&str> = doc.lines().collect();
            let start = lines
                .iter()
                .position(|l| l.starts_with('|'))
                .expect("docs/capabilities.md has a table");
            let end = lines[start..]
                .iter()
                .position(|l| !l.starts_with('|'))
                .map_or(lines.len(), |n| start + n);
            let header = cells(lines[start]);
            let rows = lines[start + 2..end].iter().map(|l| cells(l)).collect();
            Table {
                lines: start..end,
                header,
                rows,
            }
        }

        pub(crate) fn column(&self, name: &str) -> Option<usize> {
            self.header.iter().position(|h| h == name)
        }

        pub(crate) fn row(&self, feature: &str) -> Option<&Vec<String>> {
            self.rows.iter().find(|row| row[0] == feature)
        }

        fn render(&self) -> Vec<String> {
            let line = |cells: &[String]| format!("| {} |", cells.join(" | "));
            let mut out = vec![line(&self.header)];
            out.push(line(&vec!["---".to_owned(); self.header.len()]));
            out.extend(self.rows.iter().map(|row| line(row)));
            out
        }
    }

    /// `doc` with column `column` of its table set to `values` (feature,
    /// value), adding the column after the last generated one and any
    /// missing row; other columns of a new row read "—".
    pub(crate) fn write_column(doc: &str, column: &str, values: &[(String, String)]) -> String {
        let mut table = Table::parse(doc);
        let index = match table.column(column) {
            Some(index) => index,
            None => {
                // New generated columns go before the planned ones.
                let at = table
                    .header
                    .iter()
                    .position(|h| h.contains("(planned)"))
                    .unwrap_or(table.header.len());
                table.header.insert(at, column.to_owned());
                for row in &mut table.rows {
                    row.insert(at, "—".to_owned());
                }
                at
            }
        };
        let width = table.header.len();
        for (position, (feature, value)) in values.iter().enumerate() {
            let found = table.rows.iter().position(|row| &row[0] == feature);
            let row = match found {
                Some(i) => &mut table.rows[i],
                None => {
                    let mut row = vec!["—".to_owned(); width];
                    row[0] = feature.clone();
                    let at = position.min(table.rows.len());
                    table.rows.insert(at, row);
                    &mut table.rows[at]
                }
            };
            row.resize(width, "—".to_owned());
            row[index] = value.clone();
        }
        let lines: Vec<&str> = doc.lines().collect();
        let mut out: Vec<String> = lines[..table.lines.start]
            .iter()
            .map(|l| (*l).to_owned())
            .collect();
        out.extend(table.render());
        out.extend(lines[table.lines.end..].iter().map(|l| (*l).to_owned()));
        out.join("\n") + "\n"
    }
}
