//! The documentation states the redis backend's capability table as the code has it.

use queue_core::Backend;
use queue_redis::RedisBackend;
use queue_testkit::broker_url;

#[tokio::test]
async fn capabilities_doc_matches_the_redis_table() {
    let Some(url) = broker_url("QUEUE_TEST_REDIS_URL") else {
        return;
    };
    let backend = RedisBackend::connect(&url).await.expect("connect");
    queue_testkit::assert_capabilities_documented("redis", backend.capabilities());
}
