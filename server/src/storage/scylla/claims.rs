//! Duplicate detection in Redis: one key per event id, claimed before the
//! event is written to Cassandra and marked done once it is durable there.
//!
//! A key is `<prefix>d:<site>:<16 id bytes>`; it lives as long as the event's
//! timestamp is inside the dedup window, and holds
//! - `d`: the event is stored;
//! - `p<deadline>`: a request is writing the event, until `deadline` (Unix
//!   milliseconds, [`CLAIM_TTL`] after the claim), or died doing so, or gave
//!   the claim back (deadline 0).
//!
//! An append claims its events' keys in one script call ([`CLAIM_SCRIPT`]):
//! - a new key is claimed and the event written;
//! - `d` means the event is stored: a duplicate;
//! - a pending claim before its deadline means another request (on any
//!   instance) is writing that event right now: the append waits for that
//!   request's outcome, and fails with a retryable error if that takes too
//!   long;
//! - a pending claim past its deadline (its request crashed, timed out or
//!   failed) is taken over: the write may have landed, so the taker reads the
//!   event's row in Cassandra first ([`Claim::Recheck`]). A resend after a
//!   crash mid-write is therefore a duplicate, as on the embedded store.
//!
//! Cassandra stays the backstop: the row key of an event is (site, hour,
//! timestamp, id), so writing the same event twice (after Redis lost its
//! data) overwrites one row and counts once.

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
    /// Claimed from a request that did not finish: the event may be stored
    /// already; read its row before writing it.
    Recheck,
    /// Stored before: a duplicate.
    Stored,
    /// Being written by another request.
    Pending,
}

/// Claims keys in one call. `KEYS`: the claim keys; `ARGV[1]`: now (Unix
/// ms); `ARGV[2]`: the deadline of a new claim; `ARGV[2 + i]`: key i's time
/// to live (ms). Returns per key 0 (claimed), 1 (recheck), 2 (stored), 3
/// (pending). Values of an older layout (`p` without a deadline) count as
/// past their deadline.
const CLAIM_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local claim = 'p' .. ARGV[2]
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if not value then
    redis.call('SET', key, claim, 'PX', ARGV[2 + i])
    out[i] = 0
  elseif value == 'd' then
    out[i] = 2
  elseif (tonumber(string.sub(value, 2)) or 0) > now then
    out[i] = 3
  else
    redis.call('SET', key, claim, 'KEEPTTL')
    out[i] = 1
  end
end
return out
";

/// The claim keys of a deployment.
pub struct Claims {
    prefix: Vec<u8>,
    script: redis::Script,
}

impl Claims {
    /// Claims under `prefix` (the deployment's key prefix).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: format!("{prefix}d:").into_bytes(),
            script: redis::Script::new(CLAIM_SCRIPT),
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

    /// Claims every key (with its time to live, ms) in one round trip.
    pub async fn claim(
        &self,
        redis: &mut ConnectionManager,
        keys: &[(Vec<u8>, u64)],
    ) -> Result<Vec<Claim>, StorageError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(now).arg(now + CLAIM_TTL.as_millis() as u64);
        for (key, ttl_millis) in keys {
            invocation
                .key(key.as_slice())
                .arg((*ttl_millis).max(CLAIM_TTL.as_millis() as u64));
        }
        let found: Vec<u8> = invocation
            .invoke_async(redis)
            .await
            .map_err(|err| redis_error("claim event ids", err))?;
        Ok(found
            .into_iter()
            .map(|code| match code {
                0 => Claim::Claimed,
                1 => Claim::Recheck,
                2 => Claim::Stored,
                _ => Claim::Pending,
            })
            .collect())
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
/// gave up), so that its retry need not wait for [`CLAIM_TTL`]. A claim given
/// back is pending with a deadline in the past: the next claim of the event
/// rechecks its row, since the write may have landed after all.
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
                pipe.cmd("SET")
                    .arg(key.as_slice())
                    .arg("p0")
                    .arg("XX")
                    .arg("KEEPTTL")
                    .ignore();
            }
            if let Err(error) = pipe.query_async::<()>(&mut redis).await {
                tracing::warn!(%error, claims = keys.len(), "claims not given back; they expire by themselves");
            }
        });
    }
}
