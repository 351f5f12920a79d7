//! `tally.v1.SessionService`.

use tally_proto::v1::{self, session_service_server::SessionService};
use tonic::{Request, Response, Status};

use super::SharedCore;

/// The session adapter.
pub struct SessionApi {
    core: SharedCore,
}

impl SessionApi {
    /// An adapter over the core.
    pub fn new(core: SharedCore) -> Self {
        Self { core }
    }

    async fn not_yet(&self, metadata: &tonic::metadata::MetadataMap, site_id: &str) -> Status {
        match self.core.query_site(metadata, site_id).await {
            Err(status) => status,
            Ok(_) => Status::unimplemented("session look-ups are not available yet"),
        }
    }
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn get_session(
        &self,
        request: Request<v1::GetSessionRequest>,
    ) -> Result<Response<v1::Session>, Status> {
        Err(self.not_yet(request.metadata(), &request.get_ref().site_id).await)
    }

    async fn list_sessions(
        &self,
        request: Request<v1::ListSessionsRequest>,
    ) -> Result<Response<v1::ListSessionsResponse>, Status> {
        Err(self.not_yet(request.metadata(), &request.get_ref().site_id).await)
    }

    async fn list_visitor_sessions(
        &self,
        request: Request<v1::ListVisitorSessionsRequest>,
    ) -> Result<Response<v1::ListSessionsResponse>, Status> {
        Err(self.not_yet(request.metadata(), &request.get_ref().site_id).await)
    }
}
