//! End-to-end suites of Tally. The tests live in `e2e/`; this crate has no library code.
