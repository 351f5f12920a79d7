//! A backend service that reports server-side events in bulk over a client stream,
//! and checks the verdicts.
//!
//! `TALLY_ENDPOINT=http://127.0.0.1:7750 TALLY_KEY=tly_ing_... cargo run -p tally-sdk --example backend_service`

use std::time::SystemTime;

use tally_sdk::{Client, proto as v1};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("TALLY_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:7750".into());
    let key = std::env::var("TALLY_KEY")?;
    let client = Client::builder(endpoint).key(key).build()?;

    // 10 batches of 100 "invoice_paid" events, as a billing job would send them.
    let batches: Vec<v1::TrackRequest> = (0..10)
        .map(|batch| v1::TrackRequest {
            site_id: String::new(), // the ingest key's site
            events: (0..100)
                .map(|i| v1::Event {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    timestamp: Some(SystemTime::now().into()),
                    r#type: v1::EventType::Custom as i32,
                    name: "invoice_paid".into(),
                    user_id: format!("customer-{}", batch * 100 + i),
                    revenue: Some(v1::Money {
                        currency_code: "EUR".into(),
                        units: 49,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .collect(),
        })
        .collect();

    // Safe to resend after any error: the server recognises the ids.
    let summary = client.track_stream(tokio_stream::iter(batches)).await?;
    println!(
        "sent {} messages: {} accepted, {} duplicates, {} rejected",
        summary.requests, summary.accepted, summary.duplicates, summary.rejected
    );
    for rejected in summary.not_accepted.iter().filter_map(|r| r.result.as_ref()) {
        println!(
            "  {} {:?}: {} ({})",
            rejected.event_id,
            rejected.verdict(),
            rejected.message,
            rejected.field
        );
    }
    Ok(())
}
