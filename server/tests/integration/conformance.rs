//! The storage conformance suite against the embedded store.

use std::sync::Arc;

use tally_server::storage::{Store, conformance, embedded::EmbeddedStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_conformance_suite() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        dirs.lock().unwrap().push(dir);
        async move { store }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_conformance_suite_over_columnar_segments() {
    // Every append compacts its events into segments before it returns, so
    // every read, erasure and expiry of the suite meets compacted events.
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        let options = tally_server::storage::embedded::EmbeddedOptions {
            compact_on_append: true,
            ..Default::default()
        };
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open_with(dir.path(), &options).unwrap());
        dirs.lock().unwrap().push(dir);
        async move { store }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_events_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let site = tally_server::domain::SiteId::parse("a").unwrap();
    let record = tally_server::domain::SiteRecord {
        site_id: "a".into(),
        ..Default::default()
    };
    let start = tally_server::domain::now_micros() - 3_600_000_000;
    let event = |n: u128| tally_server::domain::StoredEvent {
        event_id: uuid::Uuid::from_u128(n).as_bytes().to_vec(),
        ts_micros: start + n as i64 * 1_000_000,
        kind: 1,
        ..Default::default()
    };
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        use tally_server::storage::{EventStore, SiteStore};
        store.insert_site(record).await.unwrap();
        store
            .append(&site, &(1..=100).map(event).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    use futures::TryStreamExt;
    use tally_server::storage::EventStore;
    let chunks: Vec<_> = store
        .scan(&site, start, start + 3_600_000_000)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(chunks.concat().len(), 100);
    // The dedup index survived too.
    let again = store.append(&site, &[event(5), event(500)]).await.unwrap();
    use tally_server::storage::AppendOutcome::*;
    assert_eq!(again, vec![Duplicate, Stored]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_continues_visits_across_reopen() {
    use tally_server::storage::{EventStore, SessionStore, SiteStore};
    let dir = tempfile::tempdir().unwrap();
    let site = tally_server::domain::SiteId::parse("a").unwrap();
    let now = tally_server::domain::now_micros();
    let event = |n: u128, minutes_ago: i64| tally_server::domain::StoredEvent {
        event_id: uuid::Uuid::from_u128(n).as_bytes().to_vec(),
        ts_micros: now - minutes_ago * 60_000_000,
        kind: 1,
        visitor: 9,
        ..Default::default()
    };
    let timeout = 30 * 60_000_000;
    let before = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .insert_site(tally_server::domain::SiteRecord {
                site_id: "a".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut events = vec![event(1, 20)];
        store.sessionize(&site, timeout, &mut events).await.unwrap();
        store.append(&site, &events).await.unwrap();
        events.remove(0)
    };
    // After a restart, the visit state comes back from the stored events.
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut next = vec![event(2, 5)];
    store.sessionize(&site, timeout, &mut next).await.unwrap();
    assert_eq!(next[0].session, before.session);
    assert_eq!(next[0].session_start, before.ts_micros);
}
