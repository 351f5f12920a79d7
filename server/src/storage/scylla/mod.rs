//! The scale-out store: raw events, sites, keys and secrets in ScyllaDB (or
//! Cassandra, over CQL); duplicate detection and live visit state in Redis.
//! Any number of `tally` instances share one cluster and one Redis.
//!
//! - Raw events: table `events`, partitioned by (site, hour), rows by
//!   (timestamp, event id), a Protobuf body; TimeWindowCompactionStrategy in
//!   daily windows; each row lives for the site's retention (default 14
//!   months) counted from the event's timestamp. `event_buckets` lists the
//!   hours that hold a site's events, so a scan reads only those partitions.
//!   Writes are unlogged batches of one partition each (a single mutation on
//!   the replica), sent concurrently; token-aware routing sends each to a
//!   replica of its partition.
//! - Sites, API keys (by id and by secret hash) and secrets (the instance
//!   secret and visitor-id salts): small tables; first writes of a site or a
//!   secret are lightweight transactions (`IF NOT EXISTS`), so concurrent
//!   instances agree on one record.
//! - Redis: see [`claims`] (duplicates) and [`visits`] (visits).
//!
//! Nothing is acknowledged before Cassandra has it at the configured
//! consistency; Redis or Cassandra being unreachable is
//! [`StorageError::Unavailable`], which ingest answers with `UNAVAILABLE` and
//! a retry delay. Both clients reconnect by themselves.

mod aggregates;
mod claims;
pub mod schema;
mod visits;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{ExecutionError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{AppendOutcome, Erase, EventChunks, EventStore, KeyStore, SessionStore, SiteStore, StorageError};
use crate::domain::{KeyRecord, SiteId, SiteRecord, StoredEvent, now_micros};
use claims::{Claim, Claims};

/// Microseconds in a partition of `events`.
const BUCKET_MICROS: i64 = 3_600_000_000;
/// Events per chunk of a scan (and rows per page read).
const SCAN_CHUNK: usize = 4096;
/// Rows of one write batch: one partition, well under Cassandra's default
/// batch size failure threshold (50 KiB).
const MAX_BATCH_ROWS: usize = 100;
const MAX_BATCH_BYTES: usize = 32 * 1024;
/// Batches of one append in flight at once.
const WRITE_CONCURRENCY: usize = 32;
/// How long an append waits for another request writing the same event ids.
const PENDING_WAIT: Duration = Duration::from_secs(10);
/// How long a site's retention is cached before it is read again.
const SITE_CACHE: Duration = Duration::from_secs(5);
/// Longest time to live Cassandra accepts (20 years), seconds.
const MAX_TTL_SECS: i64 = 630_720_000;
const DAY_MICROS: i64 = 86_400_000_000;

/// Options of the scale-out store.
#[derive(Clone, Debug)]
pub struct ScyllaOptions {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace (created if missing).
    pub keyspace: String,
    /// Replication factor of a keyspace created by `tally`
    /// (`NetworkTopologyStrategy`, in every datacenter).
    pub replication_factor: u32,
    /// Consistency of reads and writes.
    pub consistency: Consistency,
    /// Time a CQL request may take.
    pub request_timeout: Duration,
    /// Redis URL, `redis://host:port/db`.
    pub redis_url: String,
    /// Prefix of every Redis key and channel of this deployment.
    pub redis_prefix: String,
    /// Days (by event timestamp) for which duplicates are recognised. Must
    /// cover the oldest timestamp that ingest accepts, with a day of margin.
    pub dedup_window_days: i64,
}

impl Default for ScyllaOptions {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "tally".into(),
            replication_factor: 1,
            consistency: Consistency::LocalQuorum,
            request_timeout: Duration::from_secs(5),
            redis_url: "redis://127.0.0.1:6379/".into(),
            redis_prefix: "tally:".into(),
            dedup_window_days: 32,
        }
    }
}

/// Parses a consistency level name such as `local_quorum` or `ONE`.
pub fn parse_consistency(raw: &str) -> Option<Consistency> {
    Some(match raw.to_ascii_lowercase().as_str() {
        "any" => Consistency::Any,
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        _ => return None,
    })
}

/// Maps a CQL failure: timeouts, unreachable or overloaded nodes are
/// [`StorageError::Unavailable`]; a refused statement is a bug or a schema
/// problem ([`StorageError::Io`]).
fn cql_error(what: &str, err: impl Into<ExecutionError>) -> StorageError {
    use scylla::errors::DbError;
    let err = err.into();
    let refused = match &err {
        ExecutionError::BadQuery(_)
        | ExecutionError::PrepareError(_)
        | ExecutionError::UseKeyspaceError(_) => true,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::SyntaxError
                | DbError::Invalid
                | DbError::AlreadyExists { .. }
                | DbError::Unauthorized
                | DbError::AuthenticationError
                | DbError::ConfigError
                | DbError::FunctionFailure { .. }
        ),
        _ => false,
    };
    if refused {
        StorageError::Io(format!("cassandra: {what}: {err}"))
    } else {
        StorageError::Unavailable(format!("cassandra: {what}: {err}"))
    }
}

/// Maps a Redis failure: connection problems and timeouts are
/// [`StorageError::Unavailable`], other errors [`StorageError::Io`].
fn redis_error(what: &str, err: redis::RedisError) -> StorageError {
    let unreachable = err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
        || matches!(
            err.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
        );
    if unreachable {
        StorageError::Unavailable(format!("redis: {what}: {err}"))
    } else {
        StorageError::Io(format!("redis: {what}: {err}"))
    }
}

/// The row a lightweight transaction returned, with its column names.
type LwtRow = (Vec<String>, Row);

/// Whether a lightweight transaction applied, and the row it returned.
fn lwt_applied(result: QueryResult) -> Result<(bool, Option<LwtRow>), StorageError> {
    let rows = result
        .into_rows_result()
        .map_err(|err| StorageError::Corrupt(format!("lightweight transaction result: {err}")))?;
    let names: Vec<String> = rows.column_specs().iter().map(|c| c.name().to_owned()).collect();
    let row: Row = rows
        .first_row()
        .map_err(|err| StorageError::Corrupt(format!("lightweight transaction result: {err}")))?;
    let applied = matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))));
    Ok((applied, Some((names, row))))
}

/// The blob column `name` of a row returned by a lightweight transaction.
fn blob_column(found: Option<LwtRow>, name: &str) -> Option<Vec<u8>> {
    let (names, row) = found?;
    let at = names.iter().position(|n| n == name)?;
    match row.columns.into_iter().nth(at)? {
        Some(CqlValue::Blob(bytes)) => Some(bytes),
        _ => None,
    }
}

fn corrupt(what: &str) -> impl Fn(scylla::errors::IntoRowsResultError) -> StorageError + '_ {
    move |err| StorageError::Corrupt(format!("{what}: {err}"))
}

/// One row of `events` to write.
struct EventRow<'a> {
    ts: i64,
    id: &'a Vec<u8>,
    body: Vec<u8>,
    /// Seconds.
    ttl: i32,
}

/// The prepared statements, prepared once at start-up.
struct Statements {
    insert_event: PreparedStatement,
    insert_bucket: PreparedStatement,
    select_buckets: PreparedStatement,
    select_events: PreparedStatement,
    delete_event: PreparedStatement,
    select_event_key: PreparedStatement,
    delete_partition: PreparedStatement,
    delete_bucket: PreparedStatement,
    insert_site: PreparedStatement,
    update_site: PreparedStatement,
    select_site: PreparedStatement,
    select_sites: PreparedStatement,
    insert_key: PreparedStatement,
    insert_key_by_hash: PreparedStatement,
    select_key: PreparedStatement,
    select_key_by_hash: PreparedStatement,
    select_keys: PreparedStatement,
    select_secret: PreparedStatement,
    insert_secret: PreparedStatement,
    select_secret_names: PreparedStatement,
    delete_secret: PreparedStatement,
    select_rollup: PreparedStatement,
    insert_rollup: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Self, StorageError> {
        let prepare = |cql: String| async move {
            session
                .prepare(cql)
                .await
                .map_err(|err| cql_error("prepare", ExecutionError::PrepareError(err)))
        };
        let mut select_events = prepare(format!(
            "SELECT ts, id, body FROM {ks}.events WHERE site = ? AND bucket = ? AND ts >= ? AND ts < ?"
        ))
        .await?;
        select_events.set_page_size(SCAN_CHUNK as i32);
        let mut statements = Self {
            insert_event: prepare(format!(
                "INSERT INTO {ks}.events (site, bucket, ts, id, body) VALUES (?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            insert_bucket: prepare(format!(
                "INSERT INTO {ks}.event_buckets (site, bucket) VALUES (?, ?) USING TTL ?"
            ))
            .await?,
            select_buckets: prepare(format!(
                "SELECT bucket FROM {ks}.event_buckets WHERE site = ? AND bucket >= ? AND bucket <= ?"
            ))
            .await?,
            select_events,
            delete_event: prepare(format!(
                "DELETE FROM {ks}.events WHERE site = ? AND bucket = ? AND ts = ? AND id = ?"
            ))
            .await?,
            select_event_key: prepare(format!(
                "SELECT id FROM {ks}.events WHERE site = ? AND bucket = ? AND ts = ? AND id = ?"
            ))
            .await?,
            delete_partition: prepare(format!("DELETE FROM {ks}.events WHERE site = ? AND bucket = ?"))
                .await?,
            delete_bucket: prepare(format!(
                "DELETE FROM {ks}.event_buckets WHERE site = ? AND bucket = ?"
            ))
            .await?,
            insert_site: prepare(format!(
                "INSERT INTO {ks}.sites (site_id, record) VALUES (?, ?) IF NOT EXISTS"
            ))
            .await?,
            update_site: prepare(format!(
                "UPDATE {ks}.sites SET record = ? WHERE site_id = ? IF EXISTS"
            ))
            .await?,
            select_site: prepare(format!("SELECT record FROM {ks}.sites WHERE site_id = ?")).await?,
            select_sites: prepare(format!("SELECT record FROM {ks}.sites")).await?,
            insert_key: prepare(format!(
                "INSERT INTO {ks}.api_keys (key_id, record) VALUES (?, ?)"
            ))
            .await?,
            insert_key_by_hash: prepare(format!(
                "INSERT INTO {ks}.api_keys_by_hash (secret_hash, record) VALUES (?, ?)"
            ))
            .await?,
            select_key: prepare(format!("SELECT record FROM {ks}.api_keys WHERE key_id = ?")).await?,
            select_key_by_hash: prepare(format!(
                "SELECT record FROM {ks}.api_keys_by_hash WHERE secret_hash = ?"
            ))
            .await?,
            select_keys: prepare(format!("SELECT record FROM {ks}.api_keys")).await?,
            select_secret: prepare(format!("SELECT value FROM {ks}.secrets WHERE name = ?")).await?,
            insert_secret: prepare(format!(
                "INSERT INTO {ks}.secrets (name, value) VALUES (?, ?) IF NOT EXISTS"
            ))
            .await?,
            select_secret_names: prepare(format!("SELECT name FROM {ks}.secrets")).await?,
            delete_secret: prepare(format!("DELETE FROM {ks}.secrets WHERE name = ? IF EXISTS")).await?,
            select_rollup: prepare(format!(
                "SELECT version, body FROM {ks}.rollup_hours WHERE site = ? AND hour = ?"
            ))
            .await?,
            insert_rollup: prepare(format!(
                "INSERT INTO {ks}.rollup_hours (site, hour, version, body) VALUES (?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
        };
        // Safe to retry on a timeout: the same row again.
        for idempotent in [
            &mut statements.insert_event,
            &mut statements.insert_bucket,
            &mut statements.insert_key,
            &mut statements.insert_key_by_hash,
            &mut statements.insert_rollup,
        ] {
            idempotent.set_is_idempotent(true);
        }
        Ok(statements)
    }
}

/// The scale-out store. Cheap to share behind an `Arc`.
pub struct ScyllaStore {
    session: Arc<Session>,
    redis: ConnectionManager,
    statements: Statements,
    claims: Claims,
    visits: visits::Visits,
    marks: aggregates::Marks,
    dedup_window_micros: i64,
    /// Sites known to exist, with their event time to live (seconds) and
    /// when that was read.
    sites: Mutex<HashMap<String, (i64, Instant)>>,
    /// (site, hour) index rows written by this process, so each is written
    /// once per process rather than once per append.
    buckets_written: Mutex<HashSet<(String, i64)>>,
}

impl ScyllaStore {
    /// Connects to the cluster and Redis, creates or migrates the keyspace
    /// and prepares the statements.
    pub async fn connect(options: &ScyllaOptions) -> Result<Self, StorageError> {
        schema::check_keyspace_name(&options.keyspace).map_err(StorageError::Io)?;
        let profile = ExecutionProfile::builder()
            .consistency(options.consistency)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(options.request_timeout))
            .build()
            .into_handle();
        let session = SessionBuilder::new()
            .known_nodes(&options.nodes)
            .default_execution_profile_handle(profile)
            .connection_timeout(Duration::from_secs(5))
            .build()
            .await
            .map_err(|err| {
                StorageError::Unavailable(format!(
                    "cassandra: connect to {}: {err}",
                    options.nodes.join(",")
                ))
            })?;
        schema::migrate(&session, &options.keyspace, options.replication_factor).await?;
        let statements = Statements::prepare(&session, &options.keyspace).await?;
        let redis = connect_redis(&options.redis_url).await?;
        Ok(Self {
            session: Arc::new(session),
            redis,
            statements,
            claims: Claims::new(&options.redis_prefix),
            visits: visits::Visits::new(&options.redis_prefix),
            marks: aggregates::Marks::new(&options.redis_prefix),
            dedup_window_micros: options.dedup_window_days * DAY_MICROS,
            sites: Mutex::new(HashMap::new()),
            buckets_written: Mutex::new(HashSet::new()),
        })
    }

    /// How long, by event timestamp, event ids are remembered as stored.
    pub fn dedup_window_micros(&self) -> i64 {
        self.dedup_window_micros
    }

    /// The claim key of an event and how long it lives (ms): while the
    /// event's timestamp is inside the dedup window, a minute at least.
    fn claim_key(&self, site: &SiteId, event: &StoredEvent, now: i64) -> (Vec<u8>, u64) {
        let ttl_micros = (event.ts_micros + self.dedup_window_micros - now).max(60_000_000);
        (
            self.claims.key(site.as_str(), &event.event_id),
            (ttl_micros / 1000) as u64,
        )
    }

    /// Remembers stored events' ids as stored (one pipeline), as an append
    /// does: for rebuilding them after Redis lost its data.
    pub async fn remember_stored(&self, site: &SiteId, events: &[StoredEvent]) -> Result<(), StorageError> {
        let now = now_micros();
        let stored: Vec<(Vec<u8>, u64)> = events
            .iter()
            .filter(|e| e.ts_micros + self.dedup_window_micros > now)
            .map(|e| self.claim_key(site, e, now))
            .collect();
        if stored.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        self.claims.mark_stored(&mut pipe, &stored);
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis)
            .await
            .map_err(|err| redis_error("remember event ids", err))
    }

    /// The CQL session (for tools and benchmarks that write directly).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Time to live of a site's events, seconds; `UnknownSite` if there is none.
    async fn site_ttl(&self, site: &SiteId) -> Result<i64, StorageError> {
        {
            let sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((ttl, read)) = sites.get(site.as_str())
                && read.elapsed() < SITE_CACHE
            {
                return Ok(*ttl);
            }
        }
        let Some(record) = self.get_site(site).await? else {
            return Err(StorageError::UnknownSite(site.to_string()));
        };
        let ttl = match record.retention_days {
            days if days > 0 => (i64::from(days) * 86_400).min(MAX_TTL_SECS),
            _ => schema::DEFAULT_EVENT_TTL_SECS,
        };
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        sites.insert(site.to_string(), (ttl, Instant::now()));
        Ok(ttl)
    }

    /// Whether each event's row is in `events` (read by its whole key).
    async fn rows_exist(&self, site: &SiteId, events: &[&StoredEvent]) -> Result<Vec<bool>, StorageError> {
        let mut reads: Vec<futures::future::BoxFuture<'_, Result<bool, StorageError>>> = Vec::new();
        for event in events {
            let event: &StoredEvent = event;
            reads.push(Box::pin(async move {
                let rows = self
                    .session
                    .execute_unpaged(
                        &self.statements.select_event_key,
                        (
                            site.as_str(),
                            event.ts_micros.div_euclid(BUCKET_MICROS),
                            event.ts_micros,
                            event.event_id.as_slice(),
                        ),
                    )
                    .await
                    .map_err(|err| cql_error("read an event's row", err))?
                    .into_rows_result()
                    .map_err(corrupt("event row"))?;
                Ok(rows.rows_num() > 0)
            }));
        }
        futures::stream::iter(reads)
            .buffered(WRITE_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Writes events (already claimed) and the index rows of their hours.
    async fn write_events(
        &self,
        site: &SiteId,
        ttl_secs: i64,
        events: &[&StoredEvent],
    ) -> Result<(), StorageError> {
        let now = now_micros();
        // Rows by partition, in arrival order.
        let mut partitions: BTreeMap<i64, Vec<EventRow>> = BTreeMap::new();
        for event in events {
            // Retention counts from the event's own time.
            let age_secs = (now - event.ts_micros).max(0) / 1_000_000;
            let ttl = (ttl_secs - age_secs).clamp(1, MAX_TTL_SECS) as i32;
            let body = StoredEvent {
                event_id: Vec::new(),
                ts_micros: 0,
                ..(*event).clone()
            }
            .encode_to_vec();
            partitions
                .entry(event.ts_micros.div_euclid(BUCKET_MICROS))
                .or_default()
                .push(EventRow {
                    ts: event.ts_micros,
                    id: &event.event_id,
                    body,
                    ttl,
                });
        }
        let site_name = site.as_str();
        let mut writes: Vec<futures::future::BoxFuture<'_, Result<(), StorageError>>> = Vec::new();
        for (bucket, rows) in &partitions {
            let index_row = (site_name.to_owned(), *bucket);
            let known = self
                .buckets_written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&index_row);
            if !known {
                let ttl = rows
                    .iter()
                    .map(|r| r.ttl)
                    .max()
                    .unwrap_or(1)
                    .saturating_add(86_400);
                writes.push(Box::pin(async move {
                    self.session
                        .execute_unpaged(&self.statements.insert_bucket, (site_name, *bucket, ttl))
                        .await
                        .map_err(|err| cql_error("write event index", err))?;
                    let mut written = self.buckets_written.lock().unwrap_or_else(|e| e.into_inner());
                    if written.len() > 100_000 {
                        written.clear();
                    }
                    written.insert(index_row);
                    Ok(())
                }));
            }
            let mut start = 0;
            while start < rows.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < rows.len()
                    && end - start < MAX_BATCH_ROWS
                    && (end == start || bytes + rows[end].body.len() < MAX_BATCH_BYTES)
                {
                    bytes += rows[end].body.len() + 40;
                    end += 1;
                }
                let chunk = &rows[start..end];
                start = end;
                writes.push(Box::pin(async move {
                    let mut batch = Batch::new(BatchType::Unlogged);
                    let values: Vec<_> = chunk
                        .iter()
                        .map(|row| {
                            batch.append_statement(self.statements.insert_event.clone());
                            (
                                site_name,
                                *bucket,
                                row.ts,
                                row.id.as_slice(),
                                row.body.as_slice(),
                                row.ttl,
                            )
                        })
                        .collect();
                    batch.set_is_idempotent(true);
                    self.session
                        .batch(&batch, values)
                        .await
                        .map_err(|err| cql_error("write events", err))?;
                    Ok(())
                }));
            }
        }
        futures::stream::iter(writes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn read_record<T: Message + Default>(
        &self,
        statement: &PreparedStatement,
        key: impl scylla::serialize::row::SerializeRow,
        what: &str,
    ) -> Result<Option<T>, StorageError> {
        let rows = self
            .session
            .execute_unpaged(statement, key)
            .await
            .map_err(|err| cql_error(what, err))?
            .into_rows_result()
            .map_err(corrupt(what))?;
        let Some((record,)) = rows
            .maybe_first_row::<(Vec<u8>,)>()
            .map_err(|err| StorageError::Corrupt(format!("{what}: {err}")))?
        else {
            return Ok(None);
        };
        T::decode(record.as_slice())
            .map(Some)
            .map_err(|err| StorageError::Corrupt(format!("{what}: {err}")))
    }

    async fn read_all<T: Message + Default>(
        &self,
        statement: &PreparedStatement,
        what: &str,
    ) -> Result<Vec<T>, StorageError> {
        let pager = self
            .session
            .execute_iter(statement.clone(), ())
            .await
            .map_err(|err| StorageError::Unavailable(format!("cassandra: {what}: {err}")))?;
        let mut rows = pager
            .rows_stream::<(Vec<u8>,)>()
            .map_err(|err| StorageError::Corrupt(format!("{what}: {err}")))?;
        let mut records = Vec::new();
        while let Some(row) = rows.next().await {
            let (raw,) = row.map_err(|err| StorageError::Unavailable(format!("cassandra: {what}: {err}")))?;
            records.push(
                T::decode(raw.as_slice()).map_err(|err| StorageError::Corrupt(format!("{what}: {err}")))?,
            );
        }
        Ok(records)
    }

    /// The secret `name`, created (random) on first use; every instance gets
    /// the same one (a lightweight transaction decides the first writer).
    async fn secret(&self, name: &str) -> Result<[u8; 32], StorageError> {
        let to_array = |raw: Vec<u8>| -> Result<[u8; 32], StorageError> {
            raw.try_into()
                .map_err(|_| StorageError::Corrupt(format!("secret {name} is not 32 bytes")))
        };
        let rows = self
            .session
            .execute_unpaged(&self.statements.select_secret, (name,))
            .await
            .map_err(|err| cql_error("read a secret", err))?
            .into_rows_result()
            .map_err(corrupt("secret"))?;
        if let Some((raw,)) = rows
            .maybe_first_row::<(Vec<u8>,)>()
            .map_err(|err| StorageError::Corrupt(format!("secret: {err}")))?
        {
            return to_array(raw);
        }
        let fresh: [u8; 32] = rand::random();
        let result = self
            .session
            .execute_unpaged(&self.statements.insert_secret, (name, fresh.as_slice()))
            .await
            .map_err(|err| cql_error("create a secret", err))?;
        match lwt_applied(result)? {
            (true, _) => Ok(fresh),
            (false, existing) => blob_column(existing, "value")
                .ok_or_else(|| StorageError::Corrupt(format!("secret {name}: no value")))
                .and_then(to_array),
        }
    }
}

async fn connect_redis(url: &str) -> Result<ConnectionManager, StorageError> {
    let client =
        redis::Client::open(url).map_err(|err| StorageError::Io(format!("redis url {url:?}: {err}")))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|err| redis_error(&format!("connect to {url}"), err))
}

/// The Redis connection manager of a URL, with the store's timeouts (for
/// the realtime fan-out).
pub async fn redis_connection(url: &str) -> Result<ConnectionManager, StorageError> {
    connect_redis(url).await
}

#[async_trait]
impl EventStore for ScyllaStore {
    async fn append(
        &self,
        site: &SiteId,
        events: &[StoredEvent],
    ) -> Result<Vec<AppendOutcome>, StorageError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let ttl_secs = self.site_ttl(site).await?;
        if let Some(bad) = events.iter().find(|e| e.event_id.len() != 16) {
            return Err(StorageError::Corrupt(format!(
                "event id of {} bytes",
                bad.event_id.len()
            )));
        }
        // Duplicates within the call: only the first of each id goes on.
        let mut outcomes = vec![AppendOutcome::Duplicate; events.len()];
        let mut seen = HashSet::with_capacity(events.len());
        let firsts: Vec<usize> = (0..events.len())
            .filter(|&i| seen.insert(events[i].event_id.as_slice()))
            .collect();
        // Each claim lives while its event is inside the dedup window.
        let now = now_micros();
        let keys: Vec<(Vec<u8>, u64)> = firsts
            .iter()
            .map(|&i| self.claim_key(site, &events[i], now))
            .collect();
        let mut redis = self.redis.clone();
        let mut found = self.claims.claim(&mut redis, &keys).await?;
        let mut held = claims::Held::new(redis.clone());
        let owned = |claim: Claim| matches!(claim, Claim::Claimed | Claim::Recheck);
        for k in (0..firsts.len()).filter(|&k| owned(found[k])) {
            held.push(keys[k].0.clone());
        }
        // Ids that another request is writing right now: wait for its outcome
        // (stored: a duplicate; given back or past its deadline: claim them
        // again). Every early return below gives our claims back (`held`).
        let mut waiting: Vec<usize> = (0..firsts.len())
            .filter(|&k| found[k] == Claim::Pending)
            .collect();
        let deadline = Instant::now() + PENDING_WAIT;
        let mut delay = Duration::from_millis(2);
        while !waiting.is_empty() {
            if Instant::now() > deadline {
                let id = events[firsts[waiting[0]]]
                    .id()
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                return Err(StorageError::Unavailable(format!(
                    "event {id} is being stored by another request; retry shortly"
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
            let again: Vec<(Vec<u8>, u64)> = waiting.iter().map(|&k| keys[k].clone()).collect();
            let result = self.claims.claim(&mut redis, &again).await?;
            for (&k, claim) in waiting.iter().zip(result) {
                if owned(claim) {
                    held.push(keys[k].0.clone());
                }
                found[k] = claim;
            }
            waiting.retain(|&k| found[k] == Claim::Pending);
        }
        // Claims taken over from a request that did not finish: the events
        // whose rows are there were stored by it (duplicates now).
        let rechecked: Vec<usize> = (0..firsts.len())
            .filter(|&k| found[k] == Claim::Recheck)
            .collect();
        let present = self
            .rows_exist(
                site,
                &rechecked.iter().map(|&k| &events[firsts[k]]).collect::<Vec<_>>(),
            )
            .await?;
        let mut found_stored = Vec::new();
        for (&k, present) in rechecked.iter().zip(present) {
            if present {
                found_stored.push(k);
            } else {
                found[k] = Claim::Claimed;
            }
        }
        let claimed: Vec<usize> = (0..firsts.len())
            .filter(|&k| found[k] == Claim::Claimed)
            .collect();
        let to_write: Vec<&StoredEvent> = claimed.iter().map(|&k| &events[firsts[k]]).collect();
        self.write_events(site, ttl_secs, &to_write).await?;
        // One pipeline marks the ids stored and the hours changed (for the
        // rollups and the report cache of every instance), the hours of
        // events found stored included: the request that wrote them may have
        // died before marking them. Should it fail, the append fails although
        // the events are durable: the claims are given back, and the client's
        // retry finds the rows and marks them, so no hour is left unmarked
        // behind an acknowledgment.
        let settled: Vec<usize> = claimed.iter().chain(&found_stored).copied().collect();
        if !settled.is_empty() {
            let stored: Vec<(Vec<u8>, u64)> = settled.iter().map(|&k| keys[k].clone()).collect();
            let mut pipe = redis::pipe();
            self.claims.mark_stored(&mut pipe, &stored);
            self.marks.touch(
                &mut pipe,
                site.as_str(),
                settled.iter().map(|&k| events[firsts[k]].ts_micros),
                now_micros(),
            );
            pipe.query_async::<()>(&mut redis)
                .await
                .map_err(|err| redis_error("mark events stored", err))?;
        }
        held.settle();
        for &k in &claimed {
            outcomes[firsts[k]] = AppendOutcome::Stored;
        }
        Ok(outcomes)
    }

    fn shared(&self) -> bool {
        true
    }

    fn shared_rollups(&self) -> Option<&dyn super::SharedRollupStore> {
        Some(self)
    }

    fn shared_cache(&self) -> Option<&dyn super::SharedCache> {
        Some(self)
    }

    async fn erase(&self, site: &SiteId, who: &Erase) -> Result<u64, StorageError> {
        // Read the site's events once (twice for a user: first the visitor ids
        // that carried the user id), then delete the matching rows by key.
        let all = |store: &Self| store.scan(site, i64::MIN / 2, i64::MAX / 2);
        let visitors: HashSet<u64> = match who {
            Erase::Visitor(v) => [*v].into(),
            Erase::User(user) => {
                let mut found = HashSet::new();
                let mut chunks = all(self);
                while let Some(chunk) = chunks.next().await {
                    found.extend(chunk?.iter().filter(|e| e.user_id == *user).map(|e| e.visitor));
                }
                found
            }
        };
        let user = match who {
            Erase::User(user) => Some(user.as_str()),
            Erase::Visitor(_) => None,
        };
        let mut doomed = Vec::new();
        let mut chunks = all(self);
        while let Some(chunk) = chunks.next().await {
            doomed.extend(
                chunk?
                    .into_iter()
                    .filter(|e| visitors.contains(&e.visitor) || user.is_some_and(|u| e.user_id == u))
                    .map(|e| (e.ts_micros, e.event_id)),
            );
        }
        let hours: Vec<i64> = doomed
            .iter()
            .map(|(ts, _)| ts.div_euclid(BUCKET_MICROS))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let site_id = site.clone();
        let site = site.to_string();
        let count = doomed.len() as u64;
        let session = self.session.clone();
        let statement = self.statements.delete_event.clone();
        let deletes = doomed.into_iter().map(move |(ts, id)| {
            let (session, statement, site) = (session.clone(), statement.clone(), site.clone());
            async move {
                session
                    .execute_unpaged(&statement, (site, ts.div_euclid(BUCKET_MICROS), ts, id))
                    .await
                    .map(drop)
            }
        });
        let results: Vec<_> = futures::stream::iter(deletes)
            .buffer_unordered(64)
            .collect()
            .await;
        for result in results {
            result.map_err(|err| cql_error("erase events", err))?;
        }
        // The rollups of those hours (and cached answers) no longer hold.
        self.touch_hours(&site_id, &hours).await?;
        Ok(count)
    }

    async fn expire(&self, site: &SiteId, before_micros: i64) -> Result<u64, StorageError> {
        // Rows carry a time to live from the site's retention when written;
        // this deletes the whole hours before the cut, for a retention that
        // was shortened since.
        let cut_bucket = before_micros.div_euclid(BUCKET_MICROS);
        let site_name = site.to_string();
        let buckets = read_buckets(
            &self.session,
            &self.statements.select_buckets,
            &site_name,
            i64::MIN,
            cut_bucket - 1,
        )
        .await?;
        let mut deleted = 0u64;
        for bucket in buckets {
            let mut chunks = self.scan(site, bucket * BUCKET_MICROS, (bucket + 1) * BUCKET_MICROS);
            while let Some(chunk) = chunks.next().await {
                deleted += chunk?.len() as u64;
            }
            self.session
                .execute_unpaged(&self.statements.delete_partition, (&site_name, bucket))
                .await
                .map_err(|err| cql_error("expire events", err))?;
            self.session
                .execute_unpaged(&self.statements.delete_bucket, (&site_name, bucket))
                .await
                .map_err(|err| cql_error("expire event index", err))?;
            self.buckets_written
                .lock()
                .expect("scylla lock")
                .remove(&(site_name.clone(), bucket));
        }
        if deleted > 0 {
            self.touch_hours(site, &[]).await?;
        }
        Ok(deleted)
    }

    fn scan(&self, site: &SiteId, from_micros: i64, to_micros: i64) -> EventChunks {
        let (tx, rx) = mpsc::channel(2);
        if from_micros < to_micros {
            let session = self.session.clone();
            let buckets = self.statements.select_buckets.clone();
            let select = self.statements.select_events.clone();
            let site = site.to_string();
            tokio::spawn(async move {
                if let Err(err) =
                    scan_into(&session, &buckets, &select, &site, from_micros, to_micros, &tx).await
                {
                    let _ = tx.send(Err(err)).await;
                }
            });
        }
        Box::pin(ReceiverStream::new(rx))
    }
}

/// The hours in `[first, last]` that hold events of `site`, from the index.
async fn read_buckets(
    session: &Session,
    select_buckets: &PreparedStatement,
    site: &str,
    first: i64,
    last: i64,
) -> Result<Vec<i64>, StorageError> {
    let mut buckets = Vec::new();
    let mut rows = session
        .execute_iter(select_buckets.clone(), (site, first, last))
        .await
        .map_err(|err| StorageError::Unavailable(format!("cassandra: read event index: {err}")))?
        .rows_stream::<(i64,)>()
        .map_err(|err| StorageError::Corrupt(format!("event index: {err}")))?;
    while let Some(row) = rows.next().await {
        let (bucket,) =
            row.map_err(|err| StorageError::Unavailable(format!("cassandra: read event index: {err}")))?;
        buckets.push(bucket);
    }
    Ok(buckets)
}

/// Sends a site's events of `[from, to)` in chunks, partition by partition.
async fn scan_into(
    session: &Session,
    select_buckets: &PreparedStatement,
    select_events: &PreparedStatement,
    site: &str,
    from: i64,
    to: i64,
    tx: &mpsc::Sender<Result<Vec<StoredEvent>, StorageError>>,
) -> Result<(), StorageError> {
    let first = from.div_euclid(BUCKET_MICROS);
    let last = (to - 1).div_euclid(BUCKET_MICROS);
    let buckets = read_buckets(session, select_buckets, site, first, last).await?;
    let mut chunk = Vec::with_capacity(SCAN_CHUNK);
    for bucket in buckets {
        let mut rows = session
            .execute_iter(select_events.clone(), (site, bucket, from, to))
            .await
            .map_err(|err| StorageError::Unavailable(format!("cassandra: read events: {err}")))?
            .rows_stream::<(i64, Vec<u8>, Vec<u8>)>()
            .map_err(|err| StorageError::Corrupt(format!("events: {err}")))?;
        while let Some(row) = rows.next().await {
            let (ts, id, body) =
                row.map_err(|err| StorageError::Unavailable(format!("cassandra: read events: {err}")))?;
            let mut event = StoredEvent::decode(body.as_slice())
                .map_err(|err| StorageError::Corrupt(format!("event body: {err}")))?;
            event.ts_micros = ts;
            event.event_id = id;
            chunk.push(event);
            if chunk.len() == SCAN_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(SCAN_CHUNK));
                if tx.send(Ok(full)).await.is_err() {
                    return Ok(()); // the reader went away
                }
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok(chunk)).await;
    }
    Ok(())
}

#[async_trait]
impl SiteStore for ScyllaStore {
    async fn insert_site(&self, site: SiteRecord) -> Result<bool, StorageError> {
        let result = self
            .session
            .execute_unpaged(
                &self.statements.insert_site,
                (&site.site_id, site.encode_to_vec()),
            )
            .await
            .map_err(|err| cql_error("insert a site", err))?;
        Ok(lwt_applied(result)?.0)
    }

    async fn update_site(&self, site: SiteRecord) -> Result<(), StorageError> {
        let result = self
            .session
            .execute_unpaged(
                &self.statements.update_site,
                (site.encode_to_vec(), &site.site_id),
            )
            .await
            .map_err(|err| cql_error("update a site", err))?;
        if !lwt_applied(result)?.0 {
            return Err(StorageError::UnknownSite(site.site_id));
        }
        self.sites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&site.site_id);
        Ok(())
    }

    async fn get_site(&self, site: &SiteId) -> Result<Option<SiteRecord>, StorageError> {
        self.read_record(&self.statements.select_site, (site.as_str(),), "site")
            .await
    }

    async fn list_sites(&self) -> Result<Vec<SiteRecord>, StorageError> {
        let mut sites: Vec<SiteRecord> = self.read_all(&self.statements.select_sites, "sites").await?;
        sites.sort_by(|a, b| a.site_id.cmp(&b.site_id));
        Ok(sites)
    }
}

#[async_trait]
impl KeyStore for ScyllaStore {
    async fn put_key(&self, key: KeyRecord) -> Result<(), StorageError> {
        // Both tables in one logged batch: they change together or not at all.
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(self.statements.insert_key.clone());
        batch.append_statement(self.statements.insert_key_by_hash.clone());
        let record = key.encode_to_vec();
        self.session
            .batch(
                &batch,
                (
                    (key.key_id.as_str(), record.as_slice()),
                    (key.secret_hash.as_slice(), record.as_slice()),
                ),
            )
            .await
            .map_err(|err| cql_error("write an api key", err))?;
        Ok(())
    }

    async fn key_by_hash(&self, secret_hash: &[u8]) -> Result<Option<KeyRecord>, StorageError> {
        self.read_record(&self.statements.select_key_by_hash, (secret_hash,), "api key")
            .await
    }

    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StorageError> {
        self.read_record(&self.statements.select_key, (key_id,), "api key")
            .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StorageError> {
        let mut keys: Vec<KeyRecord> = self.read_all(&self.statements.select_keys, "api keys").await?;
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        Ok(keys)
    }

    async fn instance_secret(&self) -> Result<[u8; 32], StorageError> {
        self.secret("instance").await
    }

    async fn salt(&self, name: &str) -> Result<[u8; 32], StorageError> {
        self.secret(&format!("{SALT_PREFIX}{name}")).await
    }

    async fn salt_names(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let full = format!("{SALT_PREFIX}{prefix}");
        let pager = self
            .session
            .execute_iter(self.statements.select_secret_names.clone(), ())
            .await
            .map_err(|err| StorageError::Unavailable(format!("cassandra: read salt names: {err}")))?;
        let mut rows = pager
            .rows_stream::<(String,)>()
            .map_err(|err| StorageError::Corrupt(format!("salt names: {err}")))?;
        let mut names = Vec::new();
        while let Some(row) = rows.next().await {
            let (name,) =
                row.map_err(|err| StorageError::Unavailable(format!("cassandra: read salt names: {err}")))?;
            if name.starts_with(&full) {
                names.push(name[SALT_PREFIX.len()..].to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    async fn drop_salts(&self, names: &[String]) -> Result<(), StorageError> {
        for name in names {
            let full = format!("{SALT_PREFIX}{name}");
            self.session
                .execute_unpaged(&self.statements.delete_secret, (full.as_str(),))
                .await
                .map_err(|err| cql_error("drop a salt", err))?;
        }
        Ok(())
    }
}

#[async_trait]
impl SessionStore for ScyllaStore {
    async fn sessionize(
        &self,
        site: &SiteId,
        timeout_micros: i64,
        events: &mut [StoredEvent],
    ) -> Result<(), StorageError> {
        if events.is_empty() {
            return Ok(());
        }
        self.site_ttl(site).await?;
        let mut redis = self.redis.clone();
        self.visits
            .sessionize(&mut redis, site.as_str(), timeout_micros, events)
            .await
    }
}

/// Prefix of salt names in the `secrets` table.
const SALT_PREFIX: &str = "salt/";
