//! The whole conformance suite on the embedded memory backend, and the
//! coordination cases on the store it hands out.

use queue_core::{Backend, MemoryBackend};
use queue_testkit::coordination::CoordinationUnderTest;

queue_testkit::conformance_suite!(Some(queue_testkit::MemoryHarness));

queue_testkit::coordination_cases!(async {
    let backend = MemoryBackend::new();
    let store = backend
        .coordination()
        .expect("the memory backend keeps coordination state");
    Some(CoordinationUnderTest::new(store))
});
