//! Tenant isolation: every RPC, called with keys of another site and with keys
//! of the wrong kind, is refused; the same calls with the right key pass.

use futures::StreamExt;
use tally_proto::v1;
use tonic::Code;

use crate::harness::*;

/// Calls one RPC for `site` with `key`; `Ok(())` when it was allowed.
async fn call(server: &TestServer, rpc: &str, site: &str, key: &str) -> Result<(), tonic::Status> {
    let now = now_micros();
    let range = v1::TimeRange {
        start_time: Some(ts(now - 3_600_000_000)),
        end_time: Some(ts(now + 60_000_000)),
    };
    let event = pageview(
        now as u128 + rand::random::<u16>() as u128,
        now,
        "https://t.example/",
        "t",
    );
    let track = v1::TrackRequest {
        site_id: site.into(),
        events: vec![event],
    };
    match rpc {
        "Track" => server.ingest().track(authed(key, track)).await.map(drop),
        "TrackStream" => server
            .ingest()
            .track_stream(authed(key, futures::stream::iter([track])))
            .await
            .map(drop),
        "RunReport" => server
            .query()
            .run_report(authed(
                key,
                v1::RunReportRequest {
                    site_id: site.into(),
                    metrics: vec![v1::Metric::Visitors as i32],
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        "RunRealtimeReport" => server
            .query()
            .run_realtime_report(authed(
                key,
                v1::RunRealtimeReportRequest {
                    site_id: site.into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        "WatchRealtime" => {
            let mut stream = server
                .query()
                .watch_realtime(authed(
                    key,
                    v1::WatchRealtimeRequest {
                        site_id: site.into(),
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            // Allowed: the first message is a snapshot.
            stream.next().await.expect("a first message").map(drop)
        }
        "RunFunnelReport" => {
            let step = |path: &str| v1::FunnelStep {
                r#match: Some(v1::funnel_step::Match::Page(v1::StringMatch {
                    match_type: v1::MatchType::Exact as i32,
                    value: path.into(),
                    case_sensitive: false,
                })),
                ..Default::default()
            };
            server
                .query()
                .run_funnel_report(authed(
                    key,
                    v1::RunFunnelReportRequest {
                        site_id: site.into(),
                        steps: vec![step("/"), step("/b")],
                        ..Default::default()
                    },
                ))
                .await
                .map(drop)
        }
        "GetMetadata" => server
            .query()
            .get_metadata(authed(key, v1::GetMetadataRequest { site_id: site.into() }))
            .await
            .map(drop),
        "ListSessions" => server
            .sessions()
            .list_sessions(authed(
                key,
                v1::ListSessionsRequest {
                    site_id: site.into(),
                    time_range: Some(range),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        "GetSession" => {
            // A well-formed id that does not exist: allowed means NOT_FOUND, not a refusal.
            match server
                .sessions()
                .get_session(authed(
                    key,
                    v1::GetSessionRequest {
                        site_id: site.into(),
                        session_id: "0000000000000001-0000000000000001".into(),
                    },
                ))
                .await
            {
                Err(status) if status.code() == Code::NotFound => Ok(()),
                other => other.map(drop),
            }
        }
        "ListVisitorSessions" => server
            .sessions()
            .list_visitor_sessions(authed(
                key,
                v1::ListVisitorSessionsRequest {
                    site_id: site.into(),
                    user_id: "u1".into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        "GetSite" => server
            .admin()
            .get_site(authed(key, v1::GetSiteRequest { site_id: site.into() }))
            .await
            .map(drop),
        "ListSites" => server
            .admin()
            .list_sites(authed(key, v1::ListSitesRequest {}))
            .await
            .map(drop),
        "UpdateSite" => server
            .admin()
            .update_site(authed(
                key,
                v1::UpdateSiteRequest {
                    site: Some(v1::Site {
                        site_id: site.into(),
                        session_timeout_minutes: 30,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["session_timeout_minutes".into()],
                    }),
                },
            ))
            .await
            .map(drop),
        "CreateSite" => server
            .admin()
            .create_site(authed(
                key,
                v1::CreateSiteRequest {
                    site: Some(v1::Site {
                        domain: format!("new-{}.example", rand::random::<u32>()),
                        ..Default::default()
                    }),
                },
            ))
            .await
            .map(drop),
        "CreateApiKey" => server
            .admin()
            .create_api_key(authed(
                key,
                v1::CreateApiKeyRequest {
                    kind: v1::KeyKind::Query as i32,
                    site_ids: vec![site.into()],
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        "ListApiKeys" => server
            .admin()
            .list_api_keys(authed(key, v1::ListApiKeysRequest { site_id: site.into() }))
            .await
            .map(drop),
        "RevokeApiKey" => match server
            .admin()
            .revoke_api_key(authed(
                key,
                v1::RevokeApiKeyRequest {
                    key_id: "key_000000000000".into(),
                },
            ))
            .await
        {
            Err(status) if status.code() == Code::NotFound => Ok(()),
            other => other.map(drop),
        },
        "DeleteVisitorData" => server
            .admin()
            .delete_visitor_data(authed(
                key,
                v1::DeleteVisitorDataRequest {
                    site_id: site.into(),
                    user_id: "nobody".into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        "ExportEvents" => {
            let mut stream = server
                .admin()
                .export_events(authed(
                    key,
                    v1::ExportEventsRequest {
                        site_id: site.into(),
                        time_range: Some(range),
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner();
            match stream.next().await {
                Some(Err(status)) => Err(status),
                _ => Ok(()),
            }
        }
        other => panic!("unknown rpc {other}"),
    }
}

const INGEST_RPCS: [&str; 2] = ["Track", "TrackStream"];
const READ_RPCS: [&str; 8] = [
    "RunReport",
    "RunRealtimeReport",
    "WatchRealtime",
    "RunFunnelReport",
    "GetMetadata",
    "ListSessions",
    "GetSession",
    "ListVisitorSessions",
];
const ADMIN_RPCS: [&str; 9] = [
    "GetSite",
    "ListSites",
    "UpdateSite",
    "CreateSite",
    "CreateApiKey",
    "ListApiKeys",
    "RevokeApiKey",
    "DeleteVisitorData",
    "ExportEvents",
];

fn refused(result: &Result<(), tonic::Status>) -> bool {
    matches!(result, Err(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_other_sites_and_wrong_kinds() {
    let server = TestServer::start().await;
    check_isolation(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_other_sites_and_wrong_kinds_on_scylla_and_redis() {
    let options = crate::scylla::fresh_options("tenancy");
    let server = TestServer::start_scale_out(&options).await;
    check_isolation(&server).await;
    server.stop().await;
    let store = tally_server::storage::scylla::ScyllaStore::connect(&options)
        .await
        .unwrap();
    crate::scylla::drop_keyspace(&store, &options.keyspace).await;
}

async fn check_isolation(server: &TestServer) {
    server.site("a", "UTC").await;
    server.site("b", "UTC").await;
    let ingest_a = server.key(v1::KeyKind::Ingest, &["a"]).await;
    let query_a = server.key(v1::KeyKind::Query, &["a"]).await;
    let admin = server.key(v1::KeyKind::Admin, &[]).await;
    let all: Vec<&str> = INGEST_RPCS
        .iter()
        .chain(&READ_RPCS)
        .chain(&ADMIN_RPCS)
        .copied()
        .collect();
    assert_eq!(all.len(), 19, "every RPC of the four services");

    let mut refusals = 0;
    for rpc in &all {
        // Site a's keys on site b: refused, whatever the kind.
        for (name, key) in [("ingest key of a", &ingest_a), ("query key of a", &query_a)] {
            let result = call(server, rpc, "b", key).await;
            assert!(refused(&result), "{rpc} on site b with the {name}: {result:?}");
            refusals += 1;
        }
        // On its own site, a key of the wrong kind is refused too.
        let right_kind = if INGEST_RPCS.contains(rpc) {
            &ingest_a
        } else if READ_RPCS.contains(rpc) {
            &query_a
        } else {
            &admin
        };
        for (name, key) in [("ingest key", &ingest_a), ("query key", &query_a)] {
            if key == right_kind {
                continue;
            }
            let result = call(server, rpc, "a", key).await;
            assert!(refused(&result), "{rpc} on site a with its {name}: {result:?}");
            refusals += 1;
        }
        // The right key passes (so a refusal above is about the key, not the call).
        let result = call(server, rpc, "a", right_kind).await;
        assert!(result.is_ok(), "{rpc} on site a with the right key: {result:?}");
    }
    assert_eq!(refusals, 19 * 2 + 19 + 9);
}
