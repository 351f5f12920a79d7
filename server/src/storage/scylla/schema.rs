//! The keyspace and its tables, created and migrated by `tally` itself.
//!
//! Migrations are numbered and applied in order, each recorded in the
//! `migrations` table once its statements ran. Every statement is idempotent
//! (`IF NOT EXISTS`), so a migration interrupted half-way runs again safely.
//! Instances starting together take turns through a lease row (a lightweight
//! transaction with a TTL), because concurrent schema changes of the same
//! table on different coordinators can disagree. A keyspace migrated by a
//! newer `tally` (a version this one does not know) is refused.

use std::time::Duration;

use scylla::client::session::Session;
use scylla::statement::Statement;

use super::cql_error;
use crate::storage::StorageError;

/// Default time to live of raw events: 14 months (of 30.44 days), seconds.
pub const DEFAULT_EVENT_TTL_SECS: i64 = 426 * 86_400;

/// One schema change.
struct Migration {
    version: i32,
    description: &'static str,
    /// CQL with `{ks}` standing for the keyspace.
    statements: &'static [&'static str],
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "events by (site, hour), event bucket index, sites, api keys, secrets",
        statements: &[
            // Raw events: one partition per site and hour, rows by (timestamp, id);
            // expired by TTL, compacted in daily windows.
            "CREATE TABLE IF NOT EXISTS {ks}.events (
            site text, bucket bigint, ts bigint, id blob, body blob,
            PRIMARY KEY ((site, bucket), ts, id)
        ) WITH CLUSTERING ORDER BY (ts ASC, id ASC)
          AND compaction = {'class': 'TimeWindowCompactionStrategy',
                            'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}
          AND default_time_to_live = 36806400
          AND gc_grace_seconds = 86400",
            // The hours that hold events of a site, so scans visit only those.
            "CREATE TABLE IF NOT EXISTS {ks}.event_buckets (
            site text, bucket bigint, PRIMARY KEY (site, bucket)
        ) WITH default_time_to_live = 36892800",
            "CREATE TABLE IF NOT EXISTS {ks}.sites (site_id text PRIMARY KEY, record blob)",
            "CREATE TABLE IF NOT EXISTS {ks}.api_keys (key_id text PRIMARY KEY, record blob)",
            "CREATE TABLE IF NOT EXISTS {ks}.api_keys_by_hash (secret_hash blob PRIMARY KEY, record blob)",
            // The instance secret and the visitor-id salts.
            "CREATE TABLE IF NOT EXISTS {ks}.secrets (name text PRIMARY KEY, value blob)",
        ],
    },
    Migration {
        version: 2,
        description: "rollups per (site, hour)",
        statements: &[
            // The rollup of one UTC hour of a site (see `crate::rollup::shared`),
            // with the token of the hour's events it was computed from (column
            // `version`: `token` is a CQL keyword); one partition per site.
            "CREATE TABLE IF NOT EXISTS {ks}.rollup_hours (
            site text, hour bigint, version bigint, body blob,
            PRIMARY KEY (site, hour)
        ) WITH CLUSTERING ORDER BY (hour ASC)
          AND default_time_to_live = 36892800
          AND gc_grace_seconds = 86400",
        ],
    },
];

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// A keyspace name: CQL identifiers without quoting.
pub fn check_keyspace_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "keyspace {name:?} must be 1-48 letters, digits and '_', starting with a letter"
        ))
    }
}

/// Lease row of the `migrations` table.
const LEASE: i32 = -1;
const LEASE_SECS: i32 = 60;

/// Creates the keyspace if needed and applies the missing migrations.
pub async fn migrate(session: &Session, keyspace: &str, replication_factor: u32) -> Result<(), StorageError> {
    check_keyspace_name(keyspace).map_err(StorageError::Io)?;
    let create_keyspace = format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
         {{'class': 'NetworkTopologyStrategy', 'replication_factor': {replication_factor}}}"
    );
    ddl(session, &create_keyspace).await?;
    ddl(
        session,
        &format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.migrations (
                version int PRIMARY KEY, description text, applied_micros bigint)"
        ),
    )
    .await?;
    if applied(session, keyspace).await? >= latest_version() {
        return Ok(());
    }
    let holder = uuid::Uuid::new_v4().to_string();
    acquire_lease(session, keyspace, &holder).await?;
    let result = apply_missing(session, keyspace).await;
    let release = format!("DELETE FROM {keyspace}.migrations WHERE version = {LEASE} IF description = ?");
    if let Err(error) = session.query_unpaged(release, (&holder,)).await {
        tracing::warn!(%error, "schema lease not released; it expires by itself");
    }
    result
}

/// Schema changes wait for every node to agree, which takes longer than a
/// read or write: they get their own timeout.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

async fn ddl(session: &Session, statement: &str) -> Result<(), StorageError> {
    let mut statement = Statement::new(statement);
    statement.set_request_timeout(Some(DDL_TIMEOUT));
    session
        .query_unpaged(statement, ())
        .await
        .map_err(|err| cql_error("schema change", err))?;
    Ok(())
}

/// The highest applied version; an error for versions this build does not know.
async fn applied(session: &Session, keyspace: &str) -> Result<i32, StorageError> {
    let rows = session
        .query_unpaged(format!("SELECT version FROM {keyspace}.migrations"), ())
        .await
        .map_err(|err| cql_error("read migrations", err))?
        .into_rows_result()
        .map_err(|err| StorageError::Corrupt(format!("migrations: {err}")))?;
    let mut highest = 0;
    for row in rows
        .rows::<(i32,)>()
        .map_err(|err| StorageError::Corrupt(format!("migrations: {err}")))?
    {
        let (version,) = row.map_err(|err| StorageError::Corrupt(format!("migrations: {err}")))?;
        highest = highest.max(version);
    }
    if highest > latest_version() {
        return Err(StorageError::Io(format!(
            "keyspace {keyspace} has schema version {highest}, this tally knows versions up to {}: upgrade tally",
            latest_version()
        )));
    }
    Ok(highest)
}

async fn acquire_lease(session: &Session, keyspace: &str, holder: &str) -> Result<(), StorageError> {
    let take = format!(
        "INSERT INTO {keyspace}.migrations (version, description, applied_micros) \
         VALUES ({LEASE}, ?, 0) IF NOT EXISTS USING TTL {LEASE_SECS}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(LEASE_SECS as u64 + 30);
    loop {
        let result = session
            .query_unpaged(take.as_str(), (holder,))
            .await
            .map_err(|err| cql_error("take the schema lease", err))?;
        if super::lwt_applied(result)?.0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(StorageError::Unavailable(
                "another instance holds the schema lease".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn apply_missing(session: &Session, keyspace: &str) -> Result<(), StorageError> {
    let done = applied(session, keyspace).await?;
    for migration in MIGRATIONS.iter().filter(|m| m.version > done) {
        for statement in migration.statements {
            ddl(session, &statement.replace("{ks}", keyspace)).await?;
        }
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {keyspace}.migrations (version, description, applied_micros) VALUES (?, ?, ?)"
                ),
                (migration.version, migration.description, crate::domain::now_micros()),
            )
            .await
            .map_err(|err| cql_error("record a migration", err))?;
        tracing::info!(
            keyspace,
            version = migration.version,
            migration.description,
            "schema migrated"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names_are_plain_identifiers() {
        for (name, ok) in [
            ("tally", true),
            ("tally_prod_2", true),
            ("", false),
            ("2tally", false),
            ("tally-prod", false),
            ("tally;drop", false),
        ] {
            assert_eq!(check_keyspace_name(name).is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<i32> = (1..=MIGRATIONS.len() as i32).collect();
        assert_eq!(versions, expected);
    }
}
