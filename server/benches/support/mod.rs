//! What the server benchmarks share: a `tally` server on a fresh embedded
//! store with one site, and client helpers.

// Every bench compiles this module and uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use tally_proto::v1;
use tally_server::config::Config;
use tally_server::storage::embedded::EmbeddedStore;
use tonic::Request;
use tonic::transport::Channel;

/// The operator key of the benchmark server.
pub const ADMIN_KEY: &str = "bench-operator-key-0123456789";

/// Starts `tally` over a store in `dir` with site "bench"; returns its
/// address, an ingest key of the site and the store.
pub async fn start_tally(dir: &std::path::Path) -> (SocketAddr, String, Arc<EmbeddedStore>) {
    start_tally_with(dir, Config::default()).await
}

/// [`start_tally`] with settings (rate limits are off whatever they say).
pub async fn start_tally_with(
    dir: &std::path::Path,
    base: Config,
) -> (SocketAddr, String, Arc<EmbeddedStore>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir).unwrap());
    let served = store.clone();
    // Unlimited: the benchmarks measure the server, not its rate limits.
    let config = Config {
        admin_key: Some(ADMIN_KEY.into()),
        rate_limits: tally_server::limits::RateLimitConfig {
            events_per_second: 0.0,
            requests_per_second: 0.0,
            ..Default::default()
        },
        ..base
    };
    tokio::spawn(async move {
        tally_server::server::run(listener, &config, served, std::future::pending())
            .await
            .unwrap();
    });
    let channel = connect(addr).await;
    let mut admin = v1::admin_service_client::AdminServiceClient::new(channel);
    let site = v1::Site {
        site_id: "bench".into(),
        domain: "bench.example".into(),
        ..Default::default()
    };
    admin
        .create_site(authed(ADMIN_KEY, v1::CreateSiteRequest { site: Some(site) }))
        .await
        .unwrap();
    let key = v1::CreateApiKeyRequest {
        kind: v1::KeyKind::Ingest as i32,
        site_ids: vec!["bench".into()],
        name: "bench".into(),
        ..Default::default()
    };
    let secret = admin
        .create_api_key(authed(ADMIN_KEY, key))
        .await
        .unwrap()
        .into_inner()
        .secret;
    (addr, secret, store)
}

/// A channel to `addr`.
pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `message` with `authorization: Bearer <key>`.
pub fn authed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// A numeric setting from the environment, or `default`.
pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmRSS` and `VmHWM` of process `pid`, MiB.
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
