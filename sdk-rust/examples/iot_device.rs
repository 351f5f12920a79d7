//! An IoT-style device: a small durable queue, small batches, long offline periods.
//! Readings survive reboots and are sent when the network is back.
//!
//! `TALLY_ENDPOINT=http://127.0.0.1:7750 TALLY_KEY=tly_ing_... cargo run -p tally-sdk --example iot_device`

use std::time::Duration;

use tally_sdk::{AppContext, TrackEvent, Tracker, TrackerConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("TALLY_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:7750".into());
    let key = std::env::var("TALLY_KEY")?;
    let queue_dir = std::env::temp_dir().join("tally-iot-queue");

    let mut config = TrackerConfig::new(endpoint, key, &queue_dir);
    config.max_queue_events = 500; // at most 500 readings wait; when full, new ones are dropped and counted
    config.batch_size = 10;
    config.flush_interval = Duration::from_secs(30);
    config.context = AppContext {
        device_model: "thermo-3".into(),
        device_manufacturer: "Acme".into(),
        app_version: "1.4.2".into(),
        os_name: "Linux".into(),
        ..Default::default()
    };
    let tracker = Tracker::start(config)?;

    for minute in 0..20 {
        let celsius = 20.0 + f64::from(minute % 5) * 0.5;
        tracker.track(
            TrackEvent::custom("reading")
                .number("celsius", celsius)
                .prop("room", "lab"),
        )?;
    }
    println!("queued; stats: {:?}", tracker.stats());

    // Before powering down: give the network a few seconds, keep the rest for next boot.
    match tracker.shutdown(Duration::from_secs(5)).await {
        Ok(()) => println!("all readings delivered"),
        Err(err) => println!("{err}; they will be sent after the next start"),
    }
    Ok(())
}
