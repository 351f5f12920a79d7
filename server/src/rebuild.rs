//! `tally rebuild`: recomputes from the raw events what a backend derives
//! from them, after that state was lost (Redis restarted without its data)
//! or doubted. Idempotent: running it twice leaves the same state, and it is
//! safe next to running instances (see [`rebuild_shared`] for the one
//! exception).
//!
//! - ScyllaDB + Redis: every hour rollup (under fresh tokens), the event ids
//!   of the dedup window (so that a retry is a duplicate again), the
//!   realtime counters of the last 30 minutes, and the write generations
//!   (cached answers are dropped).
//! - Embedded: its rollups live in memory and are rebuilt by every start;
//!   `rebuild` scans every event as the start does, which checks that
//!   every stored event can be read, and reports what it found.

use futures::StreamExt;

use crate::domain::{SiteId, SiteRecord, now_micros};
use crate::realtime::redis::RedisRealtime;
use crate::realtime::{Hit, MINUTE_MICROS, WINDOW_MINUTES};
use crate::rollup::{HOUR_MICROS, Rollups};
use crate::storage::scylla::ScyllaStore;
use crate::storage::{EventStore, StorageError, Store};

/// What a rebuild did for one site.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteRebuilt {
    /// The site.
    pub site: String,
    /// Hours rolled up.
    pub hours: u64,
    /// Events in them.
    pub events: u64,
    /// Event ids remembered as stored again (the dedup window).
    pub ids: u64,
    /// Events of the realtime window counted again.
    pub realtime: u64,
}

/// The sites named in `only` (all when empty); an unknown name is an error.
pub async fn sites(store: &dyn Store, only: &[String]) -> Result<Vec<SiteRecord>, StorageError> {
    let all = store.list_sites().await?;
    for name in only {
        if !all.iter().any(|s| s.site_id == *name) {
            return Err(StorageError::UnknownSite(name.clone()));
        }
    }
    Ok(all
        .into_iter()
        .filter(|s| only.is_empty() || only.contains(&s.site_id))
        .collect())
}

/// Rebuilds the shared state of `sites` on the scale-out backend, telling
/// `progress` how far it got. Everything it writes is a function of the raw
/// events, so instances may keep ingesting meanwhile, except for the
/// realtime counters: those are replaced by a recount of the stored events,
/// and events counted by instances while the recount runs are lost from the
/// realtime view until they leave its 30-minute window.
pub async fn rebuild_shared(
    store: &ScyllaStore,
    realtime: &RedisRealtime,
    rollups: &Rollups,
    sites: &[SiteRecord],
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<SiteRebuilt>, StorageError> {
    let shared = store
        .shared_rollups()
        .ok_or_else(|| StorageError::Io("the scale-out store keeps no hour rollups".into()))?;
    let mut done = Vec::new();
    for site in sites {
        let id = SiteId::parse(&site.site_id).map_err(|_| StorageError::UnknownSite(site.site_id.clone()))?;
        let mut rebuilt = SiteRebuilt {
            site: site.site_id.clone(),
            ..Default::default()
        };
        let hours = shared
            .event_hours(&id, i64::MIN / HOUR_MICROS, i64::MAX / HOUR_MICROS)
            .await?;
        progress(&format!(
            "site {}: rolling up {} hours",
            site.site_id,
            hours.len()
        ));
        for (i, hour) in hours.iter().enumerate() {
            rebuilt.events += rollups.shared().refresh(store, shared, site, *hour, true).await?;
            rebuilt.hours += 1;
            if (i + 1) % 100 == 0 || i + 1 == hours.len() {
                progress(&format!(
                    "site {}: {}/{} hours, {} events",
                    site.site_id,
                    i + 1,
                    hours.len(),
                    rebuilt.events
                ));
            }
        }
        let now = now_micros();
        let mut chunks = store.scan(&id, now - store.dedup_window_micros(), i64::MAX);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            store.remember_stored(&id, &chunk).await?;
            rebuilt.ids += chunk.len() as u64;
        }
        progress(&format!(
            "site {}: {} event ids of the dedup window remembered",
            site.site_id, rebuilt.ids
        ));
        let now = now_micros();
        let from = (now.div_euclid(MINUTE_MICROS) - WINDOW_MINUTES + 1) * MINUTE_MICROS;
        let mut hits = Vec::new();
        let mut chunks = store.scan(&id, from, i64::MAX);
        while let Some(chunk) = chunks.next().await {
            hits.extend(chunk?.iter().filter_map(Hit::of));
        }
        realtime.recount(&id, &hits, now).await?;
        rebuilt.realtime = hits.len() as u64;
        crate::storage::SharedCache::bump_generations(store, &id).await?;
        progress(&format!(
            "site {}: realtime counters recounted from {} events; cached reports dropped",
            site.site_id, rebuilt.realtime
        ));
        done.push(rebuilt);
    }
    Ok(done)
}

/// Rebuilds the in-memory rollups of `sites` on the embedded store (what
/// every start does), telling `progress` what it read.
pub async fn rebuild_embedded(
    store: &dyn Store,
    sites: &[SiteRecord],
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Vec<SiteRebuilt>, StorageError> {
    let rollups = Rollups::new(true);
    let mut done = Vec::new();
    for site in sites {
        rollups.rebuild_site(store, site).await?;
        let (hours, events) = rollups
            .read(&site.site_id, |r| {
                (
                    r.hours.len() as u64,
                    r.hours.values().map(|c| c.events).sum::<u64>(),
                )
            })
            .unwrap_or_default();
        progress(&format!(
            "site {}: {hours} hours, {events} events counted in reports read and rolled up",
            site.site_id
        ));
        done.push(SiteRebuilt {
            site: site.site_id.clone(),
            hours,
            events,
            ..Default::default()
        });
    }
    Ok(done)
}
