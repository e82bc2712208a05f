//! The whole conformance suite on the embedded memory backend.

queue_testkit::conformance_suite!(Some(queue_testkit::MemoryHarness));
