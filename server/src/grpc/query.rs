//! `tally.v1.QueryService`.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tally_proto::v1::{self, query_service_server::QueryService};
use tonic::{Request, Response, Status};

use super::{SharedCore, status};
use crate::realtime::{View, heartbeat_interval};

/// The query adapter.
pub struct QueryApi {
    core: SharedCore,
}

impl QueryApi {
    /// An adapter over the core.
    pub fn new(core: SharedCore) -> Self {
        Self { core }
    }
}

/// Counts an open `WatchRealtime` stream in the metrics while it lives.
struct OpenStream;

impl OpenStream {
    fn new() -> Self {
        crate::metrics::metrics()
            .realtime_streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        crate::metrics::metrics()
            .realtime_streams
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

type RealtimeStream = Pin<Box<dyn Stream<Item = Result<v1::RealtimeUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl QueryService for QueryApi {
    async fn run_report(
        &self,
        request: Request<v1::RunReportRequest>,
    ) -> Result<Response<v1::RunReportResponse>, Status> {
        let site = self
            .core
            .query_site(request.metadata(), &request.get_ref().site_id)
            .await?;
        let report = self
            .core
            .query
            .run_report(&site, request.get_ref())
            .await
            .map_err(status)?;
        Ok(Response::new(report))
    }

    async fn run_realtime_report(
        &self,
        request: Request<v1::RunRealtimeReportRequest>,
    ) -> Result<Response<v1::RealtimeReport>, Status> {
        let req = request.get_ref();
        let site = self.core.query_site(request.metadata(), &req.site_id).await?;
        let view = View::new(req.top_limit, req.include_bots).map_err(status)?;
        let report = self.core.realtime.report(&site, view).await.map_err(status)?;
        Ok(Response::new(report))
    }

    type WatchRealtimeStream = RealtimeStream;

    async fn watch_realtime(
        &self,
        request: Request<v1::WatchRealtimeRequest>,
    ) -> Result<Response<Self::WatchRealtimeStream>, Status> {
        let req = request.get_ref();
        let site = self.core.query_site(request.metadata(), &req.site_id).await?;
        let view = View::new(req.top_limit, req.include_bots).map_err(status)?;
        let heartbeat = heartbeat_interval(req.heartbeat_interval.as_ref()).map_err(status)?;
        let updates = self.core.realtime.watch(&site, view, heartbeat).map_err(status)?;
        let open = OpenStream::new();
        Ok(Response::new(Box::pin(updates.map(move |update| {
            let _counted = &open;
            update.map_err(status)
        }))))
    }

    async fn run_funnel_report(
        &self,
        request: Request<v1::RunFunnelReportRequest>,
    ) -> Result<Response<v1::RunFunnelReportResponse>, Status> {
        let site = self
            .core
            .query_site(request.metadata(), &request.get_ref().site_id)
            .await?;
        let report = self
            .core
            .query
            .run_funnel(&site, request.get_ref())
            .await
            .map_err(status)?;
        Ok(Response::new(report))
    }

    async fn get_metadata(
        &self,
        request: Request<v1::GetMetadataRequest>,
    ) -> Result<Response<v1::Metadata>, Status> {
        let site = self
            .core
            .query_site(request.metadata(), &request.get_ref().site_id)
            .await?;
        let metadata = self.core.query.metadata(&site).await.map_err(status)?;
        Ok(Response::new(metadata))
    }
}
