//! A report request, validated and resolved: what to compute, over which
//! instants, in which order. Both executors (rollups and raw events) take it.

use std::str::FromStr;

use chrono::{Datelike, Days, Months, NaiveDate};
use chrono_tz::Tz;
use tally_proto::v1::{self, Metric};

use super::dates::{self, ResolvedRange};
use super::dims::Dim;
use super::filter::{Predicate, string_match_regex};
use crate::domain::{EventKind, StoredEvent};
use crate::error::{Error, Result};

const MAX_METRICS: usize = 10;
const MAX_DIMENSIONS: usize = 5;
const MAX_DATE_RANGES: usize = 4;
const DEFAULT_LIMIT: i64 = 1000;
const MAX_LIMIT: i64 = 100_000;

/// What counts as a conversion.
#[derive(Debug)]
pub enum GoalTest {
    /// A custom event with this name.
    Event(String),
    /// A page view whose path matches.
    Page(regex::Regex),
}

impl GoalTest {
    /// Compiles a request goal; `field` names it in errors.
    pub fn compile(goal: &v1::Goal, field: &str) -> Result<Self> {
        match &goal.kind {
            Some(v1::goal::Kind::EventName(name)) if !name.is_empty() => Ok(Self::Event(name.clone())),
            Some(v1::goal::Kind::Page(m)) => Ok(Self::Page(string_match_regex(m, &format!("{field}.page"))?)),
            _ => Err(Error::invalid(field, "set event_name or page")),
        }
    }

    /// True when `e` reaches the goal.
    pub fn matches(&self, e: &StoredEvent) -> bool {
        match self {
            Self::Event(name) => e.event_kind() == Some(EventKind::Custom) && e.name == *name,
            Self::Page(re) => e.event_kind().is_some_and(|k| k.is_view()) && re.is_match(&e.path),
        }
    }
}

/// A sort key of the rows.
#[derive(Clone, Copy, Debug)]
pub enum SortKey {
    /// The metric at this position.
    Metric(usize),
    /// The dimension at this position.
    Dim(usize),
}

/// The validated form of a report request.
#[derive(Debug)]
pub struct Plan {
    /// Metrics, in request order.
    pub metrics: Vec<Metric>,
    /// Dimensions of the rows; `DIMENSION_DATE_RANGE` first when there are several ranges.
    pub dims: Vec<Dim>,
    /// The requested ranges.
    pub ranges: Vec<ResolvedRange>,
    /// One comparison range per requested range (named like it), when asked for.
    pub comparisons: Vec<ResolvedRange>,
    /// Events counted.
    pub filter: Option<Predicate>,
    /// Time zone of ranges and time dimensions.
    pub tz: Tz,
    /// Count bots.
    pub include_bots: bool,
    /// Sort keys and descending flags.
    pub order: Vec<(SortKey, bool)>,
    /// Rows per page.
    pub limit: usize,
    /// Rows skipped.
    pub offset: usize,
    /// The site's inactivity gap that ends a visit.
    pub session_timeout_micros: i64,
    /// Currency summed by METRIC_REVENUE.
    pub currency: String,
    /// Goal of METRIC_CONVERSION_RATE.
    pub goal: Option<GoalTest>,
    /// Fraction of visitors read (1 = all).
    pub sample_rate: f64,
}

impl Plan {
    /// True when the report asks for `metric`.
    pub fn wants(&self, metric: Metric) -> bool {
        self.metrics.contains(&metric)
    }

    /// Every range the executors compute: the requested ones, then their comparisons.
    pub fn all_ranges(&self) -> impl Iterator<Item = &ResolvedRange> {
        self.ranges.iter().chain(&self.comparisons)
    }

    /// First and last instant any range covers.
    pub fn span(&self) -> (i64, i64) {
        let from = self
            .all_ranges()
            .map(|r| r.start_micros)
            .min()
            .unwrap_or_default();
        let to = self.all_ranges().map(|r| r.end_micros).max().unwrap_or_default();
        (from, to)
    }
}

/// The column type of a metric.
pub fn metric_type(metric: Metric) -> v1::MetricType {
    match metric {
        Metric::Visitors | Metric::Visits | Metric::Pageviews | Metric::Events => v1::MetricType::Integer,
        Metric::ViewsPerVisit => v1::MetricType::Float,
        Metric::BounceRate | Metric::ConversionRate => v1::MetricType::Percent,
        Metric::VisitDuration | Metric::TimeOnPage => v1::MetricType::Seconds,
        Metric::Revenue => v1::MetricType::Currency,
        Metric::Unspecified => v1::MetricType::Unspecified,
    }
}

/// Validates and resolves a request at `now_micros`.
pub fn plan(site: &crate::domain::SiteRecord, req: &v1::RunReportRequest, now_micros: i64) -> Result<Plan> {
    if req.metrics.is_empty() || req.metrics.len() > MAX_METRICS {
        return Err(Error::invalid(
            "metrics",
            format!("ask for 1-{MAX_METRICS} metrics, e.g. [\"METRIC_PAGEVIEWS\"]"),
        ));
    }
    let mut metrics = Vec::with_capacity(req.metrics.len());
    for (i, raw) in req.metrics.iter().enumerate() {
        let field = format!("metrics[{i}]");
        match Metric::try_from(*raw) {
            Ok(Metric::Unspecified) | Err(_) => {
                return Err(Error::invalid(field, "metric is unspecified or unknown"));
            }
            Ok(m) if metrics.contains(&m) => {
                return Err(Error::invalid(field, "metric is listed twice"));
            }
            Ok(m) => metrics.push(m),
        }
    }
    let goal = match (&req.conversion_goal, metrics.contains(&Metric::ConversionRate)) {
        (Some(goal), _) => Some(GoalTest::compile(goal, "conversion_goal")?),
        (None, true) => {
            return Err(Error::invalid(
                "conversion_goal",
                "METRIC_CONVERSION_RATE needs a conversion_goal (event_name or page)",
            ));
        }
        (None, false) => None,
    };
    let currency = match req.revenue_currency.as_str() {
        "" => "USD".to_owned(),
        c if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => c.to_ascii_uppercase(),
        c => {
            return Err(Error::invalid(
                "revenue_currency",
                format!("{c:?} is not an ISO 4217 code such as \"EUR\""),
            ));
        }
    };
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
    for (i, r) in ranges.iter().enumerate() {
        if ranges[..i].iter().any(|x| x.name == r.name) {
            return Err(Error::invalid(
                format!("date_ranges[{i}].name"),
                format!("{:?} names two date ranges", r.name),
            ));
        }
    }
    let comparisons = comparisons(req, &ranges, tz, now_micros)?;

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

    if !(0.0..=1.0).contains(&req.sample_rate) || req.sample_rate.is_nan() {
        return Err(Error::invalid(
            "sample_rate",
            "sample_rate must be in (0, 1], or 0 for an exact answer",
        ));
    }
    let sample_rate = if req.sample_rate == 0.0 {
        1.0
    } else {
        req.sample_rate
    };
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
    Ok(Plan {
        metrics,
        dims,
        ranges,
        comparisons,
        filter,
        tz,
        include_bots: req.include_bots,
        order,
        limit: limit as usize,
        offset: usize::try_from(req.offset).unwrap_or(usize::MAX),
        session_timeout_micros: i64::from(site.session_timeout_minutes.max(1)) * 60_000_000,
        currency,
        goal,
        sample_rate,
    })
}

/// The comparison range of each requested range, named like it.
fn comparisons(
    req: &v1::RunReportRequest,
    ranges: &[ResolvedRange],
    tz: Tz,
    now_micros: i64,
) -> Result<Vec<ResolvedRange>> {
    let mode = v1::ComparisonMode::try_from(req.comparison)
        .map_err(|_| Error::invalid("comparison", "unknown comparison mode"))?;
    let shifted = |r: &ResolvedRange, start: Option<NaiveDate>, end: Option<NaiveDate>| match (start, end) {
        (Some(s), Some(e)) => Ok(range_of(r.name.clone(), s, e, tz)),
        _ => Err(Error::invalid(
            "comparison",
            "the comparison period is out of range",
        )),
    };
    match mode {
        v1::ComparisonMode::Unspecified => {
            if req.comparison_range.is_some() {
                return Err(Error::invalid(
                    "comparison_range",
                    "set comparison to COMPARISON_MODE_CUSTOM to use comparison_range",
                ));
            }
            Ok(Vec::new())
        }
        v1::ComparisonMode::PreviousPeriod => ranges
            .iter()
            .map(|r| {
                let days = Days::new((r.end_date - r.start_date).num_days() as u64 + 1);
                shifted(
                    r,
                    r.start_date.checked_sub_days(days),
                    r.end_date.checked_sub_days(days),
                )
            })
            .collect(),
        v1::ComparisonMode::PreviousYear => ranges
            .iter()
            .map(|r| {
                let year_before = |d: NaiveDate| {
                    // 29 February maps to 28 February.
                    d.checked_sub_months(Months::new(12))
                        .filter(|x| x.day() == d.day() || d.day() == 29)
                };
                shifted(r, year_before(r.start_date), year_before(r.end_date))
            })
            .collect(),
        v1::ComparisonMode::Custom => {
            let Some(c) = &req.comparison_range else {
                return Err(Error::invalid(
                    "comparison_range",
                    "COMPARISON_MODE_CUSTOM needs a comparison_range",
                ));
            };
            if ranges.len() != 1 {
                return Err(Error::invalid(
                    "comparison_range",
                    "a custom comparison needs exactly one date range",
                ));
            }
            let resolved = dates::resolve(
                "comparison_range",
                &c.start_date,
                &c.end_date,
                ranges[0].name.clone(),
                tz,
                now_micros,
            )?;
            Ok(vec![resolved])
        }
    }
}

fn range_of(name: String, start_date: NaiveDate, end_date: NaiveDate, tz: Tz) -> ResolvedRange {
    let after_end = end_date.checked_add_days(Days::new(1)).unwrap_or(end_date);
    ResolvedRange {
        name,
        start_date,
        end_date,
        start_micros: dates::start_of_day(start_date, tz),
        end_micros: dates::start_of_day(after_end, tz),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SiteRecord;

    fn site() -> SiteRecord {
        SiteRecord {
            site_id: "s".into(),
            time_zone: "Europe/Berlin".into(),
            session_timeout_minutes: 30,
            ..Default::default()
        }
    }

    fn request(start: &str, end: &str, mode: v1::ComparisonMode) -> v1::RunReportRequest {
        v1::RunReportRequest {
            site_id: "s".into(),
            metrics: vec![Metric::Pageviews as i32],
            date_ranges: vec![v1::DateRange {
                start_date: start.into(),
                end_date: end.into(),
                name: String::new(),
            }],
            comparison: mode as i32,
            ..Default::default()
        }
    }

    fn dates_of(p: &Plan) -> Vec<(String, String)> {
        p.comparisons
            .iter()
            .map(|r| (r.start_date.to_string(), r.end_date.to_string()))
            .collect()
    }

    #[test]
    fn previous_period_is_the_same_length_right_before() {
        let p = plan(
            &site(),
            &request("2026-03-01", "2026-03-31", v1::ComparisonMode::PreviousPeriod),
            0,
        )
        .unwrap();
        assert_eq!(dates_of(&p), [("2026-01-29".into(), "2026-02-28".into())]);
        assert_eq!(p.comparisons[0].name, p.ranges[0].name);
    }

    #[test]
    fn previous_year_maps_leap_day_to_28_february() {
        let p = plan(
            &site(),
            &request("2028-02-29", "2028-03-01", v1::ComparisonMode::PreviousYear),
            0,
        )
        .unwrap();
        assert_eq!(dates_of(&p), [("2027-02-28".into(), "2027-03-01".into())]);
    }

    #[test]
    fn conversion_rate_needs_a_goal_and_currency_is_checked() {
        let mut r = request("2026-03-01", "2026-03-31", v1::ComparisonMode::Unspecified);
        r.metrics = vec![Metric::ConversionRate as i32];
        assert!(plan(&site(), &r, 0).is_err());
        r.metrics = vec![Metric::Revenue as i32];
        r.revenue_currency = "euro".into();
        assert!(plan(&site(), &r, 0).is_err());
        r.revenue_currency = "eur".into();
        assert_eq!(plan(&site(), &r, 0).unwrap().currency, "EUR");
    }
}
