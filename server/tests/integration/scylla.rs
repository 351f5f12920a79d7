//! The scale-out backend against real servers: Cassandra (a CQL stand-in for
//! ScyllaDB) and redis-server, started once per run by `tests/services.sh`,
//! which exports `TALLY_TEST_CQL` and `TALLY_TEST_REDIS`. Each test gets a
//! keyspace and a Redis key prefix of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tally_server::storage::scylla::{ScyllaOptions, ScyllaStore};
use tally_server::storage::{Store, conformance};

/// The shared servers' addresses; fails (never skips) without them.
pub fn services() -> (String, String) {
    let get = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the ScyllaDB + Redis tests need Cassandra and redis-server. \
                 Run `bash tests/services.sh` (it prints the exports) or the whole suite with `bash tests/run.sh`"
            )
        })
    };
    (get("TALLY_TEST_CQL"), get("TALLY_TEST_REDIS"))
}

/// Options for a fresh keyspace and key prefix, named after `tag`.
pub fn fresh_options(tag: &str) -> ScyllaOptions {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (cql, redis) = services();
    let keyspace = format!(
        "t_{}_{}_{}",
        tag,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    ScyllaOptions {
        nodes: cql.split(',').map(str::to_owned).collect(),
        redis_prefix: format!("{keyspace}:"),
        keyspace,
        redis_url: redis,
        ..ScyllaOptions::default()
    }
}

/// Drops a test keyspace (Cassandra keeps a few hundred tables at most in
/// comfort; the suite makes many keyspaces).
pub async fn drop_keyspace(store: &ScyllaStore, keyspace: &str) {
    store
        .session()
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_store_passes_the_conformance_suite() {
    let previous: std::sync::Mutex<Option<(Arc<ScyllaStore>, String)>> = Default::default();
    conformance::run_all(|| async {
        let old = previous.lock().unwrap().take();
        if let Some((store, keyspace)) = old {
            drop_keyspace(&store, &keyspace).await;
        }
        let options = fresh_options("conf");
        let store = Arc::new(ScyllaStore::connect(&options).await.unwrap());
        *previous.lock().unwrap() = Some((store.clone(), options.keyspace));
        store as Arc<dyn Store>
    })
    .await;
    let last = previous.lock().unwrap().take();
    if let Some((store, keyspace)) = last {
        drop_keyspace(&store, &keyspace).await;
    }
}
