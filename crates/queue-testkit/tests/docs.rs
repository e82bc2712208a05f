//! The documentation states the memory backend's capability table as the code has it.

use queue_core::{Backend, MemoryBackend};

#[test]
fn capabilities_doc_matches_the_memory_table() {
    queue_testkit::assert_capabilities_documented(MemoryBackend::new().capabilities());
}
