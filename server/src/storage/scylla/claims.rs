//! Duplicate detection in Redis: one key per event id, claimed before the
//! event is written to Cassandra and marked done once it is durable there.
//!
//! A key is `<prefix>d:<site>:<16 id bytes>` with the value `p` (pending: a
//! request is writing the event, for at most [`CLAIM_TTL`]) or `d` (stored;
//! kept until the event's timestamp leaves the dedup window). An append
//! claims its events' keys in one pipeline:
//! - a new key is claimed (`p`) and the event written;
//! - a `d` key means the event is stored: a duplicate;
//! - a `p` key means another request (on any instance) is writing that event
//!   right now, or died doing so: the append waits for that request's outcome
//!   (`d`: a duplicate; the key given back after a failed write, or expired:
//!   claim it again), and fails with a retryable error if that takes too long.
//!
//! Cassandra stays the backstop: the row key of an event is (site, hour,
//! timestamp, id), so writing the same event twice (a claim that expired
//! after a write that did land, or Redis losing its data) overwrites one row
//! and counts once.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::redis_error;
use crate::storage::StorageError;

/// How long a pending claim lives: longer than any write to Cassandra takes
/// (its request timeout, with retries), short enough that a retry after a
/// crash mid-write waits little.
pub const CLAIM_TTL: Duration = Duration::from_secs(30);

/// What the claim of one event found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Newly claimed: write the event.
    Claimed,
    /// Stored before: a duplicate.
    Stored,
    /// Being written by another request.
    Pending,
}

/// The claim keys of one site.
pub struct Claims {
    prefix: Vec<u8>,
}

impl Claims {
    /// Claims under `prefix` (the deployment's key prefix).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: format!("{prefix}d:").into_bytes(),
        }
    }

    /// The key of event `id` of `site`.
    pub fn key(&self, site: &str, id: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + site.len() + 1 + id.len());
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(site.as_bytes());
        key.push(b':');
        key.extend_from_slice(id);
        key
    }

    /// Claims every key: one pipeline of `SET NX` (each atomic on its own,
    /// which is all a claim needs), and one of `GET` for the keys that were
    /// taken, to tell stored from pending.
    pub async fn claim(
        &self,
        redis: &mut ConnectionManager,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Claim>, StorageError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("SET")
                .arg(key.as_slice())
                .arg("p")
                .arg("NX")
                .arg("PX")
                .arg(CLAIM_TTL.as_millis() as u64);
        }
        let set: Vec<Option<String>> = pipe
            .query_async(redis)
            .await
            .map_err(|err| redis_error("claim event ids", err))?;
        let mut claims: Vec<Claim> = set
            .iter()
            .map(|ok| {
                if ok.is_some() {
                    Claim::Claimed
                } else {
                    Claim::Pending
                }
            })
            .collect();
        let taken: Vec<usize> = (0..keys.len()).filter(|&i| claims[i] == Claim::Pending).collect();
        if taken.is_empty() {
            return Ok(claims);
        }
        let mut pipe = redis::pipe();
        for &i in &taken {
            pipe.cmd("GET").arg(keys[i].as_slice());
        }
        let values: Vec<Option<String>> = pipe
            .query_async(redis)
            .await
            .map_err(|err| redis_error("read event id claims", err))?;
        for (&i, value) in taken.iter().zip(values) {
            // Gone meanwhile (given back or expired): pending, claimed again on the next round.
            if value.as_deref() == Some("d") {
                claims[i] = Claim::Stored;
            }
        }
        Ok(claims)
    }

    /// Adds to `pipe` the commands that mark claimed keys as stored, each
    /// for its `ttl_millis`.
    pub fn mark_stored(&self, pipe: &mut redis::Pipeline, keys: &[(Vec<u8>, u64)]) {
        for (key, ttl_millis) in keys {
            pipe.cmd("SET")
                .arg(key.as_slice())
                .arg("d")
                .arg("PX")
                .arg((*ttl_millis).max(1))
                .ignore();
        }
    }
}

/// Claims that an append holds: given back when it ends without settling
/// them, on an error or when the request is dropped mid-way (a client that
/// gave up), so that its retry need not wait for [`CLAIM_TTL`]. Giving back
/// is safe even if the write landed after all: writing the event again
/// overwrites the same row.
pub struct Held {
    redis: ConnectionManager,
    keys: Vec<Vec<u8>>,
}

impl Held {
    /// No claims yet.
    pub fn new(redis: ConnectionManager) -> Self {
        Self {
            redis,
            keys: Vec::new(),
        }
    }

    /// Holds one more claim.
    pub fn push(&mut self, key: Vec<u8>) {
        self.keys.push(key);
    }

    /// The claims are settled (marked stored): nothing to give back.
    pub fn settle(mut self) {
        self.keys.clear();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.keys);
        let mut redis = self.redis.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // they expire by themselves
        };
        runtime.spawn(async move {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("DEL").arg(key.as_slice()).ignore();
            }
            if let Err(error) = pipe.query_async::<()>(&mut redis).await {
                tracing::warn!(%error, claims = keys.len(), "claims not given back; they expire by themselves");
            }
        });
    }
}
