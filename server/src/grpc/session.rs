//! `tally.v1.SessionService`.

use tally_proto::v1::{self, session_service_server::SessionService};
use tonic::{Request, Response, Status};

use super::{SharedCore, status};

/// The session adapter.
pub struct SessionApi {
    core: SharedCore,
}

impl SessionApi {
    /// An adapter over the core.
    pub fn new(core: SharedCore) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn get_session(
        &self,
        request: Request<v1::GetSessionRequest>,
    ) -> Result<Response<v1::Session>, Status> {
        let site = self
            .core
            .query_site(request.metadata(), &request.get_ref().site_id)
            .await?;
        let session = self
            .core
            .query
            .get_session(&site, request.get_ref())
            .await
            .map_err(status)?;
        Ok(Response::new(session))
    }

    async fn list_sessions(
        &self,
        request: Request<v1::ListSessionsRequest>,
    ) -> Result<Response<v1::ListSessionsResponse>, Status> {
        let site = self
            .core
            .query_site(request.metadata(), &request.get_ref().site_id)
            .await?;
        let page = self
            .core
            .query
            .list_sessions(&site, request.get_ref())
            .await
            .map_err(status)?;
        Ok(Response::new(page))
    }

    async fn list_visitor_sessions(
        &self,
        request: Request<v1::ListVisitorSessionsRequest>,
    ) -> Result<Response<v1::ListSessionsResponse>, Status> {
        let site = self
            .core
            .query_site(request.metadata(), &request.get_ref().site_id)
            .await?;
        let page = self
            .core
            .query
            .list_visitor_sessions(&site, request.get_ref())
            .await
            .map_err(status)?;
        Ok(Response::new(page))
    }
}
