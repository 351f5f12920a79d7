//! The report cache: finished answers keyed by the normalized request.
//!
//! The key is a hash of the site, the request as sent (without `skip_cache`)
//! and the instants its date ranges resolved to, so "last 30 days" asked
//! tomorrow is a different question. Answers over ranges that are still
//! running (they include today) live [`LIVE_TTL`]; answers about the past
//! live [`PAST_TTL`]. The key also holds the site's write generation, so an
//! answer is never served once events it should count were stored.
//!
//! On the embedded store the answers and generations live in this process.
//! On a store shared by several instances both live in Redis (see
//! [`SharedCache`]): every append on any instance bumps the site's
//! generations before it is acknowledged, so an answer cached by one
//! instance is never served after an event it should count was
//! acknowledged by another; the TTLs only bound memory.

use std::time::{Duration, Instant};

use prost::Message;
use quick_cache::sync::Cache;
use tally_proto::v1;

use super::plan::Plan;
use crate::domain::SiteRecord;
use crate::storage::SharedCache;

/// How long an answer over a range that includes now is served.
pub const LIVE_TTL: Duration = Duration::from_secs(10);
/// How long an answer about the past is served.
pub const PAST_TTL: Duration = Duration::from_secs(300);
/// Answers kept.
const CAPACITY: usize = 2_000;

#[derive(Clone)]
struct Entry {
    response: v1::RunReportResponse,
    stored: Instant,
    ttl: Duration,
}

/// A bounded in-process cache of report answers.
pub struct ReportCache {
    entries: Cache<[u8; 32], Entry>,
}

impl Default for ReportCache {
    fn default() -> Self {
        Self {
            entries: Cache::new(CAPACITY),
        }
    }
}

impl ReportCache {
    /// The cache key of a planned request.
    ///
    /// `generations` are the site's write generations (every write, late
    /// writes; see [`crate::rollup::Rollups::generations`]): an answer about
    /// ranges that ended before late writes begin depends only on the
    /// second, any other on the first.
    pub fn key(
        site: &SiteRecord,
        req: &v1::RunReportRequest,
        plan: &Plan,
        generations: (u64, u64),
        now_micros: i64,
    ) -> [u8; 32] {
        let mut normalized = req.clone();
        normalized.skip_cache = false;
        let mut hasher = blake3::Hasher::new();
        hasher.update(site.site_id.as_bytes());
        hasher.update(&[0]);
        hasher.update(site.time_zone.as_bytes());
        hasher.update(&[0]);
        hasher.update(&normalized.encode_to_vec());
        let settled = plan.span().1 <= now_micros - crate::rollup::LATE_MICROS;
        let generation = if settled { generations.1 } else { generations.0 };
        hasher.update(&[u8::from(settled)]);
        hasher.update(&generation.to_le_bytes());
        for r in plan.all_ranges() {
            hasher.update(&r.start_micros.to_le_bytes());
            hasher.update(&r.end_micros.to_le_bytes());
        }
        *hasher.finalize().as_bytes()
    }

    /// A fresh cached answer and its age.
    pub fn get(&self, key: &[u8; 32]) -> Option<(v1::RunReportResponse, Duration)> {
        let entry = self.entries.get(key)?;
        let age = entry.stored.elapsed();
        if age > entry.ttl {
            self.entries.remove(key);
            return None;
        }
        Some((entry.response, age))
    }

    /// Stores an answer; `live` when a range includes now.
    pub fn put(&self, key: [u8; 32], response: v1::RunReportResponse, live: bool) {
        let ttl = if live { LIVE_TTL } else { PAST_TTL };
        self.entries.insert(
            key,
            Entry {
                response,
                stored: Instant::now(),
                ttl,
            },
        );
    }

    /// A fresh cached answer and its age: from `shared` (the cache of every
    /// instance of a shared store) when given, else from this process.
    pub async fn get_from(
        &self,
        shared: Option<&dyn SharedCache>,
        key: &[u8; 32],
        now_micros: i64,
    ) -> Option<(v1::RunReportResponse, Duration)> {
        let Some(shared) = shared else {
            return self.get(key);
        };
        let raw = match shared.cached(key).await {
            Ok(raw) => raw?,
            Err(error) => {
                tracing::warn!(%error, "shared report cache unreadable");
                return None;
            }
        };
        let (stored, body) = raw.split_at_checked(8)?;
        let stored = i64::from_le_bytes(stored.try_into().ok()?);
        let response = v1::RunReportResponse::decode(body).ok()?;
        let age = Duration::from_micros(now_micros.saturating_sub(stored).max(0) as u64);
        Some((response, age))
    }

    /// Stores an answer (see [`ReportCache::get_from`]); `live` when a range
    /// includes now. A shared cache that fails is only logged.
    pub async fn put_to(
        &self,
        shared: Option<&dyn SharedCache>,
        key: [u8; 32],
        response: v1::RunReportResponse,
        live: bool,
        now_micros: i64,
    ) {
        let Some(shared) = shared else {
            self.put(key, response, live);
            return;
        };
        let ttl = if live { LIVE_TTL } else { PAST_TTL };
        let mut value = now_micros.to_le_bytes().to_vec();
        response.encode(&mut value).expect("a Vec grows");
        if let Err(error) = shared.cache(&key, &value, ttl).await {
            tracing::warn!(%error, "report not cached");
        }
    }

    /// Forgets every answer (after data was erased, for one).
    pub fn clear(&self) {
        self.entries.clear();
    }
}
