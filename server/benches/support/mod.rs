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

/// One of a few hundred distinct browser user agents, as real traffic has.
pub fn user_agent(n: usize) -> String {
    match n % 4 {
        0 => format!(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.{}.0 Safari/537.36",
            100 + n % 30,
            6000 + n
        ),
        1 => format!(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{} Mobile/15E148 Safari/604.1",
            n % 7,
            n % 5
        ),
        2 => format!(
            "Mozilla/5.0 (Linux; Android {}; Pixel {}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{}.0.0.0 Mobile Safari/537.36",
            10 + n % 5,
            n % 9,
            110 + n % 15
        ),
        _ => format!(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:{}.0) Gecko/20100101 Firefox/{}.0",
            100 + n % 40,
            100 + n % 40
        ),
    }
}

/// `count` distinct, valid page views in batches of `batch`, as pre-built requests.
pub fn batches(count: usize, batch: usize) -> Vec<v1::TrackRequest> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let paths = ["/", "/pricing", "/docs", "/blog/launch", "/about"];
    let events: Vec<v1::Event> = (0..count)
        .map(|i| v1::Event {
            event_id: uuid::Uuid::now_v7().to_string(),
            timestamp: Some(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: (i % 1_000_000) as i32 * 1000,
            }),
            r#type: v1::EventType::Pageview as i32,
            url: format!("https://bench.example{}", paths[i % paths.len()]),
            referrer: if i % 3 == 0 {
                "https://www.google.com/".into()
            } else {
                String::new()
            },
            // Browser traffic forwarded by a backend: every enrichment stage
            // runs (user agent, bot, source, visitor hash over address and agent).
            context: Some(v1::Context {
                user_agent: user_agent(i % 200),
                ip: format!("10.{}.{}.{}", i % 7, (i / 7) % 250, i % 250),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    events
        .chunks(batch)
        .map(|c| v1::TrackRequest {
            site_id: "bench".into(),
            events: c.to_vec(),
        })
        .collect()
}

/// `items` in at most `parts` consecutive shares of equal size (the last may
/// be smaller), one per client task.
pub fn shares<T>(mut items: Vec<T>, parts: usize) -> Vec<Vec<T>> {
    let per_share = items.len().div_ceil(parts.max(1)).max(1);
    let mut shares = Vec::new();
    while !items.is_empty() {
        let tail = items.split_off(per_share.min(items.len()));
        shares.push(items);
        items = tail;
    }
    shares
}

/// The process's (user, system) CPU seconds so far, all threads.
pub fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses: utime and
    // stime are the 12th and 13th, in clock ticks of 10 ms.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks = |i: usize| fields[i].parse::<f64>().unwrap() / 100.0;
    (ticks(11), ticks(12))
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
