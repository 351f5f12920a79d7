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
}

impl Authenticator {
    /// An authenticator; `operator_key` enables the operator principal.
    pub fn new(store: Arc<dyn Store>, operator_key: Option<&str>) -> Self {
        Self {
            store,
            operator_hash: operator_key.map(|k| blake3::hash(k.as_bytes())),
        }
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
        match self.store.key_by_hash(hash.as_bytes()).await? {
            Some(key) if key.revoke_micros == 0 => Ok(Principal::Key(key)),
            Some(_) => Err(Error::Unauthenticated("API key was revoked".into())),
            None => Err(Error::Unauthenticated("unknown API key".into())),
        }
    }
}
