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
use sketch::Sketch;

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
    fn add(&mut self, e: &StoredEvent) {
        self.events += 1;
        if e.event_kind().is_some_and(|k| k.is_view()) {
            self.pageviews += 1;
        }
        self.visitors.insert(e.visitor);
        self.visits.insert(e.session);
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
        note_property_kinds(&mut self.properties, e);
        if !counts_in_reports(e, false) {
            return;
        }
        self.hours
            .entry(e.ts_micros.div_euclid(HOUR_MICROS))
            .or_default()
            .add(e);
        let Some(local) = Utc.timestamp_micros(e.ts_micros).single() else {
            return;
        };
        let date = local.with_timezone(&self.tz).date_naive();
        let day = self.days.entry(date).or_default();
        if day.dims.is_empty() {
            day.dims = DIMENSIONS.iter().map(|_| Cells::default()).collect();
        }
        for (d, cells) in DIMENSIONS.iter().zip(day.dims.iter_mut()) {
            let value = Dim::Standard(*d).value(e, self.tz, "");
            let value = value.as_deref().unwrap_or("");
            match cells.get_mut(value) {
                Some(cell) => cell.add(e),
                None => cells.entry(value.into()).or_default().add(e),
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
            for e in &chunk {
                rollups.apply(e);
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
        for e in pending.iter().filter(|e| !recent.contains(&e.event_id)) {
            rollups.apply(e);
        }
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
        let mut late = false;
        {
            let mut guard = entry.rollups.write().expect("rollups lock");
            let mut rebuilding = entry.rebuilding.lock().expect("rollups lock");
            for e in events {
                late |= e.ts_micros < now - LATE_MICROS;
                match (guard.as_mut(), rebuilding.as_mut()) {
                    (Some(rollups), _) => rollups.apply(e),
                    (None, Some(pending)) => pending.push(e.clone()),
                    (None, None) => {}
                }
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
