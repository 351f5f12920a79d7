//! The update stream of a realtime watch: a snapshot first, then coalesced
//! snapshots on change and heartbeats in between.
//!
//! Timing uses tokio time (tests pause and advance it); the snapshots' own
//! clock is the core's [`super::Clock`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tally_proto::v1::{self, realtime_update::Update};
use tokio::time::{Instant, sleep_until};

use super::{Changes, Realtime, View};
use crate::convert::micros_to_timestamp;
use crate::domain::SiteId;
use crate::error::{Error, Result};

/// Snapshots of one watch are at least this far apart (at most four a
/// second): a burst of ingest batches becomes one snapshot, and the first
/// change after a quiet spell still goes out at once.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(250);

/// The updates of one watch.
pub type RealtimeUpdates = Pin<Box<dyn Stream<Item = Result<v1::RealtimeUpdate>> + Send>>;

struct Watch {
    realtime: Arc<Realtime>,
    site: SiteId,
    view: View,
    heartbeat: Duration,
    changes: Changes,
    closed: tokio::sync::watch::Receiver<bool>,
    /// The last snapshot sent, without its `as_of`, to tell whether anything changed.
    last: Option<v1::RealtimeReport>,
    last_sent_at: Instant,
    next_heartbeat: Instant,
    done: bool,
}

pub(super) fn updates(
    realtime: Arc<Realtime>,
    site: SiteId,
    view: View,
    heartbeat: Duration,
) -> RealtimeUpdates {
    // Subscribe before the first snapshot, so no change falls in between.
    let changes = realtime.backend.subscribe(&site);
    let closed = realtime.closed.subscribe();
    let now = Instant::now();
    let watch = Watch {
        realtime,
        site,
        view,
        heartbeat,
        changes,
        closed,
        last: None,
        last_sent_at: now,
        next_heartbeat: now + heartbeat,
        done: false,
    };
    Box::pin(futures::stream::unfold(watch, |mut watch| async move {
        let update = watch.next().await?;
        Some((update, watch))
    }))
}

/// What woke a waiting watch.
enum Wake {
    Closed,
    Changed,
    Heartbeat,
}

fn shutting_down() -> Error {
    Error::Unavailable {
        message: "the server is shutting down; watch again".into(),
        retry_after: Duration::from_secs(1),
    }
}

impl Watch {
    async fn next(&mut self) -> Option<Result<v1::RealtimeUpdate>> {
        if self.done {
            return None;
        }
        let update = self.step().await;
        if update.is_err() {
            self.done = true;
        }
        Some(update)
    }

    async fn step(&mut self) -> Result<v1::RealtimeUpdate> {
        if self.last.is_none() {
            return self.snapshot().await;
        }
        let wake = tokio::select! {
            biased;
            _ = self.closed.wait_for(|closed| *closed) => Wake::Closed,
            changed = self.changes.changed() => match changed {
                Ok(()) => Wake::Changed,
                // The backend dropped the site: nothing more will come.
                Err(_) => Wake::Closed,
            },
            () = sleep_until(self.next_heartbeat) => Wake::Heartbeat,
        };
        match wake {
            Wake::Closed => Err(shutting_down()),
            Wake::Heartbeat => self.heartbeat().await,
            Wake::Changed => {
                let closed = tokio::select! {
                    biased;
                    _ = self.closed.wait_for(|closed| *closed) => true,
                    () = sleep_until(self.last_sent_at + COALESCE_WINDOW) => false,
                };
                if closed {
                    return Err(shutting_down());
                }
                // Changes that came while waiting are in this snapshot.
                self.changes.borrow_and_update();
                self.snapshot().await
            }
        }
    }

    async fn snapshot(&mut self) -> Result<v1::RealtimeUpdate> {
        let report = self.realtime.snapshot(&self.site, self.view).await?;
        Ok(self.send(report))
    }

    /// A heartbeat, unless time alone changed the view (minutes rolled out of
    /// the window): then the new snapshot.
    async fn heartbeat(&mut self) -> Result<v1::RealtimeUpdate> {
        let report = self.realtime.snapshot(&self.site, self.view).await?;
        let unchanged = self.last.as_ref().is_some_and(|last| same_counts(last, &report));
        if !unchanged {
            return Ok(self.send(report));
        }
        self.next_heartbeat = Instant::now() + self.heartbeat;
        let at = micros_to_timestamp(self.realtime.now_micros());
        Ok(v1::RealtimeUpdate {
            update: Some(Update::Heartbeat(at)),
        })
    }

    fn send(&mut self, report: v1::RealtimeReport) -> v1::RealtimeUpdate {
        let now = Instant::now();
        self.last_sent_at = now;
        self.next_heartbeat = now + self.heartbeat;
        self.last = Some(report.clone());
        v1::RealtimeUpdate {
            update: Some(Update::Snapshot(report)),
        }
    }
}

/// Equal but for the time they were taken; minutes compare by count only, so
/// a window that moved over empty minutes is unchanged.
fn same_counts(a: &v1::RealtimeReport, b: &v1::RealtimeReport) -> bool {
    let counts = |r: &v1::RealtimeReport| {
        r.minutes
            .iter()
            .map(|m| (m.pageviews, m.events, m.visitors))
            .collect::<Vec<_>>()
    };
    a.active_visitors == b.active_visitors
        && a.top_pages == b.top_pages
        && a.top_sources == b.top_sources
        && a.top_countries == b.top_countries
        && a.top_events == b.top_events
        && counts(a) == counts(b)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::super::{Clock, Hit, MINUTE_MICROS, ManualClock, memory::MemoryRealtime};
    use super::*;

    const T0: i64 = 1_700_000_000 * 1_000_000;

    struct Fixture {
        realtime: Arc<Realtime>,
        clock: Arc<ManualClock>,
        site: SiteId,
    }

    impl Fixture {
        fn new() -> Self {
            let clock = Arc::new(ManualClock::at(T0));
            let realtime = Realtime::new(Arc::new(MemoryRealtime::default()), clock.clone());
            Self {
                realtime: Arc::new(realtime),
                clock,
                site: SiteId::parse("s").unwrap(),
            }
        }

        fn watch(&self, heartbeat: Duration) -> RealtimeUpdates {
            let view = View::new(0, false).unwrap();
            updates(self.realtime.clone(), self.site.clone(), view, heartbeat)
        }

        async fn pageview(&self, visitor: u64) {
            let hit = pageview(self.clock.now_micros(), visitor);
            self.realtime.record(&self.site, [hit]).await;
        }
    }

    fn pageview(ts_micros: i64, visitor: u64) -> Hit {
        Hit {
            ts_micros,
            visitor,
            bot: false,
            view: true,
            path: format!("/{visitor}"),
            source: String::new(),
            country: String::new(),
            custom_name: String::new(),
        }
    }

    async fn next(updates: &mut RealtimeUpdates) -> Update {
        updates.next().await.unwrap().unwrap().update.unwrap()
    }

    fn pageviews(update: &Update) -> i64 {
        let Update::Snapshot(report) = update else {
            panic!("expected a snapshot, got {update:?}")
        };
        report.minutes.iter().map(|m| m.pageviews).sum()
    }

    /// Polls `updates` while tokio time (paused) advances by `by`; `None` if nothing came.
    async fn within(updates: &mut RealtimeUpdates, by: Duration) -> Option<Update> {
        tokio::time::timeout(by, updates.next())
            .await
            .ok()
            .map(|u| u.unwrap().unwrap().update.unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn first_a_snapshot_then_changes_coalesced() {
        let f = Fixture::new();
        let mut updates = f.watch(Duration::from_secs(15));
        assert_eq!(pageviews(&next(&mut updates).await), 0);
        let started = Instant::now();
        for visitor in 0..10 {
            f.pageview(visitor).await;
        }
        // Ten events in a burst: one snapshot, one coalescing window after the first.
        let update = next(&mut updates).await;
        assert_eq!(pageviews(&update), 10);
        assert_eq!(started.elapsed(), COALESCE_WINDOW);
        // A change after a quiet spell goes out at once.
        tokio::time::advance(Duration::from_secs(2)).await;
        let quiet = Instant::now();
        f.pageview(11).await;
        assert_eq!(pageviews(&next(&mut updates).await), 11);
        assert_eq!(quiet.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_four_snapshots_a_second_under_steady_ingest() {
        let f = Fixture::new();
        let mut updates = f.watch(Duration::from_secs(15));
        next(&mut updates).await;
        let feeder = {
            let realtime = f.realtime.clone();
            let site = f.site.clone();
            tokio::spawn(async move {
                for visitor in 0..1000u64 {
                    realtime.record(&site, [pageview(T0, visitor)]).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let started = Instant::now();
        let mut snapshots = 0;
        while started.elapsed() < Duration::from_secs(5) {
            if let Some(Update::Snapshot(_)) = within(&mut updates, Duration::from_secs(1)).await {
                snapshots += 1;
            }
        }
        assert!((19..=21).contains(&snapshots), "{snapshots} snapshots in 5 s");
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_when_nothing_changes() {
        let f = Fixture::new();
        let mut updates = f.watch(Duration::from_secs(15));
        next(&mut updates).await;
        assert_eq!(within(&mut updates, Duration::from_secs(14)).await, None);
        let beat = within(&mut updates, Duration::from_secs(2)).await;
        assert_eq!(beat, Some(Update::Heartbeat(micros_to_timestamp(T0))));
        // A snapshot postpones the next heartbeat.
        tokio::time::advance(Duration::from_secs(10)).await;
        f.pageview(1).await;
        assert_eq!(pageviews(&next(&mut updates).await), 1);
        assert_eq!(within(&mut updates, Duration::from_secs(14)).await, None);
        assert!(matches!(
            within(&mut updates, Duration::from_secs(2)).await,
            Some(Update::Heartbeat(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_moved_window_is_a_snapshot_not_a_heartbeat() {
        let f = Fixture::new();
        f.pageview(1).await;
        let mut updates = f.watch(Duration::from_secs(15));
        assert_eq!(pageviews(&next(&mut updates).await), 1);
        f.clock.set(T0 + MINUTE_MICROS);
        let update = within(&mut updates, Duration::from_secs(16)).await.unwrap();
        assert_eq!(pageviews(&update), 1, "the same events, one minute further back");
        f.clock.set(T0 + 31 * MINUTE_MICROS);
        let update = within(&mut updates, Duration::from_secs(16)).await.unwrap();
        assert_eq!(pageviews(&update), 0, "out of the window");
        let update = within(&mut updates, Duration::from_secs(16)).await.unwrap();
        assert!(matches!(update, Update::Heartbeat(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn close_ends_every_watch_with_unavailable() {
        let f = Fixture::new();
        let mut updates = f.watch(Duration::from_secs(15));
        next(&mut updates).await;
        f.realtime.close();
        let Some(Err(Error::Unavailable { .. })) = updates.next().await else {
            panic!("expected unavailable")
        };
        assert!(updates.next().await.is_none());
        let mut later = f.watch(Duration::from_secs(15));
        next(&mut later).await;
        assert!(matches!(later.next().await, Some(Err(Error::Unavailable { .. }))));
    }
}
