//! Rollups: counts, sums and visitor sketches per site, time bucket,
//! dimension and value, kept up to date at ingest so that the common
//! reports never touch raw events.
//!
//! Per site there are
//! - one cell per UTC hour over all events (time series and totals in any
//!   time zone whose offsets are whole hours), and
//! - one cell per day of the site's time zone, per rolled-up dimension and
//!   value (breakdowns such as top pages, in the site's time zone).
//!
//! A cell holds page views, events, revenue per currency, and sketches of
//! the distinct visitors and visits (see [`sketch`]). Only events that count
//! in reports without `include_bots` go in. Rollups live in memory: they are
//! rebuilt from raw events when the server starts ([`Rollups::rebuild`]) and
//! updated by ingest for each newly stored event ([`Rollups::apply`]), so
//! they can never disagree with the raw events for long.
//!
//! Every applied batch also bumps the site's write generation, which the
//! report cache uses to drop answers that new events made stale.

pub mod shared;
pub mod sketch;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use futures::StreamExt;
use tally_proto::v1::Dimension as D;

use crate::domain::{PropValue, SiteId, SiteRecord, StoredEvent, now_micros};
use crate::query::dims::{Dim, counts_in_reports};
use crate::storage::{StorageError, Store};
use sketch::{Hashed, Sketch};

/// The dimensions rolled up per day and value.
pub const DIMENSIONS: [D; 16] = [
    D::Page,
    D::Hostname,
    D::Referrer,
    D::Source,
    D::Medium,
    D::Campaign,
    D::UtmSource,
    D::UtmMedium,
    D::Country,
    D::Region,
    D::City,
    D::DeviceType,
    D::Browser,
    D::Os,
    D::AppVersion,
    D::EventName,
];

/// The cells of one dimension by value: 16 look-ups per event at ingest, so
/// a fast hash, seeded at random per table as values come from clients.
pub type Cells = HashMap<Box<str>, Cell, foldhash::fast::RandomState>;

/// Microseconds in an hour bucket.
pub const HOUR_MICROS: i64 = 3_600_000_000;

/// Aggregates of one bucket.
#[derive(Clone, Debug, Default)]
pub struct Cell {
    /// Page and screen views.
    pub pageviews: u64,
    /// Events.
    pub events: u64,
    /// Revenue per ISO 4217 currency, nano units.
    pub revenue: Vec<([u8; 3], i128)>,
    /// Distinct visitors.
    pub visitors: Sketch,
    /// Distinct visits.
    pub visits: Sketch,
}

impl Cell {
    /// Adds events, counting a visitor or visit repeated next to itself once.
    fn add_run<'a>(&mut self, events: impl Iterator<Item = &'a Counted<'a>>) {
        let mut last: Option<(Hashed, Hashed)> = None;
        for e in events {
            self.add_counts(e.event);
            if last.is_none_or(|(v, _)| v != e.visitor) {
                self.visitors.insert_hashed(e.visitor);
            }
            if last.is_none_or(|(_, s)| s != e.visit) {
                self.visits.insert_hashed(e.visit);
            }
            last = Some((e.visitor, e.visit));
        }
    }

    fn add_counts(&mut self, e: &StoredEvent) {
        self.events += 1;
        if e.event_kind().is_some_and(|k| k.is_view()) {
            self.pageviews += 1;
        }
        if let Some(money) = &e.revenue
            && let Ok(code) = <[u8; 3]>::try_from(money.currency.as_bytes())
        {
            let nanos = i128::from(money.units) * 1_000_000_000 + i128::from(money.nanos);
            match self.revenue.iter_mut().find(|(c, _)| *c == code) {
                Some((_, sum)) => *sum += nanos,
                None => self.revenue.push((code, nanos)),
            }
        }
    }

    /// Adds the counts, sums and sketches of `other`.
    pub fn merge(&mut self, other: &Cell) {
        self.pageviews += other.pageviews;
        self.events += other.events;
        for (code, nanos) in &other.revenue {
            match self.revenue.iter_mut().find(|(c, _)| c == code) {
                Some((_, sum)) => *sum += nanos,
                None => self.revenue.push((*code, *nanos)),
            }
        }
        self.visitors.merge(&other.visitors);
        self.visits.merge(&other.visits);
    }

    /// Revenue in `currency`, nano units.
    pub fn revenue_nanos(&self, currency: &str) -> i128 {
        self.revenue
            .iter()
            .find(|(c, _)| c.as_slice() == currency.as_bytes())
            .map_or(0, |(_, n)| *n)
    }

    fn heap_bytes(&self) -> usize {
        self.visitors.heap_bytes() + self.visits.heap_bytes() + self.revenue.capacity() * 32
    }
}

/// An event on its way into the cells, with what every cell needs of it.
struct Counted<'a> {
    event: &'a StoredEvent,
    /// The day in the site's time zone.
    date: Option<NaiveDate>,
    visitor: Hashed,
    visit: Hashed,
}

/// One day of a site, in its time zone.
#[derive(Debug, Default)]
pub struct Day {
    /// Per rolled-up dimension (in [`DIMENSIONS`] order), value -> cell;
    /// events without a value are under "".
    pub dims: Vec<Cells>,
}

/// A site's rollups.
#[derive(Debug)]
pub struct SiteRollups {
    /// Time zone of the day buckets.
    pub tz: Tz,
    /// UTC hour (hours since the epoch) -> cell.
    pub hours: BTreeMap<i64, Cell>,
    /// Local day -> cells by dimension.
    pub days: BTreeMap<NaiveDate, Day>,
    /// Custom property keys seen, with the kinds of values (bit 0 string,
    /// bit 1 number, bit 2 bool).
    pub properties: BTreeMap<String, u8>,
}

impl SiteRollups {
    /// Empty rollups with day buckets in `tz`.
    pub fn new(tz: Tz) -> Self {
        Self {
            tz,
            hours: BTreeMap::new(),
            days: BTreeMap::new(),
            properties: BTreeMap::new(),
        }
    }

    /// Adds one stored event.
    pub fn apply(&mut self, e: &StoredEvent) {
        self.apply_all(&[e]);
    }

    /// Adds stored events. Events next to each other often share an hour, a
    /// day and values (a batch from one browser shares nearly all of them),
    /// so each run of equal values costs one look-up, and a visitor or visit
    /// repeated within a run is counted once.
    pub fn apply_all<'a>(&mut self, events: &[&'a StoredEvent]) {
        let mut counted: Vec<Counted<'_>> = Vec::with_capacity(events.len());
        for e in events {
            note_property_kinds(&mut self.properties, e);
            if !counts_in_reports(e, false) {
                continue;
            }
            counted.push(Counted {
                event: e,
                date: Utc
                    .timestamp_micros(e.ts_micros)
                    .single()
                    .map(|t| t.with_timezone(&self.tz).date_naive()),
                visitor: Hashed::new(e.visitor),
                visit: Hashed::new(e.session),
            });
        }
        let hour = |e: &Counted<'_>| e.event.ts_micros.div_euclid(HOUR_MICROS);
        for run in counted.chunk_by(|a, b| hour(a) == hour(b)) {
            let cell = self.hours.entry(hour(&run[0])).or_default();
            cell.add_run(run.iter());
        }
        // Events of several days are rare: sorted by day, stably.
        if counted.windows(2).any(|w| w[0].date != w[1].date) {
            counted.sort_by_key(|e| e.date);
        }
        let tz = self.tz;
        for same_day in counted.chunk_by(|a, b| a.date == b.date) {
            let Some(date) = same_day[0].date else {
                continue;
            };
            let day = self.days.entry(date).or_default();
            if day.dims.is_empty() {
                day.dims = DIMENSIONS.iter().map(|_| Cells::default()).collect();
            }
            // Each event's values, once: a run ends where the next value differs.
            let values: Vec<[Cow<'a, str>; DIMENSIONS.len()]> = same_day
                .iter()
                .map(|e| {
                    DIMENSIONS.map(|d| {
                        Dim::Standard(d)
                            .value(e.event, tz, "")
                            .unwrap_or(Cow::Borrowed(""))
                    })
                })
                .collect();
            for (i, cells) in day.dims.iter_mut().enumerate() {
                let mut start = 0;
                while start < same_day.len() {
                    let key = &values[start][i];
                    let len = 1 + values[start + 1..].iter().take_while(|v| v[i] == *key).count();
                    let cell = match cells.get_mut(key.as_ref()) {
                        Some(cell) => cell,
                        None => cells.entry(key.as_ref().into()).or_default(),
                    };
                    cell.add_run(same_day[start..start + len].iter());
                    start += len;
                }
            }
        }
    }

    /// Adds the cells of `other` (rollups of other events, in the same
    /// time zone): the rollups of both sets of events together.
    pub fn merge(&mut self, other: &SiteRollups) {
        for (hour, cell) in &other.hours {
            self.hours.entry(*hour).or_default().merge(cell);
        }
        for (date, day) in &other.days {
            let mine = self.days.entry(*date).or_default();
            if mine.dims.is_empty() {
                mine.dims = DIMENSIONS.iter().map(|_| Cells::default()).collect();
            }
            for (cells, theirs) in mine.dims.iter_mut().zip(&day.dims) {
                for (value, cell) in theirs {
                    match cells.get_mut(value) {
                        Some(known) => known.merge(cell),
                        None => {
                            cells.insert(value.clone(), cell.clone());
                        }
                    }
                }
            }
        }
        for (key, bits) in &other.properties {
            *self.properties.entry(key.clone()).or_default() |= bits;
        }
    }

    /// Bytes held, roughly (cells, sketches, keys).
    pub fn heap_bytes(&self) -> usize {
        let cell = std::mem::size_of::<Cell>();
        let hours: usize = self.hours.values().map(|c| cell + c.heap_bytes()).sum();
        let days: usize = self
            .days
            .values()
            .flat_map(|d| d.dims.iter())
            .flat_map(|m| m.iter())
            .map(|(k, c)| cell + 16 + k.len() + c.heap_bytes())
            .sum();
        hours + days
    }
}

/// Adds the kinds of value of `e`'s properties to `kinds` (per key: bit 0
/// string, bit 1 number, bit 2 bool).
pub fn note_property_kinds(kinds: &mut BTreeMap<String, u8>, e: &StoredEvent) {
    for (key, prop) in &e.properties {
        let bit = match prop.value {
            Some(PropValue::Str(_)) => 1,
            Some(PropValue::Num(_)) => 2,
            Some(PropValue::Bool(_)) => 4,
            None => 0,
        };
        match kinds.get_mut(key) {
            Some(known) => *known |= bit,
            None => {
                kinds.insert(key.clone(), bit);
            }
        }
    }
}

/// The names of the kinds noted by [`note_property_kinds`].
pub fn property_kind_names(bits: u8) -> Vec<String> {
    [(1, "string"), (2, "number"), (4, "bool")]
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

struct Entry {
    rollups: RwLock<Option<SiteRollups>>,
    /// While a rebuild scans: the events ingest stored meanwhile.
    rebuilding: std::sync::Mutex<Option<Vec<StoredEvent>>>,
    generation: AtomicU64,
    old_generation: AtomicU64,
}

/// Events older than this when they arrive count as late: they bump the
/// generation that cached answers about the past depend on.
pub const LATE_MICROS: i64 = 2 * 24 * HOUR_MICROS;

/// The rollups of every site.
pub struct Rollups {
    enabled: bool,
    sites: RwLock<HashMap<String, Arc<Entry>>>,
    shared: shared::SharedRollups,
}

impl Rollups {
    /// Rollups that answer reports (`enabled`), or that only count writes
    /// for the cache (a backend shared by several instances, whose rollups
    /// one instance alone cannot keep).
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            sites: RwLock::new(HashMap::new()),
            shared: shared::SharedRollups::default(),
        }
    }

    /// The hour rollups of a shared store (see [`shared`]).
    pub fn shared(&self) -> &shared::SharedRollups {
        &self.shared
    }

    /// True when the rollups answer reports (and so need the stored events).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn entry(&self, site: &str) -> Arc<Entry> {
        if let Some(entry) = self.sites.read().expect("rollups lock").get(site) {
            return entry.clone();
        }
        self.sites
            .write()
            .expect("rollups lock")
            .entry(site.to_owned())
            .or_insert_with(|| {
                Arc::new(Entry {
                    rollups: RwLock::new(None),
                    rebuilding: std::sync::Mutex::new(None),
                    generation: AtomicU64::new(0),
                    old_generation: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Rebuilds every site's rollups from its raw events. Call before ingest starts.
    pub async fn rebuild(&self, store: &dyn Store) -> Result<(), StorageError> {
        for site in store.list_sites().await? {
            self.rebuild_site(store, &site).await?;
        }
        Ok(())
    }

    /// Rebuilds one site's rollups from its raw events (after events were
    /// deleted: sketches cannot forget). Reports are answered from raw
    /// events while it runs. Events ingested meanwhile are kept aside and
    /// added at the end unless the scan already saw them (by event id, among
    /// the events received since the rebuild began), so none counts twice
    /// and none is missed.
    pub async fn rebuild_site(&self, store: &dyn Store, site: &SiteRecord) -> Result<(), StorageError> {
        let entry = self.entry(&site.site_id);
        entry.generation.fetch_add(1, Ordering::Release);
        entry.old_generation.fetch_add(1, Ordering::Release);
        if !self.enabled {
            return Ok(());
        }
        let Ok(id) = SiteId::parse(&site.site_id) else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let began = now_micros();
        {
            let mut guard = entry.rollups.write().expect("rollups lock");
            *guard = None;
            *entry.rebuilding.lock().expect("rollups lock") = Some(Vec::new());
        }
        let mut rollups = SiteRollups::new(site_tz(site));
        let mut events = 0u64;
        let mut recent = std::collections::HashSet::new();
        let mut chunks = store.scan(&id, i64::MIN, i64::MAX);
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    *entry.rebuilding.lock().expect("rollups lock") = None;
                    return Err(err);
                }
            };
            events += chunk.len() as u64;
            rollups.apply_all(&chunk.iter().collect::<Vec<_>>());
            for e in &chunk {
                // Received since the rebuild began (a second of clock margin).
                if e.received_micros >= began - 1_000_000 {
                    recent.insert(e.event_id.clone());
                }
            }
        }
        let mut guard = entry.rollups.write().expect("rollups lock");
        let pending = entry
            .rebuilding
            .lock()
            .expect("rollups lock")
            .take()
            .unwrap_or_default();
        let pending: Vec<&StoredEvent> = pending.iter().filter(|e| !recent.contains(&e.event_id)).collect();
        rollups.apply_all(&pending);
        if events > 0 {
            tracing::info!(
                site = %site.site_id,
                events,
                bytes = rollups.heap_bytes(),
                seconds = started.elapsed().as_secs_f64(),
                "rollups rebuilt"
            );
        }
        *guard = Some(rollups);
        Ok(())
    }

    /// Drops a site's buckets that end before `before_micros` (retention).
    pub fn forget_before(&self, site: &str, before_micros: i64) {
        let entry = self.entry(site);
        entry.generation.fetch_add(1, Ordering::Release);
        entry.old_generation.fetch_add(1, Ordering::Release);
        let mut guard = entry.rollups.write().expect("rollups lock");
        let Some(rollups) = guard.as_mut() else {
            return;
        };
        let first_hour = before_micros.div_euclid(HOUR_MICROS);
        rollups.hours = rollups.hours.split_off(&first_hour);
        // A day partly before the cut is kept whole: it still has events.
        if let Some(cut) = Utc.timestamp_micros(before_micros).single() {
            let first_day = cut.with_timezone(&rollups.tz).date_naive();
            rollups.days = rollups.days.split_off(&first_day);
        }
    }

    /// A new site, or a site whose time zone changed: its day buckets start
    /// over in the new zone. Days rolled up in another zone cannot be
    /// split again, so after a change the site's breakdowns are answered
    /// from raw events until the next rebuild (the next start).
    pub fn site_changed(&self, site: &SiteRecord, is_new: bool) {
        if !self.enabled {
            return;
        }
        let entry = self.entry(&site.site_id);
        let mut rollups = entry.rollups.write().expect("rollups lock");
        let tz = site_tz(site);
        match rollups.as_mut() {
            None if is_new => *rollups = Some(SiteRollups::new(tz)),
            Some(r) if r.tz != tz => *rollups = None,
            _ => {}
        }
    }

    /// Adds newly stored events (duplicates left out) of a site.
    pub fn apply<'a>(&self, site: &str, events: impl IntoIterator<Item = &'a StoredEvent>) {
        let entry = self.entry(site);
        let now = now_micros();
        let events: Vec<&StoredEvent> = events.into_iter().collect();
        let late = events.iter().any(|e| e.ts_micros < now - LATE_MICROS);
        {
            let mut guard = entry.rollups.write().expect("rollups lock");
            let mut rebuilding = entry.rebuilding.lock().expect("rollups lock");
            match (guard.as_mut(), rebuilding.as_mut()) {
                (Some(rollups), _) => rollups.apply_all(&events),
                (None, Some(pending)) => pending.extend(events.into_iter().cloned()),
                (None, None) => {}
            }
        }
        entry.generation.fetch_add(1, Ordering::Release);
        if late {
            entry.old_generation.fetch_add(1, Ordering::Release);
        }
    }

    /// The site's write generations: (every write, late writes).
    pub fn generations(&self, site: &str) -> (u64, u64) {
        let entry = self.entry(site);
        (
            entry.generation.load(Ordering::Acquire),
            entry.old_generation.load(Ordering::Acquire),
        )
    }

    /// Runs `f` over the site's rollups, when they can answer reports.
    pub fn read<T>(&self, site: &str, f: impl FnOnce(&SiteRollups) -> T) -> Option<T> {
        if !self.enabled {
            return None;
        }
        let entry = self.entry(site);
        let guard = entry.rollups.read().expect("rollups lock");
        guard.as_ref().map(f)
    }
}

/// The time zone of a site's day buckets (UTC when the name is unknown).
pub fn site_tz(site: &SiteRecord) -> Tz {
    Tz::from_str(&site.time_zone).unwrap_or(Tz::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, StoredMoney};

    /// Every cell as bytes: counts, revenue and sketches.
    fn cells(rollups: &SiteRollups) -> BTreeMap<String, Vec<u8>> {
        let bytes = |cell: &Cell| {
            let mut out = format!("{} {} {:?} ", cell.pageviews, cell.events, cell.revenue).into_bytes();
            cell.visitors.encode(&mut out);
            cell.visits.encode(&mut out);
            out
        };
        let mut all = BTreeMap::new();
        for (hour, cell) in &rollups.hours {
            all.insert(format!("hour {hour}"), bytes(cell));
        }
        for (date, day) in &rollups.days {
            for (d, cells) in DIMENSIONS.iter().zip(&day.dims) {
                for (value, cell) in cells {
                    all.insert(format!("{date} {d:?} {value}"), bytes(cell));
                }
            }
        }
        all
    }

    #[test]
    fn a_batch_adds_what_its_events_add_one_by_one() {
        let start = 1_767_225_600_000_000; // 2026-01-01T00:00Z
        // Runs of equal values, of the same visitor and visit, events of several
        // days and hours out of order, bots, purchases and dense sketches.
        let events: Vec<StoredEvent> = (0..3000i64)
            .map(|i| StoredEvent {
                ts_micros: start + ((i / 50) % 30) * HOUR_MICROS + i * 1_000_000,
                kind: if i % 97 == 0 {
                    EventKind::Custom
                } else {
                    EventKind::Pageview
                } as i32,
                name: if i % 97 == 0 {
                    "purchase".into()
                } else {
                    "pageview".into()
                },
                path: format!("/p{}", (i / 3) % 7),
                hostname: "shop.example".into(),
                browser: if i % 400 < 200 { "Firefox" } else { "Chrome" }.into(),
                country: if i % 11 == 0 { String::new() } else { "DE".into() },
                visitor: (i / 4 % 700) as u64,
                session: (i / 2 % 1100) as u64,
                bot: i % 13 == 0,
                revenue: (i % 97 == 0).then(|| StoredMoney {
                    currency: "EUR".into(),
                    units: i,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .collect();
        let tz = Tz::America__New_York;
        let mut one_by_one = SiteRollups::new(tz);
        events.iter().for_each(|e| one_by_one.apply(e));
        let mut batched = SiteRollups::new(tz);
        for batch in events.chunks(250) {
            batched.apply_all(&batch.iter().collect::<Vec<_>>());
        }
        assert!(batched.days.len() >= 2);
        let dense = |c: &Cell| matches!(c.visitors, Sketch::Dense(_));
        assert!(one_by_one.days.values().any(|d| d.dims[1].values().any(dense)));
        assert_eq!(cells(&batched), cells(&one_by_one));
        // And both counted what the events hold.
        let people: Vec<&StoredEvent> = events.iter().filter(|e| !e.bot).collect();
        let events_counted: u64 = batched.hours.values().map(|c| c.events).sum();
        assert_eq!(events_counted, people.len() as u64);
        let browser = DIMENSIONS.iter().position(|d| *d == D::Browser).unwrap();
        let firefox: u64 = batched
            .days
            .values()
            .filter_map(|d| d.dims[browser].get("Firefox"))
            .map(|c| c.pageviews)
            .sum();
        let expected = people
            .iter()
            .filter(|e| e.browser == "Firefox" && e.kind == EventKind::Pageview as i32)
            .count();
        assert_eq!(firefox, expected as u64);
    }
}
