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
