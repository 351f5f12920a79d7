//! The in-memory realtime backend: per site, a ring of one-minute buckets.
//!
//! Memory is bounded by sites x [`WINDOW_MINUTES`] buckets. A bucket holds
//! counts and a [`Uniques`] of visitors (exact up to 512, then a 4 KiB
//! sketch), kept apart for people and bots. Only the buckets of the last
//! [`ACTIVE_MINUTES`] minutes hold the per-value tallies of the "top" lists,
//! each at most [`MAX_VALUES`] distinct values per minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tally_proto::v1;

use super::uniques::Uniques;
use super::{ACTIVE_MINUTES, Changes, Hit, MINUTE_MICROS, RealtimeBackend, WINDOW_MINUTES};
use crate::convert::micros_to_timestamp;
use crate::domain::SiteId;
use crate::storage::StorageError;

/// Distinct values of one "top" list kept per minute; later values in the
/// same minute still count in the totals but not in that list.
pub const MAX_VALUES: usize = 1000;

/// The "top" lists, in the order of their tallies.
#[derive(Clone, Copy)]
enum Top {
    Pages,
    Sources,
    Countries,
    Events,
}

const TOPS: [Top; 4] = [Top::Pages, Top::Sources, Top::Countries, Top::Events];

impl Top {
    fn value(self, hit: &Hit) -> &str {
        match self {
            Self::Pages => &hit.path,
            Self::Sources => &hit.source,
            Self::Countries => &hit.country,
            Self::Events => &hit.custom_name,
        }
    }
}

/// Counts of one value of a "top" list.
#[derive(Default)]
struct ValueTally {
    visitors: Uniques,
    pageviews: i64,
    events: i64,
}

/// Counts of people or of bots in one minute.
#[derive(Default)]
struct Tally {
    pageviews: i64,
    events: i64,
    visitors: Uniques,
    tops: [HashMap<String, ValueTally>; 4],
}

impl Tally {
    fn add(&mut self, hit: &Hit, with_tops: bool) {
        let pageviews = i64::from(hit.view);
        self.pageviews += pageviews;
        self.events += 1;
        self.visitors.insert(hit.visitor);
        if !with_tops {
            return;
        }
        for (top, values) in TOPS.into_iter().zip(&mut self.tops) {
            let value = top.value(hit);
            if value.is_empty() {
                continue;
            }
            if !values.contains_key(value) {
                if values.len() >= MAX_VALUES {
                    continue;
                }
                values.insert(value.to_owned(), ValueTally::default());
            }
            let Some(tally) = values.get_mut(value) else {
                continue;
            };
            tally.visitors.insert(hit.visitor);
            tally.pageviews += pageviews;
            tally.events += 1;
        }
    }
}

/// One minute of a site.
#[derive(Default)]
struct Bucket {
    /// Minutes since the Unix epoch.
    minute: i64,
    people: Tally,
    bots: Tally,
}

impl Bucket {
    fn sides(&self, include_bots: bool) -> impl Iterator<Item = &Tally> {
        std::iter::once(&self.people).chain(include_bots.then_some(&self.bots))
    }
}

/// The last [`WINDOW_MINUTES`] minutes of a site, bucket `m % WINDOW_MINUTES` for minute `m`.
struct Window {
    buckets: Vec<Bucket>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            buckets: (0..WINDOW_MINUTES).map(|_| Bucket::default()).collect(),
        }
    }
}

impl Window {
    /// Frees what the minute `now_minute` no longer needs: buckets that left
    /// the window, and "top" tallies of minutes that are no longer active.
    fn roll(&mut self, now_minute: i64) {
        for bucket in &mut self.buckets {
            // Minute 0 (1970) marks a bucket that never held anything.
            if bucket.minute != 0 && bucket.minute <= now_minute - WINDOW_MINUTES {
                *bucket = Bucket::default();
            } else if bucket.minute <= now_minute - ACTIVE_MINUTES {
                for tally in [&mut bucket.people, &mut bucket.bots] {
                    tally.tops.iter_mut().for_each(HashMap::clear);
                }
            }
        }
    }

    /// The bucket of `minute`, emptied first if it holds an older minute;
    /// `None` if it holds a newer one (the clock went back).
    fn bucket_mut(&mut self, minute: i64) -> Option<&mut Bucket> {
        let bucket = &mut self.buckets[minute.rem_euclid(WINDOW_MINUTES) as usize];
        if bucket.minute < minute {
            *bucket = Bucket {
                minute,
                ..Bucket::default()
            };
        }
        (bucket.minute == minute).then_some(bucket)
    }

    fn bucket(&self, minute: i64) -> Option<&Bucket> {
        let bucket = &self.buckets[minute.rem_euclid(WINDOW_MINUTES) as usize];
        (bucket.minute == minute).then_some(bucket)
    }

    fn record(&mut self, hits: &[Hit], now_micros: i64) -> bool {
        let now_minute = now_micros.div_euclid(MINUTE_MICROS);
        self.roll(now_minute);
        let mut changed = false;
        for hit in hits {
            // Future timestamps count now; older than the window, not at all.
            let minute = hit.ts_micros.div_euclid(MINUTE_MICROS).min(now_minute);
            if minute <= now_minute - WINDOW_MINUTES {
                continue;
            }
            let Some(bucket) = self.bucket_mut(minute) else {
                continue;
            };
            let tally = if hit.bot {
                &mut bucket.bots
            } else {
                &mut bucket.people
            };
            tally.add(hit, minute > now_minute - ACTIVE_MINUTES);
            changed = true;
        }
        changed
    }

    fn snapshot(&self, now_micros: i64, top_limit: usize, include_bots: bool) -> v1::RealtimeReport {
        let now_minute = now_micros.div_euclid(MINUTE_MICROS);
        let mut report = v1::RealtimeReport {
            as_of: Some(micros_to_timestamp(now_micros)),
            ..Default::default()
        };
        for minute in now_minute - WINDOW_MINUTES + 1..=now_minute {
            let mut count = v1::MinuteCount {
                minute: Some(micros_to_timestamp(minute * MINUTE_MICROS)),
                ..Default::default()
            };
            if let Some(bucket) = self.bucket(minute) {
                let mut visitors = Uniques::default();
                for tally in bucket.sides(include_bots) {
                    count.pageviews += tally.pageviews;
                    count.events += tally.events;
                    visitors.merge(&tally.visitors);
                }
                count.visitors = visitors.count();
            }
            report.minutes.push(count);
        }
        let active: Vec<&Tally> = (now_minute - ACTIVE_MINUTES + 1..=now_minute)
            .filter_map(|minute| self.bucket(minute))
            .flat_map(|bucket| bucket.sides(include_bots))
            .collect();
        let mut visitors = Uniques::default();
        active.iter().for_each(|tally| visitors.merge(&tally.visitors));
        report.active_visitors = visitors.count();
        let [pages, sources, countries, events] =
            [0, 1, 2, 3].map(|top| top_items(active.iter().map(|t| &t.tops[top]), top_limit));
        report.top_pages = pages;
        report.top_sources = sources;
        report.top_countries = countries;
        report.top_events = events;
        report
    }
}

/// Merges per-minute tallies of one "top" list and keeps the `limit` entries
/// with the most visitors (then page views, events, value).
fn top_items<'a>(
    minutes: impl Iterator<Item = &'a HashMap<String, ValueTally>>,
    limit: usize,
) -> Vec<v1::TopItem> {
    let mut merged: HashMap<&str, ValueTally> = HashMap::new();
    for values in minutes {
        for (value, tally) in values {
            let sum = merged.entry(value.as_str()).or_default();
            sum.visitors.merge(&tally.visitors);
            sum.pageviews += tally.pageviews;
            sum.events += tally.events;
        }
    }
    let mut items: Vec<v1::TopItem> = merged
        .into_iter()
        .map(|(value, tally)| v1::TopItem {
            value: value.to_owned(),
            visitors: tally.visitors.count(),
            pageviews: tally.pageviews,
            events: tally.events,
        })
        .collect();
    items.sort_by(|a, b| {
        (b.visitors, b.pageviews, b.events)
            .cmp(&(a.visitors, a.pageviews, a.events))
            .then_with(|| a.value.cmp(&b.value))
    });
    items.truncate(limit);
    items
}

/// A site's window and its watchers.
struct Site {
    window: Mutex<Window>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl Site {
    fn window(&self) -> MutexGuard<'_, Window> {
        // A panic while counting leaves counts, not broken invariants: go on.
        self.window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Realtime counters in this process's memory.
#[derive(Default)]
pub struct MemoryRealtime {
    sites: Mutex<HashMap<SiteId, Arc<Site>>>,
}

impl MemoryRealtime {
    /// The site's state, created on first use. The map only grows by sites
    /// that exist: ingest and queries check the site first.
    fn site(&self, id: &SiteId) -> Arc<Site> {
        let mut sites = self.sites.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        sites
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Site {
                    window: Mutex::new(Window::default()),
                    changes: tokio::sync::watch::Sender::new(0),
                })
            })
            .clone()
    }
}

#[async_trait]
impl RealtimeBackend for MemoryRealtime {
    async fn record(&self, site: &SiteId, hits: &[Hit], now_micros: i64) -> Result<(), StorageError> {
        let site = self.site(site);
        let changed = site.window().record(hits, now_micros);
        if changed {
            site.changes.send_modify(|version| *version += 1);
        }
        Ok(())
    }

    async fn snapshot(
        &self,
        site: &SiteId,
        now_micros: i64,
        top_limit: usize,
        include_bots: bool,
    ) -> Result<v1::RealtimeReport, StorageError> {
        let site = self.site(site);
        let mut window = site.window();
        window.roll(now_micros.div_euclid(MINUTE_MICROS));
        Ok(window.snapshot(now_micros, top_limit, include_bots))
    }

    fn subscribe(&self, site: &SiteId) -> Changes {
        self.site(site).changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000 * 1_000_000 / MINUTE_MICROS * MINUTE_MICROS;

    fn hit(minutes_ago: i64, visitor: u64, path: &str) -> Hit {
        Hit {
            ts_micros: T0 - minutes_ago * MINUTE_MICROS,
            visitor,
            bot: false,
            view: true,
            path: path.into(),
            source: "Direct".into(),
            country: "DE".into(),
            custom_name: String::new(),
        }
    }

    fn minute(report: &v1::RealtimeReport, minutes_ago: usize) -> (i64, i64, i64) {
        let m = &report.minutes[report.minutes.len() - 1 - minutes_ago];
        (m.pageviews, m.events, m.visitors)
    }

    #[test]
    fn events_land_in_the_minute_of_their_timestamp() {
        let mut window = Window::default();
        let hits = [
            hit(0, 1, "/"),
            hit(0, 1, "/a"),
            hit(3, 2, "/"),
            hit(29, 3, "/old"),
            hit(30, 4, "/too-old"),
            hit(-2, 5, "/future"),
        ];
        assert!(window.record(&hits, T0 + 1));
        let report = window.snapshot(T0 + 1, 10, false);
        assert_eq!(report.minutes.len(), 30);
        assert_eq!(report.minutes[29].minute, Some(micros_to_timestamp(T0)));
        assert_eq!(minute(&report, 0), (3, 3, 2), "the future event counts now");
        assert_eq!(minute(&report, 3), (1, 1, 1));
        assert_eq!(minute(&report, 29), (1, 1, 1));
        assert_eq!(report.active_visitors, 3);
        let pages: Vec<_> = report
            .top_pages
            .iter()
            .map(|t| (t.value.as_str(), t.visitors, t.pageviews))
            .collect();
        assert_eq!(pages, [("/", 2, 2), ("/a", 1, 1), ("/future", 1, 1)]);
        assert!(!window.record(&[hit(31, 6, "/")], T0), "too old: nothing changed");
    }

    #[test]
    fn the_window_moves_with_the_clock() {
        let mut window = Window::default();
        window.record(&[hit(0, 1, "/")], T0);
        let later = T0 + 5 * MINUTE_MICROS;
        let report = window.snapshot(later, 10, false);
        assert_eq!(minute(&report, 5), (1, 1, 1));
        assert_eq!(report.active_visitors, 0, "five minutes on, nobody is active");
        assert!(report.top_pages.is_empty());
        window.roll(T0 / MINUTE_MICROS + 30);
        let report = window.snapshot(T0 + 30 * MINUTE_MICROS, 10, false);
        assert!(report.minutes.iter().all(|m| m.events == 0));
    }

    #[test]
    fn bots_count_apart() {
        let mut window = Window::default();
        let bot = Hit {
            bot: true,
            ..hit(0, 9, "/robots")
        };
        window.record(&[hit(0, 1, "/"), bot], T0);
        let people = window.snapshot(T0, 10, false);
        let all = window.snapshot(T0, 10, true);
        assert_eq!((people.active_visitors, minute(&people, 0)), (1, (1, 1, 1)));
        assert_eq!((all.active_visitors, minute(&all, 0)), (2, (2, 2, 2)));
        assert_eq!(people.top_pages.len(), 1);
        assert_eq!(all.top_pages.len(), 2);
    }

    #[test]
    fn top_lists_rank_by_visitors_and_keep_the_limit() {
        let mut window = Window::default();
        let mut hits = Vec::new();
        for (path, visitors) in [("/a", 3u64), ("/b", 5), ("/c", 1), ("/d", 4)] {
            hits.extend((0..visitors).map(|v| hit(v as i64 % 5, v, path)));
        }
        hits.push(Hit {
            view: false,
            custom_name: "signup".into(),
            country: String::new(),
            ..hit(0, 1, "/b")
        });
        window.record(&hits, T0);
        let report = window.snapshot(T0, 2, false);
        let pages: Vec<_> = report
            .top_pages
            .iter()
            .map(|t| (t.value.as_str(), t.visitors))
            .collect();
        assert_eq!(pages, [("/b", 5), ("/d", 4)]);
        assert_eq!(report.top_pages[0].pageviews, 5);
        assert_eq!(report.top_pages[0].events, 6);
        assert_eq!(report.top_events.len(), 1);
        assert_eq!(
            (report.top_events[0].value.as_str(), report.top_events[0].events),
            ("signup", 1)
        );
        assert_eq!(report.top_countries[0].events, 13, "no country, not in the list");
    }

    #[test]
    fn values_beyond_the_cap_count_only_in_totals() {
        let mut window = Window::default();
        let hits: Vec<Hit> = (0..MAX_VALUES as u64 + 10)
            .map(|v| hit(0, v, &format!("/{v}")))
            .collect();
        window.record(&hits, T0);
        let report = window.snapshot(T0, 100, false);
        assert_eq!(minute(&report, 0).0, MAX_VALUES as i64 + 10);
        let Some(last) = window.bucket(T0 / MINUTE_MICROS) else {
            panic!("bucket")
        };
        assert_eq!(last.people.tops[0].len(), MAX_VALUES);
    }
}
