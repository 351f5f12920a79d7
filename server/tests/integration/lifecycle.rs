//! Data lifecycle: GDPR erasure through `DeleteVisitorData` (reports, rollups,
//! cache and export forget the person), and retention.

use std::sync::Arc;

use futures::StreamExt;
use tally_proto::v1::{self, Metric as M};
use tonic::Code;

use crate::harness::*;

async fn totals(server: &TestServer) -> (i64, i64) {
    let r = report(
        server,
        v1::RunReportRequest {
            site_id: "g".into(),
            metrics: vec![M::Pageviews as i32, M::Visitors as i32],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        r.metadata.as_ref().unwrap().data_source(),
        v1::DataSource::Rollups,
        "answered from the rollups, which must forget too"
    );
    let t = &r.totals[0].metric_values;
    (int(&t[0]), int(&t[1]))
}

async fn exported(server: &TestServer) -> Vec<v1::RecordedEvent> {
    let now = now_micros();
    let mut stream = server
        .admin()
        .export_events(authed(
            ADMIN_KEY,
            v1::ExportEventsRequest {
                site_id: "g".into(),
                time_range: Some(v1::TimeRange {
                    start_time: Some(ts(now - 86_400_000_000)),
                    end_time: Some(ts(now + 60_000_000)),
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(chunk) = stream.next().await {
        events.extend(chunk.unwrap().events);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_by_user_and_by_visitor_forgets_everywhere() {
    let server = TestServer::start().await;
    server.site("g", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["g"]).await;
    let now = now_micros();
    let mut events = Vec::new();
    // "ada": two anonymous page views, then signed in; "bob" and "cy": one each.
    for (i, (anon, user)) in [
        ("ada", ""),
        ("ada", ""),
        ("ada", "ada@example.com"),
        ("bob", ""),
        ("cy", ""),
    ]
    .iter()
    .enumerate()
    {
        let mut e = pageview(
            100 + i as u128,
            now - 60_000_000 + i as i64,
            "https://g.example/",
            anon,
        );
        e.user_id = (*user).into();
        events.push(e);
    }
    server
        .ingest()
        .track(authed(
            &key,
            v1::TrackRequest {
                site_id: "g".into(),
                events,
            },
        ))
        .await
        .unwrap();
    assert_eq!(totals(&server).await, (5, 3));
    let before = exported(&server).await;
    // Exported in time order: the fourth event is bob's, his only one.
    assert_eq!(before.len(), 5);
    let bob_visitor = before[3].visitor_id.clone();
    assert_eq!(before.iter().filter(|e| e.visitor_id == bob_visitor).count(), 1);

    let erase = |req: v1::DeleteVisitorDataRequest| {
        let mut admin = server.admin();
        async move { admin.delete_visitor_data(authed(ADMIN_KEY, req)).await }
    };
    let gone = erase(v1::DeleteVisitorDataRequest {
        site_id: "g".into(),
        user_id: "ada@example.com".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        gone.events_deleted, 3,
        "the signed-in event and the anonymous ones before it"
    );
    assert_eq!(totals(&server).await, (2, 2));
    let gone = erase(v1::DeleteVisitorDataRequest {
        site_id: "g".into(),
        visitor_id: bob_visitor.clone(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(gone.events_deleted, 1);
    assert_eq!(totals(&server).await, (1, 1));
    let left = exported(&server).await;
    assert_eq!(left.len(), 1);
    assert_ne!(left[0].visitor_id, bob_visitor);

    // Bad requests name the field.
    let err = erase(v1::DeleteVisitorDataRequest {
        site_id: "g".into(),
        visitor_id: "not-hex".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("visitor_id"));
    let err = erase(v1::DeleteVisitorDataRequest {
        site_id: "g".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_sweep_deletes_events_older_than_the_site_keeps() {
    use tally_server::admin::Admin;
    use tally_server::domain::{SiteId, SiteRecord, StoredEvent};
    use tally_server::rollup::Rollups;
    use tally_server::storage::Store;

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(tally_server::storage::embedded::EmbeddedStore::open(dir.path()).unwrap());
    let day = 86_400_000_000;
    store
        .insert_site(SiteRecord {
            site_id: "r".into(),
            time_zone: "UTC".into(),
            retention_days: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    store
        .insert_site(SiteRecord {
            site_id: "keep".into(),
            time_zone: "UTC".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let now = now_micros();
    let event = |n: u128, age_days: i64| StoredEvent {
        event_id: uuid::Uuid::from_u128(n).as_bytes().to_vec(),
        ts_micros: now - age_days * day,
        kind: 1,
        visitor: n as u64,
        ..Default::default()
    };
    let r = SiteId::parse("r").unwrap();
    let keep = SiteId::parse("keep").unwrap();
    store
        .append(&r, &[event(1, 5), event(2, 3), event(3, 1), event(4, 0)])
        .await
        .unwrap();
    store.append(&keep, &[event(5, 5)]).await.unwrap();
    let rollups = Arc::new(Rollups::new(true));
    rollups.rebuild(store.as_ref()).await.unwrap();
    let admin = Admin::new(store.clone(), rollups.clone());
    assert_eq!(admin.sweep_retention(now).await.unwrap(), 2);
    let left = |site: SiteId| {
        let store = store.clone();
        async move {
            let chunks: Vec<Vec<StoredEvent>> = store
                .scan(&site, i64::MIN, i64::MAX)
                .map(|c| c.unwrap())
                .collect()
                .await;
            chunks.concat().len()
        }
    };
    assert_eq!(left(r).await, 2);
    assert_eq!(left(keep).await, 1, "a site without retention keeps everything");
    let hours = rollups.read("r", |s| s.hours.len()).unwrap();
    assert_eq!(hours, 2, "the rollups forget the same hours");
}
