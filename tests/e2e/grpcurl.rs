//! grpcurl against the real binary: reflection lists the services, `describe`
//! reads like documentation, and the README's first five minutes work.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::process::*;

fn grpcurl() -> PathBuf {
    if let Ok(path) = std::env::var("GRPCURL") {
        return PathBuf::from(path);
    }
    let in_go_bin = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join("go/bin/grpcurl");
    if in_go_bin.exists() {
        return in_go_bin;
    }
    PathBuf::from("grpcurl")
}

fn run(args: &[&str]) -> String {
    let output = Command::new(grpcurl())
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("grpcurl not found ({err}); tests/setup.sh installs it"));
    assert!(
        output.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_services_and_describe_shows_docs() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::start(dir.path()).await;
    let listed = run(&["-plaintext", &tally.addr, "list"]);
    let services: Vec<&str> = listed.lines().collect();
    for service in [
        "tally.v1.IngestService",
        "tally.v1.SessionService",
        "tally.v1.QueryService",
        "tally.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&service), "{service} in {services:?}");
    }
    assert!(
        services.iter().any(|s| s.starts_with("grpc.reflection.")),
        "{services:?}"
    );

    let described = run(&["-plaintext", &tally.addr, "describe", "tally.v1.Event"]);
    assert!(described.contains("// Client-generated unique id"), "{described}");
    let method = run(&[
        "-plaintext",
        &tally.addr,
        "describe",
        "tally.v1.IngestService.Track",
    ]);
    assert!(
        method.contains("valid ones in the same batch are stored"),
        "{method}"
    );

    let health = run(&["-plaintext", &tally.addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_five_minutes_with_grpcurl() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::start(dir.path()).await;
    let admin = format!("authorization: Bearer {ADMIN_KEY}");
    let call = |auth: &str, body: &str, method: &str| -> Value {
        let out = run(&["-plaintext", "-H", auth, "-d", body, &tally.addr, method]);
        serde_json::from_str(&out).unwrap()
    };
    let site = call(
        &admin,
        r#"{"site":{"domain":"example.com","time_zone":"Europe/Berlin"}}"#,
        "tally.v1.AdminService/CreateSite",
    );
    assert_eq!(site["siteId"], "example.com");
    let key = call(
        &admin,
        r#"{"kind":"KEY_KIND_INGEST","site_ids":["example.com"]}"#,
        "tally.v1.AdminService/CreateApiKey",
    );
    let secret = key["secret"].as_str().unwrap().to_owned();
    let ingest = format!("authorization: Bearer {secret}");
    let now = now_timestamp().seconds;
    let events: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"event_id":"{}","timestamp":"{}","type":"EVENT_TYPE_PAGEVIEW","url":"https://example.com/{}","anonymous_id":"visitor-{}"}}"#,
                uuid::Uuid::now_v7(),
                rfc3339(now - i),
                if i == 0 { "pricing" } else { "" },
                i % 2
            )
        })
        .collect();
    let body = format!(r#"{{"events":[{}]}}"#, events.join(","));
    let tracked = call(&ingest, &body, "tally.v1.IngestService/Track");
    assert_eq!(tracked["accepted"], 3, "{tracked}");

    let report = call(
        &admin,
        r#"{"site_id":"example.com","metrics":["METRIC_PAGEVIEWS","METRIC_VISITORS"],"dimensions":[{"standard":"DIMENSION_PAGE"}],"date_ranges":[{"start_date":"yesterday","end_date":"today"}]}"#,
        "tally.v1.QueryService/RunReport",
    );
    let rows: Vec<(String, String, String)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dimensionValues"][0].as_str().unwrap().to_owned(),
                r["metricValues"][0]["intValue"].as_str().unwrap().to_owned(),
                r["metricValues"][1]["intValue"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("/".into(), "2".into(), "2".into()),
            ("/pricing".into(), "1".into(), "1".into())
        ]
    );
}

fn rfc3339(unix_seconds: i64) -> String {
    let output = Command::new("date")
        .args(["-u", "-d", &format!("@{unix_seconds}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}
