use std::time::Duration;

use super::*;

fn rate(limit: u32, ms: u64) -> Rate {
    Rate::new(limit, Duration::from_millis(ms)).expect("rate")
}

#[test]
fn a_window_never_holds_more_than_its_limit() {
    let rate = rate(50, 1000);
    let mut window = Window::default();
    let mut starts = Vec::new();
    // Ask for 7 permits every 3 ms for 5 s, and keep every grant's time.
    let mut now = 0u64;
    while now < 5_000_000 {
        let permits = window.take(rate, now, 7);
        starts.extend(std::iter::repeat_n(now, permits.granted as usize));
        if permits.granted < 7 {
            assert!(permits.retry_after.is_some());
        }
        now += 3_000;
    }
    for (i, start) in starts.iter().enumerate() {
        let in_window = starts[i..]
            .iter()
            .take_while(|t| **t < start + 1_000_000)
            .count();
        assert!(in_window <= 50, "{in_window} permits in one second");
    }
    // The rate reached: at least 90% of the limit over 5 s (the margin
    // and a bucket keep it under the limit).
    assert!(starts.len() >= 225, "{} permits in 5 s", starts.len());
}

#[test]
fn retry_after_points_at_room() {
    let rate = rate(2, 1000);
    let mut window = Window::default();
    assert_eq!(window.take(rate, 0, 5).granted, 2);
    let wait = window.take(rate, 10, 1).retry_after.expect("full");
    let later = 10 + u64::try_from(wait.as_micros()).expect("micros");
    assert_eq!(window.take(rate, later - 1, 1).granted, 0);
    assert_eq!(window.take(rate, later, 1).granted, 1);
}

#[test]
fn bad_values_name_the_field() {
    let e = Rate::new(0, Duration::from_secs(1)).unwrap_err();
    assert!(e.message().contains("limit"), "{e}");
    let e = Rate::new(1, Duration::ZERO).unwrap_err();
    assert!(e.message().contains("period"), "{e}");
    let e = check_name("lease name", &"x".repeat(MAX_NAME + 1)).unwrap_err();
    assert!(e.message().contains("lease name"), "{e}");
    assert!(check_ttl(Duration::ZERO).is_err());
    assert!(check_limit("concurrency limit", 0).is_err());
}

#[tokio::test]
async fn leases_fence_and_hand_over() {
    let store = MemoryCoordination::new();
    let ttl = Duration::from_millis(100);
    let a = store
        .try_lease("leader", "a", ttl)
        .await
        .unwrap()
        .expect("a leads");
    assert!(store.try_lease("leader", "b", ttl).await.unwrap().is_none());
    let again = store
        .try_lease("leader", "a", ttl)
        .await
        .unwrap()
        .expect("renewed");
    assert_eq!(again.token, a.token);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let b = store
        .try_lease("leader", "b", ttl)
        .await
        .unwrap()
        .expect("b leads");
    assert!(b.token > a.token);
    assert!(!store.renew_lease(&a).await.unwrap());
    assert!(!store
        .fenced_put(&a, "s", "k", Bytes::from_static(b"old"))
        .await
        .unwrap());
    assert!(store
        .fenced_put(&b, "s", "k", Bytes::from_static(b"new"))
        .await
        .unwrap());
    assert_eq!(
        store.get("s", "k").await.unwrap().as_deref(),
        Some(&b"new"[..])
    );
    store.release_lease(&b).await.unwrap();
    let c = store
        .try_lease("leader", "c", ttl)
        .await
        .unwrap()
        .expect("c leads");
    assert!(c.token > b.token);
}

#[tokio::test]
async fn slots_expire_with_their_holder() {
    let store = MemoryCoordination::new();
    let ttl = Duration::from_millis(100);
    assert_eq!(
        store.acquire_slot("s", "a", 2, ttl).await.unwrap(),
        Slot::Held
    );
    assert_eq!(
        store.acquire_slot("s", "b", 2, ttl).await.unwrap(),
        Slot::Held
    );
    assert!(matches!(
        store.acquire_slot("s", "c", 2, ttl).await.unwrap(),
        Slot::Full { .. }
    ));
    store.release_slot("s", "a").await.unwrap();
    assert_eq!(
        store.acquire_slot("s", "c", 2, ttl).await.unwrap(),
        Slot::Held
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(store.slots_held("s").await.unwrap(), 0);
    assert_eq!(
        store.acquire_slot("s", "d", 2, ttl).await.unwrap(),
        Slot::Held
    );
}
