//! SIGTERM stops the server cleanly, and the data is there on the next start.

use std::time::Duration;

use tally_proto::v1;

use crate::process::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut tally = Tally::start(dir.path()).await;
    let key = site_with_ingest_key(tally.channel().await, "s").await;
    let mut client = v1::ingest_service_client::IngestServiceClient::new(tally.channel().await);
    let event = v1::Event {
        event_id: uuid::Uuid::now_v7().to_string(),
        timestamp: Some(now_timestamp()),
        r#type: v1::EventType::Pageview as i32,
        url: "https://s.example/".into(),
        ..Default::default()
    };
    let request = authed(
        &key,
        v1::TrackRequest {
            site_id: "s".into(),
            events: vec![event.clone()],
        },
    );
    assert_eq!(client.track(request).await.unwrap().into_inner().accepted, 1);

    tally.terminate();
    let status = tally.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");

    let tally = Tally::start(dir.path()).await;
    let mut client = v1::ingest_service_client::IngestServiceClient::new(tally.channel().await);
    let request = authed(
        &key,
        v1::TrackRequest {
            site_id: "s".into(),
            events: vec![event],
        },
    );
    assert_eq!(
        client.track(request).await.unwrap().into_inner().duplicates,
        1,
        "the event is still stored"
    );
}

#[tokio::test]
async fn bad_configuration_is_reported_before_start() {
    let output = std::process::Command::new(tally_binary())
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid setting listen"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tally.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nmystery = 1\n").unwrap();
    let output = std::process::Command::new(tally_binary())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mystery"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_open_stream_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut tally = Tally::start(dir.path()).await;
    let key = site_with_ingest_key(tally.channel().await, "s").await;
    let mut client = v1::ingest_service_client::IngestServiceClient::new(tally.channel().await);
    let batch = |n: usize| v1::TrackRequest {
        site_id: "s".into(),
        events: (0..n)
            .map(|_| v1::Event {
                event_id: uuid::Uuid::now_v7().to_string(),
                timestamp: Some(now_timestamp()),
                r#type: v1::EventType::Pageview as i32,
                url: "https://s.example/".into(),
                ..Default::default()
            })
            .collect(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(batch(10)).await.unwrap();
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let call = tokio::spawn(async move { client.track_stream(authed(&key, stream)).await });

    // Wait until the stream's first message is stored, then ask the server to stop.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while export_recent(tally.channel().await, "s").await.len() < 10 {
        assert!(std::time::Instant::now() < deadline, "first message not stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tally.terminate();
    // Give the signal a moment to land; if it lands later, the test still holds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(batch(5)).await.unwrap();
    drop(tx);

    let response = call.await.unwrap().unwrap().into_inner();
    assert_eq!(
        (response.requests, response.accepted),
        (2, 15),
        "the open stream finished"
    );
    assert!(tally.wait_exit(Duration::from_secs(20)).success());
}
