//! The query core: reports and session look-ups over a site's events.

pub mod cache;
mod columnar;
pub mod dates;
pub mod dims;
pub mod filter;
mod funnel;
mod metadata;
pub mod plan;
mod raw;
mod report;
mod rollup_exec;
mod sessions;

use std::sync::Arc;

use tally_proto::v1;

use crate::domain::{SiteRecord, now_micros};
use crate::error::Result;
use crate::limits::Limits;
use crate::rollup::Rollups;
use crate::storage::Store;
use cache::ReportCache;

/// Answers reports.
pub struct Query {
    store: Arc<dyn Store>,
    rollups: Arc<Rollups>,
    cache: ReportCache,
    limits: Arc<Limits>,
}

impl Query {
    /// A query core over `store` and the `rollups` that ingest keeps;
    /// `limits` bound raw scans.
    pub fn new(store: Arc<dyn Store>, rollups: Arc<Rollups>, limits: Arc<Limits>) -> Self {
        Self {
            store,
            rollups,
            cache: ReportCache::default(),
            limits,
        }
    }

    /// The cache of report answers.
    pub fn cache(&self) -> &ReportCache {
        &self.cache
    }

    /// Runs a report for `site` (already authorised).
    pub async fn run_report(
        &self,
        site: &SiteRecord,
        req: &v1::RunReportRequest,
    ) -> Result<v1::RunReportResponse> {
        report::run_report(
            self.store.as_ref(),
            &self.rollups,
            &self.cache,
            &self.limits,
            site,
            req,
            now_micros(),
        )
        .await
    }

    /// Runs a funnel report for `site` (already authorised).
    pub async fn run_funnel(
        &self,
        site: &SiteRecord,
        req: &v1::RunFunnelReportRequest,
    ) -> Result<v1::RunFunnelReportResponse> {
        let _slot = self.limits.scan_slot().await?;
        bounded(
            self.limits.query_timeout,
            funnel::run(self.store.as_ref(), site, req, now_micros()),
        )
        .await
    }

    /// Metrics, dimensions and the custom property keys seen on `site`.
    pub async fn metadata(&self, site: &SiteRecord) -> Result<v1::Metadata> {
        metadata::metadata(self.store.as_ref(), &self.rollups, site, now_micros()).await
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

/// Runs `work`, or fails with `DEADLINE_EXCEEDED` once `limit` has passed.
async fn bounded<T>(
    limit: std::time::Duration,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(crate::error::Error::DeadlineExceeded(format!(
            "the query took longer than the server allows ({} s); narrow the date range or filter",
            limit.as_secs()
        )))
    })
}
