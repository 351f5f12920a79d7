//! Rollups on a store that several instances write (ScyllaDB + Redis).
//!
//! No instance sees every write, so none can keep the rollups in memory as
//! the single-instance store does. Instead the unit of rollup is one UTC hour
//! of one site: its rollup ([`SiteRollups`] over that hour's events only:
//! the hour cell, and the day cells of the one or two local days the hour
//! falls in) is a deterministic function of the hour's raw events. Any
//! instance may compute it, and writing it twice writes the same thing, so
//! no coordination between instances is needed and a crash half-way loses
//! nothing.
//!
//! Freshness is decided by a token per hour, kept in Redis: every append
//! that stores events of an hour gives the hour a fresh random token (after
//! the events are durable, in the pipeline that marks their ids stored,
//! before the append is acknowledged). A rollup is stored with the token
//! that was read *before* its events were scanned, and it is current only
//! while the hour still has that token. So a rollup is either complete or
//! visibly stale: an event written after the token was read changes the
//! token when it is acknowledged, and one written before it is in the scan.
//! Random tokens (not counters) cannot repeat after Redis loses its data; an
//! hour without a token gets one before it is scanned.
//!
//! A report covered by rollups reads, for every hour of its ranges that
//! holds events, the rollup this instance has in memory, else the one in
//! ScyllaDB, when either is current; every other hour (recent, late, or not
//! rolled up yet) is computed from its raw events right then, and stored for
//! the next report. Each hour is counted exactly once, from one source, so
//! nothing is counted twice or missed at the boundary between rolled-up and
//! raw hours. A worker on every instance rolls up the hours that appends
//! marked dirty once they are over (a minute after their end), so that
//! reports seldom wait for raw scans of past hours; the running hour is
//! scanned by the reports that cover it. Hour rollups are
//! merged with the same cell and sketch code as the in-memory rollups, and
//! answered by the same executor.
//!
//! Per-instance partial rollups merged at read time were the alternative:
//! they need no tokens, but every instance's partial state must survive its
//! restarts and crashes exactly once, which brings back the bookkeeping
//! that the tokens avoid.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use chrono::{Datelike, NaiveDate};
use chrono_tz::Tz;
use futures::StreamExt;

use super::sketch::{Sketch, put_varint, take_varint};
use super::{Cell, DIMENSIONS, Day, HOUR_MICROS, SiteRollups, site_tz};
use crate::domain::{SiteId, SiteRecord, now_micros};
use crate::storage::{SharedRollupStore, StorageError, Store};

/// Hour rollups kept in memory per instance before the memory starts over.
const MEMORY_HOURS: usize = 50_000;
/// Hours loaded or computed at once for one report.
const CONCURRENCY: usize = 16;
/// Dirty hours one pass of the worker rolls up per site.
const WORKER_BATCH: usize = 256;
/// How long after its end an hour is left to the writes still arriving
/// before the worker rolls it up.
const SETTLE_MICROS: i64 = 60_000_000;

/// An hour rollup with the token it was computed at.
type Remembered = (u64, Arc<SiteRollups>);

/// The hour rollups this instance has read or computed, by site and hour,
/// with their token.
#[derive(Default)]
pub struct SharedRollups {
    memory: Mutex<HashMap<(String, i64), Remembered>>,
}

/// What a rebuild or a worker pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rolled {
    /// Hours rolled up.
    pub hours: u64,
    /// Events in them.
    pub events: u64,
}

impl SharedRollups {
    fn remembered(&self, site: &str, hour: i64, token: u64, tz: Tz) -> Option<Arc<SiteRollups>> {
        let memory = self.memory.lock().expect("shared rollups lock");
        let (known, rollups) = memory.get(&(site.to_owned(), hour))?;
        (*known == token && rollups.tz == tz).then(|| rollups.clone())
    }

    fn remember(&self, site: &str, hour: i64, token: u64, rollups: Arc<SiteRollups>) {
        let mut memory = self.memory.lock().expect("shared rollups lock");
        if memory.len() >= MEMORY_HOURS {
            memory.clear();
        }
        memory.insert((site.to_owned(), hour), (token, rollups));
    }

    /// The rollups of `site` over every hour that overlaps one of `spans`
    /// (`[from, to)` microseconds): hours from current stored rollups, the
    /// others from raw events (and then stored).
    pub async fn load(
        &self,
        store: &dyn Store,
        shared: &dyn SharedRollupStore,
        site: &SiteRecord,
        spans: &[(i64, i64)],
    ) -> Result<SiteRollups, StorageError> {
        let id = SiteId::parse(&site.site_id).map_err(|_| StorageError::UnknownSite(site.site_id.clone()))?;
        let tz = site_tz(site);
        let mut hours = BTreeSet::new();
        for (from, to) in spans.iter().filter(|(from, to)| from < to) {
            let (first, last) = (from.div_euclid(HOUR_MICROS), (to - 1).div_euclid(HOUR_MICROS));
            hours.extend(shared.event_hours(&id, first, last).await?);
        }
        let hours: Vec<i64> = hours.into_iter().collect();
        // Tokens first: read before any scan (see the module docs).
        let tokens = shared.hour_tokens(&id, &hours).await?;
        let mut merged = SiteRollups::new(tz);
        let mut missing = Vec::new();
        for (hour, token) in hours.iter().zip(tokens) {
            match token.and_then(|t| self.remembered(&site.site_id, *hour, t, tz)) {
                Some(rollups) => merged.merge(&rollups),
                None => missing.push((*hour, token)),
            }
        }
        let fetched: Vec<Result<Arc<SiteRollups>, StorageError>> = futures::stream::iter(missing)
            .map(|(hour, token)| self.hour(store, shared, &id, tz, hour, token))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for rollups in fetched {
            let rollups = rollups?;
            merged.merge(&rollups);
        }
        Ok(merged)
    }

    /// One hour's rollups: stored and current, or computed now.
    async fn hour(
        &self,
        store: &dyn Store,
        shared: &dyn SharedRollupStore,
        site: &SiteId,
        tz: Tz,
        hour: i64,
        token: Option<u64>,
    ) -> Result<Arc<SiteRollups>, StorageError> {
        if let Some(token) = token
            && let Some((stored, body)) = shared.hour_rollup(site, hour).await?
            && stored == token
            && let Some(rollups) = decode(&body).filter(|r| r.tz == tz)
        {
            let rollups = Arc::new(rollups);
            self.remember(site.as_str(), hour, token, rollups.clone());
            return Ok(rollups);
        }
        let token = match token {
            Some(token) => token,
            None => shared.hour_token(site, hour, false).await?,
        };
        let (rollups, _) = self.compute(store, shared, site, tz, hour, token).await?;
        Ok(rollups)
    }

    /// Rolls up one hour from its raw events (scanned after `token` was
    /// read), stores and remembers it; also returns its number of events.
    async fn compute(
        &self,
        store: &dyn Store,
        shared: &dyn SharedRollupStore,
        site: &SiteId,
        tz: Tz,
        hour: i64,
        token: u64,
    ) -> Result<(Arc<SiteRollups>, u64), StorageError> {
        let mut rollups = SiteRollups::new(tz);
        let mut events = 0u64;
        let mut chunks = store.scan(site, hour * HOUR_MICROS, (hour + 1) * HOUR_MICROS);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            events += chunk.len() as u64;
            rollups.apply_all(&chunk.iter().collect::<Vec<_>>());
        }
        let rollups = Arc::new(rollups);
        // Storing only saves the next reader the scan: a failure is not the report's.
        if let Err(error) = shared.put_hour_rollup(site, hour, token, encode(&rollups)).await {
            tracing::warn!(site = %site, hour, %error, "hour rollup not stored");
        }
        self.remember(site.as_str(), hour, token, rollups.clone());
        Ok((rollups, events))
    }

    /// Rolls up one hour of `site` again; with `renew`, under a fresh token
    /// (after the hour's events changed without an append, or to recover
    /// from lost tokens).
    pub async fn refresh(
        &self,
        store: &dyn Store,
        shared: &dyn SharedRollupStore,
        site: &SiteRecord,
        hour: i64,
        renew: bool,
    ) -> Result<u64, StorageError> {
        let id = SiteId::parse(&site.site_id).map_err(|_| StorageError::UnknownSite(site.site_id.clone()))?;
        let token = shared.hour_token(&id, hour, renew).await?;
        let (_, events) = self
            .compute(store, shared, &id, site_tz(site), hour, token)
            .await?;
        Ok(events)
    }

    /// One pass of the worker: rolls up the hours that appends marked
    /// dirty, for every site. An hour whose roll-up fails is marked dirty
    /// again. Safe on any number of instances at once.
    pub async fn settle(&self, store: &dyn Store) -> Result<Rolled, StorageError> {
        let Some(shared) = store.shared_rollups() else {
            return Ok(Rolled::default());
        };
        let mut done = Rolled::default();
        for site in store.list_sites().await? {
            let Ok(id) = SiteId::parse(&site.site_id) else {
                continue;
            };
            let taken = shared.take_dirty_hours(&id, WORKER_BATCH).await?;
            // An hour still being written is answered from raw events until
            // it is over: rolling it up after every batch would scan it again
            // and again.
            let over_before = (now_micros() - SETTLE_MICROS).div_euclid(HOUR_MICROS);
            let (hours, running): (Vec<i64>, Vec<i64>) = taken.into_iter().partition(|h| *h < over_before);
            shared.mark_dirty(&id, &running).await?;
            for (i, hour) in hours.iter().enumerate() {
                match self.refresh(store, shared, &site, *hour, false).await {
                    Ok(events) => {
                        done.hours += 1;
                        done.events += events;
                    }
                    Err(err) => {
                        shared.mark_dirty(&id, &hours[i..]).await?;
                        return Err(err);
                    }
                }
            }
        }
        Ok(done)
    }
}

const FORMAT: u8 = 1;

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn take_str(input: &mut &[u8]) -> Option<String> {
    let len = usize::try_from(take_varint(input)?).ok()?;
    let (bytes, rest) = input.split_at_checked(len)?;
    *input = rest;
    String::from_utf8(bytes.to_vec()).ok()
}

fn put_cell(out: &mut Vec<u8>, cell: &Cell) {
    put_varint(out, cell.pageviews);
    put_varint(out, cell.events);
    put_varint(out, cell.revenue.len() as u64);
    for (code, nanos) in &cell.revenue {
        out.extend_from_slice(code);
        out.extend_from_slice(&nanos.to_le_bytes());
    }
    cell.visitors.encode(out);
    cell.visits.encode(out);
}

fn take_cell(input: &mut &[u8]) -> Option<Cell> {
    let pageviews = take_varint(input)?;
    let events = take_varint(input)?;
    let currencies = take_varint(input)?;
    let mut revenue = Vec::new();
    for _ in 0..currencies {
        let (raw, rest) = input.split_at_checked(19)?;
        *input = rest;
        let code: [u8; 3] = raw[..3].try_into().ok()?;
        let nanos = i128::from_le_bytes(raw[3..].try_into().ok()?);
        revenue.push((code, nanos));
    }
    Some(Cell {
        pageviews,
        events,
        revenue,
        visitors: Sketch::decode(input)?,
        visits: Sketch::decode(input)?,
    })
}

/// The bytes of an hour's rollups, as stored.
pub fn encode(rollups: &SiteRollups) -> Vec<u8> {
    let mut out = vec![FORMAT];
    put_str(&mut out, rollups.tz.name());
    put_varint(&mut out, rollups.hours.len() as u64);
    for (hour, cell) in &rollups.hours {
        put_varint(&mut out, *hour as u64);
        put_cell(&mut out, cell);
    }
    put_varint(&mut out, rollups.days.len() as u64);
    for (date, day) in &rollups.days {
        put_varint(&mut out, i64::from(date.num_days_from_ce()) as u64);
        put_varint(&mut out, day.dims.len() as u64);
        for cells in &day.dims {
            put_varint(&mut out, cells.len() as u64);
            for (value, cell) in cells {
                put_str(&mut out, value);
                put_cell(&mut out, cell);
            }
        }
    }
    put_varint(&mut out, rollups.properties.len() as u64);
    for (key, bits) in &rollups.properties {
        put_str(&mut out, key);
        out.push(*bits);
    }
    out
}

/// Rollups from the bytes of [`encode`]; `None` when they are not such bytes.
pub fn decode(mut input: &[u8]) -> Option<SiteRollups> {
    let input = &mut input;
    let (&format, rest) = input.split_first()?;
    *input = rest;
    if format != FORMAT {
        return None;
    }
    let tz = Tz::from_str(&take_str(input)?).ok()?;
    let mut hours = BTreeMap::new();
    for _ in 0..take_varint(input)? {
        let hour = take_varint(input)? as i64;
        hours.insert(hour, take_cell(input)?);
    }
    let mut days = BTreeMap::new();
    for _ in 0..take_varint(input)? {
        let date = NaiveDate::from_num_days_from_ce_opt(i32::try_from(take_varint(input)? as i64).ok()?)?;
        let dims = take_varint(input)?;
        if dims as usize != DIMENSIONS.len() {
            return None;
        }
        let mut day = Day::default();
        for _ in 0..dims {
            let mut cells = super::Cells::default();
            for _ in 0..take_varint(input)? {
                let value = take_str(input)?;
                cells.insert(value.into_boxed_str(), take_cell(input)?);
            }
            day.dims.push(cells);
        }
        days.insert(date, day);
    }
    let mut properties = BTreeMap::new();
    for _ in 0..take_varint(input)? {
        let key = take_str(input)?;
        let (&bits, rest) = input.split_first()?;
        *input = rest;
        properties.insert(key, bits);
    }
    input.is_empty().then_some(SiteRollups {
        tz,
        hours,
        days,
        properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, StoredEvent, StoredMoney};
    use crate::rollup::sketch::Union;

    /// 600 page views of 300 visitors over 30 hours, and a purchase each hour,
    /// in a zone whose days do not start on a UTC hour.
    fn events() -> Vec<StoredEvent> {
        let start = 1_767_225_600_000_000; // 2026-01-01T00:00Z
        (0..630i64)
            .map(|i| {
                let purchase = i >= 600;
                StoredEvent {
                    ts_micros: start + (i % 30) * HOUR_MICROS + i * 1_000_000,
                    kind: if purchase {
                        EventKind::Custom
                    } else {
                        EventKind::Pageview
                    } as i32,
                    name: if purchase {
                        "purchase".into()
                    } else {
                        String::new()
                    },
                    path: format!("/p{}", i % 7),
                    visitor: (i % 300) as u64,
                    session: (i % 450) as u64,
                    revenue: purchase.then(|| StoredMoney {
                        currency: "EUR".into(),
                        units: 2,
                        nanos: 500_000_000,
                    }),
                    ..Default::default()
                }
            })
            .collect()
    }

    fn visitors(cells: &[&Cell]) -> u64 {
        let mut union = Union::default();
        cells.iter().for_each(|c| union.add(&c.visitors));
        union.count()
    }

    #[test]
    fn hour_rollups_merged_equal_the_rollups_of_every_event() {
        let tz = Tz::Asia__Kolkata;
        let events = events();
        let mut whole = SiteRollups::new(tz);
        events.iter().for_each(|e| whole.apply(e));
        let mut by_hour: BTreeMap<i64, SiteRollups> = BTreeMap::new();
        for e in &events {
            by_hour
                .entry(e.ts_micros.div_euclid(HOUR_MICROS))
                .or_insert_with(|| SiteRollups::new(tz))
                .apply(e);
        }
        let mut merged = SiteRollups::new(tz);
        for hour in by_hour.values() {
            let stored = decode(&encode(hour)).expect("decodes");
            merged.merge(&stored);
        }
        assert_eq!(merged.hours.len(), 30);
        for (hour, cell) in &whole.hours {
            let other = &merged.hours[hour];
            assert_eq!((other.pageviews, other.events), (cell.pageviews, cell.events));
            assert_eq!(visitors(&[other]), visitors(&[cell]));
        }
        assert_eq!(
            merged.days.keys().collect::<Vec<_>>(),
            whole.days.keys().collect::<Vec<_>>()
        );
        let page = DIMENSIONS
            .iter()
            .position(|d| *d == tally_proto::v1::Dimension::Page)
            .unwrap();
        for (date, day) in &whole.days {
            for (value, cell) in &day.dims[page] {
                let other = &merged.days[date].dims[page][value];
                assert_eq!((other.pageviews, other.events), (cell.pageviews, cell.events));
                assert_eq!(visitors(&[other]), visitors(&[cell]), "{date} {value}");
                assert_eq!(other.revenue_nanos("EUR"), cell.revenue_nanos("EUR"));
            }
        }
        let all: Vec<&Cell> = merged.hours.values().collect();
        assert_eq!(visitors(&all), 300);
        let revenue: i128 = all.iter().map(|c| c.revenue_nanos("EUR")).sum();
        assert_eq!(revenue, 30 * 2_500_000_000);
    }

    #[test]
    fn damaged_bytes_are_refused() {
        let mut rollups = SiteRollups::new(Tz::UTC);
        events().iter().take(10).for_each(|e| rollups.apply(e));
        let bytes = encode(&rollups);
        assert!(decode(&bytes).is_some());
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode(&[bytes.as_slice(), &[0]].concat()).is_none());
        assert!(decode(&[2]).is_none());
    }
}
