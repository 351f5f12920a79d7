//! The query core: reports over a site's events.

pub mod dates;
pub mod dims;
pub mod filter;
mod report;

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
}
