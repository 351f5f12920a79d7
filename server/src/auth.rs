//! Authentication and authorisation: bearer keys, stored as hashes.
//!
//! Three kinds of API key (ingest: one site, public; query: some sites,
//! secret; admin: everything) plus the operator key from the configuration.

use std::sync::Arc;

use crate::domain::{KeyKind, KeyRecord, SiteId};
use crate::error::{Error, Result};
use crate::storage::Store;

/// Who is calling.
#[derive(Clone, Debug)]
pub enum Principal {
    /// The operator key from the configuration.
    Operator,
    /// An API key.
    Key(KeyRecord),
}

impl Principal {
    fn kind(&self) -> KeyKind {
        match self {
            Self::Operator => KeyKind::Admin,
            Self::Key(key) => key.key_kind().unwrap_or(KeyKind::Ingest),
        }
    }

    fn has_site(&self, site: &SiteId) -> bool {
        match self {
            Self::Operator => true,
            Self::Key(key) => key.site_ids.iter().any(|s| s == site.as_str()),
        }
    }

    /// May send events to `site`: its ingest key, or an admin.
    pub fn check_ingest(&self, site: &SiteId) -> Result<()> {
        match self.kind() {
            KeyKind::Admin => Ok(()),
            KeyKind::Ingest if self.has_site(site) => Ok(()),
            KeyKind::Ingest => Err(Error::PermissionDenied(format!(
                "this ingest key does not belong to site {site}"
            ))),
            KeyKind::Query => Err(Error::PermissionDenied(
                "a query key cannot send events; use an ingest key".into(),
            )),
        }
    }

    /// May read `site`: a query key listing it, or an admin.
    pub fn check_query(&self, site: &SiteId) -> Result<()> {
        match self.kind() {
            KeyKind::Admin => Ok(()),
            KeyKind::Query if self.has_site(site) => Ok(()),
            KeyKind::Query => Err(Error::PermissionDenied(format!(
                "this query key has no access to site {site}"
            ))),
            KeyKind::Ingest => Err(Error::PermissionDenied(
                "an ingest key cannot read reports; use a query key".into(),
            )),
        }
    }

    /// May administer: the operator key or an admin key.
    pub fn check_admin(&self) -> Result<()> {
        match self.kind() {
            KeyKind::Admin => Ok(()),
            _ => Err(Error::PermissionDenied(
                "this call needs the operator key or an admin key".into(),
            )),
        }
    }

    /// The single site of an ingest key, used when a request names none.
    pub fn default_site(&self) -> Option<&str> {
        match self {
            Self::Key(key) if key.key_kind() == Some(KeyKind::Ingest) => {
                key.site_ids.first().map(String::as_str)
            }
            _ => None,
        }
    }
}

/// Hash under which a secret is stored.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// Resolves bearer tokens to principals.
pub struct Authenticator {
    store: Arc<dyn Store>,
    operator_hash: Option<blake3::Hash>,
    /// Last use per key id, to the minute, not yet written to the store.
    last_used: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

const MINUTE_MICROS: i64 = 60_000_000;

impl Authenticator {
    /// An authenticator; `operator_key` enables the operator principal.
    pub fn new(store: Arc<dyn Store>, operator_key: Option<&str>) -> Self {
        Self {
            store,
            operator_hash: operator_key.map(|k| blake3::hash(k.as_bytes())),
            last_used: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// When the key was last used: what this instance saw, or what is stored.
    pub fn last_used(&self, key: &KeyRecord) -> i64 {
        let seen = self
            .last_used
            .lock()
            .expect("auth lock")
            .get(&key.key_id)
            .copied();
        seen.unwrap_or(0).max(key.last_used_micros)
    }

    /// Writes the last uses seen since the previous call to the store (call
    /// about once a minute, and at shutdown).
    pub async fn flush_last_used(&self) -> Result<()> {
        let pending: Vec<(String, i64)> = self.last_used.lock().expect("auth lock").drain().collect();
        for (key_id, at) in pending {
            if let Some(mut key) = self.store.get_key(&key_id).await?
                && key.last_used_micros < at
            {
                key.last_used_micros = at;
                self.store.put_key(key).await?;
            }
        }
        Ok(())
    }

    fn note_use(&self, key: &KeyRecord, now: i64) {
        let minute = now - now.rem_euclid(MINUTE_MICROS);
        if key.last_used_micros >= minute {
            return;
        }
        let mut seen = self.last_used.lock().expect("auth lock");
        let entry = seen.entry(key.key_id.clone()).or_insert(0);
        *entry = (*entry).max(minute);
    }

    /// Checks a bearer token.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(Error::Unauthenticated(
                "missing API key: send metadata \"authorization: Bearer <key>\"".into(),
            ));
        };
        let hash = blake3::hash(token.as_bytes());
        // blake3::Hash compares in constant time.
        if self.operator_hash == Some(hash) {
            return Ok(Principal::Operator);
        }
        let now = crate::domain::now_micros();
        match self.store.key_by_hash(hash.as_bytes()).await? {
            Some(key) if key.revoke_micros != 0 => Err(Error::Unauthenticated("API key was revoked".into())),
            Some(key) if key.expire_micros != 0 && key.expire_micros <= now => {
                Err(Error::Unauthenticated(format!(
                    "API key expired at {}",
                    crate::convert::rfc3339(key.expire_micros)
                )))
            }
            Some(key) => {
                self.note_use(&key, now);
                Ok(Principal::Key(key))
            }
            None => Err(Error::Unauthenticated("unknown API key".into())),
        }
    }
}
