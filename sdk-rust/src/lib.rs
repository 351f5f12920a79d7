//! Tally's Rust SDK: a typed client for the `tally.v1` services and a tracker
//! that queues events durably on disk and delivers each exactly once.

pub mod queue;
