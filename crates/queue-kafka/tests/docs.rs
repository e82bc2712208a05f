//! The documentation states the kafka backend's capability table as the
//! code has it.

use queue_core::QueueConfig;

#[test]
fn capabilities_doc_matches_the_kafka_table() {
    let config = QueueConfig::from_url("kafka://127.0.0.1:9092").expect("config");
    let table = queue_kafka::KafkaBackend::table(&config).expect("table");
    queue_testkit::assert_capabilities_documented(&table);
}
