//! A typed async client for the four `tally.v1` services.

use std::time::Duration;

use futures_core::Stream;
use tally_proto::v1::{
    self, admin_service_client::AdminServiceClient, ingest_service_client::IngestServiceClient,
    query_service_client::QueryServiceClient, session_service_client::SessionServiceClient,
};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::{BuildError, CallError, TrackError};

/// Builds a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    endpoint: String,
    key: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    tls: Option<bool>,
}

impl ClientBuilder {
    /// The API key sent as `authorization: Bearer <key>`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Time allowed to open a connection. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for each call (unary calls, and the whole of a stream). Default 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Forces TLS on or off. Default: on for `https://` endpoints, with the
    /// Mozilla root certificates.
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = Some(enabled);
        self
    }

    /// Builds the client. Connects lazily: building works offline.
    pub fn build(self) -> Result<Client, BuildError> {
        let invalid = || BuildError::InvalidEndpoint(self.endpoint.clone());
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|_| invalid())?
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false);
        let tls = self.tls.unwrap_or_else(|| self.endpoint.starts_with("https://"));
        if tls {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_webpki_roots())
                .map_err(|err| BuildError::Tls(err.to_string()))?;
        }
        let auth = match self.key {
            None => None,
            Some(key) => {
                Some(MetadataValue::try_from(format!("Bearer {key}")).map_err(|_| BuildError::InvalidKey)?)
            }
        };
        Ok(Client {
            channel: endpoint.connect_lazy(),
            auth,
        })
    }
}

/// A client of a Tally server. Cheap to clone; clones share one connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    auth: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Client {
    /// Starts building a client for `endpoint`, e.g. `http://127.0.0.1:7750`.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            key: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            tls: None,
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(auth) = &self.auth {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        request
    }

    fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel.clone())
    }

    fn query(&self) -> QueryServiceClient<Channel> {
        QueryServiceClient::new(self.channel.clone())
    }

    fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel.clone())
    }

    fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    /// Sends a batch of events; the answer has one verdict per event.
    pub async fn track(&self, request: v1::TrackRequest) -> Result<v1::TrackResponse, TrackError> {
        Ok(self.ingest().track(self.request(request)).await?.into_inner())
    }

    /// Sends a stream of batches; answers when the stream ends.
    pub async fn track_stream(
        &self,
        batches: impl Stream<Item = v1::TrackRequest> + Send + 'static,
    ) -> Result<v1::TrackStreamResponse, TrackError> {
        Ok(self
            .ingest()
            .track_stream(self.request(batches))
            .await?
            .into_inner())
    }

    /// Runs a report.
    pub async fn run_report(
        &self,
        request: v1::RunReportRequest,
    ) -> Result<v1::RunReportResponse, CallError> {
        Ok(self.query().run_report(self.request(request)).await?.into_inner())
    }

    /// Runs a realtime report.
    pub async fn run_realtime_report(
        &self,
        request: v1::RunRealtimeReportRequest,
    ) -> Result<v1::RealtimeReport, CallError> {
        Ok(self
            .query()
            .run_realtime_report(self.request(request))
            .await?
            .into_inner())
    }

    /// Watches realtime updates.
    pub async fn watch_realtime(
        &self,
        request: v1::WatchRealtimeRequest,
    ) -> Result<tonic::Streaming<v1::RealtimeUpdate>, CallError> {
        Ok(self
            .query()
            .watch_realtime(self.request(request))
            .await?
            .into_inner())
    }

    /// Runs a funnel report.
    pub async fn run_funnel_report(
        &self,
        request: v1::RunFunnelReportRequest,
    ) -> Result<v1::RunFunnelReportResponse, CallError> {
        Ok(self
            .query()
            .run_funnel_report(self.request(request))
            .await?
            .into_inner())
    }

    /// Lists a site's metrics, dimensions and property keys.
    pub async fn get_metadata(&self, request: v1::GetMetadataRequest) -> Result<v1::Metadata, CallError> {
        Ok(self
            .query()
            .get_metadata(self.request(request))
            .await?
            .into_inner())
    }

    /// Returns one visit with its events.
    pub async fn get_session(&self, request: v1::GetSessionRequest) -> Result<v1::Session, CallError> {
        Ok(self
            .sessions()
            .get_session(self.request(request))
            .await?
            .into_inner())
    }

    /// Lists visits in a time range.
    pub async fn list_sessions(
        &self,
        request: v1::ListSessionsRequest,
    ) -> Result<v1::ListSessionsResponse, CallError> {
        Ok(self
            .sessions()
            .list_sessions(self.request(request))
            .await?
            .into_inner())
    }

    /// Lists a visitor's recent visits.
    pub async fn list_visitor_sessions(
        &self,
        request: v1::ListVisitorSessionsRequest,
    ) -> Result<v1::ListSessionsResponse, CallError> {
        Ok(self
            .sessions()
            .list_visitor_sessions(self.request(request))
            .await?
            .into_inner())
    }

    /// Creates a site.
    pub async fn create_site(&self, site: v1::Site) -> Result<v1::Site, CallError> {
        let request = v1::CreateSiteRequest { site: Some(site) };
        Ok(self
            .admin()
            .create_site(self.request(request))
            .await?
            .into_inner())
    }

    /// Returns one site.
    pub async fn get_site(&self, site_id: impl Into<String>) -> Result<v1::Site, CallError> {
        let request = v1::GetSiteRequest {
            site_id: site_id.into(),
        };
        Ok(self.admin().get_site(self.request(request)).await?.into_inner())
    }

    /// Lists all sites.
    pub async fn list_sites(&self) -> Result<Vec<v1::Site>, CallError> {
        Ok(self
            .admin()
            .list_sites(self.request(v1::ListSitesRequest {}))
            .await?
            .into_inner()
            .sites)
    }

    /// Changes a site's settings.
    pub async fn update_site(&self, request: v1::UpdateSiteRequest) -> Result<v1::Site, CallError> {
        Ok(self
            .admin()
            .update_site(self.request(request))
            .await?
            .into_inner())
    }

    /// Creates an API key; the answer holds its secret, shown only once.
    pub async fn create_api_key(
        &self,
        request: v1::CreateApiKeyRequest,
    ) -> Result<v1::CreateApiKeyResponse, CallError> {
        Ok(self
            .admin()
            .create_api_key(self.request(request))
            .await?
            .into_inner())
    }

    /// Lists keys, optionally of one site.
    pub async fn list_api_keys(&self, site_id: impl Into<String>) -> Result<Vec<v1::ApiKey>, CallError> {
        let request = v1::ListApiKeysRequest {
            site_id: site_id.into(),
        };
        Ok(self
            .admin()
            .list_api_keys(self.request(request))
            .await?
            .into_inner()
            .keys)
    }

    /// Revokes a key.
    pub async fn revoke_api_key(&self, key_id: impl Into<String>) -> Result<v1::ApiKey, CallError> {
        let request = v1::RevokeApiKeyRequest {
            key_id: key_id.into(),
        };
        Ok(self
            .admin()
            .revoke_api_key(self.request(request))
            .await?
            .into_inner())
    }

    /// Erases a visitor's events.
    pub async fn delete_visitor_data(
        &self,
        request: v1::DeleteVisitorDataRequest,
    ) -> Result<v1::DeleteVisitorDataResponse, CallError> {
        Ok(self
            .admin()
            .delete_visitor_data(self.request(request))
            .await?
            .into_inner())
    }

    /// Streams a site's raw events.
    pub async fn export_events(
        &self,
        request: v1::ExportEventsRequest,
    ) -> Result<tonic::Streaming<v1::ExportEventsResponse>, CallError> {
        Ok(self
            .admin()
            .export_events(self.request(request))
            .await?
            .into_inner())
    }
}
