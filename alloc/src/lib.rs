//! The allocator settings of the `tally` binary.
//!
//! The rest of the workspace compiles under `unsafe_code = "forbid"`; setting
//! an option of the global allocator (mimalloc) is a C call, so it lives here,
//! alone, where it can be read in one sitting.

/// Starts a thread that asks mimalloc, every `every`, to hand back to the
/// system the memory it holds freed.
///
/// mimalloc returns freed memory lazily: it checks when the thread that
/// freed it next allocates. A server's threads go idle after a burst (the
/// rollups rebuilt at start-up, a large report), and the freed memory stayed
/// resident until the next burst. A forced collection from any thread
/// returns what the allocator's arenas hold freed; it costs a few system
/// calls, and nothing on the request path.
pub fn return_freed_memory_every(every: std::time::Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tally-purge".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                // SAFETY: `mi_collect` takes no pointers; it frees only memory
                // the allocator holds unused.
                unsafe { libmimalloc_sys::mi_collect(true) };
            }
        })
        .map(|_| ())
}
