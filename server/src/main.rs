//! The `tally` command: `tally serve` runs the server; `tally generate` sends
//! it a synthetic data set; `tally rebuild` recomputes counters and rollups
//! from the raw events.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tally_server::config::{Config, LogFormat, Overrides};
use tally_server::realtime::SystemClock;
use tally_server::realtime::redis::RedisRealtime;
use tally_server::rollup::Rollups;
use tally_server::storage::embedded::EmbeddedStore;
use tally_server::storage::scylla::{ScyllaOptions, ScyllaStore};

// glibc malloc contends between threads under ingest load; mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tally: self-hosted, gRPC-first analytics.
#[derive(Parser)]
#[command(name = "tally", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server (gRPC, grpc-web, reflection and health on one port).
    Serve(ServeArgs),
    /// Sends a realistic synthetic data set, the same for the same seed, to a
    /// running server (or writes it as JSON lines).
    Generate(tally_server::generate::GenerateArgs),
    /// Recomputes from the raw events what the backend derives from them:
    /// on ScyllaDB + Redis the hour rollups, the remembered event ids, the
    /// realtime counters and the report cache (after Redis lost its data);
    /// on the embedded store it reads every event as a start does. Safe to
    /// re-run; progress goes to stderr.
    Rebuild(RebuildArgs),
}

/// Where the data lives (shared by `serve` and `rebuild`).
#[derive(clap::Args)]
struct BackendArgs {
    /// Directory of the embedded store [default: ./tally-data].
    #[arg(long, env = "TALLY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Optional TOML configuration file; flags and environment win over it.
    #[arg(long, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Scale-out backend: ScyllaDB (or Cassandra) contact points, HOST:PORT
    /// separated by ',' (needs --redis too) [default: the embedded store].
    #[arg(long, env = "TALLY_SCYLLA", value_delimiter = ',')]
    scylla: Vec<String>,
    /// Keyspace of the scale-out backend, created if missing [default: tally].
    #[arg(long, env = "TALLY_SCYLLA_KEYSPACE")]
    scylla_keyspace: Option<String>,
    /// Redis of the scale-out backend, e.g. redis://127.0.0.1:6379/ (needs --scylla too).
    #[arg(long, env = "TALLY_REDIS")]
    redis: Option<String>,
    /// Prefix of the Redis keys and channels of this deployment [default: tally:].
    #[arg(long, env = "TALLY_REDIS_PREFIX")]
    redis_prefix: Option<String>,
}

#[derive(clap::Args)]
struct RebuildArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Only this site (repeat the flag for several) [default: every site].
    #[arg(long)]
    site: Vec<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Address to listen on [default: 127.0.0.1:7750].
    #[arg(long, env = "TALLY_LISTEN")]
    listen: Option<String>,
    /// Operator key (at least 16 characters) for AdminService and every site.
    #[arg(long, env = "TALLY_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// MaxMind-format geo-IP databases (.mmdb: GeoLite2, DB-IP lite) for
    /// country, region and city; repeat the flag or separate paths with ','
    /// (e.g. an IPv4 and an IPv6 file), tried in order [default: none, geo
    /// stays empty].
    #[arg(long, env = "TALLY_GEOIP_DB", value_delimiter = ',')]
    geoip_db: Vec<PathBuf>,
    /// Behind a trusted reverse proxy: the header carrying the client address,
    /// e.g. x-forwarded-for (its first entry is used) [default: the peer address].
    #[arg(long, env = "TALLY_CLIENT_IP_HEADER")]
    client_ip_header: Option<String>,
    /// OpenTelemetry collector (OTLP over gRPC) that receives a span per RPC
    /// and store call, e.g. http://127.0.0.1:4317 [default: no export].
    #[arg(long, env = "TALLY_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

impl BackendArgs {
    fn overrides(self) -> Overrides {
        Overrides {
            data_dir: self.data_dir,
            log_format: self.log_format,
            scylla: self.scylla,
            scylla_keyspace: self.scylla_keyspace,
            redis: self.redis,
            redis_prefix: self.redis_prefix,
            ..Overrides::default()
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> anyhow::Result<()> {
    // The allocator commits its arenas eagerly, and with transparent huge
    // pages every touched 2 MiB of them would be resident: about 30 MiB more
    // on an idle server, and growing with every arena under load. Set before
    // the runtime's threads start, so that it holds for the whole process.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    tally_alloc::return_freed_memory_every(std::time::Duration::from_secs(5))
        .context("starting the memory purge thread")?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Generate(args) => tally_server::generate::run(args).await,
        Command::Rebuild(args) => rebuild(args).await,
    }
}

async fn open_scale_out(options: &ScyllaOptions) -> anyhow::Result<ScyllaStore> {
    ScyllaStore::connect(options).await.with_context(|| {
        format!(
            "open the scale-out store (keyspace {} on {}, redis {})",
            options.keyspace,
            options.nodes.join(","),
            options.redis_url
        )
    })
}

async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    let file = args.backend.config.clone();
    let config = Config::load(file.as_deref(), args.backend.overrides())?;
    let mut progress = |line: &str| eprintln!("rebuild: {line}");
    let started = std::time::Instant::now();
    let rebuilt = if let Some(options) = config.scylla_options() {
        let store = open_scale_out(&options).await?;
        let realtime =
            RedisRealtime::connect(&options.redis_url, &options.redis_prefix, Arc::new(SystemClock))
                .await
                .context("connect to redis")?;
        let sites = tally_server::rebuild::sites(&store, &args.site)
            .await
            .context("list the sites")?;
        let rollups = Rollups::new(false);
        tally_server::rebuild::rebuild_shared(&store, &realtime, &rollups, &sites, &mut progress)
            .await
            .context("rebuild the scale-out store's counters and rollups")?
    } else {
        let store =
            EmbeddedStore::open_with(&config.data_dir, &config.embedded_options()).with_context(|| {
                format!(
                    "open data directory {} (is a server using it? stop it first)",
                    config.data_dir.display()
                )
            })?;
        let sites = tally_server::rebuild::sites(&store, &args.site)
            .await
            .context("list the sites")?;
        tally_server::rebuild::rebuild_embedded(&store, &sites, &mut progress)
            .await
            .context("read the embedded store's events")?
    };
    let events: u64 = rebuilt.iter().map(|r| r.events).sum();
    eprintln!(
        "rebuild: done: {} sites, {events} events, {:.1} s",
        rebuilt.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = args.backend.config.clone();
    let overrides = Overrides {
        listen: args.listen,
        admin_key: args.admin_key,
        geoip_db: args.geoip_db,
        client_ip_header: args.client_ip_header,
        otlp_endpoint: args.otlp_endpoint,
        ..args.backend.overrides()
    };
    let config = Config::load(file.as_deref(), overrides)?;
    let _telemetry = tally_server::telemetry::init(config.log_format, config.otlp_endpoint.as_deref())?;
    if config.admin_key.is_none() {
        tracing::warn!("no operator key: set --admin-key or TALLY_ADMIN_KEY to create sites and keys");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    if let Some(options) = config.scylla_options() {
        let store = open_scale_out(&options).await?;
        tracing::info!(nodes = %options.nodes.join(","), keyspace = %options.keyspace, "scale-out store open");
        let realtime =
            RedisRealtime::connect(&options.redis_url, &options.redis_prefix, Arc::new(SystemClock))
                .await
                .context("subscribe to realtime updates in redis")?;
        tally_server::server::run_with(
            listener,
            &config,
            Arc::new(store),
            Arc::new(realtime),
            shutdown_signal(),
        )
        .await?;
        return Ok(());
    }
    let store = EmbeddedStore::open_with(&config.data_dir, &config.embedded_options())
        .with_context(|| format!("open data directory {}", config.data_dir.display()))?;
    tracing::info!(data_dir = %config.data_dir.display(), "embedded store open");
    tally_server::server::run(listener, &config, Arc::new(store), shutdown_signal()).await?;
    Ok(())
}
