//! The behaviour cases of any [`Coordination`] store, one function each,
//! written once against the trait.
//!
//! A store runs them all with one macro call, which generates one
//! `#[test]` per case in a module `coordination`:
//!
//! ```ignore
//! queue_testkit::coordination_cases!(async {
//!     let store = Arc::new(MemoryCoordination::new());
//!     Some(CoordinationUnderTest::new(store))
//! });
//! ```
//!
//! The expression is an async block yielding
//! `Option<`[`CoordinationUnderTest`]`>`, evaluated once per test: `None`
//! skips the case (a store whose server is not configured, with the
//! reason printed by [`broker_url`](crate::broker_url)). A store shared
//! with other tests gives each a namespace of its own and a cleanup.
//!
//! Lease and slot cases sleep to let a time to live run out (200 to
//! 500 ms); nothing else waits on the clock.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use queue_core::coordination::{MAX_NAME, MAX_RECORD, MAX_RECORDS};
use queue_core::{Coordination, ErrorKind, Lease, Rate, Result, Slot};

type Cleanup = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A store under test, and what removes the state a case left in it.
pub struct CoordinationUnderTest {
    store: Arc<dyn Coordination>,
    cleanup: Option<Cleanup>,
}

impl std::fmt::Debug for CoordinationUnderTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinationUnderTest")
            .field("store", &self.store)
            .field("cleanup", &self.cleanup.is_some())
            .finish()
    }
}

impl CoordinationUnderTest {
    /// A store with nothing to clean up (a fresh in-process one).
    pub fn new(store: Arc<dyn Coordination>) -> Self {
        CoordinationUnderTest {
            store,
            cleanup: None,
        }
    }

    /// Run `cleanup` when the case ends, also when it fails.
    pub fn with_cleanup(mut self, cleanup: impl Future<Output = ()> + Send + 'static) -> Self {
        self.cleanup = Some(Box::pin(cleanup));
        self
    }
}

/// Run one coordination case against the store `make` yields, on a fresh
/// 2-thread runtime; clean up afterwards, then re-raise the failure.
pub fn run_coordination_case<M, F>(case: &'static str, make: M, body: F)
where
    M: Future<Output = Option<CoordinationUnderTest>>,
    F: FnOnce(Arc<dyn Coordination>) -> Pin<Box<dyn Future<Output = ()> + Send>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime for the case");
    runtime.block_on(async move {
        let Some(under_test) = make.await else {
            return;
        };
        let outcome = tokio::spawn(body(under_test.store)).await;
        if let Some(cleanup) = under_test.cleanup {
            cleanup.await;
        }
        if let Err(join_error) = outcome {
            match join_error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("{case}: case task failed: {e}"),
            }
        }
    });
}

/// Generate a module `coordination` with one `#[test]` per case of
/// [`coordination`](crate::coordination), for the store `$make` yields:
/// an async block of type `Option<CoordinationUnderTest>`, evaluated once
/// per test (in the module, which sees the caller's items).
#[macro_export]
macro_rules! coordination_cases {
    ($make:expr) => {
        $crate::__coordination_tests!(
            $make;
            leases_fence_and_hand_over,
            tokens_grow_after_release,
            renew_after_loss_fails,
            renew_keeps_a_lease,
            rate_window_never_exceeds_its_limit,
            rate_windows_are_per_key,
            retry_after_is_honoured,
            slots_expire_with_their_holder,
            slots_are_renewable,
            releasing_frees_a_slot,
            fenced_put_refused_for_a_stale_lease,
            records_list_and_remove,
            record_limits,
            bad_input_names_the_field,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __coordination_tests {
    ($make:expr; $($case:ident),+ $(,)?) => {
        mod coordination {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() {
                    $crate::coordination::run_coordination_case(
                        stringify!($case),
                        $make,
                        |store| ::std::boxed::Box::pin($crate::coordination::$case(store)),
                    );
                }
            )+
        }
    };
}

/// A name no other case or run uses.
fn unique(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::now_v7().simple())
}

fn bytes(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

async fn take(store: &dyn Coordination, name: &str, holder: &str, ttl: Duration) -> Lease {
    store
        .try_lease(name, holder, ttl)
        .await
        .expect("try_lease")
        .unwrap_or_else(|| panic!("{holder} should take the free lease {name}"))
}

/// Longer than a lease or slot of `ttl`, with room for a slow clock tick.
fn past(ttl: Duration) -> Duration {
    ttl + Duration::from_millis(100)
}

/// One holder at a time; the holder renews with its own token; once its
/// lease expires the next taker gets a larger token and the old holder
/// can neither renew nor write.
pub async fn leases_fence_and_hand_over(store: Arc<dyn Coordination>) {
    let name = unique("leader");
    let ttl = Duration::from_millis(300);
    let a = take(&*store, &name, "a", ttl).await;
    assert_eq!((a.name.as_str(), a.holder.as_str()), (name.as_str(), "a"));
    assert!(store.try_lease(&name, "b", ttl).await.unwrap().is_none());
    let again = take(&*store, &name, "a", ttl).await;
    assert_eq!(again.token, a.token, "the holder renews with its own token");
    let held = store
        .lease_holder(&name)
        .await
        .unwrap()
        .expect("a holds it");
    assert_eq!((held.holder.as_str(), held.token), ("a", a.token));
    assert!(held.ttl <= ttl, "{:?} left of a {ttl:?} lease", held.ttl);

    tokio::time::sleep(past(ttl)).await;
    assert!(store.lease_holder(&name).await.unwrap().is_none());
    let b = take(&*store, &name, "b", ttl).await;
    assert!(b.token > a.token, "{} after {}", b.token, a.token);
    assert!(!store.renew_lease(&a).await.unwrap());
    assert!(!store
        .fenced_put(&a, &name, "k", bytes("old"))
        .await
        .unwrap());
    assert!(store
        .fenced_put(&b, &name, "k", bytes("new"))
        .await
        .unwrap());
    assert_eq!(store.get(&name, "k").await.unwrap(), Some(bytes("new")));
    // An old holder's release leaves the new holder's lease alone.
    store.release_lease(&a).await.unwrap();
    let held = store
        .lease_holder(&name)
        .await
        .unwrap()
        .expect("b holds it");
    assert_eq!((held.holder.as_str(), held.token), ("b", b.token));
    store.release_lease(&b).await.unwrap();
    store.remove(&name, "k").await.unwrap();
}

/// Tokens never go back: after a release, and for the same holder coming
/// back, the next lease has a larger token.
pub async fn tokens_grow_after_release(store: Arc<dyn Coordination>) {
    let name = unique("leader");
    let ttl = Duration::from_secs(5);
    let mut last = 0;
    for holder in ["a", "b", "a", "c"] {
        let lease = take(&*store, &name, holder, ttl).await;
        assert!(lease.token > last, "token {} after {last}", lease.token);
        last = lease.token;
        store.release_lease(&lease).await.unwrap();
        assert!(store.lease_holder(&name).await.unwrap().is_none());
        // Releasing twice is nothing.
        store.release_lease(&lease).await.unwrap();
    }
}

/// A lease released, expired, or replaced (even by the same holder under
/// a newer token) cannot be renewed.
pub async fn renew_after_loss_fails(store: Arc<dyn Coordination>) {
    let name = unique("leader");
    let ttl = Duration::from_millis(200);
    let first = take(&*store, &name, "a", ttl).await;
    store.release_lease(&first).await.unwrap();
    assert!(!store.renew_lease(&first).await.unwrap(), "released");
    let second = take(&*store, &name, "a", ttl).await;
    assert!(second.token > first.token);
    assert!(!store.renew_lease(&first).await.unwrap(), "older token");
    assert!(store.renew_lease(&second).await.unwrap());
    tokio::time::sleep(past(ttl)).await;
    assert!(!store.renew_lease(&second).await.unwrap(), "expired");
    assert!(store.lease_holder(&name).await.unwrap().is_none());
}

/// Renewing moves the lease's end: it outlives its first time to live.
pub async fn renew_keeps_a_lease(store: Arc<dyn Coordination>) {
    let name = unique("leader");
    let ttl = Duration::from_millis(500);
    let lease = take(&*store, &name, "a", ttl).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.renew_lease(&lease).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 600 ms after taking it, past the first 500 ms.
    let held = store.lease_holder(&name).await.unwrap().expect("renewed");
    assert_eq!((held.holder.as_str(), held.token), ("a", lease.token));
    assert!(store.try_lease(&name, "b", ttl).await.unwrap().is_none());
    store.release_lease(&lease).await.unwrap();
}

/// A grant as the client saw it: `permits` given at some moment between
/// `asked` and `answered`.
#[derive(Debug, Clone, Copy)]
struct Grant {
    asked: Instant,
    answered: Instant,
    permits: u32,
}

/// Three tasks take permits from one window for about 2 s, waiting
/// `retry_after` when refused. No window of the period holds more than
/// the limit, and the permits granted reach at least 90% of the rate.
pub async fn rate_window_never_exceeds_its_limit(store: Arc<dyn Coordination>) {
    let key = unique("rate");
    let (limit, period) = (25, Duration::from_millis(250));
    let rate = Rate::new(limit, period).expect("rate");
    let run = Duration::from_secs(2);
    let start = Instant::now();
    let grants = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (1..=3u32)
        .map(|want| {
            let (store, key, grants) = (store.clone(), key.clone(), grants.clone());
            tokio::spawn(async move {
                while start.elapsed() < run {
                    let asked = Instant::now();
                    let permits = store.take_permits(&key, rate, want).await.expect("take");
                    let answered = Instant::now();
                    if permits.granted > 0 {
                        let grant = Grant {
                            asked,
                            answered,
                            permits: permits.granted,
                        };
                        grants.lock().expect("grants").push(grant);
                    }
                    if permits.granted < want {
                        let wait = permits.retry_after.expect("a shortfall says when");
                        assert!(wait <= period * 2, "retry after {wait:?}");
                        tokio::time::sleep(wait).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a taking task");
    }
    let grants = grants.lock().expect("grants").clone();
    // Only count what was certainly inside a window: a grant asked at or
    // after the window's start and answered before its end.
    for anchor in &grants {
        let end = anchor.asked + period;
        let inside: u32 = grants
            .iter()
            .filter(|g| g.asked >= anchor.asked && g.answered < end)
            .map(|g| g.permits)
            .sum();
        assert!(inside <= limit, "{inside} permits within one {period:?}");
    }
    let granted: u32 = grants
        .iter()
        .filter(|g| g.answered < start + run)
        .map(|g| g.permits)
        .sum();
    let periods = run.as_secs_f64() / period.as_secs_f64();
    let floor = 0.9 * f64::from(limit) * periods;
    assert!(
        f64::from(granted) >= floor,
        "{granted} permits in {run:?}, under 90% of {limit} per {period:?}"
    );
}

/// Each key has its own window.
pub async fn rate_windows_are_per_key(store: Arc<dyn Coordination>) {
    let (a, b) = (unique("rate-a"), unique("rate-b"));
    let rate = Rate::new(3, Duration::from_secs(10)).expect("rate");
    let first = store.take_permits(&a, rate, 5).await.unwrap();
    assert_eq!(first.granted, 3);
    let wait = first.retry_after.expect("two short");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(11),
        "{wait:?}"
    );
    let other = store.take_permits(&b, rate, 2).await.unwrap();
    assert_eq!((other.granted, other.retry_after), (2, None));
    assert_eq!(store.take_permits(&b, rate, 1).await.unwrap().granted, 1);
    assert_eq!(store.take_permits(&a, rate, 1).await.unwrap().granted, 0);
    assert_eq!(store.take_permits(&b, rate, 1).await.unwrap().granted, 0);
}

/// Waiting `retry_after` is enough: asking again then is granted.
pub async fn retry_after_is_honoured(store: Arc<dyn Coordination>) {
    let key = unique("rate");
    let period = Duration::from_millis(300);
    let rate = Rate::new(2, period).expect("rate");
    assert_eq!(store.take_permits(&key, rate, 2).await.unwrap().granted, 2);
    let refused = store.take_permits(&key, rate, 1).await.unwrap();
    assert_eq!(refused.granted, 0);
    let wait = refused.retry_after.expect("full");
    // A whole period, and at most two buckets more.
    assert!(
        wait > Duration::ZERO && wait <= period + period / 8,
        "retry after {wait:?}"
    );
    tokio::time::sleep(wait).await;
    let granted = store.take_permits(&key, rate, 2).await.unwrap();
    assert_eq!(granted.granted, 2, "after waiting {wait:?}");
}

/// A holder that never releases its slot loses it when its time to live
/// ends; a full semaphore says when the earliest slot ends.
pub async fn slots_expire_with_their_holder(store: Arc<dyn Coordination>) {
    let name = unique("sem");
    let ttl = Duration::from_millis(300);
    assert_eq!(
        store.acquire_slot(&name, "a", 2, ttl).await.unwrap(),
        Slot::Held
    );
    assert_eq!(
        store.acquire_slot(&name, "b", 2, ttl).await.unwrap(),
        Slot::Held
    );
    match store.acquire_slot(&name, "c", 2, ttl).await.unwrap() {
        Slot::Full { retry_after } => assert!(retry_after <= ttl, "{retry_after:?}"),
        other => panic!("a third holder of 2 slots: {other:?}"),
    }
    assert_eq!(store.slots_held(&name).await.unwrap(), 2);
    tokio::time::sleep(past(ttl)).await;
    assert_eq!(store.slots_held(&name).await.unwrap(), 0);
    assert_eq!(
        store.acquire_slot(&name, "c", 2, ttl).await.unwrap(),
        Slot::Held
    );
    store.release_slot(&name, "c").await.unwrap();
}

/// A holder acquiring again renews its own slot, even when every slot is
/// held, and keeps it past its first time to live.
pub async fn slots_are_renewable(store: Arc<dyn Coordination>) {
    let name = unique("sem");
    let ttl = Duration::from_millis(500);
    assert_eq!(
        store.acquire_slot(&name, "a", 2, ttl).await.unwrap(),
        Slot::Held
    );
    assert_eq!(
        store.acquire_slot(&name, "b", 2, ttl).await.unwrap(),
        Slot::Held
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        store.acquire_slot(&name, "a", 2, ttl).await.unwrap(),
        Slot::Held,
        "a full semaphore still renews its holder's slot"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    // b's slot ended at 500 ms; a's, renewed at 250 ms, lasts to 750 ms.
    assert_eq!(store.slots_held(&name).await.unwrap(), 1);
    assert_eq!(
        store.acquire_slot(&name, "c", 2, ttl).await.unwrap(),
        Slot::Held
    );
    assert!(matches!(
        store.acquire_slot(&name, "d", 2, ttl).await.unwrap(),
        Slot::Full { .. }
    ));
    // renew_slot extends a slot held, and never takes one.
    assert!(store.renew_slot(&name, "a", ttl).await.unwrap());
    store.release_slot(&name, "a").await.unwrap();
    assert!(!store.renew_slot(&name, "a", ttl).await.unwrap());
    assert!(!store.renew_slot(&name, "never held", ttl).await.unwrap());
    assert_eq!(store.slots_held(&name).await.unwrap(), 1);
    store.release_slot(&name, "c").await.unwrap();
}

/// Releasing a slot frees it at once; releasing one not held is nothing.
pub async fn releasing_frees_a_slot(store: Arc<dyn Coordination>) {
    let name = unique("sem");
    let ttl = Duration::from_secs(30);
    assert_eq!(
        store.acquire_slot(&name, "a", 1, ttl).await.unwrap(),
        Slot::Held
    );
    match store.acquire_slot(&name, "b", 1, ttl).await.unwrap() {
        Slot::Full { retry_after } => {
            assert!(retry_after > Duration::from_secs(25) && retry_after <= ttl);
        }
        other => panic!("b while a holds the only slot: {other:?}"),
    }
    store.release_slot(&name, "a").await.unwrap();
    store.release_slot(&name, "a").await.unwrap();
    store.release_slot(&name, "never").await.unwrap();
    assert_eq!(store.slots_held(&name).await.unwrap(), 0);
    assert_eq!(
        store.acquire_slot(&name, "b", 1, ttl).await.unwrap(),
        Slot::Held
    );
    assert_eq!(store.slots_held(&name).await.unwrap(), 1);
    store.release_slot(&name, "b").await.unwrap();
    assert_eq!(store.slots_held(&unique("sem")).await.unwrap(), 0);
}

/// A write fenced by a lease that is no longer current is refused and
/// changes nothing: after a release, under a newer token of the same
/// holder, or with a token nobody was given.
pub async fn fenced_put_refused_for_a_stale_lease(store: Arc<dyn Coordination>) {
    let (name, space) = (unique("leader"), unique("space"));
    let ttl = Duration::from_secs(5);
    let first = take(&*store, &name, "a", ttl).await;
    assert!(store
        .fenced_put(&first, &space, "k", bytes("first"))
        .await
        .unwrap());
    store.release_lease(&first).await.unwrap();
    assert!(!store
        .fenced_put(&first, &space, "k", bytes("released"))
        .await
        .unwrap());
    let second = take(&*store, &name, "a", ttl).await;
    assert!(!store
        .fenced_put(&first, &space, "k", bytes("older token"))
        .await
        .unwrap());
    let forged = Lease::new(&name, "a", second.token + 1, ttl);
    assert!(!store
        .fenced_put(&forged, &space, "k", bytes("forged"))
        .await
        .unwrap());
    let other = Lease::new(&name, "b", second.token, ttl);
    assert!(!store
        .fenced_put(&other, &space, "k", bytes("other holder"))
        .await
        .unwrap());
    assert_eq!(store.get(&space, "k").await.unwrap(), Some(bytes("first")));
    assert_eq!(store.list(&space).await.unwrap().len(), 1);
    store.release_lease(&second).await.unwrap();
    store.remove(&space, "k").await.unwrap();
}

/// Records by space and key: listed by key, overwritten, removed.
pub async fn records_list_and_remove(store: Arc<dyn Coordination>) {
    let (one, two) = (unique("space"), unique("space"));
    for (key, value) in [("b", "2"), ("a", "1"), ("c", "3")] {
        store.put(&one, key, bytes(value)).await.unwrap();
    }
    store.put(&two, "a", bytes("other")).await.unwrap();
    store.put(&one, "b", bytes("2 again")).await.unwrap();
    store.put(&one, "empty", Bytes::new()).await.unwrap();
    let expected = vec![
        ("a".to_owned(), bytes("1")),
        ("b".to_owned(), bytes("2 again")),
        ("c".to_owned(), bytes("3")),
        ("empty".to_owned(), Bytes::new()),
    ];
    assert_eq!(store.list(&one).await.unwrap(), expected);
    assert_eq!(store.get(&one, "empty").await.unwrap(), Some(Bytes::new()));
    assert_eq!(store.get(&one, "missing").await.unwrap(), None);
    assert_eq!(store.get(&two, "a").await.unwrap(), Some(bytes("other")));
    assert!(store.remove(&one, "a").await.unwrap());
    assert!(!store.remove(&one, "a").await.unwrap());
    assert_eq!(store.get(&one, "a").await.unwrap(), None);
    for key in ["b", "c", "empty"] {
        assert!(store.remove(&one, key).await.unwrap());
    }
    assert!(store.list(&one).await.unwrap().is_empty());
    assert!(store.remove(&two, "a").await.unwrap());
    assert!(store.list(&unique("space")).await.unwrap().is_empty());
}

/// A record is at most [`MAX_RECORD`] bytes (`PayloadTooLarge`), a space
/// at most [`MAX_RECORDS`] records (`QueueFull` for a new key; an
/// existing one may still be overwritten).
pub async fn record_limits(store: Arc<dyn Coordination>) {
    let space = unique("space");
    let largest = Bytes::from(vec![7u8; MAX_RECORD]);
    store.put(&space, "largest", largest.clone()).await.unwrap();
    assert_eq!(store.get(&space, "largest").await.unwrap(), Some(largest));
    let over = Bytes::from(vec![7u8; MAX_RECORD + 1]);
    let text = assert_kind(
        store.put(&space, "over", over.clone()).await,
        ErrorKind::PayloadTooLarge,
        "a record over the limit",
    );
    assert!(text.contains(&MAX_RECORD.to_string()), "{text}");
    let lease = take(&*store, &unique("leader"), "a", Duration::from_secs(5)).await;
    assert_kind(
        store.fenced_put(&lease, &space, "over", over).await,
        ErrorKind::PayloadTooLarge,
        "a fenced record over the limit",
    );
    store.release_lease(&lease).await.unwrap();

    // Fill the space (one record is there already), 64 writes at a time.
    stream::iter(1..MAX_RECORDS)
        .map(|i| {
            let (store, space) = (store.clone(), space.clone());
            async move { store.put(&space, &format!("k{i}"), bytes("x")).await }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await
        .expect("fill the space");
    let text = assert_kind(
        store.put(&space, "one more", bytes("x")).await,
        ErrorKind::QueueFull,
        "a record past the space's limit",
    );
    assert!(text.contains(&MAX_RECORDS.to_string()), "{text}");
    store.put(&space, "k1", bytes("overwritten")).await.unwrap();
    assert!(store.remove(&space, "k1").await.unwrap());
    store.put(&space, "one more", bytes("x")).await.unwrap();
    let keys: BTreeSet<String> = store
        .list(&space)
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(keys.len(), MAX_RECORDS);
    assert!(keys.contains("one more") && !keys.contains("k1"));
    // Other spaces are not full.
    let other = unique("space");
    store.put(&other, "k", bytes("x")).await.unwrap();
    store.remove(&other, "k").await.unwrap();
}

/// Bad names, times to live and limits are `InvalidInput` errors naming
/// the field, before anything is stored.
pub async fn bad_input_names_the_field(store: Arc<dyn Coordination>) {
    let long = "x".repeat(MAX_NAME + 1);
    let ttl = Duration::from_secs(1);
    let rate = Rate::per_second(1).expect("rate");
    let invalid = |result: Result<()>, field: &str| {
        let text = assert_kind(result, ErrorKind::InvalidInput, field);
        assert!(text.contains(field), "{field}: {text}");
    };
    let name = unique("name");
    invalid(store.try_lease("", "a", ttl).await.map(drop), "lease name");
    invalid(
        store.try_lease(&name, &long, ttl).await.map(drop),
        "lease holder",
    );
    invalid(
        store.try_lease(&name, "a", Duration::ZERO).await.map(drop),
        "ttl",
    );
    invalid(
        store
            .try_lease(&name, "a", Duration::from_secs(25 * 3600))
            .await
            .map(drop),
        "ttl",
    );
    invalid(store.lease_holder(&long).await.map(drop), "lease name");
    invalid(
        store.take_permits("", rate, 1).await.map(drop),
        "rate limit key",
    );
    invalid(
        store.acquire_slot("bad\nname", "a", 1, ttl).await.map(drop),
        "semaphore name",
    );
    invalid(
        store.acquire_slot(&name, "", 1, ttl).await.map(drop),
        "slot holder",
    );
    invalid(
        store.acquire_slot(&name, "a", 0, ttl).await.map(drop),
        "concurrency limit",
    );
    invalid(
        store
            .acquire_slot(&name, "a", queue_core::coordination::MAX_LIMIT + 1, ttl)
            .await
            .map(drop),
        "concurrency limit",
    );
    invalid(
        store
            .acquire_slot(&name, "a", 1, Duration::from_millis(99))
            .await
            .map(drop),
        "ttl",
    );
    invalid(store.put("", "k", bytes("v")).await, "record space");
    invalid(store.put(&name, "k\u{7}", bytes("v")).await, "record key");
    let lease = Lease::new(&name, "a", 1, ttl);
    invalid(
        store
            .fenced_put(&lease, &long, "k", bytes("v"))
            .await
            .map(drop),
        "record space",
    );
    // Nothing was taken or stored.
    assert!(store.lease_holder(&name).await.unwrap().is_none());
    assert_eq!(store.slots_held(&name).await.unwrap(), 0);
    assert!(store.list(&name).await.unwrap().is_empty());
}

fn assert_kind<T: std::fmt::Debug>(result: Result<T>, kind: ErrorKind, context: &str) -> String {
    match result {
        Ok(v) => panic!("{context}: expected a {kind} error, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{context}: wrong kind in {e}");
            e.to_string()
        }
    }
}
