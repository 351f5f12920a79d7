//! `tally.v1.AdminService`.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tally_proto::v1::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use super::{SharedCore, status};
use crate::admin::site_to_proto;
use crate::domain::SiteId;

/// The admin adapter.
pub struct AdminApi {
    core: SharedCore,
}

impl AdminApi {
    /// An adapter over the core.
    pub fn new(core: SharedCore) -> Self {
        Self { core }
    }

    async fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let principal = self.core.principal(request.metadata()).await?;
        principal.check_admin().map_err(status)?;
        self.core.limits.request(&principal).map_err(status)
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<v1::ExportEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_site(
        &self,
        request: Request<v1::CreateSiteRequest>,
    ) -> Result<Response<v1::Site>, Status> {
        self.authorize(&request).await?;
        let site = request.into_inner().site.unwrap_or_default();
        Ok(Response::new(
            self.core.admin.create_site(site).await.map_err(status)?,
        ))
    }

    async fn get_site(&self, request: Request<v1::GetSiteRequest>) -> Result<Response<v1::Site>, Status> {
        self.authorize(&request).await?;
        let site = SiteId::parse(&request.get_ref().site_id).map_err(status)?;
        let record = self.core.admin.site(&site).await.map_err(status)?;
        Ok(Response::new(site_to_proto(&record)))
    }

    async fn list_sites(
        &self,
        request: Request<v1::ListSitesRequest>,
    ) -> Result<Response<v1::ListSitesResponse>, Status> {
        self.authorize(&request).await?;
        let sites = self.core.admin.list_sites().await.map_err(status)?;
        Ok(Response::new(v1::ListSitesResponse { sites }))
    }

    async fn update_site(
        &self,
        request: Request<v1::UpdateSiteRequest>,
    ) -> Result<Response<v1::Site>, Status> {
        self.authorize(&request).await?;
        let req = request.into_inner();
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let site = self
            .core
            .admin
            .update_site(req.site.unwrap_or_default(), &mask)
            .await
            .map_err(status)?;
        Ok(Response::new(site))
    }

    async fn create_api_key(
        &self,
        request: Request<v1::CreateApiKeyRequest>,
    ) -> Result<Response<v1::CreateApiKeyResponse>, Status> {
        self.authorize(&request).await?;
        Ok(Response::new(
            self.core
                .admin
                .create_key(request.into_inner())
                .await
                .map_err(status)?,
        ))
    }

    async fn list_api_keys(
        &self,
        request: Request<v1::ListApiKeysRequest>,
    ) -> Result<Response<v1::ListApiKeysResponse>, Status> {
        self.authorize(&request).await?;
        let keys = self
            .core
            .admin
            .list_keys(&request.get_ref().site_id, &self.core.auth)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ListApiKeysResponse { keys }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<v1::RevokeApiKeyRequest>,
    ) -> Result<Response<v1::ApiKey>, Status> {
        self.authorize(&request).await?;
        Ok(Response::new(
            self.core
                .admin
                .revoke_key(&request.get_ref().key_id)
                .await
                .map_err(status)?,
        ))
    }

    async fn delete_visitor_data(
        &self,
        request: Request<v1::DeleteVisitorDataRequest>,
    ) -> Result<Response<v1::DeleteVisitorDataResponse>, Status> {
        self.authorize(&request).await?;
        let events_deleted = self
            .core
            .admin
            .delete_visitor_data(request.get_ref())
            .await
            .map_err(status)?;
        // Cached answers may still count the erased events.
        self.core.query.cache().clear();
        Ok(Response::new(v1::DeleteVisitorDataResponse {
            events_deleted: events_deleted as i64,
        }))
    }

    type ExportEventsStream = ExportStream;

    async fn export_events(
        &self,
        request: Request<v1::ExportEventsRequest>,
    ) -> Result<Response<Self::ExportEventsStream>, Status> {
        self.authorize(&request).await?;
        let chunks = self
            .core
            .admin
            .export(request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(Box::pin(chunks.map(|chunk| chunk.map_err(status)))))
    }
}
