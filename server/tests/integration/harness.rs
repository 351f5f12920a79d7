//! Starts a server on port 0 with a fresh data directory (or on the scale-out
//! backend) and gives typed clients.

use std::net::SocketAddr;
use std::sync::Arc;

use tally_proto::v1::{
    self, admin_service_client::AdminServiceClient, ingest_service_client::IngestServiceClient,
    query_service_client::QueryServiceClient, session_service_client::SessionServiceClient,
};
use tally_server::config::Config;
use tally_server::realtime::redis::RedisRealtime;
use tally_server::realtime::{RealtimeBackend, SystemClock, memory::MemoryRealtime};
use tally_server::storage::Store;
use tally_server::storage::embedded::EmbeddedStore;
use tally_server::storage::scylla::{ScyllaOptions, ScyllaStore};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub const ADMIN_KEY: &str = "test-operator-key-0123456789";

pub struct TestServer {
    pub addr: SocketAddr,
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        Self::serve(config, store, Arc::new(MemoryRealtime::default()), dir).await
    }

    /// An instance of the scale-out backend: one of several sharing a
    /// keyspace and a Redis key prefix.
    pub async fn start_scale_out(options: &ScyllaOptions) -> Self {
        let store = Arc::new(ScyllaStore::connect(options).await.unwrap());
        let realtime =
            RedisRealtime::connect(&options.redis_url, &options.redis_prefix, Arc::new(SystemClock))
                .await
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        Self::serve(Config::default(), store, Arc::new(realtime), dir).await
    }

    async fn serve(
        config: Config,
        store: Arc<dyn Store>,
        realtime: Arc<dyn RealtimeBackend>,
        dir: tempfile::TempDir,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Config {
            admin_key: Some(ADMIN_KEY.into()),
            ..config
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tally_server::server::run_with(listener, &config, store, realtime, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            addr,
            channel,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    pub fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel.clone())
    }

    pub fn query(&self) -> QueryServiceClient<Channel> {
        QueryServiceClient::new(self.channel.clone())
    }

    pub fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel.clone())
    }

    /// Creates a site as the operator.
    pub async fn site(&self, id: &str, time_zone: &str) {
        let site = v1::Site {
            site_id: id.into(),
            domain: format!("{id}.example"),
            time_zone: time_zone.into(),
            ..Default::default()
        };
        self.admin()
            .create_site(authed(ADMIN_KEY, v1::CreateSiteRequest { site: Some(site) }))
            .await
            .unwrap();
    }

    /// Creates a key as the operator and returns its secret.
    pub async fn key(&self, kind: v1::KeyKind, sites: &[&str]) -> String {
        let request = v1::CreateApiKeyRequest {
            kind: kind as i32,
            site_ids: sites.iter().map(|s| s.to_string()).collect(),
            name: "test".into(),
            ..Default::default()
        };
        self.admin()
            .create_api_key(authed(ADMIN_KEY, request))
            .await
            .unwrap()
            .into_inner()
            .secret
    }
}

/// A request with `authorization: Bearer <key>`.
pub fn authed<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

pub fn now_micros() -> i64 {
    tally_server::domain::now_micros()
}

pub fn ts(micros: i64) -> prost_types::Timestamp {
    tally_server::convert::micros_to_timestamp(micros)
}

pub fn pageview(id: u128, at_micros: i64, url: &str, anon: &str) -> v1::Event {
    v1::Event {
        event_id: uuid::Uuid::from_u128(id).to_string(),
        timestamp: Some(ts(at_micros)),
        r#type: v1::EventType::Pageview as i32,
        url: url.into(),
        anonymous_id: anon.into(),
        ..Default::default()
    }
}

/// Runs a report as the operator.
pub async fn report(server: &TestServer, request: v1::RunReportRequest) -> v1::RunReportResponse {
    server
        .query()
        .run_report(authed(ADMIN_KEY, request))
        .await
        .unwrap()
        .into_inner()
}

pub fn int(value: &v1::MetricValue) -> i64 {
    match value.value {
        Some(v1::metric_value::Value::IntValue(n)) => n,
        ref other => panic!("expected an integer metric, got {other:?}"),
    }
}

/// Rows of one dimension and two integer metrics, as (value, first, second).
pub fn two_int_rows(rows: &[v1::Row]) -> Vec<(String, i64, i64)> {
    rows.iter()
        .map(|r| {
            (
                r.dimension_values[0].clone(),
                int(&r.metric_values[0]),
                int(&r.metric_values[1]),
            )
        })
        .collect()
}

/// The realtime report of site "s", with up to 100 entries per top list.
pub async fn realtime(server: &TestServer, key: &str, include_bots: bool) -> v1::RealtimeReport {
    let request = v1::RunRealtimeReportRequest {
        site_id: "s".into(),
        top_limit: 100,
        include_bots,
    };
    server
        .query()
        .run_realtime_report(authed(key, request))
        .await
        .unwrap()
        .into_inner()
}

pub fn standard(d: v1::Dimension) -> v1::DimensionSpec {
    v1::DimensionSpec {
        kind: Some(v1::dimension_spec::Kind::Standard(d as i32)),
    }
}
