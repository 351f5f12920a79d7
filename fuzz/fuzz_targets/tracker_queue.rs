//! Fuzz target: any bytes as the tracker's queue files (`queue.log`, and
//! `queue.ack` as the input's mode byte says, see `tally_fuzz::queue_input`),
//! opened by the real queue as after a crash.
//!
//! Must never panic. Checks recovery against the file format read here on its
//! own: every intact record (those before the first torn or damaged one) that
//! the ack file does not cover is pending, in order, and nothing else; the
//! torn rest is counted. Then the queue must keep working: records appended
//! after recovery, acknowledgements and compaction survive reopening.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tally_fuzz::queue_input::{ACK, RAW_ACK, STALE_ACK};
use tally_sdk::queue::{DiskQueue, MAX_RECORD_BYTES, QueueConfig, QueueError};

const MAGIC: &[u8; 8] = b"TALLYQ1\n";
const HEADER_LEN: usize = 16;

fuzz_target!(
    init: tally_fuzz::write_seeds_if_asked(tally_fuzz::tracker_queue_seeds),
    |data: &[u8]| {
        let [mode, count, rest @ ..] = data else {
            return;
        };
        let (raw_ack, log) = match mode & 3 {
            RAW_ACK if rest.len() >= 20 => (Some(&rest[..20]), &rest[20..]),
            RAW_ACK => return,
            _ => (None, rest),
        };
        // tmpfs where there is one: compaction syncs files, which is slow on disk.
        let tmp = match Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm"),
            false => tempfile::tempdir(),
        }
        .expect("temp dir");
        let dir = tmp.path();
        std::fs::write(dir.join("queue.log"), log).expect("write log");
        let log_generation = generation(log).unwrap_or(1);
        let ack = match (mode & 3, raw_ack) {
            (ACK, _) => Some(ack_file(log_generation, u64::from(*count))),
            (STALE_ACK, _) => Some(ack_file(log_generation.wrapping_add(1), u64::from(*count))),
            (_, Some(raw)) => Some(raw.to_vec()),
            _ => None,
        };
        if let Some(ack) = &ack {
            std::fs::write(dir.join("queue.ack"), ack).expect("write ack");
        }

        let config = QueueConfig { max_events: 100_000 };
        let Some((mut pending, torn_bytes)) = expected_recovery(log, ack.as_deref()) else {
            match DiskQueue::open(dir, &config) {
                Err(QueueError::NotAQueue(_)) => return,
                other => panic!("a file that is not a queue: {:?}", other.err()),
            }
        };
        let (mut queue, recovery) =
            DiskQueue::open(dir, &config).unwrap_or_else(|err| panic!("a queue file was refused: {err}"));
        assert_eq!(recovery.torn_bytes, torn_bytes, "torn bytes");
        assert_eq!(recovery.pending, pending.len(), "pending records");
        assert_eq!(contents(&queue), pending, "recovered records");

        // New records land after the recovered ones, and nothing is torn any more.
        for n in 0..=usize::from(count % 4) {
            let record = format!("after-recovery-{n}").into_bytes();
            queue.push(&record).expect("push");
            pending.push(record);
        }
        let mut queue = reopen(queue, dir, &config, &pending);
        // Half acknowledged (an ack file, or a compaction), then the rest.
        let half = pending.len() / 2;
        queue.ack(half).expect("ack");
        pending.drain(..half);
        let mut queue = reopen(queue, dir, &config, &pending);
        queue.ack(pending.len()).expect("ack all");
        pending.clear();
        let queue = reopen(queue, dir, &config, &pending);
        assert_eq!(queue.disk_bytes(), HEADER_LEN as u64, "an empty queue is a header");
    }
);

fn contents(queue: &DiskQueue) -> Vec<Vec<u8>> {
    queue.peek(usize::MAX).map(<[u8]>::to_vec).collect()
}

fn reopen(queue: DiskQueue, dir: &Path, config: &QueueConfig, pending: &[Vec<u8>]) -> DiskQueue {
    drop(queue);
    let (queue, recovery) = DiskQueue::open(dir, config).expect("reopen");
    assert_eq!(recovery.torn_bytes, 0, "torn bytes after reopening");
    assert_eq!(contents(&queue), pending, "records after reopening");
    queue
}

fn generation(log: &[u8]) -> Option<u64> {
    let header = log.get(..HEADER_LEN)?;
    (header[..8] == *MAGIC).then(|| u64::from_le_bytes(header[8..].try_into().expect("8 bytes")))
}

fn ack_file(generation: u64, acked: u64) -> Vec<u8> {
    let mut bytes = generation.to_le_bytes().to_vec();
    bytes.extend(acked.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend(crc.to_le_bytes());
    bytes
}

/// What opening must find, read from the format's description: the pending
/// records and the torn bytes; `None` when the log is not a queue file.
fn expected_recovery(log: &[u8], ack: Option<&[u8]>) -> Option<(Vec<Vec<u8>>, u64)> {
    // A log shorter than its header is a queue file cut short while it was
    // being created (or a new, empty one): nothing to recover.
    if log.len() < HEADER_LEN && MAGIC.starts_with(&log[..log.len().min(MAGIC.len())]) {
        return Some((Vec::new(), log.len() as u64));
    }
    let generation = generation(log)?;
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    while log.len() - at >= 8 {
        let len = u32::from_le_bytes(log[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(log[at + 4..at + 8].try_into().expect("4 bytes"));
        let payload = &log[at + 8..];
        if len > MAX_RECORD_BYTES || payload.len() < len || crc32fast::hash(&payload[..len]) != crc {
            break;
        }
        records.push(payload[..len].to_vec());
        at += 8 + len;
    }
    let acked = match ack {
        Some(ack) if ack.len() == 20 && crc32fast::hash(&ack[..16]).to_le_bytes() == ack[16..] => {
            let ack_generation = u64::from_le_bytes(ack[..8].try_into().expect("8 bytes"));
            let acked = u64::from_le_bytes(ack[8..16].try_into().expect("8 bytes"));
            if ack_generation == generation { acked } else { 0 }
        }
        _ => 0,
    };
    let acked = usize::try_from(acked).unwrap_or(usize::MAX).min(records.len());
    Some((records.split_off(acked), (log.len() - at) as u64))
}
