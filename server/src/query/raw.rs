//! Reports over raw events: scan the site's events once for every range
//! (requested and compared), group, then sort and page.
//!
//! Visits are formed at ingest (see `crate::sessions`): every event carries
//! its visit id. Events stored before that (visit id 0) are put into visits
//! while scanning, by the same gap rule.
//!
//! Visit metrics (bounce rate, visit duration) and the entry and exit page
//! are properties of whole visits, measured within the scanned time range; a
//! visit counts in every row where it has an event. Time on page is the time
//! from a page view to the next one in the same visit; a visit's last page
//! view has none and is left out of the mean. Conversion rate is the share of
//! a row's visitors with a goal event in the same date range (the goal event
//! need not match the row or the filter).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

use futures::StreamExt;
use tally_proto::v1::{self, Metric, metric_value::Value};

use super::dims::{Dim, counts_in_reports};
use super::plan::Plan;
use super::report::{Computed, Values, sort_and_page};
use crate::domain::{SiteId, StoredEvent};
use crate::error::Result;
use crate::sessions::VisitFacts;
use crate::storage::Store;

/// Per-group accumulators.
#[derive(Default)]
pub(super) struct Acc<S = RandomState> {
    pub(super) pageviews: i64,
    pub(super) events: i64,
    pub(super) visitors: HashSet<u64, S>,
    pub(super) visits: HashSet<u64, S>,
    /// Sum and count of times on page, microseconds.
    pub(super) time_on_page: (i64, i64),
    /// Revenue in the plan's currency, nano units.
    pub(super) revenue_nanos: i128,
}

/// The rows an event counted in: (range index, dimension values).
type RowKeys = Vec<(usize, Vec<String>)>;

impl Acc {
    fn add(&mut self, e: &StoredEvent, visit: u64, currency: &str) {
        self.events += 1;
        if e.event_kind().is_some_and(|k| k.is_view()) {
            self.pageviews += 1;
        }
        self.visitors.insert(e.visitor);
        self.visits.insert(visit);
        if let Some(money) = &e.revenue
            && money.currency == currency
        {
            self.revenue_nanos += i128::from(money.units) * 1_000_000_000 + i128::from(money.nanos);
        }
    }
}

/// What the values of a range need beyond the accumulator.
struct Context<'a> {
    summaries: &'a HashMap<u64, VisitFacts>,
    converted: &'a HashSet<u64>,
    /// 1 / sample rate: counts are scaled up by it.
    scale: f64,
}

fn values<S: BuildHasher>(plan: &Plan, acc: &Acc<S>, cx: &Context<'_>) -> Values {
    let of_visits = |f: &dyn Fn(&VisitFacts) -> f64| -> f64 {
        let values: Vec<f64> = acc
            .visits
            .iter()
            .filter_map(|v| cx.summaries.get(v))
            .map(f)
            .collect();
        match values.len() {
            0 => 0.0,
            n => values.iter().sum::<f64>() / n as f64,
        }
    };
    let count = |n: usize| Value::IntValue((n as f64 * cx.scale).round() as i64);
    plan.metrics
        .iter()
        .map(|metric| match metric {
            Metric::BounceRate => {
                Value::DoubleValue(100.0 * of_visits(&|s| f64::from(u8::from(s.bounced()))))
            }
            Metric::VisitDuration => Value::DoubleValue(of_visits(&|s| (s.last - s.first) as f64 / 1e6)),
            Metric::TimeOnPage => Value::DoubleValue(match acc.time_on_page {
                (_, 0) => 0.0,
                (sum, n) => sum as f64 / n as f64 / 1e6,
            }),
            Metric::Visitors => count(acc.visitors.len()),
            Metric::Visits => count(acc.visits.len()),
            Metric::Pageviews => count(acc.pageviews as usize),
            Metric::Events => count(acc.events as usize),
            Metric::ViewsPerVisit => Value::DoubleValue(match acc.visits.len() {
                0 => 0.0,
                n => acc.pageviews as f64 / n as f64,
            }),
            Metric::ConversionRate => Value::DoubleValue(match acc.visitors.len() {
                0 => 0.0,
                n => {
                    100.0 * acc.visitors.iter().filter(|v| cx.converted.contains(v)).count() as f64 / n as f64
                }
            }),
            Metric::Revenue => Value::DoubleValue(acc.revenue_nanos as f64 / 1e9 * cx.scale),
            Metric::Unspecified => Value::IntValue(0),
        })
        .collect()
}

/// Assigns events to visits as they stream by in time order.
struct Sessionizer {
    timeout_micros: i64,
    last: HashMap<u64, (i64, u64)>,
}

impl Sessionizer {
    fn visit(&mut self, e: &StoredEvent) -> u64 {
        if e.session != 0 {
            return e.session;
        }
        if !e.client_session.is_empty() {
            let mut hasher = std::hash::DefaultHasher::new();
            (e.visitor, &e.client_session).hash(&mut hasher);
            return hasher.finish();
        }
        let fresh = e.visitor.rotate_left(17) ^ (e.ts_micros as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let entry = self.last.entry(e.visitor).or_insert((e.ts_micros, fresh));
        if e.ts_micros - entry.0 > self.timeout_micros {
            entry.1 = fresh;
        }
        entry.0 = e.ts_micros;
        entry.1
    }
}

/// True when `visitor` is in a sample of `rate` (0 < rate <= 1) of all
/// visitors: the same visitors for every query with the same rate.
pub fn in_sample(visitor: u64, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    // Visitor ids are keyed hashes; one more mix spreads sequential ids too.
    let mixed = visitor.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (visitor >> 29);
    ((mixed >> 11) as f64 / (1u64 << 53) as f64) < rate
}

/// Runs a report over raw events.
#[tracing::instrument(name = "report.raw", skip_all, fields(site = %site))]
pub async fn run(store: &dyn Store, site: &SiteId, plan: &Plan) -> Result<Computed> {
    match super::columnar::run(store, site, plan) {
        Some(computed) => computed,
        None => run_rows(store, site, plan).await,
    }
}

/// Runs a report over raw events, event by event (every metric and dimension).
pub(super) async fn run_rows(store: &dyn Store, site: &SiteId, plan: &Plan) -> Result<Computed> {
    let (scan_from, scan_to) = plan.span();
    let ranges: Vec<_> = plan.all_ranges().collect();
    let new_sessionizer = || Sessionizer {
        timeout_micros: plan.session_timeout_micros,
        last: HashMap::new(),
    };
    let sampled = |e: &StoredEvent| in_sample(e.visitor, plan.sample_rate);
    // Entry and exit pages are known only once a visit is complete: a first
    // pass sums the visits up when the report groups or filters by them.
    let needs_summaries_first = plan.dims.iter().any(Dim::is_visit_level)
        || plan.filter.as_ref().is_some_and(|f| f.uses_visit_level());
    let wants_visit_facts = plan.wants(Metric::BounceRate) || plan.wants(Metric::VisitDuration);
    let wants_time_on_page = plan.wants(Metric::TimeOnPage);
    let mut summaries: HashMap<u64, VisitFacts> = HashMap::new();
    if needs_summaries_first {
        let mut sessions = new_sessionizer();
        let mut chunks = store.scan(site, scan_from, scan_to);
        while let Some(chunk) = chunks.next().await {
            for e in chunk? {
                if counts_in_reports(&e, plan.include_bots) && sampled(&e) {
                    summaries.entry(sessions.visit(&e)).or_default().add(&e);
                }
            }
        }
    }

    let mut groups: Vec<HashMap<Vec<String>, Acc>> = ranges.iter().map(|_| HashMap::new()).collect();
    let mut totals: Vec<Acc> = ranges.iter().map(|_| Acc::default()).collect();
    let mut converted: Vec<HashSet<u64>> = ranges.iter().map(|_| HashSet::new()).collect();
    let mut sessions = new_sessionizer();
    // Per visit, its last page view: when, and the rows (range, key) it counted in.
    let mut previous_view: HashMap<u64, (i64, RowKeys)> = HashMap::new();
    let mut chunks = store.scan(site, scan_from, scan_to);
    while let Some(chunk) = chunks.next().await {
        for e in chunk? {
            if !counts_in_reports(&e, plan.include_bots) || !sampled(&e) {
                continue;
            }
            let visit = sessions.visit(&e);
            if wants_visit_facts && !needs_summaries_first {
                summaries.entry(visit).or_default().add(&e);
            }
            if let Some(goal) = &plan.goal
                && goal.matches(&e)
            {
                for (range, set) in ranges.iter().zip(converted.iter_mut()) {
                    if range.contains(e.ts_micros) {
                        set.insert(e.visitor);
                    }
                }
            }
            let is_view = e.event_kind().is_some_and(|k| k.is_view());
            if is_view && let Some((at, rows)) = previous_view.remove(&visit) {
                let spent = e.ts_micros - at;
                for (range, key) in rows {
                    totals[range].time_on_page.0 += spent;
                    totals[range].time_on_page.1 += 1;
                    if let Some(acc) = groups[range].get_mut(&key) {
                        acc.time_on_page.0 += spent;
                        acc.time_on_page.1 += 1;
                    }
                }
            }
            let summary = summaries.get(&visit);
            if plan
                .filter
                .as_ref()
                .is_some_and(|f| !f.eval_with(&e, plan.tz, summary))
            {
                continue;
            }
            let mut rows = Vec::new();
            for (i, range) in ranges.iter().enumerate() {
                if !range.contains(e.ts_micros) {
                    continue;
                }
                totals[i].add(&e, visit, &plan.currency);
                let key: Vec<String> = plan
                    .dims
                    .iter()
                    .map(|d| {
                        d.value_with(&e, plan.tz, &range.name, summary)
                            .unwrap_or_default()
                    })
                    .collect();
                if is_view && wants_time_on_page {
                    rows.push((i, key.clone()));
                }
                groups[i].entry(key).or_default().add(&e, visit, &plan.currency);
            }
            if is_view && wants_time_on_page {
                previous_view.insert(visit, (e.ts_micros, rows));
            }
        }
    }

    Ok(finish(plan, &groups, &totals, &summaries, &converted))
}

/// Values, sorted and paged rows, and comparisons from the accumulators of
/// every range (the requested ones, then their comparisons).
pub(super) fn finish<S: BuildHasher>(
    plan: &Plan,
    groups: &[HashMap<Vec<String>, Acc<S>>],
    totals: &[Acc<S>],
    summaries: &HashMap<u64, VisitFacts>,
    converted: &[HashSet<u64>],
) -> Computed {
    let cx = |i: usize| Context {
        summaries,
        converted: &converted[i],
        scale: 1.0 / plan.sample_rate,
    };
    let current = plan.ranges.len();
    let rows: Vec<(Vec<String>, Values)> = groups[..current]
        .iter()
        .enumerate()
        .flat_map(|(i, g)| {
            let cx = cx(i);
            g.iter()
                .map(move |(key, acc)| (key.clone(), values(plan, acc, &cx)))
                .collect::<Vec<_>>()
        })
        .collect();
    let (rows, row_count) = sort_and_page(plan, rows);
    let mut previous_rows = HashMap::new();
    for (i, g) in groups.iter().enumerate().skip(current) {
        let cx = cx(i);
        for (key, _) in &rows {
            if let Some(acc) = g.get(key) {
                previous_rows.insert(key.clone(), values(plan, acc, &cx));
            }
        }
    }
    let all_totals: Vec<Values> = totals
        .iter()
        .enumerate()
        .map(|(i, acc)| values(plan, acc, &cx(i)))
        .collect();
    let (totals, previous_totals) = all_totals.split_at(current);
    Computed {
        rows,
        row_count,
        totals: totals.to_vec(),
        previous_rows,
        previous_totals: previous_totals.to_vec(),
        exact: plan.sample_rate >= 1.0,
        source: v1::DataSource::RawEvents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_close_to_the_rate_and_stable() {
        let ids: Vec<u64> = (0..100_000u64).collect();
        let share = ids.iter().filter(|v| in_sample(**v, 0.1)).count() as f64 / ids.len() as f64;
        assert!((share - 0.1).abs() < 0.01, "share {share}");
        assert!(ids.iter().all(|v| in_sample(*v, 1.0)));
        // A smaller sample is a subset of a larger one.
        assert!(
            ids.iter()
                .filter(|v| in_sample(**v, 0.05))
                .all(|v| in_sample(*v, 0.1))
        );
    }
}
