//! `RunReport` over raw events: resolve the request into a plan, scan the
//! site's events once for all date ranges, group, sort and page.
//!
//! Visits are formed at ingest (see `crate::sessions`): every event carries
//! its visit id. Events stored before that (visit id 0) are put into visits
//! while scanning, by the same gap rule.
//!
//! Visit metrics (bounce rate, visit duration) and the entry and exit page
//! are properties of whole visits, measured within the scanned time range; a
//! visit counts in every row where it has an event. Time on page is the time
//! from a page view to the next one in the same visit; a visit's last page
//! view has none and is left out of the mean.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::time::Instant;

use chrono_tz::Tz;
use futures::StreamExt;
use tally_proto::v1::{self, Metric};

use super::dates::{self, ResolvedRange};
use super::dims::{Dim, counts_in_reports};
use super::filter::Predicate;
use crate::convert::micros_to_timestamp;
use crate::domain::{SiteId, SiteRecord, StoredEvent};
use crate::error::{Error, Result};
use crate::sessions::VisitFacts;
use crate::storage::Store;

const MAX_METRICS: usize = 10;
const MAX_DIMENSIONS: usize = 5;
const MAX_DATE_RANGES: usize = 4;
const DEFAULT_LIMIT: i64 = 1000;
const MAX_LIMIT: i64 = 100_000;

/// The validated form of a report request.
struct Plan {
    metrics: Vec<Metric>,
    /// Dimensions of the rows; `DIMENSION_DATE_RANGE` first when there are several ranges.
    dims: Vec<Dim>,
    ranges: Vec<ResolvedRange>,
    filter: Option<Predicate>,
    tz: Tz,
    include_bots: bool,
    order: Vec<(SortKey, bool)>,
    limit: usize,
    offset: usize,
    session_timeout_micros: i64,
    wants_time_on_page: bool,
    /// Bounce rate or visit duration is asked for: visits are summed up.
    wants_visit_facts: bool,
}

#[derive(Clone, Copy)]
enum SortKey {
    Metric(usize),
    Dim(usize),
}

/// Per-group accumulators.
#[derive(Default)]
struct Acc {
    pageviews: i64,
    events: i64,
    visitors: HashSet<u64>,
    visits: HashSet<u64>,
    /// Sum and count of times on page, microseconds.
    time_on_page: (i64, i64),
}

/// The rows an event counted in: (date range index, dimension values).
type RowKeys = Vec<(usize, Vec<String>)>;

impl Acc {
    fn add(&mut self, e: &StoredEvent, visit: u64) {
        self.events += 1;
        if e.event_kind().is_some_and(|k| k.is_view()) {
            self.pageviews += 1;
        }
        self.visitors.insert(e.visitor);
        self.visits.insert(visit);
    }

    fn value(&self, metric: Metric, summaries: &HashMap<u64, VisitFacts>) -> v1::MetricValue {
        use v1::metric_value::Value;
        let of_visits = |f: &dyn Fn(&VisitFacts) -> f64| -> f64 {
            let values: Vec<f64> = self
                .visits
                .iter()
                .filter_map(|v| summaries.get(v))
                .map(f)
                .collect();
            match values.len() {
                0 => 0.0,
                n => values.iter().sum::<f64>() / n as f64,
            }
        };
        let value = match metric {
            Metric::BounceRate => {
                Value::DoubleValue(100.0 * of_visits(&|s| f64::from(u8::from(s.bounced()))))
            }
            Metric::VisitDuration => Value::DoubleValue(of_visits(&|s| (s.last - s.first) as f64 / 1e6)),
            Metric::TimeOnPage => Value::DoubleValue(match self.time_on_page {
                (_, 0) => 0.0,
                (sum, n) => sum as f64 / n as f64 / 1e6,
            }),
            Metric::Visitors => Value::IntValue(self.visitors.len() as i64),
            Metric::Visits => Value::IntValue(self.visits.len() as i64),
            Metric::Pageviews => Value::IntValue(self.pageviews),
            Metric::Events => Value::IntValue(self.events),
            Metric::ViewsPerVisit => Value::DoubleValue(match self.visits.len() {
                0 => 0.0,
                n => self.pageviews as f64 / n as f64,
            }),
            _ => unreachable!("plan admits only supported metrics"),
        };
        v1::MetricValue {
            value: Some(value),
            comparison: None,
        }
    }
}

fn metric_type(metric: Metric) -> v1::MetricType {
    match metric {
        Metric::Visitors | Metric::Visits | Metric::Pageviews | Metric::Events => v1::MetricType::Integer,
        Metric::ViewsPerVisit => v1::MetricType::Float,
        Metric::BounceRate | Metric::ConversionRate => v1::MetricType::Percent,
        Metric::VisitDuration | Metric::TimeOnPage => v1::MetricType::Seconds,
        Metric::Revenue => v1::MetricType::Currency,
        Metric::Unspecified => v1::MetricType::Unspecified,
    }
}

fn sort_value(value: &v1::MetricValue) -> f64 {
    match value.value {
        Some(v1::metric_value::Value::IntValue(n)) => n as f64,
        Some(v1::metric_value::Value::DoubleValue(x)) => x,
        None => 0.0,
    }
}

fn plan(site: &SiteRecord, req: &v1::RunReportRequest, now_micros: i64) -> Result<Plan> {
    if req.metrics.is_empty() || req.metrics.len() > MAX_METRICS {
        return Err(Error::invalid(
            "metrics",
            format!("ask for 1-{MAX_METRICS} metrics, e.g. [\"METRIC_PAGEVIEWS\"]"),
        ));
    }
    let mut metrics = Vec::with_capacity(req.metrics.len());
    for (i, raw) in req.metrics.iter().enumerate() {
        let field = format!("metrics[{i}]");
        let metric = match Metric::try_from(*raw) {
            Ok(Metric::Unspecified) | Err(_) => {
                return Err(Error::invalid(field, "metric is unspecified or unknown"));
            }
            Ok(
                m @ (Metric::Visitors
                | Metric::Visits
                | Metric::Pageviews
                | Metric::Events
                | Metric::ViewsPerVisit
                | Metric::BounceRate
                | Metric::VisitDuration
                | Metric::TimeOnPage),
            ) => m,
            Ok(m) => {
                return Err(Error::Unimplemented(format!(
                    "{field}: {} is not available yet",
                    m.as_str_name()
                )));
            }
        };
        metrics.push(metric);
    }
    if req.dimensions.len() > MAX_DIMENSIONS {
        return Err(Error::invalid(
            "dimensions",
            format!("at most {MAX_DIMENSIONS} dimensions"),
        ));
    }
    let tz_name = if req.time_zone.is_empty() {
        site.time_zone.as_str()
    } else {
        req.time_zone.as_str()
    };
    let tz = Tz::from_str(tz_name)
        .map_err(|_| Error::invalid("time_zone", format!("{tz_name:?} is not an IANA time zone")))?;

    if req.date_ranges.len() > MAX_DATE_RANGES {
        return Err(Error::invalid(
            "date_ranges",
            format!("at most {MAX_DATE_RANGES} date ranges"),
        ));
    }
    let default_range = [v1::DateRange {
        start_date: "29daysAgo".into(),
        end_date: "today".into(),
        name: String::new(),
    }];
    let requested = if req.date_ranges.is_empty() {
        &default_range[..]
    } else {
        &req.date_ranges[..]
    };
    let ranges = requested
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let name = if r.name.is_empty() {
                format!("date_range_{i}")
            } else {
                r.name.clone()
            };
            dates::resolve(
                &format!("date_ranges[{i}]"),
                &r.start_date,
                &r.end_date,
                name,
                tz,
                now_micros,
            )
        })
        .collect::<Result<Vec<_>>>()?;

    let mut dims = Vec::new();
    if ranges.len() > 1 {
        dims.push(Dim::Standard(v1::Dimension::DateRange));
    }
    for (i, spec) in req.dimensions.iter().enumerate() {
        let dim = Dim::parse(Some(spec), &format!("dimensions[{i}]"))?;
        if dims.contains(&dim) {
            return Err(Error::invalid(
                format!("dimensions[{i}]"),
                "dimension is listed twice",
            ));
        }
        dims.push(dim);
    }

    if v1::ComparisonMode::try_from(req.comparison).unwrap_or_default() != v1::ComparisonMode::Unspecified {
        return Err(Error::Unimplemented(
            "comparison: period comparisons are not available yet".into(),
        ));
    }
    if req.sample_rate != 0.0 && req.sample_rate != 1.0 {
        return Err(Error::Unimplemented(
            "sample_rate: sampling is not available yet".into(),
        ));
    }
    let filter = req
        .filter
        .as_ref()
        .map(|f| Predicate::compile(f, "filter"))
        .transpose()?;

    let mut order = Vec::new();
    for (i, o) in req.order_bys.iter().enumerate() {
        let field = format!("order_bys[{i}]");
        let key =
            match &o.key {
                Some(v1::order_by::Key::Metric(m)) => {
                    let position = metrics.iter().position(|x| *x as i32 == *m);
                    SortKey::Metric(position.ok_or_else(|| {
                        Error::invalid(&field, "order by a metric that the report asks for")
                    })?)
                }
                Some(v1::order_by::Key::Dimension(spec)) => {
                    let dim = Dim::parse(Some(spec), &format!("{field}.dimension"))?;
                    let position = dims.iter().position(|d| *d == dim);
                    SortKey::Dim(position.ok_or_else(|| {
                        Error::invalid(&field, "order by a dimension that the report asks for")
                    })?)
                }
                None => return Err(Error::invalid(field, "set metric or dimension")),
            };
        order.push((key, o.desc));
    }
    if order.is_empty() {
        order.extend(
            dims.iter()
                .enumerate()
                .filter(|(_, d)| d.is_time())
                .map(|(i, _)| (SortKey::Dim(i), false)),
        );
        order.push((SortKey::Metric(0), true));
    }

    let limit = match req.limit {
        0 => DEFAULT_LIMIT,
        n @ 1..=MAX_LIMIT => n,
        _ => return Err(Error::invalid("limit", format!("limit must be 1-{MAX_LIMIT}"))),
    };
    if req.offset < 0 {
        return Err(Error::invalid("offset", "offset must not be negative"));
    }
    let wants_time_on_page = metrics.contains(&Metric::TimeOnPage);
    let wants_visit_facts = metrics
        .iter()
        .any(|m| matches!(m, Metric::BounceRate | Metric::VisitDuration));
    Ok(Plan {
        metrics,
        dims,
        ranges,
        filter,
        tz,
        include_bots: req.include_bots,
        order,
        limit: limit as usize,
        offset: usize::try_from(req.offset).unwrap_or(usize::MAX),
        session_timeout_micros: i64::from(site.session_timeout_minutes.max(1)) * 60_000_000,
        wants_time_on_page,
        wants_visit_facts,
    })
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

/// Runs a report over raw events.
pub async fn run_report(
    store: &dyn Store,
    site: &SiteRecord,
    req: &v1::RunReportRequest,
    now_micros: i64,
) -> Result<v1::RunReportResponse> {
    let started = Instant::now();
    let plan = plan(site, req, now_micros)?;
    let site_id = SiteId::parse(&site.site_id)?;
    let scan_from = plan
        .ranges
        .iter()
        .map(|r| r.start_micros)
        .min()
        .unwrap_or_default();
    let scan_to = plan.ranges.iter().map(|r| r.end_micros).max().unwrap_or_default();

    let new_sessionizer = || Sessionizer {
        timeout_micros: plan.session_timeout_micros,
        last: HashMap::new(),
    };
    // Entry and exit pages are known only once a visit is complete: a first
    // pass sums the visits up when the report groups by them.
    let needs_summaries_first = plan.dims.iter().any(|d| {
        matches!(
            d,
            Dim::Standard(v1::Dimension::EntryPage | v1::Dimension::ExitPage)
        )
    });
    let mut summaries: HashMap<u64, VisitFacts> = HashMap::new();
    if needs_summaries_first {
        let mut sessions = new_sessionizer();
        let mut chunks = store.scan(&site_id, scan_from, scan_to);
        while let Some(chunk) = chunks.next().await {
            for e in chunk? {
                if counts_in_reports(&e, plan.include_bots) {
                    summaries.entry(sessions.visit(&e)).or_default().add(&e);
                }
            }
        }
    }

    let mut groups: HashMap<Vec<String>, Acc> = HashMap::new();
    let mut totals: Vec<Acc> = plan.ranges.iter().map(|_| Acc::default()).collect();
    let mut sessions = new_sessionizer();
    // Per visit, its last page view: when, and the rows (range, key) it counted in.
    let mut previous_view: HashMap<u64, (i64, RowKeys)> = HashMap::new();
    let mut chunks = store.scan(&site_id, scan_from, scan_to);
    while let Some(chunk) = chunks.next().await {
        for e in chunk? {
            if !counts_in_reports(&e, plan.include_bots) {
                continue;
            }
            let visit = sessions.visit(&e);
            if plan.wants_visit_facts && !needs_summaries_first {
                summaries.entry(visit).or_default().add(&e);
            }
            let is_view = e.event_kind().is_some_and(|k| k.is_view());
            if is_view && let Some((at, rows)) = previous_view.remove(&visit) {
                let spent = e.ts_micros - at;
                for (range, key) in rows {
                    totals[range].time_on_page.0 += spent;
                    totals[range].time_on_page.1 += 1;
                    if let Some(acc) = groups.get_mut(&key) {
                        acc.time_on_page.0 += spent;
                        acc.time_on_page.1 += 1;
                    }
                }
            }
            if plan.filter.as_ref().is_some_and(|f| !f.eval(&e, plan.tz)) {
                continue;
            }
            let summary = summaries.get(&visit);
            let mut rows = Vec::new();
            for (i, (range, total)) in plan.ranges.iter().zip(totals.iter_mut()).enumerate() {
                if e.ts_micros < range.start_micros || e.ts_micros >= range.end_micros {
                    continue;
                }
                total.add(&e, visit);
                let key: Vec<String> = plan
                    .dims
                    .iter()
                    .map(|d| match d {
                        Dim::Standard(v1::Dimension::EntryPage) => {
                            summary.map(|s| s.entry.clone()).unwrap_or_default()
                        }
                        Dim::Standard(v1::Dimension::ExitPage) => {
                            summary.map(|s| s.exit.clone()).unwrap_or_default()
                        }
                        d => d
                            .value(&e, plan.tz, &range.name)
                            .map(|v| v.into_owned())
                            .unwrap_or_default(),
                    })
                    .collect();
                groups.entry(key.clone()).or_default().add(&e, visit);
                if is_view && plan.wants_time_on_page {
                    rows.push((i, key));
                }
            }
            if is_view && plan.wants_time_on_page {
                previous_view.insert(visit, (e.ts_micros, rows));
            }
        }
    }

    let mut rows: Vec<v1::Row> = groups
        .into_iter()
        .map(|(dimension_values, acc)| v1::Row {
            dimension_values,
            metric_values: plan.metrics.iter().map(|m| acc.value(*m, &summaries)).collect(),
        })
        .collect();
    rows.sort_by(|a, b| compare_rows(&plan, a, b));
    let row_count = rows.len() as i64;
    let page: Vec<v1::Row> = rows.into_iter().skip(plan.offset).take(plan.limit).collect();
    let multi_range = plan.ranges.len() > 1;
    let totals = plan
        .ranges
        .iter()
        .zip(&totals)
        .map(|(range, acc)| v1::Row {
            dimension_values: if multi_range {
                vec![range.name.clone()]
            } else {
                Vec::new()
            },
            metric_values: plan.metrics.iter().map(|m| acc.value(*m, &summaries)).collect(),
        })
        .collect();

    Ok(v1::RunReportResponse {
        dimension_headers: plan
            .dims
            .iter()
            .map(|d| v1::DimensionHeader {
                dimension: Some(d.to_spec()),
            })
            .collect(),
        metric_headers: plan
            .metrics
            .iter()
            .map(|m| v1::MetricHeader {
                metric: *m as i32,
                r#type: metric_type(*m) as i32,
            })
            .collect(),
        rows: page,
        totals,
        row_count,
        metadata: Some(v1::ResponseMetadata {
            exact: true,
            sampled: false,
            sample_rate: 1.0,
            data_source: v1::DataSource::RawEvents as i32,
            cache_hit: false,
            cache_age: None,
            time_zone: plan.tz.name().to_owned(),
            resolved_ranges: plan
                .ranges
                .iter()
                .map(|r| v1::TimeRange {
                    start_time: Some(micros_to_timestamp(r.start_micros)),
                    end_time: Some(micros_to_timestamp(r.end_micros)),
                })
                .collect(),
            query_time: prost_types::Duration::try_from(started.elapsed()).ok(),
        }),
    })
}

fn compare_rows(plan: &Plan, a: &v1::Row, b: &v1::Row) -> Ordering {
    for (key, desc) in &plan.order {
        let ordering = match key {
            SortKey::Metric(i) => {
                sort_value(&a.metric_values[*i]).total_cmp(&sort_value(&b.metric_values[*i]))
            }
            SortKey::Dim(i) => a.dimension_values[*i].cmp(&b.dimension_values[*i]),
        };
        let ordering = if *desc { ordering.reverse() } else { ordering };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    // Stable, deterministic pages: ties break on the dimension values.
    a.dimension_values.cmp(&b.dimension_values)
}
