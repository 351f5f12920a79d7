//! The report cache: finished answers keyed by the normalized request.
//!
//! The key is a hash of the site, the request as sent (without `skip_cache`)
//! and the instants its date ranges resolved to, so "last 30 days" asked
//! tomorrow is a different question. Answers over ranges that are still
//! running (they include today) live [`LIVE_TTL`]; answers about the past
//! live [`PAST_TTL`]. The key also holds the site's write generation, so an
//! answer is never served once events it should count were stored on this
//! instance; the TTLs bound staleness from writes on other instances.

use std::time::{Duration, Instant};

use prost::Message;
use quick_cache::sync::Cache;
use tally_proto::v1;

use super::plan::Plan;
use crate::domain::SiteRecord;

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

    /// Forgets every answer (after data was erased, for one).
    pub fn clear(&self) {
        self.entries.clear();
    }
}
