//! The tokio runtime that owns the bridge's background work: the tracker's
//! sender task and the client's connections.
//!
//! Apps calling in from Kotlin or Swift have no tokio runtime, so the bridge
//! keeps one, started on first use: a single worker thread is plenty for a
//! sender that spends its life waiting. Async exports are polled by the
//! caller's executor (coroutines, Swift tasks) with `async_runtime = "tokio"`;
//! they only wait on channels and timers, never on this thread.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

/// The bridge's runtime; panics only if the OS refuses a thread.
pub(crate) fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tally-sdk")
            .enable_all()
            .build()
            .expect("the tally-sdk runtime thread could not be started")
    })
}
