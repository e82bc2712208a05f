//! Process-level tests.
