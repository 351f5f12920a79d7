//! Visits formed at ingest and the visit metrics, against an independent
//! computation over a generated stream of 100,000 events: gaps on both sides
//! of the 30-minute rule, visits across midnight, campaign changes, bounces.

use std::collections::{BTreeMap, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_proto::v1::{self, Dimension as D, Metric as M};

use crate::harness::*;

const MIN: i64 = 60_000_000;
const TIMEOUT: i64 = 30 * MIN;
const PAGES: [&str; 6] = ["/", "/pricing", "/docs", "/docs/start", "/blog/launch", "/about"];
const CAMPAIGNS: [&str; 3] = ["newsletter", "twitter", "partner"];

/// One generated event, with what the test needs to know about it.
struct Sent {
    event: v1::Event,
    visitor: usize,
    at: i64,
    kind: v1::EventType,
    path: &'static str,
    campaign: Option<&'static str>,
    non_interaction: bool,
}

/// Each visitor's events in time order: visits of 1-12 events with steps of
/// seconds to 31 minutes, gaps between visits of 29 minutes to 10 hours, some
/// visits started at a new campaign, some just before midnight.
fn generate(target: usize, now: i64) -> Vec<Sent> {
    let mut rng = StdRng::seed_from_u64(42);
    let start_window = now - 3 * 86_400 * 1_000_000 + 3_600_000_000;
    let mut sent = Vec::with_capacity(target);
    let mut visitor = 0;
    let mut id = 0u128;
    while sent.len() < target {
        visitor += 1;
        let mut t = start_window + rng.random_range(0..86_400i64) * 1_000_000;
        if rng.random_range(0..8) == 0 {
            // Start close to a midnight (UTC), so visits cross it.
            let day = 86_400_000_000;
            t = (t.div_euclid(day) + 1) * day - rng.random_range(1..20) * MIN;
        }
        for _visit in 0..rng.random_range(1..6) {
            let campaign = match rng.random_range(0..6) {
                0 => Some(CAMPAIGNS[rng.random_range(0..CAMPAIGNS.len())]),
                _ => None,
            };
            for step in 0..rng.random_range(1..13) {
                if step > 0 {
                    t += match rng.random_range(0..20) {
                        // Around the 30-minute rule: both sides of it.
                        0 => TIMEOUT - rng.random_range(0..60) * 1_000_000,
                        1 => TIMEOUT + rng.random_range(1..60) * 1_000_000,
                        _ => rng.random_range(1..600) * 1_000_000,
                    };
                }
                if t >= now - 1_000_000 {
                    break;
                }
                let (kind, non_interaction) = match (step, rng.random_range(0..10)) {
                    (0, _) | (_, 0..=5) => (v1::EventType::Pageview, false),
                    (_, 6 | 7) => (v1::EventType::Custom, false),
                    (_, 8) => (v1::EventType::Custom, true),
                    _ => (v1::EventType::Engagement, rng.random_range(0..2) == 0),
                };
                let path = PAGES[rng.random_range(0..PAGES.len())];
                // The campaign is on the visit's landing page only.
                let tagged = if step == 0 { campaign } else { None };
                let url = match tagged {
                    Some(c) => format!("https://s.example{path}?utm_source={c}&utm_medium=email"),
                    None => format!("https://s.example{path}"),
                };
                id += 1;
                let mut event = pageview(id, t, &url, &format!("visitor-{visitor}"));
                event.r#type = kind as i32;
                event.non_interaction = non_interaction;
                if kind == v1::EventType::Custom {
                    event.name = "signup".into();
                }
                sent.push(Sent {
                    event,
                    visitor,
                    at: t,
                    kind,
                    path,
                    campaign: tagged,
                    non_interaction,
                });
            }
            // The next visit: usually well apart, sometimes just inside the
            // timeout (then only a new campaign separates them).
            t += match rng.random_range(0..4) {
                0 => TIMEOUT - rng.random_range(1..600) * 1_000_000,
                _ => TIMEOUT + rng.random_range(1..36_000) * 1_000_000,
            };
        }
    }
    sent
}

/// An independently formed visit.
#[derive(Default, Debug)]
struct Visit {
    first: i64,
    last: i64,
    views: Vec<(i64, &'static str)>,
    engaged: bool,
}

/// Forms visits from the events as sent: per visitor in time order, a new
/// visit after a gap over 30 minutes or at a different campaign.
fn visits(sent: &[Sent]) -> Vec<Visit> {
    let mut by_visitor: BTreeMap<usize, Vec<&Sent>> = BTreeMap::new();
    for s in sent {
        by_visitor.entry(s.visitor).or_default().push(s);
    }
    let mut out = Vec::new();
    for events in by_visitor.values_mut() {
        events.sort_by_key(|s| s.at);
        let mut current: Option<(Visit, Option<&str>)> = None;
        for s in events.iter() {
            let starts_new = match &current {
                None => true,
                Some((visit, campaign)) => {
                    s.at - visit.last > TIMEOUT || (s.campaign.is_some() && s.campaign != *campaign)
                }
            };
            if starts_new {
                out.extend(current.take().map(|(v, _)| v));
                current = Some((
                    Visit {
                        first: s.at,
                        last: s.at,
                        ..Default::default()
                    },
                    s.campaign,
                ));
            }
            let (visit, _) = current.as_mut().unwrap();
            visit.last = s.at;
            match s.kind {
                v1::EventType::Pageview => visit.views.push((s.at, s.path)),
                v1::EventType::Custom | v1::EventType::Engagement if !s.non_interaction => {
                    visit.engaged = true
                }
                _ => {}
            }
        }
        out.extend(current.map(|(v, _)| v));
    }
    out
}

fn bounced(v: &Visit) -> bool {
    v.views.len() <= 1 && !v.engaged
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    match values.len() {
        0 => 0.0,
        n => values.iter().sum::<f64>() / n as f64,
    }
}

fn float(value: &v1::MetricValue) -> f64 {
    match value.value {
        Some(v1::metric_value::Value::DoubleValue(x)) => x,
        Some(v1::metric_value::Value::IntValue(n)) => n as f64,
        None => f64::NAN,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visit_metrics_match_an_independent_computation() {
    let server = TestServer::start().await;
    server.site("s", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["s"]).await;
    let now = now_micros();
    let mut sent = generate(100_000, now);
    sent.sort_by_key(|s| s.at);
    for batch in sent.chunks(1000) {
        let reply = server
            .ingest()
            .track(authed(
                &key,
                v1::TrackRequest {
                    site_id: "s".into(),
                    events: batch.iter().map(|s| s.event.clone()).collect(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.accepted as usize,
            batch.len(),
            "{:?}",
            reply.results.first()
        );
    }
    let expected = visits(&sent);
    assert!(sent.len() >= 100_000);
    let crossing_midnight = expected
        .iter()
        .filter(|v| v.first.div_euclid(86_400_000_000) != v.last.div_euclid(86_400_000_000))
        .count();
    assert!(
        crossing_midnight > 50,
        "the stream has visits across midnight ({crossing_midnight})"
    );

    let request = |dimensions: Vec<v1::DimensionSpec>| v1::RunReportRequest {
        site_id: "s".into(),
        metrics: [
            M::Visits,
            M::BounceRate,
            M::VisitDuration,
            M::ViewsPerVisit,
            M::TimeOnPage,
        ]
        .map(|m| m as i32)
        .to_vec(),
        dimensions,
        date_ranges: vec![v1::DateRange {
            start_date: "4daysAgo".into(),
            end_date: "today".into(),
            name: String::new(),
        }],
        limit: 1000,
        ..Default::default()
    };

    // Totals.
    let totals = report(&server, request(Vec::new()))
        .await
        .totals
        .remove(0)
        .metric_values;
    let views: usize = expected.iter().map(|v| v.views.len()).sum();
    let times_on_page: Vec<f64> = expected
        .iter()
        .flat_map(|v| v.views.windows(2).map(|w| (w[1].0 - w[0].0) as f64 / 1e6))
        .collect();
    let want = [
        expected.len() as f64,
        100.0 * expected.iter().filter(|v| bounced(v)).count() as f64 / expected.len() as f64,
        mean(expected.iter().map(|v| (v.last - v.first) as f64 / 1e6)),
        views as f64 / expected.len() as f64,
        mean(times_on_page.iter().copied()),
    ];
    let got: Vec<f64> = totals.iter().map(float).collect();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            close(*g, w),
            "metric {i}: got {g}, want {w} (all: {got:?} vs {want:?})"
        );
    }

    // By entry page: each visit once, under its first page view's path.
    let mut by_entry: BTreeMap<&str, Vec<&Visit>> = BTreeMap::new();
    for v in &expected {
        by_entry
            .entry(v.views.first().map_or("", |p| p.1))
            .or_default()
            .push(v);
    }
    let rows = report(&server, request(vec![standard(D::EntryPage)])).await.rows;
    let got: HashMap<String, (f64, f64, f64)> = rows
        .iter()
        .map(|r| {
            let m = &r.metric_values;
            (
                r.dimension_values[0].clone(),
                (float(&m[0]), float(&m[1]), float(&m[2])),
            )
        })
        .collect();
    assert_eq!(got.len(), by_entry.len());
    for (page, visits) in &by_entry {
        let (count, bounce, duration) = got[*page];
        let n = visits.len() as f64;
        assert_eq!(count, n, "visits entering at {page}");
        assert!(
            close(
                bounce,
                100.0 * visits.iter().filter(|v| bounced(v)).count() as f64 / n
            ),
            "{page}"
        );
        assert!(
            close(
                duration,
                mean(visits.iter().map(|v| (v.last - v.first) as f64 / 1e6))
            ),
            "{page}"
        );
    }

    // By exit page: visits under their last page view's path.
    let mut by_exit: BTreeMap<&str, f64> = BTreeMap::new();
    for v in &expected {
        *by_exit.entry(v.views.last().map_or("", |p| p.1)).or_default() += 1.0;
    }
    let rows = report(&server, request(vec![standard(D::ExitPage)])).await.rows;
    let got: BTreeMap<&str, f64> = rows
        .iter()
        .map(|r| (r.dimension_values[0].as_str(), float(&r.metric_values[0])))
        .collect();
    assert_eq!(got, by_exit);

    // Time on page by page: from each page view to the next one of its visit.
    let mut by_page: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for v in &expected {
        for w in v.views.windows(2) {
            by_page
                .entry(w[0].1)
                .or_default()
                .push((w[1].0 - w[0].0) as f64 / 1e6);
        }
    }
    let rows = report(&server, request(vec![standard(D::Page)])).await.rows;
    for (page, times) in &by_page {
        let row = rows.iter().find(|r| r.dimension_values[0] == *page).unwrap();
        let got = float(&row.metric_values[4]);
        assert!(close(got, mean(times.iter().copied())), "time on {page}: {got}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_service_finds_visits_and_their_events() {
    use tally_proto::v1::session_service_client::SessionServiceClient;
    let server = TestServer::start().await;
    server.site("s", "UTC").await;
    server.site("other", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["s"]).await;
    let query_key = server.key(v1::KeyKind::Query, &["s"]).await;
    let other_key = server.key(v1::KeyKind::Query, &["other"]).await;
    let base = now_micros() - 6 * 3_600_000_000;
    let at = |min: i64| base + min * MIN;
    let view = |id: u128, min: i64, path: &str, anon: &str| {
        pageview(id, at(min), &format!("https://s.example{path}"), anon)
    };
    let mut signup = view(3, 12, "/", "a");
    signup.r#type = v1::EventType::Custom as i32;
    signup.name = "signup".into();
    signup.user_id = "user-1".into();
    let mut landing = view(1, 0, "/?utm_source=newsletter&utm_medium=email", "a");
    landing.referrer = "https://mail.google.com/".into();
    let events = vec![
        // Visitor a: a visit of three events, then another an hour later.
        landing,
        view(2, 10, "/pricing", "a"),
        signup,
        view(4, 75, "/docs", "a"),
        // Visitor b: one bounce.
        view(5, 30, "/pricing", "b"),
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
        .unwrap()
        .into_inner();
    assert_eq!(sent.accepted, 5);
    let mut sessions = SessionServiceClient::new(server.channel.clone());
    let range = v1::TimeRange {
        start_time: Some(ts(at(-60))),
        end_time: Some(ts(at(120))),
    };
    let list =
        |page_size: i32, page_token: String, filter: Option<v1::FilterExpression>| v1::ListSessionsRequest {
            site_id: "s".into(),
            time_range: Some(range),
            filter,
            page_size,
            page_token,
            include_bots: false,
        };
    let all = sessions
        .list_sessions(authed(&query_key, list(0, String::new(), None)))
        .await
        .unwrap()
        .into_inner();
    let summary: Vec<(&str, i64, i64, bool, &str, &str)> = all
        .sessions
        .iter()
        .map(|s| {
            (
                s.entry_page.as_str(),
                s.pageviews,
                s.events,
                s.bounce,
                s.exit_page.as_str(),
                s.source.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("/docs", 1, 1, true, "/docs", "Direct"),
            ("/pricing", 1, 1, true, "/pricing", "Direct"),
            ("/", 2, 3, false, "/pricing", "newsletter"),
        ],
        "newest first"
    );
    let first_visit = &all.sessions[2];
    assert_eq!(first_visit.duration.unwrap().seconds, 12 * 60);
    assert_eq!(first_visit.user_id, "user-1");
    assert!(all.next_page_token.is_empty());

    // Paging: one at a time, the same visits in the same order.
    let mut token = String::new();
    let mut paged = Vec::new();
    loop {
        let page = sessions
            .list_sessions(authed(&query_key, list(1, token, None)))
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.sessions.into_iter().map(|s| s.session_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let ids: Vec<String> = all.sessions.iter().map(|s| s.session_id.clone()).collect();
    assert_eq!(paged, ids);

    // A filter keeps visits with a matching event.
    let pricing = v1::FilterExpression {
        expr: Some(v1::filter_expression::Expr::Filter(v1::Filter {
            dimension: Some(standard(D::Page)),
            condition: Some(v1::filter::Condition::StringMatch(v1::StringMatch {
                value: "/pricing".into(),
                match_type: v1::MatchType::Exact as i32,
                ..Default::default()
            })),
        })),
    };
    let filtered = sessions
        .list_sessions(authed(&query_key, list(0, String::new(), Some(pricing))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.sessions.len(), 2);

    // One visit with its events in order; every event names its visit.
    let session = sessions
        .get_session(authed(
            &query_key,
            v1::GetSessionRequest {
                site_id: "s".into(),
                session_id: first_visit.session_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let paths: Vec<&str> = session.recorded_events.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/", "/pricing", "/"]);
    assert!(
        session
            .recorded_events
            .iter()
            .all(|e| e.session_id == first_visit.session_id)
    );
    assert_eq!(
        (session.medium.as_str(), session.campaign.as_str()),
        ("email", "")
    );

    // A visitor's visits, by visitor id and by user id.
    let visitor_id = session.visitor_id.clone();
    for (visitor_id, user_id) in [(visitor_id, String::new()), (String::new(), "user-1".to_owned())] {
        let mine = sessions
            .list_visitor_sessions(authed(
                &query_key,
                v1::ListVisitorSessionsRequest {
                    site_id: "s".into(),
                    visitor_id: visitor_id.clone(),
                    user_id: user_id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let entries: Vec<&str> = mine.sessions.iter().map(|s| s.entry_page.as_str()).collect();
        let want: &[&str] = if user_id.is_empty() {
            &["/docs", "/"]
        } else {
            &["/"]
        };
        assert_eq!(entries, want, "visitor {visitor_id:?} user {user_id:?}");
    }

    // Errors.
    let get = |id: &str, key: &str| {
        let mut sessions = sessions.clone();
        let request = authed(
            key,
            v1::GetSessionRequest {
                site_id: "s".into(),
                session_id: id.into(),
            },
        );
        async move { sessions.get_session(request).await.unwrap_err().code() }
    };
    assert_eq!(get("nope", &query_key).await, tonic::Code::InvalidArgument);
    assert_eq!(get("1-2", &query_key).await, tonic::Code::NotFound);
    assert_eq!(
        get(&first_visit.session_id, &other_key).await,
        tonic::Code::PermissionDenied
    );
    server.stop().await;
}
