//! Chaos: a tracker process killed and restarted 1,000 times, talking to the
//! server through a proxy that refuses, cuts and delays connections, while the
//! server itself is killed and restarted. At the end the server must hold
//! exactly the events the tracker accepted: none lost, none twice.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use tally_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::process::*;

/// Forwards connections to `upstream`, misbehaving at random.
async fn chaos_proxy(upstream: Arc<RwLock<String>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(7);
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let target = upstream.read().unwrap().clone();
            let mode = rng.random_range(0..10u8);
            let cut_after = rng.random_range(0..4096usize);
            let delay = Duration::from_millis(rng.random_range(0..15));
            tokio::spawn(async move {
                if mode < 2 {
                    return; // refuse: close at once
                }
                let Ok(server) = TcpStream::connect(&target).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                // Mode 2-3 cuts the connection after some bytes; 4-6 delays every chunk.
                let limit = if mode < 4 { cut_after } else { usize::MAX };
                let pause = if (4..7).contains(&mode) {
                    delay
                } else {
                    Duration::ZERO
                };
                let upstream = pipe(&mut client_read, &mut server_write, limit, pause);
                let downstream = pipe(&mut server_read, &mut client_write, limit, pause);
                tokio::select! {
                    _ = upstream => {}
                    _ = downstream => {}
                }
            });
        }
    });
    addr
}

async fn pipe(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    limit: usize,
    pause: Duration,
) {
    let mut buf = vec![0u8; 8192];
    let mut passed = 0;
    loop {
        let Ok(n) = from.read(&mut buf).await else { return };
        if n == 0 || passed >= limit {
            return;
        }
        let n = n.min(limit - passed);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        passed += n;
    }
}

struct Log {
    intents: HashSet<u64>,
    tracked: HashMap<u64, String>,
}

fn read_log(path: &std::path::Path) -> Log {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut log = Log {
        intents: HashSet::new(),
        tracked: HashMap::new(),
    };
    // Each line is one write; only a final line without its newline can be torn.
    let complete = text.rsplit_once('\n').map_or("", |(whole, _)| whole);
    for line in complete.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["intent", seq] => {
                log.intents
                    .insert(seq.parse().unwrap_or_else(|_| panic!("bad log line {line:?}")));
            }
            ["tracked", seq, id] => {
                log.tracked.insert(
                    seq.parse().unwrap_or_else(|_| panic!("bad log line {line:?}")),
                    id.to_string(),
                );
            }
            _ => panic!("unexpected log line {line:?}"),
        }
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_killed_a_thousand_times_loses_and_duplicates_nothing() {
    let cycles: u64 = std::env::var("TALLY_CHAOS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let queue_dir = work.path().join("queue");
    let log_path = work.path().join("tracker.log");
    let mut tally = Tally::start(data.path()).await;
    let key = site_with_ingest_key(tally.channel().await, "s").await;
    let upstream = Arc::new(RwLock::new(tally.addr.clone()));
    let proxy = chaos_proxy(upstream.clone()).await;

    let tracker_bin = env!("CARGO_BIN_EXE_chaos-tracker");
    let mut rng = StdRng::seed_from_u64(42);
    let mut next_seq = 0u64;
    let mut server_restarts = 0;
    for cycle in 0..cycles {
        if cycle % 200 == 100 {
            // The server dies too (SIGKILL) and comes back on another port.
            tally.child.kill().unwrap();
            tally.child.wait().unwrap();
            tally = Tally::start(data.path()).await;
            *upstream.write().unwrap() = tally.addr.clone();
            server_restarts += 1;
        }
        let count = rng.random_range(1..8u64);
        let mut child = Command::new(tracker_bin)
            .args([&format!("http://{proxy}"), &key])
            .arg(&queue_dir)
            .arg(&log_path)
            .args([next_seq.to_string(), count.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        next_seq += count;
        // Let it live a random while: sometimes it finishes, mostly it dies mid-flight.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    // A last run, straight to the server, sends whatever is still queued.
    let status = Command::new(tracker_bin)
        .args([&format!("http://{}", tally.addr), &key])
        .arg(&queue_dir)
        .arg(&log_path)
        .args(["0", "0", "--drain"])
        .status()
        .unwrap();
    assert!(status.success(), "drain run failed: {status:?}");

    let log = read_log(&log_path);
    let mut stored: Vec<(u64, String)> = Vec::new();
    for event in export_recent(tally.channel().await, "s").await {
        let seq = match event.properties.get("seq").and_then(|p| p.value.clone()) {
            Some(v1::property_value::Value::NumberValue(n)) => n as u64,
            other => panic!("event without seq: {other:?}"),
        };
        stored.push((seq, event.event_id));
    }

    let stored_ids: HashSet<&String> = stored.iter().map(|(_, id)| id).collect();
    let stored_seqs: HashSet<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(stored_ids.len(), stored.len(), "an event id is stored twice");
    assert_eq!(
        stored_seqs.len(),
        stored.len(),
        "an event was tracked once but stored twice"
    );
    let lost: Vec<&u64> = log
        .tracked
        .iter()
        .filter(|(_, id)| !stored_ids.contains(id))
        .map(|(seq, _)| seq)
        .collect();
    assert!(
        lost.is_empty(),
        "{} tracked events lost, e.g. seq {:?}",
        lost.len(),
        lost.first()
    );
    let unknown: Vec<&u64> = stored_seqs
        .iter()
        .filter(|seq| !log.intents.contains(seq))
        .collect();
    assert!(unknown.is_empty(), "stored events nobody tracked: {unknown:?}");
    eprintln!(
        "chaos: {cycles} tracker kills, {server_restarts} server kills; {} tracks attempted, {} confirmed, {} stored, 0 lost, 0 duplicated",
        log.intents.len(),
        log.tracked.len(),
        stored.len()
    );
}
