//! Errors of the client, one small enum per kind of operation, each saying
//! whether a retry can help.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A field the server found invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `date_ranges[0].start_date`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// How a failed call is classified, shared by the per-operation enums.
#[derive(Debug)]
enum Class {
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    Unauthenticated(String),
    PermissionDenied(String),
    Invalid {
        message: String,
        violations: Vec<FieldViolation>,
    },
    NotFound(String),
    Unsupported(String),
    Other {
        code: Code,
        message: String,
    },
}

fn classify(status: &Status) -> Class {
    let message = status.message().to_owned();
    match status.code() {
        Code::Unavailable
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Cancelled => {
            let retry_after = status.get_details_retry_info().and_then(|info| info.retry_delay);
            Class::Retryable { message, retry_after }
        }
        // A transport failure (connection refused, reset) surfaces as UNKNOWN with a source.
        Code::Unknown if std::error::Error::source(status).is_some() => Class::Retryable {
            message,
            retry_after: None,
        },
        Code::Unauthenticated => Class::Unauthenticated(message),
        Code::PermissionDenied => Class::PermissionDenied(message),
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            let violations = status
                .get_details_bad_request()
                .map(|bad| {
                    bad.field_violations
                        .into_iter()
                        .map(|v| FieldViolation {
                            field: v.field,
                            description: v.description,
                        })
                        .collect()
                })
                .unwrap_or_default();
            Class::Invalid { message, violations }
        }
        Code::NotFound => Class::NotFound(message),
        Code::Unimplemented => Class::Unsupported(message),
        code => Class::Other { code, message },
    }
}

/// Sending events failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// The server is unreachable, overloaded or restarting: retry later (after
    /// `retry_after` when the server said so). Events are never counted twice.
    #[error("temporarily unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The server's suggested delay.
        retry_after: Option<Duration>,
    },
    /// The key is missing, unknown or revoked: retrying will not help.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The key may not send to this site (or from this origin).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The request as a whole is invalid (too many events, too large, unknown site).
    #[error("invalid request: {message}")]
    Invalid {
        /// The server's message.
        message: String,
        /// Offending fields.
        violations: Vec<FieldViolation>,
    },
    /// Any other failure; not worth retrying as is.
    #[error("{code:?}: {message}")]
    Other {
        /// gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

impl TrackError {
    /// True when sending the same events again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// The server's suggested delay before a retry.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<Status> for TrackError {
    fn from(status: Status) -> Self {
        match classify(&status) {
            Class::Retryable { message, retry_after } => Self::Unavailable { message, retry_after },
            Class::Unauthenticated(m) => Self::Unauthenticated(m),
            Class::PermissionDenied(m) => Self::PermissionDenied(m),
            Class::Invalid { message, violations } => Self::Invalid { message, violations },
            Class::NotFound(message) => Self::Invalid {
                message,
                violations: Vec::new(),
            },
            Class::Unsupported(message) => Self::Other {
                code: Code::Unimplemented,
                message,
            },
            Class::Other { code, message } => Self::Other { code, message },
        }
    }
}

/// A report, session look-up or admin call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The server is unreachable, overloaded or restarting: retry later.
    #[error("temporarily unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The server's suggested delay.
        retry_after: Option<Duration>,
    },
    /// The key is missing, unknown or revoked.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The key may not do this (wrong site or kind).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The request is invalid; `violations` names the fields.
    #[error("invalid request: {message}")]
    Invalid {
        /// The server's message.
        message: String,
        /// Offending fields.
        violations: Vec<FieldViolation>,
    },
    /// The site, key or session does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The server does not offer this (yet).
    #[error("not supported by this server: {0}")]
    Unsupported(String),
    /// Any other failure.
    #[error("{code:?}: {message}")]
    Other {
        /// gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

impl CallError {
    /// True when the same call can succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        match classify(&status) {
            Class::Retryable { message, retry_after } => Self::Unavailable { message, retry_after },
            Class::Unauthenticated(m) => Self::Unauthenticated(m),
            Class::PermissionDenied(m) => Self::PermissionDenied(m),
            Class::Invalid { message, violations } => Self::Invalid { message, violations },
            Class::NotFound(m) => Self::NotFound(m),
            Class::Unsupported(m) => Self::Unsupported(m),
            Class::Other { code, message } => Self::Other { code, message },
        }
    }
}

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The endpoint is not a valid URI.
    #[error("invalid endpoint {0:?}: use e.g. http://127.0.0.1:7750 or https://tally.example.com")]
    InvalidEndpoint(String),
    /// The key contains characters that cannot go into a header.
    #[error("the API key contains characters that are not allowed in a header")]
    InvalidKey,
    /// TLS could not be configured.
    #[error("tls setup failed: {0}")]
    Tls(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_is_honoured_and_codes_classified() {
        let details = tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_millis(1500)));
        let status = Status::with_error_details(Code::Unavailable, "overloaded", details);
        let err = TrackError::from(status);
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));

        for (code, retryable) in [
            (Code::Unavailable, true),
            (Code::ResourceExhausted, true),
            (Code::DeadlineExceeded, true),
            (Code::Unauthenticated, false),
            (Code::PermissionDenied, false),
            (Code::InvalidArgument, false),
            (Code::Internal, false),
        ] {
            assert_eq!(
                TrackError::from(Status::new(code, "x")).is_retryable(),
                retryable,
                "{code:?}"
            );
            assert_eq!(
                CallError::from(Status::new(code, "x")).is_retryable(),
                retryable,
                "{code:?}"
            );
        }
    }

    #[test]
    fn field_violations_are_kept() {
        let mut details = tonic_types::ErrorDetails::new();
        details.add_bad_request_violation("events", "too many");
        let status = Status::with_error_details(Code::InvalidArgument, "invalid", details);
        let TrackError::Invalid { violations, .. } = TrackError::from(status) else {
            panic!()
        };
        assert_eq!(
            violations,
            vec![FieldViolation {
                field: "events".into(),
                description: "too many".into()
            }]
        );
    }
}
