//! Fuzz target: any bytes as a `tally.v1.RunReportRequest`, planned (metrics,
//! dimensions, date ranges and comparisons in the request's time zone, order,
//! limits) and its filter and conversion goal compiled, then evaluated on
//! events made by the ingest pipeline.
//!
//! Must never panic; invalid requests are errors. Checks what a plan promises:
//! 1-10 distinct metrics, at least one date range, each range a non-empty span
//! of instants, comparisons one per range, a limit of 1-100,000.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tally_proto::v1;
use tally_server::query::filter::Predicate;
use tally_server::query::plan::{self, GoalTest, SortKey};

fuzz_target!(
    init: tally_fuzz::write_seeds_if_asked(tally_fuzz::report_request_seeds),
    |data: &[u8]| {
        let Ok(request) = v1::RunReportRequest::decode(data) else {
            return;
        };
        let events = tally_fuzz::sample_stored_events();
        // The filter and goal alone, so that they are fuzzed even when the
        // rest of the request is invalid.
        if let Some(Ok(filter)) = request.filter.as_ref().map(|f| Predicate::compile(f, "filter")) {
            for e in events {
                std::hint::black_box(filter.eval(e, chrono_tz::Tz::UTC));
            }
            std::hint::black_box((filter.single_dim(), filter.uses_visit_level()));
        }
        if let Some(Ok(goal)) = request.conversion_goal.as_ref().map(|g| GoalTest::compile(g, "goal")) {
            for e in events {
                std::hint::black_box(goal.matches(e));
            }
        }
        let Ok(plan) = plan::plan(&tally_fuzz::site(), &request, tally_fuzz::NOW_MICROS) else {
            return;
        };
        assert!((1..=10).contains(&plan.metrics.len()));
        assert!(plan.metrics.iter().enumerate().all(|(i, m)| !plan.metrics[..i].contains(m)));
        assert!(!plan.ranges.is_empty());
        assert!(plan.comparisons.is_empty() || plan.comparisons.len() == plan.ranges.len());
        for range in plan.all_ranges() {
            assert!(range.start_date <= range.end_date, "{range:?}");
            assert!(range.start_micros < range.end_micros, "{range:?}");
        }
        let (from, to) = plan.span();
        assert!(from < to);
        assert!((1..=100_000).contains(&plan.limit));
        assert!(plan.sample_rate > 0.0 && plan.sample_rate <= 1.0);
        for (key, _) in &plan.order {
            match *key {
                SortKey::Metric(i) => assert!(i < plan.metrics.len()),
                SortKey::Dim(i) => assert!(i < plan.dims.len()),
            }
        }
        let range_names: Vec<&str> = plan.all_ranges().map(|r| r.name.as_str()).collect();
        for e in events {
            if let Some(filter) = &plan.filter {
                std::hint::black_box(filter.eval(e, plan.tz));
            }
            for (i, dim) in plan.dims.iter().enumerate() {
                std::hint::black_box(dim.value(e, plan.tz, range_names[i % range_names.len()]));
            }
        }
    }
);
