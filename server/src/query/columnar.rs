//! Reports over column batches, for stores that keep columns (see
//! [`crate::storage::columns`]): the fast path of the raw executor.
//!
//! It reads only the columns the plan needs, and works on dictionary codes:
//! a filter condition and a dimension value are computed once per distinct
//! value of their column (on an event that holds only that field, so the
//! answer is exactly what [`super::raw`] computes), then each event costs a
//! few table look-ups and a hash of its group's codes. Batches are spread
//! over the cores, each thread with its own groups, merged at the end.
//!
//! It answers what is a plain function of single events: page views,
//! events, visitors, visits, views per visit and revenue, grouped by fields,
//! properties, time buckets and the date range, with filters on fields and
//! properties. Visit-level metrics and dimensions (bounce rate, duration,
//! time on page, entry and exit page), conversion rate, and events stored
//! before visits were formed at ingest go to the row-wise executor.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tally_proto::v1::{Dimension as D, Metric};

use super::dims::Dim;
use super::filter::Predicate;
use super::plan::Plan;
use super::raw::{Acc, finish, in_sample};
use super::report::Computed;
use crate::domain::{EventKind, StoredEvent};
use crate::error::{Error, Result};
use crate::storage::Store;
use crate::storage::columns::{self, Column, ColumnBatch, property_column};

type Hasher = foldhash::fast::RandomState;
type Map<K, V> = HashMap<K, V, Hasher>;

/// Dimensions in a group key: the request's five and the date range.
const MAX_KEY: usize = 6;
type Key = [u32; MAX_KEY];
/// One range's groups by their dimension texts.
type Groups = HashMap<Vec<String>, Acc<Hasher>>;

/// Where a dimension's value comes from.
enum Source {
    /// A dictionary column.
    Column(String),
    /// The timestamp (a time bucket).
    Time,
    /// The name of the date range.
    Range,
}

fn source(dim: &Dim) -> Option<Source> {
    let column = |name: &str| Some(Source::Column(name.to_owned()));
    match dim {
        Dim::Property(key) => Some(Source::Column(property_column(key))),
        Dim::Standard(d) => match d {
            D::TimeMinute | D::TimeHour | D::TimeDay | D::TimeWeek | D::TimeMonth => Some(Source::Time),
            D::DateRange => Some(Source::Range),
            D::Page => column("path"),
            D::Hostname => column("hostname"),
            D::Referrer => column("referrer"),
            D::Source => column("source"),
            D::Medium => column("medium"),
            D::Campaign => column("campaign"),
            D::UtmSource => column("utm_source"),
            D::UtmMedium => column("utm_medium"),
            D::UtmTerm => column("utm_term"),
            D::UtmContent => column("utm_content"),
            D::Country => column("country"),
            D::Region => column("region"),
            D::City => column("city"),
            D::DeviceType => column("device_type"),
            D::Browser => column("browser"),
            D::BrowserVersion => column("browser_version"),
            D::Os => column("os"),
            D::OsVersion => column("os_version"),
            D::AppVersion => column("app_version"),
            D::EventName => column("name"),
            D::EventType => column("kind"),
            D::EntryPage | D::ExitPage | D::Unspecified => None,
        },
    }
}

/// A filter as a tree over leaves, each one condition on one column.
enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Leaf(usize),
}

impl Cond {
    /// Splits `p` into a tree and its leaves; `None` when a condition tests
    /// something that is not a column.
    fn compile<'p>(p: &'p Predicate, leaves: &mut Vec<(String, &'p Predicate)>) -> Option<Self> {
        let list = |list: &'p [Predicate], leaves: &mut Vec<(String, &'p Predicate)>| {
            list.iter()
                .map(|p| Self::compile(p, leaves))
                .collect::<Option<Vec<_>>>()
        };
        Some(match p {
            Predicate::And(all) => Self::All(list(all, leaves)?),
            Predicate::Or(any) => Self::Any(list(any, leaves)?),
            Predicate::Not(inner) => Self::Not(Box::new(Self::compile(inner, leaves)?)),
            Predicate::Test(dim, _) => {
                let Some(Source::Column(name)) = source(dim) else {
                    return None;
                };
                leaves.push((name, p));
                Self::Leaf(leaves.len() - 1)
            }
        })
    }

    /// Whether each of the batch's `len` events passes: one tight loop per
    /// node over the whole batch, not a walk of the tree per event.
    fn eval(&self, len: usize, leaves: &[(Vec<bool>, Column)]) -> Vec<bool> {
        match self {
            Self::All(all) => {
                let mut pass = vec![true; len];
                for c in all {
                    for (p, q) in pass.iter_mut().zip(c.eval(len, leaves)) {
                        *p &= q;
                    }
                }
                pass
            }
            Self::Any(any) => {
                let mut pass = vec![false; len];
                for c in any {
                    for (p, q) in pass.iter_mut().zip(c.eval(len, leaves)) {
                        *p |= q;
                    }
                }
                pass
            }
            Self::Not(inner) => {
                let mut pass = inner.eval(len, leaves);
                for p in &mut pass {
                    *p = !*p;
                }
                pass
            }
            Self::Leaf(i) => {
                let (table, column) = &leaves[*i];
                column.codes().iter().map(|c| table[*c as usize]).collect()
            }
        }
    }
}

/// An event that holds only one column's value: what a condition or a
/// dimension on that column sees.
fn event_with(name: &str, value: &[u8]) -> Result<StoredEvent> {
    let mut e = StoredEvent::default();
    columns::apply(name, value, &mut e)?;
    Ok(e)
}

/// Per thread: the groups, and what was learned about dictionary values.
struct Worker<'p> {
    plan: &'p Plan,
    cond: Option<&'p Cond>,
    leaves: &'p [(String, &'p Predicate)],
    /// Per leaf: its answer by value.
    leaf_answers: Vec<Map<Vec<u8>, bool>>,
    dims: Vec<Source>,
    /// Per dimension: the id of a value's text by value.
    dim_ids: Vec<Map<Vec<u8>, u32>>,
    /// Per time dimension: the last minute seen and its id.
    last_minute: Vec<(i64, u32)>,
    /// Texts of dimension values, by id, and the reverse.
    texts: Vec<String>,
    ids: Map<String, u32>,
    range_ids: Vec<u32>,
    groups: Vec<Map<Key, Acc<Hasher>>>,
    totals: Vec<Acc<Hasher>>,
}

/// Why the fast path gave up.
enum Stop {
    /// Events it cannot answer for: the row-wise executor takes the report.
    Unsupported,
    Failed(Error),
}

impl From<crate::storage::StorageError> for Stop {
    fn from(err: crate::storage::StorageError) -> Self {
        Self::Failed(err.into())
    }
}

impl From<Error> for Stop {
    fn from(err: Error) -> Self {
        Self::Failed(err)
    }
}

impl<'p> Worker<'p> {
    fn new(plan: &'p Plan, cond: Option<&'p Cond>, leaves: &'p [(String, &'p Predicate)]) -> Self {
        let dims: Vec<Source> = plan.dims.iter().filter_map(source).collect();
        let ranges = plan.all_ranges().count();
        let mut worker = Self {
            plan,
            cond,
            leaves,
            leaf_answers: leaves.iter().map(|_| Map::default()).collect(),
            dim_ids: dims.iter().map(|_| Map::default()).collect(),
            last_minute: dims.iter().map(|_| (i64::MIN, 0)).collect(),
            dims,
            texts: Vec::new(),
            ids: Map::default(),
            range_ids: Vec::new(),
            groups: (0..ranges).map(|_| Map::default()).collect(),
            totals: (0..ranges).map(|_| Acc::default()).collect(),
        };
        worker.range_ids = plan
            .all_ranges()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
            .into_iter()
            .map(|name| worker.intern(name))
            .collect();
        worker
    }

    fn intern(&mut self, text: String) -> u32 {
        if let Some(id) = self.ids.get(&text) {
            return *id;
        }
        let id = self.texts.len() as u32;
        self.texts.push(text.clone());
        self.ids.insert(text, id);
        id
    }

    /// Per code of `column`: the id of the text of dimension `d`.
    fn dim_table(&mut self, d: usize, name: &str, column: &Column) -> Result<Vec<u32>> {
        let mut table = Vec::with_capacity(column.distinct());
        for code in 0..column.distinct() as u32 {
            let value = column.value(code);
            if let Some(id) = self.dim_ids[d].get(value) {
                table.push(*id);
                continue;
            }
            let e = event_with(name, value)?;
            let text = self.plan.dims[d]
                .value(&e, self.plan.tz, "")
                .unwrap_or_default()
                .into_owned();
            let id = self.intern(text);
            self.dim_ids[d].insert(value.to_vec(), id);
            table.push(id);
        }
        Ok(table)
    }

    /// Per code of `column`: the answer of leaf `l`.
    fn leaf_table(&mut self, l: usize, column: &Column) -> Result<Vec<bool>> {
        let (name, predicate) = &self.leaves[l];
        let mut table = Vec::with_capacity(column.distinct());
        for code in 0..column.distinct() as u32 {
            let value = column.value(code);
            let answer = match self.leaf_answers[l].get(value) {
                Some(answer) => *answer,
                None => {
                    let answer = predicate.eval(&event_with(name, value)?, self.plan.tz);
                    self.leaf_answers[l].insert(value.to_vec(), answer);
                    answer
                }
            };
            table.push(answer);
        }
        Ok(table)
    }

    /// The id of time dimension `d`'s bucket of `ts`; buckets change on
    /// minute boundaries at most (time zone offsets are whole minutes).
    fn time_id(&mut self, d: usize, ts: i64) -> u32 {
        let minute = ts.div_euclid(60_000_000);
        if self.last_minute[d].0 == minute {
            return self.last_minute[d].1;
        }
        let e = StoredEvent {
            ts_micros: minute * 60_000_000,
            ..Default::default()
        };
        let text = self.plan.dims[d]
            .value(&e, self.plan.tz, "")
            .unwrap_or_default()
            .into_owned();
        let id = self.intern(text);
        self.last_minute[d] = (minute, id);
        id
    }

    fn add(&mut self, batch: &dyn ColumnBatch) -> std::result::Result<(), Stop> {
        let plan = self.plan;
        let (low, high) = batch.bounds();
        let ranges: Vec<(i64, i64)> = plan
            .all_ranges()
            .map(|r| (r.start_micros, r.end_micros))
            .collect();
        let whole = ranges.iter().all(|(from, to)| low >= *from && high < *to);
        let needs_ts = !whole || self.dims.iter().any(|d| matches!(d, Source::Time));

        // First the events that pass the filter and count: when none do, the
        // other columns are not read.
        let mut leaves = Vec::with_capacity(self.leaves.len());
        for l in 0..self.leaves.len() {
            let column = batch.column(&self.leaves[l].0)?;
            leaves.push((self.leaf_table(l, &column)?, column));
        }
        let passes = self.cond.map(|cond| cond.eval(batch.len(), &leaves));
        if passes.as_ref().is_some_and(|p| !p.contains(&true)) {
            return Ok(());
        }
        let kind = batch.column("kind")?;
        let kinds: Vec<(bool, bool)> = (0..kind.distinct() as u32)
            .map(|code| {
                let kind = EventKind::from_i32(columns::bytes_int(kind.value(code)) as i32);
                (
                    kind.is_some_and(|k| k != EventKind::Identify),
                    kind.is_some_and(|k| k.is_view()),
                )
            })
            .collect();
        let bots: Option<(Vec<bool>, Column)> = match plan.include_bots {
            true => None,
            false => {
                let column = batch.column("bot")?;
                let table = (0..column.distinct() as u32)
                    .map(|c| !column.value(c).is_empty())
                    .collect();
                Some((table, column))
            }
        };
        // Branch-free: every index is written, the count moves only for the
        // events that pass (which ones do is data, not predictable).
        let mut selected = vec![0u32; batch.len()];
        let mut count = 0;
        let kind_codes = kind.codes();
        for i in 0..batch.len() {
            let pass = passes.as_ref().is_none_or(|p| p[i])
                & kinds[kind_codes[i] as usize].0
                & !bots
                    .as_ref()
                    .is_some_and(|(table, c)| table[c.codes()[i] as usize]);
            selected[count] = i as u32;
            count += usize::from(pass);
        }
        selected.truncate(count);
        if selected.is_empty() {
            return Ok(());
        }

        let int_values = |column: &Column| -> Vec<u64> {
            (0..column.distinct() as u32)
                .map(|c| columns::bytes_int(column.value(c)))
                .collect()
        };
        let visitor = match plan.wants(Metric::Visitors) || plan.sample_rate < 1.0 {
            true => Some(batch.column("visitor")?),
            false => None,
        };
        let visitor_ids = visitor.as_ref().map(int_values).unwrap_or_default();
        if plan.sample_rate < 1.0
            && let Some(visitor) = &visitor
        {
            let sampled: Vec<bool> = visitor_ids
                .iter()
                .map(|v| in_sample(*v, plan.sample_rate))
                .collect();
            selected.retain(|i| sampled[visitor.codes()[*i as usize] as usize]);
        }
        let session = match plan.wants(Metric::Visits) || plan.wants(Metric::ViewsPerVisit) {
            true => Some(batch.column("session")?),
            false => None,
        };
        let session_ids = session.as_ref().map(int_values).unwrap_or_default();
        if session_ids.contains(&0) {
            // Events stored before visits were formed at ingest.
            return Err(Stop::Unsupported);
        }
        let revenue = match plan.wants(Metric::Revenue) {
            true => Some(batch.column("revenue")?),
            false => None,
        };
        let revenue_nanos: Vec<i128> = revenue.as_ref().map_or_else(Vec::new, |c| {
            (0..c.distinct() as u32)
                .map(
                    |code| match event_with("revenue", c.value(code)).ok().and_then(|e| e.revenue) {
                        Some(money) if money.currency == plan.currency => {
                            i128::from(money.units) * 1_000_000_000 + i128::from(money.nanos)
                        }
                        _ => 0,
                    },
                )
                .collect()
        });
        let mut dims: Vec<Option<(Vec<u32>, Column)>> = Vec::with_capacity(self.dims.len());
        for d in 0..self.dims.len() {
            let Source::Column(name) = &self.dims[d] else {
                dims.push(None);
                continue;
            };
            let name = name.clone();
            let column = batch.column(&name)?;
            dims.push(Some((self.dim_table(d, &name, &column)?, column)));
        }
        let ts = if needs_ts { batch.timestamps()? } else { Vec::new() };

        // A visitor or visit goes into a range's totals once per batch.
        let mut seen_visitors = vec![vec![false; visitor_ids.len()]; ranges.len()];
        let mut seen_visits = vec![vec![false; session_ids.len()]; ranges.len()];
        for i in selected {
            let i = i as usize;
            let is_view = kinds[kind.codes()[i] as usize].1;
            let at = if needs_ts { ts[i] } else { low };
            let visitor = visitor.as_ref().map(|c| c.codes()[i] as usize);
            let visit = session.as_ref().map(|c| c.codes()[i] as usize);
            let revenue = revenue
                .as_ref()
                .map_or(0, |c| revenue_nanos[c.codes()[i] as usize]);
            for (r, (from, to)) in ranges.iter().enumerate() {
                if at < *from || at >= *to {
                    continue;
                }
                let mut key: Key = [0; MAX_KEY];
                for d in 0..self.dims.len() {
                    key[d] = match (&self.dims[d], &dims[d]) {
                        (_, Some((table, column))) => table[column.codes()[i] as usize],
                        (Source::Time, _) => self.time_id(d, at),
                        _ => self.range_ids[r],
                    };
                }
                let group = self.groups[r].entry(key).or_default();
                let totals = &mut self.totals[r];
                for acc in [&mut *group, &mut *totals] {
                    acc.events += 1;
                    acc.pageviews += i64::from(is_view);
                    acc.revenue_nanos += revenue;
                }
                if let Some(code) = visitor {
                    group.visitors.insert(visitor_ids[code]);
                    if !std::mem::replace(&mut seen_visitors[r][code], true) {
                        totals.visitors.insert(visitor_ids[code]);
                    }
                }
                if let Some(code) = visit {
                    group.visits.insert(session_ids[code]);
                    if !std::mem::replace(&mut seen_visits[r][code], true) {
                        totals.visits.insert(session_ids[code]);
                    }
                }
            }
        }
        Ok(())
    }

    /// The groups keyed by their texts.
    fn into_rows(self) -> (Vec<Groups>, Vec<Acc<Hasher>>) {
        let dims = self.dims.len();
        let texts = self.texts;
        let groups = self
            .groups
            .into_iter()
            .map(|g| {
                g.into_iter()
                    .map(|(key, acc)| {
                        (
                            key[..dims].iter().map(|id| texts[*id as usize].clone()).collect(),
                            acc,
                        )
                    })
                    .collect()
            })
            .collect();
        (groups, self.totals)
    }
}

fn merge(into: &mut Acc<Hasher>, from: Acc<Hasher>) {
    into.events += from.events;
    into.pageviews += from.pageviews;
    into.revenue_nanos += from.revenue_nanos;
    into.time_on_page.0 += from.time_on_page.0;
    into.time_on_page.1 += from.time_on_page.1;
    into.visitors.extend(from.visitors);
    into.visits.extend(from.visits);
}

/// True when the fast path can answer `plan`.
fn supports(plan: &Plan) -> bool {
    let metrics = plan.metrics.iter().all(|m| {
        matches!(
            m,
            Metric::Pageviews
                | Metric::Events
                | Metric::Visitors
                | Metric::Visits
                | Metric::ViewsPerVisit
                | Metric::Revenue
        )
    });
    metrics && plan.dims.len() <= MAX_KEY && plan.dims.iter().all(|d| source(d).is_some())
}

/// Runs a report over the store's column batches; `None` when the store
/// keeps no columns or the report needs the row-wise executor.
pub(super) fn run(store: &dyn Store, site: &crate::domain::SiteId, plan: &Plan) -> Option<Result<Computed>> {
    if !supports(plan) {
        return None;
    }
    let mut leaves = Vec::new();
    let cond = match &plan.filter {
        Some(filter) => Some(Cond::compile(filter, &mut leaves)?),
        None => None,
    };
    let (from, to) = plan.span();
    let batches = match store.column_batches(site, from, to)? {
        Ok(batches) => batches,
        Err(err) => return Some(Err(err.into())),
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4);
    let queue = Mutex::new(batches.into_iter());
    let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).next();
    let results: Vec<std::result::Result<Worker<'_>, Stop>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut worker = Worker::new(plan, cond.as_ref(), &leaves);
                    while let Some(batch) = next() {
                        worker.add(batch.as_ref())?;
                    }
                    Ok(worker)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Stop::Failed(Error::Internal("report thread panicked".into()))))
            })
            .collect()
    });
    let ranges = plan.all_ranges().count();
    let mut groups: Vec<Groups> = (0..ranges).map(|_| HashMap::new()).collect();
    let mut totals: Vec<Acc<Hasher>> = (0..ranges).map(|_| Acc::default()).collect();
    for result in results {
        let worker = match result {
            Ok(worker) => worker,
            Err(Stop::Unsupported) => return None,
            Err(Stop::Failed(err)) => return Some(Err(err)),
        };
        let (worker_groups, worker_totals) = worker.into_rows();
        for (r, g) in worker_groups.into_iter().enumerate() {
            for (key, acc) in g {
                merge(groups[r].entry(key).or_default(), acc);
            }
        }
        for (r, acc) in worker_totals.into_iter().enumerate() {
            merge(&mut totals[r], acc);
        }
    }
    let converted: Vec<HashSet<u64>> = (0..ranges).map(|_| HashSet::new()).collect();
    Some(Ok(finish(plan, &groups, &totals, &HashMap::new(), &converted)))
}

#[cfg(test)]
mod tests {
    use tally_proto::v1::{self, Dimension as D, Metric as M};

    use super::*;
    use crate::domain::{PropValue, SiteId, SiteRecord, StoredMoney, StoredProp};
    use crate::storage::embedded::EmbeddedStore;
    use crate::storage::{EventStore, SiteStore};

    const HOUR: i64 = 3_600_000_000;

    fn standard(d: D) -> v1::DimensionSpec {
        v1::DimensionSpec {
            kind: Some(v1::dimension_spec::Kind::Standard(d as i32)),
        }
    }

    fn property(key: &str) -> v1::DimensionSpec {
        v1::DimensionSpec {
            kind: Some(v1::dimension_spec::Kind::Property(key.into())),
        }
    }

    fn filter(dim: v1::DimensionSpec, condition: v1::filter::Condition) -> v1::FilterExpression {
        v1::FilterExpression {
            expr: Some(v1::filter_expression::Expr::Filter(v1::Filter {
                dimension: Some(dim),
                condition: Some(condition),
            })),
        }
    }

    fn matching(match_type: v1::MatchType, value: &str) -> v1::filter::Condition {
        v1::filter::Condition::StringMatch(v1::StringMatch {
            match_type: match_type as i32,
            value: value.into(),
            case_sensitive: false,
        })
    }

    fn events(base: i64) -> Vec<StoredEvent> {
        (0..3000i64)
            .map(|n| {
                let ts = base + n * 97_000_000 + n % 13;
                let mut e = StoredEvent {
                    event_id: uuid::Uuid::from_u128(n as u128 + 1).as_bytes().to_vec(),
                    ts_micros: ts,
                    kind: [1, 1, 2, 3, 4, 5][n as usize % 6],
                    name: ["pageview", "signup", "buy"][n as usize % 3].into(),
                    path: format!("/p/{}", n * 7 % 23),
                    referrer: ["", "https://news.example/item?id=1", "https://www.google.com/"]
                        [n as usize % 3]
                        .into(),
                    country: ["US", "DE", "", "FR"][n as usize % 4].into(),
                    device_type: (n % 4) as i32,
                    visitor: (n * 31 % 211) as u64 * 0x9E37_79B9,
                    session: (n * 31 % 211 + n / 500) as u64 + 1,
                    session_start: ts - 5,
                    bot: n % 19 == 0,
                    ..Default::default()
                };
                if n % 3 != 0 {
                    let plan = match n % 4 {
                        0 => PropValue::Str("pro".into()),
                        1 => PropValue::Str("Free".into()),
                        2 => PropValue::Num((n % 50) as f64),
                        _ => PropValue::Bool(true),
                    };
                    e.properties
                        .insert("plan".into(), StoredProp { value: Some(plan) });
                }
                if n % 5 == 0 {
                    e.revenue = Some(StoredMoney {
                        currency: ["EUR", "USD"][n as usize % 2].into(),
                        units: n % 40,
                        nanos: 250_000_000,
                    });
                }
                e
            })
            .collect()
    }

    fn requests() -> Vec<v1::RunReportRequest> {
        let base = v1::RunReportRequest {
            site_id: "a".into(),
            date_ranges: vec![v1::DateRange {
                start_date: "6daysAgo".into(),
                end_date: "today".into(),
                name: String::new(),
            }],
            metrics: vec![M::Pageviews as i32, M::Visitors as i32, M::Events as i32],
            ..Default::default()
        };
        let prop_num = v1::filter::Condition::Numeric(v1::NumericMatch {
            operator: v1::NumericOperator::GreaterThan as i32,
            value: 20.0,
        });
        vec![
            v1::RunReportRequest {
                dimensions: vec![standard(D::Page)],
                limit: 5,
                ..base.clone()
            },
            v1::RunReportRequest {
                dimensions: vec![standard(D::EventName)],
                filter: Some(filter(property("plan"), matching(v1::MatchType::Exact, "PRO"))),
                ..base.clone()
            },
            v1::RunReportRequest {
                metrics: vec![M::Visits as i32, M::ViewsPerVisit as i32, M::Revenue as i32],
                dimensions: vec![standard(D::TimeDay), standard(D::Country)],
                time_zone: "Asia/Kolkata".into(),
                revenue_currency: "EUR".into(),
                comparison: v1::ComparisonMode::PreviousPeriod as i32,
                ..base.clone()
            },
            v1::RunReportRequest {
                dimensions: vec![property("plan"), standard(D::DeviceType), standard(D::EventType)],
                filter: Some(filter(property("plan"), prop_num)),
                include_bots: true,
                ..base.clone()
            },
            v1::RunReportRequest {
                dimensions: vec![standard(D::Referrer), standard(D::TimeHour)],
                filter: Some(v1::FilterExpression {
                    expr: Some(v1::filter_expression::Expr::OrGroup(v1::FilterExpressionList {
                        expressions: vec![
                            v1::FilterExpression {
                                expr: Some(v1::filter_expression::Expr::NotExpression(Box::new(filter(
                                    standard(D::Country),
                                    matching(v1::MatchType::Exact, "us"),
                                )))),
                            },
                            filter(standard(D::Page), matching(v1::MatchType::Suffix, "/3")),
                            filter(property("plan"), v1::filter::Condition::IsSet(false)),
                        ],
                    })),
                }),
                ..base.clone()
            },
            v1::RunReportRequest {
                dimensions: vec![standard(D::Country)],
                sample_rate: 0.5,
                ..base.clone()
            },
            v1::RunReportRequest {
                dimensions: vec![standard(D::Page)],
                date_ranges: vec![
                    v1::DateRange {
                        start_date: "6daysAgo".into(),
                        end_date: "3daysAgo".into(),
                        name: "early".into(),
                    },
                    v1::DateRange {
                        start_date: "2daysAgo".into(),
                        end_date: "today".into(),
                        name: "late".into(),
                    },
                ],
                ..base
            },
        ]
    }

    async fn store_with_site(dir: &std::path::Path) -> (EmbeddedStore, SiteRecord, SiteId) {
        let store = EmbeddedStore::open(dir).unwrap();
        let record = SiteRecord {
            site_id: "a".into(),
            time_zone: "UTC".into(),
            ..Default::default()
        };
        store.insert_site(record.clone()).await.unwrap();
        (store, record, SiteId::parse("a").unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_columnar_path_answers_as_the_row_wise_one() {
        let dir = tempfile::tempdir().unwrap();
        let (store, record, site) = store_with_site(dir.path()).await;
        let now = crate::domain::now_micros();
        let base = (now - 4 * 24 * HOUR).div_euclid(HOUR) * HOUR;
        let all = events(base);
        // Half in segments, half still in packs.
        let (first, second) = all.split_at(all.len() / 2);
        store.append(&site, first).await.unwrap();
        store.compact_now(i64::MAX).unwrap();
        store.append(&site, second).await.unwrap();
        for (i, request) in requests().iter().enumerate() {
            let plan = super::super::plan::plan(&record, request, now).unwrap();
            let fast = run(&store, &site, &plan).expect("columnar path").unwrap();
            let rows = super::super::raw::run_rows(&store, &site, &plan).await.unwrap();
            assert!(!rows.rows.is_empty(), "request {i} has rows");
            assert_eq!(fast.rows, rows.rows, "request {i}");
            assert_eq!(fast.row_count, rows.row_count, "request {i}");
            assert_eq!(fast.totals, rows.totals, "request {i}");
            assert_eq!(fast.previous_totals, rows.previous_totals, "request {i}");
            assert_eq!(fast.previous_rows, rows.previous_rows, "request {i}");
            assert_eq!(fast.exact, rows.exact, "request {i}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn visit_level_reports_and_events_without_visits_take_the_row_wise_path() {
        let dir = tempfile::tempdir().unwrap();
        let (store, record, site) = store_with_site(dir.path()).await;
        let now = crate::domain::now_micros();
        let mut old = events(now - 2 * 24 * HOUR);
        old.truncate(10);
        for e in &mut old {
            e.session = 0;
        }
        store.append(&site, &old).await.unwrap();
        let request = |metric: M, dim: D| v1::RunReportRequest {
            site_id: "a".into(),
            metrics: vec![metric as i32],
            dimensions: vec![standard(dim)],
            ..Default::default()
        };
        let plan = |r: &v1::RunReportRequest| super::super::plan::plan(&record, r, now).unwrap();
        assert!(run(&store, &site, &plan(&request(M::BounceRate, D::Page))).is_none());
        assert!(run(&store, &site, &plan(&request(M::Pageviews, D::EntryPage))).is_none());
        assert!(
            run(&store, &site, &plan(&request(M::Visits, D::Page))).is_none(),
            "visit ids of 0"
        );
        assert!(run(&store, &site, &plan(&request(M::Visitors, D::Page))).is_some());
    }
}
