//! What the instances of a deployment share besides raw events: rollups per
//! (site, UTC hour) in Cassandra, and in Redis the hours' tokens, the dirty
//! hours, the sites' write generations and cached report answers.
//!
//! Redis keys, under the deployment prefix:
//! - `ht:<site>`: hash, hour -> token (a random u64, renewed by every append
//!   that stores events of the hour);
//! - `hd:<site>`: set of hours changed since a worker last rolled them up;
//! - `g:<site>`, `gl:<site>`: write generations (every write, late writes);
//! - `q:<hex>`: a cached report answer, with a time to live.
//!
//! [`Marks::touch`] adds the commands of one append to the pipeline that also
//! marks its event ids stored: no extra round trip per append.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;

use super::{BUCKET_MICROS, MAX_TTL_SECS, ScyllaStore, cql_error, redis_error};
use crate::domain::SiteId;
use crate::rollup::LATE_MICROS;
use crate::storage::{SharedCache, SharedRollupStore, StorageError};

/// Key names of the shared marks.
pub struct Marks {
    prefix: String,
}

impl Marks {
    /// Marks under `prefix` (the deployment's key prefix).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn tokens(&self, site: &str) -> String {
        format!("{}ht:{site}", self.prefix)
    }

    fn dirty(&self, site: &str) -> String {
        format!("{}hd:{site}", self.prefix)
    }

    fn generation(&self, site: &str) -> String {
        format!("{}g:{site}", self.prefix)
    }

    fn late_generation(&self, site: &str) -> String {
        format!("{}gl:{site}", self.prefix)
    }

    fn cached(&self, key: &[u8]) -> String {
        let mut name = format!("{}q:", self.prefix);
        for byte in key {
            name.push_str(&format!("{byte:02x}"));
        }
        name
    }

    /// Adds to `pipe` the marks of newly stored events of `site` with
    /// timestamps `ts`: fresh tokens for their hours, the hours dirty, the
    /// write generation bumped (and the late one, for events older than
    /// [`LATE_MICROS`] at `now`).
    pub fn touch(&self, pipe: &mut redis::Pipeline, site: &str, ts: impl Iterator<Item = i64>, now: i64) {
        let mut hours = BTreeSet::new();
        let mut late = false;
        for ts in ts {
            hours.insert(ts.div_euclid(BUCKET_MICROS));
            late |= ts < now - LATE_MICROS;
        }
        if hours.is_empty() {
            return;
        }
        self.renew(pipe, site, &hours.into_iter().collect::<Vec<_>>());
        pipe.cmd("INCR").arg(self.generation(site)).ignore();
        if late {
            pipe.cmd("INCR").arg(self.late_generation(site)).ignore();
        }
    }

    /// Adds to `pipe`: fresh tokens for `hours`, and the hours dirty.
    fn renew(&self, pipe: &mut redis::Pipeline, site: &str, hours: &[i64]) {
        let tokens = self.tokens(site);
        let dirty = self.dirty(site);
        let hset = pipe.cmd("HSET").arg(&tokens);
        for hour in hours {
            hset.arg(hour).arg(rand::random::<u64>());
        }
        hset.ignore();
        pipe.cmd("SADD").arg(&dirty).arg(hours).ignore();
    }
}

impl ScyllaStore {
    /// Marks the hours of erased or expired events changed, and bumps both
    /// write generations: rollups of those hours and cached answers are
    /// stale.
    pub(super) async fn touch_hours(&self, site: &SiteId, hours: &[i64]) -> Result<(), StorageError> {
        let mut pipe = redis::pipe();
        if !hours.is_empty() {
            self.marks.renew(&mut pipe, site.as_str(), hours);
        }
        pipe.cmd("INCR")
            .arg(self.marks.generation(site.as_str()))
            .ignore();
        pipe.cmd("INCR")
            .arg(self.marks.late_generation(site.as_str()))
            .ignore();
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis)
            .await
            .map_err(|err| redis_error("mark hours changed", err))
    }
}

/// A token as stored in Cassandra's bigint column (the same 64 bits).
fn token_to_cql(token: u64) -> i64 {
    token as i64
}

#[async_trait]
impl SharedRollupStore for ScyllaStore {
    async fn event_hours(&self, site: &SiteId, first: i64, last: i64) -> Result<Vec<i64>, StorageError> {
        super::read_buckets(
            &self.session,
            &self.statements.select_buckets,
            site.as_str(),
            first,
            last,
        )
        .await
    }

    async fn hour_tokens(&self, site: &SiteId, hours: &[i64]) -> Result<Vec<Option<u64>>, StorageError> {
        if hours.is_empty() {
            return Ok(Vec::new());
        }
        let mut redis = self.redis.clone();
        redis::cmd("HMGET")
            .arg(self.marks.tokens(site.as_str()))
            .arg(hours)
            .query_async(&mut redis)
            .await
            .map_err(|err| redis_error("read hour tokens", err))
    }

    async fn hour_token(&self, site: &SiteId, hour: i64, renew: bool) -> Result<u64, StorageError> {
        let key = self.marks.tokens(site.as_str());
        let fresh = rand::random::<u64>();
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        if renew {
            pipe.cmd("HSET").arg(&key).arg(hour).arg(fresh).ignore();
        } else {
            pipe.cmd("HSETNX").arg(&key).arg(hour).arg(fresh).ignore();
        }
        pipe.cmd("HGET").arg(&key).arg(hour);
        let (token,): (Option<u64>,) = pipe
            .query_async(&mut redis)
            .await
            .map_err(|err| redis_error("set an hour token", err))?;
        token.ok_or_else(|| StorageError::Unavailable("redis: an hour token vanished as it was set".into()))
    }

    async fn hour_rollup(&self, site: &SiteId, hour: i64) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        let rows = self
            .session
            .execute_unpaged(&self.statements.select_rollup, (site.as_str(), hour))
            .await
            .map_err(|err| cql_error("read an hour rollup", err))?
            .into_rows_result()
            .map_err(|err| StorageError::Corrupt(format!("hour rollup: {err}")))?;
        let row = rows
            .maybe_first_row::<(i64, Vec<u8>)>()
            .map_err(|err| StorageError::Corrupt(format!("hour rollup: {err}")))?;
        Ok(row.map(|(token, body)| (token as u64, body)))
    }

    async fn put_hour_rollup(
        &self,
        site: &SiteId,
        hour: i64,
        token: u64,
        body: Vec<u8>,
    ) -> Result<(), StorageError> {
        // Kept as long as the hour's events (retention counts from their time).
        let ttl_secs = self.site_ttl(site).await?;
        let age_secs = (crate::domain::now_micros() - (hour + 1) * BUCKET_MICROS).max(0) / 1_000_000;
        let ttl = (ttl_secs - age_secs + 86_400).clamp(1, MAX_TTL_SECS) as i32;
        self.session
            .execute_unpaged(
                &self.statements.insert_rollup,
                (site.as_str(), hour, token_to_cql(token), body, ttl),
            )
            .await
            .map_err(|err| cql_error("write an hour rollup", err))?;
        Ok(())
    }

    async fn take_dirty_hours(&self, site: &SiteId, max: usize) -> Result<Vec<i64>, StorageError> {
        let mut redis = self.redis.clone();
        redis::cmd("SPOP")
            .arg(self.marks.dirty(site.as_str()))
            .arg(max.max(1))
            .query_async(&mut redis)
            .await
            .map_err(|err| redis_error("take dirty hours", err))
    }

    async fn mark_dirty(&self, site: &SiteId, hours: &[i64]) -> Result<(), StorageError> {
        if hours.is_empty() {
            return Ok(());
        }
        let mut redis = self.redis.clone();
        redis::cmd("SADD")
            .arg(self.marks.dirty(site.as_str()))
            .arg(hours)
            .query_async::<()>(&mut redis)
            .await
            .map_err(|err| redis_error("mark hours dirty", err))
    }
}

#[async_trait]
impl SharedCache for ScyllaStore {
    async fn generations(&self, site: &SiteId) -> Result<(u64, u64), StorageError> {
        let mut redis = self.redis.clone();
        let (all, late): (Option<u64>, Option<u64>) = redis::cmd("MGET")
            .arg(self.marks.generation(site.as_str()))
            .arg(self.marks.late_generation(site.as_str()))
            .query_async(&mut redis)
            .await
            .map_err(|err| redis_error("read write generations", err))?;
        Ok((all.unwrap_or_default(), late.unwrap_or_default()))
    }

    async fn bump_generations(&self, site: &SiteId) -> Result<(), StorageError> {
        self.touch_hours(site, &[]).await
    }

    async fn cached(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let mut redis = self.redis.clone();
        redis::cmd("GET")
            .arg(self.marks.cached(key))
            .query_async(&mut redis)
            .await
            .map_err(|err| redis_error("read a cached report", err))
    }

    async fn cache(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<(), StorageError> {
        let mut redis = self.redis.clone();
        redis::cmd("SET")
            .arg(self.marks.cached(key))
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut redis)
            .await
            .map_err(|err| redis_error("cache a report", err))
    }
}
