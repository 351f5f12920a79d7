//! Live visit state in Redis, shared by every instance: one key per visitor
//! (`<prefix>v:<site>:<visitor>`) holding its recent visits, with a TTL.
//!
//! The visit rules stay in one place ([`crate::sessions::assign`], in Rust);
//! Redis makes each visitor's update atomic by optimistic concurrency: read
//! every visitor of a batch (`MGET`), assign the events, then write back
//! only if nobody changed the state meanwhile: `SET NX` for visitors that had
//! none, and for the others one script call that replaces a state only if it
//! is still the one that was read (compare and set). Visitors that another
//! instance changed meanwhile are read and assigned again. Two round trips
//! per batch whatever its size (the two writes go out together); a Lua port
//! of the rules would save one, at the price of keeping two copies of them
//! in step.

use std::collections::HashMap;

use redis::aio::ConnectionManager;

use super::redis_error;
use crate::domain::StoredEvent;
use crate::sessions::{self, VisitorVisits};
use crate::storage::StorageError;

/// How long a visitor's state outlives its last event (by the clock), on
/// top of the inactivity timeout: events later than that start a new visit.
const STATE_MICROS: i64 = 2 * 3_600_000_000;

/// Rounds of compare and set before giving up on a contended visitor.
const MAX_ROUNDS: usize = 16;

const CAS_SCRIPT: &str = r"
local failed = {}
for i, key in ipairs(KEYS) do
  local expected = ARGV[2 * i]
  local current = redis.call('GET', key)
  if (current == false and expected == '') or current == expected then
    redis.call('SET', key, ARGV[2 * i + 1], 'PX', ARGV[1])
  else
    failed[#failed + 1] = i
  end
end
return failed
";

/// Visit state keys of a deployment.
pub struct Visits {
    script: redis::Script,
    prefix: String,
}

impl Visits {
    /// Visit state under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            script: redis::Script::new(CAS_SCRIPT),
            prefix: format!("{prefix}v:"),
        }
    }

    fn key(&self, site: &str, visitor: u64) -> String {
        format!("{}{site}:{visitor:016x}", self.prefix)
    }

    /// Assigns `events` (of `site`) to visits, atomically per visitor.
    pub async fn sessionize(
        &self,
        redis: &mut ConnectionManager,
        site: &str,
        timeout_micros: i64,
        events: &mut [StoredEvent],
    ) -> Result<(), StorageError> {
        // Each visitor's events in timestamp order.
        let mut by_visitor: HashMap<u64, Vec<usize>> = HashMap::new();
        for i in sessions::batch_order(events) {
            by_visitor.entry(events[i].visitor).or_default().push(i);
        }
        let mut pending: Vec<u64> = by_visitor.keys().copied().collect();
        let ttl_millis = (STATE_MICROS + timeout_micros.max(0)) / 1000;
        for _ in 0..MAX_ROUNDS {
            if pending.is_empty() {
                return Ok(());
            }
            let keys: Vec<String> = pending.iter().map(|v| self.key(site, *v)).collect();
            let current: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(redis)
                .await
                .map_err(|err| redis_error("read visit state", err))?;
            let mut invocation = self.script.prepare_invoke();
            invocation.arg(ttl_millis);
            let mut existing = Vec::new();
            let mut fresh = redis::pipe();
            let mut fresh_visitors = Vec::new();
            for ((visitor, key), old) in pending.iter().zip(&keys).zip(&current) {
                let mut state: VisitorVisits = match old {
                    Some(raw) => serde_json::from_slice(raw)
                        .map_err(|err| StorageError::Corrupt(format!("visit state {key}: {err}")))?,
                    None => VisitorVisits::default(),
                };
                for &i in &by_visitor[visitor] {
                    sessions::assign(&mut state, &mut events[i], timeout_micros);
                }
                let new = serde_json::to_vec(&state)
                    .map_err(|err| StorageError::Corrupt(format!("visit state {key}: {err}")))?;
                match old {
                    Some(old) => {
                        invocation.key(key.as_str()).arg(old.as_slice()).arg(new);
                        existing.push(*visitor);
                    }
                    None => {
                        fresh
                            .cmd("SET")
                            .arg(key.as_str())
                            .arg(new)
                            .arg("NX")
                            .arg("PX")
                            .arg(ttl_millis);
                        fresh_visitors.push(*visitor);
                    }
                }
            }
            let mut fresh_redis = redis.clone();
            let created = async {
                if fresh_visitors.is_empty() {
                    return Ok(Vec::new());
                }
                fresh.query_async::<Vec<Option<String>>>(&mut fresh_redis).await
            };
            let replaced = async {
                if existing.is_empty() {
                    return Ok(Vec::new());
                }
                invocation.invoke_async::<Vec<usize>>(redis).await
            };
            let (created, replaced) = tokio::join!(created, replaced);
            let created = created.map_err(|err| redis_error("write visit state", err))?;
            let replaced = replaced.map_err(|err| redis_error("write visit state", err))?;
            // Visitors whose state changed under us: assign them again.
            pending = fresh_visitors
                .iter()
                .zip(created)
                .filter(|(_, ok)| ok.is_none())
                .map(|(visitor, _)| *visitor)
                .chain(
                    replaced
                        .into_iter()
                        .filter_map(|i| existing.get(i.wrapping_sub(1)).copied()),
                )
                .collect();
        }
        Err(StorageError::Unavailable(format!(
            "visit state of {} visitors kept changing under concurrent updates",
            pending.len()
        )))
    }
}
