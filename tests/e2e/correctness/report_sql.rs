//! A report shape: the `RunReport` request, and the same question in SQL.
//!
//! Each shape names its dimensions and filter twice: as the request's
//! protobuf (built with the helpers below) and as SQL over the exported
//! columns (see `tests/duckdb/oracle.py`). What every report shares (date
//! ranges in the time zone, bots and identify events left out, visits,
//! per-visit metrics, time on page, grouping, order, paging, totals) is
//! written once here, from the report semantics in README.md:
//!
//! - events count when they are not identify events (and not bots unless
//!   `include_bots`), in a date range, and match the filter;
//! - visitors and visits are distinct `visitor_id` and `session_id`;
//! - a visit's bounce, duration, entry and exit page are taken over all its
//!   events (filter or not) within the scanned span, from the first range's
//!   start to the last range's end; a visit counts in every row where it has
//!   an event;
//! - time on page is the time to the next page or screen view of the same
//!   visit within that span (in export order), averaged over the views that
//!   have one;
//! - rows are ordered as requested, by default time dimensions ascending and
//!   then the first metric descending; ties break on the dimension values.

use chrono::{Days, NaiveDate};
use tally_proto::v1::{self, Dimension as D, Metric as M};

/// The metrics the current engine computes, with their SQL column.
pub const METRIC_COLUMNS: [(M, &str); 8] = [
    (M::Visitors, "visitors"),
    (M::Visits, "visits"),
    (M::Pageviews, "pageviews"),
    (M::Events, "events"),
    (M::ViewsPerVisit, "views_per_visit"),
    (M::BounceRate, "bounce_rate"),
    (M::VisitDuration, "visit_duration"),
    (M::TimeOnPage, "time_on_page"),
];

/// The SQL column of `metric`.
pub fn column(metric: M) -> &'static str {
    METRIC_COLUMNS
        .iter()
        .find(|(m, _)| *m == metric)
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("no SQL for {metric:?} yet: add it to METRIC_COLUMNS"))
}

/// Integer metrics (counts); the others are floats.
pub fn is_count(metric: M) -> bool {
    matches!(metric, M::Visitors | M::Visits | M::Pageviews | M::Events)
}

/// Unique counts, and what is computed from them: estimated when the
/// response is not exact.
pub fn is_unique(metric: M) -> bool {
    matches!(metric, M::Visitors | M::Visits | M::ViewsPerVisit)
}

/// A report shape.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Name, printed and used as the query name.
    pub name: &'static str,
    /// The request (without `site_id`).
    pub request: v1::RunReportRequest,
    /// SQL expression of each requested dimension, over the columns of
    /// `events` plus `entry` and `exit` (the visit's first and last page);
    /// `{tz}` stands for the report's time zone as an SQL string.
    pub dims_sql: Vec<String>,
    /// SQL predicate of the request's filter (`{tz}` as above).
    pub filter_sql: String,
}

/// Starts a shape.
pub fn shape(name: &'static str) -> Shape {
    Shape {
        name,
        request: v1::RunReportRequest::default(),
        dims_sql: Vec::new(),
        filter_sql: "true".into(),
    }
}

/// A standard dimension.
pub fn std_dim(d: D) -> v1::DimensionSpec {
    v1::DimensionSpec {
        kind: Some(v1::dimension_spec::Kind::Standard(d as i32)),
    }
}

/// A custom property dimension.
pub fn prop_dim(key: &str) -> v1::DimensionSpec {
    v1::DimensionSpec {
        kind: Some(v1::dimension_spec::Kind::Property(key.into())),
    }
}

fn filter(dimension: v1::DimensionSpec, condition: v1::filter::Condition) -> v1::FilterExpression {
    v1::FilterExpression {
        expr: Some(v1::filter_expression::Expr::Filter(v1::Filter {
            dimension: Some(dimension),
            condition: Some(condition),
        })),
    }
}

/// A string match.
pub fn matches(
    dimension: v1::DimensionSpec,
    kind: v1::MatchType,
    value: &str,
    case_sensitive: bool,
) -> v1::FilterExpression {
    filter(
        dimension,
        v1::filter::Condition::StringMatch(v1::StringMatch {
            match_type: kind as i32,
            value: value.into(),
            case_sensitive,
        }),
    )
}

/// An in-list match.
pub fn in_list(dimension: v1::DimensionSpec, values: &[&str], case_sensitive: bool) -> v1::FilterExpression {
    filter(
        dimension,
        v1::filter::Condition::InList(v1::InListMatch {
            values: values.iter().map(|v| v.to_string()).collect(),
            case_sensitive,
        }),
    )
}

/// A numeric comparison.
pub fn numeric(dimension: v1::DimensionSpec, op: v1::NumericOperator, value: f64) -> v1::FilterExpression {
    filter(
        dimension,
        v1::filter::Condition::Numeric(v1::NumericMatch {
            operator: op as i32,
            value,
        }),
    )
}

/// Has a value (or not).
pub fn is_set(dimension: v1::DimensionSpec, set: bool) -> v1::FilterExpression {
    filter(dimension, v1::filter::Condition::IsSet(set))
}

/// All of.
pub fn and(all: Vec<v1::FilterExpression>) -> v1::FilterExpression {
    v1::FilterExpression {
        expr: Some(v1::filter_expression::Expr::AndGroup(v1::FilterExpressionList {
            expressions: all,
        })),
    }
}

/// Any of.
pub fn or(any: Vec<v1::FilterExpression>) -> v1::FilterExpression {
    v1::FilterExpression {
        expr: Some(v1::filter_expression::Expr::OrGroup(v1::FilterExpressionList {
            expressions: any,
        })),
    }
}

/// Not.
pub fn not(inner: v1::FilterExpression) -> v1::FilterExpression {
    v1::FilterExpression {
        expr: Some(v1::filter_expression::Expr::NotExpression(Box::new(inner))),
    }
}

impl Shape {
    /// The metrics.
    pub fn metrics(mut self, metrics: &[M]) -> Self {
        self.request.metrics = metrics.iter().map(|m| *m as i32).collect();
        self
    }

    /// A standard dimension and its SQL.
    pub fn dim(mut self, d: D, sql: &str) -> Self {
        self.request.dimensions.push(std_dim(d));
        self.dims_sql.push(sql.into());
        self
    }

    /// A custom property dimension (its SQL is the property's text, '' when absent).
    pub fn prop(mut self, key: &str) -> Self {
        self.request.dimensions.push(prop_dim(key));
        self.dims_sql
            .push(format!("coalesce(prop_text(properties, '{key}'), '')"));
        self
    }

    /// A date range ("YYYY-MM-DD", "today", "yesterday", "NdaysAgo").
    pub fn range(mut self, start: &str, end: &str) -> Self {
        self.request.date_ranges.push(v1::DateRange {
            start_date: start.into(),
            end_date: end.into(),
            name: String::new(),
        });
        self
    }

    /// A named date range.
    pub fn named_range(mut self, name: &str, start: &str, end: &str) -> Self {
        self.request.date_ranges.push(v1::DateRange {
            start_date: start.into(),
            end_date: end.into(),
            name: name.into(),
        });
        self
    }

    /// The report's time zone (default: the site's).
    pub fn tz(mut self, tz: &str) -> Self {
        self.request.time_zone = tz.into();
        self
    }

    /// The filter, and the same in SQL.
    pub fn filter(mut self, expr: v1::FilterExpression, sql: &str) -> Self {
        self.request.filter = Some(expr);
        self.filter_sql = sql.into();
        self
    }

    /// Sort by a metric.
    pub fn order_metric(mut self, metric: M, desc: bool) -> Self {
        self.request.order_bys.push(v1::OrderBy {
            key: Some(v1::order_by::Key::Metric(metric as i32)),
            desc,
        });
        self
    }

    /// Sort by a dimension.
    pub fn order_dim(mut self, dim: v1::DimensionSpec, desc: bool) -> Self {
        self.request.order_bys.push(v1::OrderBy {
            key: Some(v1::order_by::Key::Dimension(dim)),
            desc,
        });
        self
    }

    /// Limit.
    pub fn limit(mut self, limit: i64) -> Self {
        self.request.limit = limit;
        self
    }

    /// Offset.
    pub fn offset(mut self, offset: i64) -> Self {
        self.request.offset = offset;
        self
    }

    /// Count bots too.
    pub fn bots(mut self) -> Self {
        self.request.include_bots = true;
        self
    }

    /// The requested metrics.
    pub fn metric_list(&self) -> Vec<M> {
        self.request
            .metrics
            .iter()
            .map(|m| M::try_from(*m).expect("a known metric"))
            .collect()
    }
}

/// Where the SQL is evaluated: the report's time zone and today there.
pub struct Frame<'a> {
    /// IANA time zone.
    pub tz: &'a str,
    /// Today in `tz`.
    pub today: NaiveDate,
}

/// A request date as a date, relative to `today`.
pub fn resolve_date(raw: &str, today: NaiveDate) -> NaiveDate {
    match raw {
        "today" => today,
        "yesterday" => today - Days::new(1),
        _ => match raw.strip_suffix("daysAgo") {
            Some(n) => today - Days::new(n.parse().expect("NdaysAgo")),
            None => NaiveDate::parse_from_str(raw, "%Y-%m-%d").expect("YYYY-MM-DD"),
        },
    }
}

/// The ranges of a request: (name, first day, day after the last).
pub fn ranges(request: &v1::RunReportRequest, today: NaiveDate) -> Vec<(String, NaiveDate, NaiveDate)> {
    let default = [v1::DateRange {
        start_date: "29daysAgo".into(),
        end_date: "today".into(),
        name: String::new(),
    }];
    let list = if request.date_ranges.is_empty() {
        &default[..]
    } else {
        &request.date_ranges[..]
    };
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            let name = if r.name.is_empty() {
                format!("date_range_{i}")
            } else {
                r.name.clone()
            };
            let end = resolve_date(&r.end_date, today) + Days::new(1);
            (name, resolve_date(&r.start_date, today), end)
        })
        .collect()
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Shape {
    fn is_time(d: &v1::DimensionSpec) -> bool {
        matches!(
            d.kind,
            Some(v1::dimension_spec::Kind::Standard(n))
                if [D::TimeMinute, D::TimeHour, D::TimeDay, D::TimeWeek, D::TimeMonth]
                    .iter()
                    .any(|t| *t as i32 == n)
        )
    }

    /// The dimension columns of the answer: the range name first when there
    /// are several ranges, then the requested ones.
    fn columns(&self, multi_range: bool) -> Vec<(String, String)> {
        let mut dims = Vec::new();
        if multi_range {
            dims.push(("range_name".to_string(), "d_range".to_string()));
        }
        for (i, sql) in self.dims_sql.iter().enumerate() {
            dims.push((sql.clone(), format!("d{i}")));
        }
        dims
    }

    /// The CTEs up to `per_visit`: events in ranges that pass the filter, one
    /// row per (group, visit) with what the metrics need.
    fn common(&self, frame: &Frame, group: &[(String, String)]) -> String {
        let metrics = self.metric_list();
        let ranges = ranges(&self.request, frame.today);
        let tz = quote(frame.tz);
        let values: Vec<String> = ranges
            .iter()
            .enumerate()
            .map(|(i, (name, start, after_end))| {
                format!(
                    "({i}, {}, day_start('{start}', {tz}), day_start('{after_end}', {tz}))",
                    quote(name)
                )
            })
            .collect();
        // Entry and exit pages, bounce and duration are facts of whole visits.
        let mut sql_parts = self.dims_sql.iter().chain([&self.filter_sql]);
        let uses_visit = sql_parts.any(|sql| mentions(sql, "entry") || mentions(sql, "exit"))
            || metrics
                .iter()
                .any(|m| matches!(m, M::BounceRate | M::VisitDuration));
        let uses_spent = metrics.contains(&M::TimeOnPage);
        let bots = if self.request.include_bots {
            ""
        } else {
            "AND NOT e.bot"
        };
        let mut sql = format!(
            "WITH ranges(range_index, range_name, lo, hi) AS (VALUES {}),
hull AS (SELECT min(lo) AS lo, max(hi) AS hi FROM ranges),
scan AS (SELECT e.* FROM events e, hull WHERE e.us >= hull.lo AND e.us < hull.hi AND e.kind <> 'identify' {bots}),\n",
            values.join(", ")
        );
        if uses_visit {
            sql.push_str(
                "visit AS (SELECT session_id,
    (max(us) - min(us)) / 1e6 AS duration,
    count(*) FILTER (WHERE is_view) <= 1
      AND NOT coalesce(bool_or(kind IN ('custom', 'engagement') AND NOT non_interaction), false) AS bounced,
    coalesce(arg_min(path, seq) FILTER (WHERE is_view), '') AS entry,
    coalesce(arg_max(path, seq) FILTER (WHERE is_view), '') AS exit
  FROM scan GROUP BY session_id),\n",
            );
        }
        if uses_spent {
            sql.push_str(
                "spent AS (SELECT seq, lead(us) OVER (PARTITION BY session_id ORDER BY seq) - us AS spent_us
  FROM scan WHERE is_view),\n",
            );
        }
        let visit_cols = if uses_visit {
            ", v.duration, v.bounced, v.entry, v.exit"
        } else {
            ", NULL::DOUBLE AS duration, NULL::BOOLEAN AS bounced"
        };
        let spent_col = if uses_spent {
            ", t.spent_us"
        } else {
            ", NULL::BIGINT AS spent_us"
        };
        let joins = format!(
            "{}{}",
            if uses_visit {
                " JOIN visit v USING (session_id)"
            } else {
                ""
            },
            if uses_spent {
                " LEFT JOIN spent t USING (seq)"
            } else {
                ""
            }
        );
        let group_select: Vec<String> = group
            .iter()
            .map(|(sql, alias)| format!("{} AS {alias}", sql.replace("{tz}", &tz)))
            .collect();
        let group_names: Vec<&str> = group.iter().map(|(_, alias)| alias.as_str()).collect();
        let filter = self.filter_sql.replace("{tz}", &tz);
        sql.push_str(&format!(
            "hits AS (SELECT r.range_index, r.range_name, s.*{visit_cols}{spent_col}
  FROM scan s JOIN ranges r ON s.us >= r.lo AND s.us < r.hi{joins}
  WHERE ({filter})),\n"
        ));
        sql.push_str(&format!(
            "per_visit AS (SELECT {}session_id, any_value(visitor_id) AS visitor_id,
    count(*) FILTER (WHERE is_view) AS pageviews, count(*) AS events,
    sum(spent_us) AS spent_sum, count(spent_us) AS spent_n,
    any_value(bounced) AS bounced, any_value(duration) AS duration
  FROM hits GROUP BY {}session_id)\n",
            group_select.iter().map(|s| format!("{s}, ")).collect::<String>(),
            group_names.iter().map(|s| format!("{s}, ")).collect::<String>(),
        ));
        sql
    }

    /// The aggregate columns, in `METRIC_COLUMNS` order.
    const AGGREGATES: &'static str = "count(DISTINCT visitor_id) AS visitors, count(*) AS visits,
    sum(pageviews) AS pageviews, sum(events) AS events,
    sum(pageviews) / count(*) AS views_per_visit,
    100 * avg(CAST(bounced AS INTEGER)) AS bounce_rate,
    avg(duration) AS visit_duration,
    coalesce(sum(spent_sum) / sum(spent_n) / 1e6, 0) AS time_on_page";

    /// SQL answering with `row_count`, the dimension columns and every metric
    /// column, for the requested page of rows in the requested order.
    pub fn rows_sql(&self, frame: &Frame) -> String {
        let multi = ranges(&self.request, frame.today).len() > 1;
        let group = self.columns(multi);
        let names: Vec<String> = group.iter().map(|(_, alias)| alias.clone()).collect();
        let mut order: Vec<String> = Vec::new();
        let dim_alias = |spec: &v1::DimensionSpec| {
            let i = self
                .request
                .dimensions
                .iter()
                .position(|d| d == spec)
                .expect("order by a requested dimension");
            format!("d{i}")
        };
        if self.request.order_bys.is_empty() {
            for (i, d) in self.request.dimensions.iter().enumerate() {
                if Self::is_time(d) {
                    order.push(format!("d{i} ASC"));
                }
            }
            order.push(format!("{} DESC", column(self.metric_list()[0])));
        } else {
            for o in &self.request.order_bys {
                let key = match &o.key {
                    Some(v1::order_by::Key::Metric(m)) => column(M::try_from(*m).unwrap()).to_string(),
                    Some(v1::order_by::Key::Dimension(d)) => dim_alias(d),
                    None => panic!("order by nothing"),
                };
                order.push(format!("{key} {}", if o.desc { "DESC" } else { "ASC" }));
            }
        }
        order.extend(names.iter().map(|n| format!("{n} ASC")));
        let limit = if self.request.limit == 0 {
            1000
        } else {
            self.request.limit
        };
        format!(
            "{}, grouped AS (SELECT {}{} FROM per_visit GROUP BY ALL HAVING count(*) > 0)
SELECT count(*) OVER () AS row_count, * FROM grouped
ORDER BY {} LIMIT {limit} OFFSET {}",
            self.common(frame, &group),
            names.iter().map(|n| format!("{n}, ")).collect::<String>(),
            Self::AGGREGATES,
            order.join(", "),
            self.request.offset,
        )
    }

    /// SQL answering one row per date range, in request order, with the
    /// range's instants (`lo`, `hi`, microseconds) and every metric column
    /// (NULL counts for a range without events).
    pub fn totals_sql(&self, frame: &Frame) -> String {
        let group = vec![("range_index".to_string(), "range_index".to_string())];
        format!(
            "{}, grouped AS (SELECT range_index, {} FROM per_visit GROUP BY range_index)
SELECT r.range_name, r.lo, r.hi, g.* EXCLUDE (range_index)
FROM ranges r LEFT JOIN grouped g USING (range_index) ORDER BY r.range_index",
            self.common(frame, &group),
            Self::AGGREGATES,
        )
    }
}

/// Whether `sql` uses `word` as a name (not inside a longer name).
fn mentions(sql: &str, word: &str) -> bool {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|token| token == word)
}
