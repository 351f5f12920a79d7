//! `kill -9` right after acknowledgements, restart: every acknowledged event is there.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tally_proto::v1;

use crate::process::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut tally = Tally::start(dir.path()).await;
    let key = site_with_ingest_key(tally.channel().await, "s").await;

    // Four writers send batches of 100 until 20,000 events are acknowledged;
    // the process is killed while they are still sending.
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut writers = Vec::new();
    for writer in 0..4u128 {
        let channel = tally.channel().await;
        let (acked, key, enough) = (acked.clone(), key.clone(), enough_tx.clone());
        writers.push(tokio::spawn(async move {
            let mut client = v1::ingest_service_client::IngestServiceClient::new(channel);
            for batch in 0u128.. {
                let events: Vec<v1::Event> = (0..100u128)
                    .map(|i| v1::Event {
                        event_id: uuid::Uuid::from_u128((writer << 64) | (batch * 100 + i + 1)).to_string(),
                        timestamp: Some(now_timestamp()),
                        r#type: v1::EventType::Pageview as i32,
                        url: "https://s.example/".into(),
                        anonymous_id: format!("w{writer}"),
                        ..Default::default()
                    })
                    .collect();
                let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
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
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20_000);

    let tally = Tally::start(dir.path()).await;
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
}
