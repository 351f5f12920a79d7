//! The realtime core: what is happening on a site right now.
//!
//! Ingest hands every newly stored event to [`Realtime::record`] once the
//! store has made it durable (the moment the client gets its answer). A
//! [`RealtimeBackend`] keeps per-minute counters for the last
//! [`WINDOW_MINUTES`] minutes and what the "top" lists of the last
//! [`ACTIVE_MINUTES`] minutes need, and tells watchers that a site changed.
//! The in-memory backend ([`memory::MemoryRealtime`]) is the default; with
//! several instances, [`redis::RedisRealtime`] fans every instance's hits out
//! to the others over Redis pub/sub.
//!
//! Events are placed by their own timestamp: events older than the window
//! are ignored, and events stamped in the future (a client clock running
//! ahead; ingest accepts up to a day) count in the current minute, so that
//! they are visible now rather than when their time comes. Bots are counted
//! apart from people, so either answer is possible.

pub mod memory;
pub mod redis;
pub mod uniques;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tally_proto::v1;

pub use watch::{COALESCE_WINDOW, RealtimeUpdates};

use crate::domain::{EventKind, SiteId, SiteRecord, StoredEvent};
use crate::error::{Error, Result};
use crate::storage::{StorageError, Store};

/// Minutes of per-minute counters in a report.
pub const WINDOW_MINUTES: i64 = 30;
/// Minutes that make "active now" and the "top" lists: the current minute and
/// the four before it.
pub const ACTIVE_MINUTES: i64 = 5;
/// Microseconds in a minute.
pub const MINUTE_MICROS: i64 = 60_000_000;

const DEFAULT_TOP_LIMIT: i32 = 10;
const MAX_TOP_LIMIT: i32 = 100;
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
const MAX_HEARTBEAT: Duration = Duration::from_secs(60);

/// What a realtime view needs of one stored event (serializable: the Redis
/// backend sends hits to the other instances).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hit {
    /// Event timestamp, microseconds since the Unix epoch.
    pub ts_micros: i64,
    /// Visitor id.
    pub visitor: u64,
    /// Flagged as a bot.
    pub bot: bool,
    /// A page or screen view.
    pub view: bool,
    /// Page path or screen name; empty when none.
    pub path: String,
    /// Traffic source; empty when none.
    pub source: String,
    /// Country code; empty when unknown.
    pub country: String,
    /// Name of a custom event; empty for other kinds.
    pub custom_name: String,
}

impl Hit {
    /// The realtime part of `e`; `None` for events that reports do not count
    /// (identify events and unknown kinds).
    pub fn of(e: &StoredEvent) -> Option<Self> {
        let kind = e.event_kind().filter(|k| *k != EventKind::Identify)?;
        Some(Self {
            ts_micros: e.ts_micros,
            visitor: e.visitor,
            bot: e.bot,
            view: kind.is_view(),
            path: e.path.clone(),
            source: e.source.clone(),
            country: e.country.clone(),
            custom_name: match kind {
                EventKind::Custom => e.name.clone(),
                _ => String::new(),
            },
        })
    }
}

/// Change notifications of one site: the value goes up whenever the site's
/// counters change; a receiver only learns that something changed since it
/// last looked, so bursts coalesce by themselves.
pub type Changes = tokio::sync::watch::Receiver<u64>;

/// Where realtime counters live.
#[async_trait]
pub trait RealtimeBackend: Send + Sync + 'static {
    /// Counts events of `site` that were just stored; `now_micros` is the
    /// current time, which places the window.
    async fn record(&self, site: &SiteId, hits: &[Hit], now_micros: i64) -> Result<(), StorageError>;

    /// Counts events replayed from the store at start-up, in this instance
    /// only (the other instances counted them when they were ingested).
    async fn restore(&self, site: &SiteId, hits: &[Hit], now_micros: i64) -> Result<(), StorageError> {
        self.record(site, hits, now_micros).await
    }

    /// The site's realtime report at `now_micros`, with "top" lists of at most
    /// `top_limit` entries; bots count only with `include_bots`.
    async fn snapshot(
        &self,
        site: &SiteId,
        now_micros: i64,
        top_limit: usize,
        include_bots: bool,
    ) -> Result<v1::RealtimeReport, StorageError>;

    /// Notifications of changes to the site's counters from now on.
    fn subscribe(&self, site: &SiteId) -> Changes;
}

/// The current time, injectable so that tests control it.
pub trait Clock: Send + Sync + 'static {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> i64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        crate::domain::now_micros()
    }
}

/// A clock that moves only when told to (for tests).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// A clock standing at `micros`.
    pub fn at(micros: i64) -> Self {
        Self(micros.into())
    }

    /// Moves the clock to `micros`.
    pub fn set(&self, micros: i64) {
        self.0.store(micros, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The validated options of a report or a watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Length of each "top" list.
    pub top_limit: usize,
    /// Count bots.
    pub include_bots: bool,
}

impl View {
    /// Validates `top_limit` (0 means the default, 10).
    pub fn new(top_limit: i32, include_bots: bool) -> Result<Self> {
        let top_limit = match top_limit {
            0 => DEFAULT_TOP_LIMIT,
            n if (1..=MAX_TOP_LIMIT).contains(&n) => n,
            n => {
                return Err(Error::invalid(
                    "top_limit",
                    format!(
                        "top_limit {n} is out of range: use 1-{MAX_TOP_LIMIT} (0 means {DEFAULT_TOP_LIMIT})"
                    ),
                ));
            }
        };
        Ok(Self {
            top_limit: top_limit as usize,
            include_bots,
        })
    }
}

/// Validates a heartbeat interval (`None` means the default, 15 s).
pub fn heartbeat_interval(raw: Option<&prost_types::Duration>) -> Result<Duration> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_HEARTBEAT);
    };
    let interval = Duration::try_from(*raw)
        .ok()
        .filter(|d| (MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(d));
    interval.ok_or_else(|| {
        Error::invalid(
            "heartbeat_interval",
            format!(
                "heartbeat_interval must be {}-{} s",
                MIN_HEARTBEAT.as_secs(),
                MAX_HEARTBEAT.as_secs()
            ),
        )
    })
}

/// Answers realtime reports and watches.
pub struct Realtime {
    backend: Arc<dyn RealtimeBackend>,
    clock: Arc<dyn Clock>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl Realtime {
    /// A realtime core over `backend`, reading time from `clock`.
    pub fn new(backend: Arc<dyn RealtimeBackend>, clock: Arc<dyn Clock>) -> Self {
        Self {
            backend,
            clock,
            closed: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The default: in memory, on the system clock.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(memory::MemoryRealtime::default()), Arc::new(SystemClock))
    }

    /// Counts events of `site` that were just stored (see [`Hit::of`]). A
    /// failure is logged and does not fail the ingest: the events are stored
    /// and reports see them.
    pub async fn record(&self, site: &SiteId, hits: impl IntoIterator<Item = Hit>) {
        let hits: Vec<Hit> = hits.into_iter().collect();
        if hits.is_empty() {
            return;
        }
        let now = self.clock.now_micros();
        if let Err(error) = self.backend.record(site, &hits, now).await {
            tracing::warn!(site = %site, %error, events = hits.len(), "realtime record failed");
        }
    }

    /// Refills the window from the stored events of every site, so that a
    /// restart does not blank the realtime view. Call it before serving
    /// ingest, or events stored meanwhile could count twice. Returns the
    /// number of events counted.
    pub async fn rebuild(&self, store: &dyn Store) -> Result<u64, StorageError> {
        let now = self.clock.now_micros();
        let from = (now.div_euclid(MINUTE_MICROS) - WINDOW_MINUTES + 1) * MINUTE_MICROS;
        let mut counted = 0;
        for site in store.list_sites().await? {
            let Ok(id) = SiteId::parse(&site.site_id) else {
                continue;
            };
            // Future timestamps count in the current minute: scan them too.
            let mut chunks = store.scan(&id, from, i64::MAX);
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                let hits: Vec<Hit> = chunk.iter().filter_map(Hit::of).collect();
                counted += hits.len() as u64;
                self.backend.restore(&id, &hits, now).await?;
            }
        }
        Ok(counted)
    }

    /// The realtime report of `site` (already authorised).
    pub async fn report(&self, site: &SiteRecord, view: View) -> Result<v1::RealtimeReport> {
        let id = SiteId::parse(&site.site_id)?;
        self.snapshot(&id, view).await
    }

    async fn snapshot(&self, site: &SiteId, view: View) -> Result<v1::RealtimeReport> {
        let now = self.clock.now_micros();
        Ok(self
            .backend
            .snapshot(site, now, view.top_limit, view.include_bots)
            .await?)
    }

    /// A stream of updates for `site` (already authorised): a snapshot first,
    /// then a snapshot after changes (at most one per [`COALESCE_WINDOW`]),
    /// and a heartbeat every `heartbeat` without change. It ends when the
    /// caller drops it, and with `Unavailable` once [`Realtime::close`] is called.
    pub fn watch(
        self: &Arc<Self>,
        site: &SiteRecord,
        view: View,
        heartbeat: Duration,
    ) -> Result<RealtimeUpdates> {
        let id = SiteId::parse(&site.site_id)?;
        Ok(watch::updates(self.clone(), id, view, heartbeat))
    }

    /// Ends every watch (server shutdown), now and for watches opened later.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    fn now_micros(&self) -> i64 {
        self.clock.now_micros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_limit_defaults_to_ten_and_stays_within_1_to_100() {
        for (raw, expected) in [
            (0, Some(10)),
            (1, Some(1)),
            (100, Some(100)),
            (101, None),
            (-1, None),
        ] {
            assert_eq!(View::new(raw, false).ok().map(|v| v.top_limit), expected, "{raw}");
        }
    }

    #[test]
    fn heartbeat_interval_defaults_to_15_s_and_stays_within_1_to_60_s() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        let cases = [
            (None, Some(15)),
            (Some(d(1, 0)), Some(1)),
            (Some(d(60, 0)), Some(60)),
            (Some(d(0, 999_999_999)), None),
            (Some(d(60, 1)), None),
            (Some(d(-5, 0)), None),
        ];
        for (raw, expected) in cases {
            let got = heartbeat_interval(raw.as_ref()).ok().map(|d| d.as_secs());
            assert_eq!(got, expected, "{raw:?}");
        }
    }
}
