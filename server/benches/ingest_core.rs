//! CPU per event of the ingest core alone, without gRPC: validation,
//! enrichment, visits, the durable append (writer thread and group commit
//! included), rollups and realtime counters, next to what a server that does
//! nothing still spends on the same batches (decoding them from the wire).
//!
//! Run: `cargo bench -p tally-server --bench ingest_core`. `BENCH_EVENTS=N`
//! sets the events (default 400,000), `BENCH_CLIENTS=N` the concurrent
//! batches (default 16). The events are those of the `ingest` bench. The
//! figures are the process's CPU time (user and system, every thread) per
//! event; for counts that do not move with the machine's load, run it under
//! `valgrind --tool=callgrind` with `BENCH_EVENTS=20000` and read the
//! inclusive counts of `Pipeline::run`, `SiteRollups::apply_all` and the
//! writer thread.

use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use tally_proto::v1;
use tally_server::config::Config;
use tally_server::domain::SiteId;
use tally_server::pipeline::RequestFacts;
use tally_server::storage::embedded::EmbeddedStore;

mod figures;
mod support;

use support::{batches, cpu_seconds, setting, shares};

// The same allocator as the `tally` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs `work` and returns its (user, system) CPU nanoseconds per event.
async fn per_event<F: std::future::Future<Output = ()>>(events: usize, work: F) -> (f64, f64) {
    let (user, system) = cpu_seconds();
    work.await;
    let (user_after, system_after) = cpu_seconds();
    let per = |seconds: f64| seconds * 1e9 / events as f64;
    (per(user_after - user), per(system_after - system))
}

fn main() {
    let count = setting("BENCH_EVENTS", 400_000).max(1000);
    let clients = setting("BENCH_CLIENTS", 16).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let core = tally_server::server::build_core(&Config::default(), store)
            .await
            .unwrap();
        let site = v1::Site {
            site_id: "bench".into(),
            domain: "bench.example".into(),
            ..Default::default()
        };
        core.admin.create_site(site).await.unwrap();
        let site = core.admin.site(&SiteId::parse("bench").unwrap()).await.unwrap();
        let now_micros = tally_server::domain::now_micros();
        let salt = core.ingest.salt(&site, now_micros).await.unwrap();
        // A backend forwarding browser events: the agent and address are in each event.
        let facts = Arc::new(RequestFacts {
            site,
            now_micros,
            user_agent: String::new(),
            peer_ip: None,
            from_browser: false,
            do_not_track: false,
            excluded_ips: Vec::new(),
            salt,
        });
        println!("ingest core benchmark: {count} events in batches of 100, {clients} at a time");
        let mut figures = (0.0, 0.0, 0.0, 0.0);
        // A warm-up round (caches, memtables, dedup window), then the measured one.
        for events in [count / 4, count] {
            let requests = batches(events, 100);
            let wire: Vec<Vec<u8>> = requests.iter().map(Message::encode_to_vec).collect();
            let decode = per_event(events, async {
                for bytes in &wire {
                    std::hint::black_box(v1::TrackRequest::decode(bytes.as_slice()).unwrap());
                }
            })
            .await;
            let shares = shares(requests, clients);
            let started = Instant::now();
            let ingest = per_event(events, async {
                let tasks: Vec<_> = shares
                    .into_iter()
                    .map(|share| {
                        let (core, facts) = (core.clone(), facts.clone());
                        tokio::spawn(async move {
                            let mut accepted = 0;
                            for request in share {
                                let response = core.ingest.track(&facts, &request.events).await.unwrap();
                                accepted += response.accepted as usize;
                            }
                            accepted
                        })
                    })
                    .collect();
                let mut accepted = 0;
                for task in tasks {
                    accepted += task.await.unwrap();
                }
                assert_eq!(accepted, events, "every event accepted");
            })
            .await;
            let rate = events as f64 / started.elapsed().as_secs_f64();
            figures = (decode.0 + decode.1, ingest.0, ingest.1, rate);
        }
        let (decode, user, system, rate) = figures;
        let core_ns = user + system;
        figures::record("ingest_core.decode_ns", decode);
        figures::record("ingest_core.core_ns", core_ns);
        println!("{:<44} {:>12}", "case", "CPU ns/event");
        println!("{:<44} {decode:>12.0}", "decoding the batches (baseline)");
        println!(
            "{:<44} {core_ns:>12.0}   {:.1}x the baseline (user {user:.0}, system {system:.0}; {rate:.0} events/s)",
            "ingest core (Ingest::track)",
            core_ns / decode
        );
    });
}
