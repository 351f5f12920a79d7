//! The embedded store: one data directory, no services, built on fjall (an LSM
//! tree with a write-ahead journal).
//!
//! Events are written by one group-committing writer thread as minute packs
//! (see [`events`]); a compactor thread moves sealed hours into columnar
//! segments (see [`segments`]); sites, keys and the instance secret live in
//! small keyspaces and are served from memory.
//!
//! Keyspaces besides those of [`events`] and [`segments`] (integers big-endian):
//! - `sites`: `site_id` -> `site_num u32 | SiteRecord`.
//! - `keys`: `key_id` -> `KeyRecord`.
//! - `meta`: `format_version`, `next_site_num`, `instance_secret`, `next_pack_seq`,
//!   and `salt/<name>` for the visitor-id salts.
//!
//! Visit state (see [`crate::sessions`]) is kept in memory for visitors active
//! in the last two hours and rebuilt from those hours' events at start-up.

mod dedup;
mod events;
mod segments;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use fjall::{
    CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode, config::CompressionPolicy,
};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::columns::ColumnBatch;
use super::{AppendOutcome, Erase, EventChunks, EventStore, KeyStore, SessionStore, SiteStore, StorageError};
use crate::domain::{KeyRecord, SiteId, SiteRecord, StoredEvent};
use crate::sessions::{self, VisitorVisits};

/// Appends that may wait for the writer before callers are held back.
const WRITER_QUEUE: usize = 1024;
/// The database's cache of decompressed blocks. Reports read columnar
/// segments in long sequential runs that a cache of any affordable size would
/// not hold (the kernel's page cache serves them), so a small cache keeps
/// the index and recent blocks and leaves memory to the rollups.
const BLOCK_CACHE_BYTES: u64 = 8 << 20;
/// Writes a keyspace holds in memory before it flushes them to a table file
/// (the database's default is 64 MiB). Packs and segment columns are written
/// in bulk and read back from disk, so a smaller buffer costs little and keeps
/// memory, including what a restart replays from the journal, bounded.
const MEMTABLE_BYTES: u64 = 16 << 20;
/// Journal the database keeps before it flushes the memtables that hold the
/// oldest of it (its default is 512 MiB, the least it takes is 64 MiB). A
/// journal file goes only once every keyspace has flushed what it holds,
/// and keyspaces written a few bytes at a time (the pack sequence on every
/// group commit, sites, keys) fill their memtables rarely: without a lower
/// cap the journal grew to 512 MiB, 300 bytes per recent event on disk and
/// as much to replay at start-up.
const JOURNAL_BYTES: u64 = 64 << 20;
/// How often the compactor looks for sealed hours.
const COMPACT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// How long after its end an hour stays in packs: events of the last
/// moments of an hour are still arriving, and rewriting the segment for
/// each of them would waste work.
const SEAL_AFTER_MICROS: i64 = 2 * 60_000_000;

impl From<fjall::Error> for StorageError {
    fn from(err: fjall::Error) -> Self {
        match err {
            fjall::Error::Locked => StorageError::Io(
                "the data directory is in use by another process (is another tally serving from it?)".into(),
            ),
            other => StorageError::Io(other.to_string()),
        }
    }
}

/// The embedded store. Cheap to share behind an `Arc`.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    compact_on_append: bool,
    writer: mpsc::Sender<events::WriteJob>,
    /// Dropping it stops the compactor thread.
    _compactor: std::sync::mpsc::Sender<()>,
}

struct Inner {
    db: Database,
    tables: segments::Tables,
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
    /// Recent visits per (site number, visitor), for visits formed at ingest.
    visits: Mutex<Visits>,
    /// Serialises compaction, erasure and expiry: each rewrites stored events.
    maintenance: Mutex<()>,
}

/// Live visit state, in memory: visitors that sent events within the last
/// [`VISIT_STATE_MICROS`] (by the clock), with when they last did; rebuilt
/// from the events of that window when the store opens.
#[derive(Default)]
struct Visits {
    by_visitor: HashMap<(u32, u64), (VisitorVisits, i64)>,
    last_sweep: i64,
}

/// How long a visitor's visit state is kept after its last event: events
/// that arrive later than this start a new visit.
const VISIT_STATE_MICROS: i64 = 2 * 3_600_000_000;

/// How long the state of a visitor whose events are all older than
/// [`VISIT_STATE_MICROS`] by their own timestamps (an import of old events)
/// is kept after its last event arrived: long enough for the rest of its
/// visit in a time-ordered import. A restart keeps no such state either: it
/// rebuilds the visits of the window by timestamp.
const OLD_VISIT_STATE_MICROS: i64 = 5 * 60_000_000;

impl Visits {
    /// Forgets visitors idle for longer than the window, and those of old
    /// events soon after they arrived, at most once a minute.
    fn sweep(&mut self, now: i64) {
        if now - self.last_sweep < 60_000_000 {
            return;
        }
        self.last_sweep = now;
        self.by_visitor.retain(|_, (state, touched)| {
            *touched > now - VISIT_STATE_MICROS
                && (*touched > now - OLD_VISIT_STATE_MICROS
                    || state.visits.iter().any(|v| v.last > now - VISIT_STATE_MICROS))
        });
        // An import leaves a large table behind: give its memory back.
        if self.by_visitor.len() < self.by_visitor.capacity() / 4 {
            self.by_visitor.shrink_to_fit();
        }
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

/// Options of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Days (by event timestamp) for which duplicates are recognised. Must
    /// cover the oldest timestamp that ingest accepts, with a day of margin.
    pub dedup_window_days: i64,
    /// Free space to leave on the store's disk: a group commit that finds
    /// less is refused (`Unavailable`, retryable) before it writes anything.
    pub min_free_disk_bytes: u64,
    /// Compact every hour with packs, the current one included, before an
    /// append returns. Costly; for tests of reads over compacted events.
    pub compact_on_append: bool,
}

/// Default [`EmbeddedOptions::min_free_disk_bytes`]: 256 MiB.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 256 << 20;

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            dedup_window_days: 32,
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
            compact_on_append: false,
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` with default options.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with(dir, &EmbeddedOptions::default())
    }

    /// Opens (or creates) the store in `dir`, rebuilds the dedup window and
    /// starts the writer thread.
    pub fn open_with(dir: &Path, options: &EmbeddedOptions) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|err| StorageError::Io(format!("create {}: {err}", dir.display())))?;
        // Packs are written to the journal on every group commit, by the one
        // writer thread, and compressed again when their memtable is flushed to
        // a table: compressing them in the journal too cost the writer about a
        // tenth of ingest's instructions, for a file that goes once flushed.
        let db = Database::builder(dir)
            .cache_size(BLOCK_CACHE_BYTES)
            .journal_compression(CompressionType::None)
            .max_journaling_size(JOURNAL_BYTES)
            .open()?;
        let compressed = || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(MEMTABLE_BYTES)
                .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
        };
        let uncompressed = || {
            // Segment columns are compressed column by column already.
            KeyspaceCreateOptions::default()
                .max_memtable_size(MEMTABLE_BYTES)
                .data_block_compression_policy(CompressionPolicy::all(CompressionType::None))
        };
        let inner = Inner {
            tables: segments::Tables {
                db: db.clone(),
                packs: db.keyspace("events", compressed)?,
                heads: db.keyspace("segment_heads", KeyspaceCreateOptions::default)?,
                columns: db.keyspace("segment_columns", uncompressed)?,
                pack_ids: db.keyspace("pack_ids", || {
                    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
                })?,
            },
            sites: db.keyspace("sites", KeyspaceCreateOptions::default)?,
            keys: db.keyspace("keys", KeyspaceCreateOptions::default)?,
            meta: db.keyspace("meta", KeyspaceCreateOptions::default)?,
            db,
            sites_cache: RwLock::new(BTreeMap::new()),
            keys_cache: RwLock::new(KeyCache::default()),
            meta_lock: Mutex::new(()),
            visits: Mutex::new(Visits::default()),
            maintenance: Mutex::new(()),
        };
        inner.check_format()?;
        inner.load_caches()?;
        inner.load_visits()?;
        let inner = Arc::new(inner);
        let writer = events::Writer::recover(
            &inner.tables,
            inner.meta.clone(),
            options.dedup_window_days,
            events::DiskReserve::new(dir, options.min_free_disk_bytes),
        )?;
        let (jobs_tx, jobs) = mpsc::channel(WRITER_QUEUE);
        std::thread::Builder::new()
            .name("tally-writer".into())
            .spawn(move || writer.run(jobs))
            .map_err(|err| StorageError::Io(format!("spawn writer thread: {err}")))?;
        let (compactor, stop) = std::sync::mpsc::channel();
        let background = inner.clone();
        std::thread::Builder::new()
            .name("tally-compactor".into())
            .spawn(move || {
                // Runs until the store is dropped (the sender goes away).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(COMPACT_EVERY) {
                    // Ingest sweeps the visit state too, but only while events come.
                    background
                        .visits
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .sweep(crate::domain::now_micros());
                    let sealed_before = crate::domain::now_micros() - SEAL_AFTER_MICROS;
                    match background.compact(sealed_before, usize::MAX) {
                        Ok(0) => {}
                        Ok(_) => {
                            if let Err(err) = background.reclaim() {
                                tracing::warn!(error = %err, "reclaiming the space of compacted packs failed");
                            }
                        }
                        Err(err) => tracing::warn!(error = %err, "compaction failed"),
                    }
                }
            })
            .map_err(|err| StorageError::Io(format!("spawn compactor thread: {err}")))?;
        Ok(Self {
            inner,
            compact_on_append: options.compact_on_append,
            writer: jobs_tx,
            _compactor: compactor,
        })
    }

    /// Compacts now: moves the packs of every hour that ended before
    /// `sealed_before` into columnar segments (the background compactor does
    /// this every 30 s for hours that ended two minutes ago), then flushes
    /// and compacts the underlying LSM trees so that disk space is returned.
    pub fn compact_now(&self, sealed_before: i64) -> Result<(), StorageError> {
        self.inner.compact(sealed_before, usize::MAX)?;
        self.inner.reclaim()?;
        let tables = &self.inner.tables;
        for keyspace in [&tables.heads, &tables.columns] {
            keyspace.major_compact()?;
        }
        Ok(())
    }

    /// Bytes on disk by part: the journal, then each keyspace.
    pub fn disk_usage(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let mut parts = vec![("journal".to_owned(), self.inner.db.journal_disk_space()?)];
        for keyspace in self.inner.keyspaces() {
            parts.push((keyspace.name().to_string(), keyspace.disk_space()));
        }
        Ok(parts)
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

/// Version of the on-disk layout; a store written with another one is refused.
const FORMAT_VERSION: u32 = 1;

impl Inner {
    fn keyspaces(&self) -> [&Keyspace; 7] {
        let t = &self.tables;
        [
            &t.packs,
            &t.pack_ids,
            &t.heads,
            &t.columns,
            &self.sites,
            &self.keys,
            &self.meta,
        ]
    }

    /// Compacts the packs of at most `max_hours` sealed hours; returns how many.
    fn compact(&self, sealed_before: i64, max_hours: usize) -> Result<usize, StorageError> {
        let _guard = self.maintenance.lock().unwrap_or_else(|e| e.into_inner());
        let started = std::time::Instant::now();
        let done = segments::compact(&self.tables, sealed_before, max_hours)?;
        if done.hours > 0 {
            tracing::info!(
                hours = done.hours,
                events = done.events,
                millis = started.elapsed().as_millis() as u64,
                "packs compacted into segments"
            );
        }
        Ok(done.hours)
    }

    /// Returns the disk space of compacted packs: flushes every keyspace (a
    /// journal file goes once nothing unflushed is in it) and compacts the
    /// packs and their ids, where the compactor left tombstones. Segments are
    /// left to the LSM tree's own compaction.
    fn reclaim(&self) -> Result<(), StorageError> {
        for keyspace in self.keyspaces() {
            keyspace.rotate_memtable_and_wait()?;
        }
        for keyspace in [&self.tables.packs, &self.tables.pack_ids] {
            keyspace.major_compact()?;
        }
        Ok(())
    }

    /// Stamps a new store with [`FORMAT_VERSION`], or checks an existing one.
    fn check_format(&self) -> Result<(), StorageError> {
        match self.meta.get("format_version")? {
            Some(raw) => {
                let version = <[u8; 4]>::try_from(raw.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StorageError::Corrupt("format_version".into()))?;
                if version != FORMAT_VERSION {
                    return Err(StorageError::Io(format!(
                        "the data directory has layout version {version}, this tally reads version {FORMAT_VERSION}"
                    )));
                }
                Ok(())
            }
            None => {
                let mut batch = self.durable_batch();
                batch.insert(
                    &self.meta,
                    "format_version",
                    FORMAT_VERSION.to_be_bytes().to_vec(),
                );
                Ok(batch.commit()?)
            }
        }
    }

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

    /// Rebuilds the visit state from the events of the last
    /// [`VISIT_STATE_MICROS`], so visits continue across a restart.
    fn load_visits(&self) -> Result<(), StorageError> {
        let now = crate::domain::now_micros();
        let nums: Vec<u32> = {
            let sites = self.sites_cache.read().unwrap_or_else(|e| e.into_inner());
            sites.values().map(|(num, _)| *num).collect()
        };
        let mut visits = self.visits.lock().unwrap_or_else(|e| e.into_inner());
        let mut replayed = 0usize;
        for num in nums {
            // Events up to a day ahead are accepted, so look that far too.
            segments::scan_with(
                &self.tables,
                num,
                now - VISIT_STATE_MICROS,
                now + 86_400_000_000,
                |chunk| {
                    for event in &chunk {
                        let (state, touched) = visits.by_visitor.entry((num, event.visitor)).or_default();
                        sessions::replay(state, event);
                        *touched = now;
                    }
                    replayed += chunk.len();
                    true
                },
            )?;
        }
        visits.last_sweep = now;
        tracing::info!(
            events = replayed,
            visitors = visits.by_visitor.len(),
            "visit state rebuilt"
        );
        Ok(())
    }

    fn cache_site(&self, num: u32, site: SiteRecord) {
        let mut sites = self.sites_cache.write().unwrap_or_else(|e| e.into_inner());
        sites.insert(site.site_id.clone(), (num, site));
    }

    fn durable_batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(Some(PersistMode::SyncData))
    }
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
    #[tracing::instrument(name = "store.append", skip_all, fields(site = %site, events = events.len()))]
    async fn append(
        &self,
        site: &SiteId,
        events: &[StoredEvent],
    ) -> Result<Vec<AppendOutcome>, StorageError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let site_num = self
            .site_num(site)
            .ok_or_else(|| StorageError::UnknownSite(site.to_string()))?;
        let events = events
            .iter()
            .map(|event| events::PreparedEvent::new(site_num, event))
            .collect::<Result<Vec<_>, _>>()?;
        let (reply, outcome) = oneshot::channel();
        crate::metrics::metrics()
            .write_queue
            .fetch_add(events.len() as i64, std::sync::atomic::Ordering::Relaxed);
        let job = events::WriteJob { events, reply };
        self.writer
            .send(job)
            .await
            .map_err(|_| StorageError::Unavailable("writer stopped".into()))?;
        let outcomes = outcome
            .await
            .map_err(|_| StorageError::Unavailable("writer stopped".into()))??;
        if self.compact_on_append {
            self.blocking(|inner| inner.compact(i64::MAX, usize::MAX).map(drop))
                .await?;
        }
        Ok(outcomes)
    }

    fn scan(&self, site: &SiteId, from_micros: i64, to_micros: i64) -> EventChunks {
        let (tx, rx) = mpsc::channel(4);
        if let Some(site_num) = self.site_num(site) {
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || {
                let sent = |chunk| tx.blocking_send(Ok(chunk)).is_ok();
                if let Err(err) = segments::scan_with(&inner.tables, site_num, from_micros, to_micros, sent) {
                    let _ = tx.blocking_send(Err(err));
                }
            });
        }
        Box::pin(ReceiverStream::new(rx))
    }

    fn column_batches(
        &self,
        site: &SiteId,
        from_micros: i64,
        to_micros: i64,
    ) -> Option<Result<Vec<Box<dyn ColumnBatch>>, StorageError>> {
        let Some(site_num) = self.site_num(site) else {
            return Some(Ok(Vec::new()));
        };
        Some(segments::column_batches(
            &self.inner.tables,
            site_num,
            from_micros,
            to_micros,
        ))
    }

    #[tracing::instrument(name = "store.erase", skip_all, fields(site = %site))]
    async fn erase(&self, site: &SiteId, who: &Erase) -> Result<u64, StorageError> {
        let site_num = self
            .site_num(site)
            .ok_or_else(|| StorageError::UnknownSite(site.to_string()))?;
        let who = who.clone();
        self.blocking(move |inner| {
            let _guard = inner.maintenance.lock().unwrap_or_else(|e| e.into_inner());
            let everything = (i64::MIN / 2, i64::MAX / 2);
            match who {
                Erase::Visitor(visitor) => {
                    segments::rewrite(&inner.tables, site_num, everything.0, everything.1, |e| {
                        e.visitor == visitor
                    })
                }
                Erase::User(user) => {
                    // First the visitor ids that ever carried the user id, then
                    // every event of those visitors or with the user id.
                    let mut visitors = std::collections::HashSet::new();
                    segments::scan_with(&inner.tables, site_num, everything.0, everything.1, |chunk| {
                        visitors.extend(chunk.iter().filter(|e| e.user_id == user).map(|e| e.visitor));
                        true
                    })?;
                    segments::rewrite(&inner.tables, site_num, everything.0, everything.1, |e| {
                        e.user_id == user || visitors.contains(&e.visitor)
                    })
                }
            }
        })
        .await
    }

    #[tracing::instrument(name = "store.expire", skip_all, fields(site = %site))]
    async fn expire(&self, site: &SiteId, before_micros: i64) -> Result<u64, StorageError> {
        let site_num = self
            .site_num(site)
            .ok_or_else(|| StorageError::UnknownSite(site.to_string()))?;
        self.blocking(move |inner| {
            let _guard = inner.maintenance.lock().unwrap_or_else(|e| e.into_inner());
            segments::expire(&inner.tables, site_num, before_micros)
        })
        .await
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

    async fn salt(&self, name: &str) -> Result<[u8; 32], StorageError> {
        let key = format!("{SALT_PREFIX}{name}");
        self.blocking(move |inner| {
            let _guard = inner.meta_lock.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(raw) = inner.meta.get(&key)? {
                return raw
                    .as_ref()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt(format!("salt {key}")));
            }
            let salt: [u8; 32] = rand::random();
            let mut batch = inner.durable_batch();
            batch.insert(&inner.meta, key, salt.to_vec());
            batch.commit()?;
            Ok(salt)
        })
        .await
    }

    async fn salt_names(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let prefix = format!("{SALT_PREFIX}{prefix}");
        self.blocking(move |inner| {
            let mut names = Vec::new();
            for guard in inner.meta.prefix(&prefix) {
                let key = guard.key()?;
                names.push(String::from_utf8_lossy(&key[SALT_PREFIX.len()..]).into_owned());
            }
            Ok(names)
        })
        .await
    }

    async fn drop_salts(&self, names: &[String]) -> Result<(), StorageError> {
        let keys: Vec<String> = names.iter().map(|name| format!("{SALT_PREFIX}{name}")).collect();
        self.blocking(move |inner| {
            let _guard = inner.meta_lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut batch = inner.durable_batch();
            for key in keys {
                batch.remove(&inner.meta, key);
            }
            Ok(batch.commit()?)
        })
        .await
    }
}

#[async_trait]
impl SessionStore for EmbeddedStore {
    #[tracing::instrument(name = "store.sessionize", skip_all, fields(site = %site, events = events.len()))]
    async fn sessionize(
        &self,
        site: &SiteId,
        timeout_micros: i64,
        events: &mut [StoredEvent],
    ) -> Result<(), StorageError> {
        let num = self
            .site_num(site)
            .ok_or_else(|| StorageError::UnknownSite(site.to_string()))?;
        let order = sessions::batch_order(events);
        let now = crate::domain::now_micros();
        let mut visits = self.inner.visits.lock().unwrap_or_else(|e| e.into_inner());
        visits.sweep(now);
        for i in order {
            let (state, touched) = visits.by_visitor.entry((num, events[i].visitor)).or_default();
            sessions::assign(state, &mut events[i], timeout_micros);
            *touched = now;
        }
        Ok(())
    }
}

/// Prefix of salt names in the `meta` keyspace.
const SALT_PREFIX: &str = "salt/";

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;
    use crate::domain::{PropValue, StoredMoney, StoredProp};

    #[test]
    fn visit_state_of_old_events_goes_soon_after_they_arrive() {
        let now = 1_000 * 86_400_000_000;
        let minute = 60_000_000;
        let state = |last: i64| VisitorVisits {
            visits: vec![crate::sessions::VisitState {
                id: 1,
                start: last,
                first: last,
                last,
                campaign: String::new(),
                client_session: String::new(),
            }],
        };
        let mut visits = Visits::default();
        let month = 30 * 86_400_000_000;
        for (visitor, last, touched) in [
            (1, now - month, now - 6 * minute),          // imported 6 minutes ago: gone
            (2, now - month, now - 2 * minute),          // imported 2 minutes ago: kept
            (3, now - 10 * minute, now - 10 * minute),   // live, idle 10 minutes: kept
            (4, now - 180 * minute, now - 180 * minute), // idle past the window: gone
        ] {
            visits.by_visitor.insert((1, visitor), (state(last), touched));
        }
        visits.sweep(now);
        let mut kept: Vec<u64> = visits.by_visitor.keys().map(|(_, v)| *v).collect();
        kept.sort();
        assert_eq!(kept, [2, 3]);
    }

    const HOUR: i64 = 3_600_000_000;
    /// An hour boundary three days ago: inside the dedup window.
    fn base() -> i64 {
        (crate::domain::now_micros() - 3 * 24 * HOUR).div_euclid(HOUR) * HOUR
    }

    /// Events over `hours` hours, with most kinds of fields set.
    fn sample_events(hours: i64) -> Vec<StoredEvent> {
        let base = base();
        (0..hours * 40)
            .map(|n| {
                let ts = base + n * HOUR / 40 + n * 7;
                // UUIDv7 ids from the event time, and some that are not.
                let id = match n % 5 {
                    0 => uuid::Uuid::from_u128(n as u128 + 1),
                    _ => uuid::Builder::from_unix_timestamp_millis((ts / 1000) as u64, &[n as u8; 10])
                        .into_uuid(),
                };
                let mut e = StoredEvent {
                    event_id: id.as_bytes().to_vec(),
                    ts_micros: ts,
                    received_micros: ts + 1500 - n,
                    kind: (n % 3 + 1) as i32,
                    name: format!("e{}", n % 4),
                    path: format!("/page/{}", n % 9),
                    visitor: (n % 11) as u64 * 0x1234_5678_9abc,
                    session: (n % 13 + 1) as u64,
                    session_start: ts - n,
                    country: ["US", "DE", ""][n as usize % 3].into(),
                    bot: n % 17 == 0,
                    ..Default::default()
                };
                if n % 4 == 0 {
                    e.properties.insert(
                        "plan".into(),
                        StoredProp {
                            value: Some(PropValue::Str("pro".into())),
                        },
                    );
                    e.revenue = Some(StoredMoney {
                        currency: "EUR".into(),
                        units: n,
                        nanos: 5,
                    });
                }
                e
            })
            .collect()
    }

    async fn scan_all(store: &EmbeddedStore, site: &SiteId) -> Vec<StoredEvent> {
        let chunks: Vec<Vec<StoredEvent>> = store
            .scan(site, i64::MIN / 2, i64::MAX / 2)
            .try_collect()
            .await
            .unwrap();
        chunks.concat()
    }

    async fn with_site(dir: &Path) -> (EmbeddedStore, SiteId) {
        let store = EmbeddedStore::open(dir).unwrap();
        let record = SiteRecord {
            site_id: "a".into(),
            ..Default::default()
        };
        let _ = crate::storage::SiteStore::insert_site(&store, record)
            .await
            .unwrap();
        (store, SiteId::parse("a").unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compaction_stopped_after_any_hour_loses_and_duplicates_nothing() {
        let hours = 4;
        let sent = sample_events(hours);
        let mut expected = sent.clone();
        expected.sort_by(|a, b| (a.ts_micros, &a.event_id).cmp(&(b.ts_micros, &b.event_id)));
        // Every other event first, compacted; the rest arrive late, into
        // hours that already have a segment.
        let (early, late): (Vec<_>, Vec<_>) = sent.iter().cloned().enumerate().partition(|(i, _)| i % 2 == 0);
        let strip = |v: Vec<(usize, StoredEvent)>| v.into_iter().map(|(_, e)| e).collect::<Vec<_>>();
        let (early, late) = (strip(early), strip(late));
        for stop_after in 0..=hours as usize {
            let dir = tempfile::tempdir().unwrap();
            {
                let (store, site) = with_site(dir.path()).await;
                store.append(&site, &early).await.unwrap();
                store.inner.compact(i64::MAX, usize::MAX).unwrap();
                store.append(&site, &late).await.unwrap();
                // The store stops after `stop_after` hours, as a crash
                // between two hour batches would leave it.
                store.inner.compact(i64::MAX, stop_after).unwrap();
            }
            let (store, site) = with_site(dir.path()).await;
            assert!(
                scan_all(&store, &site).await == expected,
                "stopped after {stop_after} hours"
            );
            let again = store.append(&site, &sent).await.unwrap();
            assert!(again.iter().all(|o| *o == AppendOutcome::Duplicate));
            store.compact_now(i64::MAX).unwrap();
            assert!(scan_all(&store, &site).await == expected);
            let batches = store
                .column_batches(&site, i64::MIN / 2, i64::MAX / 2)
                .unwrap()
                .unwrap();
            assert_eq!(
                batches.len(),
                hours as usize,
                "one segment per hour, no packs left"
            );
            assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), sent.len());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_journal_stays_near_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site) = with_site(dir.path()).await;
        let journal = |store: &EmbeddedStore| store.disk_usage().unwrap()[0].1;
        // 160 MiB of events, in group commits that also bump the pack
        // sequence in the small `meta` keyspace, as ingest does.
        let blob = "x".repeat(8 << 10);
        let base = base();
        for batch in 0..200i64 {
            let events: Vec<StoredEvent> = (0..100i64)
                .map(|n| {
                    let n = batch * 100 + n;
                    let mut e = StoredEvent {
                        event_id: uuid::Uuid::from_u128(n as u128 + 1).as_bytes().to_vec(),
                        ts_micros: base + n * 1_000,
                        kind: 1,
                        ..Default::default()
                    };
                    e.properties.insert(
                        "blob".into(),
                        StoredProp {
                            value: Some(PropValue::Str(blob.clone())),
                        },
                    );
                    e
                })
                .collect();
            store.append(&site, &events).await.unwrap();
        }
        // Flushes run in the background: a journal file goes once they are
        // done. (Within the compactor's first 30 s, whose reclaim would
        // flush everything.)
        let cap = JOURNAL_BYTES + (32 << 20);
        let waited = std::time::Instant::now();
        while journal(&store) > cap && waited.elapsed() < std::time::Duration::from_secs(10) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            journal(&store) <= cap,
            "journal of {} MiB after 160 MiB of events",
            journal(&store) >> 20
        );
        assert_eq!(scan_all(&store, &site).await.len(), 20_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn erasure_and_expiry_reach_compacted_events() {
        let dir = tempfile::tempdir().unwrap();
        let (store, site) = with_site(dir.path()).await;
        let sent = sample_events(3);
        store.append(&site, &sent).await.unwrap();
        store.compact_now(i64::MAX).unwrap();
        let visitor = sent[1].visitor;
        let erased = store.erase(&site, &Erase::Visitor(visitor)).await.unwrap();
        assert_eq!(
            erased as usize,
            sent.iter().filter(|e| e.visitor == visitor).count()
        );
        // The cut falls inside the second hour: its earlier minutes go too.
        let cut = sent[0].ts_micros + HOUR + HOUR / 2;
        let expired = store.expire(&site, cut).await.unwrap();
        let kept: Vec<&StoredEvent> = sent.iter().filter(|e| e.visitor != visitor).collect();
        let expected_expired = kept
            .iter()
            .filter(|e| e.ts_micros.div_euclid(60_000_000) * 60_000_000 < cut)
            .count();
        assert_eq!(expired as usize, expected_expired);
        let left = scan_all(&store, &site).await;
        assert_eq!(left.len(), kept.len() - expected_expired);
        assert!(left.iter().all(|e| e.visitor != visitor && e.ts_micros >= cut));
        let again = store.append(&site, &[sent[1].clone()]).await.unwrap();
        assert_eq!(again, vec![AppendOutcome::Duplicate], "erased ids stay known");
        drop(store);
        let (store, site) = with_site(dir.path()).await;
        let again = store
            .append(&site, &[sent[1].clone(), left[0].clone()])
            .await
            .unwrap();
        assert_eq!(
            again,
            vec![AppendOutcome::Duplicate, AppendOutcome::Duplicate],
            "erased and compacted ids stay known after a restart"
        );
        let erased_hours: std::collections::BTreeSet<i64> = sent
            .iter()
            .filter(|e| e.visitor == visitor)
            .map(|e| e.ts_micros.div_euclid(HOUR))
            .collect();
        let pack_ids = store.inner.tables.pack_ids.iter().count();
        assert_eq!(
            pack_ids,
            erased_hours.len(),
            "erased ids are kept per hour, the rest in segments"
        );
    }
}
