//! The storage conformance suite, written once and run against every backend.
//!
//! A backend's test calls [`run_all`] with a function that makes a fresh,
//! isolated store (a new directory, keyspace or key prefix) for each case.

use std::future::Future;
use std::sync::Arc;

use futures::TryStreamExt;

use super::{AppendOutcome, Erase, Store};
use crate::domain::{KeyRecord, SiteId, SiteRecord, StoredEvent};

type CaseFn = fn(Arc<dyn Store>) -> futures::future::BoxFuture<'static, ()>;

/// A named case of the suite.
pub type Case = (&'static str, CaseFn);

/// Every case of the suite, by name.
pub fn cases() -> Vec<Case> {
    macro_rules! cases {
        ($($name:ident),* $(,)?) => {
            vec![$((stringify!($name), (|s| Box::pin($name(s))) as CaseFn)),*]
        };
    }
    cases![
        append_then_scan_in_time_order,
        duplicates_across_calls,
        duplicates_within_a_call,
        duplicates_of_month_old_events,
        separate_appends_merge_in_time_order,
        scan_range_is_half_open,
        sites_are_isolated,
        concurrent_appends_all_land_once,
        site_records_round_trip,
        keys_round_trip,
        instance_secret_is_stable,
        salts_are_shared_and_dropped,
        site_privacy_settings_round_trip,
        visits_continue_across_calls,
        erasure_removes_a_visitor_or_a_user_and_keeps_their_ids_known,
        expiry_removes_events_older_than_the_cut,
    ]
}

/// Runs every case, each on a fresh store from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    for (name, case) in cases() {
        eprintln!("conformance: {name}");
        case(make().await).await;
    }
}

fn site(id: &str) -> SiteRecord {
    SiteRecord {
        site_id: id.into(),
        domain: format!("{id}.example"),
        time_zone: "UTC".into(),
        ..Default::default()
    }
}

async fn with_site(store: &Arc<dyn Store>, id: &str) -> SiteId {
    assert!(
        store.insert_site(site(id)).await.unwrap(),
        "new site {id} inserted"
    );
    SiteId::parse(id).unwrap()
}

/// An hour ago, whole minute: events in the suite are recent, as ingest requires.
fn base() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let now = crate::domain::now_micros();
        now - now.rem_euclid(60_000_000) - 3_600_000_000
    })
}

/// Event `n` at `offset` microseconds after [`base`].
fn event(n: u128, offset: i64) -> StoredEvent {
    StoredEvent {
        event_id: uuid::Uuid::from_u128(n).as_bytes().to_vec(),
        ts_micros: base() + offset,
        kind: 1,
        name: "pageview".into(),
        path: format!("/p/{n}"),
        visitor: n as u64,
        ..Default::default()
    }
}

/// Events with offsets in `[from, to)` from [`base`].
async fn scan_all(store: &Arc<dyn Store>, site: &SiteId, from: i64, to: i64) -> Vec<StoredEvent> {
    let (from, to) = (base().saturating_add(from), base().saturating_add(to));
    let chunks: Vec<Vec<StoredEvent>> = store.scan(site, from, to).try_collect().await.unwrap();
    chunks.into_iter().flatten().collect()
}

async fn append_then_scan_in_time_order(store: Arc<dyn Store>) {
    let site = with_site(&store, "a").await;
    // Appended out of order, across chunk boundaries.
    let events: Vec<StoredEvent> = (0..10_000u128)
        .map(|n| event(n, ((n * 7919) % 10_000) as i64 * 1000))
        .collect();
    let outcomes = store.append(&site, &events).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == AppendOutcome::Stored));
    let scanned = scan_all(&store, &site, i64::MIN, i64::MAX).await;
    assert_eq!(scanned.len(), events.len());
    assert!(scanned.windows(2).all(|w| w[0].ts_micros <= w[1].ts_micros));
    let mut expected = events;
    expected.sort_by_key(|e| (e.ts_micros, e.event_id.clone()));
    assert_eq!(scanned, expected, "events come back exactly as stored");
}

async fn duplicates_across_calls(store: Arc<dyn Store>) {
    let site = with_site(&store, "a").await;
    let first = store.append(&site, &[event(1, 10), event(2, 20)]).await.unwrap();
    assert_eq!(first, vec![AppendOutcome::Stored, AppendOutcome::Stored]);
    // Same ids, even with other timestamps, are duplicates.
    let again = store
        .append(&site, &[event(2, 99), event(3, 30), event(1, 10)])
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![
            AppendOutcome::Duplicate,
            AppendOutcome::Stored,
            AppendOutcome::Duplicate
        ]
    );
    assert_eq!(scan_all(&store, &site, 0, 1000).await.len(), 3);
}

async fn duplicates_within_a_call(store: Arc<dyn Store>) {
    let site = with_site(&store, "a").await;
    let outcomes = store
        .append(&site, &[event(5, 1), event(5, 2), event(6, 3)])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        vec![
            AppendOutcome::Stored,
            AppendOutcome::Duplicate,
            AppendOutcome::Stored
        ]
    );
    let stored = scan_all(&store, &site, 0, 10).await;
    assert_eq!(
        stored.iter().map(|e| e.ts_micros - base()).collect::<Vec<_>>(),
        vec![1, 3]
    );
}

async fn duplicates_of_month_old_events(store: Arc<dyn Store>) {
    // Ingest accepts timestamps up to 30 days old: their retries must still be recognised.
    let site = with_site(&store, "a").await;
    let day = 86_400_000_000;
    let old = event(1, -29 * day);
    assert_eq!(
        store.append(&site, std::slice::from_ref(&old)).await.unwrap(),
        vec![AppendOutcome::Stored]
    );
    assert_eq!(
        store.append(&site, &[old]).await.unwrap(),
        vec![AppendOutcome::Duplicate]
    );
    assert_eq!(scan_all(&store, &site, -30 * day, 0).await.len(), 1);
}

async fn separate_appends_merge_in_time_order(store: Arc<dyn Store>) {
    let site = with_site(&store, "a").await;
    // Three appends whose events interleave within one minute and across two.
    for call in 0..3u128 {
        let events: Vec<_> = (0..20u128)
            .map(|i| event(call * 100 + i, (i * 3 + call) as i64 * 2_000_000))
            .collect();
        store.append(&site, &events).await.unwrap();
    }
    let scanned = scan_all(&store, &site, 0, 120_000_000).await;
    let offsets: Vec<i64> = scanned.iter().map(|e| e.ts_micros - base()).collect();
    let expected: Vec<i64> = (0..60).map(|k| k * 2_000_000).collect();
    assert_eq!(offsets, expected);
    // A range that starts and ends inside minutes.
    let inner = scan_all(&store, &site, 30_000_000, 90_000_001).await;
    assert_eq!(inner.len(), 31);
}

async fn scan_range_is_half_open(store: Arc<dyn Store>) {
    let site = with_site(&store, "a").await;
    let events: Vec<_> = (0..10u128).map(|n| event(n, n as i64 * 100 - 500)).collect();
    store.append(&site, &events).await.unwrap();
    let got = scan_all(&store, &site, -300, 200).await;
    let offsets: Vec<i64> = got.iter().map(|e| e.ts_micros - base()).collect();
    assert_eq!(offsets, vec![-300, -200, -100, 0, 100]);
    assert!(scan_all(&store, &site, 10_000, 20_000).await.is_empty());
}

async fn sites_are_isolated(store: Arc<dyn Store>) {
    let a = with_site(&store, "a").await;
    let b = with_site(&store, "b").await;
    store.append(&a, &[event(1, 1), event(2, 2)]).await.unwrap();
    // The same event id on another site is a different event.
    assert_eq!(
        store.append(&b, &[event(1, 1)]).await.unwrap(),
        vec![AppendOutcome::Stored]
    );
    assert_eq!(scan_all(&store, &a, 0, 10).await.len(), 2);
    assert_eq!(scan_all(&store, &b, 0, 10).await.len(), 1);
    let unknown = SiteId::parse("nope").unwrap();
    assert!(scan_all(&store, &unknown, 0, 10).await.is_empty());
    assert!(store.append(&unknown, &[event(9, 1)]).await.is_err());
}

async fn concurrent_appends_all_land_once(store: Arc<dyn Store>) {
    let site = with_site(&store, "a").await;
    // 8 writers, overlapping id ranges: every id is stored exactly once.
    let mut tasks = Vec::new();
    for writer in 0..8u128 {
        let store = store.clone();
        let site = site.clone();
        tasks.push(tokio::spawn(async move {
            let mut stored = 0;
            for batch in 0..10u128 {
                let start = (writer % 4) * 1000 + batch * 100;
                let events: Vec<_> = (start..start + 100).map(|n| event(n, n as i64)).collect();
                let outcomes = store.append(&site, &events).await.unwrap();
                stored += outcomes.iter().filter(|o| **o == AppendOutcome::Stored).count();
            }
            stored
        }));
    }
    let mut stored_total = 0;
    for task in tasks {
        stored_total += task.await.unwrap();
    }
    assert_eq!(stored_total, 4000, "each of the 4,000 distinct ids stored once");
    assert_eq!(scan_all(&store, &site, i64::MIN, i64::MAX).await.len(), 4000);
}

async fn site_records_round_trip(store: Arc<dyn Store>) {
    let mut record = site("shop");
    record.allowed_origins = vec!["https://shop.example".into()];
    assert!(store.insert_site(record.clone()).await.unwrap());
    assert!(
        !store.insert_site(site("shop")).await.unwrap(),
        "second insert refused"
    );
    let id = SiteId::parse("shop").unwrap();
    assert_eq!(store.get_site(&id).await.unwrap(), Some(record.clone()));
    record.time_zone = "Europe/Berlin".into();
    store.update_site(record.clone()).await.unwrap();
    assert_eq!(store.get_site(&id).await.unwrap(), Some(record.clone()));
    assert!(store.update_site(site("ghost")).await.is_err());
    store.insert_site(site("blog")).await.unwrap();
    let ids: Vec<String> = store
        .list_sites()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.site_id)
        .collect();
    assert_eq!(ids, vec!["blog", "shop"]);
    assert_eq!(
        store.get_site(&SiteId::parse("ghost").unwrap()).await.unwrap(),
        None
    );
}

async fn keys_round_trip(store: Arc<dyn Store>) {
    let key = KeyRecord {
        key_id: "k1".into(),
        kind: 1,
        site_ids: vec!["a".into()],
        secret_hash: vec![7; 32],
        ..Default::default()
    };
    store.put_key(key.clone()).await.unwrap();
    assert_eq!(store.key_by_hash(&[7; 32]).await.unwrap(), Some(key.clone()));
    assert_eq!(store.key_by_hash(&[8; 32]).await.unwrap(), None);
    let revoked = KeyRecord {
        revoke_micros: 5,
        ..key.clone()
    };
    store.put_key(revoked.clone()).await.unwrap();
    assert_eq!(store.get_key("k1").await.unwrap(), Some(revoked.clone()));
    assert_eq!(store.key_by_hash(&[7; 32]).await.unwrap(), Some(revoked));
    assert_eq!(store.list_keys().await.unwrap().len(), 1);
}

async fn instance_secret_is_stable(store: Arc<dyn Store>) {
    let first = store.instance_secret().await.unwrap();
    assert_eq!(store.instance_secret().await.unwrap(), first);
    assert_ne!(first, [0; 32]);
}

async fn salts_are_shared_and_dropped(store: Arc<dyn Store>) {
    // Concurrent first uses of one name agree on one salt.
    let names = [
        "s/daily/10",
        "s/daily/10",
        "s/daily/10",
        "s/daily/11",
        "t/daily/10",
    ];
    let salts = futures::future::try_join_all(names.iter().map(|n| store.salt(n)))
        .await
        .unwrap();
    assert_eq!(salts[0], salts[1]);
    assert_eq!(salts[0], salts[2]);
    assert_ne!(salts[0], salts[3], "each period has its own salt");
    assert_ne!(salts[0], salts[4], "each site has its own salt");
    assert_ne!(salts[0], [0; 32]);
    let mut names = store.salt_names("s/").await.unwrap();
    names.sort();
    assert_eq!(names, ["s/daily/10", "s/daily/11"]);
    store.drop_salts(&["s/daily/10".to_owned()]).await.unwrap();
    assert_eq!(store.salt_names("s/").await.unwrap(), ["s/daily/11"]);
    assert_eq!(store.salt("s/daily/11").await.unwrap(), salts[3]);
    assert_eq!(store.salt("t/daily/10").await.unwrap(), salts[4]);
    assert_ne!(
        store.salt("s/daily/10").await.unwrap(),
        salts[0],
        "a dropped salt is gone for good: its name gets a new one"
    );
}

async fn site_privacy_settings_round_trip(store: Arc<dyn Store>) {
    let record = SiteRecord {
        honor_do_not_track: true,
        excluded_ip_ranges: vec!["203.0.113.0/24".into(), "2001:db8::1".into()],
        salt_policy: crate::domain::SaltPolicy::Weekly as i32,
        ..site("private")
    };
    assert!(store.insert_site(record.clone()).await.unwrap());
    let id = SiteId::parse("private").unwrap();
    assert_eq!(store.get_site(&id).await.unwrap(), Some(record));
}

async fn visits_continue_across_calls(store: Arc<dyn Store>) {
    store.insert_site(site("v")).await.unwrap();
    let id = SiteId::parse("v").unwrap();
    let minute = 60_000_000;
    let at = |visitor: u64, t: i64| StoredEvent {
        visitor,
        ts_micros: 1_000 * minute + t * minute,
        ..Default::default()
    };
    let timeout = 30 * minute;
    let mut first = vec![at(1, 0), at(2, 0)];
    store.sessionize(&id, timeout, &mut first).await.unwrap();
    assert_ne!(first[0].session, 0);
    assert_ne!(
        first[0].session, first[1].session,
        "each visitor has its own visit"
    );
    // Later calls continue the visit within the timeout, and start one after it.
    let mut second = vec![at(1, 20), at(1, 49), at(1, 90), at(2, 31)];
    store.sessionize(&id, timeout, &mut second).await.unwrap();
    assert_eq!(second[0].session, first[0].session);
    assert_eq!(second[1].session, first[0].session);
    assert_eq!(second[0].session_start, first[0].ts_micros);
    assert_ne!(second[2].session, first[0].session);
    assert_ne!(second[3].session, first[1].session);
    // A batch out of order forms the same visits as one in order.
    let mut late = vec![at(3, 50), at(3, 10), at(3, 30)];
    store.sessionize(&id, timeout, &mut late).await.unwrap();
    assert!(
        late.iter()
            .all(|e| e.session == late[0].session && e.session_start == late[1].ts_micros)
    );
}

async fn erasure_removes_a_visitor_or_a_user_and_keeps_their_ids_known(store: Arc<dyn Store>) {
    let site = with_site(&store, "e").await;
    let other = with_site(&store, "f").await;
    let hour = 3_600_000_000;
    // Visitor 7 over two hours; visitor 8 signs in as "ada" after an anonymous
    // page view; visitor 9 stays.
    let mut events = vec![
        event(1, -2 * hour),
        event(2, -hour),
        event(3, 0),
        event(4, 10),
        event(5, 20),
    ];
    for e in &mut events[..2] {
        e.visitor = 7;
    }
    events[2].visitor = 8;
    events[3].visitor = 8;
    events[3].user_id = "ada".into();
    events[4].visitor = 9;
    store.append(&site, &events).await.unwrap();
    // The same visitor id on another site is someone else.
    let mut elsewhere = event(6, 0);
    elsewhere.visitor = 7;
    store.append(&other, &[elsewhere]).await.unwrap();

    assert_eq!(store.erase(&site, &Erase::Visitor(7)).await.unwrap(), 2);
    assert_eq!(store.erase(&site, &Erase::User("ada".into())).await.unwrap(), 2);
    assert_eq!(
        store.erase(&site, &Erase::User("nobody".into())).await.unwrap(),
        0
    );
    let left: Vec<u64> = scan_all(&store, &site, i64::MIN, i64::MAX)
        .await
        .iter()
        .map(|e| e.visitor)
        .collect();
    assert_eq!(left, vec![9]);
    assert_eq!(scan_all(&store, &other, i64::MIN, i64::MAX).await.len(), 1);
    // A client still retrying an erased event does not bring it back.
    let again = store.append(&site, &[events[0].clone()]).await.unwrap();
    assert_eq!(again, vec![AppendOutcome::Duplicate]);
}

async fn expiry_removes_events_older_than_the_cut(store: Arc<dyn Store>) {
    let site = with_site(&store, "x").await;
    let hour = 3_600_000_000;
    let events = vec![
        event(1, -30 * hour),
        event(2, -26 * hour),
        event(3, -hour),
        event(4, 0),
    ];
    store.append(&site, &events).await.unwrap();
    store.expire(&site, base() - 24 * hour).await.unwrap();
    let left: Vec<i64> = scan_all(&store, &site, i64::MIN, i64::MAX)
        .await
        .iter()
        .map(|e| e.ts_micros - base())
        .collect();
    assert_eq!(left, vec![-hour, 0]);
}
