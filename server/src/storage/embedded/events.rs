//! Raw events of the embedded store: packed, group-committed, deduplicated in memory.
//!
//! One writer thread does group commit: it takes every append queued while the
//! previous sync ran, drops duplicates (the in-memory [`DedupWindow`]), sorts
//! the rest by (site, minute, timestamp, id) and writes one *pack* per site and
//! minute, as one journal batch that it syncs once (`fdatasync`). The commit
//! window is therefore one sync: nothing waits on a timer, and an acknowledged
//! event is on disk. Writing a pack per minute instead of a key per event keeps
//! the writer's work per event to a hash look-up and a copy.
//!
//! Keyspaces (integers big-endian, times sign-flipped so bytes sort as time):
//! - `events`: `site_num u32 | minute u64 | pack_seq u64` -> length-delimited
//!   `StoredEvent`s of that minute, sorted by (timestamp, id); LZ4 blocks on disk.
//!   Packs of sealed hours move into columnar segments (see [`super::segments`]).
//! - `pack_ids`: `minute u64 | site_num u32 | pack_seq u64` -> the packs' event
//!   ids, 16 bytes each: read at start-up to rebuild the dedup window. A
//!   compaction deletes the entries of the packs it moves (the segment's id
//!   column takes over); erasing events from a segment keeps their ids here,
//!   under `pack_seq` [`u64::MAX`] of the hour's first minute.
//! - `meta`: `next_pack_seq`.

use std::collections::HashSet;

use fjall::{Database, Keyspace, PersistMode};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::dedup::{DAY_MICROS, DedupWindow, fingerprint};
use super::segments::{self, Tables};
use crate::domain::{StoredEvent, now_micros};
use crate::storage::{AppendOutcome, StorageError};

/// Most events one group commit takes before it syncs.
const MAX_GROUP_EVENTS: usize = 64 * 1024;
/// Events per chunk of a scan.
pub const SCAN_CHUNK: usize = 4096;
pub const MINUTE_MICROS: i64 = 60_000_000;
const NEXT_PACK_SEQ: &str = "next_pack_seq";

/// An event encoded on the caller's task, so the writer only dedups and copies.
pub struct PreparedEvent {
    site_num: u32,
    id: [u8; 16],
    ts_micros: i64,
    fingerprint: u64,
    /// The event, length-delimited.
    bytes: Vec<u8>,
}

impl PreparedEvent {
    /// Encodes an event of site `site_num`.
    pub fn new(site_num: u32, event: &StoredEvent) -> Result<Self, StorageError> {
        let id: [u8; 16] = event
            .event_id
            .as_slice()
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("event id of {} bytes", event.event_id.len())))?;
        Ok(Self {
            site_num,
            id,
            ts_micros: event.ts_micros,
            fingerprint: fingerprint(site_num, &id),
            bytes: event.encode_length_delimited_to_vec(),
        })
    }

    fn minute(&self) -> i64 {
        self.ts_micros.div_euclid(MINUTE_MICROS)
    }
}

/// One caller's append, answered once it is durable.
pub struct WriteJob {
    /// The events, in the caller's order.
    pub events: Vec<PreparedEvent>,
    /// Where the outcomes go.
    pub reply: oneshot::Sender<Result<Vec<AppendOutcome>, StorageError>>,
}

/// Free space the writer leaves on the store's disk.
///
/// The database cannot take a failed write back: after a write that ran out
/// of space it refuses every later one until the process restarts. So the
/// writer checks the free space (one `statvfs`) before each group commit and
/// refuses the group, retryably, while less than the reserve is left; the
/// reserve also leaves room for flushes and compactions. Appends go through
/// again as soon as space is freed.
pub struct DiskReserve {
    dir: std::path::PathBuf,
    bytes: u64,
}

impl DiskReserve {
    /// A reserve of `bytes` on the file system of `dir`.
    pub fn new(dir: &std::path::Path, bytes: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            bytes,
        }
    }

    /// `Unavailable` when less than the reserve is free.
    fn check(&self) -> Result<(), StorageError> {
        if self.bytes == 0 {
            return Ok(());
        }
        let stat = rustix::fs::statvfs(&self.dir)
            .map_err(|err| StorageError::Io(format!("statvfs {}: {err}", self.dir.display())))?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < self.bytes {
            crate::metrics::metrics()
                .disk_full_refusals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(StorageError::Unavailable(format!(
                "disk nearly full: {} MiB free under {}, {} MiB kept in reserve (min_free_disk_mb); \
                 nothing was stored, retry once space is freed",
                free >> 20,
                self.dir.display(),
                self.bytes >> 20
            )));
        }
        Ok(())
    }
}

/// The writer thread's state.
pub struct Writer {
    db: Database,
    events: Keyspace,
    pack_ids: Keyspace,
    meta: Keyspace,
    dedup: DedupWindow,
    next_pack_seq: u64,
    reserve: DiskReserve,
}

impl Writer {
    /// Loads the pack sequence and rebuilds the dedup window from `pack_ids`
    /// and the id columns of the segments.
    pub fn recover(
        tables: &Tables,
        meta: Keyspace,
        window_days: i64,
        reserve: DiskReserve,
    ) -> Result<Self, StorageError> {
        let (db, events, pack_ids) = (tables.db.clone(), tables.packs.clone(), tables.pack_ids.clone());
        let next_pack_seq = match meta.get(NEXT_PACK_SEQ)? {
            Some(raw) => u64::from_be_bytes(
                raw.as_ref()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt(NEXT_PACK_SEQ.into()))?,
            ),
            None => 1,
        };
        let mut dedup = DedupWindow::new(window_days);
        let first_minute = dedup.first_day(now_micros()) * (DAY_MICROS / MINUTE_MICROS);
        for guard in pack_ids.range(encode_i64(first_minute).to_be_bytes()..) {
            let (key, ids) = guard.into_inner()?;
            let (Some(minute), Some(site_num)) = (key.get(..8), key.get(8..12)) else {
                return Err(StorageError::Corrupt("pack id key".into()));
            };
            let ts = decode_i64(u64::from_be_bytes(minute.try_into().expect("8 bytes"))) * MINUTE_MICROS;
            let site_num = u32::from_be_bytes(site_num.try_into().expect("4 bytes"));
            for id in ids.chunks_exact(16) {
                dedup.load(fingerprint(site_num, id.try_into().expect("16 bytes")), ts);
            }
        }
        segments::ids_since(tables, first_minute * MINUTE_MICROS, |site_num, id, ts| {
            dedup.load(fingerprint(site_num, &id), ts);
        })?;
        dedup.finish_loading();
        tracing::info!(
            ids = dedup.len(),
            mib = dedup.heap_bytes() >> 20,
            window_days,
            "dedup window loaded"
        );
        Ok(Self {
            db,
            events,
            pack_ids,
            meta,
            dedup,
            next_pack_seq,
            reserve,
        })
    }

    /// Serves appends until every sender is gone.
    pub fn run(mut self, mut jobs: mpsc::Receiver<WriteJob>) {
        let mut group = Vec::new();
        while let Some(first) = jobs.blocking_recv() {
            let mut queued_events = first.events.len();
            group.push(first);
            while queued_events < MAX_GROUP_EVENTS {
                let Ok(next) = jobs.try_recv() else { break };
                queued_events += next.events.len();
                group.push(next);
            }
            let result = self.commit_group(&group);
            crate::metrics::metrics()
                .write_queue
                .fetch_sub(queued_events as i64, std::sync::atomic::Ordering::Relaxed);
            match result {
                Ok(outcomes) => {
                    for (job, outcome) in group.drain(..).zip(outcomes) {
                        let _ = job.reply.send(Ok(outcome));
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, events = queued_events, "group commit failed");
                    for job in group.drain(..) {
                        let reply = match &err {
                            StorageError::Unavailable(message) => StorageError::Unavailable(message.clone()),
                            other => StorageError::Io(other.to_string()),
                        };
                        let _ = job.reply.send(Err(reply));
                    }
                }
            }
        }
    }

    /// Deduplicates and writes one group in a single synced batch. The dedup
    /// window learns the new ids only once they are durable.
    fn commit_group(&mut self, jobs: &[WriteJob]) -> Result<Vec<Vec<AppendOutcome>>, StorageError> {
        self.dedup.prune(now_micros());
        let mut new_in_group: HashSet<u64> = HashSet::new();
        let mut accepted: Vec<&PreparedEvent> = Vec::new();
        let outcomes = jobs
            .iter()
            .map(|job| {
                job.events
                    .iter()
                    .map(|event| {
                        if self.dedup.contains(event.fingerprint) || !new_in_group.insert(event.fingerprint) {
                            return AppendOutcome::Duplicate;
                        }
                        accepted.push(event);
                        AppendOutcome::Stored
                    })
                    .collect()
            })
            .collect();
        if accepted.is_empty() {
            return Ok(outcomes);
        }
        self.reserve.check()?;
        accepted.sort_unstable_by_key(|e| (e.site_num, e.minute(), e.ts_micros, e.id));

        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut seq = self.next_pack_seq;
        for pack in accepted.chunk_by(|a, b| (a.site_num, a.minute()) == (b.site_num, b.minute())) {
            let (site_num, minute) = (pack[0].site_num, pack[0].minute());
            let mut bytes = Vec::with_capacity(pack.iter().map(|e| e.bytes.len()).sum());
            let mut ids = Vec::with_capacity(pack.len() * 16);
            for event in pack {
                bytes.extend_from_slice(&event.bytes);
                ids.extend_from_slice(&event.id);
            }
            batch.insert(&self.events, pack_key(site_num, minute, seq).to_vec(), bytes);
            batch.insert(&self.pack_ids, pack_ids_key(minute, site_num, seq).to_vec(), ids);
            seq += 1;
        }
        batch.insert(&self.meta, NEXT_PACK_SEQ, seq.to_be_bytes().to_vec());
        batch.commit()?;
        self.next_pack_seq = seq;
        for event in accepted {
            self.dedup.insert(event.fingerprint, event.ts_micros);
        }
        Ok(outcomes)
    }
}

/// Decodes the length-delimited events of one pack, appending them to `out`.
pub fn decode_pack(mut bytes: &[u8], out: &mut Vec<StoredEvent>) -> Result<(), StorageError> {
    while !bytes.is_empty() {
        let event = StoredEvent::decode_length_delimited(&mut bytes)
            .map_err(|err| StorageError::Corrupt(format!("event pack: {err}")))?;
        out.push(event);
    }
    Ok(())
}

/// The minute of a pack key.
pub fn pack_minute(key: &[u8]) -> Result<i64, StorageError> {
    key.get(4..12)
        .map(|m| decode_i64(u64::from_be_bytes(m.try_into().expect("8 bytes"))))
        .ok_or_else(|| StorageError::Corrupt("pack key".into()))
}

/// Signed integers as big-endian-sortable unsigned ones.
pub fn encode_i64(value: i64) -> u64 {
    (value as u64) ^ (1 << 63)
}

/// The inverse of [`encode_i64`].
pub fn decode_i64(encoded: u64) -> i64 {
    (encoded ^ (1 << 63)) as i64
}

pub fn pack_key(site_num: u32, minute: i64, seq: u64) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..4].copy_from_slice(&site_num.to_be_bytes());
    key[4..12].copy_from_slice(&encode_i64(minute).to_be_bytes());
    key[12..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub fn pack_ids_key(minute: i64, site_num: u32, seq: u64) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..8].copy_from_slice(&encode_i64(minute).to_be_bytes());
    key[8..12].copy_from_slice(&site_num.to_be_bytes());
    key[12..].copy_from_slice(&seq.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_integers_sort_as_bytes() {
        let values = [i64::MIN, -1_000_000, -1, 0, 1, 1_700_000_000_000_000, i64::MAX];
        let encoded: Vec<[u8; 8]> = values.iter().map(|t| encode_i64(*t).to_be_bytes()).collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]));
        for v in values {
            assert_eq!(decode_i64(encode_i64(v)), v);
        }
    }

    #[test]
    fn pack_keys_sort_by_site_then_minute_then_sequence() {
        let keys = [
            pack_key(1, -5, 9),
            pack_key(1, 0, 1),
            pack_key(1, 0, 2),
            pack_key(1, 7, 0),
            pack_key(2, -9, 0),
        ];
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }
}
