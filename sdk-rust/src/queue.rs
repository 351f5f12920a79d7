//! The tracker's durable queue: an append-only file of checksummed records
//! plus a small acknowledgement file, mirrored in memory.
//!
//! - `queue.log`: a header (`TALLYQ1\n`, generation `u64`), then records of
//!   `len u32 | crc32 u32 | payload`, all little-endian.
//! - `queue.ack`: `generation u64 | acked u64 | crc32 u32`: how many records at
//!   the head of that generation of `queue.log` the server has acknowledged.
//!   Replaced atomically (write a temporary file, rename).
//!
//! A push is one `write` of one record, so it survives the process being
//! killed the moment `push` returns; [`DiskQueue::sync`] also makes it survive
//! a power cut. When more than half of the file is acknowledged, the unacked
//! records are copied into a new generation of the file, which replaces the
//! old one atomically; an ack file of another generation counts as zero.
//!
//! On open, a torn record at the end (a write cut short by a kill) is dropped
//! and the file truncated before it; every record before it is kept. A header
//! cut short (a kill while the file was created) starts a new file, and an ack
//! file that does not match what was found is rewritten to match.
//!
//! Overflow: the queue holds at most `max_events` unacknowledged records. When
//! it is full, a new record is dropped and counted ([`DiskQueue::dropped`]):
//! the events already waiting are older and may be in flight.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TALLYQ1\n";
const HEADER_LEN: u64 = 16;
const RECORD_HEADER_LEN: usize = 8;
/// Largest record accepted; anything bigger in a file is treated as corruption.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue's files could not be read or written.
    #[error("queue file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a queue file.
    #[error("{0} is not a tally queue file")]
    NotAQueue(PathBuf),
    /// A record is larger than [`MAX_RECORD_BYTES`].
    #[error("record of {0} bytes is larger than the limit")]
    RecordTooLarge(usize),
}

/// Queue settings.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Most unacknowledged records kept; newer ones are dropped when full.
    pub max_events: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { max_events: 10_000 }
    }
}

/// What happened to a pushed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored.
    Queued,
    /// The queue was full; the record was dropped and counted.
    Dropped,
}

/// What opening found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records waiting to be sent.
    pub pending: usize,
    /// Bytes of a torn record cut from the end of the file.
    pub torn_bytes: u64,
}

/// The durable queue.
pub struct DiskQueue {
    dir: PathBuf,
    file: File,
    generation: u64,
    /// Unacknowledged records, oldest first.
    pending: VecDeque<Vec<u8>>,
    /// Records in the current file, acknowledged or not.
    records_in_file: u64,
    /// Acknowledged records at the head of the current file.
    acked_in_file: u64,
    max_events: usize,
    dropped: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_owned(),
        source,
    }
}

impl DiskQueue {
    /// Opens the queue in `dir` (created if needed), recovering what a killed
    /// process left behind.
    pub fn open(dir: &Path, config: &QueueConfig) -> Result<(Self, Recovery), QueueError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let log_path = dir.join("queue.log");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&log_path)
            .map_err(io(&log_path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&log_path))?;

        let (generation, records, torn_bytes) = if is_new_or_torn_header(&bytes) {
            if !bytes.is_empty() {
                tracing::warn!(torn_bytes = bytes.len(), "queue: dropping a torn header");
                file.set_len(0).map_err(io(&log_path))?;
                file.rewind().map_err(io(&log_path))?;
            }
            write_header(&mut file, 1).map_err(io(&log_path))?;
            (1, Vec::new(), bytes.len() as u64)
        } else {
            let generation = parse_header(&bytes).ok_or_else(|| QueueError::NotAQueue(log_path.clone()))?;
            let (records, valid_len) = parse_records(&bytes);
            let torn_bytes = bytes.len() as u64 - valid_len;
            if torn_bytes > 0 {
                tracing::warn!(torn_bytes, "queue: dropping a torn record at the end of the file");
                file.set_len(valid_len).map_err(io(&log_path))?;
            }
            (generation, records, torn_bytes)
        };
        file.seek(SeekFrom::End(0)).map_err(io(&log_path))?;

        let ack_file = read_ack(dir);
        let acked = match ack_file {
            Some((ack_generation, acked)) if ack_generation == generation => acked.min(records.len() as u64),
            _ => 0,
        };
        // An ack file that says anything else (another generation, or more
        // records than survived a crash) would skip records appended from now
        // on, once the file reaches that generation or length: make it true.
        if ack_file.is_some_and(|found| found != (generation, acked)) {
            tracing::warn!(?ack_file, generation, acked, "queue: correcting the ack file");
            write_ack(dir, generation, acked)?;
        }
        let records_in_file = records.len() as u64;
        let pending: VecDeque<Vec<u8>> = records.into_iter().skip(acked as usize).collect();
        let recovery = Recovery {
            pending: pending.len(),
            torn_bytes,
        };
        let queue = Self {
            dir: dir.to_owned(),
            file,
            generation,
            pending,
            records_in_file,
            acked_in_file: acked,
            max_events: config.max_events.max(1),
            dropped: 0,
        };
        Ok((queue, recovery))
    }

    /// Appends a record, unless the queue is full.
    pub fn push(&mut self, payload: &[u8]) -> Result<PushOutcome, QueueError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(QueueError::RecordTooLarge(payload.len()));
        }
        if self.pending.len() >= self.max_events {
            self.dropped += 1;
            return Ok(PushOutcome::Dropped);
        }
        let mut record = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
        encode_record(payload, &mut record);
        // One write per record: a kill leaves at most this record torn.
        self.file.write_all(&record).map_err(io(&self.log_path()))?;
        self.pending.push_back(payload.to_vec());
        self.records_in_file += 1;
        Ok(PushOutcome::Queued)
    }

    /// Up to `n` records from the head, oldest first.
    pub fn peek(&self, n: usize) -> impl Iterator<Item = &[u8]> {
        self.pending.iter().take(n).map(Vec::as_slice)
    }

    /// Removes `n` records from the head, durably.
    pub fn ack(&mut self, n: usize) -> Result<(), QueueError> {
        let n = n.min(self.pending.len());
        if n == 0 {
            return Ok(());
        }
        self.pending.drain(..n);
        self.acked_in_file += n as u64;
        if self.acked_in_file * 2 > self.records_in_file || self.pending.is_empty() {
            self.compact()
        } else {
            write_ack(&self.dir, self.generation, self.acked_in_file)
        }
    }

    /// Drops every record (opt-out).
    pub fn clear(&mut self) -> Result<(), QueueError> {
        self.pending.clear();
        self.compact()
    }

    /// Flushes the file to stable storage (survives a power cut, not just a kill).
    pub fn sync(&mut self) -> Result<(), QueueError> {
        self.file.sync_data().map_err(io(&self.log_path()))
    }

    /// Unacknowledged records.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Records dropped because the queue was full, since open.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes the queue takes on disk now.
    pub fn disk_bytes(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("queue.log")
    }

    /// Writes the pending records as a new generation and swaps it in.
    fn compact(&mut self) -> Result<(), QueueError> {
        // Wraps rather than overflows: the number only has to differ from the
        // ack file's, and a damaged header may hold any number.
        let generation = self.generation.wrapping_add(1);
        let tmp_path = self.dir.join("queue.log.tmp");
        let mut tmp = File::create(&tmp_path).map_err(io(&tmp_path))?;
        write_header(&mut tmp, generation).map_err(io(&tmp_path))?;
        let mut bytes = Vec::new();
        for payload in &self.pending {
            encode_record(payload, &mut bytes);
        }
        tmp.write_all(&bytes).map_err(io(&tmp_path))?;
        tmp.sync_data().map_err(io(&tmp_path))?;
        let log_path = self.log_path();
        std::fs::rename(&tmp_path, &log_path).map_err(io(&log_path))?;
        // The old ack file names the old generation, so it now counts as zero.
        self.file = OpenOptions::new()
            .append(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        self.generation = generation;
        self.records_in_file = self.pending.len() as u64;
        self.acked_in_file = 0;
        Ok(())
    }
}

/// Appends `len | crc32 | payload` to `out`.
fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    out.extend((payload.len() as u32).to_le_bytes());
    out.extend(crc32fast::hash(payload).to_le_bytes());
    out.extend(payload);
}

fn write_header(file: &mut File, generation: u64) -> std::io::Result<()> {
    let mut header = MAGIC.to_vec();
    header.extend(generation.to_le_bytes());
    file.write_all(&header)
}

/// True for an empty log, or one shorter than its header whose bytes begin
/// the header (a kill while the file was being created): both start afresh.
fn is_new_or_torn_header(bytes: &[u8]) -> bool {
    bytes.len() < HEADER_LEN as usize && MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC.len())])
}

fn parse_header(bytes: &[u8]) -> Option<u64> {
    let magic = bytes.get(..8)?;
    let generation = bytes.get(8..16)?;
    (magic == MAGIC).then(|| u64::from_le_bytes(generation.try_into().expect("8 bytes")))
}

/// The intact records after the header, and the length of the valid prefix.
fn parse_records(bytes: &[u8]) -> (Vec<Vec<u8>>, u64) {
    let mut records = Vec::new();
    let mut at = HEADER_LEN as usize;
    while let Some(header) = bytes.get(at..at + RECORD_HEADER_LEN) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let start = at + RECORD_HEADER_LEN;
        let Some(payload) = bytes.get(start..start + len).filter(|_| len <= MAX_RECORD_BYTES) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        records.push(payload.to_vec());
        at = start + len;
    }
    (records, at.min(bytes.len()) as u64)
}

fn ack_path(dir: &Path) -> PathBuf {
    dir.join("queue.ack")
}

/// The generation and count in the ack file; `None` when there is none or it
/// is damaged (both count as nothing acknowledged).
fn read_ack(dir: &Path) -> Option<(u64, u64)> {
    let bytes = std::fs::read(ack_path(dir)).ok()?;
    if bytes.len() != 20 || crc32fast::hash(&bytes[..16]).to_le_bytes() != bytes[16..20] {
        return None;
    }
    let generation = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let acked = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    Some((generation, acked))
}

fn write_ack(dir: &Path, generation: u64, acked: u64) -> Result<(), QueueError> {
    let mut bytes = generation.to_le_bytes().to_vec();
    bytes.extend(acked.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend(crc.to_le_bytes());
    let tmp = dir.join("queue.ack.tmp");
    std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
    let path = ack_path(dir);
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, max_events: usize) -> (DiskQueue, Recovery) {
        DiskQueue::open(dir, &QueueConfig { max_events }).unwrap()
    }

    fn contents(queue: &DiskQueue) -> Vec<Vec<u8>> {
        queue.peek(usize::MAX).map(<[u8]>::to_vec).collect()
    }

    fn record(n: u32) -> Vec<u8> {
        format!("event-{n}").into_bytes()
    }

    #[test]
    fn keeps_order_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut queue, recovery) = open(dir.path(), 100);
        assert_eq!(recovery, Recovery::default());
        for n in 0..10 {
            assert_eq!(queue.push(&record(n)).unwrap(), PushOutcome::Queued);
        }
        drop(queue);
        let (queue, recovery) = open(dir.path(), 100);
        assert_eq!(recovery.pending, 10);
        assert_eq!(contents(&queue), (0..10).map(record).collect::<Vec<_>>());
    }

    #[test]
    fn acks_survive_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut queue, _) = open(dir.path(), 100);
        for n in 0..10 {
            queue.push(&record(n)).unwrap();
        }
        queue.ack(3).unwrap(); // below half: ack file only
        drop(queue);
        let (mut queue, _) = open(dir.path(), 100);
        assert_eq!(contents(&queue), (3..10).map(record).collect::<Vec<_>>());
        queue.ack(4).unwrap(); // 7 of 10 acknowledged: compaction
        queue.push(&record(10)).unwrap();
        drop(queue);
        let (mut queue, _) = open(dir.path(), 100);
        assert_eq!(contents(&queue), (7..11).map(record).collect::<Vec<_>>());
        queue.ack(100).unwrap();
        assert!(queue.is_empty());
        drop(queue);
        assert!(open(dir.path(), 100).0.is_empty());
    }

    #[test]
    fn a_full_queue_drops_new_records_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut queue, _) = open(dir.path(), 3);
        let outcomes: Vec<PushOutcome> = (0..5).map(|n| queue.push(&record(n)).unwrap()).collect();
        use PushOutcome::*;
        assert_eq!(outcomes, vec![Queued, Queued, Queued, Dropped, Dropped]);
        assert_eq!(queue.dropped(), 2);
        assert_eq!(contents(&queue), (0..3).map(record).collect::<Vec<_>>());
        queue.ack(1).unwrap();
        assert_eq!(queue.push(&record(9)).unwrap(), Queued, "room again after an ack");
    }

    #[test]
    fn a_torn_record_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut queue, _) = open(dir.path(), 100);
        for n in 0..5 {
            queue.push(&record(n)).unwrap();
        }
        drop(queue);
        let log = dir.path().join("queue.log");
        let full = std::fs::metadata(&log).unwrap().len();
        // Cut the file inside the last record, at every possible point.
        for cut in 1..(RECORD_HEADER_LEN as u64 + record(4).len() as u64) {
            let copy = tempfile::tempdir().unwrap();
            std::fs::copy(&log, copy.path().join("queue.log")).unwrap();
            let file = OpenOptions::new()
                .write(true)
                .open(copy.path().join("queue.log"))
                .unwrap();
            file.set_len(full - cut).unwrap();
            let (mut queue, recovery) = open(copy.path(), 100);
            assert_eq!(
                contents(&queue),
                (0..4).map(record).collect::<Vec<_>>(),
                "cut {cut}"
            );
            assert!(recovery.torn_bytes > 0);
            // New records land after the kept ones.
            queue.push(&record(7)).unwrap();
            drop(queue);
            let (queue, recovery) = open(copy.path(), 100);
            assert_eq!(recovery.torn_bytes, 0);
            assert_eq!(contents(&queue).last().unwrap(), &record(7));
        }
    }

    #[test]
    fn a_corrupt_record_ends_the_readable_part() {
        let dir = tempfile::tempdir().unwrap();
        let (mut queue, _) = open(dir.path(), 100);
        for n in 0..3 {
            queue.push(&record(n)).unwrap();
        }
        drop(queue);
        let log = dir.path().join("queue.log");
        let mut bytes = std::fs::read(&log).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff; // flip a payload byte of the last record
        std::fs::write(&log, &bytes).unwrap();
        let (queue, recovery) = open(dir.path(), 100);
        assert_eq!(contents(&queue), (0..2).map(record).collect::<Vec<_>>());
        assert_eq!(recovery.torn_bytes, (RECORD_HEADER_LEN + record(2).len()) as u64);
    }

    #[test]
    fn a_stale_ack_file_counts_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let (mut queue, _) = open(dir.path(), 100);
        for n in 0..4 {
            queue.push(&record(n)).unwrap();
        }
        queue.ack(1).unwrap();
        drop(queue);
        // An ack file from another generation (e.g. written just before a compaction
        // that then completed) must not skip records of this one.
        write_ack(dir.path(), 99, 3).unwrap();
        let (queue, _) = open(dir.path(), 100);
        assert_eq!(contents(&queue), (0..4).map(record).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_header_starts_a_new_queue() {
        for torn in [&b"TALLYQ"[..], b"TALLYQ1\n\x01\x00"] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("queue.log"), torn).unwrap();
            let (mut queue, recovery) = open(dir.path(), 100);
            assert!(queue.is_empty());
            assert_eq!(recovery.torn_bytes, torn.len() as u64);
            queue.push(&record(0)).unwrap();
            drop(queue);
            let (queue, recovery) = open(dir.path(), 100);
            assert_eq!(contents(&queue), [record(0)]);
            assert_eq!(recovery.torn_bytes, 0);
        }
    }

    #[test]
    fn an_ack_file_counting_lost_records_does_not_skip_new_ones() {
        // Found by fuzzing (tracker_queue): records acknowledged, then lost from
        // the log (a power cut before they reached the disk); the ack file still
        // counted them, so it skipped the records appended after recovery.
        let dir = tempfile::tempdir().unwrap();
        let (mut queue, _) = open(dir.path(), 100);
        for n in 0..4 {
            queue.push(&record(n)).unwrap();
        }
        queue.ack(1).unwrap();
        drop(queue);
        let log = OpenOptions::new()
            .write(true)
            .open(dir.path().join("queue.log"))
            .unwrap();
        log.set_len(HEADER_LEN).unwrap();
        let (mut queue, _) = open(dir.path(), 100);
        assert!(queue.is_empty());
        queue.push(&record(9)).unwrap();
        drop(queue);
        assert_eq!(contents(&open(dir.path(), 100).0), [record(9)]);
    }

    #[test]
    fn an_ack_file_of_a_later_generation_does_not_apply_after_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut queue, _) = open(dir.path(), 100);
        for n in 0..4 {
            queue.push(&record(n)).unwrap();
        }
        drop(queue);
        // Left by a compaction whose new log did not survive a power cut.
        write_ack(dir.path(), 2, 3).unwrap();
        let (mut queue, _) = open(dir.path(), 100);
        assert_eq!(queue.len(), 4);
        queue.ack(3).unwrap(); // compaction: generation 2
        queue.push(&record(4)).unwrap();
        drop(queue);
        let (queue, _) = open(dir.path(), 100);
        assert_eq!(contents(&queue), [record(3), record(4)]);
    }

    #[test]
    fn the_generation_wraps_instead_of_overflowing() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend(u64::MAX.to_le_bytes());
        for n in 0..3 {
            encode_record(&record(n), &mut bytes);
        }
        std::fs::write(dir.path().join("queue.log"), &bytes).unwrap();
        let (mut queue, _) = open(dir.path(), 100);
        queue.ack(2).unwrap(); // compaction: generation u64::MAX + 1
        drop(queue);
        let (queue, _) = open(dir.path(), 100);
        assert_eq!(contents(&queue), [record(2)]);
    }

    #[test]
    fn clear_empties_the_queue_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut queue, _) = open(dir.path(), 100);
        for n in 0..4 {
            queue.push(&record(n)).unwrap();
        }
        queue.clear().unwrap();
        drop(queue);
        assert!(open(dir.path(), 100).0.is_empty());
    }

    #[test]
    fn other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("queue.log"), b"hello world, not a queue").unwrap();
        let err = DiskQueue::open(dir.path(), &QueueConfig::default())
            .err()
            .unwrap();
        assert!(matches!(err, QueueError::NotAQueue(_)), "{err}");
    }
}
