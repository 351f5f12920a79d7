//! Sealed events of the embedded store as immutable columnar *segments*, one
//! per (site, UTC hour), built from the minute packs by a compactor; and every
//! read and delete, which see the segments and the packs not yet compacted.
//!
//! Why columns: a report that no rollup covers reads a few fields of millions
//! of events. Decoding whole Protobuf events cost about 1.8 µs each; a segment
//! lets it read only the columns it needs (see [`crate::storage::columns`]),
//! and dictionary codes let it test a filter once per distinct value. The
//! same encoding is what makes events small on disk: most fields take a byte
//! or two per event before compression, and LZ4 folds the runs.
//!
//! Why hours: an hour is a few thousand to a few hundred thousand events for
//! the sites this store is meant for, large enough for dictionaries and LZ4 to
//! pay off, and small enough that merging a late event into its hour (decode
//! and rewrite one segment) stays cheap, and that reports see the current
//! hour's packs only.
//!
//! Keyspaces (integers big-endian, times sign-flipped so bytes sort as time):
//! - `segment_heads`: `site_num u32 | hour u64` -> [`Head`]: event count,
//!   timestamp bounds and the names of the stored columns.
//! - `segment_columns`: `site_num u32 | hour u64 | column name` -> one column,
//!   LZ4-compressed (size prepended): `ts` (zig-zag varint deltas), `received`
//!   (zig-zag varint offset from `ts`), `id` (the UUIDv7 millisecond prefix as a
//!   zig-zag varint offset from `ts`, then the other 10 bytes) and the
//!   dictionary columns of [`crate::storage::columns`]; an all-default
//!   dictionary column is not stored.
//!
//! Events in a segment are sorted by (timestamp, id).
//!
//! Crash safety: a compaction writes the new segment (head and columns),
//! deletes the columns the old one had and the new one lacks, and deletes
//! exactly the packs it read, in one atomic journal batch; a crash
//! leaves either the packs or the segment that holds their events, never both
//! or neither. Compaction, erasure and expiry run one at a time (the store's
//! maintenance lock); the writer only ever adds packs under new keys. Reads
//! use one snapshot of every keyspace, so they never see a compaction half
//! done. The dedup window is rebuilt at start-up from `pack_ids` (packs) and
//! from the `id` column of the segments of its days: a compaction deletes the
//! `pack_ids` entries of the packs it moves in the same batch.

use std::collections::BTreeSet;

use fjall::{Database, Keyspace, OwnedWriteBatch, PersistMode, Readable, Snapshot};

use super::events::{
    MINUTE_MICROS, SCAN_CHUNK, decode_i64, decode_pack, encode_i64, pack_ids_key, pack_key, pack_minute,
};
use crate::domain::StoredEvent;
use crate::storage::StorageError;
use crate::storage::columns::{Column, ColumnBatch, EventsBatch, fixed_names, property_column};

/// Micros per hour.
pub const HOUR_MICROS: i64 = 3_600_000_000;
const MINUTES_PER_HOUR: i64 = 60;

/// The keyspaces that hold a store's events.
#[derive(Clone)]
pub struct Tables {
    /// The database, for snapshots and batches.
    pub db: Database,
    /// Minute packs written by the writer (`events`).
    pub packs: Keyspace,
    /// Segment heads.
    pub heads: Keyspace,
    /// Segment columns.
    pub columns: Keyspace,
    /// Event ids of the packs, for the dedup window (see [`super::events`]).
    pub pack_ids: Keyspace,
}

/// What a segment holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    /// Events.
    pub len: usize,
    /// Earliest timestamp.
    pub min_ts: i64,
    /// Latest timestamp.
    pub max_ts: i64,
    /// The stored columns.
    pub columns: Vec<String>,
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("segment {what}"))
}

fn varint(bytes: &mut &[u8], what: &str) -> Result<u64, StorageError> {
    prost::encoding::decode_varint(bytes).map_err(|_| corrupt(what))
}

impl Head {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_varint(self.len as u64, &mut out);
        prost::encoding::encode_varint(zigzag(self.min_ts), &mut out);
        prost::encoding::encode_varint(zigzag(self.max_ts), &mut out);
        prost::encoding::encode_varint(self.columns.len() as u64, &mut out);
        for name in &self.columns {
            prost::encoding::encode_varint(name.len() as u64, &mut out);
            out.extend_from_slice(name.as_bytes());
        }
        out
    }

    fn decode(mut bytes: &[u8]) -> Result<Self, StorageError> {
        let bytes = &mut bytes;
        let len = varint(bytes, "head")? as usize;
        let min_ts = unzigzag(varint(bytes, "head")?);
        let max_ts = unzigzag(varint(bytes, "head")?);
        let count = varint(bytes, "head")? as usize;
        let mut columns = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let n = varint(bytes, "head")? as usize;
            let name = bytes.get(..n).ok_or_else(|| corrupt("head"))?;
            columns.push(String::from_utf8(name.to_vec()).map_err(|_| corrupt("head"))?);
            *bytes = &bytes[n..];
        }
        Ok(Self {
            len,
            min_ts,
            max_ts,
            columns,
        })
    }
}

fn head_key(site_num: u32, hour: i64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&site_num.to_be_bytes());
    key[4..].copy_from_slice(&encode_i64(hour).to_be_bytes());
    key
}

fn column_key(site_num: u32, hour: i64, name: &str) -> Vec<u8> {
    let mut key = head_key(site_num, hour).to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// A segment ready to store: its head and its named, compressed columns.
pub type Encoded = (Head, Vec<(String, Vec<u8>)>);

/// Encodes events sorted by (timestamp, id) as a segment's head and columns.
pub fn encode_segment(events: &[StoredEvent]) -> Result<Encoded, StorageError> {
    let mut ts = Vec::with_capacity(events.len() * 2);
    let mut received = Vec::with_capacity(events.len() * 4);
    let mut ids = Vec::with_capacity(events.len() * 12);
    let mut previous = 0i64;
    let mut keys = BTreeSet::new();
    for e in events {
        prost::encoding::encode_varint(zigzag(e.ts_micros.wrapping_sub(previous)), &mut ts);
        previous = e.ts_micros;
        prost::encoding::encode_varint(zigzag(e.received_micros.wrapping_sub(e.ts_micros)), &mut received);
        let id: &[u8; 16] = e
            .event_id
            .as_slice()
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("event id of {} bytes", e.event_id.len())))?;
        let mut millis = [0u8; 8];
        millis[2..].copy_from_slice(&id[..6]);
        let offset = (u64::from_be_bytes(millis) as i64).wrapping_sub(e.ts_micros.div_euclid(1000));
        prost::encoding::encode_varint(zigzag(offset), &mut ids);
        ids.extend_from_slice(&id[6..]);
        keys.extend(e.properties.keys().map(String::as_str));
    }
    let compress = |raw: &[u8]| lz4_flex::block::compress_prepend_size(raw);
    let mut columns = vec![
        ("ts".to_owned(), compress(&ts)),
        ("received".to_owned(), compress(&received)),
        ("id".to_owned(), compress(&ids)),
    ];
    let names = fixed_names()
        .map(str::to_owned)
        .chain(keys.into_iter().map(property_column));
    let mut raw = Vec::new();
    for name in names {
        let column = Column::build(&name, events);
        if column.all_default() {
            continue;
        }
        raw.clear();
        column.encode(&mut raw);
        columns.push((name, compress(&raw)));
    }
    let head = Head {
        len: events.len(),
        min_ts: events.iter().map(|e| e.ts_micros).min().unwrap_or_default(),
        max_ts: events.iter().map(|e| e.ts_micros).max().unwrap_or_default(),
        columns: columns.iter().map(|(name, _)| name.clone()).collect(),
    };
    Ok((head, columns))
}

/// One stored segment, read through a snapshot.
pub struct Segment {
    snapshot: Snapshot,
    columns: Keyspace,
    site_num: u32,
    hour: i64,
    head: Head,
}

impl Segment {
    fn raw(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        if !self.head.columns.iter().any(|c| c == name) {
            return Ok(None);
        }
        let stored = self
            .snapshot
            .get(&self.columns, column_key(self.site_num, self.hour, name))?
            .ok_or_else(|| corrupt(&format!("column {name} missing")))?;
        lz4_flex::block::decompress_size_prepended(&stored)
            .map(Some)
            .map_err(|err| corrupt(&format!("column {name}: {err}")))
    }

    fn varints(&self, name: &str) -> Result<Vec<i64>, StorageError> {
        let raw = self.raw(name)?.unwrap_or_default();
        let mut bytes = raw.as_slice();
        (0..self.head.len)
            .map(|_| varint(&mut bytes, name).map(unzigzag))
            .collect()
    }

    /// Every event's id, given every event's timestamp.
    fn ids(&self, ts: &[i64]) -> Result<Vec<[u8; 16]>, StorageError> {
        let raw_ids = self.raw("id")?.unwrap_or_default();
        let mut ids = raw_ids.as_slice();
        ts.iter()
            .map(|ts| {
                let offset = unzigzag(varint(&mut ids, "id")?);
                let millis = (ts.div_euclid(1000).wrapping_add(offset) as u64).to_be_bytes();
                let rest = ids.get(..10).ok_or_else(|| corrupt("id"))?;
                let mut id = [0u8; 16];
                id[..6].copy_from_slice(&millis[2..]);
                id[6..].copy_from_slice(rest);
                ids = &ids[10..];
                Ok(id)
            })
            .collect()
    }

    /// Every event, in (timestamp, id) order.
    pub fn events(&self) -> Result<Vec<StoredEvent>, StorageError> {
        let ts = self.timestamps()?;
        let received = self.varints("received")?;
        let ids = self.ids(&ts)?;
        let mut events = Vec::with_capacity(self.head.len);
        for ((ts, received), id) in ts.into_iter().zip(received).zip(ids) {
            events.push(StoredEvent {
                event_id: id.to_vec(),
                ts_micros: ts,
                received_micros: ts.wrapping_add(received),
                ..Default::default()
            });
        }
        for name in &self.head.columns {
            if matches!(name.as_str(), "ts" | "received" | "id") {
                continue;
            }
            self.column(name)?.apply_to(name, &mut events)?;
        }
        Ok(events)
    }
}

impl ColumnBatch for Segment {
    fn len(&self) -> usize {
        self.head.len
    }

    fn bounds(&self) -> (i64, i64) {
        (self.head.min_ts, self.head.max_ts)
    }

    fn timestamps(&self) -> Result<Vec<i64>, StorageError> {
        let mut previous = 0i64;
        let mut ts = self.varints("ts")?;
        for t in &mut ts {
            previous = previous.wrapping_add(*t);
            *t = previous;
        }
        Ok(ts)
    }

    fn column(&self, name: &str) -> Result<Column, StorageError> {
        match self.raw(name)? {
            Some(raw) => Column::decode(&raw, self.head.len),
            None => Ok(Column::defaults(self.head.len)),
        }
    }
}

/// Hands the site number, id and timestamp of every event in a segment of
/// an hour that ends after `from_micros` to `f` (for the dedup window).
pub fn ids_since(
    tables: &Tables,
    from_micros: i64,
    mut f: impl FnMut(u32, [u8; 16], i64),
) -> Result<(), StorageError> {
    let snapshot = tables.db.snapshot();
    let first_hour = from_micros.div_euclid(HOUR_MICROS);
    let mut sites = Vec::new();
    for guard in snapshot.iter(&tables.heads) {
        let key = guard.key()?;
        let site_num = key
            .get(..4)
            .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
            .ok_or_else(|| corrupt("head key"))?;
        if sites.last() != Some(&site_num) {
            sites.push(site_num);
        }
    }
    for site_num in sites {
        for segment in segments(&snapshot, tables, site_num, first_hour, i64::MAX / HOUR_MICROS)? {
            let ts = segment.timestamps()?;
            for (id, ts) in segment.ids(&ts)?.into_iter().zip(ts) {
                f(site_num, id, ts);
            }
        }
    }
    Ok(())
}

/// The segments of `site_num` for hours `first..=last`, in hour order.
fn segments(
    snapshot: &Snapshot,
    tables: &Tables,
    site_num: u32,
    first_hour: i64,
    last_hour: i64,
) -> Result<Vec<Segment>, StorageError> {
    let mut found = Vec::new();
    for guard in snapshot.range(
        &tables.heads,
        head_key(site_num, first_hour)..=head_key(site_num, last_hour),
    ) {
        let (key, value) = guard.into_inner()?;
        let hour = key
            .get(4..12)
            .map(|h| decode_i64(u64::from_be_bytes(h.try_into().expect("8 bytes"))))
            .ok_or_else(|| corrupt("head key"))?;
        found.push(Segment {
            snapshot: snapshot.clone(),
            columns: tables.columns.clone(),
            site_num,
            hour,
            head: Head::decode(&value)?,
        });
    }
    Ok(found)
}

/// The segments of `site_num` for the hours of a span of minutes.
fn segments_spanning(
    snapshot: &Snapshot,
    tables: &Tables,
    site_num: u32,
    (first_minute, last_minute): (i64, i64),
) -> Result<Vec<Segment>, StorageError> {
    segments(
        snapshot,
        tables,
        site_num,
        first_minute.div_euclid(MINUTES_PER_HOUR),
        last_minute.div_euclid(MINUTES_PER_HOUR),
    )
}

fn minute_span(from_micros: i64, to_micros: i64) -> (i64, i64) {
    (
        from_micros.div_euclid(MINUTE_MICROS),
        (to_micros - 1).div_euclid(MINUTE_MICROS),
    )
}

/// Collects whole hours of events and hands them on in scan-sized chunks.
struct Chunks<F> {
    from: i64,
    to: i64,
    chunk: Vec<StoredEvent>,
    emit: F,
}

impl<F: FnMut(Vec<StoredEvent>) -> bool> Chunks<F> {
    /// Adds one hour's events; false once the reader went away.
    fn hour(&mut self, mut events: Vec<StoredEvent>, sorted: bool) -> bool {
        if !sorted {
            events.sort_unstable_by(|a, b| (a.ts_micros, &a.event_id).cmp(&(b.ts_micros, &b.event_id)));
        }
        let (from, to) = (self.from, self.to);
        self.chunk.extend(
            events
                .into_iter()
                .filter(|e| e.ts_micros >= from && e.ts_micros < to),
        );
        self.chunk.len() < SCAN_CHUNK || (self.emit)(std::mem::take(&mut self.chunk))
    }

    fn finish(mut self) {
        if !self.chunk.is_empty() {
            (self.emit)(self.chunk);
        }
    }
}

/// Hands the events of `site_num` with timestamps in `[from, to)` to `emit`
/// in chunks, in (timestamp, id) order, until `emit` returns false.
pub fn scan_with(
    tables: &Tables,
    site_num: u32,
    from_micros: i64,
    to_micros: i64,
    emit: impl FnMut(Vec<StoredEvent>) -> bool,
) -> Result<(), StorageError> {
    if from_micros >= to_micros {
        return Ok(());
    }
    let snapshot = tables.db.snapshot();
    let (first_minute, last_minute) = minute_span(from_micros, to_micros);
    let mut segments = segments_spanning(&snapshot, tables, site_num, (first_minute, last_minute))?
        .into_iter()
        .peekable();
    let mut out = Chunks {
        from: from_micros,
        to: to_micros,
        chunk: Vec::with_capacity(SCAN_CHUNK),
        emit,
    };
    // The packs of an hour are merged with its segment, if any, by sorting.
    let mut current: Option<(i64, Vec<StoredEvent>)> = None;
    let packs = pack_key(site_num, first_minute, 0)..=pack_key(site_num, last_minute, u64::MAX);
    for guard in snapshot.range(&tables.packs, packs) {
        let (key, value) = guard.into_inner()?;
        let hour = pack_minute(&key)?.div_euclid(MINUTES_PER_HOUR);
        if current.as_ref().map(|(h, _)| *h) != Some(hour) {
            if let Some((_, events)) = current.take()
                && !out.hour(events, false)
            {
                return Ok(()); // the reader went away
            }
            while let Some(segment) = segments.next_if(|s| s.hour < hour) {
                if !out.hour(segment.events()?, true) {
                    return Ok(());
                }
            }
            let events = match segments.next_if(|s| s.hour == hour) {
                Some(segment) => segment.events()?,
                None => Vec::new(),
            };
            current = Some((hour, events));
        }
        let Some((_, events)) = current.as_mut() else {
            unreachable!("set above")
        };
        decode_pack(&value, events)?;
    }
    if let Some((_, events)) = current.take()
        && !out.hour(events, false)
    {
        return Ok(());
    }
    for segment in segments {
        if !out.hour(segment.events()?, true) {
            return Ok(());
        }
    }
    out.finish();
    Ok(())
}

/// The events of `site_num` with timestamps in `[from, to)` as column batches:
/// one per segment, and one per hour of packs not yet compacted (decoded
/// now). Batches may hold events outside the range; their bounds say so.
pub fn column_batches(
    tables: &Tables,
    site_num: u32,
    from_micros: i64,
    to_micros: i64,
) -> Result<Vec<Box<dyn ColumnBatch>>, StorageError> {
    if from_micros >= to_micros {
        return Ok(Vec::new());
    }
    let snapshot = tables.db.snapshot();
    let (first_minute, last_minute) = minute_span(from_micros, to_micros);
    let mut batches: Vec<Box<dyn ColumnBatch>> = Vec::new();
    for segment in segments_spanning(&snapshot, tables, site_num, (first_minute, last_minute))? {
        if segment.head.max_ts >= from_micros && segment.head.min_ts < to_micros {
            batches.push(Box::new(segment));
        }
    }
    let mut current: Option<(i64, Vec<StoredEvent>)> = None;
    let packs = pack_key(site_num, first_minute, 0)..=pack_key(site_num, last_minute, u64::MAX);
    for guard in snapshot.range(&tables.packs, packs) {
        let (key, value) = guard.into_inner()?;
        let hour = pack_minute(&key)?.div_euclid(MINUTES_PER_HOUR);
        if current.as_ref().map(|(h, _)| *h) != Some(hour)
            && let Some((_, events)) = current.replace((hour, Vec::new()))
        {
            batches.push(Box::new(EventsBatch::new(events)));
        }
        let Some((_, events)) = current.as_mut() else {
            unreachable!("set above")
        };
        decode_pack(&value, events)?;
    }
    if let Some((_, events)) = current {
        batches.push(Box::new(EventsBatch::new(events)));
    }
    Ok(batches)
}

/// Stages replacing segment `old` (if any) of (`site_num`, `hour`) by `new`
/// (none: delete it).
fn stage_segment(
    batch: &mut OwnedWriteBatch,
    tables: &Tables,
    site_num: u32,
    hour: i64,
    old: Option<&Head>,
    new: Option<Encoded>,
) {
    let new_names: Vec<&str> = new
        .as_ref()
        .map(|(head, _)| head.columns.iter().map(String::as_str).collect())
        .unwrap_or_default();
    for name in old.map(|h| h.columns.as_slice()).unwrap_or_default() {
        if !new_names.contains(&name.as_str()) {
            batch.remove(&tables.columns, column_key(site_num, hour, name));
        }
    }
    match new {
        Some((head, columns)) => {
            for (name, bytes) in columns {
                batch.insert(&tables.columns, column_key(site_num, hour, &name), bytes);
            }
            batch.insert(&tables.heads, head_key(site_num, hour).to_vec(), head.encode());
        }
        None => batch.remove(&tables.heads, head_key(site_num, hour).to_vec()),
    }
}

impl Segment {
    /// Stages replacing this segment by `new` (none: deleting it).
    fn stage_replace(&self, batch: &mut OwnedWriteBatch, tables: &Tables, new: Option<Encoded>) {
        stage_segment(batch, tables, self.site_num, self.hour, Some(&self.head), new);
    }
}

fn durable(db: &Database) -> OwnedWriteBatch {
    db.batch().durability(Some(PersistMode::SyncData))
}

/// What a compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Segments written.
    pub hours: usize,
    /// Events moved out of packs.
    pub events: usize,
}

/// Moves the packs of every hour that ended at or before `sealed_before`
/// into that hour's segment (merged with the events it already holds), one
/// atomic batch per hour, for at most `max_hours` hours, then syncs the
/// journal once. An hour's batch need not be synced on its own: the journal
/// replays batches whole and in order, so a crash loses a suffix of the
/// round's hours, whose packs are then still there. Callers hold the
/// maintenance lock.
pub fn compact(tables: &Tables, sealed_before: i64, max_hours: usize) -> Result<Compacted, StorageError> {
    let mut done = Compacted::default();
    let mut from = Vec::new();
    loop {
        let snapshot = tables.db.snapshot();
        let Some(guard) = snapshot.range(&tables.packs, from.clone()..).next() else {
            break;
        };
        let key = guard.key()?;
        let site_num = key
            .get(..4)
            .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
            .ok_or_else(|| StorageError::Corrupt("pack key".into()))?;
        let hour = pack_minute(&key)?.div_euclid(MINUTES_PER_HOUR);
        from = pack_key(site_num, (hour + 1) * MINUTES_PER_HOUR, 0).to_vec();
        if (hour + 1).saturating_mul(HOUR_MICROS) > sealed_before {
            continue;
        }
        if done.hours >= max_hours {
            break;
        }
        done.events += compact_hour(tables, &snapshot, site_num, hour)?;
        done.hours += 1;
    }
    if done.hours > 0 {
        tables.db.persist(PersistMode::SyncData)?;
    }
    Ok(done)
}

fn compact_hour(
    tables: &Tables,
    snapshot: &Snapshot,
    site_num: u32,
    hour: i64,
) -> Result<usize, StorageError> {
    let first_minute = hour * MINUTES_PER_HOUR;
    let packs = pack_key(site_num, first_minute, 0)
        ..=pack_key(site_num, first_minute + MINUTES_PER_HOUR - 1, u64::MAX);
    let mut events = Vec::new();
    let mut pack_keys = Vec::new();
    for guard in snapshot.range(&tables.packs, packs) {
        let (key, value) = guard.into_inner()?;
        decode_pack(&value, &mut events)?;
        pack_keys.push(key);
    }
    let moved = events.len();
    let old = segments(snapshot, tables, site_num, hour, hour)?.pop();
    if let Some(segment) = &old {
        events.extend(segment.events()?);
    }
    events.sort_unstable_by(|a, b| (a.ts_micros, &a.event_id).cmp(&(b.ts_micros, &b.event_id)));
    let mut batch = tables.db.batch();
    stage_segment(
        &mut batch,
        tables,
        site_num,
        hour,
        old.as_ref().map(|s| &s.head),
        Some(encode_segment(&events)?),
    );
    for key in pack_keys {
        // The segment's id column now serves the dedup window.
        let seq = key
            .get(12..20)
            .map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
            .ok_or_else(|| StorageError::Corrupt("pack key".into()))?;
        batch.remove(
            &tables.pack_ids,
            pack_ids_key(pack_minute(&key)?, site_num, seq).to_vec(),
        );
        batch.remove(&tables.packs, key);
    }
    batch.commit()?;
    Ok(moved)
}

/// Rewrites the segments and packs of `site_num` without the events `drop`
/// selects (`drop` sees every event of the range). One durable batch per
/// segment, and per 256 packs, changed. Returns how many events were deleted.
/// Callers hold the maintenance lock.
pub fn rewrite(
    tables: &Tables,
    site_num: u32,
    from_micros: i64,
    to_micros: i64,
    mut drop: impl FnMut(&StoredEvent) -> bool,
) -> Result<u64, StorageError> {
    if from_micros >= to_micros {
        return Ok(0);
    }
    let snapshot = tables.db.snapshot();
    let (first_minute, last_minute) = minute_span(from_micros, to_micros);
    let mut deleted = 0u64;
    for segment in segments_spanning(&snapshot, tables, site_num, (first_minute, last_minute))? {
        let (dropped, kept): (Vec<StoredEvent>, Vec<StoredEvent>) =
            segment.events()?.into_iter().partition(&mut drop);
        if dropped.is_empty() {
            continue;
        }
        deleted += dropped.len() as u64;
        let new = match kept.is_empty() {
            true => None,
            false => Some(encode_segment(&kept)?),
        };
        let mut batch = durable(&tables.db);
        segment.stage_replace(&mut batch, tables, new);
        // Erased ids stay known to the dedup window, across restarts too.
        let erased_key = pack_ids_key(segment.hour * MINUTES_PER_HOUR, site_num, u64::MAX);
        let mut erased_ids = snapshot
            .get(&tables.pack_ids, erased_key)?
            .map(|v| v.to_vec())
            .unwrap_or_default();
        erased_ids.extend(dropped.iter().flat_map(|e| e.event_id.iter().copied()));
        batch.insert(&tables.pack_ids, erased_key.to_vec(), erased_ids);
        batch.commit()?;
    }

    let mut batch = durable(&tables.db);
    let mut changed = 0usize;
    let packs = pack_key(site_num, first_minute, 0)..=pack_key(site_num, last_minute, u64::MAX);
    for guard in snapshot.range(&tables.packs, packs) {
        let (key, value) = guard.into_inner()?;
        let mut events = Vec::new();
        decode_pack(&value, &mut events)?;
        let before = events.len();
        events.retain(|e| !drop(e));
        let dropped = before - events.len();
        if dropped == 0 {
            continue;
        }
        deleted += dropped as u64;
        if events.is_empty() {
            batch.remove(&tables.packs, key.to_vec());
        } else {
            let kept: Vec<u8> = events
                .iter()
                .flat_map(prost::Message::encode_length_delimited_to_vec)
                .collect();
            batch.insert(&tables.packs, key.to_vec(), kept);
        }
        changed += 1;
        if changed.is_multiple_of(256) {
            std::mem::replace(&mut batch, durable(&tables.db)).commit()?;
        }
    }
    batch.commit()?;
    Ok(deleted)
}

/// Deletes the events of `site_num` whose minute ends before `before_micros`
/// (whole segments and packs, and the earlier minutes of the hour that
/// holds the cut); returns how many. Callers hold the maintenance lock.
pub fn expire(tables: &Tables, site_num: u32, before_micros: i64) -> Result<u64, StorageError> {
    let first_kept_minute = before_micros.div_euclid(MINUTE_MICROS);
    let cut_hour = first_kept_minute.div_euclid(MINUTES_PER_HOUR);
    let snapshot = tables.db.snapshot();
    let mut deleted = 0u64;
    let mut batch = durable(&tables.db);
    let mut removed = 0usize;
    for segment in segments(&snapshot, tables, site_num, i64::MIN / HOUR_MICROS, cut_hour - 1)? {
        deleted += segment.head.len as u64;
        segment.stage_replace(&mut batch, tables, None);
        removed += 1;
        if removed.is_multiple_of(64) {
            std::mem::replace(&mut batch, durable(&tables.db)).commit()?;
        }
    }
    let low = pack_key(site_num, i64::MIN / MINUTE_MICROS, 0);
    let high = pack_key(site_num, first_kept_minute, 0);
    for guard in snapshot.range(&tables.packs, low..high) {
        let (key, value) = guard.into_inner()?;
        let mut events = Vec::new();
        decode_pack(&value, &mut events)?;
        deleted += events.len() as u64;
        batch.remove(&tables.packs, key.to_vec());
        removed += 1;
        if removed.is_multiple_of(1024) {
            std::mem::replace(&mut batch, durable(&tables.db)).commit()?;
        }
    }
    batch.commit()?;
    if first_kept_minute.rem_euclid(MINUTES_PER_HOUR) != 0 {
        // The hour of the cut: drop its earlier minutes from its segment.
        let cut = first_kept_minute * MINUTE_MICROS;
        deleted += rewrite(
            tables,
            site_num,
            cut_hour * HOUR_MICROS,
            (cut_hour + 1) * HOUR_MICROS,
            |e| e.ts_micros.div_euclid(MINUTE_MICROS) * MINUTE_MICROS < cut,
        )?;
    }
    Ok(deleted)
}
