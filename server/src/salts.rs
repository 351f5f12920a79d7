//! Salts of the cookieless visitor id: random, kept by the server (in the
//! store, so that every instance of a deployment uses the same one), never
//! exposed, and deleted once their period is over: after a day (or week) has
//! passed, nobody can recompute that period's visitor ids from an IP address
//! and a user agent, not even the operator.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::domain::{SaltPolicy, SiteRecord};
use crate::error::Result;
use crate::storage::Store;

const DAY_MICROS: i64 = 86_400_000_000;

/// A salt period: the policy's name and the period's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Period {
    kind: &'static str,
    number: i64,
}

impl Period {
    /// The period of `policy` that contains `now_micros` (UTC).
    fn of(policy: i32, now_micros: i64) -> Self {
        let day = now_micros.div_euclid(DAY_MICROS);
        match policy {
            p if p == SaltPolicy::Fixed as i32 => Self {
                kind: "fixed",
                number: 0,
            },
            // Day 4 of the Unix epoch (1970-01-05) is a Monday.
            p if p == SaltPolicy::Weekly as i32 => Self {
                kind: "weekly",
                number: (day - 4).div_euclid(7),
            },
            _ => Self {
                kind: "daily",
                number: day,
            },
        }
    }

    /// Whether a stored salt ("daily/20423", without the site) is over, now
    /// that this period has begun: it belongs to another policy, or to a
    /// period before the previous one. Later periods (another instance's
    /// clock being ahead) are kept.
    fn expires(self, stored: &str) -> bool {
        match stored.split_once('/') {
            Some((kind, number)) if kind == self.kind => {
                number.parse::<i64>().map_or(true, |n| n < self.number - 1)
            }
            _ => true,
        }
    }

    fn name(self, site: &str) -> String {
        format!("{site}/{}/{}", self.kind, self.number)
    }
}

/// The current salt of every site, cached; the store holds the truth.
pub struct Salts {
    store: Arc<dyn Store>,
    current: RwLock<HashMap<String, (Period, [u8; 32])>>,
}

impl Salts {
    /// Salts kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            current: RwLock::new(HashMap::new()),
        }
    }

    /// The salt of `site` for the period containing `now_micros`. On the first
    /// use of a period it is created, and the site's salts older than the
    /// previous period, or of another policy, are deleted (the previous one
    /// stays, so that instances whose clocks straddle the boundary agree).
    pub async fn current(&self, site: &SiteRecord, now_micros: i64) -> Result<[u8; 32]> {
        let period = Period::of(site.salt_policy, now_micros);
        if let Some((cached, salt)) = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&site.site_id)
            && *cached == period
        {
            return Ok(*salt);
        }
        let name = period.name(&site.site_id);
        let salt = self.store.salt(&name).await?;
        let prefix = format!("{}/", site.site_id);
        let expired: Vec<String> = self
            .store
            .salt_names(&prefix)
            .await?
            .into_iter()
            .filter(|stored| period.expires(&stored[prefix.len()..]))
            .collect();
        if !expired.is_empty() {
            self.store.drop_salts(&expired).await?;
        }
        self.current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(site.site_id.clone(), (period, salt));
        Ok(salt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_follow_the_policy() {
        // Day 20,423 (2025-12-01) is a Monday.
        let monday = 20_423 * DAY_MICROS;
        let sunday = monday - 1;
        let daily = SaltPolicy::Daily as i32;
        let weekly = SaltPolicy::Weekly as i32;
        assert_eq!(Period::of(daily, monday).number, 20_423);
        assert_eq!(Period::of(daily, sunday).number, 20_422);
        assert_eq!(
            Period::of(weekly, monday).number,
            Period::of(weekly, monday + 6 * DAY_MICROS).number
        );
        assert_eq!(
            Period::of(weekly, sunday).number + 1,
            Period::of(weekly, monday).number
        );
        assert_eq!(
            Period::of(SaltPolicy::Fixed as i32, monday),
            Period::of(SaltPolicy::Fixed as i32, 0)
        );
        assert_eq!(Period::of(0, monday).kind, "daily");
    }

    #[tokio::test]
    async fn salts_rotate_and_old_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::storage::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let site = SiteRecord {
            site_id: "s".into(),
            salt_policy: SaltPolicy::Daily as i32,
            ..Default::default()
        };
        let salts = Salts::new(store.clone());
        let day = |n: i64| n * DAY_MICROS + 3_600_000_000;
        let first = salts.current(&site, day(100)).await.unwrap();
        assert_eq!(salts.current(&site, day(100) + 1).await.unwrap(), first);
        let second = salts.current(&site, day(101)).await.unwrap();
        assert_ne!(first, second, "a new day, a new salt");
        // Another instance over the same store agrees, even a day behind.
        let other = Salts::new(store.clone());
        assert_eq!(other.current(&site, day(101)).await.unwrap(), second);
        assert_eq!(other.current(&site, day(100)).await.unwrap(), first);
        // Two days on, day 100's salt is deleted: it cannot be had again.
        salts.current(&site, day(102)).await.unwrap();
        assert_ne!(store.salt("s/daily/100").await.unwrap(), first);
        assert_eq!(store.salt("s/daily/101").await.unwrap(), second);
        // A fixed salt outlives the days.
        let fixed = SiteRecord {
            salt_policy: SaltPolicy::Fixed as i32,
            ..site
        };
        let kept = salts.current(&fixed, day(103)).await.unwrap();
        assert_eq!(salts.current(&fixed, day(900)).await.unwrap(), kept);
    }
}
