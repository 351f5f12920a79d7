//! Reports answered from rollups, when they cover the question.
//!
//! Covered: metrics visitors, visits, page views, events, views per visit
//! and revenue; bots excluded; no sampling needed. Either
//! - no dimension other than time (hour, day, week, month) and the date
//!   range, and no filter: from the hourly cells, in any time zone whose
//!   offsets are whole hours over the ranges; or
//! - at most one rolled-up dimension, a filter on that same dimension (any
//!   expression), time by day, week or month: from the daily cells, in the
//!   site's time zone.
//!
//! Everything else goes to raw events. Rows are sorted on the cheap sums
//! first, so sketches are merged only for the page of rows asked for
//! (unless the order itself is by a distinct count).

use std::collections::HashMap;

use chrono::{Datelike, TimeZone, Utc};
use chrono_tz::Tz;
use tally_proto::v1::{self, Dimension as D, Metric, metric_value::Value};

use super::dates::ResolvedRange;
use super::dims::Dim;
use super::plan::{Plan, SortKey};
use super::report::{Computed, Values, sort_and_page};
use crate::domain::SiteId;
use crate::rollup::sketch::Union;
use crate::rollup::{Cell, DIMENSIONS, Rollups, SiteRollups};

const HOUR_MICROS: i64 = 3_600_000_000;

/// A group's cells and sums.
#[derive(Default)]
struct Group<'a> {
    pageviews: u64,
    events: u64,
    revenue_nanos: i128,
    cells: Vec<&'a Cell>,
}

impl<'a> Group<'a> {
    fn add(&mut self, cell: &'a Cell, currency: &str) {
        self.pageviews += cell.pageviews;
        self.events += cell.events;
        self.revenue_nanos += cell.revenue_nanos(currency);
        self.cells.push(cell);
    }
}

fn is_distinct(metric: Metric) -> bool {
    matches!(metric, Metric::Visitors | Metric::Visits | Metric::ViewsPerVisit)
}

/// Values of a group; distinct counts only when `distinct` (else 0), and
/// whether they are exact.
fn values(plan: &Plan, g: &Group<'_>, distinct: bool) -> (Values, bool) {
    let mut exact = true;
    let mut count = |pick: fn(&Cell) -> &crate::rollup::sketch::Sketch| -> u64 {
        if !distinct {
            return 0;
        }
        let mut union = Union::default();
        g.cells.iter().for_each(|c| union.add(pick(c)));
        exact &= union.is_exact();
        union.count()
    };
    let wants = |m| plan.metrics.contains(&m);
    let visitors = (wants(Metric::Visitors)).then(|| count(|c| &c.visitors));
    let visits = (wants(Metric::Visits) || wants(Metric::ViewsPerVisit)).then(|| count(|c| &c.visits));
    let values = plan
        .metrics
        .iter()
        .map(|m| match m {
            Metric::Visitors => Value::IntValue(visitors.unwrap_or_default() as i64),
            Metric::Visits => Value::IntValue(visits.unwrap_or_default() as i64),
            Metric::Pageviews => Value::IntValue(g.pageviews as i64),
            Metric::Events => Value::IntValue(g.events as i64),
            Metric::ViewsPerVisit => Value::DoubleValue(match visits.unwrap_or_default() {
                0 => 0.0,
                n => g.pageviews as f64 / n as f64,
            }),
            Metric::Revenue => Value::DoubleValue(g.revenue_nanos as f64 / 1e9),
            _ => Value::IntValue(0),
        })
        .collect();
    (values, exact)
}

/// How the rollups cover a plan.
enum Cover {
    /// Hourly cells.
    Hours,
    /// Daily cells of the dimension at this index of [`DIMENSIONS`], and
    /// the position of that dimension among the plan's (if grouped by).
    Days { dim: usize, position: Option<usize> },
}

/// True when rollups in the time zone `tz` cover the plan.
pub fn covers(plan: &Plan, tz: Tz) -> bool {
    cover(plan, tz).is_some()
}

fn cover(plan: &Plan, tz: Tz) -> Option<Cover> {
    let supported = |m: &Metric| {
        matches!(
            m,
            Metric::Visitors
                | Metric::Visits
                | Metric::Pageviews
                | Metric::Events
                | Metric::ViewsPerVisit
                | Metric::Revenue
        )
    };
    if plan.include_bots || !plan.metrics.iter().all(supported) {
        return None;
    }
    let mut grouped = None;
    let mut hour = false;
    for (i, d) in plan.dims.iter().enumerate() {
        match d {
            Dim::Standard(D::DateRange | D::TimeDay | D::TimeWeek | D::TimeMonth) => {}
            Dim::Standard(D::TimeHour) => hour = true,
            Dim::Standard(d) if grouped.is_none() && DIMENSIONS.contains(d) => grouped = Some((*d, i)),
            _ => return None,
        }
    }
    let filtered = match &plan.filter {
        None => None,
        Some(f) => match f.single_dim()? {
            Dim::Standard(d) if DIMENSIONS.contains(d) => Some(*d),
            _ => return None,
        },
    };
    let dim = match (grouped, filtered) {
        (None, None) => {
            let aligned = plan.all_ranges().all(|r| hours_align(r, plan.tz));
            return aligned.then_some(Cover::Hours);
        }
        (Some((g, _)), Some(f)) if g != f => return None,
        (Some((g, _)), _) => g,
        (None, Some(f)) => f,
    };
    if hour || plan.tz != tz {
        return None;
    }
    Some(Cover::Days {
        dim: DIMENSIONS.iter().position(|d| *d == dim)?,
        position: grouped.map(|(_, i)| i),
    })
}

/// True when every hour of the range starts on a whole local hour.
fn hours_align(range: &ResolvedRange, tz: Tz) -> bool {
    if range.start_micros % HOUR_MICROS != 0 || range.end_micros % HOUR_MICROS != 0 {
        return false;
    }
    (range.start_micros / HOUR_MICROS..range.end_micros / HOUR_MICROS).all(|h| {
        Utc.timestamp_micros(h * HOUR_MICROS)
            .single()
            .is_some_and(|t| t.with_timezone(&tz).format("%M").to_string() == "00")
    })
}

fn time_label(dim: D, local: chrono::NaiveDateTime) -> String {
    match dim {
        D::TimeHour => local.format("%Y-%m-%dT%H:00").to_string(),
        D::TimeDay => local.format("%Y-%m-%d").to_string(),
        D::TimeWeek => {
            let monday = local.date() - chrono::Days::new(u64::from(local.weekday().num_days_from_monday()));
            monday.format("%Y-%m-%d").to_string()
        }
        D::TimeMonth => local.format("%Y-%m").to_string(),
        _ => String::new(),
    }
}

/// Groups of one range, by row key.
fn group<'a>(
    plan: &Plan,
    rollups: &'a SiteRollups,
    cover: &Cover,
    range: &ResolvedRange,
) -> HashMap<Vec<String>, Group<'a>> {
    let mut groups: HashMap<Vec<String>, Group<'a>> = HashMap::new();
    let key_of = |local: chrono::NaiveDateTime, value: &str| -> Vec<String> {
        plan.dims
            .iter()
            .map(|d| match d {
                Dim::Standard(D::DateRange) => range.name.clone(),
                Dim::Standard(t @ (D::TimeHour | D::TimeDay | D::TimeWeek | D::TimeMonth)) => {
                    time_label(*t, local)
                }
                _ => value.to_owned(),
            })
            .collect()
    };
    match cover {
        Cover::Hours => {
            for (hour, cell) in rollups
                .hours
                .range(range.start_micros / HOUR_MICROS..range.end_micros / HOUR_MICROS)
            {
                let Some(start) = Utc.timestamp_micros(hour * HOUR_MICROS).single() else {
                    continue;
                };
                let local = start.with_timezone(&plan.tz).naive_local();
                groups
                    .entry(key_of(local, ""))
                    .or_default()
                    .add(cell, &plan.currency);
            }
        }
        Cover::Days { dim, position } => {
            for (date, day) in rollups.days.range(range.start_date..=range.end_date) {
                let Some(cells) = day.dims.get(*dim) else {
                    continue;
                };
                let local = date.and_hms_opt(0, 0, 0).unwrap_or_default();
                // Rows without the dimension share one key per day.
                let mut shared: Option<Vec<String>> = None;
                for (value, cell) in cells {
                    let value: &str = value;
                    let keep = plan
                        .filter
                        .as_ref()
                        .is_none_or(|f| f.eval_value((!value.is_empty()).then_some(value)));
                    if !keep {
                        continue;
                    }
                    let key = match position {
                        Some(_) => key_of(local, value),
                        None => shared.get_or_insert_with(|| key_of(local, "")).clone(),
                    };
                    groups.entry(key).or_default().add(cell, &plan.currency);
                }
            }
        }
    }
    groups
}

/// Answers the plan from the rollups, or `None` when they do not cover it.
#[tracing::instrument(name = "report.rollups", skip_all, fields(site = %site))]
pub fn run(rollups: &Rollups, site: &SiteId, plan: &Plan) -> Option<Computed> {
    rollups.read(site.as_str(), |r| run_on(r, plan)).flatten()
}

/// Answers the plan from `rollups`, or `None` when they do not cover it.
pub fn run_on(rollups: &SiteRollups, plan: &Plan) -> Option<Computed> {
    let cover = cover(plan, rollups.tz)?;
    let ranges: Vec<&ResolvedRange> = plan.all_ranges().collect();
    let groups: Vec<_> = ranges.iter().map(|r| group(plan, rollups, &cover, r)).collect();
    let current = plan.ranges.len();
    let mut exact = true;

    // Sort on sums first when the order does not need distinct counts.
    let order_needs_distinct = plan
        .order
        .iter()
        .any(|(k, _)| matches!(k, SortKey::Metric(i) if is_distinct(plan.metrics[*i])));
    let rows: Vec<(Vec<String>, Values)> = groups[..current]
        .iter()
        .flat_map(|g| g.iter())
        .map(|(key, g)| {
            let (values, e) = values(plan, g, order_needs_distinct);
            exact &= e;
            (key.clone(), values)
        })
        .collect();
    let (mut rows, row_count) = sort_and_page(plan, rows);
    let find = |key: &Vec<String>, among: &[HashMap<Vec<String>, Group<'_>>]| {
        among
            .iter()
            .find_map(|g| g.get(key))
            .map(|g| values(plan, g, true))
    };
    if !order_needs_distinct {
        for (key, values) in &mut rows {
            if let Some((full, e)) = find(key, &groups[..current]) {
                exact &= e;
                *values = full;
            }
        }
    }
    let mut previous_rows = HashMap::new();
    for (key, _) in &rows {
        if let Some((values, e)) = find(key, &groups[current..]) {
            exact &= e;
            previous_rows.insert(key.clone(), values);
        }
    }
    let mut totals: Vec<Values> = Vec::new();
    for (range, groups) in ranges.iter().zip(&groups) {
        let mut total = Group::default();
        match (&cover, plan.filter.is_some()) {
            // Whole ranges without a filter: the hourly cells are fewer.
            (Cover::Days { .. }, false) if hours_align(range, plan.tz) => {
                for (_, cell) in rollups
                    .hours
                    .range(range.start_micros / HOUR_MICROS..range.end_micros / HOUR_MICROS)
                {
                    total.add(cell, &plan.currency);
                }
            }
            _ => groups
                .values()
                .flat_map(|g| &g.cells)
                .for_each(|c| total.add(c, &plan.currency)),
        }
        let (values, e) = values(plan, &total, true);
        exact &= e;
        totals.push(values);
    }
    let previous_totals = totals.split_off(current);
    Some(Computed {
        rows,
        row_count,
        totals,
        previous_rows,
        previous_totals,
        exact,
        source: v1::DataSource::Rollups,
    })
}
