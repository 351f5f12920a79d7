//! Realtime: `RunRealtimeReport` against a count made here, `WatchRealtime`
//! over native gRPC and over grpc-web, bots, permissions, shutdown, and the
//! window rebuilt from the store at start-up.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tally_proto::v1::{self, realtime_update::Update};
use tally_server::convert::timestamp_to_micros;
use tally_server::realtime::{MINUTE_MICROS, ManualClock, Realtime, View, memory::MemoryRealtime};
use tally_server::storage::{EventStore, SiteStore, embedded::EmbeddedStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

/// What the test sent, to count independently of the server.
struct Sent {
    at_micros: i64,
    visitor: &'static str,
    path: String,
    view: bool,
    source: &'static str,
    custom: Option<&'static str>,
    bot: bool,
}

fn event(n: u128, sent: &Sent) -> v1::Event {
    let (r#type, name) = match sent.custom {
        Some(name) => (v1::EventType::Custom, name),
        None => (v1::EventType::Pageview, ""),
    };
    let referrer = match sent.source {
        "Google" => "https://www.google.com/",
        _ => "",
    };
    v1::Event {
        event_id: uuid::Uuid::from_u128(n).to_string(),
        timestamp: Some(ts(sent.at_micros)),
        r#type: r#type as i32,
        name: name.into(),
        url: format!("https://s.example{}", sent.path),
        referrer: referrer.into(),
        anonymous_id: sent.visitor.into(),
        context: sent.bot.then(|| v1::Context {
            user_agent: GOOGLEBOT.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A mix of page views and custom events from five visitors and a crawler,
/// from now back to 40 minutes ago (the oldest out of the window).
fn traffic(now: i64) -> Vec<Sent> {
    let visitors = ["ann", "bob", "cid", "dee", "eve"];
    let mut sent = Vec::new();
    for i in 0..60usize {
        let seconds_ago = (i as i64 * 41) % 2400;
        sent.push(Sent {
            at_micros: now - seconds_ago * 1_000_000,
            visitor: visitors[i % visitors.len()],
            path: format!("/p{}", i % 7),
            view: i % 9 != 0,
            source: if i % 3 == 0 { "Google" } else { "Direct" },
            custom: (i % 9 == 0).then_some(if i % 2 == 0 { "signup" } else { "purchase" }),
            bot: i % 10 == 7,
        });
    }
    sent
}

/// Sends `sent` as events with ids 1, 2, ...
async fn track(server: &TestServer, key: &str, sent: &[Sent]) {
    let events: Vec<v1::Event> = sent
        .iter()
        .enumerate()
        .map(|(n, s)| event(n as u128 + 1, s))
        .collect();
    let count = events.len() as i32;
    let request = v1::TrackRequest {
        site_id: "s".into(),
        events,
    };
    let reply = server
        .ingest()
        .track(authed(key, request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.accepted, count, "{reply:?}");
}

fn top(sent: &[&Sent], value: impl Fn(&Sent) -> Option<String>) -> BTreeMap<String, (i64, i64, i64)> {
    let mut groups: BTreeMap<String, (HashSet<&str>, i64, i64)> = BTreeMap::new();
    for s in sent {
        let Some(v) = value(s) else { continue };
        let group = groups.entry(v).or_default();
        group.0.insert(s.visitor);
        group.1 += i64::from(s.view);
        group.2 += 1;
    }
    groups
        .into_iter()
        .map(|(v, (visitors, pageviews, events))| (v, (visitors.len() as i64, pageviews, events)))
        .collect()
}

fn listed(items: &[v1::TopItem]) -> BTreeMap<String, (i64, i64, i64)> {
    items
        .iter()
        .map(|t| (t.value.clone(), (t.visitors, t.pageviews, t.events)))
        .collect()
}

/// Checks `report` against the events sent, counted relative to its `as_of`.
fn check(report: &v1::RealtimeReport, sent: &[Sent], include_bots: bool) {
    let counted: Vec<&Sent> = sent.iter().filter(|s| include_bots || !s.bot).collect();
    let now_minute = timestamp_to_micros(report.as_of.as_ref().unwrap()).div_euclid(MINUTE_MICROS);
    assert_eq!(report.minutes.len(), 30);
    for (i, m) in report.minutes.iter().enumerate() {
        let minute = now_minute - 29 + i as i64;
        assert_eq!(
            timestamp_to_micros(m.minute.as_ref().unwrap()),
            minute * MINUTE_MICROS
        );
        let in_minute: Vec<&&Sent> = counted
            .iter()
            .filter(|s| s.at_micros.div_euclid(MINUTE_MICROS) == minute)
            .collect();
        let visitors: HashSet<&str> = in_minute.iter().map(|s| s.visitor).collect();
        let pageviews = in_minute.iter().filter(|s| s.view).count() as i64;
        let expected = (pageviews, in_minute.len() as i64, visitors.len() as i64);
        assert_eq!((m.pageviews, m.events, m.visitors), expected, "minute {i}");
    }
    let active: Vec<&Sent> = counted
        .iter()
        .copied()
        .filter(|s| s.at_micros.div_euclid(MINUTE_MICROS) > now_minute - 5)
        .collect();
    let visitors: HashSet<&str> = active.iter().map(|s| s.visitor).collect();
    assert_eq!(report.active_visitors, visitors.len() as i64);
    assert_eq!(listed(&report.top_pages), top(&active, |s| Some(s.path.clone())));
    assert_eq!(
        listed(&report.top_sources),
        top(&active, |s| Some(s.source.into()))
    );
    assert_eq!(
        listed(&report.top_events),
        top(&active, |s| s.custom.map(String::from))
    );
    assert!(report.top_countries.is_empty(), "no geo database, no countries");
    for list in [&report.top_pages, &report.top_sources, &report.top_events] {
        let keys: Vec<_> = list
            .iter()
            .map(|t| (-t.visitors, -t.pageviews, -t.events))
            .collect();
        assert!(keys.is_sorted(), "ranked by visitors: {list:?}");
    }
}

async fn site_with_keys(server: &TestServer) -> (String, String) {
    server.site("s", "UTC").await;
    let ingest = server.key(v1::KeyKind::Ingest, &["s"]).await;
    let query = server.key(v1::KeyKind::Query, &["s"]).await;
    (ingest, query)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_report_matches_a_count_of_the_events_sent() {
    let server = TestServer::start().await;
    let (ingest, query) = site_with_keys(&server).await;
    let sent = traffic(now_micros());
    track(&server, &ingest, &sent).await;

    let people = realtime(&server, &query, false).await;
    check(&people, &sent, false);
    assert!(
        people.active_visitors > 0 && people.top_pages.len() > 1,
        "{people:?}"
    );
    let everyone = realtime(&server, &query, true).await;
    check(&everyone, &sent, true);
    let events = |r: &v1::RealtimeReport| r.minutes.iter().map(|m| m.events).sum::<i64>();
    assert!(
        events(&everyone) > events(&people),
        "the crawler counts only on request"
    );

    // A duplicate is acknowledged but not counted again.
    let again = server
        .ingest()
        .track(authed(
            &ingest,
            v1::TrackRequest {
                site_id: "s".into(),
                events: vec![event(1, &sent[0])],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.duplicates, 1);
    check(&realtime(&server, &query, false).await, &sent, false);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_needs_a_key_for_the_site_and_valid_options() {
    let server = TestServer::start().await;
    let (ingest, _) = site_with_keys(&server).await;
    server.site("other", "UTC").await;
    let other = server.key(v1::KeyKind::Query, &["other"]).await;
    let report = |key: &str, top_limit| {
        let request = v1::RunRealtimeReportRequest {
            site_id: "s".into(),
            top_limit,
            include_bots: false,
        };
        let mut client = server.query();
        let request = authed(key, request);
        async move { client.run_realtime_report(request).await.unwrap_err().code() }
    };
    assert_eq!(report(&other, 10).await, tonic::Code::PermissionDenied);
    assert_eq!(report(&ingest, 10).await, tonic::Code::PermissionDenied);
    assert_eq!(report(ADMIN_KEY, 101).await, tonic::Code::InvalidArgument);
    let watch = |key: &str, heartbeat_interval| {
        let request = v1::WatchRealtimeRequest {
            site_id: "s".into(),
            heartbeat_interval,
            ..Default::default()
        };
        let mut client = server.query();
        let request = authed(key, request);
        async move { client.watch_realtime(request).await.err().map(|e| e.code()) }
    };
    assert_eq!(watch(&other, None).await, Some(tonic::Code::PermissionDenied));
    let too_long = prost_types::Duration {
        seconds: 61,
        nanos: 0,
    };
    assert_eq!(
        watch(ADMIN_KEY, Some(too_long)).await,
        Some(tonic::Code::InvalidArgument)
    );
    server.stop().await;
}

async fn next_snapshot(stream: &mut tonic::Streaming<v1::RealtimeUpdate>) -> v1::RealtimeReport {
    loop {
        let update = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an update within 10 s")
            .unwrap()
            .expect("the stream goes on");
        if let Some(Update::Snapshot(report)) = update.update {
            return report;
        }
    }
}

/// Opens a watch of site "s" with the default options.
async fn watch(server: &TestServer, key: &str) -> tonic::Streaming<v1::RealtimeUpdate> {
    let request = v1::WatchRealtimeRequest {
        site_id: "s".into(),
        ..Default::default()
    };
    let watching = server.query().watch_realtime(authed(key, request)).await;
    watching.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_realtime_pushes_events_sent_after_it_opened() {
    let server = TestServer::start().await;
    let (ingest, query) = site_with_keys(&server).await;
    let mut stream = watch(&server, &query).await;
    let first = next_snapshot(&mut stream).await;
    assert_eq!(first.active_visitors, 0);
    assert_eq!(first.minutes.len(), 30);

    let now = now_micros();
    let sent: Vec<Sent> = ["/a", "/b", "/a"]
        .into_iter()
        .zip(["ann", "bob", "cid"])
        .map(|(path, visitor)| Sent {
            at_micros: now,
            visitor,
            path: path.into(),
            view: true,
            source: "Direct",
            custom: None,
            bot: false,
        })
        .collect();
    track(&server, &ingest, &sent).await;
    let report = loop {
        let report = next_snapshot(&mut stream).await;
        if report.active_visitors == 3 {
            break report;
        }
    };
    check(&report, &sent, false);
    assert_eq!(report.top_pages[0].value, "/a");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_watches_without_waiting_for_the_grace_period() {
    let server = TestServer::start().await;
    let (_, query) = site_with_keys(&server).await;
    let mut stream = watch(&server, &query).await;
    next_snapshot(&mut stream).await;
    let stopping = Instant::now();
    server.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    let end = stream.message().await.unwrap_err();
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
}

/// Reads one grpc-web frame (flag, payload) from a chunked HTTP/1.1 body.
async fn read_frame(conn: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> (u8, Vec<u8>) {
    loop {
        if let Some(frame) = take_frame(buffer) {
            return frame;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("data within 10 s")
            .unwrap();
        assert!(n > 0, "connection closed: {}", String::from_utf8_lossy(buffer));
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// The first whole grpc-web frame from the de-chunked `buffer`, if there is one.
fn take_frame(buffer: &[u8]) -> Option<(u8, Vec<u8>)> {
    let body = dechunked(buffer);
    if body.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    if body.len() < 5 + len {
        return None;
    }
    Some((body[0], body[5..5 + len].to_vec()))
}

/// The body bytes of the complete chunks after the response head.
fn dechunked(buffer: &[u8]) -> Vec<u8> {
    let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Vec::new();
    };
    let mut rest = &buffer[head_end + 4..];
    let mut out = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 || rest.len() < line_end + 2 + size + 2 {
            break;
        }
        out.extend(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_realtime_over_grpc_web_streams_a_snapshot() {
    let server = TestServer::start().await;
    let (_, query) = site_with_keys(&server).await;
    let body = v1::WatchRealtimeRequest {
        site_id: "s".into(),
        top_limit: 5,
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend((body.len() as u32).to_be_bytes());
    frame.extend(body);
    let mut request = format!(
        "POST /tally.v1.QueryService/WatchRealtime HTTP/1.1\r\nHost: {}\r\nContent-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\nOrigin: https://s.example\r\nAuthorization: Bearer {query}\r\n\
         Content-Length: {}\r\n\r\n",
        server.addr,
        frame.len()
    )
    .into_bytes();
    request.extend(frame);
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(&request).await.unwrap();
    let mut buffer = Vec::new();
    let (flag, payload) = read_frame(&mut conn, &mut buffer).await;
    let head = String::from_utf8_lossy(&buffer).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "streamed: {head}");
    assert_eq!(flag, 0, "a data frame");
    let update = v1::RealtimeUpdate::decode(payload.as_slice()).unwrap();
    let Some(Update::Snapshot(report)) = update.update else {
        panic!("{update:?}")
    };
    assert_eq!(report.minutes.len(), 30);
    // The stream stays open: the connection is not closed after the first frame.
    drop(conn);
    server.stop().await;
}

#[tokio::test]
async fn the_window_is_rebuilt_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let site = tally_server::domain::SiteRecord {
        site_id: "s".into(),
        domain: "s.example".into(),
        ..Default::default()
    };
    store.insert_site(site.clone()).await.unwrap();
    let now = 1_700_000_000 * 1_000_000;
    let stored = |n: u128, minutes_ago: i64, visitor: u64| tally_server::domain::StoredEvent {
        event_id: uuid::Uuid::from_u128(n).as_bytes().to_vec(),
        ts_micros: now - minutes_ago * MINUTE_MICROS,
        kind: tally_server::domain::EventKind::Pageview as i32,
        path: "/".into(),
        visitor,
        ..Default::default()
    };
    let id = tally_server::domain::SiteId::parse("s").unwrap();
    let events = vec![
        stored(1, 0, 1),
        stored(2, 2, 2),
        stored(3, 20, 3),
        stored(4, 45, 4),
    ];
    store.append(&id, &events).await.unwrap();

    let clock = Arc::new(ManualClock::at(now));
    let realtime = Realtime::new(Arc::new(MemoryRealtime::default()), clock);
    assert_eq!(
        realtime.rebuild(&store).await.unwrap(),
        3,
        "the one older than 30 minutes stays out"
    );
    let report = realtime
        .report(&site, View::new(10, false).unwrap())
        .await
        .unwrap();
    assert_eq!(report.active_visitors, 2);
    assert_eq!(report.minutes.iter().map(|m| m.pageviews).sum::<i64>(), 3);
    assert_eq!(report.top_pages[0].visitors, 2);
}
