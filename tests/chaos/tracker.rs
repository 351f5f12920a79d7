//! A tracker process for the chaos suite.
//!
//! `chaos-tracker ENDPOINT KEY QUEUE_DIR LOG FIRST COUNT [--drain]` tracks events
//! with `seq` properties FIRST..FIRST+COUNT. Before each `track` it appends
//! `intent SEQ` to LOG, after it `tracked SEQ ID`, so the test knows what was
//! attempted and what the tracker accepted even when the process is killed in
//! between. With `--drain` it tracks nothing and exits 0 once the queue is empty.

use std::io::Write;
use std::time::Duration;

use tally_sdk::{RetryPolicy, TrackEvent, Tracker, TrackerConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, key, queue_dir, log, first, count, rest @ ..] = args.as_slice() else {
        eprintln!("usage: chaos-tracker ENDPOINT KEY QUEUE_DIR LOG FIRST COUNT [--drain]");
        std::process::exit(2);
    };
    let drain = rest.iter().any(|a| a == "--drain");
    let mut config = TrackerConfig::new(endpoint.clone(), key.clone(), queue_dir.clone());
    config.batch_size = 5;
    config.flush_interval = Duration::from_millis(5);
    config.request_timeout = Duration::from_millis(500);
    config.retry = RetryPolicy {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
    };
    let tracker = Tracker::start(config).expect("tracker starts");

    if drain {
        tracker
            .flush(Duration::from_secs(120))
            .await
            .expect("queue drained");
        return;
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log opens");
    let first: u64 = first.parse().expect("FIRST");
    let count: u64 = count.parse().expect("COUNT");
    for seq in first..first + count {
        // One write per line, so a kill leaves whole lines (or none).
        log.write_all(format!("intent {seq}\n").as_bytes())
            .expect("log write");
        let id = tracker
            .track(TrackEvent::custom("chaos").number("seq", seq as f64))
            .expect("tracked");
        log.write_all(format!("tracked {seq} {id}\n").as_bytes())
            .expect("log write");
        tokio::task::yield_now().await;
    }
    // Keep sending until killed (or until everything is delivered).
    let _ = tracker.flush(Duration::from_secs(60)).await;
}
