//! Keys: missing, unknown, revoked, wrong kind, wrong site, wrong origin.

use tally_proto::v1::{self, Metric as M};
use tonic::Code;

use crate::harness::*;

fn report_of(site: &str) -> v1::RunReportRequest {
    v1::RunReportRequest {
        site_id: site.into(),
        metrics: vec![M::Pageviews as i32],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_to_their_sites_and_kinds() {
    let server = TestServer::start().await;
    server.site("a", "UTC").await;
    server.site("b", "UTC").await;
    let ingest_a = server.key(v1::KeyKind::Ingest, &["a"]).await;
    let query_a = server.key(v1::KeyKind::Query, &["a"]).await;
    let now = now_micros();
    let batch = |site: &str| v1::TrackRequest {
        site_id: site.into(),
        events: vec![pageview(now as u128, now, "https://a.example/", "x")],
    };

    // No key, a malformed header, an unknown key.
    let err = server
        .ingest()
        .track(tonic::Request::new(batch("a")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(batch("a"));
    request
        .metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    assert_eq!(
        server.ingest().track(request).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let err = server
        .query()
        .run_report(authed("tly_qry_nope", report_of("a")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "unknown API key");

    // Ingest key: its own site only, and no reading.
    assert_eq!(
        server
            .ingest()
            .track(authed(&ingest_a, batch("a")))
            .await
            .unwrap()
            .into_inner()
            .accepted,
        1
    );
    assert_eq!(
        server
            .ingest()
            .track(authed(&ingest_a, batch("b")))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        server
            .query()
            .run_report(authed(&ingest_a, report_of("a")))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    // Query key: its own site only, no ingest, no admin; the site's existence is not revealed.
    assert!(
        server
            .query()
            .run_report(authed(&query_a, report_of("a")))
            .await
            .is_ok()
    );
    assert_eq!(
        server
            .query()
            .run_report(authed(&query_a, report_of("b")))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        server
            .query()
            .run_report(authed(&query_a, report_of("zzz")))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        server
            .ingest()
            .track(authed(&query_a, batch("a")))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let err = server
        .admin()
        .list_sites(authed(&query_a, v1::ListSitesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Admin API keys administer; revoked keys stop at once.
    let admin_key = server.key(v1::KeyKind::Admin, &[]).await;
    let sites = server
        .admin()
        .list_sites(authed(&admin_key, v1::ListSitesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        sites.sites.iter().map(|s| s.site_id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    let keys = server
        .admin()
        .list_api_keys(authed(ADMIN_KEY, v1::ListApiKeysRequest { site_id: "a".into() }))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 2);
    let query_key_id = keys
        .iter()
        .find(|k| k.kind() == v1::KeyKind::Query)
        .unwrap()
        .key_id
        .clone();
    server
        .admin()
        .revoke_api_key(authed(
            ADMIN_KEY,
            v1::RevokeApiKeyRequest { key_id: query_key_id },
        ))
        .await
        .unwrap();
    let err = server
        .query()
        .run_report(authed(&query_a, report_of("a")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "API key was revoked");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_origins_are_checked_against_the_site() {
    let server = TestServer::start().await;
    server.site("a", "UTC").await;
    let site = v1::Site {
        site_id: "a".into(),
        allowed_origins: vec!["https://a.example".into()],
        ..Default::default()
    };
    let mask = prost_types::FieldMask {
        paths: vec!["allowed_origins".into()],
    };
    server
        .admin()
        .update_site(authed(
            ADMIN_KEY,
            v1::UpdateSiteRequest {
                site: Some(site),
                update_mask: Some(mask),
            },
        ))
        .await
        .unwrap();
    let key = server.key(v1::KeyKind::Ingest, &["a"]).await;
    let now = now_micros();
    let send = |origin: &'static str| {
        let mut request = authed(
            &key,
            v1::TrackRequest {
                site_id: String::new(),
                events: vec![pageview(now as u128, now, "https://a.example/", "x")],
            },
        );
        request.metadata_mut().insert("origin", origin.parse().unwrap());
        request
    };
    assert!(server.ingest().track(send("https://a.example")).await.is_ok());
    let err = server
        .ingest()
        .track(send("https://evil.example"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("https://evil.example"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_settings_are_validated_with_field_violations() {
    use tonic_types::StatusExt;
    let server = TestServer::start().await;
    let site = v1::Site {
        domain: "shop.example".into(),
        time_zone: "Mars/Olympus".into(),
        retention_days: 99_999,
        allowed_origins: vec!["shop.example".into()],
        ..Default::default()
    };
    let err = server
        .admin()
        .create_site(authed(ADMIN_KEY, v1::CreateSiteRequest { site: Some(site) }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        vec!["site.time_zone", "site.allowed_origins[0]", "site.retention_days"]
    );

    let ok = v1::Site {
        domain: "shop.example".into(),
        ..Default::default()
    };
    let created = server
        .admin()
        .create_site(authed(
            ADMIN_KEY,
            v1::CreateSiteRequest {
                site: Some(ok.clone()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            created.site_id.as_str(),
            created.time_zone.as_str(),
            created.retention_days
        ),
        ("shop.example", "UTC", 425)
    );
    let err = server
        .admin()
        .create_site(authed(ADMIN_KEY, v1::CreateSiteRequest { site: Some(ok) }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_site_setting_is_reported_at_once() {
    use tonic_types::StatusExt;
    let server = TestServer::start().await;
    let site = v1::Site {
        time_zone: "Berlin".into(),
        session_timeout_minutes: -1,
        ..Default::default()
    };
    let request = v1::CreateSiteRequest { site: Some(site) };
    let err = server
        .admin()
        .create_site(authed(ADMIN_KEY, request))
        .await
        .unwrap_err();
    let violations = err.get_details_bad_request().unwrap().field_violations;
    let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        vec!["site.domain", "site.time_zone", "site.session_timeout_minutes"]
    );
    assert!(violations[0].description.contains("required"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_and_record_their_last_use() {
    let server = TestServer::start().await;
    server.site("x", "UTC").await;
    let now = now_micros();
    let create = |expire: i64| v1::CreateApiKeyRequest {
        kind: v1::KeyKind::Query as i32,
        site_ids: vec!["x".into()],
        name: "short-lived".into(),
        expire_time: Some(ts(expire)),
    };
    let past = server
        .admin()
        .create_api_key(authed(ADMIN_KEY, create(now - 1_000_000)))
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::InvalidArgument);
    assert!(past.message().contains("expire_time"));

    let expire = now + 1_500_000;
    let created = server
        .admin()
        .create_api_key(authed(ADMIN_KEY, create(expire)))
        .await
        .unwrap()
        .into_inner();
    let key = created.key.unwrap();
    assert_eq!(key.expire_time, Some(ts(expire)));
    assert_eq!(key.last_used_time, None, "a new key was never used");
    let request = || v1::RunReportRequest {
        site_id: "x".into(),
        metrics: vec![v1::Metric::Pageviews as i32],
        ..Default::default()
    };
    server
        .query()
        .run_report(authed(&created.secret, request()))
        .await
        .unwrap();
    let listed = server
        .admin()
        .list_api_keys(authed(ADMIN_KEY, v1::ListApiKeysRequest { site_id: "x".into() }))
        .await
        .unwrap()
        .into_inner();
    let used = listed.keys.iter().find(|k| k.key_id == key.key_id).unwrap();
    let last_used = tally_server::convert::timestamp_to_micros(used.last_used_time.as_ref().unwrap());
    // Kept to the minute.
    assert_eq!(last_used % 60_000_000, 0);
    assert!(last_used <= now_micros() && last_used > now - 60_000_000);

    tokio::time::sleep(std::time::Duration::from_micros(
        (expire - now_micros()).max(0) as u64 + 50_000,
    ))
    .await;
    let expired = server
        .query()
        .run_report(authed(&created.secret, request()))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), Code::Unauthenticated);
    assert!(expired.message().contains("expired"), "{}", expired.message());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_uses_are_written_to_the_store() {
    use tally_server::auth::{Authenticator, hash_secret};
    use tally_server::storage::KeyStore;
    let dir = tempfile::tempdir().unwrap();
    let store =
        std::sync::Arc::new(tally_server::storage::embedded::EmbeddedStore::open(dir.path()).unwrap());
    let secret = "tly_qry_0123456789abcdef";
    store
        .put_key(tally_server::domain::KeyRecord {
            key_id: "key_1".into(),
            kind: v1::KeyKind::Query as i32,
            site_ids: vec!["x".into()],
            secret_hash: hash_secret(secret).to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let auth = Authenticator::new(store.clone(), None);
    auth.authenticate(Some(secret)).await.unwrap();
    assert_eq!(store.get_key("key_1").await.unwrap().unwrap().last_used_micros, 0);
    auth.flush_last_used().await.unwrap();
    let stored = store.get_key("key_1").await.unwrap().unwrap().last_used_micros;
    let now = now_micros();
    assert!(stored > now - 60_000_000 && stored <= now, "{stored}");
}
