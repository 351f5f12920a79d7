//! The exported client: the few calls an app or an in-app dashboard needs
//! (a report, and creating sites and keys for set-up scripts and tests), each
//! a one-line delegation to `tally_sdk::Client`. Services that want the whole
//! API use `sdk-rust` or a client generated from `proto/`.

use std::sync::Arc;

use tally_sdk::proto as v1;

use crate::error::TallyError;
use crate::runtime::runtime;

/// A report metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Metric {
    /// Unique visitors.
    Visitors,
    /// Visits (sessions).
    Visits,
    /// Page and screen views.
    Pageviews,
    /// All events, views included.
    Events,
    /// Views per visit.
    ViewsPerVisit,
    /// Share of single-view visits, in percent.
    BounceRate,
    /// Mean visit duration in seconds.
    VisitDuration,
    /// Mean time on page in seconds.
    TimeOnPage,
    /// Share of visitors who converted, in percent.
    ConversionRate,
    /// Sum of revenue.
    Revenue,
}

impl Metric {
    fn to_proto(self) -> v1::Metric {
        match self {
            Self::Visitors => v1::Metric::Visitors,
            Self::Visits => v1::Metric::Visits,
            Self::Pageviews => v1::Metric::Pageviews,
            Self::Events => v1::Metric::Events,
            Self::ViewsPerVisit => v1::Metric::ViewsPerVisit,
            Self::BounceRate => v1::Metric::BounceRate,
            Self::VisitDuration => v1::Metric::VisitDuration,
            Self::TimeOnPage => v1::Metric::TimeOnPage,
            Self::ConversionRate => v1::Metric::ConversionRate,
            Self::Revenue => v1::Metric::Revenue,
        }
    }
}

/// A report dimension: the standard ones an app reports by, or a custom property.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Dimension {
    /// Hour, "YYYY-MM-DDTHH:00" in the report time zone.
    Hour,
    /// Day, "YYYY-MM-DD".
    Day,
    /// ISO week, as the date of its Monday.
    Week,
    /// Month, "YYYY-MM".
    Month,
    /// Page path or screen name.
    Page,
    /// Host name of the page URL.
    Hostname,
    /// Traffic source.
    Source,
    /// Country code.
    Country,
    /// Device class.
    DeviceType,
    /// Operating system.
    Os,
    /// Operating system version.
    OsVersion,
    /// App version.
    AppVersion,
    /// Event name.
    EventName,
    /// Event type: "pageview", "custom", "screen_view".
    EventType,
    /// A custom property, e.g. "plan".
    Property {
        /// The property key.
        key: String,
    },
}

impl Dimension {
    fn to_proto(&self) -> v1::DimensionSpec {
        use v1::dimension_spec::Kind;
        let standard = match self {
            Self::Property { key } => {
                return v1::DimensionSpec {
                    kind: Some(Kind::Property(key.clone())),
                };
            }
            Self::Hour => v1::Dimension::TimeHour,
            Self::Day => v1::Dimension::TimeDay,
            Self::Week => v1::Dimension::TimeWeek,
            Self::Month => v1::Dimension::TimeMonth,
            Self::Page => v1::Dimension::Page,
            Self::Hostname => v1::Dimension::Hostname,
            Self::Source => v1::Dimension::Source,
            Self::Country => v1::Dimension::Country,
            Self::DeviceType => v1::Dimension::DeviceType,
            Self::Os => v1::Dimension::Os,
            Self::OsVersion => v1::Dimension::OsVersion,
            Self::AppVersion => v1::Dimension::AppVersion,
            Self::EventName => v1::Dimension::EventName,
            Self::EventType => v1::Dimension::EventType,
        };
        v1::DimensionSpec {
            kind: Some(Kind::Standard(standard as i32)),
        }
    }
}

/// Only events whose `dimension` is exactly `value` are counted.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct ReportFilter {
    /// The dimension tested.
    pub dimension: Dimension,
    /// The value it must have (case-sensitive).
    pub value: String,
}

/// A report: metrics by dimensions over one date range.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct ReportQuery {
    /// The site.
    pub site_id: String,
    /// Metrics, in column order.
    pub metrics: Vec<Metric>,
    /// Dimensions to group by; none gives one row of totals.
    #[uniffi(default = [])]
    pub dimensions: Vec<Dimension>,
    /// First day ("YYYY-MM-DD", "today", "7daysAgo"); unset with `end_date` means the last 30 days.
    #[uniffi(default = None)]
    pub start_date: Option<String>,
    /// Last day, inclusive.
    #[uniffi(default = None)]
    pub end_date: Option<String>,
    /// Conditions that must all hold.
    #[uniffi(default = [])]
    pub filters: Vec<ReportFilter>,
    /// Most rows returned. Default 1,000.
    #[uniffi(default = None)]
    pub limit: Option<u32>,
}

impl ReportQuery {
    fn into_proto(self) -> v1::RunReportRequest {
        use v1::filter_expression::Expr;
        let filters: Vec<v1::FilterExpression> = self
            .filters
            .iter()
            .map(|filter| v1::FilterExpression {
                expr: Some(Expr::Filter(v1::Filter {
                    dimension: Some(filter.dimension.to_proto()),
                    condition: Some(v1::filter::Condition::StringMatch(v1::StringMatch {
                        match_type: v1::MatchType::Exact as i32,
                        value: filter.value.clone(),
                        case_sensitive: true,
                    })),
                })),
            })
            .collect();
        let filter = (!filters.is_empty()).then_some(v1::FilterExpression {
            expr: Some(Expr::AndGroup(v1::FilterExpressionList { expressions: filters })),
        });
        let date_ranges = match (self.start_date, self.end_date) {
            (None, None) => Vec::new(),
            (start, end) => vec![v1::DateRange {
                start_date: start.unwrap_or_else(|| "30daysAgo".into()),
                end_date: end.unwrap_or_else(|| "today".into()),
                name: String::new(),
            }],
        };
        v1::RunReportRequest {
            site_id: self.site_id,
            metrics: self.metrics.iter().map(|m| m.to_proto() as i32).collect(),
            dimensions: self.dimensions.iter().map(Dimension::to_proto).collect(),
            date_ranges,
            filter,
            limit: self.limit.map_or(0, i64::from),
            ..Default::default()
        }
    }
}

/// A typed metric value.
#[derive(Clone, Copy, Debug, PartialEq, uniffi::Enum)]
pub enum MetricValue {
    /// A count (visitors, visits, views, events).
    Count {
        /// The count.
        value: i64,
    },
    /// A ratio, mean, duration, percentage or amount.
    Number {
        /// The value.
        value: f64,
    },
}

impl From<&v1::MetricValue> for MetricValue {
    fn from(value: &v1::MetricValue) -> Self {
        use v1::metric_value::Value;
        match value.value {
            Some(Value::IntValue(value)) => Self::Count { value },
            Some(Value::DoubleValue(value)) => Self::Number { value },
            None => Self::Count { value: 0 },
        }
    }
}

/// One row of a report.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct ReportRow {
    /// One value per requested dimension, as text.
    pub dimensions: Vec<String>,
    /// One value per requested metric.
    pub values: Vec<MetricValue>,
}

impl From<&v1::Row> for ReportRow {
    fn from(row: &v1::Row) -> Self {
        Self {
            dimensions: row.dimension_values.clone(),
            values: row.metric_values.iter().map(MetricValue::from).collect(),
        }
    }
}

/// A report's answer.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct Report {
    /// The rows selected by the limit.
    pub rows: Vec<ReportRow>,
    /// Totals over all rows.
    pub totals: Option<ReportRow>,
    /// Rows before the limit.
    pub row_count: u64,
    /// True when every number is exact (no estimate, no sampling).
    pub exact: bool,
}

impl From<v1::RunReportResponse> for Report {
    fn from(response: v1::RunReportResponse) -> Self {
        Self {
            rows: response.rows.iter().map(ReportRow::from).collect(),
            totals: response.totals.first().map(ReportRow::from),
            row_count: u64::try_from(response.row_count).unwrap_or_default(),
            exact: response.metadata.is_some_and(|m| m.exact),
        }
    }
}

/// A site to create.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Site {
    /// Unique id: lower-case letters, digits, '.', '-' and '_'.
    pub site_id: String,
    /// Primary domain, e.g. "example.com".
    pub domain: String,
    /// IANA time zone of reports. Default UTC.
    #[uniffi(default = None)]
    pub time_zone: Option<String>,
}

impl Site {
    fn into_proto(self) -> v1::Site {
        v1::Site {
            site_id: self.site_id,
            domain: self.domain,
            time_zone: self.time_zone.unwrap_or_default(),
            ..Default::default()
        }
    }
}

/// What a new key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum KeyKind {
    /// Sends events to one site. Public.
    Ingest,
    /// Reads reports of its sites. Secret.
    Query,
    /// Everything. Secret.
    Admin,
}

impl KeyKind {
    fn create_request(self, site_ids: Vec<String>, name: String) -> v1::CreateApiKeyRequest {
        let kind = match self {
            Self::Ingest => v1::KeyKind::Ingest,
            Self::Query => v1::KeyKind::Query,
            Self::Admin => v1::KeyKind::Admin,
        };
        v1::CreateApiKeyRequest {
            kind: kind as i32,
            site_ids,
            name,
            ..Default::default()
        }
    }
}

/// A client of a Tally server, authenticated with one key.
#[derive(uniffi::Object)]
pub struct Client {
    inner: tally_sdk::Client,
}

#[uniffi::export]
impl Client {
    /// A client for `endpoint` (e.g. `https://tally.example.com`) with `key`.
    /// Connects lazily: creating it works offline.
    #[uniffi::constructor]
    pub fn new(endpoint: String, key: String) -> Result<Arc<Self>, TallyError> {
        let _runtime = runtime().enter();
        let inner = tally_sdk::Client::builder(endpoint).key(key).build()?;
        Ok(Arc::new(Self { inner }))
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl Client {
    /// Runs a report (query or admin key).
    pub async fn run_report(&self, query: ReportQuery) -> Result<Report, TallyError> {
        Ok(self.inner.run_report(query.into_proto()).await?.into())
    }

    /// Creates a site and returns its id (admin key).
    pub async fn create_site(&self, site: Site) -> Result<String, TallyError> {
        Ok(self.inner.create_site(site.into_proto()).await?.site_id)
    }

    /// Lists the ids of all sites (admin key).
    pub async fn list_sites(&self) -> Result<Vec<String>, TallyError> {
        Ok(self
            .inner
            .list_sites()
            .await?
            .into_iter()
            .map(|s| s.site_id)
            .collect())
    }

    /// Creates a key for `site_ids` and returns its secret, shown only once (admin key).
    pub async fn create_api_key(
        &self,
        kind: KeyKind,
        site_ids: Vec<String>,
        name: String,
    ) -> Result<String, TallyError> {
        Ok(self
            .inner
            .create_api_key(kind.create_request(site_ids, name))
            .await?
            .secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_query_becomes_the_contract_request() {
        let query = ReportQuery {
            site_id: "app".into(),
            metrics: vec![Metric::Events, Metric::Visitors],
            dimensions: vec![Dimension::EventName, Dimension::Property { key: "plan".into() }],
            start_date: Some("today".into()),
            end_date: None,
            filters: vec![ReportFilter {
                dimension: Dimension::Property { key: "run".into() },
                value: "r1".into(),
            }],
            limit: Some(10),
        };
        let request = query.into_proto();
        assert_eq!(
            request.metrics,
            vec![v1::Metric::Events as i32, v1::Metric::Visitors as i32]
        );
        assert_eq!(request.dimensions.len(), 2);
        assert_eq!(request.date_ranges[0].start_date, "today");
        assert_eq!(request.date_ranges[0].end_date, "today");
        assert_eq!(request.limit, 10);
        let Some(v1::filter_expression::Expr::AndGroup(group)) = request.filter.and_then(|f| f.expr) else {
            panic!("filters are and-ed");
        };
        assert_eq!(group.expressions.len(), 1);
    }

    #[test]
    fn no_dates_means_the_server_default() {
        let query = ReportQuery {
            site_id: "app".into(),
            metrics: vec![Metric::Events],
            dimensions: vec![],
            start_date: None,
            end_date: None,
            filters: vec![],
            limit: None,
        };
        let request = query.into_proto();
        assert!(request.date_ranges.is_empty());
        assert!(request.filter.is_none());
        assert_eq!(request.limit, 0);
    }
}
