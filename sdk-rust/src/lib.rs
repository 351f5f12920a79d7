//! Tally's Rust SDK: a typed client for the `tally.v1` services and a tracker
//! that queues events durably on disk and delivers each exactly once.

mod client;
mod error;
pub mod queue;
mod tracker;

pub use client::{Client, ClientBuilder};
pub use error::{BuildError, CallError, FieldViolation, TrackError};
pub use tally_proto::v1 as proto;
pub use tracker::{
    AppContext, FlushError, Rejected, RejectionHandler, RetryPolicy, StartError, TrackEvent, TrackRefused,
    Tracker, TrackerConfig, TrackerStats,
};
