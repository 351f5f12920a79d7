//! Fuzz target: any bytes as a `tally.v1.TrackRequest`; every event goes
//! through the ingest pipeline (validation and enrichment) as a native app's
//! and as a browser's, then accepted events are formed into visits and read
//! back as reports and exports read them.
//!
//! Must never panic. Checks what must hold for any input: the pipeline gives
//! the same answer twice (its caches change nothing), accepted events have a
//! 16-byte id and a timestamp inside the accepted window, and survive the
//! store's encoding unchanged.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tally_proto::v1;
use tally_server::domain::StoredEvent;
use tally_server::pipeline::IngestLimits;
use tally_server::query::dims::Dim;
use tally_server::sessions::{self, VisitFacts, VisitorVisits};

fuzz_target!(
    init: tally_fuzz::write_seeds_if_asked(tally_fuzz::track_request_seeds),
    |data: &[u8]| {
        let Ok(request) = v1::TrackRequest::decode(data) else {
            return;
        };
        let pipeline = tally_fuzz::pipeline();
        for facts in tally_fuzz::facts() {
            let mut accepted = Vec::new();
            for event in &request.events {
                let first = pipeline.run(event, facts);
                assert_eq!(first, pipeline.run(event, facts), "the same event twice");
                if let Ok(stored) = first {
                    check_accepted(&stored);
                    accepted.push(stored);
                }
            }
            read_back(&mut accepted);
        }
    }
);

fn check_accepted(stored: &StoredEvent) {
    let limits = IngestLimits::default();
    let now = tally_fuzz::NOW_MICROS;
    assert_eq!(stored.event_id.len(), 16);
    assert!(stored.ts_micros >= now - limits.max_past_secs * 1_000_000);
    assert!(stored.ts_micros <= now + limits.max_future_secs * 1_000_000);
    let decoded = StoredEvent::decode(stored.encode_to_vec().as_slice()).expect("stored event decodes");
    assert_eq!(&decoded, stored, "stored event round trip");
}

/// Forms visits as the store does, then reads every dimension of every event
/// (with its visit's entry and exit page) and converts it for export.
fn read_back(events: &mut [StoredEvent]) {
    let mut visitors: HashMap<u64, VisitorVisits> = HashMap::new();
    for i in sessions::batch_order(events) {
        let state = visitors.entry(events[i].visitor).or_default();
        sessions::assign(state, &mut events[i], 30 * 60_000_000);
    }
    let mut visits: HashMap<u64, VisitFacts> = HashMap::new();
    for e in events.iter() {
        assert_ne!(e.session, 0, "every event is in a visit");
        visits.entry(e.session).or_default().add(e);
    }
    let tz = chrono_tz::Tz::Europe__Berlin;
    for e in events.iter() {
        let visit = visits.get(&e.session);
        for number in 0..40 {
            let Ok(d) = v1::Dimension::try_from(number) else {
                continue;
            };
            std::hint::black_box(Dim::Standard(d).value_with(e, tz, "range", visit));
        }
        for key in e.properties.keys() {
            std::hint::black_box(Dim::Property(key.clone()).value_with(e, tz, "range", visit));
        }
        std::hint::black_box(tally_server::convert::recorded_event(e));
    }
}
