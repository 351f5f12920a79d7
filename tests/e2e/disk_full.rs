//! Disk full on the embedded store: the data directory lives on a small tmpfs
//! (mounted by the test, which needs root, as CI has), a file fills it while
//! events arrive. Ingest must refuse with a retryable `UNAVAILABLE` (with
//! `RetryInfo`), lose no acknowledged event, accept the refused events once
//! space is freed, without a restart, and count each of them once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use tally_proto::v1;
use tonic::Code;
use tonic_types::StatusExt;

use crate::process::*;

/// A tmpfs of `mib` MiB at a fresh directory, unmounted on drop (then the
/// directory is removed).
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "mounting a {mib} MiB tmpfs failed (the disk-full drill needs root): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self(dir.path().to_owned(), dir)
    }

    fn free_bytes(&self) -> u64 {
        let output = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free bytes")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn batch(first: u128, n: u128) -> Vec<v1::Event> {
    (first..first + n)
        .map(|i| v1::Event {
            event_id: uuid::Uuid::from_u128(0xd15c_0000_0000_0000_0000_0000_0000_0000 | i).to_string(),
            timestamp: Some(now_timestamp()),
            r#type: v1::EventType::Pageview as i32,
            url: format!("https://s.example/page/{}", i % 7),
            anonymous_id: format!("visitor-{}", i % 50),
            ..Default::default()
        })
        .collect()
}

async fn track(
    client: &mut v1::ingest_service_client::IngestServiceClient<tonic::transport::Channel>,
    key: &str,
    events: Vec<v1::Event>,
) -> Result<v1::TrackResponse, tonic::Status> {
    let request = v1::TrackRequest {
        site_id: "s".into(),
        events,
    };
    client.track(authed(key, request)).await.map(|r| r.into_inner())
}

fn verdicts(response: &v1::TrackResponse) -> (usize, usize) {
    let accepted = response
        .results
        .iter()
        .filter(|r| r.verdict() == v1::Verdict::Accepted)
        .count();
    let duplicates = response
        .results
        .iter()
        .filter(|r| r.verdict() == v1::Verdict::Duplicate)
        .count();
    (accepted, duplicates)
}

/// Writes zeros to `path` until the file system has about `leave` bytes free.
fn fill(fs: &Tmpfs, path: &Path, leave: u64) {
    let size = fs.free_bytes().saturating_sub(leave);
    let file = std::fs::File::create(path).unwrap();
    // tmpfs allocates pages as they are written: write them.
    let chunk = vec![0u8; 1 << 20];
    let mut writer = std::io::BufWriter::new(file);
    let mut written = 0u64;
    while written < size {
        let n = chunk.len().min((size - written) as usize);
        std::io::Write::write_all(&mut writer, &chunk[..n]).unwrap();
        written += n as u64;
    }
    std::io::Write::flush(&mut writer).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_ingest_retryably_and_recovers_when_space_is_freed() {
    let fs = Tmpfs::mount(96);
    let data = fs.0.join("data");
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("tally.toml");
    std::fs::write(&config, "min_free_disk_mb = 24\n").unwrap();
    let mut tally =
        Tally::start_with(&tally_binary(), &data, &["--config".as_ref(), config.as_os_str()]).await;
    let key = site_with_ingest_key(tally.channel().await, "s").await;
    let mut client = v1::ingest_service_client::IngestServiceClient::new(tally.channel().await);

    // Before: stored and acknowledged.
    let mut acknowledged = 0;
    for b in 0..5 {
        let response = track(&mut client, &key, batch(b * 100, 100)).await.unwrap();
        assert_eq!(verdicts(&response), (100, 0));
        acknowledged += 100;
    }

    // The disk fills up (another file takes the space): 8 MiB left, under the 24 MiB reserve.
    let filler = fs.0.join("filler");
    fill(&fs, &filler, 8 << 20);
    let refused = batch(500, 100);
    for _ in 0..3 {
        let status = track(&mut client, &key, refused.clone())
            .await
            .expect_err("a nearly full disk refuses appends");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("disk nearly full"),
            "the message says why: {}",
            status.message()
        );
        let retry = status.get_details_retry_info();
        assert!(retry.is_some(), "UNAVAILABLE carries RetryInfo: {status:?}");
    }
    // Reads keep working while writes are refused.
    let stored = export_recent(tally.channel().await, "s").await;
    assert_eq!(stored.len(), acknowledged);

    // Space is freed: the same events go through, without a restart, once.
    std::fs::remove_file(&filler).unwrap();
    let response = track(&mut client, &key, refused.clone()).await.unwrap();
    assert_eq!(verdicts(&response), (100, 0), "the refused batch is accepted now");
    acknowledged += 100;
    let response = track(&mut client, &key, refused).await.unwrap();
    assert_eq!(verdicts(&response), (0, 100), "a retry of it is a duplicate");
    let response = track(&mut client, &key, batch(600, 100)).await.unwrap();
    assert_eq!(verdicts(&response), (100, 0));
    acknowledged += 100;

    // And all of it is durable: kill -9, restart, every event once.
    tally.child.kill().unwrap();
    tally.child.wait().unwrap();
    let tally = Tally::start_with(&tally_binary(), &data, &["--config".as_ref(), config.as_os_str()]).await;
    let stored = export_recent(tally.channel().await, "s").await;
    let ids: HashSet<&str> = stored.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "no event stored twice");
    let expected: HashSet<String> = batch(0, 700).into_iter().map(|e| e.event_id).collect();
    assert_eq!(stored.len(), acknowledged);
    assert!(
        expected.iter().all(|id| ids.contains(id.as_str())),
        "every acknowledged event is there after the restart"
    );
    drop(tally);
}
