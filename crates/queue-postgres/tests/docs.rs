//! The documentation states the postgres backend's capability table as the code has it.

use queue_core::QueueConfig;

#[test]
fn capabilities_doc_matches_the_postgres_table() {
    let config = QueueConfig::from_url("postgres://127.0.0.1:5432/test").expect("config");
    queue_testkit::assert_capabilities_documented(&queue_postgres::PostgresBackend::table(&config));
}
