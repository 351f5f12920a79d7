//! How fast `Tracker::track` queues events, and how much disk a queued event takes,
//! next to the floor: one `write` per event of the same encoded bytes to a plain file.
//!
//! Run: `cargo bench -p tally-sdk --bench tracker` (`BENCH_EVENTS=N`, default 100,000).

use std::io::Write;
use std::time::{Duration, Instant};

use prost::Message;
use tally_sdk::{AppContext, TrackEvent, Tracker, TrackerConfig};

fn event(i: usize) -> TrackEvent {
    TrackEvent::screen(format!("Screen{}", i % 20))
        .prop("plan", "pro")
        .number("items", (i % 7) as f64)
}

fn main() {
    let total: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens here: every event stays queued, so only queueing is measured.
        let mut config = TrackerConfig::new("http://127.0.0.1:9", "tly_ing_bench", dir.path());
        config.max_queue_events = total + 1;
        config.batch_size = usize::MAX;
        config.flush_interval = Duration::from_secs(3600);
        config.context = AppContext {
            app_version: "4.1.0".into(),
            os_name: "Android".into(),
            os_version: "14".into(),
            device_model: "Pixel 8".into(),
            locale: "de-DE".into(),
            ..Default::default()
        };
        let tracker = Tracker::start(config).unwrap();
        let started = Instant::now();
        for i in 0..total {
            tracker.track(event(i)).unwrap();
        }
        let tracked = started.elapsed();
        let queue_bytes = std::fs::metadata(dir.path().join("queue.log")).unwrap().len();

        // The floor: the same kind of encoded event, one write each, to a plain file.
        let sample = tally_sdk::proto::Event {
            event_id: uuid::Uuid::now_v7().to_string(),
            r#type: tally_sdk::proto::EventType::ScreenView as i32,
            screen: "Screen7".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut plain = std::fs::File::create(dir.path().join("plain.log")).unwrap();
        let started = Instant::now();
        for _ in 0..total {
            plain.write_all(&sample).unwrap();
        }
        let floor = started.elapsed();

        let rate = |d: Duration| total as f64 / d.as_secs_f64();
        println!("tracker benchmark: {total} events");
        println!(
            "  track() into the durable queue: {:>10.0} events/s",
            rate(tracked)
        );
        println!(
            "  plain write() per event (floor): {:>10.0} events/s ({:.0}% of the floor)",
            rate(floor),
            100.0 * rate(tracked) / rate(floor)
        );
        println!(
            "  queue on disk: {:.0} bytes per event (id, timestamp, session, context, properties)",
            queue_bytes as f64 / total as f64
        );
    });
}
