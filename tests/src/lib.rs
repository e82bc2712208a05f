//! Process-level tests of the queue workspace. The tests live in `tests/`;
//! `src/bin/crash_worker.rs` is the worker process `crash_recovery` kills.

#![forbid(unsafe_code)]
