//! `kill -9` during ingest, restart, on both backends: every acknowledged
//! event is there, and resending every batch (acknowledged or not, as a
//! client that never saw its answer does) stores each event exactly once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tally_proto::v1;

use crate::process::*;

/// Four writers' batches of 100: writer w's batch b, the same events each
/// time it is built (a resend carries the events as first sent, timestamps
/// included, as the SDKs' queues do).
fn batch(start: prost_types::Timestamp, writer: u128, batch: u128) -> Vec<v1::Event> {
    (0..100u128)
        .map(|i| v1::Event {
            event_id: uuid::Uuid::from_u128((writer << 64) | (batch * 100 + i + 1)).to_string(),
            timestamp: Some(prost_types::Timestamp {
                seconds: start.seconds,
                nanos: ((batch * 100 + i) % 1_000_000) as i32 * 1_000,
            }),
            r#type: v1::EventType::Pageview as i32,
            url: "https://s.example/".into(),
            anonymous_id: format!("w{writer}"),
            ..Default::default()
        })
        .collect()
}

/// Runs the drill on the server `start` starts (the same store each time).
async fn kill_9_during_ingest<F, Fut>(start: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Tally>,
{
    let mut tally = start().await;
    let key = site_with_ingest_key(tally.channel().await, "s").await;
    let start_time = now_timestamp();

    // Four writers send batches of 100 until 20,000 events are acknowledged;
    // the process is killed while they are still sending.
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let sent_batches: Arc<Mutex<Vec<(u128, u128)>>> = Arc::default();
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut writers = Vec::new();
    for writer in 0..4u128 {
        let channel = tally.channel().await;
        let (acked, sent_batches, key, enough) = (
            acked.clone(),
            sent_batches.clone(),
            key.clone(),
            enough_tx.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut client = v1::ingest_service_client::IngestServiceClient::new(channel);
            for b in 0u128.. {
                let events = batch(start_time, writer, b);
                let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
                sent_batches.lock().unwrap().push((writer, b));
                let request = authed(
                    &key,
                    v1::TrackRequest {
                        site_id: "s".into(),
                        events,
                    },
                );
                let Ok(response) = client.track(request).await else {
                    return;
                };
                let mut acked = acked.lock().unwrap();
                for result in response.into_inner().results {
                    assert_eq!(result.verdict(), v1::Verdict::Accepted, "{result:?}");
                    acked.insert(ids[result.index as usize].clone());
                }
                if acked.len() >= 20_000 {
                    let _ = enough.try_send(());
                }
            }
        }));
    }
    enough_rx.recv().await.unwrap();
    tally.child.kill().unwrap(); // SIGKILL
    tally.child.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    drop(tally);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20_000);

    let tally = start().await;
    let stored: Vec<String> = export_recent(tally.channel().await, "s")
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let stored_set: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(stored_set.len(), stored.len(), "no event stored twice");
    let missing = acked.difference(&stored_set).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged events lost",
        acked.len()
    );
    eprintln!(
        "acknowledged {}, stored {} (unacknowledged in flight: {})",
        acked.len(),
        stored.len(),
        stored.len() - acked.len()
    );

    // Every batch sent before the kill is sent again: each event is stored
    // now (accepted, if the kill took it) or was (a duplicate), never twice.
    let sent: Vec<(u128, u128)> = sent_batches.lock().unwrap().clone();
    let mut client = v1::ingest_service_client::IngestServiceClient::new(tally.channel().await);
    let mut accepted_again = 0;
    let mut all_ids = HashSet::new();
    for (writer, b) in &sent {
        let events = batch(start_time, *writer, *b);
        all_ids.extend(events.iter().map(|e| e.event_id.clone()));
        // On the scale-out backend a batch the kill caught mid-write is still
        // claimed for a while: UNAVAILABLE with RetryInfo, retried as the SDKs do.
        let mut attempts = 0;
        let response = loop {
            let request = authed(
                &key,
                v1::TrackRequest {
                    site_id: "s".into(),
                    events: events.clone(),
                },
            );
            match client.track(request).await {
                Ok(response) => break response.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable && attempts < 120 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(status) => panic!("resend failed: {status:?}"),
            }
        };
        for result in &response.results {
            let verdict = result.verdict();
            assert!(
                matches!(verdict, v1::Verdict::Accepted | v1::Verdict::Duplicate),
                "{result:?}"
            );
        }
        accepted_again += response.accepted;
    }
    let stored: Vec<String> = export_recent(tally.channel().await, "s")
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let stored_again: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(
        stored_again.len(),
        stored.len(),
        "no event stored twice after the resend"
    );
    assert_eq!(stored_again, all_ids, "every event sent is stored once");
    assert_eq!(
        accepted_again as usize,
        all_ids.len() - stored_set.len(),
        "only the events the kill took were accepted again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    kill_9_during_ingest(|| Tally::start(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_on_the_scale_out_backend() {
    let args = crate::scale_out::args(&format!("e2e_kill_{}", std::process::id()));
    kill_9_during_ingest(|| Tally::start_with_args(&args)).await;
}
