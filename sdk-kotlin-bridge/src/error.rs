//! The one public error of the bridge, with a variant per thing the caller
//! would do differently, mapped from `tally-sdk`'s richer per-operation errors.
//!
//! It crosses the boundary as a flat error: Kotlin and Swift see one exception
//! (error) class per variant whose message is the `Display` text below, which
//! names what failed and what to do about it.

use tally_sdk::queue::QueueError;
use tally_sdk::{BuildError, CallError, FieldViolation, FlushError, StartError, TrackError, TrackRefused};

/// Why a tracker or client call failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum TallyError {
    /// The settings are wrong (endpoint, key): fix them; retrying will not help.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The queue directory cannot be used (permissions, disk full, not a
    /// queue): the event was not stored.
    #[error("queue storage failed: {0}")]
    Storage(String),
    /// The event was dropped on purpose (tracking is opted out, or the queue
    /// is full and counts it): nothing to do.
    #[error("event not tracked: {0}")]
    NotTracked(String),
    /// The server was not reached in time or is overloaded: try again later.
    /// Queued events stay queued and are sent by the tracker itself.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// The key is missing, unknown, revoked or not allowed to do this: use
    /// another key.
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// The server refused the request as invalid, unknown or unsupported: fix
    /// the request.
    #[error("request refused: {0}")]
    InvalidRequest(String),
    /// The tracker was shut down: start a new one.
    #[error("the tracker is shut down")]
    ShutDown,
}

impl From<BuildError> for TallyError {
    fn from(err: BuildError) -> Self {
        Self::InvalidConfig(err.to_string())
    }
}

impl From<QueueError> for TallyError {
    fn from(err: QueueError) -> Self {
        Self::Storage(err.to_string())
    }
}

impl From<StartError> for TallyError {
    fn from(err: StartError) -> Self {
        match err {
            StartError::Client(err) => err.into(),
            StartError::Queue(err) => err.into(),
            other => Self::InvalidConfig(other.to_string()),
        }
    }
}

impl From<TrackRefused> for TallyError {
    fn from(err: TrackRefused) -> Self {
        match err {
            TrackRefused::Queue(err) => err.into(),
            other => Self::NotTracked(other.to_string()),
        }
    }
}

impl From<FlushError> for TallyError {
    fn from(err: FlushError) -> Self {
        match err {
            FlushError::Timeout { pending } => Self::Unavailable(format!(
                "{pending} events still queued at the deadline; they stay queued and are sent later"
            )),
            _ => Self::ShutDown,
        }
    }
}

impl From<TrackError> for TallyError {
    fn from(err: TrackError) -> Self {
        match err {
            TrackError::Unavailable { message, .. } => Self::Unavailable(message),
            TrackError::Unauthenticated(message) | TrackError::PermissionDenied(message) => {
                Self::Unauthorized(message)
            }
            TrackError::Invalid { message, violations } => {
                Self::InvalidRequest(with_violations(message, &violations))
            }
            other => Self::InvalidRequest(other.to_string()),
        }
    }
}

impl From<CallError> for TallyError {
    fn from(err: CallError) -> Self {
        match err {
            CallError::Unavailable { message, .. } => Self::Unavailable(message),
            CallError::Unauthenticated(message) | CallError::PermissionDenied(message) => {
                Self::Unauthorized(message)
            }
            CallError::Invalid { message, violations } => {
                Self::InvalidRequest(with_violations(message, &violations))
            }
            other => Self::InvalidRequest(other.to_string()),
        }
    }
}

/// The server's message followed by the fields it names, e.g.
/// `invalid report (metrics: at least one metric is required)`.
fn with_violations(message: String, violations: &[FieldViolation]) -> String {
    if violations.is_empty() {
        return message;
    }
    let fields: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect();
    format!("{message} ({})", fields.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_maps_to_what_the_caller_does_about_it() {
        let violation = FieldViolation {
            field: "metrics".into(),
            description: "at least one metric is required".into(),
        };
        let cases: Vec<(TallyError, TallyError)> = vec![
            (
                BuildError::InvalidEndpoint("nope".into()).into(),
                TallyError::InvalidConfig(BuildError::InvalidEndpoint("nope".into()).to_string()),
            ),
            (
                TrackRefused::OptedOut.into(),
                TallyError::NotTracked("tracking is opted out".into()),
            ),
            (
                FlushError::Timeout { pending: 3 }.into(),
                TallyError::Unavailable(
                    "3 events still queued at the deadline; they stay queued and are sent later".into(),
                ),
            ),
            (FlushError::ShutDown.into(), TallyError::ShutDown),
            (
                CallError::PermissionDenied("wrong site".into()).into(),
                TallyError::Unauthorized("wrong site".into()),
            ),
            (
                CallError::Invalid {
                    message: "invalid report".into(),
                    violations: vec![violation],
                }
                .into(),
                TallyError::InvalidRequest(
                    "invalid report (metrics: at least one metric is required)".into(),
                ),
            ),
            (
                CallError::NotFound("site x".into()).into(),
                TallyError::InvalidRequest("not found: site x".into()),
            ),
            (
                TrackError::Unauthenticated("unknown key".into()).into(),
                TallyError::Unauthorized("unknown key".into()),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn messages_name_the_kind_of_failure() {
        let err = TallyError::Unauthorized("unknown key".into());
        assert_eq!(err.to_string(), "not authorized: unknown key");
    }
}
