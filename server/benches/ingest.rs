//! Ingest throughput of `tally` next to a no-op tonic server, in one process and one run,
//! so that the ratio holds on a noisy machine.
//!
//! Run: `cargo bench -p tally-server --bench ingest`. `BENCH_EVENTS=N` sets the events per
//! case (default 400,000), `BENCH_CLIENTS=N` the concurrent client tasks (default 64): each
//! task waits for its answer before it sends again, so this is the number of requests in
//! flight, which is what group commit can fold into one sync. `BENCH_CASES` picks cases
//! (`batch,stream,unary`, the default).
//!
//! Both servers receive the same pre-built messages over loopback from the same
//! client tasks: batches of 100 with `Track`, batches of 100 on `TrackStream`,
//! and single events with `Track`. The no-op server decodes each request and
//! answers with a count; `tally` validates, enriches (user agent, bot, source,
//! geo, visitor id), deduplicates and durably stores every event in its
//! embedded store (group commit, fsync before the answer). The events are
//! browser page views with a few hundred distinct user agents.
//!
//! Next to the rates it prints the CPU time the process (clients and server)
//! spent per event in each measured run. In batches and streams both servers
//! keep the two cores busy, so the ratio of rates is close to the inverse
//! ratio of CPU per event, which moves less with the machine's load than the
//! rates do.
//! Before each measured run it writes `ingest: measuring <server> <case>` to
//! stderr, which `tests/profile.sh` waits for.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use tally_proto::v1::{
    self,
    ingest_service_client::IngestServiceClient,
    ingest_service_server::{IngestService, IngestServiceServer},
};
use tonic::{Request, Response, Status, Streaming};

mod figures;
mod support;

use support::{authed, batches, connect, cpu_seconds, setting, shares, start_tally};

// The same allocator as the `tally` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHANNELS: usize = 4;

/// Receives events and does nothing with them.
#[derive(Default)]
struct NoopIngest {
    received: AtomicI64,
}

#[tonic::async_trait]
impl IngestService for NoopIngest {
    async fn track(&self, request: Request<v1::TrackRequest>) -> Result<Response<v1::TrackResponse>, Status> {
        let n = request.get_ref().events.len() as i32;
        self.received.fetch_add(i64::from(n), Ordering::Relaxed);
        Ok(Response::new(v1::TrackResponse {
            accepted: n,
            ..Default::default()
        }))
    }

    async fn track_stream(
        &self,
        request: Request<Streaming<v1::TrackRequest>>,
    ) -> Result<Response<v1::TrackStreamResponse>, Status> {
        let mut stream = request.into_inner();
        let mut summary = v1::TrackStreamResponse::default();
        while let Some(batch) = stream.message().await? {
            summary.requests += 1;
            summary.accepted += batch.events.len() as i64;
        }
        self.received.fetch_add(summary.accepted, Ordering::Relaxed);
        Ok(Response::new(summary))
    }
}

async fn start_noop() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = IngestServiceServer::new(NoopIngest::default());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    addr
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Unary,
    Stream,
}

/// What a run measured.
struct Run {
    events_per_second: f64,
    /// CPU time of the whole process per event, microseconds.
    cpu_micros_per_event: f64,
}

/// Sends every request from `clients` tasks.
async fn drive(
    addr: SocketAddr,
    key: &str,
    requests: Vec<v1::TrackRequest>,
    mode: Mode,
    clients: usize,
) -> Run {
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(connect(addr).await);
    }
    let events: usize = requests.iter().map(|r| r.events.len()).sum();
    let shares = shares(requests, clients);
    let (user, system) = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, share) in shares.into_iter().enumerate() {
        let mut client = IngestServiceClient::new(channels[i % CHANNELS].clone())
            .max_decoding_message_size(64 * 1024 * 1024);
        let key = key.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0i64;
            match mode {
                Mode::Unary => {
                    for request in share {
                        accepted += i64::from(
                            client
                                .track(authed(&key, request))
                                .await
                                .unwrap()
                                .into_inner()
                                .accepted,
                        );
                    }
                }
                Mode::Stream => {
                    let stream = tokio_stream::iter(share);
                    accepted += client
                        .track_stream(authed(&key, stream))
                        .await
                        .unwrap()
                        .into_inner()
                        .accepted;
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let (user_after, system_after) = cpu_seconds();
    let cpu_seconds = (user_after - user) + (system_after - system);
    assert_eq!(accepted as usize, events, "every event accepted");
    Run {
        events_per_second: events as f64 / elapsed.as_secs_f64(),
        cpu_micros_per_event: cpu_seconds * 1e6 / events as f64,
    }
}

fn main() {
    let total = setting("BENCH_EVENTS", 400_000).max(1);
    let clients = setting("BENCH_CLIENTS", 64).max(1);
    let chosen = std::env::var("BENCH_CASES").unwrap_or_else(|_| "batch,stream,unary".into());
    let chosen: Vec<&str> = chosen.split(',').map(str::trim).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let noop = start_noop().await;
        let (tally, key, store) = start_tally(dir.path()).await;
        let mut stored = 0;
        println!(
            "ingest benchmark: {total} events per case, {clients} client tasks on {CHANNELS} connections"
        );
        println!(
            "{:<28} {:>12} {:>12} {:>7} {:>13} {:>13}",
            "case", "no-op ev/s", "tally ev/s", "ratio", "no-op CPU/ev", "tally CPU/ev"
        );
        let cases: [(&str, &str, usize, usize, Mode); 3] = [
            ("Track, batches of 100", "batch", total, 100, Mode::Unary),
            ("TrackStream, 100 per msg", "stream", total, 100, Mode::Stream),
            ("Track, single events", "unary", total / 10, 1, Mode::Unary),
        ];
        for (name, key_name, count, batch, mode) in cases {
            if !chosen.contains(&key_name) {
                continue;
            }
            // Warm up both, then measure; every run sends fresh event ids.
            drive(noop, &key, batches(count / 10, batch), mode, clients).await;
            drive(tally, &key, batches(count / 10, batch), mode, clients).await;
            let requests = batches(count, batch);
            eprintln!("ingest: measuring no-op {key_name}");
            let base = drive(noop, &key, requests, mode, clients).await;
            eprintln!("ingest: measured no-op {key_name}");
            let requests = batches(count, batch);
            eprintln!("ingest: measuring tally {key_name}");
            let ours = drive(tally, &key, requests, mode, clients).await;
            eprintln!("ingest: measured tally {key_name}");
            stored += count + count / 10;
            figures::record(&format!("ingest.noop.{key_name}"), base.events_per_second);
            figures::record(&format!("ingest.tally.{key_name}"), ours.events_per_second);
            figures::record(
                &format!("ingest.noop_cpu_us.{key_name}"),
                base.cpu_micros_per_event,
            );
            figures::record(
                &format!("ingest.tally_cpu_us.{key_name}"),
                ours.cpu_micros_per_event,
            );
            println!(
                "{name:<28} {:>12.0} {:>12.0} {:>6.1}% {:>10.2} us {:>10.2} us",
                base.events_per_second,
                ours.events_per_second,
                100.0 * ours.events_per_second / base.events_per_second,
                base.cpu_micros_per_event,
                ours.cpu_micros_per_event,
            );
        }
        let disk = store.disk_space().unwrap();
        figures::record("ingest.bytes_per_event", disk as f64 / stored as f64);
        println!(
            "embedded store: {disk} bytes on disk for {stored} events ({:.0} bytes/event, journal included)",
            disk as f64 / stored as f64
        );
    });
}
