//! Storage traits: what the core needs from a backend, in small pieces.
//!
//! Every backend (the embedded store, ScyllaDB + Redis) implements
//! these traits and passes the one suite in [`conformance`].

pub mod columns;
pub mod conformance;
pub mod embedded;
pub mod scylla;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

use crate::domain::{KeyRecord, SiteId, SiteRecord, StoredEvent};

/// Errors of a storage backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend failed to read or write.
    #[error("storage i/o failed: {0}")]
    Io(String),
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// The backend is shutting down or unreachable; retrying later may help.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The site is not known to the backend.
    #[error("site {0} not found")]
    UnknownSite(String),
}

/// What happened to one appended event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Newly stored, durable.
    Stored,
    /// An event with the same id was stored before (or earlier in the same call).
    Duplicate,
}

/// Whose events an erasure removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Erase {
    /// Every event of this visitor id.
    Visitor(u64),
    /// Every event with this user id, and every event of a visitor id that
    /// ever carried it (the anonymous events before they signed in).
    User(String),
}

/// A stream of event chunks in timestamp order.
pub type EventChunks = Pin<Box<dyn Stream<Item = Result<Vec<StoredEvent>, StorageError>> + Send>>;

/// Raw events.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends events of one site, each with its id and timestamp set.
    /// Deduplicates by event id within the call and against every stored event
    /// whose timestamp is inside the backend's dedup window, which covers at
    /// least the 30 days of timestamps that ingest accepts. Returns one outcome
    /// per event, in order, once the events are durable.
    async fn append(&self, site: &SiteId, events: &[StoredEvent])
    -> Result<Vec<AppendOutcome>, StorageError>;

    /// Streams a site's events with timestamps in `[from_micros, to_micros)`,
    /// ordered by timestamp, then event id.
    fn scan(&self, site: &SiteId, from_micros: i64, to_micros: i64) -> EventChunks;

    /// The site's events with timestamps in `[from_micros, to_micros)` as
    /// column batches (see [`columns`]), when the backend keeps columns;
    /// `None` when it does not, and callers use [`EventStore::scan`].
    /// Blocking: it lists the batches (and decodes events not yet in columns).
    fn column_batches(
        &self,
        _site: &SiteId,
        _from_micros: i64,
        _to_micros: i64,
    ) -> Option<Result<Vec<Box<dyn columns::ColumnBatch>>, StorageError>> {
        None
    }

    /// True when several server instances write this store (then no
    /// instance sees every write, and in-memory aggregates cannot be kept).
    fn shared(&self) -> bool {
        false
    }

    /// Rollups kept in the store for every instance, on a shared store.
    fn shared_rollups(&self) -> Option<&dyn SharedRollupStore> {
        None
    }

    /// Write generations and the report cache kept for every instance, on a
    /// shared store.
    fn shared_cache(&self) -> Option<&dyn SharedCache> {
        None
    }

    /// Deletes a person's events of a site, durably (GDPR erasure); returns
    /// how many. Their event ids stay known as duplicates, so a client that
    /// still retries one does not bring it back.
    async fn erase(&self, site: &SiteId, who: &Erase) -> Result<u64, StorageError>;

    /// Deletes a site's events with timestamps before `before_micros`
    /// (retention); returns how many, when the backend counts them (a
    /// backend that expires rows by itself may return 0).
    async fn expire(&self, site: &SiteId, before_micros: i64) -> Result<u64, StorageError>;
}

/// Rollups materialized per (site, UTC hour) on a store that several
/// instances share (see [`crate::rollup::shared`]). Every append marks the
/// hours of its new events before it returns: each gets a fresh random
/// token (the hour changed) and joins the site's dirty set.
#[async_trait]
pub trait SharedRollupStore: Send + Sync {
    /// The hours (since the epoch) in `[first, last]` that hold events of the site.
    async fn event_hours(&self, site: &SiteId, first: i64, last: i64) -> Result<Vec<i64>, StorageError>;
    /// The current token of each hour; `None` when the hour has none (no
    /// event since the tokens were lost, or never).
    async fn hour_tokens(&self, site: &SiteId, hours: &[i64]) -> Result<Vec<Option<u64>>, StorageError>;
    /// The hour's token; a fresh one is set first when it has none, or
    /// when `renew` (which makes every stored rollup of the hour stale).
    async fn hour_token(&self, site: &SiteId, hour: i64, renew: bool) -> Result<u64, StorageError>;
    /// The stored rollup of an hour: the token it was computed at, and its encoding.
    async fn hour_rollup(&self, site: &SiteId, hour: i64) -> Result<Option<(u64, Vec<u8>)>, StorageError>;
    /// Stores the rollup of an hour, computed from its events after its token was `token`.
    async fn put_hour_rollup(
        &self,
        site: &SiteId,
        hour: i64,
        token: u64,
        body: Vec<u8>,
    ) -> Result<(), StorageError>;
    /// Removes and returns up to `max` of the site's dirty hours.
    async fn take_dirty_hours(&self, site: &SiteId, max: usize) -> Result<Vec<i64>, StorageError>;
    /// Marks hours dirty (again), e.g. after their recomputation failed.
    async fn mark_dirty(&self, site: &SiteId, hours: &[i64]) -> Result<(), StorageError>;
}

/// Report answers cached for every instance of a shared store, keyed with
/// the site's write generations, which every append bumps.
#[async_trait]
pub trait SharedCache: Send + Sync {
    /// The site's write generations: (every write, writes of late events).
    async fn generations(&self, site: &SiteId) -> Result<(u64, u64), StorageError>;
    /// Bumps both generations (after events were erased or rebuilt).
    async fn bump_generations(&self, site: &SiteId) -> Result<(), StorageError>;
    /// A cached value.
    async fn cached(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Caches a value for `ttl`.
    async fn cache(&self, key: &[u8], value: &[u8], ttl: std::time::Duration) -> Result<(), StorageError>;
}

/// Sites and their settings.
#[async_trait]
pub trait SiteStore: Send + Sync + 'static {
    /// Inserts a new site; `false` if one with the same id exists.
    async fn insert_site(&self, site: SiteRecord) -> Result<bool, StorageError>;
    /// Replaces an existing site's record.
    async fn update_site(&self, site: SiteRecord) -> Result<(), StorageError>;
    /// Looks a site up.
    async fn get_site(&self, site: &SiteId) -> Result<Option<SiteRecord>, StorageError>;
    /// All sites, by id.
    async fn list_sites(&self) -> Result<Vec<SiteRecord>, StorageError>;
}

/// API keys (hashed), the instance secret and visitor-id salts.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Inserts or replaces a key record.
    async fn put_key(&self, key: KeyRecord) -> Result<(), StorageError>;
    /// Finds a key by the hash of its secret.
    async fn key_by_hash(&self, secret_hash: &[u8]) -> Result<Option<KeyRecord>, StorageError>;
    /// Finds a key by id.
    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StorageError>;
    /// All keys.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StorageError>;
    /// A random 32-byte secret created once per deployment (keys visitor hashes).
    async fn instance_secret(&self) -> Result<[u8; 32], StorageError>;
    /// The random 32-byte salt named `name`, created on first use. Every
    /// caller, concurrent or not, on any instance sharing the backend, gets
    /// the same salt for the same name until it is dropped.
    async fn salt(&self, name: &str) -> Result<[u8; 32], StorageError>;
    /// The names of the stored salts that start with `prefix`.
    async fn salt_names(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Deletes the named salts (names that do not exist are ignored).
    async fn drop_salts(&self, names: &[String]) -> Result<(), StorageError>;
}

/// Live visit state: which visit each visitor's new events belong to.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Assigns each event to a visit of its visitor by the rules of
    /// [`crate::sessions`] (inactivity `timeout_micros`), setting `session`
    /// and `session_start`. Atomic per visitor, and shared by every instance
    /// that uses the backend, so a visit continues whichever instance gets
    /// its events.
    async fn sessionize(
        &self,
        site: &SiteId,
        timeout_micros: i64,
        events: &mut [StoredEvent],
    ) -> Result<(), StorageError>;
}

/// A complete backend.
pub trait Store: EventStore + SiteStore + KeyStore + SessionStore {}

impl<T: EventStore + SiteStore + KeyStore + SessionStore> Store for T {}
