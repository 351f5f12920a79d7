//! Ingest over real gRPC: exact counts, idempotent retries, per-event verdicts,
//! malformed and oversized requests.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::TimeZone;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tally_proto::v1::{self, Dimension as D, Metric as M};
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::*;

const TZ: &str = "Europe/Berlin";
const PAGES: [&str; 12] = [
    "/",
    "/pricing",
    "/docs",
    "/docs/install",
    "/blog",
    "/blog/launch",
    "/about",
    "/contact",
    "/signup",
    "/login",
    "/changelog",
    "/careers",
];
const NAMES: [&str; 3] = ["signup", "purchase", "download"];

/// Generates events of 400 visitors over the last 3 days, in bursts so that
/// visits have several events and some gaps straddle the 30-minute rule.
fn generate(n: usize, seed: u64, now: i64) -> Vec<v1::Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clock: HashMap<usize, i64> = HashMap::new();
    (0..n)
        .map(|i| {
            let visitor = rng.random_range(0..400usize);
            let last = clock
                .entry(visitor)
                .or_insert_with(|| now - rng.random_range(1..72 * 3600) * 1_000_000);
            // Mostly short steps, sometimes 25-35 minutes, sometimes hours.
            let step_secs = match rng.random_range(0..10) {
                0..=6 => rng.random_range(1..300),
                7 => rng.random_range(1500..2100),
                _ => -rng.random_range(3600..20 * 3600),
            };
            *last = (*last + step_secs * 1_000_000 + rng.random_range(0..1_000_000)).min(now - 1);
            let at = *last;
            let url = format!("https://site.example{}", PAGES[rng.random_range(0..PAGES.len())]);
            let mut event = pageview(1_000_000 + i as u128, at, &url, &format!("anon-{visitor}"));
            match rng.random_range(0..10) {
                0 | 1 => {
                    event.r#type = v1::EventType::Custom as i32;
                    event.name = NAMES[rng.random_range(0..NAMES.len())].into();
                }
                2 => event.r#type = v1::EventType::Engagement as i32,
                _ => {}
            }
            if rng.random_range(0..4) == 0 {
                event.referrer = "https://news.example/item?id=7".into();
            }
            event
        })
        .collect()
}

#[derive(Default, Debug, PartialEq)]
struct Expected {
    pageviews: i64,
    events: i64,
    visitors: HashSet<String>,
    visits: HashSet<(String, usize)>,
}

/// Independent computation of the report numbers from the events as sent.
fn expected_by(events: &[v1::Event], key: impl Fn(&v1::Event) -> String) -> BTreeMap<String, Expected> {
    let micros = |e: &v1::Event| {
        let t = e.timestamp.unwrap();
        t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
    };
    // Visits: per visitor in time order, a new visit after a gap of more than 30 minutes.
    let mut by_visitor: HashMap<&str, Vec<(i64, usize)>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        by_visitor
            .entry(&e.anonymous_id)
            .or_default()
            .push((micros(e), i));
    }
    let mut visit_of = vec![0usize; events.len()];
    for times in by_visitor.values_mut() {
        times.sort();
        let mut visit = 0;
        for w in 0..times.len() {
            if w > 0 && times[w].0 - times[w - 1].0 > 30 * 60 * 1_000_000 {
                visit += 1;
            }
            visit_of[times[w].1] = visit;
        }
    }
    let mut out: BTreeMap<String, Expected> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let entry = out.entry(key(e)).or_default();
        entry.events += 1;
        if e.r#type == v1::EventType::Pageview as i32 {
            entry.pageviews += 1;
        }
        entry.visitors.insert(e.anonymous_id.clone());
        entry.visits.insert((e.anonymous_id.clone(), visit_of[i]));
    }
    out
}

fn actual_by(report: &v1::RunReportResponse) -> BTreeMap<String, [i64; 4]> {
    report
        .rows
        .iter()
        .map(|r| {
            (
                r.dimension_values.join("|"),
                [0, 1, 2, 3].map(|i| int(&r.metric_values[i])),
            )
        })
        .collect()
}

fn as_numbers(expected: &BTreeMap<String, Expected>) -> BTreeMap<String, [i64; 4]> {
    expected
        .iter()
        .map(|(k, e)| {
            (
                k.clone(),
                [
                    e.pageviews,
                    e.events,
                    e.visitors.len() as i64,
                    e.visits.len() as i64,
                ],
            )
        })
        .collect()
}

fn local(e: &v1::Event, pattern: &str) -> String {
    let tz: chrono_tz::Tz = TZ.parse().unwrap();
    let t = e.timestamp.unwrap();
    chrono::Utc
        .timestamp_opt(t.seconds, t.nanos as u32)
        .unwrap()
        .with_timezone(&tz)
        .format(pattern)
        .to_string()
}

fn path(e: &v1::Event) -> String {
    e.url.trim_start_matches("https://site.example").to_owned()
}

async fn send_all(server: &TestServer, key: &str, events: &[v1::Event]) -> (i64, i64, i64) {
    let (unary, streamed) = events.split_at(events.len() / 2);
    let mut counts = (0, 0, 0);
    for batch in unary.chunks(100) {
        let request = v1::TrackRequest {
            site_id: "site".into(),
            events: batch.to_vec(),
        };
        let response = server
            .ingest()
            .track(authed(key, request))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.results.len(), batch.len());
        counts.0 += i64::from(response.accepted);
        counts.1 += i64::from(response.duplicates);
        counts.2 += i64::from(response.rejected);
    }
    let batches: Vec<v1::TrackRequest> = streamed
        .chunks(250)
        .map(|b| v1::TrackRequest {
            site_id: String::new(),
            events: b.to_vec(),
        })
        .collect();
    let n_batches = batches.len() as i64;
    let response = server
        .ingest()
        .track_stream(authed(key, tokio_stream::iter(batches)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.requests, n_batches);
    counts.0 += response.accepted;
    counts.1 += response.duplicates;
    counts.2 += response.rejected;
    counts
}

fn report_request(metrics: &[M], dims: &[D], events: &[v1::Event]) -> v1::RunReportRequest {
    let first = events.iter().map(|e| local(e, "%Y-%m-%d")).min().unwrap();
    let last = events.iter().map(|e| local(e, "%Y-%m-%d")).max().unwrap();
    v1::RunReportRequest {
        site_id: "site".into(),
        metrics: metrics.iter().map(|m| *m as i32).collect(),
        dimensions: dims.iter().map(|d| standard(*d)).collect(),
        date_ranges: vec![v1::DateRange {
            start_date: first,
            end_date: last,
            name: String::new(),
        }],
        limit: 100_000,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_are_counted_exactly_once() {
    let server = TestServer::start().await;
    server.site("site", TZ).await;
    let key = server.key(v1::KeyKind::Ingest, &["site"]).await;
    let mut events = generate(10_000, 7, now_micros());
    // Visits are formed at ingest, so send as SDKs do: each visitor's events
    // in time order (the store still receives packs out of order).
    events.sort_by_key(|e| e.timestamp.map(|t| (t.seconds, t.nanos)));

    assert_eq!(send_all(&server, &key, &events).await, (10_000, 0, 0));

    let metrics = [M::Pageviews, M::Events, M::Visitors, M::Visits];
    type KeyOf = Box<dyn Fn(&v1::Event) -> String>;
    let checks: [(&[D], KeyOf); 5] = [
        (&[], Box::new(|_| String::new())),
        (&[D::Page], Box::new(path)),
        (&[D::TimeDay], Box::new(|e| local(e, "%Y-%m-%d"))),
        (&[D::TimeHour], Box::new(|e| local(e, "%Y-%m-%dT%H:00"))),
        (
            &[D::EventName, D::Referrer],
            Box::new(|e| {
                let name = if e.r#type == v1::EventType::Pageview as i32 {
                    "pageview"
                } else if e.name.is_empty() {
                    "engagement"
                } else {
                    &e.name
                };
                let referrer = if e.referrer.is_empty() {
                    ""
                } else {
                    "news.example/item"
                };
                format!("{name}|{referrer}")
            }),
        ),
    ];
    let mut first_reports = Vec::new();
    for (dims, key_fn) in &checks {
        let report = report(&server, report_request(&metrics, dims, &events)).await;
        let expected = as_numbers(&expected_by(&events, key_fn));
        assert_eq!(actual_by(&report), expected, "report by {dims:?}");
        assert_eq!(report.row_count as usize, expected.len());
        let totals = &report.totals[0];
        let all = as_numbers(&expected_by(&events, |_| String::new()));
        assert_eq!(
            [0, 1, 2, 3].map(|i| int(&totals.metric_values[i])),
            all[""],
            "totals by {dims:?}"
        );
        first_reports.push(report);
    }

    // Sending everything again changes nothing: every event is a duplicate.
    assert_eq!(send_all(&server, &key, &events).await, (0, 10_000, 0));
    for ((dims, _), before) in checks.iter().zip(&first_reports) {
        let after = report(&server, report_request(&metrics, dims, &events)).await;
        assert_eq!(after.rows, before.rows, "report by {dims:?} after resending");
        assert_eq!(after.totals, before.totals);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_pages_with_limit_offset_and_order() {
    let server = TestServer::start().await;
    server.site("site", TZ).await;
    let key = server.key(v1::KeyKind::Ingest, &["site"]).await;
    let events = generate(2_000, 11, now_micros());
    send_all(&server, &key, &events).await;
    let expected = as_numbers(&expected_by(&events, path));
    // Expected order: pageviews descending, ties by page ascending.
    let mut order: Vec<(&String, i64)> = expected.iter().map(|(k, v)| (k, v[0])).collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));

    let mut request = report_request(&[M::Pageviews], &[D::Page], &events);
    request.limit = 5;
    request.offset = 3;
    let page = report(&server, request.clone()).await;
    assert_eq!(page.row_count as usize, expected.len());
    let got: Vec<(String, i64)> = page
        .rows
        .iter()
        .map(|r| (r.dimension_values[0].clone(), int(&r.metric_values[0])))
        .collect();
    let want: Vec<(String, i64)> = order[3..8].iter().map(|(k, v)| ((*k).clone(), *v)).collect();
    assert_eq!(got, want);

    request.limit = 100;
    request.offset = 0;
    request.order_bys = vec![v1::OrderBy {
        key: Some(v1::order_by::Key::Dimension(standard(D::Page))),
        desc: true,
    }];
    let by_page = report(&server, request).await;
    let pages: Vec<&str> = by_page
        .rows
        .iter()
        .map(|r| r.dimension_values[0].as_str())
        .collect();
    let mut sorted = pages.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(pages, sorted);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_rejected_one_by_one_and_valid_ones_stored() {
    let server = TestServer::start().await;
    server.site("site", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["site"]).await;
    let now = now_micros();
    let ok = |n: u128| pageview(n, now - 1_000_000, "https://site.example/ok", "a");
    let mut no_id = ok(2);
    no_id.event_id.clear();
    let mut bad_id = ok(3);
    bad_id.event_id = "not-a-uuid".into();
    let old = pageview(4, now - 40 * 86_400_000_000, "https://site.example/", "a");
    let future = pageview(5, now + 2 * 86_400_000_000, "https://site.example/", "a");
    let mut no_type = ok(6);
    no_type.r#type = 0;
    let bad_url = pageview(7, now, "not a url", "a");
    let mut no_name = ok(8);
    no_name.r#type = v1::EventType::Custom as i32;
    let mut bad_prop = ok(9);
    bad_prop.properties.insert(
        "bad key!".into(),
        v1::PropertyValue {
            value: Some(v1::property_value::Value::BoolValue(true)),
        },
    );
    let mut nan = ok(10);
    nan.properties.insert(
        "n".into(),
        v1::PropertyValue {
            value: Some(v1::property_value::Value::NumberValue(f64::NAN)),
        },
    );
    let mut money = ok(11);
    money.revenue = Some(v1::Money {
        currency_code: "euro".into(),
        units: 1,
        nanos: 0,
    });
    let mut long_name = ok(12);
    long_name.r#type = v1::EventType::Custom as i32;
    long_name.name = "x".repeat(201);
    let mut bad_ip = ok(13);
    bad_ip.context = Some(v1::Context {
        ip: "999.1.1.1".into(),
        ..Default::default()
    });
    let events = vec![
        ok(1),
        no_id,
        bad_id,
        old,
        future,
        no_type,
        bad_url,
        no_name,
        bad_prop,
        nan,
        money,
        long_name,
        bad_ip,
        ok(1),
        ok(14),
    ];
    let response = server
        .ingest()
        .track(authed(
            &key,
            v1::TrackRequest {
                site_id: "site".into(),
                events,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    use v1::RejectReason as R;
    let verdicts: Vec<(v1::Verdict, R, &str)> = response
        .results
        .iter()
        .map(|r| (r.verdict(), r.reason(), r.field.as_str()))
        .collect();
    use v1::Verdict::*;
    assert_eq!(
        verdicts,
        vec![
            (Accepted, R::Unspecified, ""),
            (Rejected, R::MissingField, "event_id"),
            (Rejected, R::InvalidEventId, "event_id"),
            (Rejected, R::TimestampTooOld, "timestamp"),
            (Rejected, R::TimestampInFuture, "timestamp"),
            (Rejected, R::InvalidType, "type"),
            (Rejected, R::InvalidUrl, "url"),
            (Rejected, R::MissingField, "name"),
            (Rejected, R::InvalidProperty, "properties.bad key!"),
            (Rejected, R::InvalidProperty, "properties.n"),
            (Rejected, R::InvalidRevenue, "revenue.currency_code"),
            (Rejected, R::FieldTooLong, "name"),
            (Rejected, R::InvalidValue, "context.ip"),
            (Duplicate, R::Unspecified, ""),
            (Accepted, R::Unspecified, ""),
        ]
    );
    assert!(
        response
            .results
            .iter()
            .filter(|r| r.verdict() == Rejected)
            .all(|r| !r.message.is_empty())
    );
    assert_eq!(
        (response.accepted, response.duplicates, response.rejected),
        (2, 1, 12)
    );
    // Ids are echoed for duplicates and rejections; accepted events are matched by index.
    let echoed: Vec<&str> = response.results.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(echoed[0], "");
    assert_eq!(echoed[2], "not-a-uuid");
    assert_eq!(echoed[13], uuid::Uuid::from_u128(1).to_string());
    assert_eq!(echoed[14], "");
    assert_eq!(
        response.results.iter().map(|r| r.index).collect::<Vec<_>>(),
        (0..15).collect::<Vec<_>>()
    );

    let mut request = v1::RunReportRequest {
        site_id: "site".into(),
        metrics: vec![M::Pageviews as i32],
        date_ranges: vec![v1::DateRange {
            start_date: "1daysAgo".into(),
            end_date: "today".into(),
            name: String::new(),
        }],
        ..Default::default()
    };
    assert_eq!(
        int(&report(&server, request.clone()).await.totals[0].metric_values[0]),
        2
    );
    request.dimensions = vec![standard(D::Page)];
    let rows = report(&server, request).await.rows;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].dimension_values, vec!["/ok"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_a_clear_status_and_the_server_keeps_serving() {
    let server = TestServer::start().await;
    server.site("site", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["site"]).await;
    let now = now_micros();

    // Too many events in one request: INVALID_ARGUMENT with a BadRequest field violation.
    let events: Vec<v1::Event> = (0..1001u128)
        .map(|n| pageview(n + 1, now, "https://site.example/", "a"))
        .collect();
    let err = server
        .ingest()
        .track(authed(
            &key,
            v1::TrackRequest {
                site_id: "site".into(),
                events,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit is 1000"), "{}", err.message());
    let violations = err
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations;
    assert_eq!(violations[0].field, "events");

    // A message over the 4 MiB limit.
    let mut huge = pageview(1, now, "https://site.example/", "a");
    huge.user_id = "x".repeat(5 * 1024 * 1024);
    let err = server
        .ingest()
        .track(authed(
            &key,
            v1::TrackRequest {
                site_id: "site".into(),
                events: vec![huge],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");

    // Bytes that are not a TrackRequest.
    let mut raw = tonic::client::Grpc::new(server.channel.clone());
    raw.ready().await.unwrap();
    let mut request = tonic::Request::new(bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/tally.v1.IngestService/Track");
    let err = raw
        .unary::<_, bytes::Bytes, _>(request, path, RawCodec)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("decode"), "{}", err.message());

    // Unknown site for an operator, and an invalid site id.
    let err = server
        .ingest()
        .track(authed(
            ADMIN_KEY,
            v1::TrackRequest {
                site_id: "nope".into(),
                events: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = server
        .ingest()
        .track(authed(
            ADMIN_KEY,
            v1::TrackRequest {
                site_id: "Bad Site!".into(),
                events: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Still serving.
    let ok = v1::TrackRequest {
        site_id: "site".into(),
        events: vec![pageview(99, now, "https://site.example/", "a")],
    };
    let response = server
        .ingest()
        .track(authed(&key, ok))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.accepted, 1);
    server.stop().await;
}

/// Sends and receives raw bytes, to put malformed messages on the wire.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Self::Item, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Self::Error> {
        use bytes::BufMut;
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
