//! The coordination cases against a real PostgreSQL
//! (`QUEUE_TEST_POSTGRES_URL`), each in a schema of its own that is
//! dropped afterwards.

use std::sync::Arc;

use queue_postgres::PostgresBackend;
use queue_testkit::broker_url;
use queue_testkit::coordination::CoordinationUnderTest;

async fn under_test() -> Option<CoordinationUnderTest> {
    let base = broker_url("QUEUE_TEST_POSTGRES_URL")?;
    let id = queue_core::MessageId::new().as_uuid().simple().to_string();
    let schema = format!("qt_coord_{}", &id[id.len() - 12..]);
    let joiner = if base.contains('?') { '&' } else { '?' };
    let backend = PostgresBackend::connect(&format!("{base}{joiner}schema={schema}"))
        .await
        .expect("connect to postgres");
    let store = backend.coordination_store();
    // Warm the pool: each new connection plans the schema's functions on
    // first use (a few milliseconds), which the timed cases (a rate over
    // 2 s) would otherwise count against the store. A process that has
    // been running for a while has paid it long ago.
    let warm = (0..4).map(|i| {
        let store = store.clone();
        async move {
            use queue_core::{Coordination, Rate};
            let rate = Rate::per_second(1_000).expect("rate");
            store
                .take_permits(&format!("warm-{i}"), rate, 1)
                .await
                .expect("warm");
            store
                .acquire_slot(
                    "warm",
                    &format!("w{i}"),
                    10,
                    std::time::Duration::from_secs(1),
                )
                .await
                .expect("warm");
            store
                .try_lease(&format!("warm-{i}"), "w", std::time::Duration::from_secs(1))
                .await
                .expect("warm");
        }
    });
    futures_util::future::join_all(warm).await;
    Some(
        CoordinationUnderTest::new(Arc::new(store)).with_cleanup(async move {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(backend.pool())
                .await
                .expect("drop the test schema");
        }),
    )
}

queue_testkit::coordination_cases!(under_test());
