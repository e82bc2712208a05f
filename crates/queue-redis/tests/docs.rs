//! The documentation states the redis backend's capability table as the code has it.

use queue_core::QueueConfig;

#[test]
fn capabilities_doc_matches_the_redis_table() {
    let config = QueueConfig::from_url("redis://127.0.0.1:6379").expect("config");
    queue_testkit::assert_capabilities_documented(&queue_redis::RedisBackend::table(&config));
}
