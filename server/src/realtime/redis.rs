//! Realtime across instances, in Redis:
//! - per-minute counters and HyperLogLog uniques, shared by every instance:
//!   per site and minute a hash of page views and events (people and bots
//!   apart) and two HyperLogLogs of visitor ids (people, bots), kept a
//!   little longer than the window. Every recorded batch updates them in one
//!   pipeline (with its `PUBLISH`, below): one round trip per batch, never
//!   one per counter. A snapshot reads the 30 minutes and the active
//!   visitors in one pipeline, so every instance reports the same numbers,
//!   whichever instance ingested the events and whenever it started.
//! - the "top" lists of the last minutes: each instance counts in memory (as
//!   [`MemoryRealtime`]) and publishes the hits it records on a Redis
//!   channel; every instance subscribes and counts the others' hits too. A
//!   change on any instance thus wakes `WatchRealtime` on every one.
//!
//! Pub/sub delivers at most once: while an instance is cut off from Redis it
//! misses the others' hits in its "top" lists (it logs this, resubscribes by
//! itself, and its own counts go on); a restart refills them from the store.
//! If Redis itself is unreachable, snapshots fall back to this instance's
//! memory. Counters lost with Redis's data are recounted from the stored
//! events by `tally rebuild` ([`RedisRealtime::recount`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use tally_proto::v1;

use super::memory::MemoryRealtime;
use super::{ACTIVE_MINUTES, Changes, Clock, Hit, MINUTE_MICROS, RealtimeBackend, WINDOW_MINUTES};
use crate::domain::SiteId;
use crate::storage::StorageError;

/// One published batch of hits.
#[derive(serde::Serialize, serde::Deserialize)]
struct Published {
    /// The publishing instance, which ignores its own messages.
    from: String,
    site: String,
    hits: Vec<Hit>,
}

/// Realtime counters shared by every instance through Redis.
pub struct RedisRealtime {
    local: Arc<MemoryRealtime>,
    redis: ConnectionManager,
    channel: String,
    /// Prefix of the counter keys: `<prefix>rt:`.
    counters: String,
    instance: String,
    subscriber: tokio::task::JoinHandle<()>,
}

/// Counter fields of a minute: page views and events of people, of bots.
const FIELDS: [&str; 4] = ["pv", "ev", "bpv", "bev"];

/// Counts of one minute and one side (people or bots) of a batch.
#[derive(Default)]
struct MinuteAdd {
    pageviews: i64,
    events: i64,
    visitors: Vec<u64>,
}

impl Drop for RedisRealtime {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

impl RedisRealtime {
    /// Connects to Redis at `url` and subscribes to the channel
    /// `<prefix>realtime`; remote hits are placed by `clock`. Returns once
    /// the subscription is active.
    pub async fn connect(url: &str, prefix: &str, clock: Arc<dyn Clock>) -> Result<Self, StorageError> {
        let client =
            redis::Client::open(url).map_err(|err| StorageError::Io(format!("redis url {url:?}: {err}")))?;
        let redis = crate::storage::scylla::redis_connection(url).await?;
        let channel = format!("{prefix}realtime");
        let instance = uuid::Uuid::new_v4().to_string();
        let local = Arc::new(MemoryRealtime::default());
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let subscriber = tokio::spawn(subscribe_loop(
            client,
            channel.clone(),
            instance.clone(),
            local.clone(),
            clock,
            ready_tx,
        ));
        match tokio::time::timeout(Duration::from_secs(5), ready).await {
            Ok(Ok(())) => {}
            _ => {
                subscriber.abort();
                return Err(StorageError::Unavailable(format!(
                    "redis: subscribe to {channel} at {url}: no answer"
                )));
            }
        }
        Ok(Self {
            local,
            redis,
            channel,
            counters: format!("{prefix}rt:"),
            instance,
            subscriber,
        })
    }

    fn counts_key(&self, site: &SiteId, minute: i64) -> String {
        format!("{}{site}:{minute}", self.counters)
    }

    fn visitors_key(&self, site: &SiteId, minute: i64, bot: bool) -> String {
        let side = if bot { "b" } else { "p" };
        format!("{}{site}:{minute}:{side}", self.counters)
    }

    /// Adds to `pipe` the counter updates of `hits` at `now_micros`, placed
    /// as in [`MemoryRealtime`]: future timestamps in the current minute,
    /// older than the window not at all.
    fn add_counts(&self, pipe: &mut redis::Pipeline, site: &SiteId, hits: &[Hit], now_micros: i64) {
        let now_minute = now_micros.div_euclid(MINUTE_MICROS);
        let mut minutes: std::collections::BTreeMap<(i64, bool), MinuteAdd> = Default::default();
        for hit in hits {
            let minute = hit.ts_micros.div_euclid(MINUTE_MICROS).min(now_minute);
            if minute <= now_minute - WINDOW_MINUTES {
                continue;
            }
            let add = minutes.entry((minute, hit.bot)).or_default();
            add.pageviews += i64::from(hit.view);
            add.events += 1;
            add.visitors.push(hit.visitor);
        }
        for ((minute, bot), add) in minutes {
            // Gone a minute after the window has passed the minute.
            let expire_at = (minute + WINDOW_MINUTES + 1) * MINUTE_MICROS / 1_000_000;
            let counts = self.counts_key(site, minute);
            let (pv, ev) = if bot {
                (FIELDS[2], FIELDS[3])
            } else {
                (FIELDS[0], FIELDS[1])
            };
            pipe.cmd("HINCRBY")
                .arg(&counts)
                .arg(pv)
                .arg(add.pageviews)
                .ignore();
            pipe.cmd("HINCRBY").arg(&counts).arg(ev).arg(add.events).ignore();
            pipe.cmd("EXPIREAT").arg(&counts).arg(expire_at).ignore();
            let visitors = self.visitors_key(site, minute, bot);
            pipe.cmd("PFADD").arg(&visitors).arg(&add.visitors).ignore();
            pipe.cmd("EXPIREAT").arg(&visitors).arg(expire_at).ignore();
        }
    }

    /// Replaces the site's counters of the window by counts of `hits` (the
    /// stored events of the window): after Redis lost them. Counts that
    /// instances add meanwhile are lost too: run it while ingest is quiet.
    pub async fn recount(&self, site: &SiteId, hits: &[Hit], now_micros: i64) -> Result<(), StorageError> {
        let now_minute = now_micros.div_euclid(MINUTE_MICROS);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for minute in now_minute - WINDOW_MINUTES + 1..=now_minute {
            pipe.cmd("DEL")
                .arg(self.counts_key(site, minute))
                .arg(self.visitors_key(site, minute, false))
                .arg(self.visitors_key(site, minute, true))
                .ignore();
        }
        self.add_counts(&mut pipe, site, hits, now_micros);
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis)
            .await
            .map_err(|err| StorageError::Unavailable(format!("redis: recount realtime counters: {err}")))
    }

    /// Fills the minutes and the active visitors of `report` from the shared
    /// counters.
    async fn shared_counts(
        &self,
        site: &SiteId,
        now_micros: i64,
        include_bots: bool,
        report: &mut v1::RealtimeReport,
    ) -> Result<(), redis::RedisError> {
        let now_minute = now_micros.div_euclid(MINUTE_MICROS);
        let minutes: Vec<i64> = (now_minute - WINDOW_MINUTES + 1..=now_minute).collect();
        let visitor_keys = |minute: i64| {
            let mut keys = vec![self.visitors_key(site, minute, false)];
            if include_bots {
                keys.push(self.visitors_key(site, minute, true));
            }
            keys
        };
        let mut pipe = redis::pipe();
        for minute in &minutes {
            pipe.cmd("HMGET")
                .arg(self.counts_key(site, *minute))
                .arg(&FIELDS[..]);
            pipe.cmd("PFCOUNT").arg(visitor_keys(*minute));
        }
        let active: Vec<String> = minutes[minutes.len() - ACTIVE_MINUTES as usize..]
            .iter()
            .flat_map(|m| visitor_keys(*m))
            .collect();
        pipe.cmd("PFCOUNT").arg(active);
        let mut redis = self.redis.clone();
        let answers: Vec<redis::Value> = pipe.query_async(&mut redis).await?;
        let mut answers = answers.into_iter();
        let mut counts = Vec::with_capacity(minutes.len());
        for minute in &minutes {
            let fields: [Option<i64>; 4] =
                redis::from_redis_value(answers.next().unwrap_or(redis::Value::Nil))?;
            let visitors: i64 = redis::from_redis_value(answers.next().unwrap_or(redis::Value::Nil))?;
            let [pv, ev, bpv, bev] = fields.map(Option::unwrap_or_default);
            let (pageviews, events) = if include_bots {
                (pv + bpv, ev + bev)
            } else {
                (pv, ev)
            };
            counts.push(v1::MinuteCount {
                minute: Some(crate::convert::micros_to_timestamp(minute * MINUTE_MICROS)),
                pageviews,
                events,
                visitors,
            });
        }
        report.active_visitors = redis::from_redis_value(answers.next().unwrap_or(redis::Value::Nil))?;
        report.minutes = counts;
        Ok(())
    }
}

/// Receives the other instances' hits for as long as the backend lives,
/// resubscribing after Redis went away.
async fn subscribe_loop(
    client: redis::Client,
    channel: String,
    instance: String,
    local: Arc<MemoryRealtime>,
    clock: Arc<dyn Clock>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut failures = 0u32;
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let mut pubsub = match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(error)) => {
                if failures == 0 {
                    tracing::warn!(%error, %channel, "realtime subscription failed; retrying");
                }
                failures += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(_) => {
                failures += 1;
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(%channel, "realtime subscription restored");
        }
        failures = 0;
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Ok(published) = serde_json::from_slice::<Published>(message.get_payload_bytes()) else {
                tracing::warn!(%channel, "undecodable realtime message ignored");
                continue;
            };
            if published.from == instance {
                continue;
            }
            let Ok(site) = SiteId::parse(&published.site) else {
                continue;
            };
            let _ = local.record(&site, &published.hits, clock.now_micros()).await;
        }
        tracing::warn!(%channel, "realtime subscription lost; events of other instances are missed until it is back");
    }
}

#[async_trait]
impl RealtimeBackend for RedisRealtime {
    async fn record(&self, site: &SiteId, hits: &[Hit], now_micros: i64) -> Result<(), StorageError> {
        self.local.record(site, hits, now_micros).await?;
        let message = serde_json::to_vec(&Published {
            from: self.instance.clone(),
            site: site.to_string(),
            hits: hits.to_vec(),
        })
        .map_err(|err| StorageError::Io(format!("encode realtime hits: {err}")))?;
        let mut pipe = redis::pipe();
        self.add_counts(&mut pipe, site, hits, now_micros);
        pipe.cmd("PUBLISH").arg(&self.channel).arg(message).ignore();
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis).await.map_err(|err| {
            StorageError::Unavailable(format!("redis: count and publish realtime hits: {err}"))
        })
    }

    async fn restore(&self, site: &SiteId, hits: &[Hit], now_micros: i64) -> Result<(), StorageError> {
        self.local.record(site, hits, now_micros).await
    }

    async fn snapshot(
        &self,
        site: &SiteId,
        now_micros: i64,
        top_limit: usize,
        include_bots: bool,
    ) -> Result<v1::RealtimeReport, StorageError> {
        let mut report = self
            .local
            .snapshot(site, now_micros, top_limit, include_bots)
            .await?;
        if let Err(error) = self
            .shared_counts(site, now_micros, include_bots, &mut report)
            .await
        {
            tracing::warn!(site = %site, %error, "shared realtime counters unreadable; this instance's counts shown");
        }
        Ok(report)
    }

    fn subscribe(&self, site: &SiteId) -> Changes {
        self.local.subscribe(site)
    }
}
