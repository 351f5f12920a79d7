//! The query engine over a small data set whose answers the test works out
//! by hand: rollups against raw scans, comparisons, revenue, conversion rate,
//! the cache, funnels and metadata.

use std::collections::{HashMap, HashSet};

use tally_proto::v1::{self, Dimension as D, Metric as M};
use tonic::Code;

use crate::harness::*;

const DAY: i64 = 86_400_000_000;
const MINUTE: i64 = 60_000_000;

fn double(value: &v1::MetricValue) -> f64 {
    match value.value {
        Some(v1::metric_value::Value::DoubleValue(x)) => x,
        ref other => panic!("expected a double metric, got {other:?}"),
    }
}

fn custom(
    id: u128,
    at: i64,
    name: &str,
    anon: &str,
    props: &[(&str, v1::property_value::Value)],
) -> v1::Event {
    v1::Event {
        event_id: uuid::Uuid::from_u128(id).to_string(),
        timestamp: Some(ts(at)),
        r#type: v1::EventType::Custom as i32,
        name: name.into(),
        url: "https://e.example/checkout".into(),
        anonymous_id: anon.into(),
        properties: props
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    v1::PropertyValue {
                        value: Some(v.clone()),
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
}

fn range(start: &str, end: &str) -> v1::DateRange {
    v1::DateRange {
        start_date: start.into(),
        end_date: end.into(),
        name: String::new(),
    }
}

fn source(r: &v1::RunReportResponse) -> v1::DataSource {
    r.metadata.as_ref().unwrap().data_source()
}

/// One visitor's page views and events; what the test expects is computed
/// from the same list.
struct Data {
    events: Vec<v1::Event>,
    /// (day offset, visitor, path) of every page view.
    views: Vec<(i64, String, String)>,
}

/// 40 visitors over the last 20 days; visitor i views i % 5 + 1 pages on
/// day i % 20 (today excluded), and every fourth visitor buys for 12.50 EUR
/// (and every eighth also for 3 USD).
fn data(now: i64) -> Data {
    let today_start = now - now.rem_euclid(DAY);
    let mut events = Vec::new();
    let mut views = Vec::new();
    let mut id = 1u128;
    let pages = ["/", "/pricing", "/docs", "/blog/a", "/blog/b"];
    for i in 0..40i64 {
        let visitor = format!("v{i}");
        let day = 1 + i % 20;
        let start = today_start - day * DAY + 10 * 3_600_000_000 + i * MINUTE;
        for p in 0..=(i % 5) {
            let path = pages[((i + p) % 5) as usize];
            events.push(pageview(
                id,
                start + p * MINUTE,
                &format!("https://e.example{path}"),
                &visitor,
            ));
            views.push((day, visitor.clone(), path.to_owned()));
            id += 1;
        }
        if i % 4 == 0 {
            let mut buy = custom(
                id,
                start + 10 * MINUTE,
                "purchase",
                &visitor,
                &[("plan", v1::property_value::Value::StringValue("pro".into()))],
            );
            buy.revenue = Some(v1::Money {
                currency_code: "EUR".into(),
                units: 12,
                nanos: 500_000_000,
            });
            events.push(buy);
            id += 1;
        }
        if i % 8 == 0 {
            let mut buy = custom(
                id,
                start + 11 * MINUTE,
                "purchase",
                &visitor,
                &[("seats", v1::property_value::Value::NumberValue(3.0))],
            );
            buy.revenue = Some(v1::Money {
                currency_code: "USD".into(),
                units: 3,
                nanos: 0,
            });
            events.push(buy);
            id += 1;
        }
    }
    Data { events, views }
}

async fn load(server: &TestServer, events: Vec<v1::Event>) {
    let key = server.key(v1::KeyKind::Ingest, &["e"]).await;
    for batch in events.chunks(100) {
        let sent = server
            .ingest()
            .track(authed(
                &key,
                v1::TrackRequest {
                    site_id: "e".into(),
                    events: batch.to_vec(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(sent.accepted as usize, batch.len(), "{:?}", sent.results);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_comparisons_revenue_conversion_and_cache() {
    let server = TestServer::start().await;
    rollups_agree_with_raw_events(&server).await;
    server.stop().await;
}

/// Loads the data set into site "e" of `server` and checks the answers from
/// rollups against the test's own counts and against raw scans; the cache,
/// comparisons, revenue, conversion rate, sampling and metadata too. Run on
/// every backend (see `scylla.rs` for ScyllaDB + Redis).
pub async fn rollups_agree_with_raw_events(server: &TestServer) {
    server.site("e", "UTC").await;
    let now = now_micros();
    let Data { events, views } = data(now);
    load(server, events).await;

    // Top pages over the last 30 days, from rollups.
    let request = v1::RunReportRequest {
        site_id: "e".into(),
        metrics: vec![M::Pageviews as i32, M::Visitors as i32, M::Visits as i32],
        dimensions: vec![standard(D::Page)],
        date_ranges: vec![range("29daysAgo", "today")],
        limit: 3,
        ..Default::default()
    };
    let top = report(server, request.clone()).await;
    assert_eq!(source(&top), v1::DataSource::Rollups);
    assert!(top.metadata.as_ref().unwrap().exact);
    let mut expected: HashMap<&str, (i64, HashSet<&str>)> = HashMap::new();
    for (_, visitor, path) in &views {
        let e = expected.entry(path).or_default();
        e.0 += 1;
        e.1.insert(visitor);
    }
    let mut expected: Vec<(String, i64, i64)> = expected
        .into_iter()
        .map(|(p, (n, v))| (p.to_owned(), n, v.len() as i64))
        .collect();
    expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let got = two_int_rows(&top.rows);
    assert_eq!(got, expected[..3]);
    // Five pages viewed, and /checkout where the purchases happened.
    assert_eq!(top.row_count, 6);
    // One visit per visitor: visits equal visitors.
    assert!(
        top.rows
            .iter()
            .all(|r| int(&r.metric_values[1]) == int(&r.metric_values[2]))
    );
    assert_eq!(int(&top.totals[0].metric_values[0]), views.len() as i64);
    assert_eq!(int(&top.totals[0].metric_values[1]), 40);

    // The same question with a filter the rollups cannot answer is scanned
    // from raw events, and agrees.
    let raw = report(
        server,
        v1::RunReportRequest {
            include_bots: true,
            ..request.clone()
        },
    )
    .await;
    assert_eq!(source(&raw), v1::DataSource::RawEvents);
    assert_eq!(raw.rows, top.rows);
    assert_eq!(raw.totals, top.totals);

    // Asked again: served from the cache.
    let again = report(server, request.clone()).await;
    let metadata = again.metadata.as_ref().unwrap();
    assert!(metadata.cache_hit);
    assert_eq!(again.rows, top.rows);
    let fresh = report(
        server,
        v1::RunReportRequest {
            skip_cache: true,
            ..request.clone()
        },
    )
    .await;
    assert!(!fresh.metadata.as_ref().unwrap().cache_hit);
    // A new event makes the cached answer stale.
    load(
        server,
        vec![pageview(10_000, now - DAY, "https://e.example/docs", "late")],
    )
    .await;
    let after = report(server, request.clone()).await;
    assert!(!after.metadata.as_ref().unwrap().cache_hit);
    assert_eq!(int(&after.totals[0].metric_values[0]), views.len() as i64 + 1);

    // Previous period: the last 10 days against the 10 before.
    let in_days =
        |from: i64, to: i64| views.iter().filter(|(d, _, _)| (from..=to).contains(d)).count() as i64;
    let compared = report(
        server,
        v1::RunReportRequest {
            site_id: "e".into(),
            metrics: vec![M::Pageviews as i32],
            date_ranges: vec![range("10daysAgo", "1daysAgo")],
            comparison: v1::ComparisonMode::PreviousPeriod as i32,
            skip_cache: true,
            ..Default::default()
        },
    )
    .await;
    let current = in_days(1, 10) + 1; // the late page view, a day ago
    let previous = in_days(11, 20);
    let total = &compared.totals[0].metric_values[0];
    assert_eq!(int(total), current);
    let comparison = total.comparison.as_ref().unwrap();
    assert_eq!(
        comparison.previous,
        Some(v1::metric_comparison::Previous::PreviousInt(previous))
    );
    let change = comparison.change.unwrap();
    assert!((change - (current - previous) as f64 / previous as f64).abs() < 1e-9);

    // Revenue per currency, conversion rate of the purchase goal.
    let money = report(
        server,
        v1::RunReportRequest {
            site_id: "e".into(),
            metrics: vec![M::Revenue as i32, M::ConversionRate as i32],
            date_ranges: vec![range("29daysAgo", "today")],
            revenue_currency: "EUR".into(),
            conversion_goal: Some(v1::Goal {
                kind: Some(v1::goal::Kind::EventName("purchase".into())),
            }),
            ..Default::default()
        },
    )
    .await;
    let buyers = (0..40).filter(|i| i % 4 == 0).count();
    assert!((double(&money.totals[0].metric_values[0]) - 12.5 * buyers as f64).abs() < 1e-9);
    // 41 visitors with the late one.
    let rate = double(&money.totals[0].metric_values[1]);
    assert!(
        (rate - 100.0 * buyers as f64 / 41.0).abs() < 1e-9,
        "conversion {rate}"
    );
    let usd = report(
        server,
        v1::RunReportRequest {
            site_id: "e".into(),
            metrics: vec![M::Revenue as i32],
            dimensions: vec![standard(D::EventName)],
            date_ranges: vec![range("29daysAgo", "today")],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(source(&usd), v1::DataSource::Rollups);
    let purchase = usd
        .rows
        .iter()
        .find(|r| r.dimension_values[0] == "purchase")
        .unwrap();
    assert!((double(&purchase.metric_values[0]) - 3.0 * 5.0).abs() < 1e-9);

    // Sampling is flagged and scales counts.
    let sampled = report(
        server,
        v1::RunReportRequest {
            site_id: "e".into(),
            metrics: vec![M::Visitors as i32, M::BounceRate as i32],
            date_ranges: vec![range("29daysAgo", "today")],
            sample_rate: 0.5,
            ..Default::default()
        },
    )
    .await;
    let metadata = sampled.metadata.as_ref().unwrap();
    assert!(metadata.sampled && !metadata.exact);
    assert_eq!(metadata.sample_rate, 0.5);
    assert_eq!(int(&sampled.totals[0].metric_values[0]) % 2, 0);

    // Property keys seen, with their kinds.
    let meta = server
        .query()
        .get_metadata(authed(ADMIN_KEY, v1::GetMetadataRequest { site_id: "e".into() }))
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<(String, Vec<String>)> = meta
        .property_keys
        .iter()
        .map(|k| (k.key.clone(), k.value_types.clone()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("plan".to_owned(), vec!["string".to_owned()]),
            ("seats".to_owned(), vec!["number".to_owned()])
        ]
    );
    assert_eq!(meta.metrics.len(), 10);
    assert!(meta.dimensions.iter().any(|d| d.dimension == D::Page as i32));

    // Bad input is named.
    let err = server
        .query()
        .run_report(authed(
            ADMIN_KEY,
            v1::RunReportRequest {
                site_id: "e".into(),
                metrics: vec![M::ConversionRate as i32],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("conversion_goal"), "{}", err.message());
}

fn page_step(name: &str, path: &str) -> v1::FunnelStep {
    v1::FunnelStep {
        name: name.into(),
        r#match: Some(v1::funnel_step::Match::Page(v1::StringMatch {
            match_type: v1::MatchType::Exact as i32,
            value: path.into(),
            case_sensitive: false,
        })),
        filter: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnels_count_ordered_steps_within_the_window() {
    let server = TestServer::start().await;
    server.site("e", "UTC").await;
    let now = now_micros();
    let t0 = now - 5 * DAY;
    let mut id = 0u128;
    let mut view = |at: i64, path: &str, who: &str| {
        id += 1;
        pageview(id, at, &format!("https://e.example{path}"), who)
    };
    let events = vec![
        // a: home -> pricing -> signup, 2 and 3 minutes apart.
        view(t0, "/", "a"),
        view(t0 + 2 * MINUTE, "/pricing", "a"),
        view(t0 + 5 * MINUTE, "/signup", "a"),
        // b: home -> pricing.
        view(t0, "/", "b"),
        view(t0 + 4 * MINUTE, "/pricing", "b"),
        // c: pricing before home: only step 1 in a closed funnel.
        view(t0, "/pricing", "c"),
        view(t0 + MINUTE, "/", "c"),
        // d: home, then signup two days later (outside a 1-day window) and pricing never.
        view(t0, "/", "d"),
        view(t0 + 2 * DAY, "/signup", "d"),
        // e: starts at pricing: counts in an open funnel only.
        view(t0, "/pricing", "e"),
        view(t0 + MINUTE, "/signup", "e"),
    ];
    load(&server, events).await;
    let request = v1::RunFunnelReportRequest {
        site_id: "e".into(),
        steps: vec![
            page_step("home", "/"),
            page_step("pricing", "/pricing"),
            page_step("signup", "/signup"),
        ],
        conversion_window: Some(prost_types::Duration {
            seconds: 86_400,
            nanos: 0,
        }),
        ..Default::default()
    };
    let run = |open: bool| {
        let request = v1::RunFunnelReportRequest {
            open,
            ..request.clone()
        };
        let mut client = server.query();
        async move {
            client
                .run_funnel_report(authed(ADMIN_KEY, request))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let closed = run(false).await;
    let counts: Vec<i64> = closed.steps.iter().map(|s| s.visitors).collect();
    // home: a, b, c, d; pricing after home: a, b; signup after pricing: a.
    assert_eq!(counts, vec![4, 2, 1]);
    assert_eq!(closed.steps[1].drop_off, 2);
    assert!((closed.steps[1].conversion_from_previous - 50.0).abs() < 1e-9);
    assert!((closed.steps[2].conversion_from_first - 25.0).abs() < 1e-9);
    // pricing came 2 and 4 minutes after home: median (nearest rank) 2 minutes, p95 4.
    assert_eq!(
        closed.steps[1]
            .median_time_from_previous
            .as_ref()
            .unwrap()
            .seconds,
        120
    );
    assert_eq!(
        closed.steps[1].p95_time_from_previous.as_ref().unwrap().seconds,
        240
    );
    assert_eq!(
        closed.steps[2]
            .median_time_from_previous
            .as_ref()
            .unwrap()
            .seconds,
        180
    );

    let open = run(true).await;
    let counts: Vec<i64> = open.steps.iter().map(|s| s.visitors).collect();
    // Entering anywhere: pricing also from c and e, signup also from e, and
    // from d, whose signup came too late after home but is an entry itself.
    assert_eq!(counts, vec![4, 4, 3]);

    let err = server
        .query()
        .run_funnel_report(authed(
            ADMIN_KEY,
            v1::RunFunnelReportRequest {
                site_id: "e".into(),
                steps: vec![page_step("only", "/")],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("steps"));
    server.stop().await;
}
