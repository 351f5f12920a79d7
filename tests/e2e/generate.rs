//! `tally generate` as a user runs it: the same seed gives the same events,
//! sending them again gives duplicates, and rejections fail the command.

use std::process::{Command, Output, Stdio};

use crate::process::*;

fn generate(args: &[&str]) -> Output {
    Command::new(tally_binary())
        .arg("generate")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn summary(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "tally generate failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_same_seed_writes_the_same_events() {
    let lines = |seed: &str| {
        let output = generate(&[
            "--seed",
            seed,
            "--events",
            "3000",
            "--end",
            "2026-04-01T00:00:00Z",
            "--site",
            "shop",
            "--output",
            "-",
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    };
    let first = lines("7");
    assert_eq!(first.iter().filter(|b| **b == b'\n').count(), 3000);
    assert_eq!(first, lines("7"), "same seed, same bytes");
    assert_ne!(first, lines("8"));
    let event: serde_json::Value =
        serde_json::from_slice(first.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let id = uuid::Uuid::parse_str(event["event_id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7, "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_again_gives_duplicates_and_rejections_fail() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::start(dir.path()).await;
    let target = format!("http://{}", tally.addr);
    // An end an hour ago: the same events both times, all within ingest's limits.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let end = chrono::DateTime::from_timestamp((now - 3600) as i64, 0)
        .unwrap()
        .to_rfc3339();
    let send = |extra: &[&str]| {
        let mut args = vec![
            "--target",
            &target,
            "--key",
            ADMIN_KEY,
            "--site",
            "gen",
            "--create-site",
            "--seed",
            "11",
            "--events",
            "2000",
            "--days",
            "2",
            "--batch-size",
            "250",
        ];
        args.extend_from_slice(extra);
        generate(&args)
    };

    let first = summary(&send(&["--end", &end]));
    assert_eq!(
        (
            first["sent"].as_u64(),
            first["accepted"].as_u64(),
            first["rejected"].as_u64()
        ),
        (Some(2000), Some(2000), Some(0)),
        "{first}"
    );
    let again = summary(&send(&["--end", &end]));
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(2000)),
        "{again}"
    );
    let mut admin = tally_proto::v1::admin_service_client::AdminServiceClient::new(tally.channel().await);
    let at = |seconds: u64| {
        Some(prost_types::Timestamp {
            seconds: seconds as i64,
            nanos: 0,
        })
    };
    let request = tally_proto::v1::ExportEventsRequest {
        site_id: "gen".into(),
        time_range: Some(tally_proto::v1::TimeRange {
            start_time: at(now - 4 * 86_400),
            end_time: at(now),
        }),
        include_bots: true,
        chunk_size: 10_000,
    };
    let mut chunks = admin
        .export_events(authed(ADMIN_KEY, request))
        .await
        .unwrap()
        .into_inner();
    let mut stored = 0;
    while let Some(chunk) = chunks.message().await.unwrap() {
        stored += chunk.events.len();
    }
    assert_eq!(stored, 2000, "stored once");

    // Events from two months ago are refused one by one: the command fails,
    // unless rejections are expected.
    let old = chrono::DateTime::from_timestamp((now - 60 * 86_400) as i64, 0)
        .unwrap()
        .to_rfc3339();
    let refused = send(&["--end", &old]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("the server rejected 2000 events"), "{stderr}");
    let allowed = summary(&send(&["--end", &old, "--allow-rejected"]));
    assert_eq!(allowed["rejected"].as_u64(), Some(2000), "{allowed}");
}
