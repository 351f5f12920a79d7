//! The core's error type. Only `grpc::status` turns it into a `tonic::Status`.

use std::time::Duration;

/// A field that failed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `date_ranges[0].start_date`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// Errors of the core services.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is invalid; each violation names a field.
    #[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    InvalidArgument(Vec<FieldViolation>),
    /// No or unknown credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials that do not allow this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The named thing exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A feature that this server does not offer yet.
    #[error("{0}")]
    Unimplemented(String),
    /// Temporarily unable to serve; retrying after the delay may help.
    #[error("{message}")]
    Unavailable {
        /// What is unavailable.
        message: String,
        /// Suggested delay before a retry.
        retry_after: Duration,
    },
    /// The caller went over a limit; retrying after the delay may help.
    #[error("{message}")]
    ResourceExhausted {
        /// Which limit.
        message: String,
        /// When enough capacity will be back.
        retry_after: Duration,
    },
    /// The request took longer than the server allows.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The storage backend failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A bug or an unexpected condition.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// Prefixes the field paths of an `InvalidArgument` error.
    pub fn in_field(self, prefix: &str) -> Self {
        match self {
            Self::InvalidArgument(violations) => Self::InvalidArgument(
                violations
                    .into_iter()
                    .map(|v| FieldViolation {
                        field: format!("{prefix}.{}", v.field),
                        description: v.description,
                    })
                    .collect(),
            ),
            other => other,
        }
    }
}

/// Result of the core services.
pub type Result<T, E = Error> = std::result::Result<T, E>;
