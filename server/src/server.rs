//! Assembles the services and serves them on one port: gRPC, grpc-web
//! (HTTP/1.1 and CORS), reflection v1 and v1alpha, `grpc.health.v1`, and the
//! browser tracker at `/tally.js`.

use std::future::Future;
use std::sync::Arc;

use http::{HeaderName, Method};
use tally_proto::v1::{
    admin_service_server::AdminServiceServer, ingest_service_server::IngestServiceServer,
    query_service_server::QueryServiceServer, session_service_server::SessionServiceServer,
};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::admin::Admin;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::grpc::{AdminApi, Core, IngestApi, QueryApi, SessionApi};
use crate::ingest::Ingest;
use crate::pipeline::{GeoError, Pipeline};
use crate::query::Query;
use crate::realtime::memory::MemoryRealtime;
use crate::realtime::{Realtime, RealtimeBackend, SystemClock};
use crate::rollup::Rollups;
use crate::storage::Store;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not be built from the descriptor set.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The store failed at start-up.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The geo-IP database could not be used.
    #[error(transparent)]
    Geo(#[from] GeoError),
}

/// Builds the core services over `store`, with realtime counters in memory.
pub async fn build_core(config: &Config, store: Arc<dyn Store>) -> Result<Arc<Core>, ServeError> {
    build_core_with(config, store, Arc::new(MemoryRealtime::default())).await
}

/// Builds the core services over `store` and a realtime backend.
pub async fn build_core_with(
    config: &Config,
    store: Arc<dyn Store>,
    realtime: Arc<dyn RealtimeBackend>,
) -> Result<Arc<Core>, ServeError> {
    let secret = store.instance_secret().await?;
    let pipeline = Pipeline::build(&config.pipeline(), secret)?;
    let realtime = Arc::new(Realtime::new(realtime, Arc::new(SystemClock)));
    let started = std::time::Instant::now();
    let events = realtime.rebuild(store.as_ref()).await?;
    tracing::info!(events, elapsed = ?started.elapsed(), "realtime window rebuilt from the store");
    let limits = Arc::new(crate::limits::Limits::new(
        &config.rate_limits,
        config.limits.max_batch_events,
    ));
    // One instance's memory cannot keep the rollups of a store that several
    // instances write: a shared store keeps hour rollups of its own (see
    // `rollup::shared`), which a worker on every instance keeps up to date.
    let rollups = Arc::new(Rollups::new(!store.shared()));
    let started = std::time::Instant::now();
    rollups.rebuild(store.as_ref()).await?;
    tracing::info!(elapsed = ?started.elapsed(), "rollups rebuilt from the store");
    Ok(Arc::new(Core {
        auth: Authenticator::new(store.clone(), config.admin_key.as_deref()),
        ingest: Ingest::new(
            store.clone(),
            pipeline,
            config.limits.clone(),
            realtime.clone(),
            rollups.clone(),
        ),
        query: Query::new(store.clone(), rollups.clone(), limits.clone()),
        realtime,
        admin: Admin::new(store.clone(), rollups.clone()),
        limits,
        rollups,
        store,
    }))
}

fn cors() -> CorsLayer {
    let header = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header("content-type"),
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
            header("authorization"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
        ])
        .max_age(std::time::Duration::from_secs(86_400))
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
/// Realtime counters live in this process's memory.
pub async fn run(
    listener: TcpListener,
    config: &Config,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    run_with(
        listener,
        config,
        store,
        Arc::new(MemoryRealtime::default()),
        shutdown,
    )
    .await
}

/// [`run`] with another realtime backend (e.g. Redis, shared by instances).
pub async fn run_with(
    listener: TcpListener,
    config: &Config,
    store: Arc<dyn Store>,
    realtime: Arc<dyn RealtimeBackend>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let core = build_core_with(config, store, realtime).await?;
    let core_for_flush = core.clone();
    let max = config.max_message_bytes;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tally_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl can print BadRequest and RetryInfo.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<IngestServiceServer<IngestApi>>().await;
    health.set_serving::<QueryServiceServer<QueryApi>>().await;
    health.set_serving::<SessionServiceServer<SessionApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;

    let stopping = Arc::new(tokio::sync::Notify::new());
    let notify = stopping.clone();
    let realtime = core.realtime.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!(grace = ?config.shutdown_grace, "shutting down: draining in-flight requests");
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        // Realtime watches never end by themselves: end them now.
        realtime.close();
        notify.notify_one();
    };
    // Streams such as WatchRealtime may never end by themselves: bound the drain.
    let grace_over = async {
        stopping.notified().await;
        tokio::time::sleep(config.shutdown_grace).await;
    };

    let listen = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        %listen,
        script = %crate::script::versioned_path(),
        dashboard = %format_args!("http://{listen}/"),
        "tally serving"
    );
    // Without TCP_NODELAY, a response written in two segments waits for the
    // peer's delayed ACK (about 40 ms) before its second segment leaves.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)));
    let serve = tonic::transport::Server::builder()
        .trace_fn(crate::telemetry::request_span)
        .accept_http1(true)
        .layer(cors())
        // Before grpc-web too: `GET /metrics` is plain HTTP.
        .layer(crate::metrics::MetricsLayer)
        // Before grpc-web, which refuses HTTP/1.1 requests that are not grpc-web.
        .layer(crate::script::ScriptLayer)
        .layer(crate::dashboard::DashboardLayer)
        .layer(tonic_web::GrpcWebLayer::new())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            IngestServiceServer::new(IngestApi::new(core.clone(), config.client_ip_header.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(QueryServiceServer::new(QueryApi::new(core.clone())).max_decoding_message_size(max))
        .add_service(SessionServiceServer::new(SessionApi::new(core.clone())).max_decoding_message_size(max))
        .add_service(AdminServiceServer::new(AdminApi::new(core.clone())).max_decoding_message_size(max))
        .serve_with_incoming_shutdown(incoming, shutdown);
    // Key uses are written once a minute, and once more when the server stops;
    // retention runs at start-up and then hourly.
    let auth_core = core_for_flush.clone();
    let flusher = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        let mut minutes = 0u64;
        loop {
            every.tick().await;
            if minutes.is_multiple_of(60)
                && let Err(err) = auth_core.admin.sweep_retention(crate::domain::now_micros()).await
            {
                tracing::warn!(error = %err, "retention sweep failed; will retry");
            }
            minutes += 1;
            if let Err(err) = auth_core.auth.flush_last_used().await {
                tracing::warn!(error = %err, "writing key uses failed; will retry");
            }
        }
    });
    let roller = core_for_flush
        .store
        .shared_rollups()
        .is_some()
        .then(|| tokio::spawn(roll_up_dirty_hours(core_for_flush.clone())));
    tokio::select! {
        served = serve => served?,
        () = grace_over => tracing::warn!("grace period over: closing the remaining connections"),
    }
    flusher.abort();
    if let Some(roller) = roller {
        roller.abort();
    }
    if let Err(err) = core_for_flush.auth.flush_last_used().await {
        tracing::warn!(error = %err, "writing key uses failed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// How often an instance of a shared store rolls up the hours that appends
/// marked dirty.
pub const ROLL_UP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Rolls up dirty hours of a shared store every [`ROLL_UP_INTERVAL`], on
/// every instance (see [`crate::rollup::shared`]), until aborted.
async fn roll_up_dirty_hours(core: Arc<crate::grpc::Core>) {
    let mut every = tokio::time::interval(ROLL_UP_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match core.rollups.shared().settle(core.store.as_ref()).await {
            Ok(done) if done.hours > 0 => {
                tracing::debug!(hours = done.hours, events = done.events, "hours rolled up");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "rolling up dirty hours failed; will retry"),
        }
    }
}
