//! The embedded store: one data directory, no services, built on fjall (an LSM
//! tree with a write-ahead journal).
//!
//! Appends go through one writer thread that does group commit: it takes every
//! append queued while the previous fsync ran, deduplicates them against the
//! `event_ids` index, writes them as one journal batch and syncs it once. The
//! commit window is therefore one fsync (about 3 ms here): nothing waits on a
//! timer, and an acknowledged event is on disk.
//!
//! Layout (all integers big-endian):
//! - `events`: `site_num u32 | ts u64 (sign-flipped micros) | event_id [16]` -> `StoredEvent`
//!   without its id and timestamp (they are in the key), LZ4-compressed blocks.
//! - `event_ids`: `site_num u32 | event_id [16]` -> `ts u64` (dedup index).
//! - `sites`: `site_id` -> `site_num u32 | SiteRecord`.
//! - `keys`: `key_id` -> `KeyRecord`.
//! - `meta`: `next_site_num`, `instance_secret`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use fjall::{
    CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode, config::CompressionPolicy,
};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::{AppendOutcome, EventChunks, EventStore, KeyStore, SiteStore, StorageError};
use crate::domain::{KeyRecord, SiteId, SiteRecord, StoredEvent};

/// Most events one group commit takes before it syncs.
const MAX_GROUP_EVENTS: usize = 64 * 1024;
/// Events per chunk of a scan.
const SCAN_CHUNK: usize = 4096;
/// Appends that may wait for the writer before callers are held back.
const WRITER_QUEUE: usize = 1024;

impl From<fjall::Error> for StorageError {
    fn from(err: fjall::Error) -> Self {
        StorageError::Io(err.to_string())
    }
}

/// The embedded store. Cheap to share behind an `Arc`.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    writer: mpsc::Sender<WriteJob>,
}

struct Inner {
    db: Database,
    events: Keyspace,
    event_ids: Keyspace,
    sites: Keyspace,
    keys: Keyspace,
    meta: Keyspace,
    /// Every site with the compact number used in its event keys. Sites and
    /// keys are few and change only through this store, so they are served
    /// from memory; the cache changes under `meta_lock`, after the disk.
    sites_cache: RwLock<BTreeMap<String, (u32, SiteRecord)>>,
    /// Every API key by id, and key ids by secret hash.
    keys_cache: RwLock<KeyCache>,
    /// Serialises the rare read-modify-write of sites, keys and meta.
    meta_lock: Mutex<()>,
}

/// An event encoded by the caller's task, so the writer thread only dedups and writes.
struct PreparedEvent {
    id_key: [u8; 20],
    key: [u8; 28],
    value: Vec<u8>,
}

impl PreparedEvent {
    fn new(site_num: u32, mut event: StoredEvent) -> Result<Self, StorageError> {
        let id: [u8; 16] = event
            .event_id
            .as_slice()
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("event id of {} bytes", event.event_id.len())))?;
        let ts = encode_ts(event.ts_micros);
        // The id and timestamp live in the key; keep them out of the value.
        event.event_id = Vec::new();
        event.ts_micros = 0;
        Ok(Self {
            id_key: id_key(site_num, &id),
            key: event_key(site_num, ts, &id),
            value: event.encode_to_vec(),
        })
    }
}

#[derive(Default)]
struct KeyCache {
    by_id: BTreeMap<String, KeyRecord>,
    id_by_hash: HashMap<Vec<u8>, String>,
}

impl KeyCache {
    fn put(&mut self, key: KeyRecord) {
        self.id_by_hash
            .insert(key.secret_hash.clone(), key.key_id.clone());
        self.by_id.insert(key.key_id.clone(), key);
    }
}

struct WriteJob {
    events: Vec<PreparedEvent>,
    reply: oneshot::Sender<Result<Vec<AppendOutcome>, StorageError>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|err| StorageError::Io(format!("create {}: {err}", dir.display())))?;
        let db = Database::builder(dir).open()?;
        let compressed = || {
            KeyspaceCreateOptions::default()
                .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
        };
        let inner = Inner {
            events: db.keyspace("events", compressed)?,
            event_ids: db.keyspace("event_ids", compressed)?,
            sites: db.keyspace("sites", KeyspaceCreateOptions::default)?,
            keys: db.keyspace("keys", KeyspaceCreateOptions::default)?,
            meta: db.keyspace("meta", KeyspaceCreateOptions::default)?,
            db,
            sites_cache: RwLock::new(BTreeMap::new()),
            keys_cache: RwLock::new(KeyCache::default()),
            meta_lock: Mutex::new(()),
        };
        inner.load_caches()?;
        let inner = Arc::new(inner);
        let (writer, jobs) = mpsc::channel(WRITER_QUEUE);
        let writer_inner = inner.clone();
        std::thread::Builder::new()
            .name("tally-writer".into())
            .spawn(move || writer_loop(&writer_inner, jobs))
            .map_err(|err| StorageError::Io(format!("spawn writer thread: {err}")))?;
        Ok(Self { inner, writer })
    }

    /// Bytes the store takes on disk.
    pub fn disk_space(&self) -> Result<u64, StorageError> {
        Ok(self.inner.db.disk_space()?)
    }

    fn site_num(&self, site: &SiteId) -> Option<u32> {
        let sites = self.inner.sites_cache.read().unwrap_or_else(|e| e.into_inner());
        sites.get(site.as_str()).map(|(num, _)| *num)
    }

    /// Runs blocking store work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|err| StorageError::Io(format!("store task failed: {err}")))?
    }
}

impl Inner {
    fn load_caches(&self) -> Result<(), StorageError> {
        let mut sites = self.sites_cache.write().unwrap_or_else(|e| e.into_inner());
        for guard in self.sites.iter() {
            let (key, value) = guard.into_inner()?;
            let (num, _) = split_site_value(&value)?;
            sites.insert(
                String::from_utf8_lossy(&key).into_owned(),
                (num, decode_site(&value)?),
            );
        }
        let mut keys = self.keys_cache.write().unwrap_or_else(|e| e.into_inner());
        for guard in self.keys.iter() {
            keys.put(decode_key(&guard.value()?)?);
        }
        Ok(())
    }

    fn cache_site(&self, num: u32, site: SiteRecord) {
        let mut sites = self.sites_cache.write().unwrap_or_else(|e| e.into_inner());
        sites.insert(site.site_id.clone(), (num, site));
    }

    fn durable_batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(Some(PersistMode::SyncData))
    }

    /// Deduplicates and writes one group of appends in a single synced batch.
    fn commit_group(&self, jobs: &mut [WriteJob]) -> Result<Vec<Vec<AppendOutcome>>, StorageError> {
        let mut batch = self.durable_batch();
        let mut seen_in_group: HashSet<[u8; 20]> = HashSet::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs.iter_mut() {
            let mut job_outcomes = Vec::with_capacity(job.events.len());
            for event in job.events.drain(..) {
                if !seen_in_group.insert(event.id_key) || self.event_ids.contains_key(event.id_key)? {
                    job_outcomes.push(AppendOutcome::Duplicate);
                    continue;
                }
                // The dedup index maps the id to the timestamp part of the event key.
                batch.insert(&self.event_ids, event.id_key.to_vec(), event.key[4..12].to_vec());
                batch.insert(&self.events, event.key.to_vec(), event.value);
                job_outcomes.push(AppendOutcome::Stored);
            }
            outcomes.push(job_outcomes);
        }
        batch.commit()?;
        Ok(outcomes)
    }

    fn scan_into(
        &self,
        site_num: u32,
        from_micros: i64,
        to_micros: i64,
        out: &mpsc::Sender<Result<Vec<StoredEvent>, StorageError>>,
    ) -> Result<(), StorageError> {
        let low = event_key(site_num, encode_ts(from_micros), &[0; 16]);
        let high = event_key(site_num, encode_ts(to_micros), &[0; 16]);
        let mut chunk = Vec::with_capacity(SCAN_CHUNK);
        for guard in self.events.range(low..high) {
            let (key, value) = guard.into_inner()?;
            chunk.push(decode_event(&key, &value)?);
            if chunk.len() == SCAN_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(SCAN_CHUNK));
                if out.blocking_send(Ok(full)).is_err() {
                    return Ok(()); // the reader went away
                }
            }
        }
        if !chunk.is_empty() {
            let _ = out.blocking_send(Ok(chunk));
        }
        Ok(())
    }
}

fn writer_loop(inner: &Inner, mut jobs: mpsc::Receiver<WriteJob>) {
    let mut group = Vec::new();
    while let Some(first) = jobs.blocking_recv() {
        let mut queued_events = first.events.len();
        group.push(first);
        while queued_events < MAX_GROUP_EVENTS {
            let Ok(next) = jobs.try_recv() else { break };
            queued_events += next.events.len();
            group.push(next);
        }
        match inner.commit_group(&mut group) {
            Ok(outcomes) => {
                for (job, outcome) in group.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, events = queued_events, "group commit failed");
                for job in group.drain(..) {
                    let _ = job.reply.send(Err(StorageError::Io(err.to_string())));
                }
            }
        }
    }
}

/// Timestamps as big-endian u64 with the sign bit flipped, so byte order is time order.
fn encode_ts(micros: i64) -> u64 {
    (micros as u64) ^ (1 << 63)
}

fn decode_ts(encoded: u64) -> i64 {
    (encoded ^ (1 << 63)) as i64
}

fn event_key(site_num: u32, ts: u64, id: &[u8; 16]) -> [u8; 28] {
    let mut key = [0u8; 28];
    key[..4].copy_from_slice(&site_num.to_be_bytes());
    key[4..12].copy_from_slice(&ts.to_be_bytes());
    key[12..].copy_from_slice(id);
    key
}

fn id_key(site_num: u32, id: &[u8; 16]) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..4].copy_from_slice(&site_num.to_be_bytes());
    key[4..].copy_from_slice(id);
    key
}

fn decode_event(key: &[u8], value: &[u8]) -> Result<StoredEvent, StorageError> {
    if key.len() != 28 {
        return Err(StorageError::Corrupt(format!("event key of {} bytes", key.len())));
    }
    let mut event =
        StoredEvent::decode(value).map_err(|err| StorageError::Corrupt(format!("event: {err}")))?;
    let ts = u64::from_be_bytes(key[4..12].try_into().expect("8 bytes"));
    event.ts_micros = decode_ts(ts);
    event.event_id = key[12..].to_vec();
    Ok(event)
}

fn split_site_value(value: &[u8]) -> Result<(u32, &[u8]), StorageError> {
    let Some((num, record)) = value.split_first_chunk::<4>() else {
        return Err(StorageError::Corrupt("site record too short".into()));
    };
    Ok((u32::from_be_bytes(*num), record))
}

fn decode_site(value: &[u8]) -> Result<SiteRecord, StorageError> {
    let (_, record) = split_site_value(value)?;
    SiteRecord::decode(record).map_err(|err| StorageError::Corrupt(format!("site: {err}")))
}

fn decode_key(value: &[u8]) -> Result<KeyRecord, StorageError> {
    KeyRecord::decode(value).map_err(|err| StorageError::Corrupt(format!("api key: {err}")))
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn append(
        &self,
        site: &SiteId,
        events: Vec<StoredEvent>,
    ) -> Result<Vec<AppendOutcome>, StorageError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let site_num = self
            .site_num(site)
            .ok_or_else(|| StorageError::UnknownSite(site.to_string()))?;
        let events = events
            .into_iter()
            .map(|event| PreparedEvent::new(site_num, event))
            .collect::<Result<Vec<_>, _>>()?;
        let (reply, outcome) = oneshot::channel();
        let job = WriteJob { events, reply };
        self.writer
            .send(job)
            .await
            .map_err(|_| StorageError::Unavailable("writer stopped".into()))?;
        outcome
            .await
            .map_err(|_| StorageError::Unavailable("writer stopped".into()))?
    }

    fn scan(&self, site: &SiteId, from_micros: i64, to_micros: i64) -> EventChunks {
        let (tx, rx) = mpsc::channel(4);
        if let Some(site_num) = self.site_num(site) {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(err) = inner.scan_into(site_num, from_micros, to_micros, &tx) {
                    let _ = tx.blocking_send(Err(err));
                }
            });
        }
        Box::pin(ReceiverStream::new(rx))
    }
}

#[async_trait]
impl SiteStore for EmbeddedStore {
    async fn insert_site(&self, site: SiteRecord) -> Result<bool, StorageError> {
        self.blocking(move |inner| {
            let _guard = inner.meta_lock.lock().unwrap_or_else(|e| e.into_inner());
            if inner.sites.contains_key(&site.site_id)? {
                return Ok(false);
            }
            let num = match inner.meta.get("next_site_num")? {
                Some(raw) => u32::from_be_bytes(
                    raw.as_ref()
                        .try_into()
                        .map_err(|_| StorageError::Corrupt("next_site_num".into()))?,
                ),
                None => 1,
            };
            let mut value = num.to_be_bytes().to_vec();
            value.extend(site.encode_to_vec());
            let mut batch = inner.durable_batch();
            batch.insert(&inner.meta, "next_site_num", (num + 1).to_be_bytes().to_vec());
            batch.insert(&inner.sites, site.site_id.as_bytes().to_vec(), value);
            batch.commit()?;
            inner.cache_site(num, site);
            Ok(true)
        })
        .await
    }

    async fn update_site(&self, site: SiteRecord) -> Result<(), StorageError> {
        self.blocking(move |inner| {
            let _guard = inner.meta_lock.lock().unwrap_or_else(|e| e.into_inner());
            let Some(old) = inner.sites.get(&site.site_id)? else {
                return Err(StorageError::UnknownSite(site.site_id));
            };
            let (num, _) = split_site_value(&old)?;
            let mut value = num.to_be_bytes().to_vec();
            value.extend(site.encode_to_vec());
            let mut batch = inner.durable_batch();
            batch.insert(&inner.sites, site.site_id.as_bytes().to_vec(), value);
            batch.commit()?;
            inner.cache_site(num, site);
            Ok(())
        })
        .await
    }

    async fn get_site(&self, site: &SiteId) -> Result<Option<SiteRecord>, StorageError> {
        let sites = self.inner.sites_cache.read().unwrap_or_else(|e| e.into_inner());
        Ok(sites.get(site.as_str()).map(|(_, record)| record.clone()))
    }

    async fn list_sites(&self) -> Result<Vec<SiteRecord>, StorageError> {
        let sites = self.inner.sites_cache.read().unwrap_or_else(|e| e.into_inner());
        Ok(sites.values().map(|(_, record)| record.clone()).collect())
    }
}

#[async_trait]
impl KeyStore for EmbeddedStore {
    async fn put_key(&self, key: KeyRecord) -> Result<(), StorageError> {
        self.blocking(move |inner| {
            let _guard = inner.meta_lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut batch = inner.durable_batch();
            batch.insert(&inner.keys, key.key_id.as_bytes().to_vec(), key.encode_to_vec());
            batch.commit()?;
            inner
                .keys_cache
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .put(key);
            Ok(())
        })
        .await
    }

    async fn key_by_hash(&self, secret_hash: &[u8]) -> Result<Option<KeyRecord>, StorageError> {
        let keys = self.inner.keys_cache.read().unwrap_or_else(|e| e.into_inner());
        Ok(keys
            .id_by_hash
            .get(secret_hash)
            .and_then(|id| keys.by_id.get(id))
            .cloned())
    }

    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StorageError> {
        let keys = self.inner.keys_cache.read().unwrap_or_else(|e| e.into_inner());
        Ok(keys.by_id.get(key_id).cloned())
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StorageError> {
        let keys = self.inner.keys_cache.read().unwrap_or_else(|e| e.into_inner());
        Ok(keys.by_id.values().cloned().collect())
    }

    async fn instance_secret(&self) -> Result<[u8; 32], StorageError> {
        self.blocking(|inner| {
            let _guard = inner.meta_lock.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(raw) = inner.meta.get("instance_secret")? {
                return raw
                    .as_ref()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("instance secret".into()));
            }
            let secret: [u8; 32] = rand::random();
            let mut batch = inner.durable_batch();
            batch.insert(&inner.meta, "instance_secret", secret.to_vec());
            batch.commit()?;
            Ok(secret)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_sort_as_bytes() {
        let times = [i64::MIN, -1_000_000, -1, 0, 1, 1_700_000_000_000_000, i64::MAX];
        let encoded: Vec<[u8; 8]> = times.iter().map(|t| encode_ts(*t).to_be_bytes()).collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]));
        for t in times {
            assert_eq!(decode_ts(encode_ts(t)), t);
        }
    }
}
