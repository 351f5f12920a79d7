//! `tally.v1.IngestService`.

use std::net::IpAddr;

use futures::StreamExt;
use tally_proto::v1::{self, ingest_service_server::IngestService};
use tonic::{Request, Response, Status, Streaming, metadata::MetadataMap};

use super::{SharedCore, peer_ip, status};
use crate::auth::Principal;
use crate::domain::{SiteId, now_micros};
use crate::pipeline::RequestFacts;

/// Messages of one `TrackStream` processed at the same time.
const STREAM_IN_FLIGHT: usize = 8;

/// Most non-accepted verdicts listed in a `TrackStream` response.
const MAX_STREAM_VERDICTS: usize = 10_000;

/// The ingest adapter.
pub struct IngestApi {
    core: SharedCore,
    client_ip_header: Option<String>,
}

impl IngestApi {
    /// An adapter over the core. With `client_ip_header` (e.g.
    /// `x-forwarded-for`, behind a trusted proxy), the client address is the
    /// first address in that header instead of the connection's peer.
    pub fn new(core: SharedCore, client_ip_header: Option<String>) -> Self {
        Self {
            core,
            client_ip_header: client_ip_header.map(|h| h.to_ascii_lowercase()),
        }
    }

    /// The client's address: from the configured proxy header, else the peer.
    fn client_ip(&self, metadata: &MetadataMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        let forwarded = self
            .client_ip_header
            .as_deref()
            .and_then(|name| metadata.get(name))
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .and_then(|first| first.trim().parse().ok());
        forwarded.or(peer)
    }

    /// Resolves the site of a batch, checks the key and origin, and gathers request facts.
    async fn facts(
        &self,
        principal: &Principal,
        metadata: &MetadataMap,
        site_id: &str,
        peer_ip: Option<IpAddr>,
    ) -> Result<RequestFacts, Status> {
        let site_id = match (site_id, principal.default_site()) {
            ("", Some(default)) => default,
            ("", None) => {
                return Err(status(crate::error::Error::invalid(
                    "site_id",
                    "site_id is required with this key",
                )));
            }
            (given, _) => given,
        };
        let site = SiteId::parse(site_id).map_err(status)?;
        principal.check_ingest(&site).map_err(status)?;
        let site = self.core.admin.site(&site).await.map_err(status)?;
        if let Some(origin) = metadata.get("origin").and_then(|o| o.to_str().ok()) {
            let origin = origin.trim_end_matches('/');
            if !site.allowed_origins.is_empty() && !site.allowed_origins.iter().any(|o| o == origin) {
                return Err(Status::permission_denied(format!(
                    "origin {origin} is not in the allowed origins of site {}",
                    site.site_id
                )));
            }
        }
        let header = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        let user_agent = header("user-agent").unwrap_or_default().to_owned();
        // grpc-web clients mark their requests; browsers send an Origin with
        // every cross-origin (and same-origin POST) request.
        let from_browser = header("x-grpc-web").is_some() || header("origin").is_some();
        let do_not_track = header("dnt").is_some_and(|v| v.trim() == "1")
            || header("sec-gpc").is_some_and(|v| v.trim() == "1");
        // Parsed per request: ranges were validated when the site was saved.
        let excluded_ips = site
            .excluded_ip_ranges
            .iter()
            .filter_map(|range| crate::admin::parse_ip_range(range).ok())
            .collect();
        let now_micros = now_micros();
        let salt = self.core.ingest.salt(&site, now_micros).await.map_err(status)?;
        Ok(RequestFacts {
            site,
            now_micros,
            user_agent,
            peer_ip: self.client_ip(metadata, peer_ip),
            from_browser,
            do_not_track,
            excluded_ips,
            salt,
        })
    }
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn track(&self, request: Request<v1::TrackRequest>) -> Result<Response<v1::TrackResponse>, Status> {
        let principal = self.core.principal(request.metadata()).await?;
        let peer = peer_ip(&request);
        let facts = self
            .facts(&principal, request.metadata(), &request.get_ref().site_id, peer)
            .await?;
        let events = request.get_ref().events.len();
        self.core.ingest.check_batch_size(events).map_err(status)?;
        self.core.limits.ingest(&principal, events).map_err(status)?;
        let response = self
            .core
            .ingest
            .track(&facts, &request.get_ref().events)
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }

    async fn track_stream(
        &self,
        request: Request<Streaming<v1::TrackRequest>>,
    ) -> Result<Response<v1::TrackStreamResponse>, Status> {
        let principal = self.core.principal(request.metadata()).await?;
        let peer = peer_ip(&request);
        let metadata = request.metadata().clone();
        // Several messages of one stream are validated and committed at once, so
        // a stream shares group commits with itself instead of waiting for each.
        let mut responses = request
            .into_inner()
            .enumerate()
            .map(|(request_index, batch)| {
                let (principal, metadata) = (&principal, &metadata);
                async move {
                    let batch = batch?;
                    let facts = self.facts(principal, metadata, &batch.site_id, peer).await?;
                    let events = batch.events.len();
                    self.core.ingest.check_batch_size(events).map_err(status)?;
                    self.core.limits.ingest(principal, events).map_err(status)?;
                    let response = self
                        .core
                        .ingest
                        .track(&facts, &batch.events)
                        .await
                        .map_err(status)?;
                    Ok::<_, Status>((request_index as i64, response))
                }
            })
            .buffered(STREAM_IN_FLIGHT);
        let mut summary = v1::TrackStreamResponse::default();
        while let Some(next) = responses.next().await {
            let (request_index, response) = next?;
            summary.requests += 1;
            summary.accepted += i64::from(response.accepted);
            summary.duplicates += i64::from(response.duplicates);
            summary.rejected += i64::from(response.rejected);
            summary.excluded += i64::from(response.excluded);
            for result in response.results {
                if result.verdict() == v1::Verdict::Accepted {
                    continue;
                }
                if summary.not_accepted.len() == MAX_STREAM_VERDICTS {
                    summary.not_accepted_truncated = true;
                    break;
                }
                summary.not_accepted.push(v1::StreamEventResult {
                    request_index,
                    result: Some(result),
                });
            }
        }
        Ok(Response::new(summary))
    }
}
