//! `RunFunnelReport`: how many visitors went through ordered steps.
//!
//! Only events that match a step (and the request's filter) are kept, per
//! visitor, in time order. A visitor's attempt starts at an occurrence of the
//! first step inside the date range (of any step, in an open funnel) and
//! takes, for each next step, its first occurrence after the previous step's
//! and no later than `conversion_window` after the start; later steps may
//! fall after the date range, inside the window. Each visitor counts once
//! per step: in a closed funnel with the attempt that got furthest (the
//! earliest among equals); in an open funnel at every step that some
//! attempt reached. Times between steps come from those attempts.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Instant;

use chrono_tz::Tz;
use futures::StreamExt;
use tally_proto::v1;

use super::dates;
use super::dims::counts_in_reports;
use super::filter::{Predicate, string_match_regex};
use crate::convert::micros_to_timestamp;
use crate::domain::{EventKind, SiteId, SiteRecord, StoredEvent};
use crate::error::{Error, Result};
use crate::storage::Store;

const MIN_STEPS: usize = 2;
const MAX_STEPS: usize = 20;
const DEFAULT_WINDOW_MICROS: i64 = 7 * 86_400_000_000;
const MAX_WINDOW_MICROS: i64 = 90 * 86_400_000_000;

enum Match {
    Page(regex::Regex),
    Event(String),
}

struct Step {
    name: String,
    matches: Match,
    filter: Option<Predicate>,
}

impl Step {
    fn hit(&self, e: &StoredEvent, tz: Tz) -> bool {
        let kind = e.event_kind();
        let matched = match &self.matches {
            Match::Page(re) => kind.is_some_and(|k| k.is_view()) && re.is_match(&e.path),
            Match::Event(name) => kind == Some(EventKind::Custom) && e.name == *name,
        };
        matched && self.filter.as_ref().is_none_or(|f| f.eval(e, tz))
    }
}

fn compile_steps(req: &v1::RunFunnelReportRequest) -> Result<Vec<Step>> {
    if !(MIN_STEPS..=MAX_STEPS).contains(&req.steps.len()) {
        return Err(Error::invalid(
            "steps",
            format!(
                "a funnel has {MIN_STEPS}-{MAX_STEPS} steps, got {}",
                req.steps.len()
            ),
        ));
    }
    req.steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let field = format!("steps[{i}]");
            let matches = match &s.r#match {
                Some(v1::funnel_step::Match::Page(m)) => {
                    Match::Page(string_match_regex(m, &format!("{field}.page"))?)
                }
                Some(v1::funnel_step::Match::EventName(n)) if !n.is_empty() => Match::Event(n.clone()),
                _ => return Err(Error::invalid(field, "set page or event_name")),
            };
            let filter = s
                .filter
                .as_ref()
                .map(|f| Predicate::compile(f, &format!("{field}.filter")))
                .transpose()?;
            Ok(Step {
                name: if s.name.is_empty() {
                    format!("step_{}", i + 1)
                } else {
                    s.name.clone()
                },
                matches,
                filter,
            })
        })
        .collect()
}

/// One attempt through the funnel: for each step reached, when.
fn attempt(events: &[(i64, u32)], start: usize, first_step: usize, steps: usize, window: i64) -> Vec<i64> {
    let (t0, _) = events[start];
    let mut times = vec![t0];
    let mut at = start;
    for step in first_step + 1..steps {
        let previous = *times.last().expect("one step at least");
        let next = events[at + 1..]
            .iter()
            .position(|(t, mask)| *t >= previous && *t - t0 <= window && mask & (1 << step) != 0);
        match next {
            Some(offset) => {
                at += 1 + offset;
                times.push(events[at].0);
            }
            None => break,
        }
    }
    times
}

/// Runs a funnel report.
#[tracing::instrument(name = "report.funnel", skip_all, fields(site = %site.site_id, steps = req.steps.len()))]
pub async fn run(
    store: &dyn Store,
    site: &SiteRecord,
    req: &v1::RunFunnelReportRequest,
    now_micros: i64,
) -> Result<v1::RunFunnelReportResponse> {
    let started = Instant::now();
    let steps = compile_steps(req)?;
    let tz_name = if req.time_zone.is_empty() {
        site.time_zone.as_str()
    } else {
        req.time_zone.as_str()
    };
    let tz = Tz::from_str(tz_name)
        .map_err(|_| Error::invalid("time_zone", format!("{tz_name:?} is not an IANA time zone")))?;
    let range = req.date_range.clone().unwrap_or_else(|| v1::DateRange {
        start_date: "29daysAgo".into(),
        end_date: "today".into(),
        name: String::new(),
    });
    let range = dates::resolve(
        "date_range",
        &range.start_date,
        &range.end_date,
        range.name,
        tz,
        now_micros,
    )?;
    let window = match &req.conversion_window {
        None => DEFAULT_WINDOW_MICROS,
        Some(d) => {
            let micros = d.seconds.saturating_mul(1_000_000) + i64::from(d.nanos) / 1000;
            if !(1..=MAX_WINDOW_MICROS).contains(&micros) {
                return Err(Error::invalid(
                    "conversion_window",
                    "the conversion window must be positive and at most 90 days",
                ));
            }
            micros
        }
    };
    let filter = req
        .filter
        .as_ref()
        .map(|f| Predicate::compile(f, "filter"))
        .transpose()?;

    // Per visitor, the events that hit a step: (time, steps hit as bits).
    let site_id = SiteId::parse(&site.site_id)?;
    let mut visitors: HashMap<u64, Vec<(i64, u32)>> = HashMap::new();
    let mut chunks = store.scan(
        &site_id,
        range.start_micros,
        range.end_micros.saturating_add(window),
    );
    while let Some(chunk) = chunks.next().await {
        for e in chunk? {
            if !counts_in_reports(&e, req.include_bots) || filter.as_ref().is_some_and(|f| !f.eval(&e, tz)) {
                continue;
            }
            let mask = steps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.hit(&e, tz))
                .fold(0u32, |m, (i, _)| m | (1 << i));
            if mask != 0 {
                visitors.entry(e.visitor).or_default().push((e.ts_micros, mask));
            }
        }
    }

    let n = steps.len();
    let mut reached = vec![0i64; n];
    let mut gaps: Vec<Vec<i64>> = vec![Vec::new(); n];
    for events in visitors.values() {
        // Per step, the time from the previous step in the attempt used.
        let mut best: Vec<Option<i64>> = vec![None; n];
        let mut seen = vec![false; n];
        let mut furthest: Option<(usize, usize, Vec<i64>)> = None;
        for (start, (t, mask)) in events.iter().enumerate() {
            if !range.contains(*t) {
                continue;
            }
            for first in 0..n {
                if mask & (1 << first) == 0 || (!req.open && first > 0) {
                    continue;
                }
                let times = attempt(events, start, first, n, window);
                if req.open {
                    for (k, pair) in times.windows(2).enumerate() {
                        let step = first + k + 1;
                        best[step].get_or_insert(pair[1] - pair[0]);
                    }
                    seen[first..first + times.len()].fill(true);
                } else if furthest.as_ref().is_none_or(|(_, _, f)| times.len() > f.len()) {
                    furthest = Some((start, first, times));
                }
            }
        }
        if let Some((_, first, times)) = furthest {
            for (k, t) in times.iter().enumerate() {
                seen[first + k] = true;
                if k > 0 {
                    best[first + k] = Some(t - times[k - 1]);
                }
            }
        }
        for k in 0..n {
            if seen[k] {
                reached[k] += 1;
                if let Some(gap) = best[k] {
                    gaps[k].push(gap);
                }
            }
        }
    }

    let percent = |a: i64, b: i64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    let results = steps
        .iter()
        .enumerate()
        .map(|(k, step)| {
            let mut g = std::mem::take(&mut gaps[k]);
            g.sort_unstable();
            let quantile = |q: f64| -> Option<prost_types::Duration> {
                if g.is_empty() {
                    return None;
                }
                // Nearest rank.
                let rank = ((q * g.len() as f64).ceil() as usize).clamp(1, g.len());
                let micros = g[rank - 1];
                Some(prost_types::Duration {
                    seconds: micros.div_euclid(1_000_000),
                    nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
                })
            };
            let previous = if k == 0 { reached[0] } else { reached[k - 1] };
            v1::FunnelStepResult {
                name: step.name.clone(),
                visitors: reached[k],
                conversion_from_previous: if k == 0 {
                    100.0
                } else {
                    percent(reached[k], previous)
                },
                conversion_from_first: percent(reached[k], reached[0]),
                drop_off: if k == 0 { 0 } else { (previous - reached[k]).max(0) },
                median_time_from_previous: if k == 0 { None } else { quantile(0.5) },
                p95_time_from_previous: if k == 0 { None } else { quantile(0.95) },
            }
        })
        .collect();
    Ok(v1::RunFunnelReportResponse {
        steps: results,
        metadata: Some(v1::ResponseMetadata {
            exact: true,
            sampled: false,
            sample_rate: 1.0,
            data_source: v1::DataSource::RawEvents as i32,
            cache_hit: false,
            cache_age: None,
            time_zone: tz.name().to_owned(),
            resolved_ranges: vec![v1::TimeRange {
                start_time: Some(micros_to_timestamp(range.start_micros)),
                end_time: Some(micros_to_timestamp(range.end_micros)),
            }],
            query_time: prost_types::Duration::try_from(started.elapsed()).ok(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_take_each_next_step_in_order_within_the_window() {
        // Step bits: 1 = step 0, 2 = step 1, 4 = step 2.
        let events = [(0, 1), (5, 4), (10, 2), (20, 4), (100, 4)];
        assert_eq!(attempt(&events, 0, 0, 3, 50), vec![0, 10, 20]);
        // Step 2 at 100 is outside a window of 50 from the start at 0... but 20 is inside.
        assert_eq!(attempt(&events, 0, 0, 3, 15), vec![0, 10]);
        // An open funnel may start at step 1.
        assert_eq!(attempt(&events, 2, 1, 3, 50), vec![10, 20]);
    }
}
