//! The coordination cases against a real Redis (`QUEUE_TEST_REDIS_URL`),
//! each on a namespace of its own that is cleared afterwards, and what is
//! Redis's own: the store the backend hands out, its key layout and its
//! expiry of idle keys.

use std::sync::Arc;
use std::time::Duration;

use queue_core::{Backend, Coordination, Rate, Slot};
use queue_redis::{RedisBackend, RedisCoordination};
use queue_testkit::broker_url;
use queue_testkit::coordination::CoordinationUnderTest;

/// Deletes a test's namespace when dropped, so a failing test leaves
/// nothing behind in the shared server.
struct Cleared {
    url: String,
    keys: String,
}

impl Drop for Cleared {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.keys))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _ = redis::cmd("DEL").arg(keys).query::<()>(&mut conn);
        }
    }
}

/// A store on a fresh namespace and the guard that deletes it, or `None`
/// (with the reason printed) when no Redis is configured.
async fn store() -> Option<(RedisCoordination, Cleared)> {
    let url = broker_url("QUEUE_TEST_REDIS_URL")?;
    let backend = RedisBackend::connect(&url).await.expect("connect to redis");
    let id = queue_core::MessageId::new().as_uuid().simple().to_string();
    let namespace = format!("qt-coord-{}", &id[id.len() - 16..]);
    let store = backend
        .coordination_store()
        .with_namespace(&namespace)
        .expect("namespace");
    let keys = store_prefix(&store);
    Some((store, Cleared { url, keys }))
}

async fn under_test() -> Option<CoordinationUnderTest> {
    let (store, cleared) = store().await?;
    let cleanup = store.clone();
    Some(
        CoordinationUnderTest::new(Arc::new(store)).with_cleanup(async move {
            cleanup.clear().await.expect("clear the namespace");
            // Finds nothing left; it deletes the keys if `clear` panicked.
            drop(cleared);
        }),
    )
}

queue_testkit::coordination_cases!(under_test());

async fn keys(url: &str, store: &RedisCoordination) -> Vec<String> {
    let client = redis::Client::open(url).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let prefix = store_prefix(store);
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    keys.sort();
    keys
}

/// The key prefix of `store`, from its Debug form (which names no
/// credentials).
fn store_prefix(store: &RedisCoordination) -> String {
    let debug = format!("{store:?}");
    let start = debug.find("keys: \"").expect("keys in Debug") + 7;
    let end = debug[start..].find('"').expect("end of keys") + start;
    debug[start..end].to_owned()
}

#[tokio::test]
async fn the_backend_hands_out_its_store_and_keys_share_one_hash_tag() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let backend = RedisBackend::connect(&url).await.expect("connect");
    let handed: Arc<dyn Coordination> = backend.coordination().expect("redis keeps coordination");
    assert!(
        format!("{handed:?}").contains("queue:{coord}:coord:"),
        "{handed:?}"
    );
    let Some((store, _cleared)) = store().await else {
        return;
    };
    let ttl = Duration::from_secs(5);
    let lease = store
        .try_lease("l", "a", ttl)
        .await
        .unwrap()
        .expect("lease");
    store
        .take_permits("r", Rate::per_second(5).unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(
        store.acquire_slot("s", "a", 1, ttl).await.unwrap(),
        Slot::Held
    );
    store.put("p", "k", "v".into()).await.unwrap();
    let prefix = store_prefix(&store);
    let tag = &prefix[..prefix.find('}').expect("a hash tag") + 1];
    let found = keys(&url, &store).await;
    let expected: Vec<String> = ["lease:l", "rate:r", "rec:p", "sem:s", "tokens"]
        .iter()
        .map(|k| format!("{prefix}{k}"))
        .collect();
    assert_eq!(found, expected);
    assert!(found.iter().all(|k| k.starts_with(tag)));
    store.release_lease(&lease).await.unwrap();
    store.clear().await.unwrap();
    assert!(keys(&url, &store).await.is_empty());
    let refused = backend
        .coordination_store()
        .with_namespace("bad namespace")
        .unwrap_err();
    assert!(refused.message().contains("namespace"), "{refused}");
}

#[tokio::test]
async fn idle_keys_expire() {
    let Some((store, _cleared)) = store().await else {
        return;
    };
    let url = broker_url("QUEUE_TEST_REDIS_URL").expect("set");
    let ttl = Duration::from_millis(200);
    store
        .try_lease("l", "a", ttl)
        .await
        .unwrap()
        .expect("lease");
    store
        .take_permits("r", Rate::new(5, Duration::from_millis(100)).unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(
        store.acquire_slot("s", "a", 1, ttl).await.unwrap(),
        Slot::Held
    );
    assert_eq!(keys(&url, &store).await.len(), 4);
    // A lease or slot key lasts as long as its time to live, a window two
    // periods; the token counter stays, so tokens never go back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let prefix = store_prefix(&store);
    assert_eq!(keys(&url, &store).await, vec![format!("{prefix}tokens")]);
}

#[tokio::test]
async fn processes_share_one_store() {
    let Some((first, _cleared)) = store().await else {
        return;
    };
    let url = broker_url("QUEUE_TEST_REDIS_URL").expect("set");
    let prefix = store_prefix(&first);
    let namespace = &prefix[prefix.find('{').expect("tag") + 1..prefix.find('}').expect("tag")];
    // Another connection, as another process would open it.
    let second = RedisBackend::connect(&url)
        .await
        .unwrap()
        .coordination_store()
        .with_namespace(namespace)
        .unwrap();
    let ttl = Duration::from_secs(5);
    let lease = first
        .try_lease("l", "a", ttl)
        .await
        .unwrap()
        .expect("lease");
    assert!(second.try_lease("l", "b", ttl).await.unwrap().is_none());
    assert_eq!(
        second.lease_holder("l").await.unwrap().map(|l| l.token),
        Some(lease.token)
    );
    first.release_lease(&lease).await.unwrap();
    let next = second.try_lease("l", "b", ttl).await.unwrap().expect("b");
    assert!(next.token > lease.token);
    second.release_lease(&next).await.unwrap();
}
