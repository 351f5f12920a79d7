//! Report semantics: time zones and DST, several date ranges, filters, bots and validation.

use tally_proto::v1::{self, Dimension as D, Metric as M};
use tonic::Code;

use crate::harness::*;

/// Microseconds of a UTC wall-clock time.
fn utc(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_micros()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_follow_the_site_time_zone_across_dst() {
    let server = TestServer::start().await;
    server.site("s", "America/New_York").await;
    let key = server.key(v1::KeyKind::Ingest, &["s"]).await;
    let now = now_micros();
    // Place events relative to now so they pass the 30-day window: on the
    // two sides of New York midnight of the day 3 days ago.
    let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let day = tally_server::query::dates::today(tz, now) - chrono::Days::new(3);
    let midnight = tally_server::query::dates::start_of_day(day, tz);
    let events = vec![
        pageview(1, midnight - 1, "https://s.example/late", "v1"),
        pageview(2, midnight, "https://s.example/early", "v1"),
        pageview(3, midnight + 3_600_000_000, "https://s.example/early", "v2"),
    ];
    let sent = server
        .ingest()
        .track(authed(
            &key,
            v1::TrackRequest {
                site_id: "s".into(),
                events,
            },
        ))
        .await
        .unwrap();
    assert_eq!(sent.into_inner().accepted, 3);
    let request = v1::RunReportRequest {
        site_id: "s".into(),
        metrics: vec![M::Pageviews as i32, M::Visitors as i32, M::Visits as i32],
        dimensions: vec![standard(D::TimeDay)],
        date_ranges: vec![v1::DateRange {
            start_date: "10daysAgo".into(),
            end_date: "today".into(),
            name: String::new(),
        }],
        ..Default::default()
    };
    let rows = report(&server, request.clone()).await.rows;
    let got = two_int_rows(&rows);
    let prev = (day - chrono::Days::new(1)).format("%Y-%m-%d").to_string();
    assert_eq!(
        got,
        vec![(prev, 1, 1), (day.format("%Y-%m-%d").to_string(), 2, 2)]
    );

    // The same events in UTC fall on one day (New York midnight is 04:00 or 05:00 UTC).
    let utc_report = report(
        &server,
        v1::RunReportRequest {
            time_zone: "UTC".into(),
            ..request
        },
    )
    .await;
    assert_eq!(utc_report.rows.len(), 1);
    assert_eq!(utc_report.metadata.unwrap().time_zone, "UTC");
    let _ = utc("2026-01-01T00:00:00Z");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_date_ranges_filters_and_bots() {
    let server = TestServer::start().await;
    server.site("s", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["s"]).await;
    let now = now_micros();
    let day = 86_400_000_000;
    let tz = chrono_tz::Tz::UTC;
    let today_start =
        tally_server::query::dates::start_of_day(tally_server::query::dates::today(tz, now), tz);
    let mut events = vec![
        pageview(1, today_start - 2 * day + 10, "https://s.example/docs/a", "v1"),
        pageview(2, today_start - 2 * day + 20, "https://s.example/blog", "v2"),
        pageview(3, today_start - day + 10, "https://s.example/docs/b", "v1"),
        pageview(4, today_start - day + 20, "https://s.example/DOCS/c", "v3"),
    ];
    let mut custom = pageview(5, today_start - day + 30, "https://s.example/docs/b", "v3");
    custom.r#type = v1::EventType::Custom as i32;
    custom.name = "download".into();
    custom.properties.insert(
        "size".into(),
        v1::PropertyValue {
            value: Some(v1::property_value::Value::NumberValue(42.0)),
        },
    );
    events.push(custom);
    let mut identify = pageview(6, today_start - day + 40, "https://s.example/", "v3");
    identify.r#type = v1::EventType::Identify as i32;
    identify.user_id = "u3".into();
    events.push(identify);
    let sent = server
        .ingest()
        .track(authed(
            &key,
            v1::TrackRequest {
                site_id: "s".into(),
                events,
            },
        ))
        .await
        .unwrap();
    assert_eq!(sent.into_inner().accepted, 6);

    let range = |start: &str, end: &str, name: &str| v1::DateRange {
        start_date: start.into(),
        end_date: end.into(),
        name: name.into(),
    };
    let docs_prefix = v1::FilterExpression {
        expr: Some(v1::filter_expression::Expr::Filter(v1::Filter {
            dimension: Some(standard(D::Page)),
            condition: Some(v1::filter::Condition::StringMatch(v1::StringMatch {
                match_type: v1::MatchType::Prefix as i32,
                value: "/docs".into(),
                case_sensitive: false,
            })),
        })),
    };
    let request = v1::RunReportRequest {
        site_id: "s".into(),
        metrics: vec![M::Events as i32, M::Visitors as i32],
        dimensions: vec![standard(D::Page)],
        date_ranges: vec![
            range("2daysAgo", "2daysAgo", "before"),
            range("yesterday", "yesterday", "after"),
        ],
        filter: Some(docs_prefix.clone()),
        order_bys: vec![
            v1::OrderBy {
                key: Some(v1::order_by::Key::Dimension(standard(D::DateRange))),
                desc: false,
            },
            v1::OrderBy {
                key: Some(v1::order_by::Key::Dimension(standard(D::Page))),
                desc: false,
            },
        ],
        ..Default::default()
    };
    let response = report(&server, request.clone()).await;
    let rows: Vec<(Vec<String>, i64, i64)> = response
        .rows
        .iter()
        .map(|r| {
            (
                r.dimension_values.clone(),
                int(&r.metric_values[0]),
                int(&r.metric_values[1]),
            )
        })
        .collect();
    let row = |r: &str, p: &str, events, visitors| (vec![r.to_string(), p.to_string()], events, visitors);
    assert_eq!(
        rows,
        vec![
            row("after", "/DOCS/c", 1, 1),
            row("after", "/docs/b", 2, 2),
            row("before", "/docs/a", 1, 1),
        ],
        "identify events are not counted; the case-insensitive prefix matches /DOCS"
    );
    let totals: Vec<(Vec<String>, i64)> = response
        .totals
        .iter()
        .map(|t| (t.dimension_values.clone(), int(&t.metric_values[0])))
        .collect();
    assert_eq!(
        totals,
        vec![(vec!["before".to_string()], 1), (vec!["after".to_string()], 3)]
    );

    // A numeric filter on a custom property.
    let size_filter = v1::FilterExpression {
        expr: Some(v1::filter_expression::Expr::Filter(v1::Filter {
            dimension: Some(v1::DimensionSpec {
                kind: Some(v1::dimension_spec::Kind::Property("size".into())),
            }),
            condition: Some(v1::filter::Condition::Numeric(v1::NumericMatch {
                operator: v1::NumericOperator::GreaterThan as i32,
                value: 40.0,
            })),
        })),
    };
    let by_size = report(
        &server,
        v1::RunReportRequest {
            filter: Some(size_filter),
            ..request.clone()
        },
    )
    .await;
    assert_eq!(by_size.rows.len(), 1);
    assert_eq!(by_size.rows[0].dimension_values, vec!["after", "/docs/b"]);

    // Validation names the field.
    let bad = v1::RunReportRequest {
        metrics: vec![],
        ..request.clone()
    };
    let err = server
        .query()
        .run_report(authed(ADMIN_KEY, bad))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("metrics"));
    let bad = v1::RunReportRequest {
        time_zone: "Nowhere/City".into(),
        ..request.clone()
    };
    assert_eq!(
        server
            .query()
            .run_report(authed(ADMIN_KEY, bad))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let later = v1::RunReportRequest {
        metrics: vec![M::Revenue as i32],
        revenue_currency: "euros".into(),
        ..request
    };
    assert_eq!(
        server
            .query()
            .run_report(authed(ADMIN_KEY, later))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    server.stop().await;
}
