//! Funnel shapes checked against DuckDB: each a `RunFunnelReport` request
//! and its steps and filter in SQL.
//!
//! The SQL is written from the funnel semantics in README.md, declaratively:
//! an *attempt* starts at an event of a starting step inside the date range
//! (step 1 in a closed funnel, any step in an open one) and reaches step
//! `k + 1` at the first event of that step after the event that reached step
//! `k` (in (timestamp, event id) order), no later than the conversion window
//! after the start. One CTE per (starting step, step) joins the attempts
//! that reached a step with the events of the next. From every attempt's
//! steps in one long table:
//!
//! - closed: a visitor counts at every step up to the depth of its furthest
//!   attempt (the earliest such start on ties), with that attempt's times;
//! - open: a visitor counts at every step some attempt reached; the time from
//!   the previous step is that of the first attempt (by start, then starting
//!   step) that reached the step from an earlier one.
//!
//! Medians and 95th percentiles are the nearest rank, in microseconds.

use chrono::{Days, NaiveDate};
use tally_proto::v1::{self, Dimension as D, MatchType as T};

use super::report_sql::{Frame, matches, resolve_date, std_dim};

/// A funnel shape.
pub struct FunnelShape {
    /// Name, printed and used as the query name.
    pub name: &'static str,
    /// The request (without `site_id`).
    pub request: v1::RunFunnelReportRequest,
    /// SQL predicate of each step over the columns of `events`.
    steps_sql: Vec<String>,
    /// SQL predicate of the request's filter.
    filter_sql: String,
}

fn funnel(name: &'static str, start: &str, end: &str) -> FunnelShape {
    FunnelShape {
        name,
        request: v1::RunFunnelReportRequest {
            date_range: Some(v1::DateRange {
                start_date: start.into(),
                end_date: end.into(),
                name: String::new(),
            }),
            ..Default::default()
        },
        steps_sql: Vec::new(),
        filter_sql: "true".into(),
    }
}

impl FunnelShape {
    /// A page-view step: a view whose path matches (`sql` over `path`).
    fn page(mut self, kind: T, value: &str, case_sensitive: bool, sql: &str) -> Self {
        self.request.steps.push(v1::FunnelStep {
            name: String::new(),
            r#match: Some(v1::funnel_step::Match::Page(v1::StringMatch {
                match_type: kind as i32,
                value: value.into(),
                case_sensitive,
            })),
            filter: None,
        });
        self.steps_sql.push(format!("is_view AND ({sql})"));
        self
    }

    /// A custom-event step.
    fn event(mut self, name: &str) -> Self {
        self.request.steps.push(v1::FunnelStep {
            name: name.into(),
            r#match: Some(v1::funnel_step::Match::EventName(name.into())),
            filter: None,
        });
        self.steps_sql
            .push(format!("kind = 'custom' AND name = '{name}'"));
        self
    }

    /// An extra condition on the last step added.
    fn step_filter(mut self, expr: v1::FilterExpression, sql: &str) -> Self {
        let last = self.request.steps.len() - 1;
        self.request.steps[last].filter = Some(expr);
        self.steps_sql[last] = format!("{} AND ({sql})", self.steps_sql[last]);
        self
    }

    fn window_secs(mut self, seconds: i64) -> Self {
        self.request.conversion_window = Some(prost_types::Duration { seconds, nanos: 0 });
        self
    }

    fn open(mut self) -> Self {
        self.request.open = true;
        self
    }

    fn tz(mut self, tz: &str) -> Self {
        self.request.time_zone = tz.into();
        self
    }

    fn filter(mut self, expr: v1::FilterExpression, sql: &str) -> Self {
        self.request.filter = Some(expr);
        self.filter_sql = sql.into();
        self
    }

    /// The window in microseconds (7 days unless set).
    fn window_micros(&self) -> i64 {
        self.request
            .conversion_window
            .as_ref()
            .map_or(7 * 86_400_000_000, |d| d.seconds * 1_000_000)
    }

    /// The SQL: one row per step reached, `(step, visitors, median_us, p95_us)`.
    pub fn sql(&self, frame: &Frame) -> String {
        let range = self.request.date_range.as_ref().expect("a date range");
        let start = resolve_date(&range.start_date, frame.today);
        let after_end: NaiveDate = resolve_date(&range.end_date, frame.today) + Days::new(1);
        let tz = format!("'{}'", frame.tz);
        let window = self.window_micros();
        let n = self.steps_sql.len();
        let hits: Vec<String> = self
            .steps_sql
            .iter()
            .enumerate()
            .map(|(i, sql)| format!("({sql}) AS h{i}"))
            .collect();
        let any_hit: Vec<String> = (0..n).map(|i| format!("h{i}")).collect();
        let mut sql = format!(
            "WITH bounds AS (SELECT day_start('{start}', {tz}) AS lo, day_start('{after_end}', {tz}) AS hi),
scan AS (SELECT visitor_id AS v, us, event_id, {hits}
  FROM events, bounds
  WHERE kind <> 'identify' AND NOT bot AND us >= lo AND us < hi + {window} AND ({filter})),
hits AS (SELECT *, row_number() OVER (PARTITION BY v ORDER BY us, event_id) AS pos
  FROM scan WHERE {any_hit}),\n",
            hits = hits.join(", "),
            filter = self.filter_sql,
            any_hit = any_hit.join(" OR "),
        );
        let firsts = if self.request.open { n } else { 1 };
        let mut long = Vec::new();
        for first in 0..firsts {
            sql.push_str(&format!(
                "a{first}_{first} AS (SELECT v, pos AS start, us AS t0, pos, us AS t, NULL::BIGINT AS prev_t
  FROM hits, bounds WHERE h{first} AND us >= lo AND us < hi),\n"
            ));
            for step in first + 1..n {
                let previous = step - 1;
                sql.push_str(&format!(
                    "a{first}_{step} AS (SELECT a.v, a.start, a.t0, min(e.pos) AS pos,
    arg_min(e.us, e.pos) AS t, any_value(a.t) AS prev_t
  FROM a{first}_{previous} a JOIN hits e
    ON e.v = a.v AND e.pos > a.pos AND e.h{step} AND e.us - a.t0 <= {window}
  GROUP BY a.v, a.start, a.t0),\n"
                ));
            }
            for step in first..n {
                long.push(format!(
                    "SELECT v, start, {first} AS first, {step} AS step, t - prev_t AS gap FROM a{first}_{step}"
                ));
            }
        }
        sql.push_str(&format!("reached AS ({}),\n", long.join("\nUNION ALL ")));
        if self.request.open {
            sql.push_str(
                "per_step AS (SELECT v, step,
    arg_min(gap, start * 64 + first) FILTER (WHERE first < step) AS gap
  FROM reached GROUP BY v, step)\n",
            );
        } else {
            sql.push_str(
                "depth AS (SELECT v, start, max(step) AS depth FROM reached GROUP BY v, start),
chosen AS (SELECT v, arg_min(start, start - depth * 1000000000000) AS start FROM depth GROUP BY v),
per_step AS (SELECT r.v, r.step, r.gap FROM reached r JOIN chosen c ON r.v = c.v AND r.start = c.start)\n",
            );
        }
        sql.push_str(
            "SELECT step, count(*) AS visitors,
  list_sort(list(gap) FILTER (WHERE gap IS NOT NULL))[greatest(1, CAST(ceil(0.5 * count(gap)) AS BIGINT))] AS median_us,
  list_sort(list(gap) FILTER (WHERE gap IS NOT NULL))[greatest(1, CAST(ceil(0.95 * count(gap)) AS BIGINT))] AS p95_us
FROM per_step GROUP BY step ORDER BY step",
        );
        sql
    }
}

/// Every funnel shape; `day(n)` is the date `n` days before the data set's last day.
pub fn all(day: impl Fn(i64) -> String) -> Vec<FunnelShape> {
    vec![
        funnel("funnel_closed_home_pricing_signup", &day(27), &day(0))
            .page(T::Exact, "/", true, "path = '/'")
            .page(T::Exact, "/PRICING", false, "lower(path) = '/pricing'")
            .page(T::Exact, "/signup", true, "path = '/signup'")
            .event("signup"),
        funnel("funnel_open_one_hour_desktop", &day(13), &day(7))
            .open()
            .window_secs(3600)
            .page(T::Exact, "/pricing", true, "path = '/pricing'")
            .page(T::Prefix, "/sign", true, "starts_with(path, '/sign')")
            .event("signup")
            .event("purchase")
            .filter(
                matches(std_dim(D::DeviceType), T::Exact, "desktop", true),
                "device = 'desktop'",
            ),
        funnel("funnel_closed_new_york_step_filter", &day(20), &day(14))
            .tz("America/New_York")
            .window_secs(2 * 86_400)
            .page(
                T::Regex,
                "^/(features|integrations)",
                true,
                "regexp_matches(path, '^/(features|integrations)')",
            )
            .page(T::Contains, "PRIC", false, "contains(lower(path), 'pric')")
            .event("signup")
            .step_filter(
                matches(std_dim(D::Country), T::Exact, "de", false),
                "lower(country) = 'de'",
            ),
    ]
}

/// Compares a funnel answer with DuckDB's rows (`step, visitors, median_us,
/// p95_us`); returns the number of steps compared, or what differs.
pub fn compare(
    shape: &FunnelShape,
    response: &v1::RunFunnelReportResponse,
    rows: &super::oracle::QueryResult,
) -> Result<usize, String> {
    let n = shape.request.steps.len();
    let mut want = vec![(0i64, None, None); n];
    for row in &rows.rows {
        let step = row[0].as_i64().expect("step") as usize;
        want[step] = (
            row[1].as_i64().expect("visitors"),
            row[2].as_i64(),
            row[3].as_i64(),
        );
    }
    let micros = |d: &Option<prost_types::Duration>| {
        d.as_ref()
            .map(|d| d.seconds * 1_000_000 + i64::from(d.nanos) / 1000)
    };
    let percent = |a: i64, b: i64| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    if response.steps.len() != n {
        return Err(format!("{} steps answered, {n} asked", response.steps.len()));
    }
    if want[0].0 == 0 {
        return Err("DuckDB finds no visitor at the first step: the shape tests nothing".into());
    }
    let mut problems = Vec::new();
    for (k, (got, &(visitors, median, p95))) in response.steps.iter().zip(&want).enumerate() {
        let previous = if k == 0 { visitors } else { want[k - 1].0 };
        let expected = (
            visitors,
            if k == 0 {
                100.0
            } else {
                percent(visitors, previous)
            },
            percent(visitors, want[0].0),
            previous - visitors,
            if k == 0 { None } else { median },
            if k == 0 { None } else { p95 },
        );
        let answered = (
            got.visitors,
            got.conversion_from_previous,
            got.conversion_from_first,
            got.drop_off,
            micros(&got.median_time_from_previous),
            micros(&got.p95_time_from_previous),
        );
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        if answered.0 != expected.0
            || !close(answered.1, expected.1)
            || !close(answered.2, expected.2)
            || answered.3 != expected.3
            || answered.4 != expected.4
            || answered.5 != expected.5
        {
            problems.push(format!(
                "  step {k} ({}): tally {answered:?} | duckdb {expected:?}",
                got.name
            ));
        }
    }
    if problems.is_empty() {
        Ok(n)
    } else {
        Err(format!(
            "steps differ (visitors, % of previous, % of first, drop-off, median us, p95 us):\n{}",
            problems.join("\n")
        ))
    }
}
