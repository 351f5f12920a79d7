//! The query core: reports and session look-ups over a site's events.

pub mod dates;
pub mod dims;
pub mod filter;
mod report;
mod sessions;

use std::sync::Arc;

use tally_proto::v1;

use crate::domain::{SiteRecord, now_micros};
use crate::error::Result;
use crate::storage::Store;

/// Answers reports.
pub struct Query {
    store: Arc<dyn Store>,
}

impl Query {
    /// A query core over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Runs a report for `site` (already authorised).
    pub async fn run_report(
        &self,
        site: &SiteRecord,
        req: &v1::RunReportRequest,
    ) -> Result<v1::RunReportResponse> {
        report::run_report(self.store.as_ref(), site, req, now_micros()).await
    }

    /// One visit with its events (`site` already authorised).
    pub async fn get_session(&self, site: &SiteRecord, req: &v1::GetSessionRequest) -> Result<v1::Session> {
        sessions::get_session(self.store.as_ref(), site, req).await
    }

    /// Visits that started in a time range.
    pub async fn list_sessions(
        &self,
        site: &SiteRecord,
        req: &v1::ListSessionsRequest,
    ) -> Result<v1::ListSessionsResponse> {
        sessions::list_sessions(self.store.as_ref(), site, req).await
    }

    /// A visitor's recent visits.
    pub async fn list_visitor_sessions(
        &self,
        site: &SiteRecord,
        req: &v1::ListVisitorSessionsRequest,
    ) -> Result<v1::ListSessionsResponse> {
        sessions::list_visitor_sessions(self.store.as_ref(), site, req, now_micros()).await
    }
}
