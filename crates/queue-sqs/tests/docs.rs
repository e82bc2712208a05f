//! The documentation states the sqs backend's capability tables, one
//! column per queue type, as the code has them.

use queue_core::QueueConfig;

#[test]
fn capabilities_doc_matches_the_sqs_tables() {
    for queue_type in ["standard", "fifo"] {
        let url = format!("sqs://us-east-1?queue_type={queue_type}");
        let config = QueueConfig::from_url(&url).expect("config");
        let table = queue_sqs::SqsBackend::table(&config).expect("table");
        queue_testkit::assert_capabilities_documented(&table);
    }
}
