//! The mobile bridge: Tally's tracker and a small client exported over
//! UniFFI, for Kotlin here and, re-exported by `sdk-swift-bridge`, for Swift.
//!
//! Every exported method delegates to `tally-sdk` in one line, so Android,
//! iOS and Rust apps share one queue and one retry state machine. What lives
//! here is only what crossing the boundary needs: records and enums the
//! bindings can express, one small error type, and the runtime that runs the
//! tracker's background sender.

mod client;
mod error;
mod runtime;
mod tracker;

pub use client::{
    Client, Dimension, KeyKind, Metric, MetricValue, Report, ReportFilter, ReportQuery, ReportRow, Site,
};
pub use error::TallyError;
pub use tracker::{
    AppContext, Event, EventKind, PropertyValue, Revenue, Tracker, TrackerConfig, TrackerStats,
};

uniffi::setup_scaffolding!("tally");
