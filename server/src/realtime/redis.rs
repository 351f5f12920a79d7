//! Realtime across instances: each instance counts in memory (as
//! [`MemoryRealtime`]) and publishes the hits it records on a Redis channel;
//! every instance subscribes and counts the others' hits too. A
//! `WatchRealtime` on any instance thus sees events ingested on every one.
//!
//! One `PUBLISH` per ingest batch (the hits of the batch in one message).
//! Snapshots stay local and cheap: no Redis round trip per watch update.
//! Pub/sub delivers at most once: while an instance is cut off from Redis it
//! misses the others' hits (it logs this, resubscribes by itself, and its
//! own counts go on); a restart refills the window from the store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use tally_proto::v1;

use super::memory::MemoryRealtime;
use super::{Changes, Clock, Hit, RealtimeBackend};
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

/// Realtime counters shared by every instance through Redis pub/sub.
pub struct RedisRealtime {
    local: Arc<MemoryRealtime>,
    redis: ConnectionManager,
    channel: String,
    instance: String,
    subscriber: tokio::task::JoinHandle<()>,
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
            instance,
            subscriber,
        })
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
        let mut redis = self.redis.clone();
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(message)
            .query_async::<()>(&mut redis)
            .await
            .map_err(|err| StorageError::Unavailable(format!("redis: publish realtime hits: {err}")))
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
        self.local
            .snapshot(site, now_micros, top_limit, include_bots)
            .await
    }

    fn subscribe(&self, site: &SiteId) -> Changes {
        self.local.subscribe(site)
    }
}
