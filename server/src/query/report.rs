//! `RunReport`: plan the request, answer from the cache, the rollups or the
//! raw events (in that order of preference), then add comparisons and metadata.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Instant;

use tally_proto::v1::{self, metric_value::Value};

use super::cache::ReportCache;
use super::plan::{self, Plan, SortKey, metric_type};
use super::{raw, rollup_exec};
use crate::convert::micros_to_timestamp;
use crate::domain::{SiteId, SiteRecord};
use crate::error::Result;
use crate::limits::Limits;
use crate::metrics::metrics;
use crate::rollup::Rollups;
use crate::storage::Store;

/// Metric values of one row or total, one per plan metric.
pub type Values = Vec<Value>;

/// What an executor computed.
pub struct Computed {
    /// The page of rows (of every requested range), sorted.
    pub rows: Vec<(Vec<String>, Values)>,
    /// Rows before paging.
    pub row_count: usize,
    /// Totals per requested range.
    pub totals: Vec<Values>,
    /// Values of the page's rows in the comparison ranges, by row key.
    pub previous_rows: HashMap<Vec<String>, Values>,
    /// Totals per comparison range.
    pub previous_totals: Vec<Values>,
    /// No sketch estimate and no sampling in any number.
    pub exact: bool,
    /// Which data answered.
    pub source: v1::DataSource,
}

/// Runs a report for `site` (already authorised).
pub async fn run_report(
    store: &dyn Store,
    rollups: &Rollups,
    cache: &ReportCache,
    limits: &Limits,
    site: &SiteRecord,
    req: &v1::RunReportRequest,
    now_micros: i64,
) -> Result<v1::RunReportResponse> {
    let started = Instant::now();
    let plan = plan::plan(site, req, now_micros)?;
    let site_id = SiteId::parse(&site.site_id)?;
    let shared_cache = store.shared_cache();
    // Without the generations (Redis away), answers are neither read from
    // nor put in the cache.
    let generations = match shared_cache {
        None => Some(rollups.generations(&site.site_id)),
        Some(shared) => match shared.generations(&site_id).await {
            Ok(generations) => Some(generations),
            Err(error) => {
                tracing::warn!(site = %site_id, %error, "report cache skipped");
                None
            }
        },
    };
    let key = generations.map(|g| ReportCache::key(site, req, &plan, g, now_micros));
    if !req.skip_cache
        && let Some(key) = &key
        && let Some((mut cached, age)) = cache.get_from(shared_cache, key, now_micros).await
    {
        let metadata = cached.metadata.get_or_insert_default();
        metadata.cache_hit = true;
        metadata.cache_age = prost_types::Duration::try_from(age).ok();
        metadata.query_time = prost_types::Duration::try_from(started.elapsed()).ok();
        metrics().reports.add("cache", 1);
        return Ok(cached);
    }
    let computed = match from_rollups(store, rollups, limits, site, &site_id, &plan).await? {
        Some(computed) => {
            metrics().reports.add("rollups", 1);
            metrics().report_rollups.since(started);
            computed
        }
        None => {
            let _slot = limits.scan_slot().await?;
            let computed = super::bounded(limits.query_timeout, raw::run(store, &site_id, &plan)).await?;
            metrics().reports.add("raw", 1);
            metrics().report_raw.since(started);
            computed
        }
    };
    let response = assemble(&plan, computed, started);
    let live = plan.all_ranges().any(|r| r.end_micros > now_micros);
    if let Some(key) = key {
        cache
            .put_to(shared_cache, key, response.clone(), live, now_micros)
            .await;
    }
    Ok(response)
}

/// The answer from rollups, when they cover the plan: this instance's, or
/// on a shared store the hour rollups of every instance (see
/// [`crate::rollup::shared`]). A shared store that cannot give them (Redis
/// away) leaves the report to the raw events.
async fn from_rollups(
    store: &dyn Store,
    rollups: &Rollups,
    limits: &Limits,
    site: &SiteRecord,
    site_id: &SiteId,
    plan: &Plan,
) -> Result<Option<Computed>> {
    let Some(shared) = store.shared_rollups() else {
        return Ok(rollup_exec::run(rollups, site_id, plan));
    };
    if !rollup_exec::covers(plan, crate::rollup::site_tz(site)) {
        return Ok(None);
    }
    let spans: Vec<(i64, i64)> = plan
        .all_ranges()
        .map(|r| (r.start_micros, r.end_micros))
        .collect();
    // Hours not rolled up yet are scanned: as bounded as a raw scan.
    let _slot = limits.scan_slot().await?;
    let loaded = super::bounded(limits.query_timeout, async {
        Ok(rollups.shared().load(store, shared, site, &spans).await)
    })
    .await?;
    match loaded {
        Ok(site_rollups) => Ok(rollup_exec::run_on(&site_rollups, plan)),
        Err(error) => {
            tracing::warn!(site = %site_id, %error, "shared rollups unavailable; scanning raw events");
            Ok(None)
        }
    }
}

fn assemble(plan: &Plan, computed: Computed, started: Instant) -> v1::RunReportResponse {
    let compare = !plan.comparisons.is_empty();
    let with_comparison = |values: Values, previous: Option<&Values>| -> Vec<v1::MetricValue> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, value)| v1::MetricValue {
                comparison: compare.then(|| comparison(&value, previous.and_then(|p| p.get(i)))),
                value: Some(value),
            })
            .collect()
    };
    let rows = computed
        .rows
        .into_iter()
        .map(|(key, values)| {
            let previous = computed.previous_rows.get(&key);
            v1::Row {
                metric_values: with_comparison(values, previous),
                dimension_values: key,
            }
        })
        .collect();
    let multi_range = plan.ranges.len() > 1;
    let totals = plan
        .ranges
        .iter()
        .zip(computed.totals)
        .enumerate()
        .map(|(i, (range, values))| v1::Row {
            dimension_values: if multi_range {
                vec![range.name.clone()]
            } else {
                Vec::new()
            },
            metric_values: with_comparison(values, computed.previous_totals.get(i)),
        })
        .collect();
    let sampled = plan.sample_rate < 1.0 && computed.source == v1::DataSource::RawEvents;
    v1::RunReportResponse {
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
        rows,
        totals,
        row_count: computed.row_count as i64,
        metadata: Some(v1::ResponseMetadata {
            exact: computed.exact,
            sampled,
            sample_rate: if sampled { plan.sample_rate } else { 1.0 },
            data_source: computed.source as i32,
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
    }
}

/// The earlier value and the relative change; a row absent from the earlier
/// period compares with zero.
fn comparison(current: &Value, previous: Option<&Value>) -> v1::MetricComparison {
    use v1::metric_comparison::Previous;
    let (previous, before) = match (current, previous) {
        (Value::IntValue(_), Some(Value::IntValue(p))) => (Previous::PreviousInt(*p), *p as f64),
        (Value::IntValue(_), _) => (Previous::PreviousInt(0), 0.0),
        (Value::DoubleValue(_), Some(Value::DoubleValue(p))) => (Previous::PreviousDouble(*p), *p),
        (Value::DoubleValue(_), _) => (Previous::PreviousDouble(0.0), 0.0),
    };
    let now = sort_value(current);
    v1::MetricComparison {
        previous: Some(previous),
        change: (before != 0.0).then(|| (now - before) / before),
    }
}

/// A metric value as a number, for sorting.
pub fn sort_value(value: &Value) -> f64 {
    match value {
        Value::IntValue(n) => *n as f64,
        Value::DoubleValue(x) => *x,
    }
}

/// Sorts rows by the plan's order and keeps the requested page; also
/// returns how many rows there were.
pub fn sort_and_page(
    plan: &Plan,
    mut rows: Vec<(Vec<String>, Values)>,
) -> (Vec<(Vec<String>, Values)>, usize) {
    let count = rows.len();
    let keep = plan.offset.saturating_add(plan.limit).min(count);
    if keep < count && keep > 0 {
        rows.select_nth_unstable_by(keep - 1, |a, b| compare_rows(plan, a, b));
        rows.truncate(keep);
    }
    rows.sort_by(|a, b| compare_rows(plan, a, b));
    let page = rows.into_iter().skip(plan.offset).take(plan.limit).collect();
    (page, count)
}

/// The plan's row order.
pub fn compare_rows(plan: &Plan, a: &(Vec<String>, Values), b: &(Vec<String>, Values)) -> Ordering {
    for (key, desc) in &plan.order {
        let ordering = match key {
            SortKey::Metric(i) => sort_value(&a.1[*i]).total_cmp(&sort_value(&b.1[*i])),
            SortKey::Dim(i) => a.0[*i].cmp(&b.0[*i]),
        };
        let ordering = if *desc { ordering.reverse() } else { ordering };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    // Stable, deterministic pages: ties break on the dimension values.
    a.0.cmp(&b.0)
}
