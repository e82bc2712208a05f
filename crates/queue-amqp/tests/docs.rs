//! The documentation states the amqp backend's capability tables, one
//! column per queue type, as the code has them.

use queue_core::QueueConfig;

#[test]
fn capabilities_doc_matches_the_amqp_tables() {
    for queue_type in ["classic", "quorum"] {
        let url = format!("amqp://127.0.0.1:5672?queue_type={queue_type}");
        let config = QueueConfig::from_url(&url).expect("config");
        let table = queue_amqp::AmqpBackend::table(&config).expect("table");
        queue_testkit::assert_capabilities_documented(&table);
    }
}
