//! gRPC adapters: the only code that knows tonic. Each handler validates the
//! request's envelope, authenticates, calls the core and maps the result.

mod admin;
mod ingest;
mod query;
mod session;

use std::net::IpAddr;
use std::sync::Arc;

use tonic::{Code, Status, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt};

pub use admin::AdminApi;
pub use ingest::IngestApi;
pub use query::QueryApi;
pub use session::SessionApi;

use crate::admin::Admin;
use crate::auth::{Authenticator, Principal};
use crate::domain::{SiteId, SiteRecord};
use crate::error::Error;
use crate::ingest::Ingest;
use crate::query::Query;
use crate::realtime::Realtime;

/// The core services that every adapter shares.
pub struct Core {
    /// Authentication.
    pub auth: Authenticator,
    /// Ingest.
    pub ingest: Ingest,
    /// Reports.
    pub query: Query,
    /// Realtime reports and watches.
    pub realtime: Arc<Realtime>,
    /// Sites and keys.
    pub admin: Admin,
    /// Rate limits and scan slots.
    pub limits: Arc<crate::limits::Limits>,
    /// The rollups that ingest keeps and reports read.
    pub rollups: Arc<crate::rollup::Rollups>,
    /// The store.
    pub store: Arc<dyn crate::storage::Store>,
}

/// Shared handle to the core.
pub type SharedCore = Arc<Core>;

/// Maps a core error to a status with rich details (`BadRequest`, `RetryInfo`).
pub fn status(err: Error) -> Status {
    match err {
        Error::InvalidArgument(violations) => {
            let message = Error::InvalidArgument(violations.clone()).to_string();
            let mut details = ErrorDetails::new();
            for v in violations {
                details.add_bad_request_violation(v.field, v.description);
            }
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        Error::Unauthenticated(m) => Status::unauthenticated(m),
        Error::PermissionDenied(m) => Status::permission_denied(m),
        Error::NotFound(_) => Status::not_found(err.to_string()),
        Error::AlreadyExists(_) => Status::already_exists(err.to_string()),
        Error::Unimplemented(m) => Status::unimplemented(m),
        Error::Unavailable { message, retry_after } => Status::with_error_details(
            Code::Unavailable,
            message,
            ErrorDetails::with_retry_info(Some(retry_after)),
        ),
        Error::ResourceExhausted { message, retry_after } => Status::with_error_details(
            Code::ResourceExhausted,
            message,
            ErrorDetails::with_retry_info(Some(retry_after)),
        ),
        Error::DeadlineExceeded(m) => Status::deadline_exceeded(m),
        Error::Storage(storage) => {
            use crate::storage::StorageError as S;
            match storage {
                S::Unavailable(m) => Status::with_error_details(
                    Code::Unavailable,
                    format!("storage unavailable: {m}"),
                    ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1))),
                ),
                S::UnknownSite(site) => Status::not_found(format!("site {site} not found")),
                other => {
                    tracing::error!(error = %other, "storage failure");
                    Status::internal(other.to_string())
                }
            }
        }
        Error::Internal(m) => {
            tracing::error!(error = %m, "internal error");
            Status::internal(m)
        }
    }
}

/// The bearer token of a request, if any.
fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

impl Core {
    /// Authenticates the caller of a request.
    pub async fn principal(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        self.auth.authenticate(bearer(metadata)).await.map_err(status)
    }

    /// Authorises a read of `site_id` and loads the site.
    pub async fn query_site(&self, metadata: &MetadataMap, site_id: &str) -> Result<SiteRecord, Status> {
        let principal = self.principal(metadata).await?;
        let site = SiteId::parse(site_id).map_err(status)?;
        principal.check_query(&site).map_err(status)?;
        self.limits.request(&principal).map_err(status)?;
        self.admin.site(&site).await.map_err(status)
    }
}

/// The client's IP address, from the connection.
fn peer_ip<T>(request: &tonic::Request<T>) -> Option<IpAddr> {
    request.remote_addr().map(|a| a.ip())
}
